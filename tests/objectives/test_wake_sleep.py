"""RWS and tail-adaptive: consistent (biased at finite K) self-normalized estimators."""

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import ppl
from models.coin import DATA, model
from ppl.validate import estimator_stats

KEY = jax.random.PRNGKey(0)
L1, L0 = 0.8**3 * 0.2 * 0.5, 0.2**3 * 0.8 * 0.5
POST = L1 / (L1 + L0)


def guide(data):
    p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
    numpyro.sample("z", dist.Bernoulli(p))


def test_rws_wake_phi_converges_at_rate_one_over_k():
    """Bias of the wake-phi gradient vs the exact d/dp E_posterior[log q] shrinks ~ 1/K."""
    exact = POST / 0.7 - (1 - POST) / 0.3
    bias, se = [], []
    for k in (4, 16, 64):
        loss = ppl.objectives.rws(k)
        m, s, _ = estimator_stats(
            lambda key, loss=loss: jax.grad(
                lambda p: -loss.loss(key, {"p": p}, model, guide, DATA)
            )(0.7),
            KEY,
            4000,
        )
        bias.append(abs(m[0] - exact))
        se.append(s[0])
    assert bias[0] > bias[1] + 4 * np.hypot(se[0], se[1])
    assert bias[1] > bias[2] + 2 * np.hypot(se[1], se[2])
    assert 2.0 < bias[0] / bias[1] < 8.0  # 1/K: a factor 4 per 4x particles (measured ~3.9)


def test_rws_trains_to_posterior():
    svi = SVI(model, guide, optax.adam(3e-2), loss=ppl.objectives.rws(8))
    result = svi.run(KEY, 1000, DATA, progress_bar=False)
    assert abs(float(result.params["p"]) - POST) < 0.02


def gaussian_model(x):
    mu = numpyro.param("mu", 0.5)
    z = numpyro.sample("z", dist.Normal(mu, 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def gaussian_guide(x):
    loc = numpyro.param("m", 0.0)
    scale = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("z", dist.Normal(loc, scale))


def test_rws_dreg_same_expectation_lower_variance():
    """Wake-theta and wake-phi: DReG's mean equals plain RWS's (same K) within 4 SE of the
    difference; guide-gradient variance measured 6.5x (loc) and 13x (scale) lower here."""
    params = {"mu": 0.5, "m": 0.2, "s": 0.9}
    stats = {}
    for dreg in (False, True):
        loss = ppl.objectives.rws(4, dreg=dreg)

        def grad(key, loss=loss):
            g = jax.grad(lambda p: -loss.loss(key, p, gaussian_model, gaussian_guide, 1.3))(params)
            return jax.numpy.stack([g["mu"], g["m"], g["s"]])

        stats[dreg] = estimator_stats(grad, KEY, 4000)
    (m0, se0, s0), (m1, se1, s1) = stats[False], stats[True]
    assert np.all(np.abs(m0 - m1) < 4 * np.hypot(se0, se1)), (m0, m1, se0, se1)
    assert np.all(s0[:, 1:].var(0) > 2 * s1[:, 1:].var(0)), (s0.var(0), s1.var(0))


def test_rws_dreg_needs_a_reparameterized_guide():
    with pytest.raises(ppl.StrategyError, match="site 'z': rws\\(dreg=True\\) needs a reparam"):
        ppl.objectives.rws(2, dreg=True).loss(KEY, {}, model, guide, DATA)


def test_tail_adaptive_trains_gaussian_posterior():
    x = 1.3

    def gmodel(x):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def gguide(x):
        loc = numpyro.param("m", 0.0)
        scale = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        numpyro.sample("z", dist.Normal(loc, scale))

    svi = SVI(gmodel, gguide, optax.adam(2e-2), loss=ppl.objectives.tail_adaptive(16))
    result = svi.run(KEY, 2000, x, progress_bar=False)
    assert abs(float(result.params["m"]) - x / 2) < 0.05  # posterior N(x/2, 1/2)
    assert abs(float(result.params["s"]) - np.sqrt(0.5)) < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="tail_adaptive: num_particles must be an int >= 2"):
        ppl.objectives.tail_adaptive(1)
    with pytest.raises(ppl.StrategyError, match="site 'z': tail_adaptive needs a reparam"):
        ppl.objectives.tail_adaptive(2).loss(KEY, {}, model, guide, DATA)
