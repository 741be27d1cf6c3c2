"""Statistical check of an estimator against an exact value: |mean - exact| < n_sigma SE."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class UnbiasedReport(NamedTuple):
    """Per-coordinate mean, standard error and z-score of an estimator over many keys."""

    mean: np.ndarray
    stderr: np.ndarray
    exact: np.ndarray
    z: np.ndarray
    num_samples: int

    @property
    def ok(self) -> bool:
        return bool(np.all(np.isfinite(self.z)))

    def max_abs_z(self) -> float:
        return float(np.max(np.abs(self.z)))


def estimator_stats(estimator: Callable, key, num_samples: int, batch: int = 1000):
    """Run ``estimator(key) -> pytree`` over ``num_samples`` keys (vmapped, jitted in batches).

    Returns (mean, stderr, samples) of the flattened output as float64 numpy arrays.
    """
    keys = jax.random.split(key, num_samples)
    run = jax.jit(jax.vmap(lambda k: _flat(estimator(k))))
    chunks = [
        np.asarray(run(keys[i : i + batch]), np.float64) for i in range(0, num_samples, batch)
    ]
    samples = np.concatenate(chunks, axis=0)
    mean = samples.mean(0)
    stderr = samples.std(0, ddof=1) / np.sqrt(num_samples)
    return mean, stderr, samples


def _flat(tree):
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([jnp.ravel(jnp.asarray(x, jnp.float32)) for x in leaves])


def check_unbiased(
    estimator: Callable,
    exact,
    key,
    num_samples: int = 4000,
    n_sigma: float = 4.0,
    atol: float = 1e-6,
) -> UnbiasedReport:
    """Raise ``AssertionError`` unless every coordinate satisfies |mean - exact| < n_sigma SE.

    ``estimator(key)`` returns a pytree of estimates; ``exact`` the matching exact values.
    A coordinate whose estimator has zero variance must match to ``atol`` (plus float32
    rounding). Returns the :class:`UnbiasedReport`.
    """
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"check_unbiased: num_samples must be an int >= 2, got {num_samples!r}")
    mean, stderr, _ = estimator_stats(estimator, key, num_samples)
    exact = np.asarray(_flat(exact), np.float64)
    if exact.shape != mean.shape:
        raise ValueError(f"exact has {exact.shape[0]} entries, estimator {mean.shape[0]}")
    err = np.abs(mean - exact)
    floor = atol + 1e-5 * np.abs(exact)  # float32 rounding of deterministic coordinates
    z = err / np.maximum(stderr, 1e-300)
    bad = (err > n_sigma * stderr) & (err > floor)
    report = UnbiasedReport(mean, stderr, exact, np.where(err <= floor, 0.0, z), num_samples)
    if np.any(bad):
        idx = np.flatnonzero(bad)
        lines = [
            f"  [{i}] mean {mean[i]:.6g} exact {exact[i]:.6g} SE {stderr[i]:.3g} z {z[i]:.2f}"
            for i in idx[:10]
        ]
        raise AssertionError(
            f"estimator biased beyond {n_sigma} SE in {len(idx)} of {mean.size} coordinates "
            f"({num_samples} samples):\n" + "\n".join(lines)
        )
    return report
