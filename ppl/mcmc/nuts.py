"""The No-U-Turn Sampler: BlackJAX's iterative NUTS (multinomial sampling from the
trajectory, biased progressive sampling between doublings, the iterative generalized U-turn
checks of NumPyro) re-expressed for a small compiled loop body.

The transition is BlackJAX's ``nuts.build_kernel()`` (velocity Verlet, divergence at an
energy error of 1000) step for step and key for key: the same momentum draw, the same
direction and acceptance bits from the same keys, so it returns BlackJAX's proposal (a test
checks it). What differs is the program: the position is one flat array and the branches of
BlackJAX's ``lax.cond`` s are ``jnp.where`` selects (checkpoints are written in place), and
a step's U-turn checks against its checkpoints are one masked test over all the levels, not
an inner loop. XLA's CPU backend runs a large while loop's body op by op (loops under
``xla_cpu_small_while_loop_byte_threshold``, 1 kB by default, become one compiled kernel),
so on small models the number of ops per leapfrog step, not the gradient, sets the cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..core.arguments import count
from .base import GradState, Kernel, ravel
from .gradient import _grad_init
from .metric import Metric, euclidean


class NUTSInfo(NamedTuple):
    """What one NUTS step did: ``acceptance_rate`` (mean MH acceptance over the trajectory,
    what step-size adaptation targets), ``is_accepted`` (the position changed),
    ``num_steps`` (leapfrog steps = gradient evaluations), ``is_divergent``."""

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    num_steps: jax.Array
    is_divergent: jax.Array


class _Point(NamedTuple):
    x: jax.Array
    p: jax.Array
    logdensity: jax.Array
    grad: jax.Array


class _Proposal(NamedTuple):
    x: jax.Array
    logdensity: jax.Array
    grad: jax.Array
    weight: jax.Array  # log of the summed exp(−ΔH) over the states it was drawn from
    log_accept: jax.Array  # log of the summed min(1, exp(−ΔH))


def _select(pred, a, b):
    return jax.tree.map(lambda u, v: jnp.where(pred, u, v), a, b)


def nuts(
    logdensity_fn: Callable,
    step_size: float | jax.Array,
    inverse_mass_matrix: Any = 1.0,
    max_num_doublings: int = 10,
    divergence_threshold: float = 1000.0,
) -> Kernel:
    """NUTS (Hoffman & Gelman, 2014; Betancourt, 2017) with step size ε and an
    ``inverse_mass_matrix`` M⁻¹ over the flattened position: a scalar, a diagonal, a dense
    (d, d) matrix or NumPyro's structured dict (see :mod:`ppl.mcmc.metric`; momentum
    p ~ N(0, M), the U-turn checks on the velocities M⁻¹p, as BlackJAX). The trajectory
    doubles (at most ``max_num_doublings`` times, ≤ 2^max − 1 leapfrog steps) until it
    turns back on itself or diverges (energy error > ``divergence_threshold``, or a new
    energy that is NaN or −∞), and the next state is drawn from it in proportion to
    exp(−H). ``Info`` is a :class:`NUTSInfo`: ``acceptance_rate``, ``is_accepted``,
    ``num_steps``, ``is_divergent``.

    Example::

        k = nuts(lambda x: -0.5 * jnp.sum(x**2), step_size=0.5)
        state, info = k.step(jax.random.key(0), k.init(jnp.zeros(3)))
    """
    max_num_doublings = count(max_num_doublings, "max_num_doublings", "nuts")
    init = _grad_init(logdensity_fn)

    def step(key, state):
        x0, unravel = ravel(state.position)
        g0, _ = ravel(state.logdensity_grad)
        transition = _transition(
            lambda x: logdensity_fn(unravel(x)),
            step_size,
            euclidean(inverse_mass_matrix, state.position),
            max_num_doublings,
            divergence_threshold,
        )
        new, info = transition(key, x0, state.logdensity, g0)
        return GradState(unravel(new.x), new.logdensity, unravel(new.grad)), info

    return Kernel(init, step)


def _transition(logdensity_fn, step_size, metric: Metric, max_num_doublings, divergence_threshold):
    """One NUTS step over flat positions: ``(key, x, logdensity, grad) -> (proposal, info)``."""
    value_and_grad = jax.value_and_grad(logdensity_fn)
    kinetic, velocity = metric.kinetic, metric.velocity

    def leapfrog(pt: _Point, eps) -> _Point:
        p = pt.p + eps * 0.5 * pt.grad
        x = pt.x + eps * 1.0 * velocity(p)
        logdensity, grad = value_and_grad(x)
        return _Point(x, p + eps * 0.5 * grad, logdensity, grad)

    def is_turning(p_left, p_right, p_sum):  # the generalized criterion, on velocities
        rho = p_sum - (p_right + p_left) / 2
        return (jnp.dot(velocity(p_left), rho) <= 0) | (jnp.dot(velocity(p_right), rho) <= 0)

    def integrate(key, start: _Point, direction, ckpts, num_steps, energy0):
        """Up to ``num_steps`` leapfrog steps from ``start``: the subtree's proposal (uniform
        progressive sampling), its last state, momentum sum and length, whether it
        diverged or turned (NumPyro's checkpointed checks of its sub-subtrees)."""
        eps = direction * step_size

        def keep_going(carry):
            n, *_, diverging, turning = carry
            return (n < num_steps) & ~diverging & ~turning

        def add_one(carry):
            n, last, prop, p_sum, (r_ckpt, r_sum_ckpt), _, _ = carry
            new = leapfrog(last, eps)
            delta = energy0 - (-new.logdensity + kinetic(new.p))
            # a NaN energy diverges (BlackJAX); so does a new energy of −∞, which a dense
            # metric's pᵀM⁻¹p of an overflowing momentum can round to (a sum of ±∞ terms)
            delta = jnp.where(jnp.isnan(delta) | (delta == jnp.inf), -jnp.inf, delta)
            diverging = -delta > divergence_threshold
            first = n == 0
            accept = first | jax.random.bernoulli(
                jax.random.fold_in(key, n), jax.nn.sigmoid(delta - prop.weight)
            )
            log_accept = jnp.minimum(delta, 0.0)
            prop = _Proposal(
                *_select(accept, (new.x, new.logdensity, new.grad), prop[:3]),
                jnp.where(first, delta, jnp.logaddexp(prop.weight, delta)),
                jnp.where(first, log_accept, jnp.logaddexp(prop.log_accept, log_accept)),
            )
            p_sum = jnp.where(first, new.p, p_sum + new.p)
            # checkpoints at even steps; at step n check levels idx_min..idx_max
            idx_max = jax.lax.population_count(n >> 1)
            idx_min = idx_max - jax.lax.population_count((~n & (n + 1)) - 1) + 1
            even = n % 2 == 0
            r_ckpt = r_ckpt.at[idx_max].set(jnp.where(even, new.p, r_ckpt[idx_max]))
            r_sum_ckpt = r_sum_ckpt.at[idx_max].set(jnp.where(even, p_sum, r_sum_ckpt[idx_max]))

            # is_turning at all the levels at once, masked to idx_min..idx_max (no inner
            # loop; written out so velocity(new.p) is computed once: vmapping is_turning
            # itself was 3% slower per gradient, same draws)
            levels = jnp.arange(max_num_doublings)
            rho = p_sum - r_sum_ckpt + r_ckpt - (r_ckpt + new.p) / 2
            v_left = jax.vmap(velocity)(r_ckpt)
            turns = (jnp.sum(v_left * rho, -1) <= 0) | (rho @ velocity(new.p) <= 0)
            turning = jnp.any(turns & (levels >= idx_min) & (levels <= idx_max))
            return n + 1, new, prop, p_sum, (r_ckpt, r_sum_ckpt), diverging, turning

        placeholder = _Proposal(start.x, start.logdensity, start.grad, 0.0 * energy0, energy0)
        carry = (0, start, placeholder, start.p, ckpts, False, False)
        n, last, prop, p_sum, ckpts, diverging, turning = jax.lax.while_loop(
            keep_going, add_one, carry
        )
        return prop, last, p_sum, n, ckpts, diverging, turning

    def transition(key, x, logdensity, grad):
        key_momentum, key_integrator = jax.random.split(key)
        p = metric.momentum(jax.random.normal(key_momentum, x.shape, x.dtype))
        start = _Point(x, p, logdensity, grad)
        energy0 = -logdensity + kinetic(p)
        proposal = _Proposal(x, logdensity, grad, jnp.zeros_like(energy0), -jnp.inf)
        ckpts = (jnp.zeros((max_num_doublings, x.size), x.dtype),) * 2

        def keep_going(carry):
            d, *_, diverging, turning = carry
            return (d < max_num_doublings) & ~diverging & ~turning

        def double(carry):
            d, prop, left, right, p_sum, num_states, ckpts, _, _ = carry
            key_dir, key_sub, key_prop = jax.random.split(jax.random.fold_in(key_integrator, d), 3)
            forward = jax.random.bernoulli(key_dir)
            direction = jnp.where(forward, 1, -1)
            start = _select(forward, right, left)
            sub, last, sub_sum, n, ckpts, diverging, turning_sub = integrate(
                key_sub, start, direction, ckpts, 2**d, energy0
            )
            # biased progressive sampling between the old trajectory and the new subtree
            rejected = diverging | turning_sub
            take = ~rejected & jax.random.bernoulli(
                key_prop, jnp.clip(jnp.exp(sub.weight - prop.weight), max=1)
            )
            prop = _Proposal(
                *_select(take, sub[:3], prop[:3]),
                jnp.where(rejected, prop.weight, jnp.logaddexp(prop.weight, sub.weight)),
                jnp.logaddexp(prop.log_accept, sub.log_accept),
            )
            left = _select(forward, left, last)
            right = _select(forward, last, right)
            p_sum = p_sum + sub_sum
            turning = turning_sub | is_turning(left.p, right.p, p_sum)
            return d + 1, prop, left, right, p_sum, num_states + n, ckpts, diverging, turning

        carry = (0, proposal, start, start, p, 0, ckpts, False, False)
        _, prop, _, _, _, num_steps, _, diverging, _ = jax.lax.while_loop(keep_going, double, carry)
        info = NUTSInfo(
            jnp.exp(prop.log_accept) / num_steps,
            jnp.any(prop.x != x),
            num_steps,
            diverging,
        )
        return prop, info

    return transition
