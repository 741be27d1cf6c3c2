"""Exact Gibbs updates of discrete coordinates by enumerating their support (vectorized)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .base import Info, Kernel, State


def _coords(position, support):
    """[(site or None, flat element count, support values)] in update order."""
    if isinstance(support, Mapping):
        return [(name, int(jnp.size(position[name])), jnp.ravel(v)) for name, v in support.items()]
    return [(None, int(jnp.size(position)), jnp.ravel(support))]


def _get(position, site):
    return position if site is None else position[site]


def _set(position, site, value):
    if site is None:
        return value
    return {**position, site: value}


def enum_gibbs(logdensity_fn: Callable, support: Mapping[str, Any] | jax.Array) -> Kernel:
    """Systematic-scan Gibbs over discrete coordinates: each element of each site is
    redrawn from its exact conditional p(v | rest) ∝ π(x with that element = v),
    v ∈ support, evaluating π at all support values at once with ``jax.vmap``.

    ``support`` maps site names of a dict position to their (shared, per-element) support,
    or is one support array for an array position. Sites not named are left unchanged.

    Example::

        k = enum_gibbs(logp, {"z": jnp.arange(3)})     # position {"z": int array, ...}
        state, info = k.step(key, k.init({"z": jnp.zeros(4, int), "mu": 0.0}))
    """

    def init(position):
        return State(position, jnp.asarray(logdensity_fn(position)))

    def conditional(position, site, i, values):
        """log π at every support value of element i of ``site``; the candidate positions."""
        current = _get(position, site)

        def put(v):
            flat = jnp.ravel(current).at[i].set(v.astype(current.dtype))
            return _set(position, site, flat.reshape(jnp.shape(current)))

        candidates = jax.vmap(put)(values)
        return jax.vmap(logdensity_fn)(candidates), candidates

    def step(key, state):
        position, logdensity = state.position, state.logdensity
        for n, (site, size, values) in enumerate(_coords(position, support)):

            def body(carry, xs, site=site, values=values):
                position, _ = carry
                i, k = xs
                logp, candidates = conditional(position, site, i, values)
                j = jax.random.categorical(k, logp)
                return (jax.tree.map(lambda c: c[j], candidates), logp[j]), None

            keys = jax.random.split(jax.random.fold_in(key, n), size)
            (position, logdensity), _ = jax.lax.scan(
                body, (position, logdensity), (jnp.arange(size), keys)
            )
        return State(position, logdensity), Info(jnp.asarray(1.0), jnp.asarray(True))

    def transition_probs(state):
        """Exact: the product of the per-element conditionals (outcomes grow as |support|ⁿ)."""
        states = jax.tree.map(lambda x: x[None], state)
        logw = jnp.zeros(1)
        for site, size, values in _coords(state.position, support):
            for i in range(size):

                def expand(s, site=site, i=i, values=values):
                    logp, candidates = conditional(s.position, site, i, values)
                    return State(candidates, logp), logp - logsumexp(logp)

                new, logq = jax.vmap(expand)(states)  # (M, K, ...)
                states = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), new)
                logw = (logw[:, None] + logq).reshape(-1)
        return states, jnp.exp(logw)

    return Kernel(init, step, transition_probs)
