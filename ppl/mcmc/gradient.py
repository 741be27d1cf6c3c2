"""Gradient-based kernels: MALA, and HMC with a fixed number of leapfrog steps or a fixed
trajectory length."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..core.arguments import count
from .base import GradState, Kernel, mh_accept, ravel
from .metric import Metric, euclidean, is_diagonal


def _grad_init(logdensity_fn):
    def init(position):
        logdensity, grad = jax.value_and_grad(logdensity_fn)(position)
        return GradState(position, logdensity, grad)

    return init


def mala(
    logdensity_fn: Callable,
    step_size: float | jax.Array,
    inverse_mass_matrix: float | jax.Array = 1.0,
) -> Kernel:
    """Metropolis-adjusted Langevin: y = x + εM⁻¹∇log π(x) + √(2ε)M^{-1/2}ξ, then an MH
    correction with q(y|x) = N(y; x + εM⁻¹∇log π(x), 2εM⁻¹). ``inverse_mass_matrix`` M⁻¹
    is a scalar or a diagonal (a preconditioner over the flattened position).

    Example::

        k = mala(lambda x: -0.5 * jnp.sum(x**2), step_size=0.5)
        state, info = k.step(key, k.init(jnp.zeros(3)))
    """
    init = _grad_init(logdensity_fn)

    def step(key, state):
        k_prop, k_acc = jax.random.split(key)
        x, unravel = ravel_pytree(state.position)
        gx, _ = ravel_pytree(state.logdensity_grad)
        inv_mass = jnp.broadcast_to(jnp.asarray(inverse_mass_matrix, x.dtype), x.shape)

        def log_q(to, frm, frm_grad):
            d = to - frm - step_size * inv_mass * frm_grad
            return -jnp.sum(d**2 / inv_mass) / (4.0 * step_size)

        noise = jax.random.normal(k_prop, x.shape, x.dtype)
        y = x + step_size * inv_mass * gx + jnp.sqrt(2.0 * step_size * inv_mass) * noise
        new = init(unravel(y))
        gy, _ = ravel_pytree(new.logdensity_grad)
        log_ratio = new.logdensity - state.logdensity + log_q(x, y, gy) - log_q(y, x, gx)
        return mh_accept(k_acc, log_ratio, new, state)

    return Kernel(init, step)


def leapfrog(logdensity_fn: Callable, step_size, num_steps: int, inverse_mass_matrix=1.0):
    """``num_steps`` leapfrog steps of H(x, p) = -log π(x) + ½pᵀM⁻¹p on flat arrays.
    ``inverse_mass_matrix`` M⁻¹ is a scalar, a diagonal, a dense (d, d) matrix or a
    :class:`ppl.mcmc.metric.Metric` (whose ``velocity`` gives M⁻¹p). ``num_steps`` is an
    int, or a traced integer array (a step count computed inside ``jit``: the loop is then
    a ``while``, which reverse-mode autodiff cannot go through).

    Returns ``integrate(x, p, grad_x) -> (x, p, logdensity, grad)``; ``logdensity_fn``
    takes the flat array. Example: ``leapfrog(lambda x: -0.5 * x @ x, 0.1, 10)``.
    """
    if not isinstance(num_steps, jax.core.Tracer):
        num_steps = count(num_steps, "num_steps", "leapfrog", minimum=0)
    vg = jax.value_and_grad(logdensity_fn)

    def integrate(x, p, grad):
        metric = inverse_mass_matrix
        if not isinstance(metric, Metric) and not is_diagonal(metric):
            metric = euclidean(metric, x)

        def move(x, p):
            if isinstance(metric, Metric):
                return x + step_size * metric.velocity(p)
            return x + step_size * inverse_mass_matrix * p

        def body(_, carry):
            x, p, _, grad = carry
            p = p + 0.5 * step_size * grad
            x = move(x, p)
            logdensity, grad = vg(x)
            p = p + 0.5 * step_size * grad
            return x, p, logdensity, grad

        return jax.lax.fori_loop(0, num_steps, body, (x, p, jnp.zeros((), x.dtype), grad))

    return integrate


MAX_ENERGY_ERROR = 1000.0  # NumPyro's HMC: a trajectory whose energy grew more diverged


class HMCInfo(NamedTuple):
    """What one HMC step did: :class:`~ppl.mcmc.Info`'s fields and ``is_divergent``, the
    energy error H(x', p') − H(x, p) above 1000 or not finite (NumPyro's ``diverging``)."""

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array
    num_steps: jax.Array | int | None = None  # leapfrog steps taken (trajectory_length mode)


def positive_length(value, who: str) -> float:
    """``value`` as a float > 0: a trajectory length."""
    try:
        if isinstance(value, bool):
            raise TypeError
        length = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: trajectory_length must be a number > 0, got {value!r}") from None
    if not length > 0 or length == float("inf"):
        raise ValueError(f"{who}: trajectory_length must be a finite number > 0, got {value!r}")
    return length


def jitter_fraction(value, who: str) -> float:
    """``value`` as a float in [0, 1): the relative half-width of a step-size jitter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{who}: step_size_jitter must be a number in [0, 1), got {value!r}")
    return float(value)


def hmc(
    logdensity_fn: Callable,
    step_size: float | jax.Array,
    num_steps: int | None = None,
    inverse_mass_matrix: float | jax.Array = 1.0,
    adjusted: bool = True,
    step_size_jitter: float = 0.0,
    trajectory_length: float | None = None,
) -> Kernel:
    """Hamiltonian Monte Carlo with ``num_steps`` leapfrog steps and a fresh momentum
    p ~ N(0, M) each step; ``adjusted=False`` skips the MH test (unadjusted HMC, biased
    for any ε > 0, used inside annealed objectives), ``adjusted=True`` accepts with
    min(1, exp(H(x, p) − H(x', p'))). ``inverse_mass_matrix`` is a scalar or a diagonal.
    ``step_size_jitter`` j draws each step's ε' = ε·(1 + j·(2u − 1)), u ~ U(0, 1),
    independently of the state (so the kernel stays reversible): it breaks the
    near-periodic trajectories of a fixed ε·L on near-Gaussian targets (Neal, 2011, §5.4).

    Give ``trajectory_length`` τ instead of ``num_steps`` for NumPyro's ``HMC`` rule: each
    step takes n = ⌈τ/ε'⌉ leapfrog steps of size τ/n, so every trajectory has length τ
    exactly and the count follows the (adapted) step size; ``info.num_steps`` reports n.
    The count is then a traced value (a ``while`` loop): such a kernel runs under ``jit``,
    ``vmap`` and ``scan``, but reverse-mode autodiff cannot go through its step.

    Example::

        k = hmc(lambda x: -0.5 * jnp.sum(x**2), step_size=0.3, num_steps=10)
        k = hmc(lambda x: -0.5 * jnp.sum(x**2), step_size=0.3, trajectory_length=1.5)
        state, info = k.step(key, k.init(jnp.zeros(3)))
    """
    if (num_steps is None) == (trajectory_length is None):
        raise ValueError("hmc: give one of num_steps or trajectory_length")
    if num_steps is not None:
        num_steps = count(num_steps, "num_steps", "hmc")
    else:
        trajectory_length = positive_length(trajectory_length, "hmc")
    step_size_jitter = jitter_fraction(step_size_jitter, "hmc")
    init = _grad_init(logdensity_fn)

    def step(key, state):
        # three keys only with jitter, so an unjittered kernel keeps its random stream
        # (fold_in(key, 1) would equal split(key)[1]: ε would be correlated with the MH test)
        k_mom, k_acc, *k_eps = jax.random.split(key, 3 if step_size_jitter else 2)
        x, unravel = ravel(state.position)
        gx, _ = ravel(state.logdensity_grad)
        noise = jax.random.normal(k_mom, x.shape, x.dtype)
        if is_diagonal(inverse_mass_matrix):
            inv_mass = jnp.broadcast_to(jnp.asarray(inverse_mass_matrix, x.dtype), x.shape)
            p = noise / jnp.sqrt(inv_mass)
            kinetic = lambda m: 0.5 * jnp.sum(inv_mass * m**2)
        else:  # dense or structured
            inv_mass = euclidean(inverse_mass_matrix, state.position)
            p, kinetic = inv_mass.momentum(noise), inv_mass.kinetic
        eps = step_size
        if step_size_jitter:
            u = jax.random.uniform(k_eps[0], (), minval=-1.0)
            eps = step_size * (1.0 + step_size_jitter * u)
        steps = num_steps
        if trajectory_length is not None:  # NumPyro's count: n = ⌈τ/ε⌉, then ε = τ/n
            steps = jnp.maximum(jnp.ceil(trajectory_length / eps), 1).astype(jnp.int32)
            eps = trajectory_length / steps
        integrate = leapfrog(lambda z: logdensity_fn(unravel(z)), eps, steps, inv_mass)
        y, q, logdensity, gy = integrate(x, p, gx)
        new = GradState(unravel(y), logdensity, unravel(gy))
        new_kinetic = kinetic(q)
        log_ratio = logdensity - new_kinetic - state.logdensity + kinetic(p)
        # a new energy that is not finite rejects (as NaN does in ``mh_accept``): −∞ comes
        # from a log density of +∞, or a dense pᵀM⁻¹p of an overflowing p rounded to −∞
        log_ratio = jnp.where(jnp.isfinite(new_kinetic - logdensity), log_ratio, -jnp.inf)
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        divergent = log_ratio < -MAX_ENERGY_ERROR
        steps = jnp.asarray(steps, jnp.int32)
        if adjusted:
            new, info = mh_accept(k_acc, log_ratio, new, state)
            return new, HMCInfo(*info, divergent, steps)
        accept_prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
        return new, HMCInfo(accept_prob, jnp.asarray(True), divergent, steps)

    return Kernel(init, step)
