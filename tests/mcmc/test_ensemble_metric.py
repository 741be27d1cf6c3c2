"""The dense ensemble metric of ChEES's warm-up (ppl/mcmc/ensemble_metric.py): the shrunk
pooled covariance, the whitening maps, the window schedule, and the rejection of proposals
whose energy is not finite (a dense metric's kinetic energy can round to −∞)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blackjax.adaptation.metric_buffers import MomentBlock, cgl_update_batch

from ppl.mcmc import ensemble_metric as em
from ppl.mcmc.base import GradState
from ppl.mcmc.chees import _hmc_transition

COV = np.array([[4.0, 0.0199], [0.0199, 1e-4]])  # correlation 0.995, scales 2 and 0.01


def _moments(draws):
    block = MomentBlock(jnp.zeros(()), jnp.zeros(2), jnp.zeros((2, 2)))
    return cgl_update_batch(block, jnp.asarray(draws))


@pytest.mark.slow
def test_dense_inverse_mass_is_the_shrunk_pooled_covariance():
    x = np.random.default_rng(0).multivariate_normal([1.0, -3.0], COV, 500)
    imm = np.asarray(em.dense_inverse_mass(_moments(x), 2))
    cov, gamma = np.cov(x.T), 5.0 / 505.0
    np.testing.assert_allclose(imm, (1 - gamma) * cov + gamma * np.diag(np.diag(cov)), rtol=1e-5)
    # before 64 draws (2·d < 64): the identity
    np.testing.assert_array_equal(em.dense_inverse_mass(_moments(x[:63]), 2), np.eye(2))


def test_whitening_maps_the_metric_to_the_identity():
    to_white, velocity_to_white = em.whitening(jnp.asarray(COV))
    x = jnp.asarray(np.random.default_rng(1).multivariate_normal([0, 0], COV, 20000))
    np.testing.assert_allclose(np.cov(np.asarray(to_white(x)).T), np.eye(2), atol=0.05)
    # the velocity Σp, whitened like a position: L⁻¹Σp = Lᵀp
    p = jnp.array([[0.3, -2.0]])
    np.testing.assert_allclose(
        velocity_to_white(p), to_white(p @ jnp.asarray(COV)), rtol=1e-5, atol=1e-6
    )
    diag_white, diag_velocity = em.whitening(jnp.array([4.0, 1e-4]))
    np.testing.assert_allclose(diag_white(jnp.array([2.0, 0.01])), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(diag_velocity(jnp.array([1.0, 1.0])), [2.0, 0.01], rtol=1e-6)


def test_window_ends():
    assert list(em.window_ends(500)) == [74, 99, 149, 249, 449]
    assert list(em.window_ends(100)) == [14, 89]


@pytest.mark.slow
def test_non_finite_energy_is_a_rejected_divergence():
    """A proposal whose energy came out −∞ (BlackJAX accepts it with probability 1) is
    rejected: the old state is kept, acceptance 0, divergent."""
    logp = lambda x: -0.5 * jnp.sum(x**2)
    transition = _hmc_transition(logp, 1000.0)
    x = jnp.array([0.5, -0.5])
    state = GradState(x, logp(x), -x)
    new, info = transition(jax.random.key(0), state, 0.1, jnp.eye(2), 3)
    assert bool(info.is_accepted) and np.isfinite(float(info.energy))
    from ppl.mcmc.chees import _reject_non_finite

    kept, bad = _reject_non_finite(state, new, info._replace(energy=-jnp.inf))
    np.testing.assert_array_equal(kept.position, x)
    assert not bool(bad.is_accepted) and bool(bad.is_divergent)
    assert float(bad.acceptance_rate) == 0.0


def _window(block, x):
    """Fold draws ``x`` (chains, draws, d) into a within-chain block, draw by draw."""
    for t in range(x.shape[1]):
        block = em.within_update(block, jnp.asarray(x[:, t]))
    return block


def test_within_chain_covariance_is_the_mean_of_the_chains_covariances():
    """Exact against numpy on 6 chains x 40 draws whose means sit 100 sds apart: the
    within-chain estimate is the mean of the chains' own covariances, blind to the offsets;
    the pooled one (the previous dense estimator) is dominated by them."""
    rng = np.random.default_rng(0)
    chol = np.linalg.cholesky(np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 2.0]]))
    offsets = rng.normal(size=(6, 1, 3)) * 100.0
    x = rng.normal(size=(6, 40, 3)) @ chol.T + offsets
    with jax.enable_x64(True):
        cov, n = em.within_covariance(_window(em.within_init(6, 3, jnp.float64), x))
        np.testing.assert_allclose(cov, np.mean([np.cov(c.T) for c in x], 0), rtol=1e-10)
        assert float(n) == 240
        block = MomentBlock(jnp.zeros(()), jnp.zeros(3), jnp.zeros((3, 3)))
        pooled = cgl_update_batch(block, jnp.asarray(x.reshape(-1, 3)))
        pooled = np.asarray(em.dense_inverse_mass(pooled, 3))
    assert np.all(np.diag(pooled) > 100 * np.diag(np.asarray(cov)))


def test_within_chain_covariance_drops_restarted_chains_after_the_restart():
    """A chain deactivated mid-window (the warm-up rescue moved it) keeps its draws before
    the restart and adds none after: Σ_c scatter_c / Σ_c (n_c − 1), unequal n_c."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 30, 2)) + rng.normal(size=(4, 1, 2)) * 50.0
    with jax.enable_x64(True):
        block = _window(em.within_init(4, 2, jnp.float64), x[:, :10])
        block = block._replace(active=block.active.at[2].set(False))
        moved = x.copy()
        moved[2, 10:] += 1e3  # after its restart, chain 2 sits elsewhere
        cov, n = em.within_covariance(_window(block, moved[:, 10:]))
    parts = [x[0], x[1], x[2, :10], x[3]]
    scatter = sum((len(p) - 1) * np.cov(p.T) for p in parts)
    np.testing.assert_allclose(cov, scatter / sum(len(p) - 1 for p in parts), rtol=1e-10)
    assert float(n) == 100


# two narrow modes 60 sds apart (Gaussian, correlation 0.9, sd 0.1): chains started in
# either stay there, as low_dim_gauss_mix's chains sit in different places early in
# warm-up, where the pooled covariance (the previous estimator) drove ε to 1e-6
MODE_COV = 0.01 * np.array([[1.0, 0.9], [0.9, 1.0]])
MODES = np.array([[-3.0, 3.0], [3.0, -3.0]])


def _two_modes(x):
    prec = jnp.asarray(np.linalg.inv(MODE_COV))
    d = x - jnp.asarray(MODES)
    return jax.nn.logsumexp(-0.5 * jnp.einsum("ki,ij,kj->k", d, prec, d))


@pytest.mark.parametrize("estimator", ["within", "pooled"])
def test_dense_metric_from_separated_chains(estimator):
    """``chees_adaptation(dense_mass_matrix=True)`` on 16 chains, 8 in each mode, 100
    warm-up iterations: the within-chain metric is the modes' covariance (eigenvalues of
    Σ⁻¹M within [1/2, 2]); the pooled one (planted here as ``estimator='pooled'``) is the
    between-mode spread, ~900 times too wide, and fails the same check."""
    import ppl.mcmc as mcmc

    x0 = jnp.repeat(jnp.asarray(MODES), 8, axis=0)
    x0 = x0 + 0.1 * jax.random.normal(jax.random.key(0), x0.shape)
    _, params = mcmc.chees_adaptation(
        jax.random.key(1),
        _two_modes,
        x0,
        100,
        dense_mass_matrix=True,
        dense_estimator=estimator,
    )
    root = np.linalg.cholesky(np.linalg.inv(MODE_COV))
    eig = np.linalg.eigvalsh(root.T @ np.asarray(params.inverse_mass_matrix) @ root)
    ok = 0.5 < eig.min() and eig.max() < 2.0
    assert ok == (estimator == "within"), eig
