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
    """log Bernoulli(logits).pmf(z), z in {0, 1} (exact at logits = +-inf)."""
    return jnp.where(z > 0, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))


def brute_force_chain_elbo(params, x, never_one=()):
    """sum over all 2^K assignments of q(z) (log p(x, z) - log q(z)), plain JAX; the
    assignments with z_k = 1 for k in ``never_one`` (q = 0 there) are left out."""
    K = x.shape[0]
    zs = np.asarray(list(itertools.product([0.0, 1.0], repeat=K)))
    zs = jnp.asarray(zs[np.all(zs[:, list(never_one)] == 0, axis=1)])

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


def _log_bernoulli_at(z, logits):
    """log Bernoulli(logits).pmf(z) for a Python z: one log-sigmoid, exact at +-inf."""
    return jax.nn.log_sigmoid(logits if z else -logits)


def brute_force_tree_elbo(p, x, prior=(0.2, 0.3, 0.5), z2_logits=None, skip=()):
    """sum over the 12 assignments of q (log p - log q), leaving out those in ``skip``
    ((z0, z2) pairs, z0 alone for every z2): never evaluated, as q is 0 there."""
    total = 0.0
    log_prior = jnp.log(jnp.asarray(prior))
    for z0, z1, z2 in itertools.product(range(3), [0.0, 1.0], [0.0, 1.0]):
        if z0 in skip or (z0, z2) in skip:
            continue
        lq = jax.nn.log_softmax(p["a"])[z0]
        lq = lq + _log_bernoulli_at(z1, p["b"][z0]) + _log_bernoulli_at(z2, p["c"][z0])
        l2 = 0.3 - 0.6 * z0 if z2_logits is None else z2_logits[z0]
        lp = log_prior[z0] + _log_bernoulli_at(z1, 0.4 * z0 - 0.5) + _log_bernoulli_at(z2, l2)
        lp = lp + norm.logpdf(x[0], z1 - 0.2 * z0 + p.get("m", 0.0), 1.0)
        lp = lp + norm.logpdf(x[1], -z2, 1.0)
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


# --- assignments of guide probability 0 ----------------------------------------------
# E_q[f] leaves out the z with q(z) = 0 whatever f(z) is there (-inf, or NaN from
# log p - log q = -inf + inf): 0 * log 0 = 0. Checked on both enumeration paths against
# brute force that never evaluates those z, value and gradient, and finite.

ZERO_PRIOR = (0.0, 0.4, 0.6)  # the model's z0 = 0 is impossible
ZERO_Z2 = jnp.array([-jnp.inf, -jnp.inf, -0.9])  # and z2 = 1 unless z0 = 2
ZERO_GUIDE = {  # the guide's z0 = 0 and (z0 = 1, z2 = 1) have probability 0
    **TREE_PARAMS,
    "a": jnp.array([-jnp.inf, -0.2, 0.3]),
    "c": jnp.array([-0.3, -jnp.inf, 0.0]),
    "m": jnp.array(0.1),
}
DEAD = (0, (1, 1.0))


def zero_tree_model(x):
    """tree_model with log p = -inf at z0 = 0 and at z2 = 1 unless z0 = 2, and a model
    param m (x1's mean)."""
    m = numpyro.param("m", 0.0)
    z0 = numpyro.sample("z0", dist.Categorical(logits=jnp.log(jnp.asarray(ZERO_PRIOR))))
    z1 = numpyro.sample("z1", dist.Bernoulli(logits=0.4 * z0 - 0.5))
    z2 = numpyro.sample("z2", dist.Bernoulli(logits=ZERO_Z2[z0]))
    numpyro.sample("x1", dist.Normal(z1 - 0.2 * z0 + m, 1.0), obs=x[0])
    numpyro.sample("x2", dist.Normal(-z2, 1.0), obs=x[1])


def tree_model_m(x):
    """tree_model (log p finite everywhere) with the same model param m."""
    m = numpyro.param("m", 0.0)
    z0 = numpyro.sample("z0", dist.Categorical(jnp.array([0.2, 0.3, 0.5])))
    z1 = numpyro.sample("z1", dist.Bernoulli(logits=0.4 * z0 - 0.5))
    z2 = numpyro.sample("z2", dist.Bernoulli(logits=0.3 - 0.6 * z0))
    numpyro.sample("x1", dist.Normal(z1 - 0.2 * z0 + m, 1.0), obs=x[0])
    numpyro.sample("x2", dist.Normal(-z2, 1.0), obs=x[1])


def takes_factored_path(model, guide, params, *args):
    """plan_of(...).factored is not None, with the params traced (NumPyro validates
    concrete parameters and refuses a logit of -inf)."""
    seen = []
    jax.eval_shape(lambda p: seen.append(plan_of(model, guide, p, *args).factored), params)
    return seen[0] is not None


def assert_finite_and_close(ours, exact):
    """assert_close with NaN and inf rejected first (assert_allclose passes NaN == NaN)."""
    for leaf in jax.tree.leaves(ours):
        assert np.all(np.isfinite(np.asarray(leaf))), f"non-finite: {ours}"
    assert_close(ours, exact)


@pytest.mark.parametrize("path", ["factored", "joint"])
@pytest.mark.parametrize("model", ["log p = -inf", "log p finite"])
def test_zero_probability_assignments_are_left_out(path, model, monkeypatch):
    """Guide q(z0 = 0) = 0 (logit -inf) and q(z2 = 1 | z0 = 1) = 0 (Bernoulli logit -inf),
    where the model's log p is -inf (or finite, log q = -inf either way): ELBO and its
    gradient w.r.t. guide and model params equal brute force over the assignments of
    positive probability, on the factored path and on joint enumeration. (z0 = 0 is dead
    through another scope's table: the masking must be global, not per table.)"""
    with jax.enable_x64(True):
        x = jnp.array([0.8, -0.4])
        zero = model == "log p = -inf"
        tree = zero_tree_model if zero else tree_model_m
        if path == "joint":
            joint_path(monkeypatch)
        assert takes_factored_path(tree, tree_guide, ZERO_GUIDE, x) == (path == "factored")
        ours = elbo_and_grad(tree, tree_guide, ZERO_GUIDE, x)
        kw = {"prior": ZERO_PRIOR, "z2_logits": ZERO_Z2} if zero else {}
        exact = jax.value_and_grad(lambda p: brute_force_tree_elbo(p, x, skip=DEAD, **kw))
        assert_finite_and_close(ours, exact(ZERO_GUIDE))
        assert ours[1]["a"][0] == 0.0  # softmax at logit -inf: d q(z0 = 0) / d a = 0


@pytest.mark.parametrize("path", ["factored", "joint"])
def test_zero_probability_site_value_in_a_chain(path, monkeypatch):
    """K = 5 chain, q(z_2 = 1) = 0 (phi_2 = -inf): variable elimination meets tables whose
    slices at z_2 = 1 are all probability 0 (log-sum-exp of -infs, a 0 / 0 tangent if
    unguarded); ELBO and gradient exact against brute force over the 16 live
    assignments."""
    with jax.enable_x64(True):
        params, x = chain_problem(5)
        params = {**params, "phi": params["phi"].at[2].set(-jnp.inf)}
        guide = chain_guide({"grad": "enum"})
        if path == "joint":
            joint_path(monkeypatch)
        assert takes_factored_path(chain_model, guide, params, x) == (path == "factored")
        ours = elbo_and_grad(chain_model, guide, params, x)
        exact = jax.value_and_grad(lambda p: brute_force_chain_elbo(p, x, never_one=(2,)))
        assert_finite_and_close(ours, exact(params))


def test_positive_probability_and_log_p_minus_inf_is_minus_inf(monkeypatch):
    """q(z0 = 0) > 0 where log p = -inf: the ELBO is -inf on both paths, not a finite
    number (the gradient is not finite either)."""
    with jax.enable_x64(True):
        x = jnp.array([0.8, -0.4])
        params = {**TREE_PARAMS, "m": jnp.array(0.1)}
        for force_joint in (False, True):
            if force_joint:
                joint_path(monkeypatch)
            assert takes_factored_path(zero_tree_model, tree_guide, params, x) != force_joint
            value, grad = elbo_and_grad(zero_tree_model, tree_guide, params, x)
            assert value == -np.inf
            assert not all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))


TABLE3 = jnp.array([0.0, 1.0, 2.0])


def zero_row_program(theta, table, parameterization):
    """E over z ~ Categorical (q(z = 0) = 0 when theta[0] = -inf) and w ~ Bernoulli of
    log table[z] + theta[4] z w: a non-additive program, joint enumeration."""
    if parameterization == "logits":
        q = dist.Categorical(logits=theta[:3])
    else:  # probs exactly 0: NumPyro clips log 0 to the float minimum
        q = dist.Categorical(probs=jax.nn.softmax(theta[:3]))
    z = numpyro.sample("z", q, infer={"grad": "enum"})
    w = numpyro.sample("w", dist.Bernoulli(logits=theta[3]), infer={"grad": "enum"})
    return jnp.log(table[z]) + theta[4] * z * w


def zero_row_exact(theta, table, rows):
    qz = jax.nn.softmax(theta[:3])
    qw = jnp.stack([jax.nn.sigmoid(-theta[3]), jax.nn.sigmoid(theta[3])])
    return sum(qz[z] * qw[w] * (jnp.log(table[z]) + theta[4] * z * w) for z in rows for w in (0, 1))


@pytest.mark.parametrize("parameterization", ["logits", "probs"])
def test_zero_probability_rows_of_a_program(parameterization, monkeypatch):
    """ppl.expectation (joint enumeration): q(z = 0) = 0 with f(z = 0) = -inf gives the sum
    over z = 1, 2, value and gradient; with f finite there the result is unchanged (the
    same with the mask removed, and with the row summed in); q(z = 0) > 0 with
    f(z = 0) = -inf gives -inf."""
    with jax.enable_x64(True):
        theta = jnp.array([-jnp.inf, 0.2, 0.5, -0.3, 0.7])
        finite = jnp.array([1.5, 1.0, 2.0])
        E = ppl.expectation(lambda t, table: zero_row_program(t, table, parameterization))
        run = jax.jit(jax.value_and_grad(lambda t, table: E(KEY, t, table)))
        exact = jax.value_and_grad(zero_row_exact)
        assert_finite_and_close(run(theta, TABLE3), exact(theta, TABLE3, (1, 2)))
        ours = run(theta, finite)
        assert_finite_and_close(ours, exact(theta, finite, (1, 2)))
        assert_close(ours, exact(theta.at[0].set(-1e4), finite, (0, 1, 2)))
        monkeypatch.setattr(EXPECTATION, "_live_rows", lambda live, tree: tree)
        unmasked = jax.jit(jax.value_and_grad(lambda t, table: E(KEY, t, table)))
        assert_close(unmasked(theta, finite), ours)
        monkeypatch.undo()
        value, _ = run(theta.at[0].set(-1.0), TABLE3)
        assert value == -np.inf


def test_bernoulli_probs_zero_is_probability_zero():
    """Bernoulli(probs=0.0): NumPyro clamps the probability to the smallest normal float,
    ppl counts it as 0: E[log(1 - w) + theta (1 - w)] = theta (float32 and float64), not
    -inf."""

    def program(theta, p):
        w = numpyro.sample("w", dist.Bernoulli(probs=p), infer={"grad": "enum"})
        return jnp.log(1.0 - w) + theta * (1.0 - w)

    E = ppl.expectation(program)
    for x64 in (False, True):
        with jax.enable_x64(x64):
            value, grad = jax.jit(jax.value_and_grad(lambda t, p: E(KEY, t, p)))(0.3, 0.0)
            assert_finite_and_close((value, grad), (0.3, 1.0))


def test_log_prob_at_infinite_logits():
    """ppl's Bernoulli / Binomial(logits) log density at logits +-inf: 0 or -inf (never
    NaN from 0 * inf), derivative y - n sigmoid(l); against plain JAX at finite logits."""
    from jax.scipy.special import gammaln

    from ppl.core.distributions import log_prob

    with jax.enable_x64(True):
        for n in (1, 3):
            for y in range(n + 1):

                def lp(logit, n=n, y=y):
                    d = dist.Binomial(n, logits=logit) if n > 1 else dist.Bernoulli(logits=logit)
                    return log_prob(d, jnp.asarray(float(y)))

                def exact(logit, n=n, y=y):
                    comb = gammaln(n + 1.0) - gammaln(y + 1.0) - gammaln(n - y + 1.0)
                    return (
                        comb + y * jax.nn.log_sigmoid(logit) + (n - y) * jax.nn.log_sigmoid(-logit)
                    )

                for logit in (-jnp.inf, jnp.inf):
                    value, grad = jax.jit(jax.value_and_grad(lp))(logit)
                    impossible = (logit < 0 and y > 0) or (logit > 0 and y < n)
                    if impossible:
                        assert value == -np.inf, (n, y, logit, value)
                    else:  # log C(n, y) = 0 to gammaln's rounding
                        assert abs(value) < 1e-12, (n, y, logit, value)
                    assert grad == y - n * (logit > 0), (n, y, logit, grad)
                for logit in (-2.5, 0.0, 1.7):
                    assert_close(jax.value_and_grad(lp)(logit), jax.value_and_grad(exact)(logit))
