"""Writes tests/mcmc/reference/logistic_regression.json: a synthetic logistic regression
data set and its reference posterior (means, sds, ESS, MCSE of the mean) from a long
NumPyro NUTS run. Run from the repository root:

    JAX_PLATFORMS=cpu python tests/mcmc/reference/make_logistic_reference.py
"""

import json
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

N, D = 200, 3


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D))
    X[:, 1] = 0.8 * X[:, 0] + 0.6 * X[:, 1]  # correlated predictors
    beta = np.array([1.0, -0.7, 0.3])
    logits = 0.4 + X @ beta
    y = rng.random(N) < 1 / (1 + np.exp(-logits))
    return X.round(4), y.astype(int)


def logistic(X, y):
    """Intercept ~ N(0, 2.5²), coefficients ~ N(0, 1), Bernoulli-logit likelihood."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 2.5))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    numpyro.sample("y", dist.Bernoulli(logits=alpha + X @ beta), obs=y)


def main():
    X, y = make_data()
    mcmc = MCMC(
        NUTS(logistic),
        num_warmup=2000,
        num_samples=25_000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(2026), jnp.asarray(X), jnp.asarray(y))
    samples = mcmc.get_samples(group_by_chain=True)
    reference = {}
    for site in ("alpha", "beta"):
        draws = np.asarray(samples[site], np.float64)
        draws = draws[..., None] if draws.ndim == 2 else draws
        for i in range(draws.shape[-1]):
            d = draws[..., i]
            key = site if site == "alpha" else f"{site}[{i + 1}]"
            reference[key] = {
                "mean": float(d.mean()),
                "sd": float(d.std(ddof=1)),
                "n": float(az.ess(d)),
                "mcse_mean": float(az.mcse(d)),
            }
    out = {
        "description": "synthetic logistic regression (make_logistic_reference.py); reference "
        "from NumPyro NUTS, 4 chains x 25,000 draws; n = bulk ESS",
        "data": {"X": X.tolist(), "y": y.tolist()},
        "reference": reference,
    }
    path = Path(__file__).with_name("logistic_regression.json")
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
