"""End-to-end training per objective: the objective improves and the learned guide is
close to the exact posterior.

Gaussian model z ~ N(0, 1), x | z ~ N(z, 1), x = 1.3: posterior N(0.65, 1/2); a Normal
guide contains it, so every bound here is tight at q = posterior. Coin model (discrete):
z ~ Bern(0.5), x_i | z ~ Bern(0.2 + 0.6 z): posterior p(z=1 | x) = 0.941.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import ppl
from models.coin import DATA
from models.coin import model as coin_model

KEY = jax.random.PRNGKey(0)
X = 1.3
# noisy gradients: a decaying step size lets Adam settle instead of hovering
DECAYING = optax.exponential_decay(2e-2, transition_steps=1500, decay_rate=0.2)


def gmodel(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def gguide(x):
    loc = numpyro.param("m", -1.0)
    scale = numpyro.param("s", 2.0, constraint=dist.constraints.positive)
    numpyro.sample("z", dist.Normal(loc, scale))


GAUSSIAN = {
    "elbo": ppl.objectives.elbo(),
    "elbo_stl": ppl.objectives.elbo(stick_the_landing=True),
    "iwae": ppl.objectives.iwae(5),
    "iwae_dreg": ppl.objectives.iwae(5, dreg=True),
    "renyi": ppl.objectives.renyi(0.5, 5),
    "cubo": ppl.objectives.cubo(2.0, 20),
    "rws": ppl.objectives.rws(5),
    "rws_dreg": ppl.objectives.rws(5, dreg=True),
}


@pytest.mark.parametrize("name", sorted(GAUSSIAN))
def test_gaussian_posterior(name):
    objective = GAUSSIAN[name]
    svi = SVI(gmodel, gguide, optax.adam(DECAYING), loss=objective)
    result = svi.run(KEY, 4000, X, progress_bar=False)
    losses = np.asarray(result.losses)
    assert losses[-200:].mean() < losses[:50].mean() - 0.2  # the objective improved
    assert abs(float(result.params["m"]) - X / 2) < 0.1
    assert abs(float(result.params["s"]) - np.sqrt(0.5)) < 0.1


L1, L0 = 0.8**3 * 0.2 * 0.5, 0.2**3 * 0.8 * 0.5


def coin_guide(data):
    p = numpyro.param("p", 0.3, constraint=dist.constraints.unit_interval)
    numpyro.sample("z", dist.Bernoulli(p))


@pytest.mark.parametrize("name", ["vimco", "iwae_mvd", "elbo_enum", "elbo_loo"])
def test_discrete_posterior(name):
    guide = coin_guide
    objective = {
        "vimco": ppl.objectives.vimco(4),
        "iwae_mvd": ppl.objectives.iwae(4),
        "elbo_enum": ppl.objectives.elbo(),
        "elbo_loo": ppl.objectives.elbo(4, loo=True),
    }[name]
    if name == "iwae_mvd":
        guide = ppl.strategy(coin_guide, {"z": "mvd"})
    if name == "elbo_enum":
        guide = ppl.strategy(coin_guide, {"z": "enum"})
    # importance-weighted bounds are flat around the posterior: a constant step size
    svi = SVI(coin_model, guide, optax.adam(3e-2), loss=objective)
    result = svi.run(KEY, 2000, DATA, progress_bar=False)
    assert np.asarray(result.losses)[-100:].mean() < np.asarray(result.losses)[:20].mean()
    assert abs(float(result.params["p"]) - L1 / (L1 + L0)) < 0.03


def test_forward_kl_amortized_posterior():
    """q(z | x) = N(a x + b, s) trained on simulated pairs: a = 1/2, b = 0, s = sqrt(1/2)."""

    def model(data=None):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=data)

    def guide(data=None):
        a, b = numpyro.param("a", 0.0), numpyro.param("b", 1.0)
        s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        numpyro.sample("z", dist.Normal(a * data + b, s))

    loss = ppl.objectives.forward_kl(data_arg="data", observed="x", num_pairs=64)
    svi = SVI(model, guide, optax.adam(DECAYING), loss=loss)
    result = svi.run(KEY, 2000, data=jnp.array(0.0), progress_bar=False)  # data: for init only
    assert abs(float(result.params["a"]) - 0.5) < 0.05
    assert abs(float(result.params["b"])) < 0.05
    assert abs(float(result.params["s"]) - np.sqrt(0.5)) < 0.05
    with pytest.raises(ValueError, match="the model has no site 'y'"):
        ppl.objectives.forward_kl(observed="y").loss(KEY, result.params, model, guide)
