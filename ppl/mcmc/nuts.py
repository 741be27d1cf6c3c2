"""The No-U-Turn Sampler: BlackJAX's NUTS (multinomial sampling from the trajectory,
biased progressive sampling, Stan's generalized U-turn criterion) in ppl's kernel contract.

BlackJAX is imported when a kernel is built, so ``import ppl`` does not need it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..core.arguments import count
from .base import GradState, Info, Kernel
from .gradient import _grad_init


def nuts(
    logdensity_fn: Callable,
    step_size: float | jax.Array,
    inverse_mass_matrix: float | jax.Array = 1.0,
    max_num_doublings: int = 10,
) -> Kernel:
    """NUTS (Hoffman & Gelman, 2014; Betancourt, 2017) with step size ε and a scalar or
    diagonal ``inverse_mass_matrix``: the trajectory doubles (at most
    ``max_num_doublings`` times, ≤ 2^max − 1 leapfrog steps) until it turns back on
    itself, and the next state is drawn from it in proportion to exp(−H). ``Info``:
    ``acceptance_rate`` is the mean MH acceptance over the trajectory (what step-size
    adaptation targets), ``is_accepted`` whether the position changed.

    Example::

        k = nuts(lambda x: -0.5 * jnp.sum(x**2), step_size=0.5)
        state, info = k.step(jax.random.key(0), k.init(jnp.zeros(3)))
    """
    from blackjax.mcmc import hmc as bj_hmc
    from blackjax.mcmc import nuts as bj_nuts

    max_num_doublings = count(max_num_doublings, "max_num_doublings", "nuts")
    kernel = bj_nuts.build_kernel()
    init = _grad_init(logdensity_fn)

    def step(key, state):
        x, _ = ravel_pytree(state.position)
        inv_mass = jnp.broadcast_to(jnp.asarray(inverse_mass_matrix, x.dtype), x.shape)
        new, info = kernel(
            key, bj_hmc.HMCState(*state), logdensity_fn, step_size, inv_mass, max_num_doublings
        )
        moved = jnp.any(ravel_pytree(new.position)[0] != x)
        return GradState(*new), Info(info.acceptance_rate, moved)

    return Kernel(init, step)
