"""The unbiasedness battery catches a NaN in one gradient coordinate, for every strategy.

``check_unbiased`` once passed estimators that return NaN (a NaN error compares False
against its threshold), and a dozen tests rely on it alone. Here one case per strategy
of the battery in tests/core/test_unbiased.py gets a program whose value is unchanged but
whose gradient is NaN in one coordinate (0 · sqrt(u) at u = 0 has derivative 0 · inf), as
an unguarded sqrt or log in user code or in a strategy's rule produces; the battery's own
estimator and check must fail, naming that coordinate.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from ppl.validate import check_unbiased
from tests.core.test_unbiased import CASES, battery_estimator, battery_exact, case_key

QUICK = {
    "reparam": "reparam_normal",
    "implicit": "implicit_gamma",
    "reinforce": "reinforce_bernoulli",
    "enum": "enum_categorical",
    "mvd": "mvd_normal_loc_scale",
}


def nan_in_coordinate(program, j):
    """``program`` plus 0 · sqrt(θ_j − sg θ_j): same value, NaN derivative along θ_j."""

    def planted(theta):
        return program(theta) + 0.0 * jnp.sqrt(theta[j] - jax.lax.stop_gradient(theta[j]))

    return planted


@pytest.mark.parametrize("strategy", sorted(QUICK))
def test_battery_fails_on_a_nan_gradient_coordinate(strategy):
    case = next(c for c in CASES if c.name == QUICK[strategy])
    j = len(case.theta) - 1
    planted = dataclasses.replace(case, program=nan_in_coordinate(case.program, j), jvp=False)
    # output layout: [0] value, [1 + j] d/dtheta_j
    with pytest.raises(AssertionError, match=rf"NaN or inf in 1 of .*\n  \[{1 + j}\]"):
        check_unbiased(battery_estimator(planted), battery_exact(planted), case_key(case.name), 64)
