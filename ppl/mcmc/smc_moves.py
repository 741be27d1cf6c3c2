"""The move step of SMC: a π_t-invariant kernel tuned from the particles, run until the
particles have decorrelated from their stage-start positions.

Tuned moves run in whitened coordinates z = L⁻¹(x − m), with m and LLᵀ the weighted mean
and covariance of the particles (dense for small dimension, else diagonal): the kernel
sees a target of unit scale, so one step size fits every stage. The step size follows
the previous stage's acceptance, s ← s·exp(2(acc − target)). The number of moves is
either fixed or adaptive: steps continue (inside ``lax.while_loop``) until the largest
per-coordinate correlation, across particles, between the stage-start and current
positions falls below a threshold, or a cap is reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .base import Kernel, summarize
from .gradient import hmc, mala
from .mh import random_walk

DENSE_MAX_DIM = 64  # dense covariance preconditioner up to this dimension, diagonal above
HMC_LEAPFROG_STEPS = 5


class MoveRecipe(NamedTuple):
    """A tunable kernel in whitened coordinates: ``make(logdensity, step_size)``, the
    acceptance rate the step size is tuned toward, and the first step size for dimension d."""

    make: Callable[[Callable, jax.Array], Kernel]
    target_acceptance: float
    initial_step_size: Callable[[int], float]


MOVES = {
    "rwm": MoveRecipe(lambda ld, s: random_walk(ld, s), 0.234, lambda d: 2.38 / math.sqrt(d)),
    "mala": MoveRecipe(lambda ld, s: mala(ld, s), 0.574, lambda d: 0.7 * d ** (-1 / 3)),
    "hmc": MoveRecipe(
        lambda ld, s: hmc(ld, s, HMC_LEAPFROG_STEPS, step_size_jitter=0.5),
        0.65,
        lambda d: 1.0 * d ** (-1 / 4),
    ),
}


def recipe(move: str, who: str) -> MoveRecipe:
    """The :data:`MOVES` entry named ``move``, or a ``ValueError`` naming ``who``."""
    if move not in MOVES:
        raise ValueError(f"{who}: move must be one of {sorted(MOVES)}, got {move!r}")
    return MOVES[move]


def next_step_size(step_size, acceptance, target):
    """s·exp(2(acc − target)), kept within [1e-4, 10] (whitened units)."""
    return jnp.clip(step_size * jnp.exp(2.0 * (acceptance - target)), 1e-4, 10.0)


class Whitening(NamedTuple):
    """x = mean + L z with L a lower-triangular (d, d) factor or a (d,) diagonal."""

    mean: jax.Array
    factor: jax.Array

    def to_x(self, z):
        return self.mean + (self.factor @ z if self.factor.ndim == 2 else self.factor * z)

    def to_z(self, x):
        if self.factor.ndim == 2:
            return solve_triangular(self.factor, x - self.mean, lower=True)
        return (x - self.mean) / self.factor


def whitening(x: jax.Array, log_weights: jax.Array) -> Whitening:
    """Weighted mean and covariance factor of particles ``x`` (N, d): the correlation
    matrix is shrunk by d/N toward the identity; diagonal above ``DENSE_MAX_DIM`` or if the
    Cholesky factor is not finite."""
    n, d = x.shape
    w = jax.nn.softmax(log_weights)
    mean = w @ x
    c = x - mean
    sd = jnp.sqrt(w @ c**2)
    sd = jnp.where(sd > 0, sd, 1.0)
    if d > DENSE_MAX_DIM or d == 1:
        return Whitening(mean, sd)
    r = ((c / sd) * w[:, None]).T @ (c / sd)
    lam = min(0.5, d / n + 1e-3)
    chol = jnp.linalg.cholesky((1 - lam) * r + lam * jnp.eye(d, dtype=x.dtype))
    ok = jnp.all(jnp.isfinite(chol))
    dense = sd[:, None] * jnp.where(ok, chol, jnp.eye(d, dtype=x.dtype))
    return Whitening(mean, dense)


def _max_correlation(x0, x):
    a, b = x0 - x0.mean(0), x - x.mean(0)
    denom = jnp.sqrt(jnp.sum(a**2, 0) * jnp.sum(b**2, 0))
    corr = jnp.where(denom > 0, jnp.sum(a * b, 0) / jnp.where(denom > 0, denom, 1.0), 0.0)
    return jnp.max(jnp.abs(corr))


class MoveResult(NamedTuple):
    positions: Any  # (N, ...) final positions, or (P, M, ...) every state (waste-free)
    acceptance_rate: jax.Array
    num_steps: jax.Array


def run_moves(
    key: jax.Array,
    kernel: Kernel,
    positions: Any,
    to_flat: Callable[[Any], jax.Array],
    num_steps: int | None,
    max_steps: int,
    correlation_threshold: float,
    keep_all: bool = False,
) -> MoveResult:
    """Move every particle (leading axis) with ``kernel``: ``num_steps`` steps, or (None)
    until the largest correlation of ``to_flat`` coordinates with their start is at most
    ``correlation_threshold`` (at most ``max_steps``). ``keep_all`` returns every state of
    the ``num_steps`` steps, start included (waste-free SMC)."""
    n = jax.tree.leaves(positions)[0].shape[0]
    states = jax.vmap(kernel.init)(positions)

    def one(states, k):
        states, info = jax.vmap(kernel.step)(jax.random.split(k, n), states)
        return states, summarize(info).acceptance_rate

    if keep_all:
        last, (trace, acc) = jax.lax.scan(
            lambda s, k: (lambda s2, a: (s2, (s2.position, a)))(*one(s, k)),
            states,
            jax.random.split(key, num_steps),
        )
        every = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), positions, trace)
        return MoveResult(every, jnp.mean(acc), jnp.asarray(num_steps))
    if num_steps is not None:
        states, acc = jax.lax.scan(one, states, jax.random.split(key, num_steps))
        mean_acc = jnp.mean(acc) if num_steps else jnp.asarray(1.0)
        return MoveResult(states.position, mean_acc, jnp.asarray(num_steps))

    x0 = jax.vmap(to_flat)(positions)

    def cond(carry):
        _, _, k, _, corr = carry
        return (k < max_steps) & (corr > correlation_threshold)

    def body(carry):
        key, states, k, acc_sum, _ = carry
        key, sub = jax.random.split(key)
        states, acc = one(states, sub)
        corr = _max_correlation(x0, jax.vmap(to_flat)(states.position))
        return key, states, k + 1, acc_sum + acc, corr

    zero = jnp.zeros((), x0.dtype)
    _, states, k, acc_sum, _ = jax.lax.while_loop(
        cond, body, (key, states, jnp.asarray(0), zero, jnp.ones((), x0.dtype))
    )
    return MoveResult(states.position, acc_sum / jnp.maximum(k, 1), k)
