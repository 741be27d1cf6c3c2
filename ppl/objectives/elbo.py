"""The evidence lower bound, written in ppl's DSL."""

from __future__ import annotations

import jax.numpy as jnp

from ..core.constructs import particles
from ..infer.svi import Objective
from .weights import log_weight


def elbo(
    num_particles: int = 1, rao_blackwellize: bool = True, stick_the_landing: bool = False
) -> Objective:
    """ELBO = E_q[log p(x, z) - log q(z)], averaged over ``num_particles`` particles.

    Correct for any mix of strategies on the guide's sites (discrete ones included). With
    one particle the program is additive: ``reinforce`` scores multiply only the terms
    downstream of their site (per plate element), and ``enum`` / ``mvd`` sites in plates
    cost O(N |support|). ``stick_the_landing=True`` drops the zero-mean score of
    reparameterized sites (Roeder et al. 2017): zero variance when q equals the posterior.
    """
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"elbo: num_particles must be a positive int, got {num_particles!r}")
    if stick_the_landing and num_particles != 1:
        raise ValueError("elbo: stick_the_landing is supported with num_particles=1")

    def program(model, guide, *args, **kwargs):
        if num_particles == 1:
            return log_weight(model, guide, *args, **kwargs)
        return jnp.mean(particles(log_weight, num_particles)(model, guide, *args, **kwargs))

    return Objective(
        program,
        name=f"elbo(num_particles={num_particles})",
        additive=num_particles == 1,
        rao_blackwellize=rao_blackwellize,
        stick_the_landing=stick_the_landing,
    )
