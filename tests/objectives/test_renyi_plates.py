"""Importance-weighted objectives per element of the plates enclosing every sample site.

NumPyro's ``RenyiELBO`` takes the log-mean-exp over the K particles per element of the
plates common to every sample site (a VAE's data plate) and sums, and allows subsampling
those plates (the sum scaled by size / subsample_size). ``ppl.objectives.renyi`` / ``iwae``
must give the same numbers: means over many keys (one vmapped compilation each) within
4 combined standard errors, and exact references where they exist.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import RenyiELBO

import ppl

KEY = jax.random.PRNGKey(0)
Y = jnp.array([0.3, 1.2, -0.4, 2.0, 0.7, -1.1])
# z_i ~ N(0, 1), y_i | z_i ~ N(z_i, 0.5): y_i ~ N(0, 1.25), z_i | y_i ~ N(0.8 y_i, 0.2)
EXACT = float(-jnp.sum(dist.Normal(0.0, jnp.sqrt(1.25)).log_prob(Y)))  # -log p(y) = 9.139
PARAMS = {"m": 0.5 * Y, "s": jnp.ones(6)}


def local(y, subsample_size=None):
    with numpyro.plate("n", y.shape[0], subsample_size=subsample_size) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(z, 0.5), obs=y[idx])


def local_guide(y, subsample_size=None):
    m = numpyro.param("m", jnp.zeros(y.shape[0]))
    s = numpyro.param("s", jnp.ones(y.shape[0]), constraint=dist.constraints.positive)
    with numpyro.plate("n", y.shape[0], subsample_size=subsample_size) as idx:
        numpyro.sample("z", dist.Normal(m[idx], s[idx]))


def global_local(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(z, 0.5), obs=y)


def global_local_guide(y):
    numpyro.sample("mu", dist.Normal(numpyro.param("m0", 0.3), 0.5))
    local_guide(y)


DATA = (jnp.arange(20) % 3 == 0).astype(jnp.float32)


def vae(data, subsample_size=5):  # NumPyro's RenyiELBO docstring example, smaller
    with numpyro.plate("batch", data.shape[0], subsample_size=subsample_size):
        latent = numpyro.sample("latent", dist.Normal(0.0, 1.0))
        batch = numpyro.subsample(data, event_dim=0)
        numpyro.sample("data", dist.Bernoulli(logits=latent), obs=batch)


def vae_guide(data, subsample_size=5):
    w_loc = numpyro.param("w_loc", 1.0)
    w_scale = numpyro.param("w_scale", 1.0)
    with numpyro.plate("batch", data.shape[0], subsample_size=subsample_size):
        batch = numpyro.subsample(data, event_dim=0)
        numpyro.sample("latent", dist.Normal(w_loc * batch, jnp.exp(w_scale * batch)))


VAE_PARAMS = {"w_loc": jnp.array(1.0), "w_scale": jnp.array(-0.5)}


def losses(loss, model, guide, params, *args, n=4000, grad=False, seed=0):
    """Loss values (and gradients) at ``n`` keys: one vmapped compilation."""

    def one(key):
        f = lambda p: loss.loss(key, p, model, guide, *args)  # noqa: E731
        return jax.value_and_grad(f)(params) if grad else f(params)

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(seed), n))


def z_score(a, b):
    """|mean a - mean b| in combined standard errors, per component (axis 0: keys)."""
    a, b = np.asarray(a).reshape(a.shape[0], -1), np.asarray(b).reshape(b.shape[0], -1)
    se = np.sqrt(a.var(0) / a.shape[0] + b.var(0) / b.shape[0])
    return np.abs(a.mean(0) - b.mean(0)) / se


def joint_renyi(alpha, k):
    """The bound of the whole program (one log-mean-exp), written by a user."""

    @ppl.objective
    def program(model, guide, *args, **kwargs):
        log_w = ppl.objectives.log_weights(model, guide, k, *args, **kwargs)
        return ppl.objectives.log_mean_exp((1 - alpha) * log_w) / (1 - alpha)

    return program


def hand_bound(alpha, k, n=50_000):
    """-sum_i 1/(1-alpha) log mean_k w_ik^(1-alpha) in plain JAX: (mean, SE) over n draws."""
    m, s = PARAMS["m"], PARAMS["s"]
    z = m + s * jax.random.normal(jax.random.PRNGKey(42), (n, k, 6))
    log_w = (
        dist.Normal(0.0, 1.0).log_prob(z)
        + dist.Normal(z, 0.5).log_prob(Y)
        - dist.Normal(m, s).log_prob(z)
    )
    per_element = (jax.nn.logsumexp((1 - alpha) * log_w, 1) - jnp.log(k)) / (1 - alpha)
    v = -jnp.sum(per_element, -1)
    return float(v.mean()), float(v.std()) / np.sqrt(n)


@pytest.mark.parametrize("alpha", [0.0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_local_model_is_numpyros_per_element_bound(alpha):
    """Every site in plate "n": NumPyro's RenyiELBO(alpha, 4) averages 9.97 (alpha 0) and
    11.93 (alpha 0.5), the whole program's bound 12.08 and 13.12; ppl agrees with NumPyro
    within 4 SE, with the per-element bound computed by hand, and lies above
    -log p(y) = 9.139 (loss = -bound, alpha >= 0)."""
    ours = losses(ppl.objectives.renyi(alpha, 4), local, local_guide, PARAMS, Y, seed=1)
    theirs = losses(RenyiELBO(alpha, num_particles=4), local, local_guide, PARAMS, Y, seed=2)
    joint = losses(joint_renyi(alpha, 4), local, local_guide, PARAMS, Y, seed=3)
    assert z_score(ours, theirs).max() < 4
    assert z_score(ours, joint).max() > 15  # the test tells the two bounds apart
    ref, ref_se = hand_bound(alpha, 4)  # 9.987, 11.942 (SE 0.002-0.003)
    se = float(ours.std()) / np.sqrt(ours.shape[0])
    assert abs(float(ours.mean()) - ref) < 4 * np.hypot(se, ref_se)
    assert float(ours.mean()) - EXACT > 4 * se


def test_local_model_gradient_is_numpyros():
    ours = losses(ppl.objectives.renyi(0.5, 4), local, local_guide, PARAMS, Y, grad=True)
    theirs = losses(RenyiELBO(0.5, num_particles=4), local, local_guide, PARAMS, Y, grad=True)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert z_score(a, b).max() < 4


def test_exact_posterior_guide_gives_log_p_for_every_key():
    """q = p(z | y): every weight is p(y_i), so each per-element bound is log p(y_i)."""
    exact = {"m": 0.8 * Y, "s": jnp.full(6, jnp.sqrt(0.2))}
    for loss in (ppl.objectives.renyi(0.5, 3), ppl.objectives.iwae(3)):
        values = losses(loss, local, local_guide, exact, Y, n=8)
        np.testing.assert_allclose(values, EXACT, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_global_latent_is_the_joint_bound_in_both(alpha):
    """ "mu" is outside plate "n": no plate encloses every site; both take the joint bound."""
    params = {**PARAMS, "m0": jnp.array(0.3)}
    args = (global_local, global_local_guide, params, Y)
    ours = losses(ppl.objectives.renyi(alpha, 4), *args, seed=1)
    theirs = losses(RenyiELBO(alpha, num_particles=4), *args, seed=2)
    assert z_score(ours, theirs).max() < 4


SUBSAMPLED = {  # model, guide, params, data, subsample size
    "vae": (vae, vae_guide, VAE_PARAMS, DATA, 5),
    "local": (local, local_guide, PARAMS, Y, 3),
}


@pytest.mark.parametrize(
    ("name", "alpha"),
    [
        (name, alpha)
        if (name, alpha) == ("local", 0.0)
        else pytest.param(name, alpha, marks=pytest.mark.slow)
        for name in sorted(SUBSAMPLED)
        for alpha in (0.0, 0.5)
    ],
)
def test_subsampled_data_plate_runs_and_is_numpyros(name, alpha):
    """A subsampled plate enclosing every site (5 of 20; 3 of 6): the sum of the
    minibatch's per-element bounds times size / subsample_size, every particle on the same
    minibatch, unbiased for the full per-element bound: agrees with NumPyro, and with ppl's
    own bound on the full plate (local, alpha 0: 9.97)."""
    model, guide, params, data, m = SUBSAMPLED[name]
    loss = ppl.objectives.renyi(alpha, 3)
    ours = losses(loss, model, guide, params, data, m, seed=1)
    theirs = losses(RenyiELBO(alpha, 3), model, guide, params, data, m, seed=2)
    full = losses(loss, model, guide, params, data, None, seed=3)
    assert z_score(ours, theirs).max() < 4
    assert z_score(ours, full).max() < 4


def test_subsampled_plate_not_enclosing_every_site_is_refused():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("n", 6, subsample_size=2) as idx:
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    def guide(y):
        numpyro.sample("mu", dist.Normal(numpyro.param("m0", 0.3), 0.5))

    params = {"m0": jnp.array(0.3)}
    for loss in (ppl.objectives.renyi(0.5, 3), ppl.objectives.iwae(3, dreg=True)):
        with pytest.raises(ValueError, match="plate 'n' is subsampled.*site 'mu' is outside"):
            loss.loss(KEY, params, model, guide, Y)


# -- exact: a discrete local latent, every K-tuple of each element enumerated ------------
LOGITS = jnp.array([-2.0, 2.0, -1.5])
X = jnp.array([1.0, 0.0, 1.0])


def coin(x):
    with numpyro.plate("n", 3):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Bernoulli(0.2 + 0.6 * z), obs=x)


def coin_guide(x):
    with numpyro.plate("n", 3):
        numpyro.sample("z", dist.Bernoulli(logits=numpyro.param("q", jnp.zeros(3))))


def coin_exact(q, k, joint=False):
    """E over K particles of log mean_k w: per element (summed) or of the whole program."""
    z = jnp.array(list(itertools.product([0.0, 1.0], repeat=3)))  # (8, 3) joint values
    log_q = dist.Bernoulli(logits=q).log_prob(z)
    log_w = dist.Bernoulli(0.5).log_prob(z) + dist.Bernoulli(0.2 + 0.6 * z).log_prob(X) - log_q
    idx = np.array(list(itertools.product(range(8), repeat=k)))  # (8^k, k) particle tuples
    p = jnp.exp(jnp.sum(log_q[idx], axis=(1, 2)))
    lw = jnp.sum(log_w[idx], -1) if joint else log_w[idx]  # (8^k, k) or (8^k, k, 3)
    lme = jax.nn.logsumexp(lw, 1) - jnp.log(k)
    return jnp.sum(p * jnp.sum(lme.reshape(len(idx), -1), -1))


@pytest.mark.parametrize("grad", ["reinforce", pytest.param("mvd", marks=pytest.mark.slow)])
def test_discrete_local_latent_value_and_gradient_exact(grad):
    """iwae(3) on a Bernoulli latent per element: unbiased for the exact per-element
    bound (3.995; the whole program's is 4.198), value and gradient (score-function and
    measure-valued strategies)."""
    guide = ppl.strategy(coin_guide, {"z": grad})
    loss = ppl.objectives.iwae(3)
    values, grads = losses(loss, coin, guide, {"q": LOGITS}, X, n=4000, grad=True)
    exact, exact_grad = jax.value_and_grad(lambda q: -coin_exact(q, 3))(LOGITS)
    joint = -coin_exact(LOGITS, 3, joint=True)
    se = float(values.std()) / np.sqrt(values.shape[0])
    assert abs(float(values.mean()) - float(exact)) < 4 * se
    assert abs(float(joint) - float(exact)) > 6 * se  # the test tells the two apart
    g = np.asarray(grads["q"])
    g_se = g.std(0) / np.sqrt(g.shape[0])
    assert np.all(np.abs(g.mean(0) - np.asarray(exact_grad)) < 4 * g_se)


def test_enumerated_model_site_in_the_plate_is_summed_per_element():
    """A model-side enumerated site inside the data plate: summed out per element, the
    bound equals the one of the model with that sum written by hand (same keys)."""

    def model(y):
        with numpyro.plate("n", y.shape[0]):
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
            c = numpyro.sample("c", dist.Bernoulli(logits=u), infer={"enumerate": "parallel"})
            numpyro.sample("y", dist.Normal(2.0 * c + 0.5 * u, 1.0), obs=y)

    def summed(y):
        with numpyro.plate("n", y.shape[0]):
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
            cs = jnp.array([0.0, 1.0])[:, None]
            lp = dist.Bernoulli(logits=u).log_prob(cs) + dist.Normal(2 * cs + 0.5 * u, 1).log_prob(
                y
            )
            numpyro.factor("y", jax.nn.logsumexp(lp, 0))

    def guide(y):
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("u", dist.Normal(numpyro.param("m", jnp.zeros(6)), 1.0))

    loss = ppl.objectives.iwae(3)
    params = {"m": 0.1 * Y}
    a = losses(loss, model, guide, params, Y, n=8)
    b = losses(loss, summed, guide, params, Y, n=8)
    np.testing.assert_allclose(a, b, rtol=1e-5)
