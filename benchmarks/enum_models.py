"""Models of the enumeration benchmark (``benchmarks/enum.py``), written the NumPyro way.

* a Gaussian HMM (``scan`` and ``markov`` forms) and its hand-written forward algorithm;
* a Gaussian mixture, with the assignments enumerated in the model or sampled by a guide;
* a chain of binary sites enumerated in the guide.

All parameters are ``numpyro.param`` sites read from the model, so the gradient is taken
w.r.t. the same constrained params dict by every method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.contrib.funsor import markov

E = {"enumerate": "parallel"}
simplex, positive = dist.constraints.simplex, dist.constraints.positive


# --- HMM ------------------------------------------------------------------------------
def _hmm_params(S):
    return (
        numpyro.param("init", jnp.ones(S) / S, constraint=simplex),
        numpyro.param("trans", jnp.ones((S, S)) / S, constraint=simplex),
        numpyro.param("locs", jnp.arange(S) * 1.0),
        numpyro.param("scale", 1.0, constraint=positive),
    )


def hmm_scan(y, S):
    """Gaussian HMM with ``numpyro.contrib.control_flow.scan`` (the NumPyro idiom)."""
    init, trans, locs, scale = _hmm_params(S)
    x0 = numpyro.sample("x0", dist.Categorical(init), infer={**E})
    numpyro.sample("y0", dist.Normal(locs[x0], scale), obs=y[0])

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer={**E})
        numpyro.sample("y", dist.Normal(locs[x], scale), obs=y_t)
        return x, None

    scan(step, x0, y[1:])


def hmm_markov(y, S):
    """The same HMM as a Python loop under ``markov`` (unrolled: one site per step)."""
    init, trans, locs, scale = _hmm_params(S)
    x = None
    for t in markov(range(y.shape[0])):
        probs = init if t == 0 else trans[x]
        x = numpyro.sample(f"x_{t}", dist.Categorical(probs), infer={**E})
        numpyro.sample(f"y_{t}", dist.Normal(locs[x], scale), obs=y[t])


def hmm_forward_loss(params, y):
    """Hand-written forward algorithm: -log p(y | params) by ``lax.scan`` + logsumexp."""
    emit = lambda y_t: dist.Normal(params["locs"], params["scale"]).log_prob(y_t)
    log_trans = jnp.log(params["trans"])

    def step(alpha, y_t):
        return jax.nn.logsumexp(alpha[:, None] + log_trans, axis=0) + emit(y_t), None

    alpha, _ = jax.lax.scan(step, jnp.log(params["init"]) + emit(y[0]), y[1:])
    return -jax.nn.logsumexp(alpha)


def _log_matmul(a, b):
    """log(exp(a) @ exp(b)) over the last two dims, stabilised by maxima (as funsor)."""
    am = jnp.max(a, axis=-1, keepdims=True)
    bm = jnp.max(b, axis=-2, keepdims=True)
    return jnp.log(jnp.exp(a - am) @ jnp.exp(b - bm)) + am + bm


def hmm_tree_loss(params, y):
    """Diagnostic: the same likelihood contracted as a log-depth tree of S x S log-matmuls
    (funsor's ``sequential_sum_product``, which NumPyro uses for ``scan``): O(T S^3) work."""
    emit = dist.Normal(params["locs"], params["scale"]).log_prob(y[:, None])  # (T, S)
    mats = jnp.log(params["trans"])[None] + emit[1:, None, :]  # (T-1, S, S)
    while mats.shape[0] > 1:
        n = mats.shape[0] // 2 * 2
        paired = _log_matmul(mats[0:n:2], mats[1:n:2])
        mats = jnp.concatenate([paired, mats[n:]]) if n < mats.shape[0] else paired
    alpha0 = jnp.log(params["init"]) + emit[0]
    return -jax.nn.logsumexp(alpha0[:, None] + mats[0])


def hmm_problem(S, T, seed=0):
    """(params, y): data simulated from an HMM; params a perturbed version of the truth."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    trans = jax.nn.softmax(3.0 * jnp.eye(S) + jax.random.normal(k1, (S, S)), axis=-1)
    locs = jnp.linspace(-2.0, 2.0, S)

    def sim(x, keys):
        kx, ky = keys
        x = jax.random.categorical(kx, jnp.log(trans[x]))
        return x, locs[x] + 0.5 * jax.random.normal(ky, ())

    _, y = jax.lax.scan(sim, 0, jax.random.split(k2, (T, 2)))
    params = {
        "init": jnp.ones(S) / S,
        "trans": jax.nn.softmax(jnp.log(trans) + 0.3 * jax.random.normal(k3, (S, S)), -1),
        "locs": locs + 0.1,
        "scale": jnp.array(0.6),
    }
    return params, y


def no_guide(*args, **kwargs):
    """Param-only guide: the model has no latent left once the discrete sites are summed."""


# --- Gaussian mixture -----------------------------------------------------------------
def _mixture_params(K, x):
    weights = numpyro.param("weights", jnp.ones(K) / K, constraint=simplex)
    locs = numpyro.param("locs", jnp.linspace(-1.0, 1.0, K))
    scales = numpyro.param("scales", jnp.ones(K), constraint=positive)
    return weights, locs, scales


def _mixture(x, K, infer):
    weights, locs, scales = _mixture_params(K, x)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(weights), infer=dict(infer))
        numpyro.sample("x", dist.Normal(locs[z], scales[z]), obs=x)


def mixture_enum(x, K):
    """Assignments summed out in the model (``TraceEnum_ELBO`` style)."""
    _mixture(x, K, E)


def mixture_sampled(x, K):
    """Assignments sampled by the guide (:func:`assignment_guide`)."""
    _mixture(x, K, {})


def assignment_guide(strategy):
    """Guide q(z_i) = Categorical(logits_i) per point, differentiated by ``strategy``."""

    def guide(x, K):
        logits = numpyro.param("assign_logits", jnp.zeros((x.shape[0], K)))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=logits), infer={"grad": strategy})

    return guide


def mixture_log_lik(params, x):
    """Exact training log-likelihood log p(x | params), assignments summed by logsumexp."""
    comp = dist.Normal(params["locs"], params["scales"]).log_prob(x[:, None])
    return jnp.sum(jax.nn.logsumexp(jnp.log(params["weights"]) + comp, axis=-1))


def mixture_data(K, N, seed=0):
    """N points from K well-separated 1-d components (unequal weights)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(1000 + seed))
    w = jnp.linspace(1.0, 2.0, K)
    z = jax.random.categorical(k1, jnp.log(w / w.sum()), shape=(N,))
    return 3.0 * (z - (K - 1) / 2) + 0.7 * jax.random.normal(k2, (N,))


def mixture_init(K, x, seed):
    """Initial params: locs at K random data points, unit scales, uniform weights."""
    idx = jax.random.choice(jax.random.PRNGKey(seed), x.shape[0], (K,), replace=False)
    return {"weights": jnp.ones(K) / K, "locs": jnp.sort(x[idx]), "scales": jnp.ones(K)}


# --- binary chain enumerated in the guide ----------------------------------------------
def chain_model(x):
    z = 0
    for k in range(x.shape[0]):
        z = numpyro.sample(f"z{k}", dist.Bernoulli(logits=0.5 * z - 0.2))
        numpyro.sample(f"x{k}", dist.Normal(2.0 * z - 1.0, 1.0), obs=x[k])


def chain_guide(infer):
    """q(z_k | z_(k-1)) = Bernoulli(logits=phi_k + psi_k z_(k-1)), each site ``infer``."""

    def guide(x):
        K = x.shape[0]
        phi = numpyro.param("phi", jnp.zeros(K))
        psi = numpyro.param("psi", jnp.zeros(K))
        z = 0
        for k in range(K):
            q = dist.Bernoulli(logits=phi[k] + psi[k] * z)
            z = numpyro.sample(f"z{k}", q, infer=dict(infer))

    return guide


def chain_problem(K):
    x = jnp.sin(jnp.arange(K) * 1.1)
    return {"phi": jnp.linspace(-1.0, 1.0, K), "psi": jnp.linspace(0.5, -0.5, K)}, x
