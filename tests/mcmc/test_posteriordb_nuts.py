"""The posteriordb battery for ppl's NUTS (slow): see tests/mcmc/posteriordb_battery.py."""

import numpyro
import numpyro.distributions as dist
import pytest

from models import posteriordb
from tests.mcmc.posteriordb_battery import cases, check, check_case, run_nuts

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sampler,name", cases("nuts"))
def test_matches_reference(sampler, name):
    check_case(sampler, name)


def planted_eight_schools(y, sigma):
    """Eight schools with one planted error: mu ~ N(0, 2.5) instead of N(0, 5)."""
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([len(y)]))
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", mu + tau * theta_trans)
    numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def test_battery_detects_a_planted_prior_error():
    """Power: the same run on eight schools with mu's prior sd halved fails the check."""
    p = posteriordb.posterior("eight_schools-eight_schools_noncentered")
    _, bad = check(run_nuts, p._replace(model=planted_eight_schools))
    assert "mu" in {row.key for row in bad}, bad
