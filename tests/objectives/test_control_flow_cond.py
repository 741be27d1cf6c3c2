"""A model that samples inside ``numpyro.contrib.control_flow.cond``'s branches.

``cond`` passes only ``substitute`` and ``condition`` into its branches, not ``replay``;
NumPyro's ``Trace_ELBO`` replays the guide's values into the model, so there the branch
returns a fresh prior draw while the trace scores the guide's value (a different number;
docs/numpyro.md). ppl runs the model on the guide's values by substitution: on every key
its ELBO and IWAE (value and gradient) are those of the same model written without
``cond``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import enable_x64
from numpyro.contrib.control_flow import cond

import ppl

Y = jnp.array([0.3, -0.2, 1.1])


def with_cond(y, flag):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    s = cond(
        flag,
        lambda _: numpyro.sample("s", dist.HalfNormal(1.0)),
        lambda _: numpyro.sample("s", dist.HalfNormal(2.0)),
        None,
    )
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def without_cond(y, flag):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0 if flag else 2.0))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def guide(y, flag):
    numpyro.sample("mu", dist.Normal(numpyro.param("m", 1.1), 0.3))
    numpyro.sample("s", dist.LogNormal(numpyro.param("ls", 0.5), 0.2))


@pytest.mark.parametrize("objective", [ppl.objectives.elbo(), ppl.objectives.iwae(3)], ids=str)
def test_cond_branch_takes_the_guide_value(objective):
    flag = jnp.array(False)  # a traced predicate: lax.cond, not a Python branch
    with enable_x64():
        params = {"m": jnp.array(1.1), "ls": jnp.array(0.5)}
        keys = jax.random.split(jax.random.PRNGKey(0), 3)

        @jax.jit
        def both(keys):
            def loss(model, key):
                return jax.value_and_grad(lambda p: objective.loss(key, p, model, guide, Y, flag))(
                    params
                )

            return jax.vmap(lambda k: (loss(with_cond, k), loss(without_cond, k)))(keys)

        (v, g), (v0, g0) = both(keys)
        np.testing.assert_allclose(v, v0, rtol=1e-10)
        for name in params:
            np.testing.assert_allclose(g[name], g0[name], rtol=1e-10)
