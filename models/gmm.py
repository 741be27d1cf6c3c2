"""A one-dimensional Gaussian mixture with discrete assignments and its variational guide.

Model (K components, uniform weights, unit-variance components, N data points)::

    mu_k ~ N(0, PRIOR_SCALE^2)                       k = 1..K   (plate "components")
    z_n  ~ Categorical(1/K, ..., 1/K)                n = 1..N   (plate "data")
    x_n  ~ N(mu_{z_n}, 1)

Guide (mean field): q(mu_k) = N(mu_loc_k, mu_scale_k^2), q(z_n) = Categorical(softmax(
z_logits_n)). The gradient strategy of the discrete site ``z`` is an argument of
:func:`make_guide` (a ppl strategy, or a NumPyro ``infer`` dict such as
``{"enumerate": "parallel"}`` for ``TraceEnum_ELBO``).

Because q(mu) is Gaussian and the likelihood is Gaussian in mu, the ELBO is available in
closed form (:func:`exact_elbo`): E_q[(x - mu)^2] = (x - m)^2 + s^2. The data are generated
(:func:`data`), nothing is downloaded.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

K = 3
TRUE_LOCS = np.array([-4.0, 0.0, 4.0], np.float32)
PRIOR_SCALE = 5.0
INIT_MU_LOC = np.array([-1.0, 0.0, 1.0], np.float32)  # distinct, to break the symmetry


def data(n: int = 60, seed: int = 0):
    """n draws from the mixture with means ``TRUE_LOCS`` (float32 array of shape (n,))."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, K, size=n)
    return jnp.asarray(TRUE_LOCS[z] + rng.normal(size=n).astype(np.float32))


def model(x):
    with numpyro.plate("components", K):
        mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(logits=jnp.zeros(K)))
        numpyro.sample("x", dist.Normal(mu[z], 1.0), obs=x)


def make_guide(z_infer=None, mu_infer=None):
    """Mean-field guide; ``z_infer`` / ``mu_infer``: the ``infer`` dict of each site.

    E.g. ``make_guide({"grad": "enum"})``, ``make_guide({"grad": ppl.reinforce()})``,
    ``make_guide({"enumerate": "parallel"})`` (NumPyro ``TraceEnum_ELBO``). A callable
    ``z_infer(x)`` is called inside the guide (for baselines that declare state there).
    """

    def guide(x):
        loc = numpyro.param("mu_loc", jnp.asarray(INIT_MU_LOC))
        scale = numpyro.param("mu_scale", jnp.ones(K), constraint=constraints.positive)
        with numpyro.plate("components", K):
            numpyro.sample("mu", dist.Normal(loc, scale), infer=dict(mu_infer or {}))
        logits = numpyro.param("z_logits", jnp.zeros((x.shape[0], K)))
        infer = z_infer(x) if callable(z_infer) else dict(z_infer or {})
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=logits), infer=infer)

    return guide


guide = make_guide()


def exact_elbo(params, x):
    """The ELBO of the guide at ``params`` (constrained values), in closed form."""
    m, s = params["mu_loc"], params["mu_scale"]
    log_q = jax.nn.log_softmax(params["z_logits"], axis=-1)  # (N, K)
    # E_q(mu)[log N(x_n | mu_k, 1)], shape (N, K)
    ell = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((x[:, None] - m) ** 2 + s**2)
    local = jnp.sum(jnp.exp(log_q) * (ell - jnp.log(K) - log_q))
    prior = -0.5 * jnp.log(2 * jnp.pi * PRIOR_SCALE**2) - (m**2 + s**2) / (2 * PRIOR_SCALE**2)
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s**2)
    return local + jnp.sum(prior + entropy)


def random_params(n: int, seed: int = 1):
    """A generic point of the guide's parameter space (for gradient checks)."""
    rng = np.random.default_rng(seed)
    return {
        "mu_loc": jnp.asarray(TRUE_LOCS + rng.normal(size=K), jnp.float32),
        "mu_scale": jnp.asarray(0.3 + 0.4 * rng.uniform(size=K), jnp.float32),
        "z_logits": jnp.asarray(rng.normal(size=(n, K)), jnp.float32),
    }
