"""Simulation-based calibration on the Normal–Normal regression of the Geweke test:
a MALA chain (thinned) is calibrated; ULA (tests/mcmc/broken_kernels.py) and MALA on a
log joint with the wrong noise scale are caught by the chi-square rank test."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl import mcmc
from ppl.validate import check_sbc, kernel_inference
from tests.mcmc.broken_kernels import ula

X = jnp.linspace(-1.0, 1.0, 5)


def logjoint(theta, y, noise=1.0):
    mean = theta[0] + theta[1] * X
    return -0.5 * jnp.sum(theta**2) - 0.5 * jnp.sum(((y - mean) / noise) ** 2)


def sample_joint(key):
    k1, k2 = jax.random.split(key)
    theta = jax.random.normal(k1, (2,))
    return theta, theta[0] + theta[1] * X + jax.random.normal(k2, X.shape)


def prior_init(key):
    return jax.random.normal(key, (2,))


def infer(make_kernel, lj=logjoint):
    return kernel_inference(make_kernel, lj, prior_init, num_draws=49, num_warmup=100, thin=4)


def test_sbc_passes_for_mala():
    report = check_sbc(
        sample_joint, infer(lambda ld: mcmc.mala(ld, 0.3)), jax.random.key(0), num_simulations=1000
    )
    assert report.ranks.shape == (1000, 2) and report.num_draws == 49
    assert report.ranks.min() >= 0 and report.ranks.max() <= 49
    assert np.all(report.p_values > report.threshold)


@pytest.mark.parametrize(
    "make_kernel, lj",
    [
        (lambda ld: ula(ld, 0.3), logjoint),
        pytest.param(
            lambda ld: mcmc.mala(ld, 0.3),
            lambda t, y: logjoint(t, y, 0.7),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["ula", "wrong_likelihood"],
)
def test_sbc_catches(make_kernel, lj):
    with pytest.raises(AssertionError, match="SBC failed"):
        check_sbc(sample_joint, infer(make_kernel, lj), jax.random.key(1), num_simulations=500)


def test_sbc_discrete_ties():
    """Exact posterior draws of a discrete parameter (many ties) give uniform ranks."""
    probs = jnp.array([0.2, 0.5, 0.3])

    def joint(key):
        return jax.random.categorical(key, jnp.log(probs)), jnp.zeros(())

    def exact(key, y):
        return jax.random.categorical(key, jnp.log(probs), shape=(19,))

    report = check_sbc(joint, exact, jax.random.key(2), num_simulations=2000, num_bins=5)
    assert np.all(report.p_values > report.threshold)
