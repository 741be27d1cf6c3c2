"""The posteriordb battery for ppl's SMC (slow): see tests/mcmc/posteriordb_battery.py."""

import pytest

from tests.mcmc.posteriordb_battery import cases, check_case

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sampler,name", cases("smc"))
def test_matches_reference(sampler, name):
    check_case(sampler, name)
