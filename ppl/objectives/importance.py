"""Importance-weighted objectives: IWAE, Rényi (VR), VIMCO, the χ upper bound (CUBO)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..core.arguments import count
from ..core.constructs import density_terms, simulate
from ..core.elements import independent_plates, per_element, trace_terms
from ..infer.svi import Objective, numpyro_loss_options
from .weights import (
    default_reinforce,
    element_log_weights,
    element_particles,
    log_mean_exp,
    log_weights,
    require_reparameterized,
)


@numpyro_loss_options
def iwae(num_particles: int = 5, dreg: bool = False) -> Objective:
    """IWAE bound E[log (1/K) sum_k w_k] <= log p(x), w_k = p(x, z_k) / q(z_k).

    ``dreg=True``: doubly-reparameterized gradients (Tucker et al. 2019) for a fully
    reparameterized guide: the guide's parameters get sum_k w~_k^2 d log w_k / dz dz/dphi,
    the model's sum_k w~_k d log p(x, z_k) (w~ normalized weights); same value, lower
    variance, zero variance at the optimum.

    Where plates enclose every sample site of model and guide (a VAE's data plate), the
    bound is taken per element of them and summed, as NumPyro's ``RenyiELBO``: a tighter
    bound; those plates may be subsampled (the sum scaled by size / subsample_size), others
    not (:func:`~ppl.objectives.element_log_weights`).
    """
    num_particles = count(num_particles, "num_particles", "iwae")

    def program(model, guide, *args, **kwargs):
        if dreg:
            return _dreg_iwae(model, guide, num_particles, args, kwargs)
        w = element_log_weights(model, guide, num_particles, *args, **kwargs)
        return w.plates.total(log_mean_exp(w.log_w))

    return Objective(
        program,
        name=f"iwae(num_particles={num_particles}, dreg={dreg})",
        subsampling="independent",
    )


def _dreg_iwae(model, guide, num_particles, args, kwargs):
    who = "iwae(dreg=True)"

    def one(model, guide):
        q = simulate(guide, *args, **kwargs)
        require_reparameterized(q, who)
        fixed_values = jax.tree.map(lax.stop_gradient, q.values)
        _, model_path, trace = density_terms(model, fixed_values, *args, **kwargs)  # d/dtheta
        _, guide_path, _ = density_terms(model, q.values, *args, fix_params=True, **kwargs)
        plates = independent_plates(q.trace, trace, who=who)
        log_q = per_element(trace_terms(q.trace), plates, who)
        log_q_stl = per_element(trace_terms(q.trace, stl=True), plates, who)
        model_path = per_element(model_path, plates, who) - lax.stop_gradient(log_q)
        guide_path = per_element(guide_path, plates, who) - log_q_stl
        return (model_path, guide_path), plates

    (log_w_model, log_w_guide), plates = element_particles(one, num_particles)(model, guide)
    log_w = lax.stop_gradient(log_w_model)
    w = jax.nn.softmax(log_w, axis=0)
    value = log_mean_exp(log_w)
    return plates.total(
        value
        + jnp.sum(lax.stop_gradient(w) * (log_w_model - log_w), axis=0)
        + jnp.sum(lax.stop_gradient(w**2) * (log_w_guide - lax.stop_gradient(log_w_guide)), axis=0)
    )


@numpyro_loss_options
def renyi(alpha: float = 0.0, num_particles: int = 2) -> Objective:
    """Rényi (VR) bound E[1/(1-alpha) log (1/K) sum_k w_k^(1-alpha)]; alpha=0 is IWAE.

    NumPyro's ``RenyiELBO(alpha, num_particles)``, with its defaults (alpha 0, 2
    particles: ``RenyiELBO()`` becomes ``renyi()``): where plates enclose every sample
    site of model and guide, the bound is per element of them and summed, and they may
    be subsampled (as :func:`iwae`).
    """
    num_particles = count(num_particles, "num_particles", "renyi")
    if alpha == 1:
        raise ValueError("renyi: alpha = 1 is the ELBO; use ppl.objectives.elbo()")

    def program(model, guide, *args, **kwargs):
        w = element_log_weights(model, guide, num_particles, *args, **kwargs)
        return w.plates.total(log_mean_exp((1.0 - alpha) * w.log_w) / (1.0 - alpha))

    return Objective(
        program,
        name=f"renyi(alpha={alpha}, num_particles={num_particles})",
        subsampling="independent",
    )


@numpyro_loss_options
def vimco(num_particles: int = 5) -> Objective:
    """IWAE with VIMCO's leave-one-out baselines on every non-reparameterizable guide site.

    Sites with an explicit ``infer={"grad": ...}`` keep it. Needs K >= 2. Per element of
    the plates enclosing every sample site, as :func:`iwae` (the leave-one-out baseline of
    particle k replaces its log weight per element).
    """
    num_particles = count(num_particles, "num_particles", "vimco", minimum=2)

    def program(model, guide, *args, **kwargs):
        guide = default_reinforce(guide, baseline="loo")
        w = element_log_weights(model, guide, num_particles, *args, **kwargs)
        return w.plates.total(log_mean_exp(w.log_w))

    return Objective(
        program, name=f"vimco(num_particles={num_particles})", subsampling="independent"
    )


@numpyro_loss_options
def cubo(n: float = 2.0, num_particles: int = 5, exponentiated: bool = False) -> Objective:
    """χ upper bound CUBO_n = (1/n) log E_q[w^n] >= log p(x), maximized as -CUBO.

    ``exponentiated=False``: -(1/n) log (1/K) sum_k w_k^n (consistent as K grows, like
    IWAE). ``exponentiated=True``: -(1/K) sum_k w_k^n, an expectation whose gradient is
    unbiased (the form Dieng et al. 2017 minimize); its scale grows like p(x)^n, so use
    it on well-scaled models.

    ``exponentiated=False`` is per element of the plates enclosing every sample site and
    summed (an upper bound on sum_i log p(x_i)), subsampling them allowed, as :func:`iwae`;
    ``exponentiated=True`` stays the expectation of the whole program's w^n (per element
    it would be another objective) and refuses a subsampled plate.
    """
    num_particles = count(num_particles, "num_particles", "cubo")
    if n <= 1:
        raise ValueError(f"cubo: n must be > 1, got {n}")

    def program(model, guide, *args, **kwargs):
        if exponentiated:  # E[w^n] of the whole program: its meaning, kept joint
            log_w = log_weights(model, guide, num_particles, *args, **kwargs)
            return -jnp.mean(jnp.exp(n * log_w))
        w = element_log_weights(model, guide, num_particles, *args, **kwargs)
        return w.plates.total(-log_mean_exp(n * w.log_w) / n)

    return Objective(
        program,
        name=f"cubo(n={n}, num_particles={num_particles})",
        subsampling=False if exponentiated else "independent",
    )
