"""``config_enumerate`` on both model and guide (NumPyro's own test idiom): a site the
guide samples takes the guide's value, whatever the model's mark, as NumPyro's ``replay``
does; only the sites the guide lacks are summed out. ppl refused these programs
(``ModelGuideMismatch``: "marked for enumeration in the model and also sampled by the
guide") while ``TraceEnum_ELBO`` runs them.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import enable_x64
from numpyro.contrib.funsor import config_enumerate
from numpyro.infer import TraceEnum_ELBO
from numpyro.infer.util import log_density
from numpyro.ops.indexing import Vindex

import ppl

SIMPLEX = dist.biject_to(dist.constraints.simplex)
DATA = jnp.array([1, 2])


def _params():
    return {
        "p_a": jnp.array([0.45, 0.55]),
        "p_b": jnp.array([0.6, 0.4]),
        "p_c": jnp.array([[[0.4, 0.5, 0.1], [0.3, 0.5, 0.2]], [[0.3, 0.4, 0.3], [0.4, 0.4, 0.2]]]),
        "q_b": jnp.array([0.8, 0.2]),
    }


@config_enumerate
def model(p):
    a = numpyro.sample("a", dist.Categorical(p["p_a"]))
    b = numpyro.sample("b", dist.Categorical(p["p_b"]))
    with numpyro.plate("data", 2):
        numpyro.sample("c", dist.Categorical(Vindex(p["p_c"])[a, b]), obs=DATA)


@config_enumerate
def guide(p):
    numpyro.sample("b", dist.Categorical(p["q_b"]))


def _brute(p):
    """-ELBO in plain JAX: sum_b q(b) [log sum_a p(a) p(b) prod_i p(c_i | a, b) - log q(b)]."""
    log_c = jnp.sum(jnp.log(p["p_c"][:, :, DATA]), -1)  # (a, b)
    log_joint = jnp.log(p["p_a"])[:, None] + jnp.log(p["p_b"])[None, :] + log_c
    log_q = jnp.log(p["q_b"])
    return -jnp.sum(p["q_b"] * (jax.nn.logsumexp(log_joint, 0) - log_q))


def _value_and_grad(fn):
    raw = jax.tree.map(SIMPLEX.inv, _params())
    v, g = jax.jit(jax.value_and_grad(lambda r: fn(jax.tree.map(SIMPLEX, r))))(raw)
    return v, np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])


def _ours():
    key = jax.random.PRNGKey(0)
    return _value_and_grad(lambda p: ppl.objectives.elbo().loss(key, {}, model, guide, p))


def test_guide_value_is_used_and_the_rest_summed_out():
    with enable_x64(True):
        ours, brute = _ours(), _value_and_grad(_brute)
    np.testing.assert_allclose(ours[0], brute[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], brute[1], rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_equals_trace_enum_elbo():
    key = jax.random.PRNGKey(0)
    with enable_x64(True):
        ours = _ours()
        theirs = _value_and_grad(lambda p: TraceEnum_ELBO().loss(key, {}, model, guide, p))
        brute = _value_and_grad(_brute)
    np.testing.assert_allclose(theirs[0], brute[0], rtol=1e-6)  # the reference is right
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-9)


def test_sampled_guide_site_marked_in_the_model():
    """The guide samples ``z`` (no mark); the model marks it: the ELBO at the guide's draw,
    log p(x, z) - log q(z), not a marginal over z."""

    def m(x):
        z = numpyro.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def g(x):
        numpyro.sample("z", dist.Bernoulli(0.5))

    x = 0.3
    values = set()
    for seed in range(4):
        key = jax.random.PRNGKey(seed)
        value = float(ppl.objectives.elbo().loss(key, {}, m, g, x))
        candidates = [-(log_density(m, (x,), {}, {"z": z})[0] - np.log(0.5)) for z in (0.0, 1.0)]
        assert min(abs(value - c) for c in candidates) < 1e-5, (value, candidates)
        values.add(round(value, 5))
    assert len(values) == 2  # both draws of z occur: no value is summed over z


@pytest.mark.slow
def test_marked_sites_of_a_plate_take_the_guide_values():
    """NumPyro's plate_9 idiom: ``config_enumerate`` guide ``a -> [b]``, model
    ``a -> [b -> c]``; a and b come from the guide. Joint guide enumeration on 1 x 2^2
    assignments would be exact; ppl's plated sites are per-element local expectations, so
    the loss is compared in mean (4 SE over 400 keys) with a brute-force -ELBO."""
    pa, pb = jnp.array([0.45, 0.55]), jnp.array([[0.3, 0.7], [0.6, 0.4]])
    pc, qb = jnp.array([[0.3, 0.4, 0.3], [0.4, 0.4, 0.2]]), jnp.array([[0.3, 0.7], [0.8, 0.2]])

    @config_enumerate
    def m9():
        a = numpyro.sample("a", dist.Categorical(pa))
        with numpyro.plate("items", 2):
            b = numpyro.sample("b", dist.Categorical(pb[a]))
            numpyro.sample("c", dist.Categorical(pc[b]), obs=DATA)

    @config_enumerate
    def g9():
        a = numpyro.sample("a", dist.Categorical(pa))
        with numpyro.plate("items", 2):
            numpyro.sample("b", dist.Categorical(qb[a]))

    exact = 0.0
    for a, b0, b1 in itertools.product(range(2), repeat=3):
        v = {"a": a, "b": jnp.array([b0, b1])}
        lq = log_density(g9, (), {}, v)[0]
        exact += np.exp(lq) * (lq - log_density(m9, (), {}, v)[0])
    keys = jax.random.split(jax.random.PRNGKey(1), 400)
    losses = jax.vmap(lambda k: ppl.objectives.elbo().loss(k, {}, m9, g9))(keys)
    se = np.std(losses) / np.sqrt(len(losses))
    assert abs(np.mean(losses) - exact) < 4 * se, (np.mean(losses), exact, se)
