"""Traced-program size grows linearly in the number of enum/mvd sites; SVI never retraces."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.handlers import seed
from numpyro.infer import SVI

import ppl

KEY = jax.random.PRNGKey(0)


def chain(n, strategy):
    """n sequential discrete sites, each depending on the previous one."""

    def f(p):
        total, z = 0.0, 0.0
        for i in range(n):
            z = numpyro.sample(
                f"z{i}", dist.Bernoulli(jax.nn.sigmoid(p + z)), infer={"grad": strategy}
            )
            total = total + (i + 1) * z
        return total

    return f


def count_equations(closed_jaxpr) -> int:
    """Equations of a jaxpr including those of its sub-jaxprs (pjit, custom_jvp, ...)."""

    def rec(jaxpr):
        n = 0
        for eqn in jaxpr.eqns:
            n += 1
            for v in eqn.params.values():
                if hasattr(v, "jaxpr") and hasattr(v, "consts"):
                    n += rec(v.jaxpr)
                elif hasattr(v, "eqns"):
                    n += rec(v)
        return n

    return rec(closed_jaxpr.jaxpr)


def grad_size(n, strategy):
    E = ppl.expectation(chain(n, strategy))
    return count_equations(jax.make_jaxpr(jax.grad(lambda p: E(KEY, p)))(0.1))


def plain_size(n, strategy):
    f = chain(n, strategy)
    return count_equations(jax.make_jaxpr(jax.grad(lambda p: seed(f, KEY)(p)))(0.1))


@pytest.mark.parametrize("strategy, sizes", [("mvd", (4, 8, 16, 32)), ("enum", (2, 4, 8))])
def test_traced_program_grows_linearly(strategy, sizes):
    ours = np.array([grad_size(n, strategy) for n in sizes], float)
    plain = np.array([plain_size(n, strategy) for n in sizes], float)
    # per-site increments are constant (linear growth), and a fixed multiple of the
    # plain program's (a quadratic design doubles the increment at every doubling)
    increments = np.diff(ours) / np.diff(sizes)
    assert np.allclose(increments, increments[0], rtol=0.05), increments
    ratio = ours / plain
    assert ratio[-1] < 1.1 * ratio[1], ratio
    assert ratio.max() < 10, ratio


def test_svi_step_compiles_once():
    data = jnp.array([1.0, 0.0, 1.0, 1.0])

    def model(data):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
        with numpyro.plate("d", data.shape[0]):
            numpyro.sample("x", dist.Normal(loc + z, 1.0), obs=data)

    def guide(data):
        p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
        m = numpyro.param("m", 0.0)
        numpyro.sample("z", dist.Bernoulli(p), infer={"grad": "mvd"})
        numpyro.sample("loc", dist.Normal(m, 1.0))

    traces = []

    def counting_guide(data):
        traces.append(1)
        guide(data)

    svi = SVI(model, counting_guide, optax.adam(1e-2), loss=ppl.objectives.elbo())
    state = svi.init(KEY, data)
    update = jax.jit(svi.update)
    state, _ = update(state, data)
    after_first = len(traces)
    for _ in range(5):
        state, loss = update(state, data)
    assert len(traces) == after_first  # no Python re-execution: no retrace
    assert update._cache_size() == 1
    assert jnp.isfinite(loss)
