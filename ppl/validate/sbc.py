"""Simulation-based calibration (Talts et al., 2018).

Draw (θ, y) from the joint, run the inference on y, and rank each test quantity f(θ)
among f of the L posterior draws. If the draws are exact, independent posterior draws,
the rank is uniform on {0, …, L}. ``check_sbc`` bins the ranks and applies a chi-square
test per quantity (Bonferroni over quantities), raising ``AssertionError`` with a report
when calibration fails. Draws from a Markov chain must be thinned to near-independence
(autocorrelation alone makes ranks non-uniform). A NaN or ±inf test quantity (of the
true parameter or of a posterior draw) has no rank: it fails the check by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats


class SBCReport(NamedTuple):
    """Ranks (num_simulations, num_quantities) in {0..num_draws}, the per-quantity
    chi-square statistics and p-values, and the Bonferroni threshold used; ``ok`` is True
    exactly when every p-value is at least the threshold (ranks uniform)."""

    ranks: np.ndarray
    num_draws: int
    chi2: np.ndarray
    p_values: np.ndarray
    threshold: float

    @property
    def ok(self) -> bool:
        return bool(np.all(self.p_values >= self.threshold))


def _default_test_fn(theta):
    return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(theta)])


def kernel_inference(
    make_kernel: Callable[[Callable], Any],
    logjoint_fn: Callable,
    init_fn: Callable[[jax.Array], Any],
    num_draws: int = 99,
    num_warmup: int = 200,
    thin: int = 5,
) -> Callable[[jax.Array, Any], Any]:
    """An SBC inference from a pure kernel: the chain for p(θ | y) ∝ ``logjoint_fn(θ, y)``
    (kernel ``make_kernel(logdensity)``) starts at ``init_fn(key)`` (e.g. a prior draw,
    independent of the true θ), runs ``num_warmup`` steps, then keeps every ``thin``-th of
    ``num_draws · thin`` steps. Returns ``inference(key, y) -> draws`` (leading axis
    ``num_draws``). Example::

        infer = kernel_inference(lambda ld: mala(ld, 0.2), logjoint,
                                 lambda k: jax.random.normal(k, (2,)))
        check_sbc(sample_joint, infer, key)
    """

    def inference(key, y):
        k_init, k_warm, k_draw = jax.random.split(key, 3)
        kernel = make_kernel(lambda t: logjoint_fn(t, y))
        step = lambda s, k: (kernel.step(k, s)[0], None)
        state, _ = jax.lax.scan(
            step, kernel.init(init_fn(k_init)), jax.random.split(k_warm, num_warmup)
        )

        def draw(s, k):
            s, _ = jax.lax.scan(step, s, jax.random.split(k, thin))
            return s, s.position

        _, draws = jax.lax.scan(draw, state, jax.random.split(k_draw, num_draws))
        return draws

    return inference


def sbc_ranks(
    sample_joint: Callable[[jax.Array], tuple[Any, Any]],
    inference: Callable[[jax.Array, Any], Any],
    key: jax.Array,
    num_simulations: int = 1000,
    test_fn: Callable | None = None,
) -> tuple[np.ndarray, int]:
    """SBC ranks: for each of ``num_simulations`` joint draws (θ, y) = ``sample_joint(key)``,
    the number of posterior draws (``inference(key, y)``, leading axis L) with
    f(draw) < f(θ), ties broken uniformly at random. Returns (ranks, L); vectorized with
    ``jax.vmap``. Raises ``AssertionError`` if any test quantity is NaN or ±inf (its rank
    would be meaningless). Example: ``ranks, L = sbc_ranks(sample_joint, infer, key, 500)``.
    """
    test_fn = _default_test_fn if test_fn is None else test_fn

    def one(k):
        k_joint, k_inf, k_tie = jax.random.split(k, 3)
        theta, y = sample_joint(k_joint)
        draws = inference(k_inf, y)
        f_true = test_fn(theta)
        f_draws = jax.vmap(test_fn)(draws)
        less = jnp.sum(f_draws < f_true, axis=0)
        ties = jnp.sum(f_draws == f_true, axis=0)
        u = jax.random.uniform(k_tie, less.shape)
        finite = jnp.isfinite(f_true), jnp.all(jnp.isfinite(f_draws), axis=0)
        return less + jnp.floor(u * (ties + 1)).astype(less.dtype), f_draws.shape[0], finite

    ranks, num_draws, finite = jax.jit(jax.vmap(one))(jax.random.split(key, num_simulations))
    lines = [
        f"  {what}: f[{j}] is NaN or inf in {n} of {num_simulations} simulations"
        for what, ok in zip(("true parameter", "posterior draws"), finite, strict=True)
        for j, n in enumerate(np.sum(~np.asarray(ok).reshape(num_simulations, -1), 0))
        if n
    ]
    if lines:
        raise AssertionError("SBC failed: non-finite test quantities\n" + "\n".join(lines[:8]))
    return np.asarray(ranks), int(np.asarray(num_draws)[0])


def check_sbc(
    sample_joint: Callable[[jax.Array], tuple[Any, Any]],
    inference: Callable[[jax.Array, Any], Any],
    key: jax.Array,
    num_simulations: int = 1000,
    num_bins: int = 10,
    test_fn: Callable | None = None,
    alpha: float = 0.001,
) -> SBCReport:
    """Simulation-based calibration: ranks from :func:`sbc_ranks`, binned into
    ``num_bins`` groups of consecutive rank values (expected counts exact even when L + 1
    is not a multiple of the bin count), and a chi-square test of uniformity for each
    quantity f(θ) (default: every coordinate of θ). Fails when any p-value is below
    ``alpha`` / (number of quantities). ``inference(key, y)`` returns posterior draws with
    a leading axis; build one from a kernel with :func:`kernel_inference`.

    Example::

        def sample_joint(key):
            k1, k2 = jax.random.split(key)
            theta = jax.random.normal(k1, (2,))
            return theta, theta[0] + theta[1] * X + jax.random.normal(k2, X.shape)

        report = check_sbc(sample_joint, kernel_inference(make_kernel, logjoint, init), key)
        report.p_values
    """
    ranks, num_draws = sbc_ranks(sample_joint, inference, key, num_simulations, test_fn)
    ranks = ranks.reshape(num_simulations, -1)
    bins = np.minimum(np.arange(num_draws + 1) * num_bins // (num_draws + 1), num_bins - 1)
    expected = num_simulations * np.bincount(bins, minlength=num_bins) / (num_draws + 1)
    counts = np.stack(
        [np.bincount(bins[ranks[:, j]], minlength=num_bins) for j in range(ranks.shape[1])]
    )
    chi2 = np.sum((counts - expected) ** 2 / expected, axis=1)
    p_values = stats.chi2.sf(chi2, num_bins - 1)
    threshold = alpha / ranks.shape[1]
    report = SBCReport(ranks, num_draws, chi2, p_values, threshold)
    bad = np.flatnonzero(p_values < threshold)
    if bad.size:
        lines = [
            f"  f[{j}]: chi2 {chi2[j]:.1f} ({num_bins - 1} dof), p = {p_values[j]:.2e}; "
            f"counts per bin {counts[j].tolist()} (expected ≈ {expected.mean():.0f})"
            for j in bad[:8]
        ]
        raise AssertionError(
            f"SBC failed: ranks of the true parameter among {num_draws} posterior draws are not "
            f"uniform ({num_simulations} simulations, p < {threshold:.1e}):\n" + "\n".join(lines)
        )
    return report
