"""Warm-up rescue of lost chains: many chains run side by side (a leading chain axis), and
during warm-up, which need not preserve the target, a chain whose log density is far below
the others' restarts at a randomly drawn healthy chain's state.

A chain can be lost and still move: started where the posterior is astronomically small
(an explosive ARMA recursion, a huge noise scale), its step-size adaptation shrinks ε to
the local scale and it crawls, for the whole run, at a log density 10⁴–10²⁶⁰ below the
other chains'. Its step size never recovers on its own (NumPyro's NUTS does the same on
arma11: one of 4 chains stuck at θ = −1.16 for 2000 iterations). The ensemble gives a
robust yardstick for free: the median and MAD of the chains' log densities. Nothing here
runs after warm-up: after it the chains are independent and each is an exact MCMC chain.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# a chain is lost when its log density is more than LOST_SCALES robust scales below the
# median (scale: 1.4826·MAD of the chains' log densities, at least √(d/2), the sd of a
# d-dimensional Gaussian's log density). For healthy chains of a d-dimensional Gaussian
# the gap is (χ²_d − median)/2: 20 scales is beyond its 10⁻⁹ quantile for every d ≥ 1.
LOST_SCALES = 20.0


def lost_chains(logdensity: jax.Array, num_dim: int) -> jax.Array:
    """Which chains (the entries of ``logdensity``, one per chain) are lost: log density
    below median − 20·max(1.4826·MAD, √(d/2)), or not a number. With fewer than 3 chains
    no chain can be an outlier (the median of 2 is their mean)."""
    lp = jnp.where(jnp.isnan(logdensity), -jnp.inf, logdensity)
    med = jnp.median(lp)
    mad = 1.4826 * jnp.median(jnp.abs(lp - med))
    scale = jnp.maximum(mad, jnp.sqrt(num_dim / 2.0))
    lost = ~(lp >= med - LOST_SCALES * scale)  # a −∞ median: nothing compares, none lost
    return lost & jnp.isfinite(med)


def restart_from_healthy(key: jax.Array, tree, restart: jax.Array):
    """Every leaf of ``tree`` (leading chain axis) with each chain flagged by ``restart``
    replaced by a uniformly drawn unflagged chain's values; unchanged when no chain or every
    chain is flagged."""
    n = restart.shape[0]
    healthy = ~restart

    def move(tree):
        donor = jax.random.choice(key, n, (n,), p=healthy / jnp.sum(healthy))
        flag = lambda x: restart.reshape((n,) + (1,) * (jnp.ndim(x) - 1))
        return jax.tree.map(lambda x: jnp.where(flag(x), x[donor], x), tree)

    return jax.lax.cond(jnp.any(restart) & jnp.any(healthy), move, lambda t: t, tree)


# how often (in warm-up iterations) :func:`rescue_vectorized` looks for lost chains
RESCUE_EVERY = 50
_SALT = 0x10577


def rescue_vectorized(state, t, num_warmup: int):
    """Warm-up rescue for single-chain kernels run as vectorized chains (``ModelKernel``
    states with a leading chain axis, ``chain_method="vectorized"``): every 50 warm-up
    iterations each lost chain (:func:`lost_chains`, from ``state.inner.logdensity``) takes
    a random healthy chain's whole state, its adaptation state included (its own step size
    and mass matrix were tuned where it was lost), except its random key, so the two chains
    part at the next step. A state without ``inner.logdensity`` is returned unchanged."""
    logdensity = getattr(state.inner, "logdensity", None)
    if logdensity is None or jnp.ndim(logdensity) != 1:
        return state
    num_chains = logdensity.shape[0]
    num_dim = sum(jnp.size(x) for x in jax.tree.leaves(state.inner.position)) // num_chains
    due = ((t + 1) % RESCUE_EVERY == 0) & (t < num_warmup)
    restart = lost_chains(logdensity, num_dim) & due
    key = jax.random.fold_in(state.rng_key[0], _SALT)
    moved = restart_from_healthy(key, state._replace(rng_key=None), restart)
    return moved._replace(rng_key=state.rng_key)
