"""Every objective inherits model-side enumeration; the collapsed IWAE bound.

* Each library objective (and a user-written one) on a model whose discrete site is
  enumerated gives exactly the value and gradient it gives on the same model with the
  sum written out by hand (``numpyro.factor`` of a ``logsumexp``), under the same key.
* ``iwae(K)`` with model-side enumeration: E[bound] rises with K and stays below the exact
  log p(x) (quadrature over the continuous latent), on three models; and it is tighter
  than NumPyro's ``TraceEnum_ELBO``.
* The ``iwae(K)`` gradient is unbiased for the exact gradient of the K-sample bound,
  computed by enumerating every K-tuple of a discrete guide site.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import TraceEnum_ELBO

import ppl
from models.enum_zoo import continuous_parent
from ppl.validate import check_unbiased

_spec = importlib.util.spec_from_file_location(
    "enum_reference", Path(__file__).with_name("reference.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

X = jnp.array([-0.4, 2.3, 1.9, 0.1, 2.6])
W = jnp.array([0.7, 0.3])  # p(z = 0), p(z = 1)


def enum_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    shift = numpyro.param("shift", 2.0)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(W[1]), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(mu + shift * z, 1.0), obs=x)


def hand_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    shift = numpyro.param("shift", 2.0)
    with numpyro.plate("data", x.shape[0]):
        lp = jnp.stack([dist.Normal(mu + shift * k, 1.0).log_prob(x) for k in (0, 1)], -1)
        numpyro.factor("x", jax.nn.logsumexp(lp + jnp.log(W), -1))


def guide(x):
    loc = numpyro.param("loc", 0.3)
    scale = numpyro.param("scale", 0.8, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))


def aux_guide(x):
    loc = numpyro.param("loc", 0.3)
    scale = numpyro.param("scale", 0.8, constraint=dist.constraints.positive)
    u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    numpyro.sample("mu", dist.Normal(loc + 0.5 * u, scale))


def reverse(kept, x):
    numpyro.sample("u", dist.Normal(0.2 * kept["mu"], 1.0))


@ppl.objective
def user_elbo(model, guide, *args):
    q = ppl.simulate(guide, *args)
    return ppl.density(model, q.values, *args) - q.log_prob


PARAMS = {"loc": jnp.array(0.3), "scale": jnp.array(0.8), "shift": jnp.array(2.0)}
OBJECTIVES = {
    "elbo": (ppl.objectives.elbo(), guide),
    "elbo4": (ppl.objectives.elbo(4), guide),
    "iwae": (ppl.objectives.iwae(4), guide),
    "iwae_dreg": (ppl.objectives.iwae(4, dreg=True), guide),
    "renyi": (ppl.objectives.renyi(0.5, 4), guide),
    "vimco": (ppl.objectives.vimco(4), guide),
    "cubo": (ppl.objectives.cubo(2.0, 4), guide),
    "rws": (ppl.objectives.rws(4), guide),
    "rws_dreg": (ppl.objectives.rws(4, dreg=True), guide),
    "tail_adaptive": (ppl.objectives.tail_adaptive(4), guide),
    "hvi": (ppl.objectives.hvi(["mu"], reverse), aux_guide),
    "iwhvi": (ppl.objectives.iwhvi(["mu"], reverse, 3), aux_guide),
    "diwhvi": (ppl.objectives.diwhvi(["mu"], reverse, 3, 2), aux_guide),
    "user": (user_elbo, guide),
}


@pytest.mark.slow  # (fast suite budget)
def test_every_objective_equals_the_hand_collapsed_model():
    """One compiled program over all objectives and 3 keys: enumerated == written out."""
    keys = jax.random.split(jax.random.PRNGKey(3), 3)

    def both(key):
        out = {}
        for name, (objective, g) in OBJECTIVES.items():

            def f(model, objective=objective, g=g):
                return lambda p: objective.loss(key, p, model, g, X)

            out[name] = (
                jax.value_and_grad(f(enum_model))(PARAMS),
                jax.value_and_grad(f(hand_model))(PARAMS),
            )
        return out

    results = jax.jit(jax.vmap(both))(keys)
    for name, (ours, hand) in results.items():
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(hand), strict=True):
            assert np.all(np.isfinite(np.asarray(a))), name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


# --- the collapsed IWAE bound -----------------------------------------------------------
def _log_evidence_by_quadrature(log_joint_of_mu, lo=-8.0, hi=8.0, n=8001):
    """log ∫ p(x, mu) dmu on a uniform grid (trapezoid; error far below 1e-4 here)."""
    grid = jnp.linspace(lo, hi, n)
    lj = jax.vmap(log_joint_of_mu)(grid)
    w = jnp.full(n, (hi - lo) / (n - 1)).at[0].mul(0.5).at[-1].mul(0.5)
    return float(jax.nn.logsumexp(lj + jnp.log(w)))


def _single_mu_joint(x, shift=2.0):
    def lj(mu):
        lp = jnp.stack([dist.Normal(mu + shift * k, 1.0).log_prob(x) for k in (0, 1)], -1)
        return dist.Normal(0.0, 1.0).log_prob(mu) + jnp.sum(jax.nn.logsumexp(lp + jnp.log(W), -1))

    return lj


def _change_point_free_joint(x):
    def lj(mu):  # a global enumerated site: g in {0, 1} shifts every observation
        lg = [
            jnp.log(pg) + jnp.sum(dist.Normal(mu + g, 1.0).log_prob(x))
            for g, pg in ((0, 0.4), (1, 0.6))
        ]
        return dist.Normal(0.0, 1.0).log_prob(mu) + jnp.logaddexp(*lg)

    return lj


def global_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    g = numpyro.sample("g", dist.Bernoulli(0.6), infer={"enumerate": "parallel"})
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu + g, 1.0), obs=x)


def _iwae_means(model, g, params, ks, n=1600):
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    out = {}
    for k in ks:
        objective = ppl.objectives.iwae(k)
        values = jax.jit(jax.vmap(lambda key, o=objective: -o.loss(key, params, model, g, X)))(keys)
        values = np.asarray(values, np.float64)
        out[k] = (values.mean(), values.std(ddof=1) / np.sqrt(n))
    return out


@pytest.mark.parametrize(
    "model,log_joint",
    [
        (enum_model, _single_mu_joint(X)),
        (global_model, _change_point_free_joint(X)),
        (continuous_parent, ref.continuous_parent_log_joint(X)),
    ],
    ids=["plate_local", "global", "continuous_parent"],
)
def test_iwae_bound_rises_with_k_and_stays_below_log_evidence(model, log_joint):
    log_px = _log_evidence_by_quadrature(log_joint)
    params = {"loc": jnp.array(0.3), "scale": jnp.array(0.8), "shift": jnp.array(2.0)}
    means = _iwae_means(model, guide, params, (1, 4, 16))
    (m1, s1), (m16, s16) = means[1], means[16]
    assert m16 - m1 > 4 * np.hypot(s1, s16), means  # rises, significantly
    for small, big in ((1, 4), (4, 16)):  # never falls beyond noise
        (m1, s1), (m2, s2) = means[small], means[big]
        assert m2 - m1 > -4 * np.hypot(s1, s2), (small, big, means)
    for k, (m, s) in means.items():
        assert m < log_px + 4 * s, (k, m, s, log_px)
    # K = 16 is within a few tenths of a nat of log p(x) here: the bound is not vacuous
    assert log_px - means[16][0] < 0.5 * abs(log_px - means[1][0]) + 4 * means[16][1]


def test_collapsed_iwae_is_tighter_than_trace_enum_elbo():
    params = {"loc": jnp.array(0.3), "scale": jnp.array(0.8), "shift": jnp.array(2.0)}
    keys = jax.random.split(jax.random.PRNGKey(5), 400)
    te = jax.jit(jax.vmap(lambda k: -TraceEnum_ELBO().loss(k, params, enum_model, guide, X)))(keys)
    te = np.asarray(te, np.float64)
    (m, s) = _iwae_means(enum_model, guide, params, (8,))[8]
    assert m - te.mean() > 4 * np.hypot(s, te.std(ddof=1) / np.sqrt(te.size))


# --- unbiased gradient of the K-sample bound ----------------------------------------------
def discrete_guide_model(x):
    g = numpyro.sample("g", dist.Bernoulli(0.5))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(g + 2.0 * z, 1.0), obs=x)


def discrete_guide(x):
    theta = numpyro.param("theta", 0.4)
    numpyro.sample("g", dist.Bernoulli(logits=theta), infer={"grad": "reinforce"})


def _exact_iwae(theta, k):
    """E_{g_1..K ~ q}[log mean_k p(x, g_k) / q(g_k)], every K-tuple enumerated."""

    def log_p(g):
        lp = jnp.stack([dist.Normal(g + 2.0 * z, 1.0).log_prob(X) for z in (0, 1)], -1)
        return jnp.log(0.5) + jnp.sum(jax.nn.logsumexp(lp + jnp.log(jnp.array([0.7, 0.3])), -1))

    def log_q(g):
        return g * jax.nn.log_sigmoid(theta) + (1 - g) * jax.nn.log_sigmoid(-theta)

    total = 0.0
    for gs in itertools.product((0.0, 1.0), repeat=k):
        lw = jnp.array([log_p(g) - log_q(g) for g in gs])
        prob = jnp.exp(sum(log_q(g) for g in gs))
        total = total + prob * (jax.nn.logsumexp(lw) - jnp.log(k))
    return total


def test_iwae_gradient_unbiased_for_the_exact_k_sample_bound():
    k = 3
    theta = jnp.array(0.4)
    exact = jax.grad(_exact_iwae)(theta, k)
    objective = ppl.objectives.iwae(k)

    def estimator(key):
        return jax.grad(
            lambda t: -objective.loss(key, {"theta": t}, discrete_guide_model, discrete_guide, X)
        )(theta)

    report = check_unbiased(estimator, exact, jax.random.PRNGKey(2), num_samples=4000)
    assert report.stderr[0] > 0  # a score-function estimator has variance
    # the value too: E[iwae] equals the enumerated bound
    value = jax.jit(
        jax.vmap(
            lambda key: (
                -objective.loss(key, {"theta": theta}, discrete_guide_model, discrete_guide, X)
            )
        )
    )(jax.random.split(jax.random.PRNGKey(4), 4000))
    value = np.asarray(value, np.float64)
    se = value.std(ddof=1) / np.sqrt(value.size)
    assert abs(value.mean() - float(_exact_iwae(theta, k))) < 4 * se
