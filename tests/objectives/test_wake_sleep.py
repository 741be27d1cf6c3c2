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
