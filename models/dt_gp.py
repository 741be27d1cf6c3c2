"""Distribution-transformer task (b): GP regression with a hyperprior on the lengthscale.

A zero-mean GP with an RBF kernel, k(x, x') = σ_f² exp(−(x − x')² / 2ℓ²), σ_f² = 1,
Gaussian noise σ_n = 0.1, inputs x_i ~ U(−2, 2), i < n, n ~ U{1..N_MAX} (padding masked).
The lengthscale has a hyperprior log ℓ ~ N(m, s), and a meta-prior draws (m, s) from a
box, so the network is trained for a family of hyperpriors (its prior input is (m, log s),
through ``prior_param_dim``). A query point x* ~ U(−2, 2) is drawn with each problem and
y* = f(x*) + ε is the noisy value there.

The network's latent is θ = (log ℓ, y*), a 2-d GMM: the marginal of coordinate 0 is the
lengthscale hyperposterior, the marginal of coordinate 1 the posterior predictive at x*.
The query enters through the data: each observation token is built from x_i − x*, y_i and
the gaps and increments to its left and right neighbours (the increments carry the
lengthscale information; the network's cross-attention sees one datum at a time).

Exact reference: the hyperposterior of log ℓ is 1-d, so p(log ℓ | y) ∝ N(log ℓ; m, s)
p(y | ℓ) is computed by trapezoidal quadrature on a grid, and the exact predictive is the
quadrature mixture of the GP predictive Gaussians N(y*; μ_ℓ(x*), v_ℓ(x*)).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

N_MAX = 20
X_HALF_WIDTH = 2.0
SIGNAL_VAR = 1.0
NOISE_SD = 0.1
META_PRIOR = {"m": (-1.5, 0.5), "s": (0.2, 0.8)}  # log ℓ ~ N(m, s), (m, s) ~ U(box)
GRID_WIDTH = 8.0  # quadrature grid: m ± GRID_WIDTH · s
GRID_POINTS = 401
_HALF_LOG_2PI = 0.5 * jnp.log(2 * jnp.pi)


def rbf(x1, x2, log_ell) -> jax.Array:
    """σ_f² exp(−(x1_i − x2_j)² / 2ℓ²), shape (len(x1), len(x2))."""
    d = (x1[:, None] - x2[None, :]) / jnp.exp(log_ell)
    return SIGNAL_VAR * jnp.exp(-0.5 * d**2)


def gp_simulator(n_max: int = N_MAX):
    """Meta-prior (m, s), log ℓ ~ N(m, s), n, x, x*, y ~ GP + noise, y* | y (exact conditional)."""
    m = numpyro.sample("m", dist.Uniform(*META_PRIOR["m"]))
    s = numpyro.sample("s", dist.Uniform(*META_PRIOR["s"]))
    log_ell = numpyro.sample("log_ell", dist.Normal(m, s))
    numpyro.sample("n", dist.DiscreteUniform(1, n_max))
    with numpyro.plate("obs", n_max):
        x = numpyro.sample("x", dist.Uniform(-X_HALF_WIDTH, X_HALF_WIDTH))
    x_star = numpyro.sample("x_star", dist.Uniform(-X_HALF_WIDTH, X_HALF_WIDTH))
    cov = rbf(x, x, log_ell) + NOISE_SD**2 * jnp.eye(n_max)
    y = numpyro.sample("y", dist.MultivariateNormal(jnp.zeros(n_max), cov))
    # y* given all n_max values: the padded ones are marginalized out of what the network
    # sees, which leaves the GP joint of (y_{<n}, y*) unchanged.
    mean, var = _gp_solve(x, y, jnp.ones(n_max, bool), x_star, log_ell)[1:]
    numpyro.sample("y_star", dist.Normal(mean, jnp.sqrt(var)))


def _gp_solve(x, y, mask, x_star, log_ell):
    """(log p(y_mask | ℓ), predictive mean, predictive variance of y*) with masked padding."""
    both = mask[:, None] & mask[None, :]
    cov = rbf(x, x, log_ell) + NOISE_SD**2 * jnp.eye(x.shape[0])
    cov = jnp.where(both, cov, jnp.eye(x.shape[0]))
    chol = jnp.linalg.cholesky(cov)
    alpha = jax.scipy.linalg.solve_triangular(chol, jnp.where(mask, y, 0.0), lower=True)
    k_star = jnp.where(mask, rbf(x, jnp.atleast_1d(x_star), log_ell)[:, 0], 0.0)
    v = jax.scipy.linalg.solve_triangular(chol, k_star, lower=True)
    n = mask.sum()
    log_lik = -0.5 * alpha @ alpha - jnp.sum(jnp.log(jnp.diagonal(chol))) - n * _HALF_LOG_2PI
    return log_lik, v @ alpha, SIGNAL_VAR + NOISE_SD**2 - v @ v


def gp_predictive_and_lik(values: dict, log_ell):
    """(log p(y_{<n} | ℓ), predictive mean, predictive variance) in one Cholesky."""
    return _gp_solve(values["x"], values["y"], obs_mask(values), values["x_star"], log_ell)


def gp_log_marginal(values: dict, log_ell) -> jax.Array:
    """log p(y_{<n} | x, ℓ) of one problem (the GP marginal likelihood)."""
    return gp_predictive_and_lik(values, log_ell)[0]


def gp_predictive(values: dict, log_ell) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of y* | y_{<n}, ℓ (noisy query value) of one problem."""
    return gp_predictive_and_lik(values, log_ell)[1:]


def obs_mask(values: dict) -> jax.Array:
    """The first n of the N_MAX observations are valid."""
    return jnp.arange(values["x"].shape[-1]) < values["n"]


def prior_params(values: dict) -> jax.Array:
    """The network's prior input: (m, log s) of the hyperprior log ℓ ~ N(m, s)."""
    return jnp.stack([values["m"], jnp.log(values["s"])], -1)


def latent(values: dict) -> jax.Array:
    """θ = (log ℓ, y*)."""
    return jnp.stack([values["log_ell"], values["y_star"]], -1)


def features(x, y, mask, x_star) -> jax.Array:
    """(N, 6) token inputs: [x − x*, y, log gap left, Δy left, log gap right, Δy right].

    Neighbours are the nearest valid observations on each side; a missing neighbour has
    gap 2·X_HALF_WIDTH (the domain width) and Δy = 0.
    """
    n = x.shape[0]
    d = x[None, :] - x[:, None]  # d[i, j] = x_j − x_i
    valid = mask[None, :] & ~jnp.eye(n, dtype=bool)
    out = [x - x_star, y]
    for side in (-1.0, 1.0):
        gaps = jnp.where(valid & (side * d > 0), side * d, jnp.inf)
        j = jnp.argmin(gaps, 1)
        has = jnp.isfinite(gaps.min(1))
        gap = jnp.where(has, jnp.maximum(gaps.min(1), 1e-4), 2 * X_HALF_WIDTH)
        out += [jnp.log(gap), jnp.where(has, y[j] - y, 0.0)]
    return jnp.stack(out, -1)


def obs_features(values: dict) -> jax.Array:
    """(N_MAX, 6) observation features of one simulated problem."""
    return features(values["x"], values["y"], obs_mask(values), values["x_star"])


def simulate_problems(key, num: int) -> dict:
    """``num`` independent problems from the simulator: {site: stacked values}."""
    from numpyro.handlers import seed, trace

    def one(k):
        tr = trace(seed(gp_simulator, k)).get_trace()
        return {n: s["value"] for n, s in tr.items() if s["type"] == "sample"}

    return jax.vmap(one)(jax.random.split(key, num))


# -- exact reference by quadrature --------------------------------------------------------
def grid(values: dict, num_points: int = GRID_POINTS, width: float = GRID_WIDTH) -> jax.Array:
    """Quadrature nodes in log ℓ: m ± width · s (the posterior lies inside the prior's bulk)."""
    return values["m"] + width * values["s"] * jnp.linspace(-1.0, 1.0, num_points)


def exact_one(values: dict, num_points: int = GRID_POINTS, width: float = GRID_WIDTH) -> dict:
    """Exact quantities of one problem by trapezoidal quadrature over log ℓ.

    Returns the grid ``z``, the normalized hyperposterior log density ``log_post`` on it,
    trapezoid weights ``w`` (Σ w = 1) and the predictive means/variances ``mean``/``var``
    per node, ``log_evidence`` = log p(y_{<n} | x, m, s), and the NLLs of the true log ℓ
    and y*: ``nll_hyper`` and ``nll_pred``.
    """
    z = grid(values, num_points, width)
    log_lik, mean, var = jax.vmap(lambda le: gp_predictive_and_lik(values, le))(z)
    prior = dist.Normal(values["m"], values["s"])
    log_joint = prior.log_prob(z) + log_lik
    dz = z[1] - z[0]
    tw = jnp.full_like(z, dz).at[0].mul(0.5).at[-1].mul(0.5)
    log_evidence = jax.nn.logsumexp(log_joint + jnp.log(tw))
    log_post = log_joint - log_evidence
    w = jnp.exp(log_post) * tw
    true_z = values["log_ell"]
    nll_hyper = -(prior.log_prob(true_z) + gp_log_marginal(values, true_z) - log_evidence)
    pred = dist.Normal(mean, jnp.sqrt(var)).log_prob(values["y_star"])
    nll_pred = -jax.nn.logsumexp(pred + jnp.log(w))
    return {
        "z": z,
        "log_post": log_post,
        "w": w,
        "mean": mean,
        "var": var,
        "log_evidence": log_evidence,
        "nll_hyper": nll_hyper,
        "nll_pred": nll_pred,
    }


@jax.jit
def exact_nll(problems: dict) -> dict:
    """Per problem: exact NLLs and log evidence, 50 problems at a time (bounded memory).

    (On jax 0.10.2's CPU backend, ``lax.map(..., batch_size=100)`` over :func:`exact_one`
    was seen to hang after compiling; 50 and 60 ran.)
    """

    def one(v):
        e = exact_one(v)
        return {k: e[k] for k in ("nll_hyper", "nll_pred", "log_evidence")}

    return jax.lax.map(one, problems, batch_size=50)


def prior_nll(problems: dict) -> dict:
    """NLLs under the hyperprior N(m, s) and the prior predictive N(0, σ_f² + σ_n²)."""
    return {
        "nll_hyper": -dist.Normal(problems["m"], problems["s"]).log_prob(problems["log_ell"]),
        "nll_pred": -dist.Normal(0.0, jnp.sqrt(SIGNAL_VAR + NOISE_SD**2)).log_prob(
            problems["y_star"]
        ),
    }


# -- network -------------------------------------------------------------------------------
def make_network(num_components: int, key, d_model: int = 64, num_layers: int = 3):
    """The task's network: 2-d latent (log ℓ, y*), 6 features, prior input (m, log s)."""
    from ppl.dt import DistributionTransformer

    return DistributionTransformer(
        2,
        6,
        num_components,
        key=key,
        d_model=d_model,
        num_layers=num_layers,
        num_heads=4,
        prior_param_dim=2,
    )


def objective(num_problems: int = 64, consistency: float = 1.0):
    """Amortized forward KL on the task's simulator; θ = (log ℓ, y*) is unconstrained."""
    from ppl.dt import amortized_forward_kl

    return amortized_forward_kl(
        gp_simulator,
        latent=latent,
        data=obs_features,
        prior=prior_params,
        mask=obs_mask,
        consistency=consistency,
        num_problems=num_problems,
    )


@eqx.filter_jit
def dt_posteriors(net, problems: dict):
    """The network's joint GMM over (log ℓ, y*) for every problem (batch shape (num,))."""
    return jax.vmap(lambda v: net(prior_params(v), obs_features(v), obs_mask(v)))(problems)


@eqx.filter_jit
def dt_nll(net, problems: dict) -> dict:
    """Per problem: NLL of the true log ℓ under the DT hyperposterior marginal and of the
    true y* under the DT predictive marginal."""
    post = dt_posteriors(net, problems)
    return {
        "nll_hyper": -post.marginal(0).log_prob(problems["log_ell"][:, None]),
        "nll_pred": -post.marginal(1).log_prob(problems["y_star"][:, None]),
    }


@eqx.filter_jit
def dt_hyper_kl(net, problems: dict) -> jax.Array:
    """KL(exact ‖ DT) of the log-ℓ hyperposterior per problem (quadrature on the exact grid)."""
    hyper = dt_posteriors(net, problems).marginal(0)

    def one(args):
        v, h = args
        e = exact_one(v)
        log_q = h.log_prob(e["z"][:, None])
        return jnp.sum(e["w"] * (e["log_post"] - log_q))

    return jax.lax.map(one, (problems, hyper), batch_size=50)
