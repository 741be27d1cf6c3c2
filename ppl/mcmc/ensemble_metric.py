"""The inverse mass matrix of ChEES-HMC's warm-up, estimated from an ensemble of chains in
Stan's doubling windows, diagonal (the default) or dense.

Many chains give a covariance estimate at every warm-up iteration for free: BlackJAX's
``MomentBlock`` (``cgl_update_batch``) pools every chain's position, and ChEES's warm-up
already accumulates it for its slow-direction length floor. At the end of each window the
metric becomes that window's pooled variance (diagonal) or covariance (dense). A diagonal
metric whitens only the scales; a dense one also removes linear correlations, which a
diagonal metric leaves to the trajectory length (a ridge of correlation 1 − 10⁻⁵ needs
hundreds of leapfrog steps per trajectory with a diagonal metric, a handful with a dense
one). The whitening helpers express a metric Σ = L Lᵀ (diagonal or dense) as the linear map
x ↦ L⁻¹x that makes the preconditioned dynamics isotropic: ChEES's criterion and the
length floor are computed in those coordinates.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Stan's shrinkage weight γ = SHRINKAGE / (n + SHRINKAGE) toward the diagonal (n pooled draws)
SHRINKAGE = 5.0


def dense_engagement_threshold(num_dim: int) -> int:
    """Pooled draws before the dense estimate replaces the identity: 64 (BlackJAX's diagonal
    gate) or 2·d, whichever is larger (a d × d covariance needs more than d draws)."""
    return max(64, 2 * num_dim)


def dense_inverse_mass(moments: Any, num_dim: int) -> jax.Array:
    """The ensemble covariance of ``moments`` (a BlackJAX ``MomentBlock``: pooled count,
    mean, sum of squared deviations), shrunk toward its diagonal by γ = 5/(n + 5) as Stan
    regularizes its dense metric (in correlation scale, so that the shrinkage is the same
    for every parametrization's units), or the identity before
    :func:`dense_engagement_threshold` draws."""
    n = moments.count
    cov = moments.m2 / jnp.maximum(n - 1.0, 1.0)
    diag = jnp.maximum(jnp.diagonal(cov), jnp.finfo(cov.dtype).tiny)
    cov = cov.at[jnp.diag_indices(num_dim)].set(diag)
    gamma = SHRINKAGE / (n + SHRINKAGE)
    shrunk = (1.0 - gamma) * cov + gamma * jnp.diag(diag)
    engaged = n >= dense_engagement_threshold(num_dim)
    return jnp.where(engaged, shrunk, jnp.eye(num_dim, dtype=cov.dtype))


def whitening(inverse_mass_matrix: jax.Array) -> tuple:
    """``(to_white, velocity_to_white)`` for the metric Σ = ``inverse_mass_matrix``
    (diagonal vector or dense matrix), Σ = L Lᵀ: positions x ↦ L⁻¹x and momenta p ↦ Lᵀp
    (the velocity Σp whitened like a position, L⁻¹Σp = Lᵀp); both act on the last axis."""
    imm = jnp.asarray(inverse_mass_matrix)
    if imm.ndim < 2:
        root = jnp.sqrt(imm)
        return (lambda x: x / root), (lambda p: p * root)
    chol = jnp.linalg.cholesky(imm)

    def to_white(x):
        return jax.scipy.linalg.solve_triangular(chol, x.T, lower=True).T

    return to_white, (lambda p: p @ chol)


def whitened_covariance(moments: Any, inverse_mass_matrix: jax.Array) -> jax.Array:
    """The ensemble covariance in the metric's whitened coordinates, L⁻¹ C L⁻ᵀ."""
    cov = moments.m2 / jnp.maximum(moments.count - 1.0, 1.0)
    to_white, _ = whitening(inverse_mass_matrix)
    return to_white(to_white(cov).T)


def recompute_eig_state(moments, inverse_mass_matrix, eig_state, num_iterations=None):
    """BlackJAX's top-eigenvalue refresh for ChEES's length floor (power iteration on the
    whitened ensemble covariance, warm-started), for a diagonal or dense metric."""
    from blackjax.adaptation import chees_adaptation as bj

    if num_iterations is None:
        num_iterations = bj._LENGTH_FLOOR_POWER_ITERATIONS
    if jnp.ndim(inverse_mass_matrix) < 2:  # BlackJAX's own
        return bj._recompute_eig_state(moments, inverse_mass_matrix, eig_state, num_iterations)
    white = whitened_covariance(moments, inverse_mass_matrix)
    lam, vec = bj._power_iteration_lambda_max(white, eig_state.eigenvector, num_iterations)
    return bj._ChEESEigState(vec, jnp.maximum(lam, bj._LENGTH_FLOOR_LAMBDA_EPS))


def diagonal_engagement_threshold(num_dim: int) -> int:
    """Pooled draws before the diagonal estimate replaces the identity: BlackJAX's gate,
    max(64, 2√d) (each variance is estimated on its own)."""
    from blackjax.adaptation import chees_adaptation as bj

    return bj._mass_matrix_engagement_threshold(num_dim)


def diagonal_inverse_mass(moments: Any) -> jax.Array:
    """The pooled ensemble variances of ``moments``, floored at 1e-20 (BlackJAX's floor of
    its diagonal estimate)."""
    from blackjax.adaptation import chees_adaptation as bj

    var = jnp.diagonal(moments.m2) / jnp.maximum(moments.count - 1.0, 1.0)
    return jnp.maximum(var, bj.EPS_FLOAT)


def engaged(moments: Any, num_dim: int, dense: bool = True) -> jax.Array:
    """Whether ``moments`` pools enough draws for a dense (or diagonal) estimate."""
    if dense:
        return moments.count >= dense_engagement_threshold(num_dim)
    return moments.count >= diagonal_engagement_threshold(num_dim)


def window_ends(num_warmup: int) -> np.ndarray:
    """The iterations after which the metric is re-estimated: the ends of Stan's doubling
    windows (NumPyro's ``build_adaptation_schedule``: a 75-iteration initial buffer, windows
    of 25, 50, 100, ... and a 50-iteration terminal buffer for 500 warm-up iterations)."""
    from numpyro.infer.hmc_util import build_adaptation_schedule

    windows = build_adaptation_schedule(num_warmup)
    return np.asarray([w.end for w in windows[:-1]] or [-1], np.int32)


def end_window(adapt: Any, num_dim: int) -> Any:
    """At a window's end: the metric becomes the window's pooled ensemble variance (a
    diagonal metric) or shrunk covariance (a dense one: the current metric is (d, d)), the
    window's moments and the length floor's eigen-estimate restart, and so do the ChEES
    step-size dual averaging (from the current ε) and the moving averages of log ε and
    log T (the old ones were tuned for the old metric). ``adapt`` is ChEES's warm-up state
    (fields ``chees``, ``moments``, ``eig``, ``parameters``)."""
    import blackjax.optimizers.dual_averaging as da
    from blackjax.adaptation import chees_adaptation as bj
    from blackjax.adaptation.metric_buffers import MomentBlock

    moments = adapt.moments
    old = adapt.parameters.inverse_mass_matrix
    dense = jnp.ndim(old) == 2
    new = dense_inverse_mass(moments, num_dim) if dense else diagonal_inverse_mass(moments)
    imm = jnp.where(engaged(moments, num_dim, dense), new, old)
    c = adapt.chees
    chees = c._replace(da_state=da.dual_averaging()[0](c.step_size), step=jnp.ones_like(c.step))
    empty = MomentBlock(
        jnp.zeros_like(moments.count), jnp.zeros_like(moments.mean), jnp.zeros_like(moments.m2)
    )
    eig = adapt.eig
    if eig is not None:
        eig = bj._eig_state_init(num_dim)
    return adapt._replace(
        chees=chees,
        moments=empty,
        eig=eig,
        parameters=adapt.parameters._replace(inverse_mass_matrix=imm),
    )
