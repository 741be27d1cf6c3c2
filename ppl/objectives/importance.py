"""Importance-weighted objectives: IWAE, Rényi (VR), VIMCO, the χ upper bound (CUBO)."""

from __future__ import annotations

import jax.numpy as jnp

from ..infer.svi import Objective
from .weights import default_reinforce, log_mean_exp, log_weights


def _check_k(name, k, minimum=1):
    if not isinstance(k, int) or k < minimum:
        raise ValueError(f"{name}: num_particles must be an int >= {minimum}, got {k!r}")


def iwae(num_particles: int = 5) -> Objective:
    """IWAE bound E[log (1/K) sum_k w_k] <= log p(x), w_k = p(x, z_k) / q(z_k)."""
    _check_k("iwae", num_particles)

    def program(model, guide, *args, **kwargs):
        return log_mean_exp(log_weights(model, guide, num_particles, *args, **kwargs))

    return Objective(program, name=f"iwae(num_particles={num_particles})")


def renyi(alpha: float = 0.5, num_particles: int = 5) -> Objective:
    """Rényi (VR) bound E[1/(1-alpha) log (1/K) sum_k w_k^(1-alpha)]; alpha=0 is IWAE."""
    _check_k("renyi", num_particles)
    if alpha == 1:
        raise ValueError("renyi: alpha = 1 is the ELBO; use ppl.objectives.elbo()")

    def program(model, guide, *args, **kwargs):
        log_w = log_weights(model, guide, num_particles, *args, **kwargs)
        return log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)

    return Objective(program, name=f"renyi(alpha={alpha}, num_particles={num_particles})")


def vimco(num_particles: int = 5) -> Objective:
    """IWAE with VIMCO's leave-one-out baselines on every non-reparameterizable guide site.

    Sites with an explicit ``infer={"grad": ...}`` keep it. Needs K >= 2.
    """
    _check_k("vimco", num_particles, minimum=2)

    def program(model, guide, *args, **kwargs):
        guide = default_reinforce(guide, baseline="loo")
        return log_mean_exp(log_weights(model, guide, num_particles, *args, **kwargs))

    return Objective(program, name=f"vimco(num_particles={num_particles})")


def cubo(n: float = 2.0, num_particles: int = 5, exponentiated: bool = False) -> Objective:
    """χ upper bound CUBO_n = (1/n) log E_q[w^n] >= log p(x), maximized as -CUBO.

    ``exponentiated=False``: -(1/n) log (1/K) sum_k w_k^n (consistent as K grows, like
    IWAE). ``exponentiated=True``: -(1/K) sum_k w_k^n, an expectation whose gradient is
    unbiased (the form Dieng et al. 2017 minimize); its scale grows like p(x)^n, so use
    it on well-scaled models.
    """
    _check_k("cubo", num_particles)
    if n <= 1:
        raise ValueError(f"cubo: n must be > 1, got {n}")

    def program(model, guide, *args, **kwargs):
        log_w = log_weights(model, guide, num_particles, *args, **kwargs)
        if exponentiated:
            return -jnp.mean(jnp.exp(n * log_w))
        return -log_mean_exp(n * log_w) / n

    return Objective(program, name=f"cubo(n={n}, num_particles={num_particles})")
