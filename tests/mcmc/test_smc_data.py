"""SMC with data annealing (observations added one batch at a time) on a conjugate
Gaussian: mu ~ N(0, 1), y_i ~ N(mu, 1), 20 observations in 5 batches. The evidence
log p(y) (y ~ N(0, I + 11ᵀ)) and the posterior N(Σy/(n+1), 1/(n+1)) are exact; over
independent runs, log Ẑ and the weighted particle moments match, and Ẑ/Z has mean 1
(slow), within 4 SE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from ppl import mcmc
from ppl.validate import check_unbiased

Y = jnp.asarray(np.random.default_rng(3).normal(0.7, 1.0, size=20).round(3))
N = len(Y)


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", len(y)):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def exact_log_evidence():
    y = np.asarray(Y, np.float64)
    cov = np.eye(N) + np.ones((N, N))
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (y @ np.linalg.solve(cov, y) + logdet + N * math.log(2 * math.pi))


LOG_Z = exact_log_evidence()
POST_MEAN, POST_SD = float(Y.sum()) / (N + 1), 1 / math.sqrt(N + 1)
KERNEL = lambda ld: mcmc.random_walk(ld, 0.3)


def weighted_moments(res):
    w = jnp.exp(res.log_weights)
    mean = jnp.sum(w * res.particles["mu"], -1)
    sd = jnp.sqrt(jnp.sum(w * (res.particles["mu"] - mean[..., None]) ** 2, -1))
    return np.asarray(mean, np.float64), np.asarray(sd, np.float64)


def z_of(values, exact):
    return (values.mean() - exact) / (values.std(ddof=1) / math.sqrt(len(values)))


def test_data_annealing_evidence_and_posterior():
    smc = mcmc.SMC(
        model, num_particles=300, make_kernel=KERNEL, num_mcmc_steps=3, anneal="data", num_batches=5
    )
    res = jax.jit(jax.vmap(lambda k: smc.run(k, Y)))(jax.random.split(jax.random.key(0), 10))
    assert res.particles["mu"].shape == (10, 300) and res.log_weights.shape == (10, 300)
    assert np.all(res.num_stages == 5)
    np.testing.assert_allclose(jax.scipy.special.logsumexp(res.log_weights, -1), 0.0, atol=1e-4)
    logz = np.asarray(res.log_evidence, np.float64)
    assert abs(z_of(logz, LOG_Z)) < 4, (logz.mean(), LOG_Z)
    mean, sd = weighted_moments(res)
    assert abs(z_of(mean, POST_MEAN)) < 4, (mean.mean(), POST_MEAN)
    assert abs(z_of(sd, POST_SD)) < 4, (sd.mean(), POST_SD)


@pytest.mark.slow
def test_adaptive_resampling_keeps_weights():
    """resample_threshold < 1 resamples only when the ESS drops: the last weights are
    then not uniform, and the estimate still matches (pure interface)."""
    prior = lambda mu: dist.Normal(0.0, 1.0).log_prob(mu)
    batches = Y.reshape(5, 4)
    batch_ll = lambda mu: dist.Normal(mu, 1.0).log_prob(batches).sum(-1)

    def run(k):
        k0, k1 = jax.random.split(k)
        x0 = jax.random.normal(k0, (500,))
        return mcmc.data_annealed_smc(k1, x0, prior, batch_ll, 5, KERNEL, 3, resample_threshold=0.3)

    res = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(1), 20))
    assert np.all(np.ptp(np.asarray(res.log_weights), -1) > 0)  # weighted particles
    logz = np.asarray(res.log_evidence, np.float64)
    assert abs(z_of(logz, LOG_Z)) < 4, (logz.mean(), LOG_Z)


@pytest.mark.slow
def test_data_annealing_evidence_unbiased():
    smc = mcmc.SMC(
        model, num_particles=200, make_kernel=KERNEL, num_mcmc_steps=2, anneal="data", num_batches=5
    )
    ratio = lambda k: jnp.exp(smc.run(k, Y).log_evidence - LOG_Z)
    report = check_unbiased(ratio, jnp.ones(()), jax.random.key(2), num_samples=300)
    assert report.stderr[0] < 0.05  # the test has power: Ẑ/Z known to ±5%
