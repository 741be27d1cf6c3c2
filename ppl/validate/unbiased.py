"""Statistical check of an estimator against an exact value: |mean - exact| < n_sigma SE.

A non-finite estimate (NaN or ±inf) is never "within n_sigma SE": it fails the check, as
does a constant estimate where the caller says the estimator must vary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class UnbiasedReport(NamedTuple):
    """Per-coordinate mean, standard error and z-score of an estimator over many keys.

    ``z`` is 0 for a coordinate within the float32 floor of its exact value; ``ok`` is
    True exactly when the claim holds: every mean, standard error and exact value finite
    and every |z| <= ``n_sigma``.
    """

    mean: np.ndarray
    stderr: np.ndarray
    exact: np.ndarray
    z: np.ndarray
    num_samples: int
    n_sigma: float = 4.0

    @property
    def ok(self) -> bool:
        finite = np.all(np.isfinite(self.mean) & np.isfinite(self.stderr))
        return bool(finite and np.all(np.isfinite(self.exact)) and np.all(self.z <= self.n_sigma))

    def max_abs_z(self) -> float:
        return float(np.max(np.abs(self.z)))


def _nonfinite_message(samples: np.ndarray, what: str) -> str:
    bad = ~np.isfinite(samples)
    cols = np.flatnonzero(bad.any(0))
    lines = [
        f"  [{j}] {int(bad[:, j].sum())} of {samples.shape[0]} samples non-finite "
        f"(first: {samples[np.argmax(bad[:, j]), j]})"
        for j in cols[:10]
    ]
    return f"{what} returned NaN or inf in {cols.size} of {samples.shape[1]} coordinates:\n" + (
        "\n".join(lines)
    )


def estimator_stats(
    estimator: Callable, key, num_samples: int, batch: int = 1000, allow_nonfinite: bool = False
):
    """Run ``estimator(key) -> pytree`` over ``num_samples`` keys (vmapped, jitted in batches).

    Returns (mean, stderr, samples) of the flattened output as float64 numpy arrays.
    Raises ``AssertionError`` naming the coordinates if any sample is NaN or ±inf (a mean
    or variance of such samples is meaningless), unless ``allow_nonfinite``.
    """
    keys = jax.random.split(key, num_samples)
    run = jax.jit(jax.vmap(lambda k: _flat(estimator(k))))
    chunks = [
        np.asarray(run(keys[i : i + batch]), np.float64) for i in range(0, num_samples, batch)
    ]
    samples = np.concatenate(chunks, axis=0)
    if not allow_nonfinite and not np.all(np.isfinite(samples)):
        raise AssertionError(_nonfinite_message(samples, "estimator"))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite samples, if allowed
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
    require_variance=None,
) -> UnbiasedReport:
    """Raise ``AssertionError`` unless every coordinate satisfies |mean - exact| < n_sigma SE.

    ``estimator(key)`` returns a pytree of estimates; ``exact`` the matching exact values
    (finite, else ``ValueError``). A coordinate whose estimator has zero variance must
    match to ``atol`` (plus float32 rounding). Any NaN or ±inf estimate fails.
    ``require_variance`` (True, or a boolean pytree / flat mask matching ``exact``) marks
    coordinates whose estimator must be random: a constant estimate there fails (a
    hard-coded or stop-gradient'ed estimator that happens to match). Returns the
    :class:`UnbiasedReport`.
    """
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"check_unbiased: num_samples must be an int >= 2, got {num_samples!r}")
    exact = np.asarray(_flat(exact), np.float64)
    if not np.all(np.isfinite(exact)):
        raise ValueError(
            f"check_unbiased: exact has non-finite entries at {np.flatnonzero(~np.isfinite(exact))}"
        )
    mean, stderr, samples = estimator_stats(estimator, key, num_samples, allow_nonfinite=True)
    if exact.shape != mean.shape:
        raise ValueError(f"exact has {exact.shape[0]} entries, estimator {mean.shape[0]}")
    if not np.all(np.isfinite(samples)):
        raise AssertionError(_nonfinite_message(samples, "estimator under check_unbiased"))
    err = np.abs(mean - exact)
    floor = atol + 1e-5 * np.abs(exact)  # float32 rounding of deterministic coordinates
    with np.errstate(divide="ignore", invalid="ignore"):  # zero SE: z is inf (or 0 below)
        z = np.where(stderr > 0, err / np.where(stderr > 0, stderr, 1.0), np.inf)
    bad = (err > n_sigma * stderr) & (err > floor)
    report = UnbiasedReport(
        mean, stderr, exact, np.where(err <= floor, 0.0, z), num_samples, float(n_sigma)
    )
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
    if require_variance is not None:
        mask = np.broadcast_to(
            np.asarray(
                require_variance
                if isinstance(require_variance, bool)
                else np.asarray(_flat(require_variance)) != 0,
                bool,
            ),
            mean.shape,
        )
        constant = mask & (np.ptp(samples, axis=0) == 0)
        if np.any(constant):
            raise AssertionError(
                f"estimator is constant in coordinates {np.flatnonzero(constant).tolist()} "
                f"over {num_samples} samples, where it must be random"
            )
    return report
