"""posteriordb's Gaussian-process posteriors in NumPyro: a latent GP with Poisson counts and
brms's basis-function (Hilbert-space) GP for the mean and log-sd of ``mcycle``."""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def gp_pois_regr(x, k):
    """``gp_pois_regr``: ρ ~ Gamma(25, 4), α ~ Half-Normal(0, 2), f = L f̃ with f̃ ~ N(0, I),
    L L' = α² exp(−(x_i − x_j)²/(2ρ²)) + 10⁻¹⁰ I; k ~ Poisson(exp f). Needs float64."""
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([len(x)]))
    cov = alpha**2 * jnp.exp(-0.5 * jnp.square((x[:, None] - x[None, :]) / rho))
    chol = jnp.linalg.cholesky(cov + 1e-10 * jnp.eye(len(x)))
    f = numpyro.deterministic("f", chol @ f_tilde)
    numpyro.sample("k", dist.Poisson(jnp.exp(f)), obs=k)


def _half_student_t(df, scale):
    return dist.FoldedDistribution(dist.StudentT(df, 0.0, scale))


def _approx_gp(suffix, X, slambda, sd_scale):
    """Σ_m X[:, m] √spd(λ_m) z_m, spd(λ; s, ℓ) = s² √(2π) ℓ exp(−ℓ²λ²/2), z_m ~ N(0, 1)."""
    sdgp = numpyro.sample(f"sdgp{suffix}", _half_student_t(3.0, sd_scale))
    lscale = numpyro.sample(f"lscale{suffix}", dist.InverseGamma(1.124909, 0.0177))
    z = numpyro.sample(f"zgp{suffix}", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    spd = sdgp**2 * jnp.sqrt(2 * jnp.pi) * lscale * jnp.exp(-0.5 * (lscale * slambda) ** 2)
    return X @ (jnp.sqrt(spd) * z)


def accel_gp(Y, Xgp_1, slambda_1, Xgp_sigma_1, slambda_sigma_1):
    """``mcycle_gp-accel_gp`` (brms): Y ~ N(μ, σ), μ = Intercept + GP₁, log σ =
    Intercept_sigma + GP_σ, each GP a basis-function approximation (40 and 20 terms)."""
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, -13.0, 36.0))
    mu = intercept + _approx_gp("_1", Xgp_1, slambda_1, 36.0)
    intercept_sigma = numpyro.sample("Intercept_sigma", dist.StudentT(3.0, 0.0, 10.0))
    log_sigma = intercept_sigma + _approx_gp("_sigma_1", Xgp_sigma_1, slambda_sigma_1, 36.0)
    with numpyro.plate("n", len(Y)):
        numpyro.sample("Y", dist.Normal(mu, jnp.exp(log_sigma)), obs=Y)
