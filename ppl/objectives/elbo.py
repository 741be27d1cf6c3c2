"""The evidence lower bound, written in ppl's DSL."""

from __future__ import annotations

import jax.numpy as jnp

from ..core.arguments import count
from ..core.constructs import particles
from ..infer.svi import Objective, numpyro_loss_options
from .weights import default_reinforce, log_weight


@numpyro_loss_options
def elbo(
    num_particles: int = 1,
    rao_blackwellize: bool = True,
    stick_the_landing: bool = False,
    loo: bool = False,
) -> Objective:
    """ELBO = E_q[log p(x, z) - log q(z)], averaged over ``num_particles`` particles.

    Correct for any mix of strategies on the guide's sites (discrete ones included). The
    program is additive: ``reinforce`` scores multiply only the terms downstream of their
    site (per plate element), ``enum`` / ``mvd`` sites in plates cost O(N |support|), and
    ``stick_the_landing=True`` drops the zero-mean score of reparameterized sites (Roeder
    et al. 2017: zero variance when q equals the posterior). The particles are
    independent estimates, vectorized.

    ``loo=True``: the particles share one program instead, and non-reparameterized guide
    sites default to ``reinforce(baseline="loo")`` (each particle's baseline is the mean
    of the others); Rao-Blackwellization then applies across particles only.
    """
    num_particles = count(num_particles, "num_particles", "elbo")
    if loo and num_particles < 2:
        raise ValueError("elbo: loo=True needs num_particles >= 2")
    if loo and stick_the_landing:
        raise ValueError("elbo: stick_the_landing is not supported with loo=True")

    def loo_program(model, guide, *args, **kwargs):
        guide = default_reinforce(guide, baseline="loo")
        return jnp.mean(particles(log_weight, num_particles)(model, guide, *args, **kwargs))

    name = f"elbo(num_particles={num_particles}{', loo=True' if loo else ''})"
    return Objective(
        loo_program if loo else log_weight,
        name=name,
        additive=not loo,
        rao_blackwellize=rao_blackwellize,
        stick_the_landing=stick_the_landing,
        num_estimates=1 if loo else num_particles,
    )
