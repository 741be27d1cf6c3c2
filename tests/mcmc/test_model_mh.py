"""``MH`` with a proposal program: the Jacobian of the unconstraining transform is in the
ratio (a positive site is proposed), the posterior matches the conjugate answer within 4
MCSE, and a proposal over a subset of the sites keeps the exact posterior invariant."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl import mcmc
from ppl.validate import check_stationarity
from tests.mcmc.runs import run_mcmc

_spec = importlib.util.spec_from_file_location(
    "_numpyro_tests", Path(__file__).with_name("test_numpyro.py")
)
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)


def full_proposal(y_pois, y_norm):
    numpyro.sample("rate", dist.Gamma(0.6 * T.A_POST, 0.6 * T.B_POST))
    numpyro.sample("mu", dist.Normal(0.2 + T.EXACT["mu"][0], 0.7))


def mu_proposal(y_pois, y_norm):
    numpyro.sample("mu", dist.Normal(0.0, 1.0))


def rate_proposal(y_pois, y_norm):
    numpyro.sample("rate", dist.LogNormal(1.0, 0.5))


def test_mh_full_proposal_posterior():
    m = run_mcmc(mcmc.MH(T.conjugate, full_proposal), T.Y_POIS, T.Y_NORM, num_warmup=200)
    samples = m.get_samples(group_by_chain=True)
    assert np.all(samples["rate"] > 0)
    for site, (mean, sd) in T.EXACT.items():
        z_mean, z_sd = T.z_scores(samples[site], mean, sd)
        assert abs(z_mean) < T.N_SIGMA and abs(z_sd) < T.N_SIGMA, (site, z_mean, z_sd)


def exact_unconstrained(key, n):
    """Exact posterior draws in the model's unconstrained space (log rate, mu)."""
    k1, k2 = jax.random.split(key)
    rate = jax.random.gamma(k1, T.A_POST, (n,)) / T.B_POST
    mu = T.EXACT["mu"][0] + T.EXACT["mu"][1] * jax.random.normal(k2, (n,))
    return {"mu": mu, "rate": jnp.log(rate)}


@pytest.mark.slow
def test_mh_subset_proposals_keep_the_posterior():
    """Each proposal moves one site (a block update); from exact draws the chains stay."""
    for proposal in (mu_proposal, rate_proposal):
        kernel, z0 = mcmc.MH(T.conjugate, proposal).pure_kernel(
            jax.random.key(0), (T.Y_POIS, T.Y_NORM)
        )
        assert set(z0) == {"mu", "rate"}
        report = check_stationarity(kernel, exact_unconstrained, jax.random.key(1), num_steps=3)
        assert not np.allclose(report.start, report.end, rtol=0, atol=1e-7)
