"""Resample-move SMC: likelihood tempering, π_β ∝ prior · likelihood^β, β: 0 → 1, and
data annealing, π_t ∝ prior · Π_{s ≤ t} p(batch_s | θ), one batch of observations at a time.

Each stage reweights by the incremental likelihood, adds the log weighted mean of the
increments to the log-evidence estimate, resamples (systematic) and moves every particle
with a π_t-invariant kernel. With a fixed schedule (and resampling at every stage) the
evidence estimate Ẑ is unbiased (E Ẑ = Z); the adaptive tempering schedule picks β_t by
bisection so the effective sample size is ``target_ess`` · N.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer.util import log_density

from ..core.arguments import check_key, count
from .base import Kernel, summarize
from .mh import random_walk


class SMCResult(NamedTuple):
    """Particles, the log-evidence estimate, the number of stages, the mean acceptance
    rate of the moves, and the particles' normalized log weights (``None`` when they are
    equally weighted, as after tempered SMC's last resampling)."""

    particles: Any
    log_evidence: jax.Array
    num_stages: jax.Array
    acceptance_rate: jax.Array
    log_weights: jax.Array | None = None


def systematic_resample(key: jax.Array, log_weights: jax.Array) -> jax.Array:
    """Indices of a systematic resampling of ``len(log_weights)`` particles.

    Example: ``idx = systematic_resample(key, logw); particles = particles[idx]``.
    """
    n = log_weights.shape[0]
    w = jnp.exp(log_weights - logsumexp(log_weights))
    u = (jax.random.uniform(key) + jnp.arange(n)) / n
    return jnp.clip(jnp.searchsorted(jnp.cumsum(w), u), 0, n - 1)


def _ess_fraction(log_weights):
    w = log_weights - logsumexp(log_weights)
    return jnp.exp(-logsumexp(2 * w)) / log_weights.shape[0]


def tempered_smc(
    key: jax.Array,
    particles: Any,
    logprior_fn: Callable,
    loglik_fn: Callable,
    make_kernel: Callable[[Callable], Kernel],
    num_mcmc_steps: int = 5,
    betas: jax.Array | None = None,
    target_ess: float = 0.5,
    max_stages: int = 500,
) -> SMCResult:
    """Tempered resample-move SMC from ``particles`` (exact prior draws, leading axis N).

    ``make_kernel(logdensity_fn)`` builds the move kernel for each π_β. ``betas`` (increasing,
    ending at 1) fixes the schedule; otherwise it is adaptive. Example::

        res = tempered_smc(key, prior_draws, logprior, loglik,
                           lambda ld: random_walk(ld, 0.3))
        res.log_evidence
    """
    check_key(key, "tempered_smc", seeds=False)
    num_mcmc_steps = count(num_mcmc_steps, "num_mcmc_steps", "tempered_smc", minimum=0)
    max_stages = count(max_stages, "max_stages", "tempered_smc")
    n = jax.tree.leaves(particles)[0].shape[0]
    loglik = jax.vmap(loglik_fn)

    def stage(key, x, beta_prev, beta):
        k_res, k_move = jax.random.split(key)
        logw = (beta - beta_prev) * loglik(x)
        logw = jnp.where(jnp.isnan(logw), -jnp.inf, logw)
        inc = logsumexp(logw) - jnp.log(n)
        x = jax.tree.map(lambda a: a[systematic_resample(k_res, logw)], x)
        kernel = make_kernel(lambda z: logprior_fn(z) + beta * loglik_fn(z))

        def move(z, k):
            s, info = jax.lax.scan(
                lambda s, kk: kernel.step(kk, s),
                kernel.init(z),
                jax.random.split(k, num_mcmc_steps),
            )
            return s.position, summarize(info).acceptance_rate

        x, acc = jax.vmap(move)(x, jax.random.split(k_move, n))
        return x, inc, jnp.mean(acc)

    if betas is not None:
        betas = jnp.asarray(betas)
        prev = jnp.concatenate([jnp.zeros(1, betas.dtype), betas[:-1]])

        def body(carry, xs):
            x, logz = carry
            k, b0, b1 = xs
            x, inc, acc = stage(k, x, b0, b1)
            return (x, logz + inc), acc

        keys = jax.random.split(key, betas.shape[0])
        (x, logz), acc = jax.lax.scan(body, (particles, jnp.zeros(())), (keys, prev, betas))
        return SMCResult(x, logz, jnp.asarray(betas.shape[0]), jnp.mean(acc))

    def next_beta(x, beta):
        ll = loglik(x)

        def ess_at(b):
            return _ess_fraction(jnp.where(jnp.isnan(ll), -jnp.inf, (b - beta) * ll))

        def bisect(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            ok = ess_at(mid) >= target_ess
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

        lo, _ = jax.lax.fori_loop(0, 50, bisect, (beta, jnp.ones_like(beta)))
        return jnp.where(ess_at(1.0) >= target_ess, 1.0, jnp.maximum(lo, beta + 1e-6))

    def cond(carry):
        _, _, beta, _, t, _ = carry
        return (beta < 1.0) & (t < max_stages)

    def body(carry):
        key, x, beta, logz, t, acc = carry
        key, k = jax.random.split(key)
        b = jnp.minimum(next_beta(x, beta), 1.0)
        x, inc, a = stage(k, x, beta, b)
        return key, x, b, logz + inc, t + 1, acc + a

    zero = jnp.zeros(())
    _, x, _, logz, t, acc = jax.lax.while_loop(
        cond, body, (key, particles, zero, zero, jnp.asarray(0), zero)
    )
    return SMCResult(x, logz, t, acc / jnp.maximum(t, 1))


def data_annealed_smc(
    key: jax.Array,
    particles: Any,
    logprior_fn: Callable,
    batch_loglik_fn: Callable,
    num_batches: int,
    make_kernel: Callable[[Callable], Kernel],
    num_mcmc_steps: int = 5,
    resample_threshold: float = 1.0,
) -> SMCResult:
    """SMC with data annealing from ``particles`` (exact prior draws, leading axis N):
    ``batch_loglik_fn(θ)`` returns the log-likelihoods of the ``num_batches`` batches
    (shape ``(num_batches,)``); stage t targets π_t ∝ prior · Π_{s ≤ t} p(batch_s | θ).
    Each stage resamples (systematic) when the ESS of the current weights is below
    ``resample_threshold`` · N (default 1.0: whenever the weights are not uniform, which
    keeps E Ẑ = Z exact), reweights by p(batch_t | θ), adds log Σ W_i p(batch_t | θ_i) to
    the log evidence and moves the weighted particles with ``make_kernel(log π_t)``.

    Returns an :class:`SMCResult` whose particles carry ``log_weights`` (normalized). Example::

        res = data_annealed_smc(key, prior_draws, logprior,
                                lambda th: jnp.stack([loglik(th, b) for b in batches]), 5,
                                lambda ld: random_walk(ld, 0.3))
        res.log_evidence, jnp.exp(res.log_weights) @ res.particles
    """
    check_key(key, "data_annealed_smc", seeds=False)
    num_batches = count(num_batches, "num_batches", "data_annealed_smc")
    num_mcmc_steps = count(num_mcmc_steps, "num_mcmc_steps", "data_annealed_smc", minimum=0)
    n = jax.tree.leaves(particles)[0].shape[0]
    batch_ll = jax.vmap(batch_loglik_fn)

    def stage(carry, xs):
        x, logw, logz = carry
        t, k = xs
        k_res, k_move = jax.random.split(k)
        resample = _ess_fraction(logw) < resample_threshold - 1e-6
        idx = jnp.where(resample, systematic_resample(k_res, logw), jnp.arange(n))
        x = jax.tree.map(lambda a: a[idx], x)
        logw = jnp.where(resample, jnp.zeros(n), logw - logsumexp(logw) + jnp.log(n))
        inc = batch_ll(x)[:, t]
        inc = jnp.where(jnp.isnan(inc), -jnp.inf, inc)
        new_logw = logw + inc
        logz = logz + logsumexp(new_logw) - logsumexp(logw)
        mask = (jnp.arange(num_batches) <= t).astype(inc.dtype)
        kernel = make_kernel(lambda z: logprior_fn(z) + jnp.sum(mask * batch_loglik_fn(z)))

        def move(z, kk):
            s, info = jax.lax.scan(
                lambda s, k3: kernel.step(k3, s),
                kernel.init(z),
                jax.random.split(kk, num_mcmc_steps),
            )
            return s.position, summarize(info).acceptance_rate

        x, acc = jax.vmap(move)(x, jax.random.split(k_move, n))
        return (x, new_logw, logz), jnp.mean(acc)

    keys = jax.random.split(key, num_batches)
    init = (particles, jnp.zeros(n), jnp.zeros(()))
    (x, logw, logz), acc = jax.lax.scan(stage, init, (jnp.arange(num_batches), keys))
    return SMCResult(x, logz, jnp.asarray(num_batches), jnp.mean(acc), logw - logsumexp(logw))


def _batch_loglik(sites, num_batches):
    """(num_batches,) log-likelihoods: each observed site's log-prob elements (along its
    leading axis) are split into ``num_batches`` contiguous batches."""
    total = 0.0
    for s in sites:
        lp = s["fn"].log_prob(s["value"])
        lp = lp if s.get("scale") is None else s["scale"] * lp
        lp = jnp.reshape(lp, (jnp.shape(lp)[0], -1)).sum(1) if jnp.ndim(lp) else lp[None]
        m = lp.shape[0]
        which = (jnp.arange(m) * num_batches) // m
        total = total + jax.nn.one_hot(which, num_batches, dtype=lp.dtype).T @ lp
    return total


def _log_prob(site):
    lp = jnp.sum(site["fn"].log_prob(site["value"]))
    return lp if site.get("scale") is None else site["scale"] * lp


class SMC:
    """SMC on a NumPyro model: particles start at prior draws, moves run in unconstrained
    space; ``run`` returns an :class:`SMCResult` with constrained particles and the log
    evidence log p(data). ``anneal="likelihood"`` (default) tempers the likelihood of the
    observed sites in; ``anneal="data"`` adds the observations in ``num_batches``
    contiguous batches along each observed site's leading axis (:func:`data_annealed_smc`,
    the result carries ``log_weights``).

    Example::

        res = ppl.mcmc.SMC(model, num_particles=1000).run(jax.random.key(0), y)
        res.log_evidence, res.particles["mu"].mean()
        res = ppl.mcmc.SMC(model, anneal="data", num_batches=5).run(jax.random.key(0), y)
    """

    def __init__(
        self,
        model: Callable,
        num_particles: int = 1000,
        make_kernel: Callable[[Callable], Kernel] = lambda ld: random_walk(ld, 0.2),
        num_mcmc_steps: int = 5,
        betas: jax.Array | None = None,
        target_ess: float = 0.5,
        anneal: str = "likelihood",
        num_batches: int = 10,
        resample_threshold: float = 1.0,
    ):
        if anneal not in ("likelihood", "data"):
            raise ValueError(f"anneal must be 'likelihood' or 'data', got {anneal!r}")
        num_particles = count(num_particles, "num_particles", "SMC")
        num_mcmc_steps = count(num_mcmc_steps, "num_mcmc_steps", "SMC", minimum=0)
        num_batches = count(num_batches, "num_batches", "SMC")
        self.anneal = anneal
        self.num_batches = num_batches
        self.resample_threshold = resample_threshold
        self.model = model
        self.num_particles = num_particles
        self.make_kernel = make_kernel
        self.num_mcmc_steps = num_mcmc_steps
        self.betas = betas
        self.target_ess = target_ess

    def run(self, rng_key: jax.Array, *args, **kwargs) -> SMCResult:
        """Run SMC on ``model(*args, **kwargs)``; jit-compatible."""
        check_key(rng_key, "SMC.run", seeds=False)
        k_prior, k_smc = jax.random.split(rng_key)

        def prior_draw(k):
            tr = handlers.trace(handlers.seed(self.model, k)).get_trace(*args, **kwargs)
            return {n: s for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}

        sites = prior_draw(k_prior)
        transforms = {n: biject_to(s["fn"].support) for n, s in sites.items()}

        def constrain(u):
            return {n: transforms[n](v) for n, v in u.items()}

        def split_density(u, batches=False):
            v = constrain(u)
            _, tr = log_density(self.model, args, kwargs, v)
            sample_sites = [s for s in tr.values() if s["type"] == "sample"]
            observed = [s for s in sample_sites if s["is_observed"]]
            if batches:
                lik = _batch_loglik(observed, self.num_batches)
            else:
                lik = sum(_log_prob(s) for s in observed)
            prior = sum(_log_prob(s) for s in sample_sites if not s["is_observed"])
            prior = prior + sum(
                jnp.sum(t.log_abs_det_jacobian(u[n], v[n])) for n, t in transforms.items()
            )
            return prior, lik

        keys = jax.random.split(k_prior, self.num_particles)
        u0 = jax.vmap(
            lambda k: {n: transforms[n].inv(s["value"]) for n, s in prior_draw(k).items()}
        )(keys)
        if self.anneal == "data":
            res = data_annealed_smc(
                k_smc,
                u0,
                lambda u: split_density(u)[0],
                lambda u: split_density(u, batches=True)[1],
                self.num_batches,
                self.make_kernel,
                self.num_mcmc_steps,
                self.resample_threshold,
            )
            return res._replace(particles=jax.vmap(constrain)(res.particles))
        res = tempered_smc(
            k_smc,
            u0,
            lambda u: split_density(u)[0],
            lambda u: split_density(u)[1],
            self.make_kernel,
            self.num_mcmc_steps,
            self.betas,
            self.target_ess,
        )
        return res._replace(particles=jax.vmap(constrain)(res.particles))
