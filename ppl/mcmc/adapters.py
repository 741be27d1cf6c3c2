"""NumPyro ``MCMCKernel`` adapters: run a pure kernel on a model inside ``numpyro.infer.MCMC``.

The model is moved to unconstrained space with ``numpyro.infer.util.initialize_model``
(log density = −potential, ``postprocess_fn`` constrains and adds deterministic sites).
During warm-up the step size (dual averaging) and, for kernels that take one, the inverse
mass matrix (Welford variance, or with ``dense_mass`` covariance, estimates over Stan's
doubling windows, regularized as in Stan) are adapted by NumPyro's own
``hmc_util.warmup_adapter``, the step size re-initialized at each window end by
``find_reasonable_step_size``. A batch of keys
(``chain_method="vectorized"``) vmaps ``init`` and ``sample`` as NumPyro's ``HMC`` does;
then, during warm-up only, a chain lost far below the others' log density restarts from a
healthy chain's state (:func:`ppl.mcmc.ensemble_rescue.rescue_vectorized`; NumPyro's NUTS
has no such rescue: on arma11 one of its 4 chains stays lost for all 2000 iterations).

A second ``MCMC.run`` (or a ``post_warmup_state`` continuation) with the same model
arguments compiles nothing of ppl's: the per-chain ``init`` (step-size search included) is
one ``jax.jit`` cached on the kernel, keyed like NumPyro's own cache (argument identity).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from functools import partial, wraps
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc import HMC as NumPyroHMC
from numpyro.infer.hmc import NUTS as NumPyroNUTS
from numpyro.infer.hmc_util import (
    build_adaptation_schedule,
    dual_averaging,
    euclidean_kinetic_energy,
    find_reasonable_step_size,
    warmup_adapter,
)
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel, _hashable
from numpyro.infer.util import ParamInfo, initialize_model
from numpyro.util import _is_under_jax_transform, identity, is_prng_key

from ..core.arguments import count
from ..core.model_enum import check_index_enumeration
from .base import Kernel, summarize
from .ensemble_rescue import rescue_vectorized
from .gradient import hmc, jitter_fraction, mala, positive_length
from .metric import check_blocks, check_inverse_mass_matrix, euclidean, is_diagonal
from .mh import random_walk
from .nuts import nuts


class AdaptState(NamedTuple):
    """Warm-up adaptation state, field for field NumPyro's ``HMCAdaptState``: the step size
    and inverse mass matrix in use (and NumPyro's square roots of it), the dual-averaging
    state over log step size, the Welford (co)variance state, the adaptation window index.
    ``inverse_mass_matrix`` is a ``(d,)`` diagonal over the flattened unconstrained latent
    vector, with ``dense_mass=True`` a ``(d, d)`` matrix, with ``dense_mass=[...]`` NumPyro's
    dict from tuples of site names to blocks. (NumPyro's own kernel on a model wraps even
    the first two in a one-entry dict keyed by the sorted site names.)"""

    step_size: jax.Array
    inverse_mass_matrix: jax.Array
    mass_matrix_sqrt: jax.Array
    mass_matrix_sqrt_inv: jax.Array
    ss_state: tuple
    mm_state: tuple
    window_idx: jax.Array
    rng_key: jax.Array


def _position(state):
    return state.inner.position


def _potential_energy(state):
    """−log density at ``z`` (per chain for an ensemble), NumPyro's ``potential_energy``."""
    return -state.inner.logdensity


def _z_grad(state):
    """Gradient of the potential energy at ``z``, as NumPyro's ``HMCState.z_grad``."""
    return jax.tree.map(jnp.negative, state.inner.logdensity_grad)


def unknown_field(owner: str, others: str):
    """A state's ``__getattr__``, reached only for a name that is neither a field nor a
    property: NumPyro's ``extra_fields`` lookup would otherwise fall back to indexing the
    tuple with a string ("tuple indices must be integers"); the name is refused instead."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise ValueError(
            f"{owner} has no field {name!r} to collect; its fields are "
            f"{list(self._fields)} and {others}"
        )

    return __getattr__


class KernelState(NamedTuple):
    """State of an adapted kernel; ``z`` (the unconstrained position) is the sample field.
    ``num_steps`` is the number of gradient evaluations (leapfrog steps) of the last
    iteration, as NumPyro's ``HMCState.num_steps`` (``None`` for a kernel that does not
    count them): collect it with ``mcmc.run(..., extra_fields=("num_steps",))``.
    ``diverging`` whether that iteration diverged, as NumPyro's ``HMCState.diverging``
    (``None`` for a kernel that does not report it; :class:`NUTS` collects it by default).
    """

    i: jax.Array
    inner: Any
    adapt: AdaptState
    accept_prob: jax.Array
    mean_accept_prob: jax.Array
    rng_key: jax.Array
    num_steps: jax.Array | None = None
    diverging: jax.Array | None = None

    z = property(_position, doc="The unconstrained position (NumPyro's sample field).")
    potential_energy = property(_potential_energy, doc=_potential_energy.__doc__)
    z_grad = property(_z_grad, doc=_z_grad.__doc__)

    @property
    def adapt_state(self):
        """The adaptation state, under NumPyro's name (``"adapt_state.step_size"``)."""
        return self.adapt

    __getattr__ = unknown_field(
        "this ppl kernel's state",
        "potential_energy, z_grad, adapt_state (gradient kernels); num_steps / diverging "
        "are None where a kernel does not report them",
    )


_plain_replace = KernelState._replace


def _replace_with_numpyro_names(state: KernelState, **changes) -> KernelState:
    """``_replace`` that also takes NumPyro's ``HMCState`` names (``z``,
    ``potential_energy``, ``z_grad``, ``adapt_state``), as NumPyro's composite kernels
    (``HMCECS``) write them into their inner kernel's state."""
    inner = {}
    if "z" in changes:
        inner["position"] = changes.pop("z")
    if "potential_energy" in changes:
        inner["logdensity"] = -changes.pop("potential_energy")
    if "z_grad" in changes:
        inner["logdensity_grad"] = jax.tree.map(jnp.negative, changes.pop("z_grad"))
    if "adapt_state" in changes:
        changes["adapt"] = changes.pop("adapt_state")
    state = _plain_replace(state, **changes)
    return _plain_replace(state, inner=state.inner._replace(**inner)) if inner else state


KernelState._replace = _replace_with_numpyro_names  # typing.NamedTuple forbids it in the body


# NumPyro's positional order after (model, potential_fn), so that a kernel built with
# positional arguments means the same with ppl's class (ppl's own options are keywords)
_NUMPYRO_HMC_ORDER = (
    "kinetic_fn",
    "step_size",
    "inverse_mass_matrix",
    "adapt_step_size",
    "adapt_mass_matrix",
    "dense_mass",
    "target_accept_prob",
)
_NUMPYRO_TAIL = (
    "init_strategy",
    "find_heuristic_step_size",
    "forward_mode_differentiation",
    "regularize_mass_matrix",
)
NUMPYRO_HMC_ARGS = (*_NUMPYRO_HMC_ORDER, "num_steps", "trajectory_length", *_NUMPYRO_TAIL)
NUMPYRO_NUTS_ARGS = (*_NUMPYRO_HMC_ORDER, "trajectory_length", "max_tree_depth", *_NUMPYRO_TAIL)


def numpyro_positional(order: tuple):
    """Decorate a kernel's ``__init__(self, model, potential_fn, *, ...)`` to take further
    positional arguments in NumPyro's order (``order``), as keywords."""

    def decorate(init):
        @wraps(init)
        def wrapper(self, model=None, potential_fn=None, *args, **kwargs):
            who = f"ppl.mcmc.{type(self).__name__}"
            if len(args) > len(order):
                raise TypeError(
                    f"{who}() takes at most {len(order) + 2} positional arguments (NumPyro's"
                    f" order: model, potential_fn, {', '.join(order)}), got {len(args) + 2}"
                )
            for name, value in zip(order, args, strict=False):
                if name in kwargs:
                    raise TypeError(f"{who}() got multiple values for argument '{name}'")
                kwargs[name] = value
            init(self, model, potential_fn, **kwargs)

        return wrapper

    return decorate


def numpyro_options(who: str, options: dict) -> bool | list:
    """Check the other NumPyro ``HMC`` / ``NUTS`` keywords, for a drop-in swap of the kernel:
    their defaults, and ``find_heuristic_step_size`` (ppl runs that search anyway, at the
    start of every adaptation window), are accepted; what ppl cannot do is refused by name.
    Returns ``dense_mass``: ``False``, ``True`` or a non-empty list of tuples of site names
    (NumPyro's structured mass matrix; ``[]`` is ``False``, as in NumPyro).
    """
    known = {"kinetic_fn", "dense_mass", "forward_mode_differentiation", "find_heuristic_step_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{who}() got unexpected keyword arguments {unknown}")
    if options.get("kinetic_fn") is not None:
        raise ValueError(f"{who}: kinetic_fn is not supported (Euclidean kinetic energy only)")
    dense = options.get("dense_mass", False)
    if isinstance(dense, list):
        check_blocks(dense, {k for key in dense if isinstance(key, tuple) for k in key})
        dense = list(dense) or False
    elif not isinstance(dense, bool):
        raise ValueError(
            f"{who}: dense_mass must be True, False or a list of tuples of site names"
            f" (NumPyro's structured mass matrix, e.g. [('x', 'y'), ('z',)]), got {dense!r}"
        )
    if options.get("forward_mode_differentiation", False):
        raise ValueError(f"{who}: forward_mode_differentiation=True is not supported")
    if not isinstance(options.get("find_heuristic_step_size", False), bool):
        raise ValueError(f"{who}: find_heuristic_step_size must be a bool")
    return dense


class ModelKernel(MCMCKernel):
    """Base of the NumPyro adapters: a subclass gives ``build(logdensity_fn, step_size)``
    returning a pure :class:`~ppl.mcmc.Kernel`; everything else (initialization,
    unconstrained space, warm-up adaptation, vectorized chains) lives here. A subclass
    whose ``build`` also takes ``inverse_mass_matrix`` (a diagonal over the flattened
    unconstrained position; dense or structured where the subclass sets ``_mass_structure``,
    as :class:`HMC` and :class:`NUTS` do from NumPyro's ``dense_mass``) sets
    ``supports_mass_matrix = True`` and gets it adapted when ``adapt_mass_matrix=True``;
    ``adapt_mass_matrix=None`` takes the class's default ``adapts_mass_matrix`` (True for
    :class:`MALA` and :class:`HMC`).

    Example::

        class MyRW(ModelKernel):
            def build(self, logdensity_fn, step_size):
                return ppl.mcmc.random_walk(logdensity_fn, step_size)
    """

    target_accept_prob: float = 0.8
    supports_mass_matrix: bool = False
    adapts_mass_matrix: bool = False  # the default of ``adapt_mass_matrix``
    _mass_structure: bool | list = False  # NumPyro's ``dense_mass`` (HMC, NUTS)

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        step_size: float = 0.1,
        adapt_step_size: bool = True,
        target_accept_prob: float | None = None,
        init_strategy: Callable = init_to_uniform,
        adapt_mass_matrix: bool | None = None,
        inverse_mass_matrix: jax.Array | None = None,
        regularize_mass_matrix: bool = True,
    ):
        if model is not None and potential_fn is not None:
            raise ValueError("Give one of `model` or `potential_fn`, not both.")
        self._model = model
        self._potential_fn = potential_fn
        self._potential_fn_gen = None
        self._postprocess_fn = None
        self._step_size = step_size
        self._adapt_step_size = adapt_step_size
        if adapt_mass_matrix is None:
            adapt_mass_matrix = self.adapts_mass_matrix
        if adapt_mass_matrix and not self.supports_mass_matrix:
            raise ValueError(f"{type(self).__name__} takes no mass matrix to adapt")
        self._adapt_mass_matrix = adapt_mass_matrix
        self._inverse_mass_matrix = inverse_mass_matrix
        self._regularize_mass_matrix = bool(regularize_mass_matrix)
        if target_accept_prob is not None:
            self.target_accept_prob = target_accept_prob
        self._init_strategy = init_strategy
        self._num_warmup = 0
        self._sample_fn = None
        self._model_trace = None
        self._init_cache = {}

    def build(self, logdensity_fn: Callable, step_size) -> Kernel:
        """The pure kernel for ``logdensity_fn`` at ``step_size``."""
        raise NotImplementedError

    def _build(self, logdensity_fn: Callable, adapt: AdaptState) -> Kernel:
        if self.supports_mass_matrix:
            return self.build(logdensity_fn, adapt.step_size, adapt.inverse_mass_matrix)
        return self.build(logdensity_fn, adapt.step_size)

    def find_step_size(self, logdensity_fn: Callable) -> Callable | None:
        """``f(step_size, inverse_mass_matrix, z_info, key)`` giving a reasonable step size
        at the start of each adaptation window, or ``None`` (keep the current one)."""
        return None

    def _adapter(self, logdensity_fn):
        # the step-size search at window ends runs in ``_refind_step_size`` under a cond on
        # the (unbatched) iteration, so that vectorized chains do not run it at every step
        return warmup_adapter(
            self._num_warmup,
            find_reasonable_step_size=None,
            adapt_step_size=self._adapt_step_size,
            adapt_mass_matrix=self._adapt_mass_matrix,
            dense_mass=self._mass_structure,
            target_accept_prob=self.target_accept_prob,
            regularize_mass_matrix=self._regularize_mass_matrix,
        )

    @property
    def model(self):
        return self._model

    @property
    def sample_field(self):
        return "z"

    def get_diagnostics_str(self, state):
        step_size, accept = float(state.adapt.step_size), float(state.mean_accept_prob)
        return f"step size {step_size:.2e}. acc. prob={accept:.2f}"

    def postprocess_fn(self, model_args, model_kwargs):
        if self._postprocess_fn is None:
            return identity
        return self._postprocess_fn(*model_args, **model_kwargs)

    def _logdensity_fn(self, model_args, model_kwargs):
        if self._potential_fn_gen is not None:
            potential = self._potential_fn_gen(*model_args, **(model_kwargs or {}))
        else:
            potential = self._potential_fn
        return lambda z: -potential(z)

    def _setup(self, key, init_params, model_args, model_kwargs):
        """Prepare the log density and ``postprocess_fn`` of the model; initial positions."""
        info, self._potential_fn_gen, self._postprocess_fn, self._model_trace = initialize_model(
            key,
            self._model,
            init_strategy=self._init_strategy,
            dynamic_args=True,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
        check_index_enumeration(self._model_trace, f"ppl.mcmc.{type(self).__name__}")
        return info.z if init_params is None else init_params

    def pure_kernel(
        self,
        rng_key: jax.Array,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
        step_size: float | None = None,
    ) -> tuple[Kernel, Any]:
        """The pure kernel this adapter runs, over the model's unconstrained latent dict, and
        an initial position: for ``lax.scan`` loops and for use inside objectives.

        Example::

            kernel, z0 = ppl.mcmc.HMC(model, num_steps=5).pure_kernel(key, (data,))
            state, info = kernel.step(key, kernel.init(z0))
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        z0 = None
        if self._model is not None:
            z0 = self._setup(rng_key, None, model_args, model_kwargs)
        step_size = self._step_size if step_size is None else step_size
        return self.build(self._logdensity_fn(model_args, model_kwargs), step_size), z0

    def refresh(self, state: KernelState, model_args, model_kwargs) -> KernelState:
        """Recompute the cached log density (and gradient) at the current position for new
        model arguments (NumPyro's composable ``Gibbs`` calls this when the values it
        conditions on change)."""
        logdensity_fn = self._logdensity_fn(model_args, model_kwargs)

        def one(state):
            kernel = self._build(logdensity_fn, state.adapt)
            return state._replace(inner=kernel.init(state.inner.position))

        return jax.vmap(one)(state) if jnp.ndim(state.i) else one(state)

    def wrap_model(self, wrapper: Callable) -> ModelKernel:
        """A copy bound to ``wrapper(model)`` (for NumPyro's composable ``Gibbs``)."""
        if self._model is None:
            raise ValueError("`wrap_model` needs a kernel built from a model.")
        kernel = copy.copy(self)
        kernel._model = wrapper(self._model)
        kernel._potential_fn_gen = None
        kernel._postprocess_fn = None
        kernel._sample_fn = None
        kernel._model_trace = None
        kernel._init_cache = {}
        return kernel

    @property
    def default_fields(self):
        return ("z",)

    def get_potential_fn(self, model_args=(), model_kwargs=None) -> Callable:
        """The potential (−log density over the unconstrained latent dict) for these model
        arguments, as NumPyro's ``HMC.get_potential_fn`` (composite kernels call it)."""
        if self._potential_fn_gen is None:
            if self._potential_fn is not None:
                return self._potential_fn
            raise RuntimeError("`get_potential_fn` needs the kernel initialized: run `init`.")
        return self._potential_fn_gen(*model_args, **(model_kwargs or {}))

    def get_constrain_fn(self, model_args=(), model_kwargs=None, *, return_deterministic=False):
        """Unconstrained latent dict -> constrained values (and deterministic sites)."""
        return self.postprocess_fn(model_args, model_kwargs or {})

    def __getstate__(self):
        # NumPyro's MCMC pickles its kernel (``pickle.dumps(mcmc)``); the jitted ``init``
        # closures cannot be pickled and are rebuilt on the next ``init``. Everything else
        # stays (NumPyro's HMC also drops ``_sample_fn``: ppl's is a bound method, kept so
        # that an unpickled run continues from ``post_warmup_state``)
        state = self.__dict__.copy()
        state["_init_cache"] = {}
        return state

    def adapt_statistic(self, info) -> jax.Array:
        """The acceptance probability that step-size adaptation steers to its target."""
        return summarize(info).acceptance_rate

    def gradient_evaluations(self, info) -> jax.Array | None:
        """Gradient evaluations of the log density in the step that returned ``info`` (the
        state's ``num_steps``), or ``None`` where this kernel does not count them."""
        return None

    def divergence(self, info) -> jax.Array | None:
        """Whether the step that returned ``info`` diverged (the state's ``diverging``), or
        ``None`` where this kernel does not report it."""
        return None

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        if self._model is None and self._potential_fn is None:
            raise ValueError("This kernel has neither a `model` nor a `potential_fn`.")
        self._num_warmup = num_warmup
        vectorized = not is_prng_key(rng_key)
        split = jax.vmap(jax.random.split) if vectorized else jax.random.split
        keys = split(rng_key)
        rng_key, key_init = (keys[:, 0], keys[:, 1]) if vectorized else (keys[0], keys[1])
        if self._model is not None:
            init_params = self._setup(key_init, init_params, model_args, model_kwargs)
        if isinstance(init_params, ParamInfo):
            init_params = init_params.z
        if init_params is None:
            raise ValueError("Valid `init_params` must be provided with `potential_fn`.")
        self._check_mass_structure(init_params, vectorized)
        self._sample_fn = self._sample_one  # vmapped in ``sample`` for vectorized chains
        return self._init_fn(num_warmup, vectorized, model_args, model_kwargs)(init_params, rng_key)

    def _check_mass_structure(self, z, vectorized: bool = False) -> None:
        """A ``ValueError`` naming what is wrong with a structured ``dense_mass`` (or a
        structured ``inverse_mass_matrix``) for the latent sites of ``z`` (with a leading
        chain axis when ``vectorized``)."""
        imm = self._inverse_mass_matrix
        structured = isinstance(self._mass_structure, list)
        if not (structured or isinstance(imm, dict)):
            return
        who = type(self).__name__
        if not isinstance(z, dict):
            raise ValueError(
                f"{who}: a structured mass matrix (dense_mass=[...] or a dict"
                " inverse_mass_matrix) needs a model or a dict of init_params"
            )
        if isinstance(imm, dict) and not structured:
            if len(imm) == 1 and set(next(iter(imm))) == set(z):
                # NumPyro's report of a full diagonal / dense matrix on a model (one block
                # keyed by the sorted site names, over the flattened latents in that order,
                # as ppl's): its array, so that NumPyro's adapted matrix carries over
                (value,) = imm.values()
                d = ravel_pytree(jax.tree.map(lambda x: x[0], z) if vectorized else z)[0].size
                if jnp.shape(value) not in ((d,), (d, d)):
                    raise ValueError(
                        f"{who}: inverse_mass_matrix {list(imm)} has shape"
                        f" {jnp.shape(value)}; its {d} latent dimensions need ({d},) or ({d}, {d})"
                    )
                self._inverse_mass_matrix = jnp.asarray(value)
                return
            if self._mass_structure is False:
                # NumPyro runs dense_mass=False on a model as dense_mass=[]: the dict's
                # blocks as given, the sites it leaves out in one diagonal block
                check_blocks(imm, z)
                self._mass_structure = []
                return
            raise ValueError(
                f"{who}: a dict inverse_mass_matrix (NumPyro's structured form) needs"
                " dense_mass given as the list of its tuples of site names; with"
                f" dense_mass={self._mass_structure} give a (d,) or (d, d) array"
            )
        check_blocks(self._mass_structure, z)
        if isinstance(imm, dict):
            check_blocks(imm, z)

    def _init_fn(self, num_warmup, vectorized, model_args, model_kwargs) -> Callable:
        """``(z, key) -> KernelState`` (vmapped over chains when ``vectorized``), jitted once
        per (warm-up length, model arguments): arguments are keyed by identity, as NumPyro's
        ``MCMC`` keys its compiled sampler, so a second run compiles nothing here."""
        cache_key = (
            num_warmup,
            vectorized,
            jax.tree.map(_hashable, model_args),
            jax.tree.map(_hashable, tuple(sorted(model_kwargs.items()))),
        )
        try:
            fn = None if _is_under_jax_transform() else self._init_cache.get(cache_key)
        except TypeError:  # unhashable model arguments: no caching
            cache_key, fn = None, None
        if fn is None:
            init_one = partial(
                self._init_one, self._logdensity_fn(model_args, model_kwargs), num_warmup
            )
            fn = jax.jit(jax.vmap(init_one) if vectorized else init_one)
            if cache_key is not None and not _is_under_jax_transform():
                self._init_cache[cache_key] = fn
        return fn

    def _init_one(self, logdensity_fn, num_warmup, z, key) -> KernelState:
        wa_init, _ = self._adapter(logdensity_fn)
        key, key_adapt = jax.random.split(key)
        step_size = jnp.asarray(self._step_size, jnp.result_type(float))
        inv_mass = self._inverse_mass_matrix
        if isinstance(inv_mass, dict):  # NumPyro's initializer fills in the dict it is given
            inv_mass = dict(inv_mass)
        adapt = AdaptState(
            *wa_init((z, None, None, None), key_adapt, step_size, inverse_mass_matrix=inv_mass)
        )
        if num_warmup > 0:
            adapt = self._refind_step_size(logdensity_fn, adapt, z)
        inner = self._build(logdensity_fn, adapt).init(z)
        zero = jnp.zeros((), jnp.result_type(float))
        # a count field only for kernels that count (the info's structure, not its values)
        info = jax.eval_shape(self._build(logdensity_fn, adapt).step, key, inner)[1]
        counted = self.gradient_evaluations(info) is not None
        num_steps = jnp.zeros((), jnp.int32) if counted else None
        diverging = jnp.zeros((), bool) if self.divergence(info) is not None else None
        return KernelState(jnp.array(0), inner, adapt, zero, zero, key, num_steps, diverging)

    def _build_at(self, logdensity_fn: Callable, adapt: AdaptState, t) -> Kernel:
        """The kernel that takes step ``t`` (:class:`NUTS` switches its depth bound after
        warm-up, NumPyro's ``max_tree_depth=(warm-up, sampling)``)."""
        return self._build(logdensity_fn, adapt)

    def _refind_step_size(self, logdensity_fn, adapt: AdaptState, z) -> AdaptState:
        """Restart dual averaging from ``find_step_size``'s reasonable step size at z."""
        find = self.find_step_size(logdensity_fn)
        if find is None or not self._adapt_step_size:
            return adapt
        rng_key, key = jax.random.split(adapt.rng_key)
        step_size = find(adapt.step_size, adapt.inverse_mass_matrix, (z, None, None, None), key)
        ss_init, _ = dual_averaging()
        ss_state = ss_init(jnp.log(10.0) + jnp.log(step_size))
        return adapt._replace(step_size=step_size, ss_state=ss_state, rng_key=rng_key)

    def _sample_one(self, state, model_args, model_kwargs, t):
        """One step; ``t`` is the iteration (shared by vectorized chains, so the warm-up
        branches below stay real conditionals under ``vmap``)."""
        logdensity_fn = self._logdensity_fn(model_args, model_kwargs)
        rng_key, key_step = jax.random.split(state.rng_key)
        kernel = self._build_at(logdensity_fn, state.adapt, t)
        inner, info = kernel.step(key_step, state.inner)
        accept_prob = self.adapt_statistic(info)
        warm = state.i < self._num_warmup
        adapt = state.adapt
        if self._adapt_step_size or self._adapt_mass_matrix:
            _, wa_update = self._adapter(logdensity_fn)
            z_info = (inner.position, None, None, None)
            windows = build_adaptation_schedule(self._num_warmup)
            ends = jnp.asarray([w.end for w in windows[1:-1]] or [-1])

            def update(adapt):
                adapt = AdaptState(*wa_update(t, accept_prob, z_info, adapt))
                return jax.lax.cond(
                    jnp.any(t == ends),
                    lambda a: self._refind_step_size(logdensity_fn, a, inner.position),
                    identity,
                    adapt,
                )

            adapt = jax.lax.cond(t < self._num_warmup, update, identity, adapt)
        i = state.i + 1
        n = jnp.where(warm, i, i - self._num_warmup)
        mean_accept_prob = state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / n
        num_steps = self.gradient_evaluations(info)
        if num_steps is not None:
            num_steps = jnp.asarray(num_steps, jnp.int32)
        diverging = self.divergence(info)
        return KernelState(
            i, inner, adapt, accept_prob, mean_accept_prob, rng_key, num_steps, diverging
        )

    def sample(self, state, model_args, model_kwargs):
        if self._sample_fn is None:
            raise RuntimeError("`init` must be called before `sample`.")
        if jnp.ndim(state.i) == 0:
            return self._sample_fn(state, model_args, model_kwargs, state.i)
        # vectorized chains: warm-up rescue of lost chains (``ensemble_rescue``)
        t = state.i[0]
        new = jax.vmap(self._sample_fn, in_axes=(0, None, None, None))(
            state, model_args, model_kwargs, t
        )
        return rescue_vectorized(new, t, self._num_warmup)


def _leapfrog_step_size(logdensity_fn: Callable) -> Callable:
    """NumPyro's ``find_reasonable_step_size`` (leapfrog step size whose one-step MH ratio
    crosses 0.8) for a log density over an unconstrained dict."""

    def momentum(z, inverse_mass_matrix, key):
        flat, unravel = ravel_pytree(z)
        eps = jax.random.normal(key, flat.shape, flat.dtype)
        if is_diagonal(inverse_mass_matrix):
            return unravel(eps / jnp.sqrt(inverse_mass_matrix))
        return unravel(euclidean(inverse_mass_matrix, z).momentum(eps))

    return partial(
        find_reasonable_step_size,
        lambda z: -logdensity_fn(z),
        euclidean_kinetic_energy,
        momentum,
    )


class RandomWalk(ModelKernel):
    """Gaussian random-walk Metropolis on a NumPyro model (unconstrained space), scale
    tuned during warm-up to ``target_accept_prob`` (default 0.234); with
    ``adapt_mass_matrix=True`` the proposal is also preconditioned by the adapted
    diagonal posterior variances.

    Example::

        mcmc = MCMC(ppl.mcmc.RandomWalk(model, step_size=0.5), num_warmup=1000,
                    num_samples=1000)
    """

    target_accept_prob = 0.234
    supports_mass_matrix = True

    def build(self, logdensity_fn, step_size, inverse_mass_matrix=1.0):
        return random_walk(logdensity_fn, step_size, inverse_mass_matrix)

    def gradient_evaluations(self, info):
        return 0


class MALA(ModelKernel):
    """Metropolis-adjusted Langevin on a NumPyro model, step size tuned during warm-up to
    ``target_accept_prob`` (default 0.574) and, with ``adapt_mass_matrix=True`` (the
    default), a diagonal inverse mass matrix (preconditioner) estimated from the warm-up
    draws in Stan's windows.

    Example::

        mcmc = MCMC(ppl.mcmc.MALA(model, step_size=0.1), num_warmup=500, num_samples=1000)
    """

    target_accept_prob = 0.574
    supports_mass_matrix = True
    adapts_mass_matrix = True

    def build(self, logdensity_fn, step_size, inverse_mass_matrix=1.0):
        return mala(logdensity_fn, step_size, inverse_mass_matrix)

    def gradient_evaluations(self, info):
        return 1  # at the proposal

    def find_step_size(self, logdensity_fn):
        # one MALA step of size ε is one leapfrog step of size h = √(2ε)
        find = _leapfrog_step_size(logdensity_fn)
        return lambda eps, imm, z_info, key: 0.5 * find(jnp.sqrt(2 * eps), imm, z_info, key) ** 2


class _LeapfrogKernel(ModelKernel):
    """Kernels that integrate Hamilton's equations by leapfrog (HMC, NUTS): a diagonal,
    dense or structured mass matrix (NumPyro's ``dense_mass``), adapted by default, and
    NumPyro's leapfrog step-size search.

    :class:`HMC` and :class:`NUTS` are also NumPyro's ``HMC`` / ``NUTS`` for
    ``isinstance``, so that NumPyro's composite kernels take them as their inner kernel
    (``HMCGibbs``, ``DiscreteHMCGibbs``, ``HMCECS``, ``Gibbs`` blocks): those drive an
    inner kernel only through ``init`` / ``sample`` / ``refresh`` / ``wrap_model`` /
    ``get_potential_fn`` / ``get_constrain_fn``, which ppl's kernels implement. NumPyro's
    ``MixedHMC`` reads NumPyro's HMC state internals instead, and is refused by name."""

    supports_mass_matrix = True
    adapts_mass_matrix = True

    @property
    def _dense_mass(self):
        # read only by NumPyro's MixedHMC (with _target_accept_prob), which also drives
        # NumPyro's HMCState internals
        raise self._mixed_hmc_refusal()

    @property
    def _target_accept_prob(self):
        raise self._mixed_hmc_refusal()

    def _mixed_hmc_refusal(self) -> ValueError:
        return ValueError(
            f"ppl.mcmc.{type(self).__name__} cannot be the inner kernel of NumPyro's MixedHMC"
            " (it steps NumPyro's own HMC state: momentum and mass-matrix internals); use"
            " numpyro.infer.HMC there, or mark the discrete sites for enumeration"
            " (config_enumerate) and run ppl.mcmc.NUTS on the model"
        )

    def _set_mass_structure(self, dense_mass, who: str) -> None:
        self._mass_structure = dense_mass  # not ``_dense_mass``: MixedHMC's refusal above
        check_inverse_mass_matrix(self._inverse_mass_matrix, who)

    def find_step_size(self, logdensity_fn):
        return _leapfrog_step_size(logdensity_fn)


class HMC(_LeapfrogKernel, NumPyroHMC):
    """HMC with ``num_steps`` leapfrog steps (default 10) on a NumPyro model
    (``adjusted=False``: no MH test); step size tuned during warm-up to
    ``target_accept_prob`` (default 0.8) and, with ``adapt_mass_matrix=True`` (the default),
    the inverse mass matrix estimated from the warm-up draws in Stan's windows (NumPyro's
    ``warmup_adapter``): a diagonal, or as NumPyro's ``dense_mass=True`` one dense (d, d)
    covariance over the flattened unconstrained latent vector, or ``dense_mass=[("x", "y"),
    ...]`` NumPyro's structured form (dense blocks over the named sites, one diagonal block
    over the rest).
    ``diverging`` (collected by default, as NumPyro's HMC does) flags an energy error above
    1000. Each step's ε is jittered uniformly within ±``step_size_jitter`` (default 20%) of the
    tuned value: with a fixed ε·L, a well-preconditioned near-Gaussian posterior can make
    trajectories near-periodic (measured on a 5-d Gaussian: min ESS 8–65 of 2000 draws in
    3 of 8 runs without jitter, ≥ 382 in all 8 with it). ``step_size_jitter=0`` turns it off.
    ``trajectory_length`` τ without ``num_steps`` is NumPyro's ``HMC(model,
    trajectory_length=τ)``: each iteration takes n = ⌈τ/ε⌉ leapfrog steps of size τ/n for
    the (adapted, jittered) ε, reported as ``num_steps``; with both given, as in NumPyro,
    the step size is τ / ``num_steps`` and not adapted (NumPyro warns; so does ppl).
    NumPyro's keywords work for a drop-in swap (``dense_mass``, ``regularize_mass_matrix``,
    ``find_heuristic_step_size``); those ppl cannot honour (``kinetic_fn``,
    ``forward_mode_differentiation``) raise a ``ValueError``. One default differs: with
    neither ``num_steps`` nor ``trajectory_length``, ppl takes 10 steps where NumPyro's
    ``HMC`` takes τ = 2π.

    Example::

        mcmc = MCMC(ppl.mcmc.HMC(model, num_steps=10), num_warmup=500, num_samples=1000,
                    num_chains=2, chain_method="vectorized")
        mcmc = MCMC(ppl.mcmc.HMC(model, num_steps=10, dense_mass=True), ...)
    """

    @numpyro_positional(NUMPYRO_HMC_ARGS)
    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        *,
        step_size: float = 0.1,
        num_steps: int | None = None,
        adjusted: bool = True,
        adapt_step_size: bool = True,
        target_accept_prob: float | None = None,
        init_strategy: Callable = init_to_uniform,
        adapt_mass_matrix: bool | None = None,
        inverse_mass_matrix: jax.Array | None = None,
        step_size_jitter: float = 0.2,
        trajectory_length: float | None = None,
        regularize_mass_matrix: bool = True,
        **numpyro_kwargs,
    ):
        dense_mass = numpyro_options("ppl.mcmc.HMC", numpyro_kwargs)
        super().__init__(
            model,
            potential_fn,
            step_size,
            adapt_step_size,
            target_accept_prob,
            init_strategy,
            adapt_mass_matrix,
            inverse_mass_matrix,
            regularize_mass_matrix,
        )
        self._set_mass_structure(dense_mass, "ppl.mcmc.HMC")
        if num_steps is None and trajectory_length is None:
            num_steps = 10
        self._trajectory_length = None
        if num_steps is not None:
            self._num_steps = count(num_steps, "num_steps", "HMC")
            if trajectory_length is not None:  # NumPyro: ε = τ / num_steps, not adapted
                length = positive_length(trajectory_length, "ppl.mcmc.HMC")
                if adapt_step_size:
                    warnings.warn(
                        "ppl.mcmc.HMC: with both num_steps and trajectory_length the step size"
                        " is trajectory_length / num_steps and is not adapted (as NumPyro's HMC)",
                        stacklevel=2,
                    )
                self._step_size = length / self._num_steps
                self._adapt_step_size = False
        else:  # NumPyro's rule: ⌈trajectory_length / ε⌉ steps of the adapted ε
            self._num_steps = None
            self._trajectory_length = positive_length(trajectory_length, "ppl.mcmc.HMC")
        self._adjusted = adjusted
        self._jitter = jitter_fraction(step_size_jitter, "HMC")

    def build(self, logdensity_fn, step_size, inverse_mass_matrix=1.0):
        return hmc(
            logdensity_fn,
            step_size,
            self._num_steps,
            inverse_mass_matrix,
            adjusted=self._adjusted,
            step_size_jitter=self._jitter,
            trajectory_length=self._trajectory_length,
        )

    def gradient_evaluations(self, info):
        return info.num_steps

    def divergence(self, info):
        return info.is_divergent

    @property
    def default_fields(self):
        return ("z", "diverging")  # as NumPyro's HMC: print_summary counts divergences


class NUTS(_LeapfrogKernel, NumPyroNUTS):
    """The No-U-Turn Sampler on a NumPyro model (BlackJAX's NUTS, see
    :func:`ppl.mcmc.nuts`): path length chosen per step, step size tuned during warm-up
    to ``target_accept_prob`` (default 0.8) and the inverse mass matrix estimated in Stan's
    windows (NumPyro's ``warmup_adapter``), as NumPyro's ``NUTS``: a diagonal by default;
    with ``dense_mass=True`` one dense (d, d) covariance over the flattened unconstrained
    latent vector (sites by sorted name), momentum p ~ N(0, M) and U-turn checks on the
    velocities M⁻¹p as BlackJAX's ``gaussian_euclidean``; with ``dense_mass=[("x", "y"),
    ...]`` NumPyro's structured form (dense blocks over the named sites, a diagonal over
    the rest; ``inverse_mass_matrix`` is then NumPyro's dict keyed by tuples of site names).
    NumPyro's keywords work for a drop-in swap: ``dense_mass``, ``max_tree_depth``
    (= ``max_num_doublings``; a pair ``(d1, d2)`` bounds warm-up by d1, sampling by d2),
    ``regularize_mass_matrix``, ``find_heuristic_step_size``,
    ``trajectory_length`` (ignored, as NumPyro's NUTS does); ``kinetic_fn`` and
    ``forward_mode_differentiation`` raise a ``ValueError``. ``extra_fields`` takes
    NumPyro's names: ``potential_energy``, ``z_grad``, ``accept_prob``, ``mean_accept_prob``,
    ``num_steps``, ``diverging``, ``adapt_state.step_size``,
    ``adapt_state.inverse_mass_matrix``.

    Example::

        mcmc = MCMC(ppl.mcmc.NUTS(model), num_warmup=500, num_samples=1000,
                    num_chains=4, chain_method="vectorized")
        mcmc = MCMC(ppl.mcmc.NUTS(model, dense_mass=True), num_warmup=500, num_samples=1000)
        mcmc.run(key, data)
        mcmc.last_state.adapt_state.inverse_mass_matrix  # (d, d): the adapted covariance
    """

    @numpyro_positional(NUMPYRO_NUTS_ARGS)
    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Callable | None = None,
        *,
        step_size: float = 0.1,
        max_num_doublings: int = 10,
        adapt_step_size: bool = True,
        target_accept_prob: float | None = None,
        init_strategy: Callable = init_to_uniform,
        adapt_mass_matrix: bool | None = None,
        inverse_mass_matrix: jax.Array | None = None,
        max_tree_depth: int | None = None,
        regularize_mass_matrix: bool = True,
        trajectory_length: float | None = None,
        **numpyro_kwargs,
    ):
        dense_mass = numpyro_options("ppl.mcmc.NUTS", numpyro_kwargs)
        super().__init__(
            model,
            potential_fn,
            step_size,
            adapt_step_size,
            target_accept_prob,
            init_strategy,
            adapt_mass_matrix,
            inverse_mass_matrix,
            regularize_mass_matrix,
        )
        self._set_mass_structure(dense_mass, "ppl.mcmc.NUTS")
        warmup_doublings = None
        if max_tree_depth is not None:  # NumPyro's name for the same bound
            given = max_tree_depth
            if isinstance(max_tree_depth, tuple):  # NumPyro's (warm-up, sampling) depths
                if len(max_tree_depth) != 2:
                    raise ValueError(
                        "ppl.mcmc.NUTS: max_tree_depth takes one depth or a (warm-up,"
                        f" sampling) pair, got {max_tree_depth}"
                    )
                warmup_doublings, max_tree_depth = max_tree_depth
            if max_num_doublings not in (10, max_tree_depth):
                raise ValueError(
                    f"ppl.mcmc.NUTS: max_tree_depth={given} and max_num_doublings="
                    f"{max_num_doublings} name the same bound; give one"
                )
            max_num_doublings = max_tree_depth
        del trajectory_length  # NumPyro's NUTS ignores it too (an HMC option)
        self._max_num_doublings = count(max_num_doublings, "max_num_doublings", "NUTS")
        self._warmup_doublings = self._max_num_doublings
        if warmup_doublings is not None:
            self._warmup_doublings = count(warmup_doublings, "max_tree_depth[0]", "NUTS")

    def build(self, logdensity_fn, step_size, inverse_mass_matrix=1.0):
        return nuts(logdensity_fn, step_size, inverse_mass_matrix, self._max_num_doublings)

    def _build_at(self, logdensity_fn, adapt: AdaptState, t) -> Kernel:
        kernel = self._build(logdensity_fn, adapt)
        if self._warmup_doublings == self._max_num_doublings:
            return kernel
        # NumPyro's max_tree_depth=(warm-up, sampling): the bound switches after warm-up
        imm = adapt.inverse_mass_matrix
        warm = nuts(logdensity_fn, adapt.step_size, imm, self._warmup_doublings)

        def step(key, state):
            return jax.lax.cond(t < self._num_warmup, warm.step, kernel.step, key, state)

        return kernel._replace(step=step)

    @property
    def default_fields(self):
        return ("z", "diverging")  # as NumPyro's NUTS: print_summary counts divergences

    def gradient_evaluations(self, info):
        return info.num_steps

    def divergence(self, info):
        return info.is_divergent
