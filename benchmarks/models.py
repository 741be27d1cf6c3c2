"""Benchmark models: NumPyro model/guide pairs, synthetic data and hand-written JAX ELBOs.

Every parameter is a ``numpyro.param`` site whose value is supplied by the caller (the
benchmark passes a params dict, the way NumPyro's ``SVI`` passes constrained values to
its loss), so the init values below are never computed inside a gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.stats import norm
from numpyro.distributions import constraints

# ----------------------------------------------------------------------------------
# Bernoulli(logits) log-likelihood for the hand-written ELBOs
# ----------------------------------------------------------------------------------


def bernoulli_logits_ll_bce(logits, x):
    """Textbook stable form (TF's sigmoid_cross_entropy_with_logits, NumPyro's Bernoulli):
    x l - max(l, 0) - log1p(exp(-|l|)); its gradient needs one exp per element."""
    return jnp.sum(x * logits - jnp.maximum(logits, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(logits))))


def bernoulli_logits_ll_softplus(logits, x):
    """x l - jax.nn.softplus(l): also common; softplus's custom JVP costs 3 transcendentals."""
    return jnp.sum(x * logits - jax.nn.softplus(logits))


# ----------------------------------------------------------------------------------
# (a) Bayesian logistic regression, mean-field Normal guide
# ----------------------------------------------------------------------------------


def lr_data(n: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w_true = rng.normal(size=(d,)).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-(X @ w_true)))
    y = (rng.uniform(size=n) < p).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(y)


def lr_params(d: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return {
        "w_loc": jnp.asarray(0.3 * rng.normal(size=(d,)), jnp.float32),
        "w_scale": jnp.asarray(0.1 + 0.2 * rng.uniform(size=(d,)), jnp.float32),
    }


def lr_model(X, y):
    d = X.shape[1]
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([d]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def lr_guide(X, y):
    d = X.shape[1]
    loc = numpyro.param("w_loc", jnp.zeros(d))
    scale = numpyro.param("w_scale", 0.1 * jnp.ones(d), constraint=constraints.positive)
    numpyro.sample("w", dist.Normal(loc, scale).to_event(1))


def make_lr_hand_loss(ll=bernoulli_logits_ll_bce):
    def lr_hand_loss(params, key, X, y):
        """-ELBO, reparameterized, pure JAX (no NumPyro)."""
        loc, scale = params["w_loc"], params["w_scale"]
        w = loc + scale * jax.random.normal(key, loc.shape)
        log_lik = ll(X @ w, y)
        log_prior = jnp.sum(norm.logpdf(w))
        log_q = jnp.sum(norm.logpdf(w, loc, scale))
        return -(log_lik + log_prior - log_q)

    return lr_hand_loss


lr_hand_loss = make_lr_hand_loss()


# ----------------------------------------------------------------------------------
# (b) VAE: 784-d Bernoulli likelihood, 10-d latent, 200-unit one-hidden-layer MLPs
# ----------------------------------------------------------------------------------

X_DIM, Z_DIM, H_DIM = 784, 10, 200


def _dense(rng, n_in, n_out):
    w = rng.normal(size=(n_in, n_out)) * np.sqrt(2.0 / n_in)
    return w.astype(np.float32), np.zeros((n_out,), np.float32)


def vae_params(seed: int = 0):
    rng = np.random.default_rng(seed)
    e_w1, e_b1 = _dense(rng, X_DIM, H_DIM)
    e_wl, e_bl = _dense(rng, H_DIM, Z_DIM)
    e_ws, e_bs = _dense(rng, H_DIM, Z_DIM)
    d_w1, d_b1 = _dense(rng, Z_DIM, H_DIM)
    d_w2, d_b2 = _dense(rng, H_DIM, X_DIM)
    encoder = {"w1": e_w1, "b1": e_b1, "w_loc": e_wl, "b_loc": e_bl}
    encoder.update({"w_scale": 0.1 * e_ws, "b_scale": e_bs - 1.0})
    decoder = {"w1": d_w1, "b1": d_b1, "w2": d_w2, "b2": d_b2}
    return jax.tree.map(jnp.asarray, {"encoder": encoder, "decoder": decoder})


def vae_data(batch: int, seed: int = 0):
    """Random binary 784-d "MNIST-like" images (pixel-dependent on-probabilities)."""
    rng = np.random.default_rng(seed)
    probs = rng.beta(0.5, 2.0, size=(X_DIM,))
    return jnp.asarray((rng.uniform(size=(batch, X_DIM)) < probs).astype(np.float32))


def encode(p, x):
    h = jax.nn.relu(x @ p["w1"] + p["b1"])
    return h @ p["w_loc"] + p["b_loc"], jnp.exp(h @ p["w_scale"] + p["b_scale"])


def decode(p, z):
    h = jax.nn.relu(z @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def _no_init(name):
    def init(key):
        raise RuntimeError(f"benchmark param '{name}' must be supplied by the caller")

    return init


def vae_model(x):
    dec = numpyro.param("decoder", _no_init("decoder"))
    with numpyro.plate("batch", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([Z_DIM]).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decode(dec, z)).to_event(1), obs=x)


def vae_guide(x):
    enc = numpyro.param("encoder", _no_init("encoder"))
    with numpyro.plate("batch", x.shape[0]):
        loc, scale = encode(enc, x)
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def make_vae_hand_loss(ll=bernoulli_logits_ll_bce):
    def vae_hand_loss(params, key, x):
        """-ELBO (log p(x|z) + log p(z) - log q(z|x) at one reparameterized z), pure JAX."""
        loc, scale = encode(params["encoder"], x)
        z = loc + scale * jax.random.normal(key, loc.shape)
        log_lik = ll(decode(params["decoder"], z), x)
        log_prior = jnp.sum(norm.logpdf(z))
        log_q = jnp.sum(norm.logpdf(z, loc, scale))
        return -(log_lik + log_prior - log_q)

    return vae_hand_loss


vae_hand_loss = make_vae_hand_loss()


# ----------------------------------------------------------------------------------
# (c) Gaussian mixture with per-datum Categorical assignments
# ----------------------------------------------------------------------------------

GMM_K = 3
GMM_LOCS = np.array([-4.0, 0.0, 4.0], np.float32)


def gmm_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.integers(0, GMM_K, size=n)
    return jnp.asarray(GMM_LOCS[z] + rng.normal(size=n).astype(np.float32))


def gmm_params(n: int, seed: int = 2):
    rng = np.random.default_rng(seed)
    return {
        "mu_loc": jnp.asarray(GMM_LOCS + rng.normal(size=GMM_K), jnp.float32),
        "mu_scale": jnp.full((GMM_K,), 0.5, jnp.float32),
        "z_logits": jnp.asarray(rng.normal(size=(n, GMM_K)), jnp.float32),
    }


def _gmm_model(x, enumerate_z: bool):
    with numpyro.plate("components", GMM_K):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    infer = {"enumerate": "parallel"} if enumerate_z else {}
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(GMM_K)), infer=infer)
        numpyro.sample("x", dist.Normal(mu[z], 1.0), obs=x)


def gmm_model(x):
    """z sampled by the guide (ours: reinforce / enum; NumPyro: TraceGraph_ELBO)."""
    _gmm_model(x, enumerate_z=False)


def gmm_model_enum(x):
    """z enumerated in the model (NumPyro TraceEnum_ELBO, guide without z)."""
    _gmm_model(x, enumerate_z=True)


def _gmm_mu_guide():
    loc = numpyro.param("mu_loc", jnp.zeros(GMM_K))
    scale = numpyro.param("mu_scale", jnp.ones(GMM_K), constraint=constraints.positive)
    with numpyro.plate("components", GMM_K):
        numpyro.sample("mu", dist.Normal(loc, scale))


def _gmm_z_guide(x, infer):
    logits = numpyro.param("z_logits", jnp.zeros((x.shape[0], GMM_K)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=logits), infer=infer)


def gmm_guide_reinforce(x):
    _gmm_mu_guide()
    _gmm_z_guide(x, {"grad": "reinforce"})


def gmm_guide_enum(x):
    _gmm_mu_guide()
    _gmm_z_guide(x, {"grad": "enum"})


def gmm_guide_numpyro_enum(x):
    """Guide-side parallel enumeration of z (NumPyro TraceEnum_ELBO): same ELBO as ours-enum."""
    _gmm_mu_guide()
    _gmm_z_guide(x, {"enumerate": "parallel"})


def gmm_guide_no_z(x):
    _gmm_mu_guide()
