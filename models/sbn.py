"""A small two-layer sigmoid belief net (Neal 1992) with an amortized, structured guide.

Model (binary units, all weights learned; sigma is the logistic function)::

    z1_j ~ Bernoulli(sigma(b1_j))                          j = 1..H1   (plate "h1")
    z2_k ~ Bernoulli(sigma((z1 W1 + c2)_k))                k = 1..H2   (plate "h2")
    x_d  ~ Bernoulli(sigma((z2 W2 + c3)_d))                d = 1..D    (plate "pixels")

for each of N binary data vectors (plate "data", dim -2; the unit plates share dim -1 and
are told apart by name). Guide (the model reversed, as in NVIL, Mnih & Gregor 2014)::

    q(z2 | x)  = prod_k Bernoulli(sigma((x A + a)_k))
    q(z1 | z2) = prod_j Bernoulli(sigma((z2 B + b)_j))

Every site is discrete; the gradient strategy of ``z1`` and ``z2`` is an argument of
:func:`make_guide`. With H1 + H2 = 12 binary units per datum, the ELBO and log p(x) are
computed exactly by summing over the 2^(H1 + H2) configurations (:func:`exact_elbo`,
:func:`exact_log_marginal`). The data are drawn from an SBN with fixed random weights
(:func:`data`); nothing is downloaded.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

H1, H2, D = 4, 8, 16


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def true_weights(seed: int = 0):
    """The weights of the SBN that generates the data (numpy arrays)."""
    rng = np.random.default_rng(seed)
    return {
        "b1": rng.normal(size=H1),
        "W1": 2.0 * rng.normal(size=(H1, H2)),
        "c2": -1.0 + rng.normal(size=H2),
        "W2": 3.0 * rng.normal(size=(H2, D)),
        "c3": -1.5 + rng.normal(size=D),
    }


def data(n: int = 50, seed: int = 1):
    """n binary vectors of length D drawn from the SBN with ``true_weights()``."""
    rng = np.random.default_rng(seed)
    w = true_weights()
    z1 = (rng.uniform(size=(n, H1)) < _sigmoid(w["b1"])).astype(np.float32)
    z2 = (rng.uniform(size=(n, H2)) < _sigmoid(z1 @ w["W1"] + w["c2"])).astype(np.float32)
    x = (rng.uniform(size=(n, D)) < _sigmoid(z2 @ w["W2"] + w["c3"])).astype(np.float32)
    return jnp.asarray(x)


def init_params(seed: int = 2):
    """Initial values of all learnable parameters: small, random (never exactly zero)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "b1": (H1,),
        "W1": (H1, H2),
        "c2": (H2,),
        "W2": (H2, D),
        "c3": (D,),
        "A": (D, H2),
        "a": (H2,),
        "B": (H2, H1),
        "b": (H1,),
    }
    return {k: jnp.asarray(0.1 * rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


INIT = init_params()
MODEL_PARAMS = ("b1", "W1", "c2", "W2", "c3")
GUIDE_PARAMS = ("A", "a", "B", "b")


def model(x):
    p = {k: numpyro.param(k, INIT[k]) for k in MODEL_PARAMS}
    with numpyro.plate("data", x.shape[0], dim=-2):
        with numpyro.plate("h1", H1, dim=-1):
            z1 = numpyro.sample("z1", dist.Bernoulli(logits=p["b1"]))
        with numpyro.plate("h2", H2, dim=-1):
            z2 = numpyro.sample("z2", dist.Bernoulli(logits=z1 @ p["W1"] + p["c2"]))
        with numpyro.plate("pixels", D, dim=-1):
            numpyro.sample("x", dist.Bernoulli(logits=z2 @ p["W2"] + p["c3"]), obs=x)


def make_guide(infer=None):
    """Structured amortized guide; ``infer``: the ``infer`` dict of both sites.

    A callable ``infer(site)`` (site = "z1" or "z2") is called inside the guide, before
    the site (for baselines that declare state there).
    """

    def site_infer(site):
        return infer(site) if callable(infer) else dict(infer or {})

    def guide(x):
        q = {k: numpyro.param(k, INIT[k]) for k in GUIDE_PARAMS}
        with numpyro.plate("data", x.shape[0], dim=-2):
            with numpyro.plate("h2", H2, dim=-1):
                z2 = numpyro.sample(
                    "z2", dist.Bernoulli(logits=x @ q["A"] + q["a"]), infer=site_infer("z2")
                )
            with numpyro.plate("h1", H1, dim=-1):
                numpyro.sample(
                    "z1", dist.Bernoulli(logits=z2 @ q["B"] + q["b"]), infer=site_infer("z1")
                )

    return guide


guide = make_guide()

# all configurations of the latent units, as float arrays
Z1_ALL = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=H1)), jnp.float32)  # (2^H1, H1)
Z2_ALL = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=H2)), jnp.float32)  # (2^H2, H2)


def _bernoulli_ll(logits, v):
    # sum over the last axis of log Bernoulli(v | sigma(logits))
    return jnp.sum(v * logits - jax.nn.softplus(logits), axis=-1)


def log_tables(params, x):
    """log p(x_n, z1, z2) and log q(z1, z2 | x_n), both of shape (N, 2^H1, 2^H2)."""
    p = params
    lp_z1 = _bernoulli_ll(p["b1"], Z1_ALL)  # (C1,)
    lp_z2 = _bernoulli_ll((Z1_ALL @ p["W1"] + p["c2"])[:, None, :], Z2_ALL[None])  # (C1, C2)
    lp_x = _bernoulli_ll((Z2_ALL @ p["W2"] + p["c3"])[None], x[:, None, :])  # (N, C2)
    log_p = lp_z1[None, :, None] + lp_z2[None] + lp_x[:, None, :]
    lq_z2 = _bernoulli_ll((x @ p["A"] + p["a"])[:, None, :], Z2_ALL[None])  # (N, C2)
    lq_z1 = _bernoulli_ll((Z2_ALL @ p["B"] + p["b"])[:, None, :], Z1_ALL[None])  # (C2, C1)
    log_q = lq_z2[:, None, :] + lq_z1.T[None]
    return log_p, log_q


def exact_elbo(params, x):
    """The ELBO at ``params`` (model and guide), by summing over all configurations."""
    log_p, log_q = log_tables(params, x)
    return jnp.sum(jnp.exp(log_q) * (log_p - log_q))


def exact_log_marginal(params, x):
    """log p(x) of the model at ``params``, summed over the data."""
    log_p, _ = log_tables(params, x)
    return jnp.sum(jax.nn.logsumexp(log_p, axis=(1, 2)))
