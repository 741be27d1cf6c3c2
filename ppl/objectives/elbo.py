"""The evidence lower bound, written in ppl's DSL."""

from __future__ import annotations

import jax.numpy as jnp

from ..core.constructs import particles
from ..infer.svi import Objective
from .weights import log_weight


def elbo(num_particles: int = 1, rao_blackwellize: bool = True) -> Objective:
    """ELBO = E_q[log p(x, z) - log q(z)], averaged over ``num_particles`` particles.

    Correct for any mix of strategies on the guide's sites (discrete ones included). With
    one particle the program is additive: ``reinforce`` scores multiply only the terms
    downstream of their site (per plate element), and ``enum`` / ``mvd`` sites in plates
    cost O(N |support|).
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"elbo: num_particles must be a positive int, got {num_particles!r}")

    def program(model, guide, *args, **kwargs):
        if num_particles == 1:
            return log_weight(model, guide, *args, **kwargs)
        return jnp.mean(particles(log_weight, num_particles)(model, guide, *args, **kwargs))

    return Objective(
        program,
        name=f"elbo(num_particles={num_particles})",
        additive=num_particles == 1,
        rao_blackwellize=rao_blackwellize,
    )
