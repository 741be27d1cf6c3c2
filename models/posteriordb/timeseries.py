"""posteriordb's time-series posteriors in NumPyro: AR(K), ARMA(1, 1), GARCH(1, 1) and a
two-state Gaussian HMM with its states summed out by the forward algorithm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints


def ark(lags, y):
    """``arK``: α, β_k ~ N(0, 10), σ ~ Half-Cauchy(0, 2.5), y_t ~ N(α + Σ_k β_k y_{t−k}, σ)
    for t > K (``lags[t, k − 1] = y_{t−k}``, ``y`` the last T − K values)."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([lags.shape[1]]))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    with numpyro.plate("t", len(y)):
        numpyro.sample("y", dist.Normal(alpha + lags @ beta, sigma), obs=y)


def arma11(y):
    """``arma11``: μ ~ N(0, 10), φ, θ ~ N(0, 2), σ ~ Half-Cauchy(0, 2.5); ν₁ = μ + φμ,
    ν_t = μ + φ y_{t−1} + θ (y_{t−1} − ν_{t−1}), y_t ~ N(ν_t, σ) (no stationarity bound)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    phi = numpyro.sample("phi", dist.Normal(0.0, 2.0))
    theta = numpyro.sample("theta", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))

    def step(nu, y_prev):
        nu = mu + phi * y_prev + theta * (y_prev - nu)
        return nu, nu

    nu1 = mu + phi * mu
    _, nus = jax.lax.scan(step, nu1, y[:-1])
    with numpyro.plate("t", len(y)):
        numpyro.sample("y", dist.Normal(jnp.concatenate([nu1[None], nus]), sigma), obs=y)


def garch11(y, sigma1):
    """``garch11``, flat priors: σ_t² = α₀ + α₁ (y_{t−1} − μ)² + β₁ σ_{t−1}², y_t ~ N(μ, σ_t).
    β₁ ∈ (0, 1 − α₁) is sampled as β₁ = (1 − α₁) u, u flat on (0, 1), with the Jacobian
    log(1 − α₁) (an ``interval(0, 1 − α₁)`` site would be constrained with a stale α₁)."""
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
    alpha0 = numpyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
    alpha1 = numpyro.sample("alpha1", dist.ImproperUniform(constraints.unit_interval, (), ()))
    u = numpyro.sample("beta1_unit", dist.ImproperUniform(constraints.unit_interval, (), ()))
    beta1 = numpyro.deterministic("beta1", (1 - alpha1) * u)
    numpyro.factor("beta1_jacobian", jnp.log1p(-alpha1))

    def step(var, y_prev):
        var = alpha0 + alpha1 * (y_prev - mu) ** 2 + beta1 * var
        return var, var

    _, var = jax.lax.scan(step, jnp.square(sigma1), y[:-1])
    sd = jnp.sqrt(jnp.concatenate([jnp.square(sigma1)[None], var]))
    with numpyro.plate("t", len(y)):
        numpyro.sample("y", dist.Normal(mu, sd), obs=y)


def hmm_example(y):
    """``hmm_example``: transition rows theta1, theta2 flat on the simplex, positive ordered
    μ with N(3, 1), N(10, 1) terms, y_t | z_t = k ~ N(μ_k, 1); log p(y) by the forward
    algorithm (no initial-state term, as in the Stan model)."""
    theta1 = numpyro.sample("theta1", dist.Dirichlet(jnp.ones(2)))
    theta2 = numpyro.sample("theta2", dist.Dirichlet(jnp.ones(2)))
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.positive_ordered_vector, (), (2,)))
    numpyro.factor("mu_prior", dist.Normal(jnp.array([3.0, 10.0]), 1.0).log_prob(mu).sum())
    log_trans = jnp.log(jnp.stack([theta1, theta2]))  # [from, to]
    log_emit = dist.Normal(mu, 1.0).log_prob(y[:, None])  # [t, state]

    def forward(gamma, log_e):
        gamma = jax.nn.logsumexp(gamma[:, None] + log_trans, axis=0) + log_e
        return gamma, None

    gamma, _ = jax.lax.scan(forward, log_emit[0], log_emit[1:])
    numpyro.factor("y", jax.nn.logsumexp(gamma))
