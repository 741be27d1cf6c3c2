"""Reweighted wake-sleep and the tail-adaptive f-divergence: self-normalized weights."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro
from jax import lax
from numpyro.handlers import block, seed

from ..core.arguments import count
from ..core.constructs import density, density_terms, particles, simulate
from ..core.elements import independent_plates, per_element, trace_terms
from ..infer.svi import Objective, numpyro_loss_options
from .weights import element_particles, log_mean_exp, require_reparameterized


def _hidden_guide_run(guide, args, kwargs):
    """Run the guide with its own key, invisible to the enclosing expectation (no
    gradient strategies apply: the self-normalized weights are treated as constants)."""
    key = numpyro.prng_key()
    with block(hide_fn=lambda msg: msg["type"] == "sample"), seed(rng_seed=key):
        return simulate(guide, *args, **kwargs)


@numpyro_loss_options
def rws(
    num_particles: int = 5,
    dreg: bool = False,
    rejuvenate: Callable | None = None,
    steps: int = 1,
) -> Objective:
    """Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019) as one SVI loss.

    Value: the IWAE bound (1/K) log sum_k w_k. Gradient: wake-theta for the model's
    parameters, sum_k w~_k grad_theta log p(x, z_k); wake-phi for the guide's,
    sum_k w~_k grad_phi log q(z_k) (w~ self-normalized, z_k fixed), i.e. the inclusive
    KL(p(z|x) || q) is decreased. Works for discrete guides without score functions;
    biased for finite K, consistent as K grows. Parameters shared by model and guide get
    both updates. ``dreg=True`` (reparameterized guides): the doubly-reparameterized
    wake-phi gradient (Tucker et al. 2019), same expectation, lower variance:
    sum_k (w~_k - w~_k^2) d log w_k / dz_k dz_k / dphi.

    ``rejuvenate=make_kernel, steps=n`` (MCMC rejuvenation): the K weighted particles are
    resampled and each moved by n steps of ``make_kernel(logdensity)``, a kernel (e.g.
    ``lambda ld: ppl.mcmc.mala(ld, 0.1)``) over the dict of latent values invariant for
    the posterior p(z | x) ∝ p(x, z) (model parameters held fixed); wake-theta and
    wake-phi then average over the moved, equally weighted particles, so the gradient
    bias of a small K shrinks as the chain mixes. Example::

        loss = ppl.objectives.rws(2, rejuvenate=lambda ld: ppl.mcmc.mala(ld, 0.2), steps=10)
    """
    num_particles = count(num_particles, "num_particles", "rws")
    if rejuvenate is not None and dreg:
        raise ValueError("rws: rejuvenate is not combined with dreg=True")
    steps = count(steps, "steps", "rws")

    def program(model, guide, *args, **kwargs):
        if dreg:
            return _dreg_rws(model, guide, num_particles, args, kwargs)
        if rejuvenate is not None:
            return _rejuvenated_rws(model, guide, num_particles, rejuvenate, steps, args, kwargs)

        def one(model, guide):
            q = _hidden_guide_run(guide, args, kwargs)
            values = jax.tree.map(lax.stop_gradient, q.values)
            _, log_p, model_trace = density_terms(model, values, *args, **kwargs)
            _, log_q, guide_trace = density_terms(guide, values, *args, **kwargs)
            plates = independent_plates(q.trace, model_trace, guide_trace, who="rws")
            log_p = per_element(log_p, plates, "rws")
            return (log_p, per_element(log_q, plates, "rws")), plates

        (log_p, log_q), plates = element_particles(one, num_particles)(model, guide)
        log_w = lax.stop_gradient(log_p - log_q)
        w = jax.nn.softmax(log_w, axis=0)
        wake = jnp.sum(
            w * ((log_p - lax.stop_gradient(log_p)) + (log_q - lax.stop_gradient(log_q))),
            axis=0,
        )
        return plates.total(log_mean_exp(log_w) + wake)

    name = f"rws(num_particles={num_particles}, dreg={dreg}"
    name += ")" if rejuvenate is None else f", rejuvenate, steps={steps})"
    return Objective(
        program, name=name, subsampling=False if rejuvenate is not None else "independent"
    )


def _rejuvenated_rws(model, guide, num_particles, make_kernel, steps, args, kwargs):
    """IWAE value; wake gradients at resampled particles moved by ``steps`` MCMC steps."""
    from ..mcmc import systematic_resample

    def one():
        q = _hidden_guide_run(guide, args, kwargs)
        values = jax.tree.map(lax.stop_gradient, q.values)
        log_p = density(model, values, *args, fix_params=True, **kwargs)
        log_q = density(guide, values, *args, fix_params=True, **kwargs)
        return values, lax.stop_gradient(log_p - log_q)

    values, log_w = particles(one, num_particles)()
    k_res, k_move = jax.random.split(numpyro.prng_key())
    values = jax.tree.map(lambda v: v[systematic_resample(k_res, log_w)], values)
    kernel = make_kernel(lambda v: density(model, v, *args, fix_params=True, **kwargs))

    def move(v, keys):
        s, _ = lax.scan(lambda s, k: (kernel.step(k, s)[0], None), kernel.init(v), keys)
        return s.position

    keys = jax.random.split(k_move, (num_particles, steps))
    moved = jax.tree.map(lax.stop_gradient, jax.vmap(move)(values, keys))
    log_p = jax.vmap(lambda v: density(model, v, *args, **kwargs))(moved)
    log_q = jax.vmap(lambda v: density(guide, v, *args, **kwargs))(moved)
    wake = jnp.mean((log_p - lax.stop_gradient(log_p)) + (log_q - lax.stop_gradient(log_q)))
    return log_mean_exp(log_w) + wake


def _dreg_rws(model, guide, num_particles, args, kwargs):
    """Wake-theta as in rws; wake-phi pathwise through z_k(phi) with weights w~ - w~^2.

    log p is evaluated twice, at z_k(phi) and at stop_gradient(z_k): their difference
    carries d log p / dz dz/dphi and cancels the model parameters' gradient.
    """

    who = "rws(dreg=True)"

    def one(model, guide):
        q = simulate(guide, *args, **kwargs)
        require_reparameterized(q, who)
        fixed = jax.tree.map(lax.stop_gradient, q.values)
        _, log_p_path, trace = density_terms(model, q, *args, **kwargs)
        _, log_p, _ = density_terms(model, fixed, *args, **kwargs)
        plates = independent_plates(q.trace, trace, who=who)
        log_q_stl = per_element(trace_terms(q.trace, stl=True), plates, who)
        parts = per_element(log_p_path, plates, who), per_element(log_p, plates, who), log_q_stl
        return parts, plates

    (log_p_path, log_p, log_q_stl), plates = element_particles(one, num_particles)(model, guide)
    log_w = lax.stop_gradient(log_p - log_q_stl)
    w = jax.nn.softmax(log_w, axis=0)
    wake_theta = jnp.sum(w * (log_p - lax.stop_gradient(log_p)), axis=0)
    path = log_p_path - log_p - log_q_stl
    wake_phi = jnp.sum(lax.stop_gradient(w - w**2) * (path - lax.stop_gradient(path)), axis=0)
    return plates.total(log_mean_exp(log_w) + wake_theta + wake_phi)


@numpyro_loss_options
def tail_adaptive(num_particles: int = 5, beta: float = -1.0) -> Objective:
    """Tail-adaptive f-divergence (Wang, Liu & Liu 2018) for a reparameterized guide.

    Gradient: sum_k g_k d log w(z_k(phi)) / dz dz/dphi (pathwise; with uniform g it is the
    sticking-the-landing ELBO gradient), with g_k proportional to F(w_k)^beta, F the
    empirical tail probability #{j: w_j >= w_k} / K (rank-based, so heavy-tailed weights
    stay safe). Value (for monitoring): the IWAE bound.
    """
    num_particles = count(num_particles, "num_particles", "tail_adaptive", minimum=2)

    def program(model, guide, *args, **kwargs):
        who = "tail_adaptive"

        def one(model, guide):
            q = simulate(guide, *args, **kwargs)
            require_reparameterized(q, who)
            _, log_p, trace = density_terms(model, q, *args, **kwargs)
            plates = independent_plates(q.trace, trace, who=who)
            log_q_stl = per_element(trace_terms(q.trace, stl=True), plates, who)
            return per_element(log_p, plates, who) - log_q_stl, plates

        log_w, plates = element_particles(one, num_particles)(model, guide)
        fixed = lax.stop_gradient(log_w)
        tail = jnp.mean(fixed[None] >= fixed[:, None], axis=1)  # F(w_k), per element
        gamma = tail**beta
        gamma = gamma / jnp.sum(gamma, axis=0)
        return plates.total(log_mean_exp(fixed) + jnp.sum(gamma * (log_w - fixed), axis=0))

    return Objective(
        program,
        name=f"tail_adaptive(num_particles={num_particles}, beta={beta})",
        subsampling="independent",
    )
