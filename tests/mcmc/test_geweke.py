"""Geweke's joint-distribution test on a Normal–Normal model: theta ~ N(0, I₂),
y_j ~ N(theta₁ + theta₂·x_j, 1). A correct MALA passes; the same MALA on a log joint
with the wrong noise scale, and ULA (no MH correction), are caught."""

import jax
import jax.numpy as jnp
import pytest

from ppl import mcmc
from ppl.validate import check_geweke
from tests.mcmc.broken_kernels import ula
from tests.mcmc.linear_regression import linear_regression

X, logjoint, sample_data, sample_joint = linear_regression(jnp.linspace(-1.0, 1.0, 5))


def test_geweke_passes_for_mala():
    report = check_geweke(
        lambda ld: mcmc.repeat(mcmc.mala(ld, 0.2), 2),
        logjoint,
        sample_joint,
        sample_data,
        jax.random.key(0),
    )
    assert abs(report.z_exact).max() < 4


@pytest.mark.parametrize(
    "name, make_kernel, lj",
    [
        ("wrong_likelihood", lambda ld: mcmc.mala(ld, 0.2), lambda t, y: logjoint(t, y, 0.7)),
        ("ula", lambda ld: ula(ld, 0.3), logjoint),
    ],
    ids=["wrong_likelihood", "ula"],
)
def test_geweke_catches(name, make_kernel, lj):
    with pytest.raises(AssertionError, match="Geweke test failed"):
        check_geweke(make_kernel, lj, sample_joint, sample_data, jax.random.key(1))
