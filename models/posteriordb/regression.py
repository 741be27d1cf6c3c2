"""posteriordb's regression-type posteriors in NumPyro (Stan's models, site for site).

Flat Stan priors are ``ImproperUniform`` on the parameter's support (flat in σ, not log σ);
"transformed data" (logs, centring, design matrices) is prepared by the registry.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def _flat(support, shape=()):
    return dist.ImproperUniform(support, (), shape)


def _half_student_t(df, scale):
    return dist.FoldedDistribution(dist.StudentT(df, 0.0, scale))


def eight_schools_noncentered(y, sigma):
    """``eight_schools_noncentered``: theta = mu + tau · theta_trans, y ~ N(theta, sigma)."""
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([len(y)]))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", mu + tau * theta_trans)
    numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def kidscore_momiq(mom_iq, kid_score):
    """``kidiq``: flat beta, sigma ~ Half-Cauchy(0, 2.5), kid_score ~ N(β₁ + β₂ mom_iq, σ)."""
    beta = numpyro.sample("beta", _flat(constraints.real, (2,)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    with numpyro.plate("n", len(kid_score)):
        numpyro.sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)


def flat_linear_regression(X, y):
    """Flat beta and flat sigma > 0, y ~ N(X β, σ) (``log10earn_height``,
    ``logmesquite``: X holds the intercept column)."""
    beta = numpyro.sample("beta", _flat(constraints.real, (X.shape[1],)))
    sigma = numpyro.sample("sigma", _flat(constraints.positive))
    with numpyro.plate("n", len(y)):
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def low_dim_gauss_mix(y):
    """Ordered mu with N(0, 2) terms, sigma ~ Half-Normal(0, 2), theta ~ Beta(5, 5);
    y_n ~ θ N(μ₁, σ₁) + (1 − θ) N(μ₂, σ₂)."""
    mu = numpyro.sample("mu", _flat(constraints.ordered_vector, (2,)))
    numpyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum())
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    mix = dist.Categorical(probs=jnp.stack([theta, 1 - theta]))
    with numpyro.plate("n", len(y)):
        numpyro.sample("y", dist.MixtureSameFamily(mix, dist.Normal(mu, sigma)), obs=y)


def kilpisjarvi(x, y, pmualpha, psalpha, pmubeta, psbeta):
    """``kilpisjarvi_mod``: α ~ N(pmualpha, psalpha), β ~ N(pmubeta, psbeta), flat σ > 0,
    y ~ N(α + β x, σ) with x the uncentred year (+2000)."""
    alpha = numpyro.sample("alpha", dist.Normal(pmualpha, psalpha))
    beta = numpyro.sample("beta", dist.Normal(pmubeta, psbeta))
    sigma = numpyro.sample("sigma", _flat(constraints.positive))
    with numpyro.plate("n", len(y)):
        numpyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


def sblrc_blr(X, y):
    """``sblrc-blr``: β ~ N(0, 10), σ ~ Half-Normal(0, 10), y ~ N(X β, σ)."""
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([X.shape[1]]))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    with numpyro.plate("n", len(y)):
        numpyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)


def diamonds(Xc, Y):
    """``diamonds`` (brms): b ~ N(0, 1), Intercept ~ t(3, 8, 10), σ ~ Half-t(3, 0, 10),
    Y ~ N(Intercept + Xc b, σ), Xc the centred non-intercept columns."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([Xc.shape[1]]))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample("sigma", _half_student_t(3.0, 10.0))
    with numpyro.plate("n", len(Y)):
        numpyro.sample("Y", dist.Normal(intercept + Xc @ b, sigma), obs=Y)
