"""Jointly enumerated guide sites of an additive program, by variable elimination.

``elbo()`` on a guide whose discrete sites are all ``enum`` (and other sites pathwise)
contracts the factors each term reads (``ppl.core.factored_enum``) instead of replaying
the program on every joint assignment. Checked exactly (float64, rtol 1e-5): against a
brute-force ELBO in plain JAX, against the joint-enumeration path under the same key,
and against NumPyro's ``TraceEnum_ELBO`` (slow: its compile grows with K). A
pathwise site that reads an enumerated value, and model-side enumeration, are compared
with the joint path (slow).
"""

from __future__ import annotations

import itertools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.stats import norm
from numpyro.infer import TraceEnum_ELBO

import ppl
from benchmarks.enum_models import chain_guide, chain_model, chain_problem

KEY = jax.random.PRNGKey(0)
EXPECTATION = sys.modules["ppl.core.expectation"]


def _log_bernoulli(z, logits):
    return z * jax.nn.log_sigmoid(logits) + (1 - z) * jax.nn.log_sigmoid(-logits)


def brute_force_chain_elbo(params, x):
    """sum over all 2^K assignments of q(z) (log p(x, z) - log q(z)), plain JAX."""
    K = x.shape[0]
    zs = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=K)))

    def one(z):
        lq = lp = 0.0
        prev = 0.0
        for k in range(K):
            lq = lq + _log_bernoulli(z[k], params["phi"][k] + params["psi"][k] * prev)
            lp = lp + _log_bernoulli(z[k], 0.5 * prev - 0.2)
            lp = lp + norm.logpdf(x[k], 2.0 * z[k] - 1.0, 1.0)
            prev = z[k]
        return lq, lp

    lq, lp = jax.vmap(one)(zs)
    return jnp.sum(jnp.exp(lq) * (lp - lq))


def elbo_and_grad(model, guide, params, *args):
    loss = jax.jit(
        jax.value_and_grad(lambda p: -ppl.objectives.elbo().loss(KEY, p, model, guide, *args))
    )
    return loss(params)


def plan_of(model, guide, params, *args):
    return ppl.objectives.elbo().expectation(model, guide, params).discover(KEY, *args)


def assert_close(a, b, rtol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=rtol * 1e-2)


def joint_path(monkeypatch):
    """Force the joint-enumeration path (the reference implementation)."""
    monkeypatch.setattr(EXPECTATION, "plan_rows", lambda *a: None)


def test_chain_equals_brute_force():
    """K = 4 chain: 4 rows instead of 16; ELBO and gradient exact."""
    with jax.enable_x64(True):
        params, x = chain_problem(4)
        guide = chain_guide({"grad": "enum"})
        plan = plan_of(chain_model, guide, params, x)
        assert plan.factored is not None and plan.factored.rows.shape == (4, 4)
        ours = elbo_and_grad(chain_model, guide, params, x)
        exact = jax.value_and_grad(brute_force_chain_elbo)(params, x)
        assert_close(ours, exact)


def tree_model(x):
    z0 = numpyro.sample("z0", dist.Categorical(jnp.array([0.2, 0.3, 0.5])))
    z1 = numpyro.sample("z1", dist.Bernoulli(logits=0.4 * z0 - 0.5))
    z2 = numpyro.sample("z2", dist.Bernoulli(logits=0.3 - 0.6 * z0))
    numpyro.sample("x1", dist.Normal(z1 - 0.2 * z0, 1.0), obs=x[0])
    numpyro.sample("x2", dist.Normal(-z2, 1.0), obs=x[1])


def tree_guide(x):
    """Two enumerated children of an enumerated Categorical root."""
    a = numpyro.param("a", jnp.array([0.1, -0.2, 0.3]))
    b = numpyro.param("b", jnp.array([0.5, -0.5, 0.2]))
    c = numpyro.param("c", jnp.array([-0.3, 0.4, 0.0]))
    z0 = numpyro.sample("z0", dist.Categorical(logits=a), infer={"grad": "enum"})
    numpyro.sample("z1", dist.Bernoulli(logits=b[z0]), infer={"grad": "enum"})
    numpyro.sample("z2", dist.Bernoulli(logits=c[z0]), infer={"grad": "enum"})


TREE_PARAMS = {
    "a": jnp.array([0.1, -0.2, 0.3]),
    "b": jnp.array([0.5, -0.5, 0.2]),
    "c": jnp.array([-0.3, 0.4, 0.0]),
}


def brute_force_tree_elbo(p, x):
    total = 0.0
    log_prior = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    for z0, z1, z2 in itertools.product(range(3), [0.0, 1.0], [0.0, 1.0]):
        lq = jax.nn.log_softmax(p["a"])[z0]
        lq = lq + _log_bernoulli(z1, p["b"][z0]) + _log_bernoulli(z2, p["c"][z0])
        lp = log_prior[z0] + _log_bernoulli(z1, 0.4 * z0 - 0.5)
        lp = lp + _log_bernoulli(z2, 0.3 - 0.6 * z0)
        lp = lp + norm.logpdf(x[0], z1 - 0.2 * z0, 1.0) + norm.logpdf(x[1], -z2, 1.0)
        total = total + jnp.exp(lq) * (lp - lq)
    return total


def test_tree_equals_brute_force():
    """Root with 3 values, two binary children: 6 rows (colours {z0}, {z1, z2}) instead of
    12; ELBO and gradient exact."""
    with jax.enable_x64(True):
        x = jnp.array([0.8, -0.4])
        plan = plan_of(tree_model, tree_guide, TREE_PARAMS, x)
        assert plan.factored is not None and plan.factored.rows.shape == (6, 3)
        ours = elbo_and_grad(tree_model, tree_guide, TREE_PARAMS, x)
        assert_close(ours, jax.value_and_grad(brute_force_tree_elbo)(TREE_PARAMS, x))


def mixed_model(x):
    """The chain, each x_k through a model-enumerated y_k | z_k, and a pathwise scale."""
    s = numpyro.sample("s", dist.LogNormal(0.0, 0.3))
    z = 0
    for k in range(x.shape[0]):
        z = numpyro.sample(f"z{k}", dist.Bernoulli(logits=0.5 * z - 0.2))
        y = numpyro.sample(f"y{k}", dist.Bernoulli(logits=z - 0.5), infer={"enumerate": "parallel"})
        numpyro.sample(f"x{k}", dist.Normal(2.0 * y + z - 1.0, s), obs=x[k])


@pytest.mark.slow
def test_model_side_enumeration_and_pathwise_site(monkeypatch):
    """Guide chain (factored) + model-enumerated y_k (collapsed by density) + pathwise s
    whose mean reads z_4: equal to joint enumeration under the same key."""
    with jax.enable_x64(True):
        params, x = chain_problem(5)
        params = {**params, "ls": jnp.array(0.1)}

        def guide_with_scale(x):
            phi, psi = numpyro.param("phi", jnp.zeros(5)), numpyro.param("psi", jnp.zeros(5))
            z = 0
            for k in range(5):
                q = dist.Bernoulli(logits=phi[k] + psi[k] * z)
                z = numpyro.sample(f"z{k}", q, infer={"grad": "enum"})
            numpyro.sample("s", dist.LogNormal(numpyro.param("ls", 0.1) + 0.3 * z, 0.2))

        # every x_k reads z_4 through s: z_2, z_3, z_4 form a triangle, 3 colours
        plan = plan_of(mixed_model, guide_with_scale, params, x)
        assert plan.factored is not None and plan.factored.rows.shape[0] == 8
        ours = elbo_and_grad(mixed_model, guide_with_scale, params, x)
        joint_path(monkeypatch)
        assert_close(ours, elbo_and_grad(mixed_model, guide_with_scale, params, x))


def dense_guide(x):
    """z2 reads z0 and z1: every pair is read together, nothing to gain."""
    w = numpyro.param("w", jnp.array([0.2, -0.4, 0.6, 0.1]))
    z0 = numpyro.sample("z0", dist.Bernoulli(logits=w[0]), infer={"grad": "enum"})
    z1 = numpyro.sample("z1", dist.Bernoulli(logits=w[1] * z0), infer={"grad": "enum"})
    numpyro.sample("z2", dist.Bernoulli(logits=w[2] * z0 + w[3] * z1), infer={"grad": "enum"})


def dense_model(x):
    z = [numpyro.sample(f"z{k}", dist.Bernoulli(0.4)) for k in range(3)]
    numpyro.sample("x", dist.Normal(z[0] + z[1] - z[2], 1.0), obs=x)


def test_fallback_is_joint_enumeration_and_exact():
    """A dense guide (and a chain with one mvd site) keeps joint enumeration, exactly."""
    with jax.enable_x64(True):
        x, params = jnp.array(0.7), {"w": jnp.array([0.2, -0.4, 0.6, 0.1])}
        assert plan_of(dense_model, dense_guide, params, x).factored is None

        def exact(p):
            total = 0.0
            for z0, z1, z2 in itertools.product([0.0, 1.0], repeat=3):
                w = p["w"]
                lq = (
                    _log_bernoulli(z0, w[0])
                    + _log_bernoulli(z1, w[1] * z0)
                    + _log_bernoulli(z2, w[2] * z0 + w[3] * z1)
                )
                lp = sum(_log_bernoulli(z, jnp.log(0.4 / 0.6)) for z in (z0, z1, z2))
                lp = lp + norm.logpdf(x, z0 + z1 - z2, 1.0)
                total = total + jnp.exp(lq) * (lp - lq)
            return total

        assert_close(
            elbo_and_grad(dense_model, dense_guide, params, x), jax.value_and_grad(exact)(params)
        )
        params, xs = chain_problem(3)
        mvd = ppl.strategy(chain_guide({}), {"z0": "enum", "z1": "mvd", "z2": "enum"})
        assert plan_of(chain_model, mvd, params, xs).factored is None


@pytest.mark.slow
@pytest.mark.parametrize("K", [2, 4, 8, 16])
def test_chain_equals_trace_enum(K):
    """ELBO and gradient equal NumPyro's TraceEnum_ELBO on the same guide (K = 2 keeps
    joint enumeration: 4 rows would not be fewer)."""
    with jax.enable_x64(True):
        params, x = chain_problem(K)
        theirs = chain_guide({"enumerate": "parallel"})
        ref = jax.jit(
            jax.value_and_grad(lambda p: -TraceEnum_ELBO().loss(KEY, p, chain_model, theirs, x))
        )(params)
        guide = chain_guide({"grad": "enum"})
        assert (plan_of(chain_model, guide, params, x).factored is None) == (K == 2)
        assert_close(elbo_and_grad(chain_model, guide, params, x), ref)
        if K <= 8:
            assert_close(ref, jax.value_and_grad(brute_force_chain_elbo)(params, x))
