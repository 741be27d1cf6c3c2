"""The kernel contract shared by every pure kernel: states, infos and the MH accept step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


class Kernel(NamedTuple):
    """A pure MCMC kernel over positions (pytrees): ``init(position) -> state`` and
    ``step(key, state) -> (state, info)``, both jit/vmap/``lax.scan``-friendly.

    ``transition_probs(state) -> (states, probs)`` is the exact one-step distribution as
    a finite mixture of point masses (leading axis = outcomes), present only when the
    kernel's randomness is finite (MH with an enumerable proposal, ``enum_gibbs`` and
    their combinations); ``ppl.validate.transition_matrix`` uses it.

    Example::

        k = ppl.mcmc.random_walk(lambda x: -0.5 * x**2, scale=1.0)
        state, info = k.step(jax.random.key(0), k.init(0.0))
    """

    init: Callable[[Any], Any]
    step: Callable[[jax.Array, Any], tuple[Any, Any]]
    transition_probs: Callable[[Any], tuple[Any, jax.Array]] | None = None


class State(NamedTuple):
    """Position and its log density (gradient-free kernels)."""

    position: Any
    logdensity: jax.Array


class GradState(NamedTuple):
    """Position, its log density and the gradient of the log density (MALA, HMC)."""

    position: Any
    logdensity: jax.Array
    logdensity_grad: Any


class Info(NamedTuple):
    """What one step did: ``acceptance_rate`` = min(1, MH ratio), ``is_accepted``.

    Unadjusted kernels always accept and report the ratio they *would* have used.
    """

    acceptance_rate: jax.Array
    is_accepted: jax.Array


def ravel(tree: Any) -> tuple[jax.Array, Callable]:
    """``ravel_pytree``, except that an empty tree (a model with no latent sites) gives a
    (0,) array of the default float dtype, not JAX's float32 (which under x64 breaks the
    leapfrog loops' carry types)."""
    flat, unravel = ravel_pytree(tree)
    return (flat.astype(jnp.result_type(float)) if flat.size == 0 else flat), unravel


def summarize(info: Any) -> Info:
    """Collapse a (nested) info of a composite kernel to one :class:`Info`.

    ``acceptance_rate`` is the mean over the inner steps, ``is_accepted`` whether any
    inner step moved. Example: ``summarize(cycle(k1, k2).step(key, s)[1])``.
    """
    if isinstance(info, Info) or hasattr(info, "acceptance_rate"):  # Info, NUTSInfo
        return Info(jnp.mean(info.acceptance_rate), jnp.any(info.is_accepted))
    parts = [summarize(i) for i in info]
    return Info(
        jnp.mean(jnp.stack([p.acceptance_rate for p in parts])),
        jnp.any(jnp.stack([p.is_accepted for p in parts])),
    )


def mh_accept(key: jax.Array, log_ratio: jax.Array, proposal: Any, current: Any):
    """Metropolis–Hastings accept/reject: keep ``proposal`` with probability min(1, e^r).

    Returns ``(state, Info)``. A NaN ratio counts as a rejection. Example::

        state, info = mh_accept(key, new.logdensity - old.logdensity, new, old)
    """
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    acceptance_rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
    is_accepted = jnp.log(jax.random.uniform(key)) < log_ratio
    state = jax.tree.map(lambda p, c: jnp.where(is_accepted, p, c), proposal, current)
    return state, Info(acceptance_rate, is_accepted)


def mh_mixture(log_ratio: jax.Array, proposal: Any, current: Any):
    """The exact MH step as a two-point mixture: (stacked [proposal, current], probs)."""
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    a = jnp.exp(jnp.minimum(log_ratio, 0.0))
    states = jax.tree.map(lambda p, c: jnp.stack([p, c]), proposal, current)
    return states, jnp.stack([a, 1.0 - a])
