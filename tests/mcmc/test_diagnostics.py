"""ppl.mcmc.diagnose speaks up when a run has not mixed (split R-hat, bulk/tail ESS from
ArviZ) and stays quiet when it has: a deliberately short fixed-length HMC run on Neal's
funnel warns naming the funnel's sites; a long run on eight schools (non-centred) does
not."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC
from numpyro.infer.initialization import init_to_value

from models import posteriordb
from ppl import mcmc


def funnel():
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([9]))


eight_schools = posteriordb.eight_schools_noncentered


def normal():
    numpyro.sample("z", dist.Normal(0.0, 1.0))


def run(kernel, *args, warmup, draws, chains=2):
    m = MCMC(
        kernel,
        num_warmup=warmup,
        num_samples=draws,
        num_chains=chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    m.run(jax.random.PRNGKey(0), *args)
    return m


def test_stuck_chain_is_reported():
    """A random walk with a tiny fixed step from z = 30, no warm-up: the chains have not
    reached N(0, 1), so both R-hat (chains at different places) and ESS must flag 'z'."""
    kernel = mcmc.RandomWalk(
        normal,
        step_size=0.01,
        adapt_step_size=False,
        init_strategy=init_to_value(values={"z": 30.0}),
    )
    m = run(kernel, warmup=0, draws=200)
    with pytest.warns(mcmc.MixingWarning, match=r"ESS < 100 at 'z' \(\d+\)"):
        report = mcmc.diagnose(m)
    assert not report.ok and report.sites["z"].ess_bulk < 100
    assert report.num_divergences is None  # the random walk does not report divergences


@pytest.mark.slow
def test_short_funnel_run_warns():
    m = run(mcmc.HMC(funnel, num_steps=10), warmup=100, draws=200)
    with pytest.warns(mcmc.MixingWarning, match=r"R-hat > 1.01 at .*'v'.*Try:.*NUTS"):
        report = mcmc.diagnose(m)
    assert not report.ok and report.sites["v"].rhat > 1.01


@pytest.mark.slow
def test_well_mixed_eight_schools_is_quiet():
    data, _ = posteriordb.load("eight_schools-eight_schools_noncentered")
    y, sigma = jnp.array(data["y"]), jnp.array(data["sigma"])
    # NUTS reports divergences (as NumPyro's): at the default target acceptance 0.8 both
    # ppl's and NumPyro's NUTS diverge a few times per 8000 draws here (measured 0-5 over
    # seeds 0-3), which diagnose rightly reports; smaller steps remove them
    kernel = mcmc.NUTS(eight_schools, target_accept_prob=0.95)
    m = run(kernel, y, sigma, warmup=1000, draws=2000, chains=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mcmc.MixingWarning)
        report = mcmc.diagnose(m)
    assert report.ok, report.message
    assert all(np.isfinite(d.rhat) and d.ess_tail >= 100 for d in report.sites.values())


@pytest.mark.slow
def test_numpyro_divergences_are_counted():
    """NumPyro's NUTS collects ``diverging``: the centred funnel diverges."""
    m = run(numpyro.infer.NUTS(funnel), warmup=200, draws=300)
    report = mcmc.diagnose(m, warn=False)
    assert report.num_divergences == int(np.sum(m.get_extra_fields()["diverging"]))
    assert report.num_divergences > 0 and "divergent transitions" in report.message
