"""NumPyro SVI glue: an objective program becomes an SVI loss (its negation)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro.handlers import substitute, trace

from ..core.arguments import check_key, count, named_plate_errors
from ..core.data_check import check_observed
from ..core.elements import independent_plates
from ..core.expectation import Expectation, refuse_unverified_additive
from ..core.model_enum import check_declared_nesting, declared_plate_nesting


class Objective:
    """A variational objective, ``program(model, guide, *args, **kwargs) -> scalar``.

    Maximized; as an SVI loss it hands NumPyro ``-estimate``. Satisfies SVI's loss
    contract (``loss``, ``loss_with_mutable_state``, ``can_infer_discrete``), and is
    itself callable with the program's signature, so objectives compose (an objective
    can call another inside its own program). ``num_estimates`` averages that many
    independent estimates (vectorized with ``vmap``; each keeps the program's own
    Rao-Blackwellization and plate fast path). ``max_plate_nesting`` is
    ``TraceEnum_ELBO``'s: model-side enumerated dims go left of that many plate dims
    (``None``: as many as the model's plates use). ``subsampling=False`` marks an
    objective that is nonlinear in the log weight of the whole program (MSC, DIWHVI): a
    subsampled plate (``subsample_size`` < size) scales the minibatch's log density up to
    an unbiased estimate of the full one, but the log-mean-exp of such estimates is a
    biased estimate of the bound (not a bound on log p(x)); such an objective refuses a
    subsampled plate by name instead of returning that number. ``"independent"``: an
    objective taken per element of the plates enclosing every sample site (IWAE, Rényi,
    VIMCO, RWS, ...: :func:`ppl.objectives.element_log_weights`), which may be subsampled;
    any other subsampled plate is refused by name.
    """

    can_infer_discrete = True

    def __init__(
        self,
        program: Callable,
        name: str | None = None,
        additive: bool = False,
        rao_blackwellize: bool = True,
        stick_the_landing: bool = False,
        num_estimates: int = 1,
        max_plate_nesting: int | None = None,
        subsampling: bool | str = True,
    ):
        if not callable(program):
            raise TypeError(f"ppl.Objective needs a callable program, got {type(program).__name__}")
        refuse_unverified_additive(program, additive, "ppl.Objective")
        self.name = name or getattr(program, "__name__", "objective")
        self.num_estimates = count(num_estimates, "num_estimates", f"objective {self.name!r}")
        self.program = program
        self.additive = additive
        self.rao_blackwellize = rao_blackwellize
        self.stick_the_landing = stick_the_landing
        self.max_plate_nesting = _plate_nesting(max_plate_nesting, self.name)
        if subsampling not in (True, False, "independent"):
            raise ValueError(
                f"ppl.Objective: subsampling must be True, False or 'independent', "
                f"got {subsampling!r}"
            )
        self.subsampling = subsampling
        self._checked = None  # (model, guide, *data leaves) whose observations were checked
        functools.update_wrapper(self, program, updated=[])

    def __call__(self, model, guide, *args, **kwargs):
        return self.program(model, guide, *args, **kwargs)

    def __repr__(self) -> str:
        return f"ppl.Objective({self.name})"

    def expectation(self, model, guide, params=None) -> Expectation:
        """The :class:`~ppl.Expectation` of this objective for ``model`` and ``guide``.

        ``params`` (constrained values by name) are substituted into both programs.
        """

        def program(*args, **kwargs):
            value = self.program(model, guide, *args, **kwargs)
            if value is None:
                raise TypeError(
                    f"objective {self.name!r} returned None; its program must return a "
                    "scalar (a missing `return`?)"
                )
            return value

        program.__name__ = self.name
        if params is not None:
            program = substitute(program, data=params)
        return Expectation(
            program,
            additive=self.additive,
            rao_blackwellize=self.rao_blackwellize,
            stick_the_landing=self.stick_the_landing,
        )

    def estimate(self, rng_key, params, model, guide, *args, **kwargs):
        """Differentiable unbiased estimate of the objective at ``params``."""
        return self.estimate_with_updates(rng_key, params, model, guide, *args, **kwargs)[0]

    def estimate_with_updates(self, rng_key, params, model, guide, *args, **kwargs):
        """(estimate, next states of the running baselines read, by mutable-site name)."""
        check_key(rng_key, repr(self))
        with named_plate_errors(), declared_plate_nesting(self.max_plate_nesting):
            self.check_data(rng_key, params, model, guide, *args, **kwargs)
            E = self.expectation(model, guide, params)
            if self.num_estimates == 1:
                return E.with_updates(rng_key, *args, **kwargs)
            keys = jax.random.split(rng_key, self.num_estimates)
            values, updates = jax.vmap(lambda k: E.with_updates(k, *args, **kwargs))(keys)
            return jnp.mean(values), jax.tree.map(lambda u: jnp.mean(u, axis=0), updates)

    def check_data(self, rng_key, params, model, guide, *args, **kwargs) -> None:
        """Check the model's concrete observed values (NaN, outside the support), naming
        the site and the first bad index: once per model, guide and data, at trace time
        (guide and model run abstractly, under ``jax.eval_shape``), so never inside a
        compiled step. Observations that are tracers are skipped."""
        checked = (model, guide, *jax.tree.leaves((args, kwargs)))
        last = self._checked
        if last is not None and len(last) == len(checked):
            if all(a is b for a, b in zip(last, checked, strict=True)):
                return

        def run(rng_key, params):
            try:
                guide_tr, model_tr = _plain_traces(rng_key, params, model, guide, args, kwargs)
            except Exception:  # the objective's own run reports what is wrong
                return 0
            check_declared_nesting(self.max_plate_nesting, (model_tr, guide_tr), repr(self))
            check_observed(model_tr, repr(self), supports="concrete")
            if self.subsampling is not True:
                joint = self.subsampling is False
                independent_plates(guide_tr, model_tr, who=self.name, joint=joint)
            return 0

        jax.eval_shape(run, rng_key, params)
        if not any(isinstance(x, jax.core.Tracer) for x in checked):
            self._checked = checked  # held, so that no other object can take their ids

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        """SVI loss: the negated objective estimate."""
        return -self.estimate(rng_key, param_map, model, guide, *args, **kwargs)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        """SVI loss plus the ``numpyro.mutable`` state written by model and guide."""
        check_key(rng_key, repr(self))
        with named_plate_errors():
            mutable = _mutable_sites(rng_key, param_map, model, guide, args, kwargs)
        value, updates = self.estimate_with_updates(
            rng_key, param_map, model, guide, *args, **kwargs
        )
        mutable.update(updates)
        return {"loss": -value, "mutable_state": mutable or None}


def _plain_traces(rng_key, params, model, guide, args, kwargs):
    """Traces of one plain run of guide then model (replayed on the guide's values)."""
    from numpyro.handlers import replay, seed

    guide_tr = trace(substitute(seed(guide, rng_key), data=params)).get_trace(*args, **kwargs)
    model_tr = trace(replay(substitute(seed(model, rng_key), data=params), guide_tr)).get_trace(
        *args, **kwargs
    )
    return guide_tr, model_tr


def _mutable_sites(rng_key, params, model, guide, args, kwargs):
    """Values of mutable sites after one plain run of guide then model."""
    guide_tr, model_tr = _plain_traces(rng_key, params, model, guide, args, kwargs)
    state = {}
    for tr in (model_tr, guide_tr):
        for name, site in tr.items():
            if site["type"] == "mutable":
                state[name] = jax.lax.stop_gradient(site["value"])
    return state


def _plate_nesting(value, who: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{who}: max_plate_nesting must be an int >= 0 or None, got {value!r}")
    return value


def numpyro_loss_options(factory: Callable) -> Callable:
    """Give an objective factory the keywords NumPyro's ELBOs take, so that swapping
    ``loss=`` keeps them: ``max_plate_nesting`` (as ``TraceEnum_ELBO``'s),
    ``vectorize_particles`` (a bool or NumPyro's callable, accepted either way: ppl always
    vectorizes its particles, which changes no value, only memory), and ``Trace_ELBO``'s
    ``sum_sites`` and ``multi_sample_guide`` at their defaults (``True``, ``False``; the
    other values, a per-site loss dictionary and a guide proposing several samples, have no
    ppl counterpart and are refused by name)."""

    name = factory.__name__

    @functools.wraps(factory)
    def make(
        *args,
        max_plate_nesting=None,
        vectorize_particles=True,
        sum_sites=True,
        multi_sample_guide=False,
        **kwargs,
    ):
        if not (isinstance(vectorize_particles, bool) or callable(vectorize_particles)):
            raise TypeError(
                f"{name}: vectorize_particles must be a bool (or NumPyro's callable), "
                f"got {vectorize_particles!r}"
            )
        if sum_sites is not True:
            raise ValueError(
                f"{name}: sum_sites={sum_sites!r} (NumPyro's per-site ELBO dictionary) has no "
                "ppl counterpart: a ppl loss is the summed objective. Leave it at True"
            )
        if multi_sample_guide is not False:
            raise ValueError(
                f"{name}: multi_sample_guide={multi_sample_guide!r} (a guide proposing "
                "several samples per site, NumPyro's Trace_ELBO option) is not supported "
                "by ppl: its guides propose one sample per particle. Leave it at False"
            )
        made = factory(*args, **kwargs)
        made.max_plate_nesting = _plate_nesting(max_plate_nesting, name)
        return made

    signature = inspect.signature(factory)
    extra = [
        inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=default)
        for option, default in (
            ("max_plate_nesting", None),
            ("vectorize_particles", True),
            ("sum_sites", True),
            ("multi_sample_guide", False),
        )
    ]
    make.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])
    return make


def objective(
    program: Callable | None = None,
    *,
    name: str | None = None,
    additive=False,
    max_plate_nesting: int | None = None,
):
    """Decorator: ``@ppl.objective`` turns ``program(model, guide, *args)`` into an SVI loss.

    ``additive=True`` is reserved for ppl's own ELBO family (a user's program is refused:
    its additivity cannot be verified; see :func:`ppl.expectation`).

    Example::

        @ppl.objective
        def my_elbo(model, guide, *args, **kwargs):
            q = ppl.simulate(guide, *args, **kwargs)
            return ppl.density(model, q.values, *args, **kwargs) - q.log_prob

        svi = SVI(model, guide, optax.adam(1e-2), loss=my_elbo)
    """
    options = dict(name=name, additive=additive, max_plate_nesting=max_plate_nesting)
    if program is None:
        return lambda p: Objective(p, **options)
    return Objective(program, **options)
