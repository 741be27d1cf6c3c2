"""RWS with MCMC rejuvenation (ppl.objectives.rws(K, rejuvenate=..., steps=n)): with K = 2
plain RWS's wake-phi gradient is biased; after resampling and MALA steps on p(z | x) the
particles are posterior draws and the gradient matches the exact inclusive-KL gradient
E_p[∇ log q(z)] within 4 SE (Gaussian model, closed-form posterior)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl
from ppl import mcmc
from ppl.validate import estimator_stats

X = 1.3
POST_MEAN, POST_VAR = (0.5 + X) / 2, 0.5  # z ~ N(0.5, 1), x ~ N(z, 1)
PARAMS = {"m": 0.2, "s": 0.9}


def model(x):
    z = numpyro.sample("z", dist.Normal(0.5, 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    loc = numpyro.param("m", 0.0)
    scale = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("z", dist.Normal(loc, scale))


def exact_wake_phi():
    m, s = PARAMS["m"], PARAMS["s"]
    second = POST_VAR + (POST_MEAN - m) ** 2  # E_p (z − m)²
    return np.array([(POST_MEAN - m) / s**2, -1 / s + second / s**3])


def grad_stats(loss):
    def grad(key):
        g = jax.grad(lambda p: -loss.loss(key, p, model, guide, X))(PARAMS)
        return jnp.stack([g["m"], g["s"]])

    return estimator_stats(grad, jax.random.key(0), 4000)


@pytest.mark.slow
def test_rejuvenation_removes_the_small_k_bias():
    exact = exact_wake_phi()
    plain_mean, plain_se, _ = grad_stats(ppl.objectives.rws(2))
    assert np.any(np.abs(plain_mean - exact) > 4 * plain_se), (plain_mean, exact)  # biased
    loss = ppl.objectives.rws(2, rejuvenate=lambda ld: mcmc.mala(ld, 0.4), steps=15)
    mean, se, _ = grad_stats(loss)
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
