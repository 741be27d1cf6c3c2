"""Kernel combinators: deterministic cycles, random mixtures and repetitions.

Kernels over the same position may keep different states (``State`` vs ``GradState``);
a combinator hands the position from one kernel to the next, re-initializing the state
(one extra log-density evaluation) only when the state types differ. Each combination of
π-invariant kernels is π-invariant; a mixture of reversible kernels is reversible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from ..core.arguments import count
from .base import Kernel, State, summarize


def _convert(kernel: Kernel, state):
    """``state`` as ``kernel``'s state type (same position)."""
    target = jax.eval_shape(kernel.init, state.position)
    if jax.tree.structure(target) == jax.tree.structure(state):
        return state
    return kernel.init(state.position)


def _compose_probs(kernel: Kernel, states, probs):
    """Push a finite mixture (states, probs) through ``kernel``'s exact transition."""
    if kernel.transition_probs is None:
        raise NotImplementedError("a component kernel has no exact transition_probs")
    new, q = jax.vmap(lambda s: kernel.transition_probs(_convert(kernel, s)))(states)
    new = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), new)
    return new, (probs[:, None] * q).reshape(-1)


def cycle(*kernels: Kernel) -> Kernel:
    """Apply ``kernels`` in order: P = P₁P₂⋯Pₖ. The state is the first kernel's.

    Example::

        k = cycle(enum_gibbs(logp, {"z": jnp.arange(2)}), random_walk(logp, 0.5))
    """
    if not kernels:
        raise ValueError("cycle needs at least one kernel")
    first = kernels[0]

    def step(key, state):
        infos = []
        for k, key_k in zip(kernels, jax.random.split(key, len(kernels)), strict=True):
            state, info = k.step(key_k, _convert(k, state))
            infos.append(info)
        return _convert(first, state), tuple(infos)

    def transition_probs(state):
        states = jax.tree.map(lambda x: x[None], state)
        probs = jnp.ones(1)
        for k in kernels:
            states, probs = _compose_probs(k, states, probs)
        return jax.vmap(lambda s: _convert(first, s))(states), probs

    return Kernel(first.init, step, transition_probs)


def mixture(kernels: Sequence[Kernel], probs: Sequence[float] | jax.Array) -> Kernel:
    """Pick kernel i with probability ``probs[i]`` each step: P = Σᵢ wᵢPᵢ.

    The info is :func:`summarize` of the chosen kernel's. Example::

        k = mixture([random_walk(logp, 0.1), random_walk(logp, 2.0)], [0.5, 0.5])
    """
    kernels = tuple(kernels)
    probs = jnp.asarray(probs)
    if probs.shape != (len(kernels),):
        raise ValueError(f"{len(kernels)} kernels but probs of shape {probs.shape}")
    first = kernels[0]

    def branch(k):
        def run(key, state):
            new, info = k.step(key, _convert(k, state))
            return _convert(first, new), summarize(info)

        return run

    def step(key, state):
        k_choice, k_step = jax.random.split(key)
        i = jax.random.categorical(k_choice, jnp.log(probs))
        return jax.lax.switch(i, [branch(k) for k in kernels], k_step, state)

    def transition_probs(state):
        parts = []
        for k, w in zip(kernels, probs, strict=True):
            states, p = _compose_probs(k, jax.tree.map(lambda x: x[None], state), w[None])
            parts.append((jax.vmap(lambda s: _convert(first, s))(states), p))
        states = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[s for s, _ in parts])
        return states, jnp.concatenate([p for _, p in parts])

    return Kernel(first.init, step, transition_probs)


def repeat(kernel: Kernel, n: int) -> Kernel:
    """Apply ``kernel`` ``n`` times (a ``lax.scan``): Pⁿ. Infos are stacked along axis 0.

    Example: ``repeat(mala(logp, 0.1), 10)``.
    """
    n = count(n, "n", "repeat")

    def step(key, state):
        return jax.lax.scan(lambda s, k: kernel.step(k, s), state, jax.random.split(key, n))

    def transition_probs(state):
        states, probs = jax.tree.map(lambda x: x[None], state), jnp.ones(1)
        for _ in range(n):
            states, probs = _compose_probs(kernel, states, probs)
        return states, probs

    return Kernel(kernel.init, step, transition_probs)


def block(
    make_kernel: Callable[[Callable], Kernel], logdensity_fn: Callable, sites: str | Sequence[str]
) -> Kernel:
    """Update only ``sites`` of a dict position, the others held fixed: the inner kernel
    ``make_kernel(ld)`` targets the conditional ld(sub) = log π({**rest, **sub}).

    ``sites`` is a list of names (the inner position is a dict) or one name (the inner
    position is that site's value). The state is a ``State`` of the full position; the
    inner state is rebuilt each step (one extra log-density evaluation). Example::

        k = block(lambda ld: mala(ld, 0.1), logp, ["mu", "tau"])
        k = block(lambda ld: mh(ld, lambda z: dist.Categorical(q)), logp, "z")
    """
    single = isinstance(sites, str)
    sites = (sites,) if single else tuple(sites)

    def pack(sub):
        return sub[sites[0]] if single else sub

    def unpack(value):
        return {sites[0]: value} if single else value

    def init(position):
        return State(position, jnp.asarray(logdensity_fn(position)))

    def inner(position):
        rest = {k: v for k, v in position.items() if k not in sites}
        kernel = make_kernel(lambda sub: logdensity_fn({**rest, **unpack(sub)}))
        return rest, kernel, kernel.init(pack({k: position[k] for k in sites}))

    def step(key, state):
        rest, kernel, s = inner(state.position)
        s, info = kernel.step(key, s)
        return State({**rest, **unpack(s.position)}, s.logdensity), info

    def transition_probs(state):
        rest, kernel, s = inner(state.position)
        if kernel.transition_probs is None:
            raise NotImplementedError("the inner kernel has no exact transition_probs")
        states, probs = kernel.transition_probs(s)
        n = probs.shape[0]
        full = {**jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), rest)}
        return State({**full, **unpack(states.position)}, states.logdensity), probs

    return Kernel(init, step, transition_probs)
