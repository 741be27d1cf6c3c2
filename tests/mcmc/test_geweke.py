"""Geweke's joint-distribution test on a Normal–Normal model: theta ~ N(0, I₂),
y_j ~ N(theta₁ + theta₂·x_j, 1). A correct MALA passes; the same MALA on a log joint
with the wrong noise scale, and ULA (no MH correction), are caught."""

import jax
import jax.numpy as jnp
import pytest

from ppl import mcmc
from ppl.validate import check_geweke
from tests.mcmc.broken_kernels import ula

X = jnp.linspace(-1.0, 1.0, 5)


def logjoint(theta, y, noise=1.0):
    mean = theta[0] + theta[1] * X
    return -0.5 * jnp.sum(theta**2) - 0.5 * jnp.sum(((y - mean) / noise) ** 2)


def sample_data(key, theta):
    return theta[0] + theta[1] * X + jax.random.normal(key, X.shape)


def sample_joint(key, n):
    k1, k2 = jax.random.split(key)
    theta = jax.random.normal(k1, (n, 2))
    return theta, jax.vmap(sample_data)(jax.random.split(k2, n), theta)


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
