"""ChEES-HMC: the NumPyro ensemble adapter (API, shapes, refused single-chain runs), exact
posteriors (conjugate model; eight schools against posteriordb, slow), the step-wise
warm-up against BlackJAX's own ``chees_adaptation(...).run`` (slow), and the warm-up's
rescue of chains stuck where every proposal diverges.

The transition kernel's invariance is in test_stationarity.py (case chees_preconditioned).
Tolerances are 4 Monte Carlo standard errors (ArviZ ``mcse`` of the mean and of the sd).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, Predictive

from models import posteriordb
from ppl import mcmc
from tests.mcmc.runs import run_mcmc
from tests.mcmc.test_numpyro import EXACT, Y_NORM, Y_POIS, conjugate, z_scores
from tests.mcmc.test_posterior_accuracy import assert_close

N_SIGMA = 4.0


def tiny(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 0.5))
    numpyro.sample("y", dist.Normal(mu, s), obs=y)


def run(kernel, *args, num_chains=64, num_warmup=300, num_samples=300, seed=0):
    return run_mcmc(
        kernel,
        *args,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        seed=seed,
    )


@pytest.mark.slow  # fast-suite budget; ChEES inside MCMC also runs in test_num_steps.py
def test_numpyro_api(capsys):
    """Constrained (chains, draws) samples, per-chain divergences, a summary, Predictive;
    warm-up moved ε and T away from their starting values (one leapfrog step)."""
    y = jnp.array([0.5, 1.0, -0.3])
    m = run(mcmc.ChEES(tiny, step_size=0.3), y, num_chains=8, num_warmup=40, num_samples=10)
    samples = m.get_samples(group_by_chain=True)
    assert samples["mu"].shape == samples["s"].shape == (8, 10)
    assert np.all(samples["s"] > 0)  # constrained values
    assert m.get_extra_fields(group_by_chain=True)["diverging"].shape == (8, 10)
    eps, length, imm = m.last_state.adapt.parameters
    assert imm.shape == (2,) and np.all(np.asarray(imm) > 0)
    assert float(eps) != 0.3 and float(length) > float(eps)
    m.print_summary()
    assert "mu" in capsys.readouterr().out
    pred = Predictive(tiny, m.get_samples())(jax.random.key(1), y)
    assert pred["y"].shape == (80, 3)


@pytest.mark.parametrize(
    "num_chains, chain_method", [(1, "vectorized"), (4, "sequential")], ids=["one", "sequential"]
)
def test_refuses_single_chain_runs(num_chains, chain_method):
    m = MCMC(
        mcmc.ChEES(tiny),
        num_warmup=10,
        num_samples=10,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=False,
    )
    with pytest.raises(ValueError, match="chain_method='vectorized'"):
        m.run(jax.random.key(0), jnp.ones(3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="trajectory_length"):
        mcmc.chees(lambda x: -0.5 * x @ x, 0.1, 0.0)
    with pytest.raises(ValueError, match="jitter"):
        mcmc.chees(lambda x: -0.5 * x @ x, 0.1, 1.0, jitter=1.5)
    with pytest.raises(ValueError, match="at least 2"):
        mcmc.chees_adaptation(jax.random.key(0), lambda x: -0.5 * x @ x, jnp.ones((1, 2)), 10)


MATRIX_SCALES = np.array([[0.5, 1.0, 2.0], [1.0, 3.0, 0.2]])


def matrix_site():
    numpyro.sample("x", dist.Normal(0.0, jnp.asarray(MATRIX_SCALES)).to_event(2))


def vector_site():
    numpyro.sample("x", dist.Normal(0.0, jnp.asarray(MATRIX_SCALES).ravel()).to_event(1))


def test_matrix_valued_site_runs_as_its_flattening():
    """A (2, 3) site gives the draws of the same model written with a (6,) site (same keys:
    same initial values, momenta and jitter), warm-up included. Before: BlackJAX's
    criterion reduced each leaf over its last axis only and the diagonal warm-up failed to
    broadcast (16, 2) against (16,). (The dense metric already flattened; its draws agree
    only to float rounding, which the chaotic dynamics amplify, so it is not compared.)
    The layouts round differently (XLA fuses them differently, per flags and CPU) and the
    dynamics amplify it: in float32 a few draws differed by 7.7e-5 (1.3% relative; CI,
    stop 21). In float64 the largest difference is 1.1e-6 with XLA's default flags, 0 with
    the suite's; a layout bug moves draws by O(1)."""
    draws = {}
    with jax.enable_x64(True):
        for model in (matrix_site, vector_site):
            m = run(mcmc.ChEES(model), num_chains=16, num_warmup=60, num_samples=20)
            draws[model.__name__] = np.asarray(m.get_samples(group_by_chain=True)["x"])
    assert draws["matrix_site"].shape == (16, 20, 2, 3)
    assert draws["matrix_site"].dtype == np.float64
    np.testing.assert_allclose(
        draws["matrix_site"].reshape(16, 20, 6), draws["vector_site"], rtol=0, atol=1e-4
    )


@pytest.mark.slow
def test_conjugate_posterior():
    """Gamma–Poisson rate (constrained) and Normal mean, exact posteriors, 64 chains."""
    m = run(mcmc.ChEES(conjugate), Y_POIS, Y_NORM)
    samples = m.get_samples(group_by_chain=True)
    assert samples["rate"].shape == (64, 300)
    for site, (mean, sd) in EXACT.items():
        z_mean, z_sd = z_scores(samples[site], mean, sd)
        assert abs(z_mean) < N_SIGMA and abs(z_sd) < N_SIGMA, (site, z_mean, z_sd)


@pytest.mark.slow
def test_eight_schools_matches_posteriordb():
    data, ref = posteriordb.load("eight_schools-eight_schools_noncentered")
    y, sigma = jnp.array(data["y"]), jnp.array(data["sigma"])
    m = run(mcmc.ChEES(posteriordb.eight_schools_noncentered), y, sigma, num_warmup=500)
    assert int(m.get_extra_fields()["diverging"].sum()) == 0
    assert_close(posteriordb.compare(m.get_samples(group_by_chain=True), ref))


SCALES = jnp.array([0.1, 1.0, 5.0])


def scaled_gaussian(x):
    return -0.5 * jnp.sum((x / SCALES) ** 2)


@pytest.mark.slow
def test_warmup_reproduces_blackjax():
    """``chees_adaptation(..., mass_matrix_windows=False)`` (BlackJAX's metric schedule; our
    step-wise iteration under ``lax.scan``) gives BlackJAX's
    ``chees_adaptation(..., mass_matrix_estimation="diagonal").run``: same final states, ε,
    T/ε and inverse mass matrix (pooled over the last 10 iterations), up to
    float rounding (differently fused, the two drift apart chaotically after ~50 steps)."""
    import blackjax
    import optax

    key, num_warmup = jax.random.key(0), 20
    x0 = jax.random.normal(jax.random.key(1), (16, 3)) * SCALES
    states, params = mcmc.chees_adaptation(
        key, scaled_gaussian, x0, num_warmup, step_size=0.1, mass_matrix_windows=False
    )
    (bj_states, bj_params), _ = blackjax.chees_adaptation(
        scaled_gaussian, 16, mass_matrix_estimation="diagonal"
    ).run(
        jax.random.split(key)[1],  # chees_adaptation keeps the first half for the ε search
        x0,
        0.1,
        optax.adam(0.025, b1=0.0, b2=0.95),
        num_warmup,
        max_sampling_steps=2**30 - num_warmup,  # BlackJAX's Halton bits = ours (30)
    )
    np.testing.assert_allclose(states.position, bj_states.position, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(params.step_size, bj_params["step_size"], rtol=1e-5)
    np.testing.assert_allclose(
        params.trajectory_length / params.step_size,
        bj_params["integration_steps_params"][0],
        rtol=1e-5,
    )
    imm = params.inverse_mass_matrix
    np.testing.assert_allclose(imm, bj_params["inverse_mass_matrix"], rtol=1e-5)


@pytest.mark.slow
def test_pure_adaptation_then_sampling():
    """``chees_adaptation`` then the pure kernel with the shared Halton jitter under
    ``lax.scan``: moments of the scaled Gaussian within 4 SE (ArviZ MCSE)."""

    num_chains, num_warmup, num_samples = 64, 300, 200
    x0 = jax.random.normal(jax.random.key(2), (num_chains, 3))
    states, params = mcmc.chees_adaptation(jax.random.key(3), scaled_gaussian, x0, num_warmup)

    def body(states, xs):
        key, t = xs
        kernel = mcmc.chees(scaled_gaussian, *params, jitter=mcmc.halton(t))
        states, _ = jax.vmap(kernel.step)(jax.random.split(key, num_chains), states)
        return states, states.position

    ts = num_warmup + jnp.arange(num_samples)
    keys = jax.random.split(jax.random.key(4), num_samples)
    _, draws = jax.jit(lambda s: jax.lax.scan(body, s, (keys, ts)))(states)
    draws = np.swapaxes(np.asarray(draws, np.float64), 0, 1)  # (chains, draws, 3)
    for i, scale in enumerate(np.asarray(SCALES)):
        z_mean, z_sd = z_scores(draws[..., i], 0.0, scale)
        assert abs(z_mean) < N_SIGMA and abs(z_sd) < N_SIGMA, (i, z_mean, z_sd)


@pytest.mark.slow  # 14-28 s; the rescue rule itself is fast-tested in test_ensemble_rescue.py
def test_warmup_rescues_stuck_chains():
    """Two of 16 chains start at x = 50 on π(x) ∝ exp(−Σx⁴/4), where the curvature (3x² =
    7500) makes every leapfrog trajectory at the ensemble's ε diverge; the warm-up restarts
    them from moving chains (at t = 49), so every chain ends in the bulk (|x| < 10; the
    target puts mass < 1e-1000 there)."""
    x0 = jax.random.normal(jax.random.key(5), (16, 2)).at[:2].set(50.0)
    quartic = lambda x: -0.25 * jnp.sum(x**4)
    states, params = mcmc.chees_adaptation(jax.random.key(6), quartic, x0, 100, step_size=0.5)
    assert np.all(np.abs(np.asarray(states.position)) < 10), states.position[:, 0]
    assert np.isfinite(float(params.step_size))
