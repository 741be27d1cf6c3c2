"""ppl's NUTS / HMC as the inner kernel of NumPyro's composite kernels, swapping only the
inner kernel: ``HMCGibbs``, ``DiscreteHMCGibbs`` (NumPyro's ``Gibbs`` blocks), ``HMCECS``;
``MixedHMC`` (which steps NumPyro's own HMC state) is refused by name.

Accuracy is checked against closed forms with 4 Monte Carlo standard errors, the SE
from the effective sample size NumPyro's diagnostics report.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import HMCECS, MCMC, DiscreteHMCGibbs, HMCGibbs, MixedHMC
from numpyro.infer import NUTS as NumPyroNUTS

import ppl


def _draws(kernel, *args, num_samples=4000, seed=0):
    mcmc = MCMC(kernel, num_warmup=400, num_samples=num_samples, progress_bar=False)
    mcmc.run(jax.random.key(seed), *args)
    return mcmc.get_samples()


def _z(draws, exact):
    """(mean - exact) / SE, SE = sd / sqrt(ESS)."""
    draws = np.asarray(draws, float)
    ess = float(effective_sample_size(draws[None]))
    return (draws.mean() - exact) / (draws.std() / np.sqrt(ess))


def gaussian_pair():
    x = numpyro.sample("x", dist.Normal(0.0, 2.0))
    y = numpyro.sample("y", dist.Normal(0.0, 2.0))
    numpyro.sample("obs", dist.Normal(x + y, 1.0), obs=jnp.array(1.0))


# posterior of (x, y): precision I/4 + [[1, 1], [1, 1]], mean = cov @ [1, 1]
PAIR_COV = np.linalg.inv(np.eye(2) / 4 + np.ones((2, 2)))
PAIR_MEAN = PAIR_COV @ np.ones(2)


def exact_x_given_y(rng_key, gibbs_sites, hmc_sites):
    """x | y: precision 1/4 + 1, mean (1 - y) / (1/4 + 1)."""
    y = hmc_sites["y"]
    return {"x": dist.Normal((1.0 - y) / 1.25, 1.25**-0.5).sample(rng_key)}


@pytest.mark.parametrize(
    "inner", [pytest.param(ppl.mcmc.NUTS, marks=pytest.mark.slow), ppl.mcmc.HMC]
)
def test_hmc_gibbs_with_a_ppl_inner_kernel(inner):
    draws = _draws(HMCGibbs(inner(gaussian_pair), exact_x_given_y, gibbs_sites=["x"]))
    for i, name in enumerate("xy"):
        assert abs(_z(draws[name], PAIR_MEAN[i])) < 4, name
        second = (draws[name] - PAIR_MEAN[i]) ** 2  # the variance, as a mean of squares
        assert abs(_z(second, PAIR_COV[i, i])) < 4, name
    cross = (draws["x"] - PAIR_MEAN[0]) * (draws["y"] - PAIR_MEAN[1])
    assert abs(_z(cross, PAIR_COV[0, 1])) < 4


PROBS = jnp.array([0.15, 0.3, 0.3, 0.25])
LOCS = jnp.array([-1.0, 0.0, 1.0, 2.0])
Y = 1.5


def discrete_mixture(probs, locs):
    c = numpyro.sample("c", dist.Categorical(probs))
    x = numpyro.sample("x", dist.Normal(locs[c], 1.0))
    numpyro.sample("y", dist.Normal(x, 1.0), obs=Y)


def test_discrete_hmc_gibbs_with_ppl_nuts():
    # p(c | y) ∝ probs[c] N(y; locs[c], sqrt 2); E[x | c, y] = (locs[c] + y) / 2
    post = np.asarray(PROBS) * np.exp(-((Y - np.asarray(LOCS)) ** 2) / 4)
    post /= post.sum()
    draws = _draws(DiscreteHMCGibbs(ppl.mcmc.NUTS(discrete_mixture)), PROBS, LOCS)
    c = np.asarray(draws["c"])
    for k in range(4):
        assert abs(_z(c == k, post[k])) < 4, k
    assert abs(_z(draws["x"], float(post @ (np.asarray(LOCS) + Y) / 2))) < 4


DATA = jax.random.normal(jax.random.key(1), (200,)) + 1.0


def subsampled_mean(data):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("N", data.shape[0], subsample_size=50):
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=numpyro.subsample(data, event_dim=0))


@pytest.mark.slow  # 12 s: two HMCECS runs
def test_hmcecs_with_ppl_nuts_matches_numpyro_nuts_inside():
    proxy = HMCECS.taylor_proxy({"mu": jnp.mean(DATA)})
    ours = _draws(HMCECS(ppl.mcmc.NUTS(subsampled_mean), num_blocks=5, proxy=proxy), DATA)
    theirs = _draws(HMCECS(NumPyroNUTS(subsampled_mean), num_blocks=5, proxy=proxy), DATA)
    a, b = np.asarray(ours["mu"]), np.asarray(theirs["mu"])
    se = np.hypot(*(d.std() / np.sqrt(float(effective_sample_size(d[None]))) for d in (a, b)))
    assert abs(a.mean() - b.mean()) < 4 * se
    # the Taylor proxy makes HMCECS near-exact here: N(mu | data) up to the 1e-2 prior
    exact = float(DATA.sum() / (DATA.shape[0] + 0.01))
    assert abs(_z(a, exact)) < 4


def test_mixed_hmc_is_refused_by_name():
    kernel = MixedHMC(ppl.mcmc.HMC(discrete_mixture, num_steps=5))
    mcmc = MCMC(kernel, num_warmup=10, num_samples=10, progress_bar=False)
    with pytest.raises(ValueError, match="ppl.mcmc.HMC cannot be the inner kernel of .*MixedHMC"):
        mcmc.run(jax.random.key(0), PROBS, LOCS)


def test_state_takes_numpyro_field_names_in_replace():
    kernel = ppl.mcmc.NUTS(gaussian_pair)
    state = kernel.init(jax.random.key(0), 10, None, (), {})
    new = state._replace(
        z={"x": jnp.array(0.5), "y": jnp.array(-0.5)},
        potential_energy=jnp.array(3.0),
        z_grad={"x": jnp.array(1.0), "y": jnp.array(2.0)},
    )
    assert float(new.potential_energy) == 3.0 and float(new.inner.logdensity) == -3.0
    assert float(new.z_grad["y"]) == 2.0 and float(new.inner.logdensity_grad["y"]) == -2.0
    assert float(new.z["x"]) == 0.5 and new.i is state.i
