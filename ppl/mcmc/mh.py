"""Metropolis–Hastings: the building block ``mh`` and the random-walk / independence recipes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.distributions import Distribution

from .base import Kernel, State, mh_accept, mh_mixture


def _init(logdensity_fn):
    return lambda position: State(position, jnp.asarray(logdensity_fn(position)))


def mh(logdensity_fn: Callable, proposal: Callable[[Any], Distribution]) -> Kernel:
    """Metropolis–Hastings with the conditional proposal ``y ~ proposal(x)`` (a NumPyro
    distribution over an array position; its ``log_prob`` is summed).

    Acceptance: min(1, π(y) q(x|y) / (π(x) q(y|x))). When ``proposal(x)`` has scalar batch
    shape and enumerable support, the kernel also gives exact ``transition_probs``.

    Example::

        k = mh(logp, lambda x: dist.Categorical(probs=jnp.ones(5) / 5))  # on {0..4}
        state, info = k.step(key, k.init(jnp.array(2)))
    """

    def log_q(to, frm):
        return jnp.sum(proposal(frm).log_prob(to))

    def step(key, state):
        k_prop, k_acc = jax.random.split(key)
        x = state.position
        y = proposal(x).sample(k_prop)
        new = State(y, jnp.asarray(logdensity_fn(y)))
        log_ratio = new.logdensity - state.logdensity + log_q(x, y) - log_q(y, x)
        return mh_accept(k_acc, log_ratio, new, state)

    def transition_probs(state):
        x = state.position
        q = proposal(x)
        if not q.has_enumerate_support or q.batch_shape != ():
            raise NotImplementedError("exact transitions need a scalar, enumerable proposal")
        ys = q.enumerate_support(expand=False).reshape((-1,) + q.event_shape)
        ys = ys.astype(jnp.asarray(x).dtype)

        def one(y):
            new = State(y, jnp.asarray(logdensity_fn(y)))
            log_ratio = new.logdensity - state.logdensity + log_q(x, y) - log_q(y, x)
            states, probs = mh_mixture(log_ratio, new, state)
            return states, probs * jnp.exp(log_q(y, x))

        states, probs = jax.vmap(one)(ys)  # (K, 2, ...), (K, 2)
        states = jax.tree.map(lambda s: s.reshape((-1,) + s.shape[2:]), states)
        return states, probs.reshape(-1)

    return Kernel(_init(logdensity_fn), step, transition_probs)


def independence(logdensity_fn: Callable, proposal: Distribution) -> Kernel:
    """Independence Metropolis–Hastings: y ~ q regardless of x, ratio π(y)q(x)/(π(x)q(y)).

    Example::

        k = independence(logp, dist.Normal(0.0, 2.0))
    """
    return mh(logdensity_fn, lambda x: proposal)


def random_walk(
    logdensity_fn: Callable,
    scale: float | jax.Array = 1.0,
    inverse_mass_matrix: float | jax.Array = 1.0,
) -> Kernel:
    """Gaussian random-walk Metropolis on a pytree position: y = x + scale·√(M⁻¹)·ε,
    ε ~ N(0, I), with ``inverse_mass_matrix`` M⁻¹ a scalar or a diagonal over the
    flattened position (a preconditioner).

    The proposal is symmetric, so the ratio is π(y)/π(x). Example::

        k = random_walk(lambda p: -0.5 * jnp.sum(p["x"] ** 2), scale=0.5)
        state, info = k.step(key, k.init({"x": jnp.zeros(3)}))
    """

    def step(key, state):
        k_prop, k_acc = jax.random.split(key)
        flat, unravel = ravel_pytree(state.position)
        noise = jax.random.normal(k_prop, flat.shape, flat.dtype)
        y = unravel(flat + scale * jnp.sqrt(jnp.asarray(inverse_mass_matrix, flat.dtype)) * noise)
        new = State(y, jnp.asarray(logdensity_fn(y)))
        return mh_accept(k_acc, new.logdensity - state.logdensity, new, state)

    return Kernel(_init(logdensity_fn), step)
