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
