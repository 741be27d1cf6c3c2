"""Resample-move SMC: likelihood tempering, π_β ∝ prior · likelihood^β, β: 0 → 1, and
data annealing, π_t ∝ prior · Π_{s ≤ t} p(batch_s | θ), one batch of observations at a time.

Each stage reweights by the incremental likelihood, adds log Σ W_i·(increment)_i to the
log-evidence estimate, resamples (systematic) when the weights' ESS is below
``resample_threshold``·N (default: at every stage) and moves the particles with a
π_t-invariant kernel. The adaptive schedule picks β_t by bisection so that the
conditional ESS, (Σ W_i w_i)² / Σ W_i w_i², equals ``target_ess`` (it is the ESS of the new
weights when the weights were reset by resampling). By default the move kernel is tuned
at every stage from the particles and run until they decorrelate (``smc_moves``).

With a fixed schedule and a fixed kernel (``betas``, ``make_kernel`` and
``num_mcmc_steps`` given) E Ẑ = Z exactly; adaptation (schedule, preconditioner, step
size, number of moves, all functions of the particle population) makes Ẑ unbiased up to
an O(1/N) term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import logsumexp

from ..core.arguments import check_key, count
from .base import Kernel
from .smc_moves import next_step_size, recipe, run_moves, whitening


class SMCStages(NamedTuple):
    """Per-stage record, arrays padded to the maximal number of stages (entries past
    ``num_stages`` are 0): ``beta`` (the temperature reached, or the fraction of batches
    added), ``ess`` (ESS fraction of the weights after reweighting, before resampling),
    ``acceptance_rate`` and ``num_mcmc_steps`` of the moves, ``step_size`` they used
    (whitened units; 0 for a user kernel)."""

    beta: jax.Array
    ess: jax.Array
    acceptance_rate: jax.Array
    num_mcmc_steps: jax.Array
    step_size: jax.Array


class SMCResult(NamedTuple):
    """Particles, the log-evidence estimate, the number of stages, the mean acceptance
    rate of the moves, the particles' normalized log weights, the per-stage record
    (:class:`SMCStages`) and the ESS of the final weights (N when equally weighted).

    ``res.summary()`` is a readable table of the stages (one run, not a vmapped batch).
    """

    particles: Any
    log_evidence: jax.Array
    num_stages: jax.Array
    acceptance_rate: jax.Array
    log_weights: jax.Array | None = None
    stages: SMCStages | None = None
    ess: jax.Array | None = None

    def summary(self) -> str:
        """The stages as a table: β, weight ESS, acceptance, moves, step size."""
        t = int(self.num_stages)
        lines = [
            f"SMC: {t} stages, log evidence {float(self.log_evidence):.4f}, "
            f"mean acceptance {float(self.acceptance_rate):.3f}, final ESS {float(self.ess):.1f}",
            f"{'stage':>5} {'beta':>10} {'ESS':>6} {'accept':>7} {'moves':>6} {'step':>8}",
        ]
        s = jax.tree.map(np.asarray, self.stages)
        for i in range(t):
            lines.append(
                f"{i + 1:>5} {s.beta[i]:>10.4g} {s.ess[i]:>6.3f} {s.acceptance_rate[i]:>7.3f} "
                f"{int(s.num_mcmc_steps[i]):>6} {s.step_size[i]:>8.3g}"
            )
        return "\n".join(lines)


def systematic_resample(
    key: jax.Array, log_weights: jax.Array, num_samples: int | None = None
) -> jax.Array:
    """Indices of a systematic resampling of ``num_samples`` (default ``len(log_weights)``)
    particles.

    Example: ``idx = systematic_resample(key, logw); particles = particles[idx]``.
    """
    m = log_weights.shape[0] if num_samples is None else num_samples
    w = jnp.exp(log_weights - logsumexp(log_weights))
    u = (jax.random.uniform(key) + jnp.arange(m)) / m
    return jnp.clip(jnp.searchsorted(jnp.cumsum(w), u), 0, log_weights.shape[0] - 1)


def _ess_fraction(log_weights):
    w = log_weights - logsumexp(log_weights)
    return jnp.exp(-logsumexp(2 * w)) / log_weights.shape[0]


def _conditional_ess(log_w_prev, log_inc):
    """(Σ W_i w_i)² / Σ W_i w_i², W the normalized previous weights (= ESS/N when W = 1/N)."""
    w = log_w_prev - logsumexp(log_w_prev)
    return jnp.exp(2 * logsumexp(w + log_inc) - logsumexp(w + 2 * log_inc))


def _finite(a):
    return jnp.where(jnp.isnan(a), -jnp.inf, a)


class _Options(NamedTuple):
    make_kernel: Callable | None
    num_mcmc_steps: int | None
    move: str
    max_mcmc_steps: int
    correlation_threshold: float
    num_resampled: int | None
    resample_threshold: float


def _options(who, n, make_kernel, num_mcmc_steps, move, max_mcmc_steps, corr, num_resampled, rt):
    if num_mcmc_steps is not None:
        num_mcmc_steps = count(num_mcmc_steps, "num_mcmc_steps", who, minimum=0)
    max_mcmc_steps = count(max_mcmc_steps, "max_mcmc_steps", who)
    if make_kernel is None:
        recipe(move, who)
    if not 0 < corr < 1:
        raise ValueError(f"{who}: correlation_threshold must be in (0, 1), got {corr!r}")
    if not 0 <= rt <= 1:
        raise ValueError(f"{who}: resample_threshold must be in [0, 1], got {rt!r}")
    if num_resampled is not None:
        num_resampled = count(num_resampled, "num_resampled", who)
        if n % num_resampled or num_resampled == n:
            raise ValueError(
                f"{who}: num_resampled must divide the number of particles {n} and be "
                f"smaller, got {num_resampled}"
            )
        if num_mcmc_steps is not None:
            raise ValueError(
                f"{who}: waste-free SMC (num_resampled) runs chains of N/num_resampled "
                "states; leave num_mcmc_steps as None"
            )
    return _Options(
        make_kernel, num_mcmc_steps, move, max_mcmc_steps, corr, num_resampled, float(rt)
    )


def _smc(key, particles, increment, target, num_stages, done, opts):
    """The stage loop shared by tempering and data annealing.

    ``increment(t, x, log_w, beta) -> (beta', log increments)`` on flat particles;
    ``target(t, beta') -> log π_t`` of a flat position; ``done(t, beta)`` stops early.
    """
    leaf = jax.tree.leaves(particles)[0]
    n = leaf.shape[0]
    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], particles))
    x = jax.vmap(lambda p: ravel_pytree(p)[0])(particles)
    d = x.shape[1]
    dtype = x.dtype
    tuned = opts.make_kernel is None
    rec = recipe(opts.move, "smc") if tuned else None
    waste_free = opts.num_resampled is not None

    def flat_fn(fn):
        return lambda v: fn(unravel(v))

    def move(key, t, beta, x, white, step_size):
        ld = target(t, beta)
        kw = dict(
            num_steps=opts.num_mcmc_steps,
            max_steps=opts.max_mcmc_steps,
            correlation_threshold=opts.correlation_threshold,
        )
        if waste_free:
            kw.update(num_steps=n // opts.num_resampled - 1, keep_all=True)
        if tuned:
            kernel = rec.make(lambda z: ld(white.to_x(z)), step_size)
            res = run_moves(key, kernel, jax.vmap(white.to_z)(x), white.to_x, **kw)
            pos = res.positions
            xs = jax.vmap(white.to_x)(pos.reshape(-1, d)).reshape(pos.shape)
        else:
            kernel = opts.make_kernel(lambda p: ld(ravel_pytree(p)[0]))
            res = run_moves(key, kernel, jax.vmap(unravel)(x), lambda p: ravel_pytree(p)[0], **kw)
            lead = 2 if waste_free else 1
            xs = jax.vmap(lambda p: ravel_pytree(p)[0])(
                jax.tree.map(lambda a: a.reshape((-1,) + a.shape[lead:]), res.positions)
            )
        return xs.reshape(-1, d), res.acceptance_rate, res.num_steps

    def body(carry):
        key, x, log_w, beta, logz, t, step_size, acc_sum, stages = carry
        key, k_res, k_move = jax.random.split(key, 3)
        beta_new, inc = increment(t, x, log_w, beta)
        beta_new = jnp.asarray(beta_new, dtype)
        new_w = log_w + _finite(inc)
        logz = logz + logsumexp(new_w) - logsumexp(log_w)
        new_w = new_w - logsumexp(new_w)
        ess = _ess_fraction(new_w)
        white = whitening(x, new_w) if tuned else None
        if waste_free:
            x = x[systematic_resample(k_res, new_w, opts.num_resampled)]
            log_w = jnp.full(n, -jnp.log(n), dtype)
        else:
            resample = ess < opts.resample_threshold - 1e-6
            x = x[jnp.where(resample, systematic_resample(k_res, new_w), jnp.arange(n))]
            log_w = jnp.where(resample, jnp.full(n, -jnp.log(n), dtype), new_w)
        x, acc, steps = move(k_move, t, beta_new, x, white, step_size)
        stages = SMCStages(
            stages.beta.at[t].set(beta_new),
            stages.ess.at[t].set(ess),
            stages.acceptance_rate.at[t].set(acc),
            stages.num_mcmc_steps.at[t].set(steps),
            stages.step_size.at[t].set(step_size if tuned else 0.0),
        )
        if tuned:
            step_size = next_step_size(step_size, acc, rec.target_acceptance)
        return key, x, log_w, beta_new, logz, t + 1, step_size, acc_sum + acc, stages

    def cond(carry):
        t, beta = carry[5], carry[3]
        return (t < num_stages) & ~done(t, beta)

    zeros = jnp.zeros(num_stages, dtype)
    stages = SMCStages(zeros, zeros, zeros, jnp.zeros(num_stages, jnp.int32), zeros)
    step0 = jnp.asarray(rec.initial_step_size(d) if tuned else 0.0, dtype)
    zero = jnp.zeros((), dtype)
    log_w0 = jnp.full(n, -jnp.log(n), dtype)
    init = (key, x, log_w0, zero, zero, jnp.asarray(0), step0, zero, stages)
    _, x, log_w, _, logz, t, _, acc_sum, stages = jax.lax.while_loop(cond, body, init)
    return SMCResult(
        jax.vmap(unravel)(x),
        logz,
        t,
        acc_sum / jnp.maximum(t, 1),
        log_w,
        stages,
        n * _ess_fraction(log_w),
    )


def tempered_smc(
    key: jax.Array,
    particles: Any,
    logprior_fn: Callable,
    loglik_fn: Callable,
    make_kernel: Callable[[Callable], Kernel] | None = None,
    num_mcmc_steps: int | None = None,
    betas: jax.Array | None = None,
    target_ess: float = 0.5,
    max_stages: int = 500,
    *,
    move: str = "rwm",
    max_mcmc_steps: int = 100,
    correlation_threshold: float = 0.1,
    num_resampled: int | None = None,
    resample_threshold: float = 1.0,
) -> SMCResult:
    """Tempered resample-move SMC from ``particles`` (exact draws of ``exp(logprior_fn)``,
    leading axis N) to π ∝ prior · likelihood.

    The schedule is ``betas`` (increasing, ending at 1) or adaptive (next β by bisection on
    the conditional ESS = ``target_ess``). Moves: by default the ``move`` kernel ("rwm",
    "mala" or "hmc") is preconditioned by the particles' covariance and its step size
    tuned from the previous stage's acceptance; ``make_kernel(logdensity_fn)`` instead
    gives a fixed, untuned kernel over positions. ``num_mcmc_steps=None`` moves until the
    particles' correlation with their stage-start positions is ``correlation_threshold``
    (at most ``max_mcmc_steps``). ``num_resampled=M`` is waste-free SMC: M particles are
    resampled and each runs a chain of N/M states, all kept. Example::

        res = tempered_smc(key, prior_draws, logprior, loglik)
        res.log_evidence, print(res.summary())
    """
    check_key(key, "tempered_smc", seeds=False)
    max_stages = count(max_stages, "max_stages", "tempered_smc")
    n = jax.tree.leaves(particles)[0].shape[0]
    opts = _options(
        "tempered_smc", n, make_kernel, num_mcmc_steps, move, max_mcmc_steps,
        correlation_threshold, num_resampled, resample_threshold,
    )  # fmt: skip
    if not 0 < target_ess < 1:
        raise ValueError(f"tempered_smc: target_ess must be in (0, 1), got {target_ess!r}")
    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], particles))
    prior = lambda v: logprior_fn(unravel(v))  # noqa: E731
    loglik = lambda v: loglik_fn(unravel(v))  # noqa: E731
    fixed = betas is not None
    if fixed:
        betas = jnp.asarray(betas)
        max_stages = betas.shape[0]

    def next_beta(ll, log_w, beta):
        def ok(b):
            return _conditional_ess(log_w, _finite((b - beta) * ll)) >= target_ess

        def bisect(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            return jnp.where(ok(mid), mid, lo), jnp.where(ok(mid), hi, mid)

        lo, _ = jax.lax.fori_loop(0, 50, bisect, (beta, jnp.ones_like(beta)))
        return jnp.where(ok(1.0), 1.0, jnp.minimum(jnp.maximum(lo, beta + 1e-6), 1.0))

    def increment(t, x, log_w, beta):
        ll = jax.vmap(loglik)(x)
        b = betas[t].astype(ll.dtype) if fixed else next_beta(ll, log_w, beta)
        return b, jnp.where(b == beta, 0.0, (b - beta) * ll)

    def target(t, beta):
        return lambda v: prior(v) + beta * loglik(v)

    def done(t, beta):
        return jnp.asarray(False) if fixed else beta >= 1.0

    return _smc(key, particles, increment, target, max_stages, done, opts)


def data_annealed_smc(
    key: jax.Array,
    particles: Any,
    logprior_fn: Callable,
    batch_loglik_fn: Callable,
    num_batches: int,
    make_kernel: Callable[[Callable], Kernel] | None = None,
    num_mcmc_steps: int | None = None,
    resample_threshold: float = 1.0,
    *,
    move: str = "rwm",
    max_mcmc_steps: int = 100,
    correlation_threshold: float = 0.1,
    num_resampled: int | None = None,
) -> SMCResult:
    """SMC with data annealing from ``particles`` (exact prior draws, leading axis N):
    ``batch_loglik_fn(θ)`` returns the log-likelihoods of the ``num_batches`` batches
    (shape ``(num_batches,)``); stage t targets π_t ∝ prior · Π_{s ≤ t} p(batch_s | θ).
    Each stage reweights by p(batch_t | θ), adds log Σ W_i p(batch_t | θ_i) to the log
    evidence, resamples (systematic) when the ESS is below ``resample_threshold`` · N
    (default 1.0: whenever the weights are not uniform) and moves the weighted particles
    (moves as in :func:`tempered_smc`: tuned ``move`` kernel by default, or a fixed
    ``make_kernel(log π_t)``).

    Returns an :class:`SMCResult` whose particles carry ``log_weights`` (normalized). Example::

        res = data_annealed_smc(key, prior_draws, logprior,
                                lambda th: jnp.stack([loglik(th, b) for b in batches]), 5)
        res.log_evidence, jnp.exp(res.log_weights) @ res.particles
    """
    check_key(key, "data_annealed_smc", seeds=False)
    num_batches = count(num_batches, "num_batches", "data_annealed_smc")
    n = jax.tree.leaves(particles)[0].shape[0]
    opts = _options(
        "data_annealed_smc", n, make_kernel, num_mcmc_steps, move, max_mcmc_steps,
        correlation_threshold, num_resampled, resample_threshold,
    )  # fmt: skip
    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], particles))
    prior = lambda v: logprior_fn(unravel(v))  # noqa: E731
    batch_ll = lambda v: batch_loglik_fn(unravel(v))  # noqa: E731

    def increment(t, x, log_w, beta):
        return (t + 1) / num_batches, jax.vmap(batch_ll)(x)[:, t]

    def target(t, beta):
        mask = jnp.arange(num_batches) <= t
        return lambda v: prior(v) + jnp.sum(jnp.where(mask, batch_ll(v), 0.0))

    def done(t, beta):
        return jnp.asarray(False)

    return _smc(key, particles, increment, target, num_batches, done, opts)
