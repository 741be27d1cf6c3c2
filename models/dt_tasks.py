"""Distribution-transformer tasks: inverse-gamma variance with closed-form posterior.

Task (a) of the DT paper: an inverse-gamma prior IG(a, b) on the variance s of a
zero-mean normal likelihood, x_i ~ N(0, s), i < n. The exact posterior is
IG(a + n/2, b + Σ x_i²/2). The network models z = log s (the ``"log"`` bijection), and the
meta-prior draws (a, b) uniformly from a narrow or a wide box; the number of observations
n is uniform on 1..N_MAX (padding masked).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import digamma, polygamma

N_MAX = 20
META_PRIORS = {
    # name: ((a_low, a_high), (b_low, b_high))
    "narrow": ((2.0, 3.0), (1.0, 2.0)),
    "wide": ((1.0, 10.0), (0.1, 10.0)),
}


def inverse_gamma_simulator(meta: str = "narrow", n_max: int = N_MAX):
    """Meta-prior (a, b) ~ U(box), s ~ IG(a, b), n ~ U{1..n_max}, x_i ~ N(0, s) (n_max drawn)."""
    (a_lo, a_hi), (b_lo, b_hi) = META_PRIORS[meta]
    a = numpyro.sample("a", dist.Uniform(a_lo, a_hi))
    b = numpyro.sample("b", dist.Uniform(b_lo, b_hi))
    s = numpyro.sample("var", dist.InverseGamma(a, b))
    numpyro.sample("n", dist.DiscreteUniform(1, n_max))
    with numpyro.plate("obs", n_max):
        numpyro.sample("x", dist.Normal(0.0, jnp.sqrt(s)))


def prior_params(values: dict) -> jax.Array:
    """The network's prior input: (log a, log b)."""
    return jnp.log(jnp.stack([values["a"], values["b"]], -1))


def features(x) -> jax.Array:
    """Observation token input per datum: [x, log(x² + 1e-4) / 4]."""
    x = jnp.asarray(x)
    return jnp.stack([x, 0.25 * jnp.log(x**2 + 1e-4)], -1)


def obs_features(values: dict) -> jax.Array:
    """(N_MAX, 2) observation features of one simulated problem."""
    return features(values["x"])


def obs_mask(values: dict) -> jax.Array:
    """The first n of the N_MAX observations are valid."""
    return jnp.arange(values["x"].shape[-1]) < values["n"]


def exact_posterior(values: dict) -> tuple[jax.Array, jax.Array]:
    """(a', b') = (a + n/2, b + Σ_{i<n} x_i²/2) of the exact IG posterior."""
    m = obs_mask(values)
    return values["a"] + 0.5 * m.sum(-1), values["b"] + 0.5 * jnp.sum(
        jnp.where(m, values["x"] ** 2, 0.0), -1
    )


def log_var_log_density(z, a, b) -> jax.Array:
    """Density of z = log s for s ~ IG(a, b): log IG(e^z; a, b) + z."""
    return dist.InverseGamma(a, b).log_prob(jnp.exp(z)) + z


def kl_exact_to(log_q, a, b, num_points: int = 2001, width: float = 14.0) -> jax.Array:
    """KL(IG(a, b) ‖ q) by trapezoidal quadrature in z = log s (KL is bijection-invariant).

    ``log_q(z)`` is the approximation's log density of z on a grid of ``num_points``
    spanning mean ± ``width`` standard deviations of z (mean log b − ψ(a), var ψ'(a)).
    """
    mu = jnp.log(b) - digamma(a)
    sd = jnp.sqrt(polygamma(1, a))
    z = mu + sd * jnp.linspace(-width, width, num_points)
    lp = log_var_log_density(z, a, b)
    integrand = jnp.exp(lp) * (lp - log_q(z))
    return jnp.trapezoid(integrand, z)


def simulate_problems(key, meta: str, num: int) -> dict:
    """``num`` independent problems from the simulator: {site: stacked values}."""
    from numpyro.handlers import seed, trace

    def one(k):
        tr = trace(seed(inverse_gamma_simulator, k)).get_trace(meta)
        return {n: s["value"] for n, s in tr.items() if s["type"] == "sample"}

    return jax.vmap(one)(jax.random.split(key, num))


def make_network(num_components: int, key, d_model: int = 64, num_layers: int = 3):
    """The task's network: 1-d latent (log variance), 2 features, prior input (log a, log b)."""
    from ppl.dt import DistributionTransformer

    return DistributionTransformer(
        1,
        2,
        num_components,
        key=key,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=4,
        prior_param_dim=2,
    )


def objective(meta: str, num_problems: int = 64, consistency: float = 1.0, sequential=0.0):
    """Amortized forward KL on the task's simulator (latent 'var' through the log bijection)."""
    from ppl.dt import amortized_forward_kl

    return amortized_forward_kl(
        lambda: inverse_gamma_simulator(meta),
        latent="var",
        data=obs_features,
        prior=prior_params,
        mask=obs_mask,
        transform="log",
        consistency=consistency,
        num_problems=num_problems,
        sequential=sequential,
    )


@eqx.filter_jit
def dt_kl(net, problems: dict) -> jax.Array:
    """KL(exact ‖ DT) per problem (quadrature in log variance)."""

    def one(v):
        post = net(prior_params(v), obs_features(v), obs_mask(v))
        a, b = exact_posterior(v)
        return kl_exact_to(lambda z: post.log_prob(z[:, None]), a, b)

    return jax.vmap(one)(problems)
