"""ppl.mcmc.to_arviz: ArviZ export of runs on models with enumerated discrete sites (where
``arviz.from_numpyro`` fails), with the pointwise marginal log-likelihood checked against
its closed form, and of an EnumGibbs run (discrete sites sampled)."""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import logsumexp
from numpyro.infer import MCMC, NUTS

from ppl import mcmc

Y = jnp.array([1.5, -0.3, 2.4, 0.2])


def mixed(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", len(y)):
        z = numpyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        numpyro.sample("y", dist.Normal(mu + 2.0 * z, 1.0), obs=y)


def run(kernel):
    m = MCMC(
        kernel,
        num_warmup=100,
        num_samples=100,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    m.run(jax.random.key(0), Y)
    return m


@pytest.mark.slow  # fast-suite budget (20 s loaded)
def test_enumerated_sites_export():
    m = run(NUTS(mixed))
    with pytest.raises(Exception):  # noqa: B017 (arviz's own failure, whatever its type)
        az.from_numpyro(m)
    idata = mcmc.to_arviz(m)
    mu = np.asarray(m.get_samples(group_by_chain=True)["mu"])[..., None]
    exact = logsumexp(
        jnp.stack(
            [
                jnp.log(0.7) + dist.Normal(mu, 1.0).log_prob(Y),
                jnp.log(0.3) + dist.Normal(mu + 2.0, 1.0).log_prob(Y),
            ]
        ),
        axis=0,
    )
    assert idata.posterior["mu"].shape == (2, 100)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(idata.observed_data["y"].values, Y)
    assert np.isfinite(az.loo(idata).elpd_loo)


@pytest.mark.slow
def test_sampled_discrete_sites_export():
    def sampled(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("n", len(y)):
            z = numpyro.sample("z", dist.Bernoulli(0.3))
            numpyro.sample("y", dist.Normal(mu + 2.0 * z, 1.0), obs=y)

    m = run(mcmc.EnumGibbs(sampled, inner=mcmc.HMC(num_steps=3)))
    idata = mcmc.to_arviz(m)
    s = m.get_samples(group_by_chain=True)
    assert idata.posterior["z"].shape == (2, 100, 4)
    expected = dist.Normal(s["mu"][..., None] + 2.0 * s["z"], 1.0).log_prob(Y)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, expected, rtol=1e-5, atol=1e-5)
