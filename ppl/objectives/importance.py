"""Importance-weighted objectives: IWAE, Rényi (VR), VIMCO, the χ upper bound (CUBO)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..core.arguments import count
from ..core.constructs import density, particles, simulate
from ..infer.svi import Objective, numpyro_loss_options
from .weights import default_reinforce, log_mean_exp, log_weights, require_reparameterized


@numpyro_loss_options
def iwae(num_particles: int = 5, dreg: bool = False) -> Objective:
    """IWAE bound E[log (1/K) sum_k w_k] <= log p(x), w_k = p(x, z_k) / q(z_k).

    ``dreg=True``: doubly-reparameterized gradients (Tucker et al. 2019) for a fully
    reparameterized guide: the guide's parameters get sum_k w~_k^2 d log w_k / dz dz/dphi,
    the model's sum_k w~_k d log p(x, z_k) (w~ normalized weights); same value, lower
    variance, zero variance at the optimum.
    """
    num_particles = count(num_particles, "num_particles", "iwae")

    def program(model, guide, *args, **kwargs):
        if dreg:
            return _dreg_iwae(model, guide, num_particles, args, kwargs)
        return log_mean_exp(log_weights(model, guide, num_particles, *args, **kwargs))

    return Objective(
        program, name=f"iwae(num_particles={num_particles}, dreg={dreg})", subsampling=False
    )


def _dreg_iwae(model, guide, num_particles, args, kwargs):
    def one():
        q = simulate(guide, *args, **kwargs)
        require_reparameterized(q, "iwae(dreg=True)")
        fixed_values = jax.tree.map(lax.stop_gradient, q.values)
        model_path = density(model, fixed_values, *args, **kwargs)  # d/dtheta only
        guide_path = density(model, q.values, *args, fix_params=True, **kwargs) - q.log_prob_stl
        return model_path - lax.stop_gradient(q.log_prob), guide_path

    log_w_model, log_w_guide = particles(one, num_particles)()
    log_w = lax.stop_gradient(log_w_model)
    w = jax.nn.softmax(log_w)
    value = log_mean_exp(log_w)
    return (
        value
        + jnp.sum(lax.stop_gradient(w) * (log_w_model - log_w))
        + jnp.sum(lax.stop_gradient(w**2) * (log_w_guide - lax.stop_gradient(log_w_guide)))
    )


@numpyro_loss_options
def renyi(alpha: float = 0.5, num_particles: int = 5) -> Objective:
    """Rényi (VR) bound E[1/(1-alpha) log (1/K) sum_k w_k^(1-alpha)]; alpha=0 is IWAE."""
    num_particles = count(num_particles, "num_particles", "renyi")
    if alpha == 1:
        raise ValueError("renyi: alpha = 1 is the ELBO; use ppl.objectives.elbo()")

    def program(model, guide, *args, **kwargs):
        log_w = log_weights(model, guide, num_particles, *args, **kwargs)
        return log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)

    return Objective(
        program, name=f"renyi(alpha={alpha}, num_particles={num_particles})", subsampling=False
    )


@numpyro_loss_options
def vimco(num_particles: int = 5) -> Objective:
    """IWAE with VIMCO's leave-one-out baselines on every non-reparameterizable guide site.

    Sites with an explicit ``infer={"grad": ...}`` keep it. Needs K >= 2.
    """
    num_particles = count(num_particles, "num_particles", "vimco", minimum=2)

    def program(model, guide, *args, **kwargs):
        guide = default_reinforce(guide, baseline="loo")
        return log_mean_exp(log_weights(model, guide, num_particles, *args, **kwargs))

    return Objective(program, name=f"vimco(num_particles={num_particles})", subsampling=False)


@numpyro_loss_options
def cubo(n: float = 2.0, num_particles: int = 5, exponentiated: bool = False) -> Objective:
    """χ upper bound CUBO_n = (1/n) log E_q[w^n] >= log p(x), maximized as -CUBO.

    ``exponentiated=False``: -(1/n) log (1/K) sum_k w_k^n (consistent as K grows, like
    IWAE). ``exponentiated=True``: -(1/K) sum_k w_k^n, an expectation whose gradient is
    unbiased (the form Dieng et al. 2017 minimize); its scale grows like p(x)^n, so use
    it on well-scaled models.
    """
    num_particles = count(num_particles, "num_particles", "cubo")
    if n <= 1:
        raise ValueError(f"cubo: n must be > 1, got {n}")

    def program(model, guide, *args, **kwargs):
        log_w = log_weights(model, guide, num_particles, *args, **kwargs)
        if exponentiated:
            return -jnp.mean(jnp.exp(n * log_w))
        return -log_mean_exp(n * log_w) / n

    return Objective(program, name=f"cubo(n={n}, num_particles={num_particles})", subsampling=False)
