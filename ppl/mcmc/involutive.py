"""Involutive MCMC: an auxiliary proposal v ~ q(·|x) and an involution (x, v) ↦ (x', v').

The move is accepted with probability min(1, π(x') q(v'|x') / (π(x) q(v|x)) · |det J|),
J the Jacobian of the involution with respect to its continuous (floating-point)
coordinates, computed by ``jax.jacfwd``; integer coordinates (discrete positions or
auxiliary choices) are held fixed while differentiating, so the map may branch on them.
MH, MALA, HMC, reversible-jump and split–merge moves are all instances (Neklyudov et al.,
2020; Cusumano-Towner et al., 2020).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import Distribution
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import log_density

from ..core.arguments import count
from .adapters import ModelKernel
from .base import Kernel, State, mh_accept, mh_mixture


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _split_float(tree):
    """(flat float coordinates, rebuild(flat) -> tree with the other leaves unchanged)."""
    leaves, treedef = jax.tree.flatten(tree)
    floats = [i for i, x in enumerate(leaves) if _is_float(x)]
    flat, unravel = ravel_pytree([leaves[i] for i in floats])

    def rebuild(new_flat):
        new = list(leaves)
        for i, v in zip(floats, unravel(new_flat), strict=True):
            new[i] = v
        return jax.tree.unflatten(treedef, new)

    return flat, rebuild


def log_abs_det_jacobian(fn: Callable, tree: Any) -> jax.Array:
    """log |det ∂fn(tree)/∂tree| over the floating-point leaves of ``tree`` (integer leaves
    held fixed), by ``jax.jacfwd`` and ``slogdet``; ``fn`` must map those coordinates to
    as many floating-point outputs. Example: ``log_abs_det_jacobian(lambda t: 2 * t, x)``.
    """
    flat, rebuild = _split_float(tree)
    if flat.size == 0:
        return jnp.zeros(())

    def flat_fn(z):
        out, _ = ravel_pytree([v for v in jax.tree.leaves(fn(rebuild(z))) if _is_float(v)])
        return out

    jac = jax.jacfwd(flat_fn)(flat)
    if jac.shape[0] != jac.shape[1]:
        raise ValueError(
            f"the involution maps {jac.shape[1]} continuous coordinates to {jac.shape[0]}"
        )
    return jnp.linalg.slogdet(jac)[1]


def _aux_sample(aux_proposal, key, x):
    """Draw v ~ q(·|x) and log q(v|x). ``aux_proposal(x)`` returns a distribution, or is a
    NumPyro program whose latent sites form v (a dict)."""
    with handlers.trace() as tr:
        out = handlers.seed(aux_proposal, key)(x)
    if isinstance(out, Distribution):
        v = out.sample(key)
        return v, jnp.sum(out.log_prob(v))
    v = {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}
    return v, _aux_log_prob(aux_proposal, x, v)


def _aux_log_prob(aux_proposal, x, v):
    if isinstance(v, dict):
        return log_density(aux_proposal, (x,), {}, v)[0]
    return jnp.sum(aux_proposal(x).log_prob(v))


def _max_error(a, b) -> jax.Array:
    diffs = jax.tree.map(lambda p, q: jnp.max(jnp.abs(jnp.asarray(p) - jnp.asarray(q))), a, b)
    return jnp.max(jnp.stack([jnp.asarray(d, jnp.float32) for d in jax.tree.leaves(diffs)]))


def _raise_if_not_involution(err, atol):
    err = np.max(np.asarray(err))
    if not err <= atol:  # also catches NaN
        raise AssertionError(
            f"involution check failed: |f(f(x, v)) − (x, v)| = {err:.3e} > {atol:.1e}"
        )


def involutive(
    logdensity_fn: Callable,
    aux_proposal: Callable,
    involution: Callable[[Any, Any], tuple[Any, Any]],
    jacobian: bool = True,
    check: bool = False,
    check_atol: float = 1e-4,
) -> Kernel:
    """Involutive MCMC: draw v ~ ``aux_proposal(x)``, map (x', v') = ``involution(x, v)``
    and accept with min(1, π(x') q(v'|x') |det ∂(x', v')/∂(x, v)| / (π(x) q(v|x))).

    ``aux_proposal(x)`` returns a NumPyro distribution over v, or is a NumPyro program
    whose latent sites form v (a dict). The Jacobian is taken by ``jax.jacfwd`` over the
    floating-point coordinates of (x, v), integer ones held fixed; ``jacobian=False``
    skips it (only valid for volume-preserving or purely discrete involutions).
    ``check=True`` verifies f(f(x, v)) = (x, v) at every step (a host callback raising
    ``AssertionError``; a debugging aid). With a scalar, enumerable auxiliary
    distribution the kernel has exact ``transition_probs``.

    Example (a ±1 move on a ring of 6 states)::

        k = involutive(logp, lambda x: dist.Bernoulli(0.5),
                       lambda x, v: ((x + 2 * v - 1) % 6, 1 - v))
    """

    def init(position):
        return State(position, jnp.asarray(logdensity_fn(position)))

    def log_ratio_of(state, v, log_q):
        x = state.position
        y, w = involution(x, v)
        if check:
            x2, v2 = involution(y, w)
            err = jnp.maximum(_max_error(x2, x), _max_error(v2, v))
            jax.debug.callback(_raise_if_not_involution, err, check_atol)
        new = State(y, jnp.asarray(logdensity_fn(y)))
        log_ratio = new.logdensity + _aux_log_prob(aux_proposal, y, w) - state.logdensity - log_q
        if jacobian:
            log_ratio = log_ratio + log_abs_det_jacobian(lambda xv: involution(*xv), (x, v))
        return log_ratio, new

    def step(key, state):
        k_aux, k_acc = jax.random.split(key)
        v, log_q = _aux_sample(aux_proposal, k_aux, state.position)
        log_ratio, new = log_ratio_of(state, v, log_q)
        return mh_accept(k_acc, log_ratio, new, state)

    def transition_probs(state):
        q = aux_proposal(state.position)
        if not isinstance(q, Distribution) or not q.has_enumerate_support or q.batch_shape:
            raise NotImplementedError("exact transitions need a scalar, enumerable auxiliary")
        vs = q.enumerate_support(expand=False).reshape((-1,) + q.event_shape)

        def one(v):
            log_q = jnp.sum(q.log_prob(v))
            log_ratio, new = log_ratio_of(state, v, log_q)
            states, probs = mh_mixture(log_ratio, new, state)
            return states, probs * jnp.exp(log_q)

        states, probs = jax.vmap(one)(vs)
        states = jax.tree.map(lambda s: s.reshape((-1,) + s.shape[2:]), states)
        return states, probs.reshape(-1)

    return Kernel(init, step, transition_probs)


def hmc_involution(logdensity_fn: Callable, step_size, num_steps: int) -> Callable:
    """HMC's involution: ``num_steps`` leapfrog steps of H(x, p) = −log π(x) + ½|p|²
    followed by the momentum flip p ↦ −p (volume-preserving). With
    ``aux_proposal = lambda x: dist.Normal(jnp.zeros_like(x), 1.0).to_event(1)`` the
    involutive kernel is HMC. Example::

        k = involutive(logp, momentum, hmc_involution(logp, 0.3, 5))
    """
    from .gradient import leapfrog

    num_steps = count(num_steps, "num_steps", "hmc_involution")
    integrate = leapfrog(logdensity_fn, step_size, num_steps)

    def involution(x, p):
        y, q, _, _ = integrate(x, p, jax.grad(logdensity_fn)(x))
        return y, -q

    return involution


class Involutive(ModelKernel):
    """Involutive MCMC on a NumPyro model, in unconstrained space: ``aux_proposal(z)`` (a
    distribution or a NumPyro program over auxiliary sites) and ``involution(z, v) ->
    (z', v')`` act on the dict of unconstrained latent values; the Jacobian comes from
    autodiff (see :func:`involutive`). No step size is adapted unless
    ``adapt_step_size=True``, in which case both functions take ``step_size`` as a third
    (for ``involution``) / second (for ``aux_proposal``) argument.

    Example (a multiplicative move on a positive site, Jacobian by autodiff)::

        def involution(z, v):        # z["s"] unconstrained = log s; move s ↦ s·e^{±0.5}
            sign = 2 * v - 1
            return {**z, "s": z["s"] + 0.5 * sign}, 1 - v

        kernel = ppl.mcmc.Involutive(model, lambda z: dist.Bernoulli(0.5), involution)
    """

    def __init__(
        self,
        model: Callable | None = None,
        aux_proposal: Callable | None = None,
        involution: Callable | None = None,
        potential_fn: Callable | None = None,
        jacobian: bool = True,
        check: bool = False,
        step_size: float = 0.1,
        adapt_step_size: bool = False,
        target_accept_prob: float | None = None,
        init_strategy: Callable = init_to_uniform,
    ):
        if aux_proposal is None or involution is None:
            raise ValueError("Involutive needs `aux_proposal` and `involution`")
        super().__init__(
            model, potential_fn, step_size, adapt_step_size, target_accept_prob, init_strategy
        )
        self._aux = aux_proposal
        self._involution = involution
        self._jacobian = jacobian
        self._check = check

    def build(self, logdensity_fn: Callable, step_size) -> Kernel:
        aux, inv = self._aux, self._involution
        if self._adapt_step_size:
            aux_fn, inv_fn = (lambda z: aux(z, step_size)), (lambda z, v: inv(z, v, step_size))
        else:
            aux_fn, inv_fn = aux, inv
        return involutive(logdensity_fn, aux_fn, inv_fn, self._jacobian, self._check)
