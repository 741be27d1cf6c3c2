"""The NumPyro adapters inside ``numpyro.infer.MCMC`` (2 vectorized chains): posteriors with
exact answers (conjugate models, exact enumeration) and eight schools against posteriordb.

Every tolerance is 4 Monte Carlo standard errors from ArviZ (``mcse`` of the mean and of
the sd, which account for autocorrelation), combined with the reference's own error.
"""

import itertools
import math

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

from models import posteriordb
from ppl import mcmc
from tests.mcmc.runs import run_mcmc

N_SIGMA = 4.0


def z_scores(draws, mean, sd, ref_mean_se=0.0, ref_sd_se=0.0):
    """(z of the mean, z of the sd) of (chain, draw) ``draws`` against exact/reference values."""
    draws = np.asarray(draws, np.float64)
    se_mean = math.hypot(float(az.mcse(draws)), ref_mean_se)
    se_sd = math.hypot(float(az.mcse(draws, method="sd")), ref_sd_se)
    return (draws.mean() - mean) / se_mean, (draws.std(ddof=1) - sd) / se_sd


# --- a conjugate model with a constrained site --------------------------------------------
Y_POIS = jnp.array([3.0, 1.0, 4.0, 2.0, 2.0, 5.0, 0.0, 3.0])
Y_NORM = jnp.array([0.8, 1.9, 0.3, 1.2])


def conjugate(y_pois, y_norm):
    rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("y_pois", dist.Poisson(rate), obs=y_pois)
    numpyro.sample("y_norm", dist.Normal(mu, 1.0), obs=y_norm)


A_POST, B_POST = 2.0 + float(Y_POIS.sum()), 1.0 + len(Y_POIS)
EXACT = {
    "rate": (A_POST / B_POST, math.sqrt(A_POST) / B_POST),
    "mu": (float(Y_NORM.sum()) / (len(Y_NORM) + 1), 1 / math.sqrt(len(Y_NORM) + 1)),
}

KERNELS = [
    pytest.param(
        "random_walk",
        lambda: mcmc.RandomWalk(conjugate, step_size=0.5),
        marks=pytest.mark.slow,  # random walk: also in the pure stationarity tests
    ),
    pytest.param("mala", lambda: mcmc.MALA(conjugate, step_size=0.1), marks=pytest.mark.slow),
    ("hmc", lambda: mcmc.HMC(conjugate, step_size=0.1, num_steps=5)),
    ("nuts", lambda: mcmc.NUTS(conjugate, step_size=0.1)),
]


@pytest.mark.parametrize("name, make", KERNELS, ids=["random_walk", "mala", "hmc", "nuts"])
def test_conjugate_posterior(name, make):
    kernel = make()
    m = run_mcmc(kernel, Y_POIS, Y_NORM, num_warmup=300, num_samples=1500)
    samples = m.get_samples(group_by_chain=True)
    assert samples["rate"].shape == (2, 1500)
    assert np.all(samples["rate"] > 0)  # constrained values, not unconstrained ones
    for site, (mean, sd) in EXACT.items():
        z_mean, z_sd = z_scores(samples[site], mean, sd)
        assert abs(z_mean) < N_SIGMA and abs(z_sd) < N_SIGMA, (site, z_mean, z_sd)
    # warm-up adapted the step size of each chain (dual averaging moved it)
    step = np.asarray(m.last_state.adapt.step_size)
    assert step.shape == (2,) and np.all(np.isfinite(step))
    assert not np.allclose(step, kernel._step_size)


# --- EnumGibbs: discrete sites in a plate + a continuous site, exact by enumeration -------
Y_MIX = jnp.array([1.5, -0.3, 2.4])


def mixed(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", len(y)):
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("y", dist.Normal(mu + 2.0 * z, 1.0), obs=y)


def mixed_exact(y):
    """Sum over the 2³ values of z; mu | z, y is conjugate normal."""
    y = np.asarray(y, np.float64)
    n = len(y)
    cov = np.eye(n) + np.ones((n, n))  # y | z ~ N(2z, I + 11ᵀ) after integrating mu
    weights, mu_means, zs = [], [], []
    for z in itertools.product([0, 1], repeat=n):
        z = np.array(z, np.float64)
        r = y - 2 * z
        log_lik = -0.5 * r @ np.linalg.solve(cov, r)
        weights.append(np.prod(np.where(z == 1, 0.3, 0.7)) * np.exp(log_lik))
        mu_means.append(r.sum() / (n + 1))
        zs.append(z)
    w = np.array(weights) / np.sum(weights)
    mu_means, zs = np.array(mu_means), np.array(zs)
    mu_mean = w @ mu_means
    mu_sd = np.sqrt(1 / (n + 1) + w @ mu_means**2 - mu_mean**2)
    return w @ zs, mu_mean, mu_sd


def assert_mixed_posterior(samples):
    """mu's mean and sd and every P(z_i = 1) within N_SIGMA Monte Carlo SEs of exact."""
    z_prob, mu_mean, mu_sd = mixed_exact(Y_MIX)
    z_mean, z_sd = z_scores(samples["mu"], mu_mean, mu_sd)
    assert abs(z_mean) < N_SIGMA and abs(z_sd) < N_SIGMA, (z_mean, z_sd)
    for i in range(len(Y_MIX)):
        draws = np.asarray(samples["z"][..., i], np.float64)
        z = (draws.mean() - z_prob[i]) / float(az.mcse(draws))
        assert abs(z) < N_SIGMA, (i, draws.mean(), z_prob[i], z)


def test_enum_gibbs_mixed_model():
    m = run_mcmc(mcmc.EnumGibbs(mixed, inner=mcmc.HMC(num_steps=3)), Y_MIX)
    samples = m.get_samples(group_by_chain=True)
    assert_mixed_posterior(samples)
    # ArviZ export, with the log-likelihood group at the sampled discrete values
    idata = az.from_numpyro(m)
    assert idata.posterior["z"].shape == (2, 2000, 3)
    expected = dist.Normal(samples["mu"][..., None] + 2.0 * samples["z"], 1.0).log_prob(Y_MIX)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_enum_gibbs_with_nuts_inside():
    """NumPyro's DiscreteHMCGibbs(NUTS(model)) idiom: EnumGibbs with ppl's NUTS inner."""
    m = run_mcmc(mcmc.EnumGibbs(mixed, inner=mcmc.NUTS()), Y_MIX)
    assert_mixed_posterior(m.get_samples(group_by_chain=True))


def discrete(weights):
    a = numpyro.sample("a", dist.Categorical(probs=jnp.array([0.2, 0.3, 0.5])))
    b = numpyro.sample("b", dist.Bernoulli(0.3))
    numpyro.factor("coupling", weights[a] * b)


def test_enum_gibbs_discrete_model():
    weights = jnp.array([1.5, -1.0, 0.5])
    samples = run_mcmc(mcmc.EnumGibbs(discrete), weights, num_warmup=50).get_samples(True)
    joint = np.array(
        [
            [pa * pb * math.exp(float(weights[a]) * b) for b, pb in ((0, 0.7), (1, 0.3))]
            for a, pa in enumerate((0.2, 0.3, 0.5))
        ]
    )
    joint /= joint.sum()
    for a in range(3):
        for b in range(2):
            draws = np.asarray((samples["a"] == a) & (samples["b"] == b), np.float64)
            z = (draws.mean() - joint[a, b]) / float(az.mcse(draws))
            assert abs(z) < N_SIGMA, (a, b, draws.mean(), joint[a, b], z)


# --- eight schools (non-centered) against posteriordb ------------------------------------
eight_schools = posteriordb.eight_schools_noncentered


@pytest.mark.parametrize(
    "make",
    [
        lambda: mcmc.HMC(eight_schools, num_steps=10),
        pytest.param(lambda: mcmc.NUTS(eight_schools), marks=pytest.mark.slow),
    ],
    ids=["hmc", "nuts"],
)
def test_eight_schools_matches_posteriordb(make):
    name = "eight_schools-eight_schools_noncentered"
    data, ref = posteriordb.load(name)
    y, sigma = jnp.array(data["y"]), jnp.array(data["sigma"])
    m = run_mcmc(make(), y, sigma, num_warmup=1000, num_samples=2000)
    samples = m.get_samples(group_by_chain=True)
    report = []
    for key, r in ref.items():
        site, _, index = key.partition("[")
        draws = np.asarray(samples[site], np.float64)
        draws = draws[..., int(index[:-1]) - 1] if index else draws
        # SE of the reference sd from its n draws, with the kurtosis of our draws
        kurt = np.mean((draws - draws.mean()) ** 4) / draws.var() ** 2
        ref_sd_se = r["sd"] * math.sqrt((kurt - 1) / (4 * r["n"]))
        z_mean, z_sd = z_scores(draws, r["mean"], r["sd"], r["mcse_mean"], ref_sd_se)
        report.append((key, round(z_mean, 2), round(z_sd, 2)))
    bad = [row for row in report if abs(row[1]) >= N_SIGMA or abs(row[2]) >= N_SIGMA]
    assert not bad, report


@pytest.mark.slow
def test_blocks_of_numpyro_gibbs():
    """ppl kernels as blocks of NumPyro 0.22's composable ``Gibbs`` (``refresh`` and
    ``wrap_model``): EnumGibbs on z, HMC on mu; exact answer by enumeration."""
    from numpyro.infer import Gibbs

    kernel = Gibbs([(mcmc.EnumGibbs(mixed), ["z"]), (mcmc.HMC(mixed, num_steps=3), ["mu"])])
    m = MCMC(
        kernel,
        num_warmup=300,
        num_samples=2000,
        num_chains=2,
        chain_method="sequential",
        progress_bar=False,
    )
    m.run(jax.random.key(0), Y_MIX)
    samples = m.get_samples(group_by_chain=True)
    assert_mixed_posterior(samples)
