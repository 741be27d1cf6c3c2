"""The windowed ensemble metric of ChEES's warm-up (ppl/mcmc/ensemble_metric.py): the shrunk
pooled covariance, the whitening maps, the window schedule, the metric of each window and
the length floor's start, and the rejection of proposals whose energy is not finite (a
dense metric's kinetic energy can round to −∞)."""

import functools

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


SCALES = np.array([0.1, 1.0, 5.0])


def _scaled(x):
    return -0.5 * jnp.sum((x / jnp.asarray(SCALES)) ** 2)


@functools.cache
def _trace_warmup(num_steps, **options):
    """ChEES's warm-up (100 iterations: windows end at t = 14 and 89) on a scaled Gaussian,
    16 chains started 10 sds out: per iteration the chains' flat positions folded into the
    metric, the metric the next iteration uses, the consumed and the adapted T."""
    from ppl.mcmc.chees import chees_warmup

    w = chees_warmup(_scaled, 100, **options)
    x0 = 10.0 * jax.random.normal(jax.random.key(0), (16, 3)) * jnp.asarray(SCALES)
    states = jax.vmap(lambda p: GradState(p, _scaled(p), jax.grad(_scaled)(p)))(x0)
    adapt = w.start(0.01, states)
    step = jax.jit(w.step)
    keys = jax.random.split(jax.random.key(1), num_steps)
    out = []
    for t in range(num_steps):
        states, adapt, _ = step(keys[t], t, states, adapt)
        params = adapt.parameters
        out.append(
            (
                np.asarray(states.position),
                np.asarray(params.inverse_mass_matrix),
                float(params.trajectory_length),
                float(adapt.chees.trajectory_length),
            )
        )
    return out


def test_windowed_metric_is_each_windows_pooled_variance():
    """The default (windowed) metric: the identity through the first window, then at its
    end (t = 14) the pooled variance of the 15 iterations' 240 chain positions, kept until
    the next end (t = 89), which takes the variance of t = 15..89 only (exact, float32).
    BlackJAX's schedule (identity until half of warm-up) fails it (tests/MUTATIONS.md)."""
    trace = _trace_warmup(90)
    x = np.stack([row[0] for row in trace])  # (t, chains, d)
    imm = [row[1] for row in trace]
    np.testing.assert_array_equal(imm[13], np.ones(3))
    first = x[:15].reshape(-1, 3).var(0, ddof=1)
    np.testing.assert_allclose(imm[14], first, rtol=1e-4)
    np.testing.assert_array_equal(imm[88], imm[14])
    np.testing.assert_allclose(imm[89], x[15:90].reshape(-1, 3).var(0, ddof=1), rtol=1e-4)


def test_length_floor_waits_for_the_first_window():
    """From a start 10 sds out, the slow-direction floor (π/2)√λ_max of the whitened
    ensemble covariance would lengthen the first trajectories (it did from t = 0 before,
    and on low_dim_gauss_mix the long early trajectories drove ε to 1e-6): through the
    first window (t ≤ 14) the consumed T is the adapted one; after it the floor binds."""
    trace = _trace_warmup(90)[:30]
    for t in range(15):
        assert trace[t][2] == trace[t][3], (t, trace[t][2:])
    assert any(row[2] > 1.01 * row[3] for row in trace[15:]), [row[2:] for row in trace]
