"""Long enumerated ``scan`` chains in float32, NumPyro's default precision.

The chain's log-likelihood is a sum over T steps; a contraction that carries the running
log-product rounds at eps·|log p| on every step, so its error grows like √T·eps·|log p|
(an HMM with T = 5000, S = 3: 3e-2 off, where NumPyro's enumerated ``log_density`` is
6e-4 off). The
value must stay within a few eps·|log p| of a float64 forward algorithm, on the forward
path (one chain) and on the transition-product path (a plate of chains).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from scipy.special import logsumexp
from scipy.stats import norm

import ppl

S, T = 3, 5000
TRANS = np.array([[0.86, 0.09, 0.05], [0.07, 0.83, 0.10], [0.12, 0.04, 0.84]])
LOCS = np.array([-3.1, 0.2, 2.9])


def _data(num_series):
    rng = np.random.default_rng(0)
    ys = np.empty((T, num_series))
    for j in range(num_series):
        x = 0
        for t in range(T):
            x = rng.choice(S, p=TRANS[x])
            ys[t, j] = LOCS[x] + rng.standard_normal()
    return ys


def _forward64(y):
    """log p(y) of one series, float64, starting from state 0 before the first step."""
    lt, le = np.log(TRANS), norm.logpdf(y[:, None], LOCS[None], 1.0)
    a = lt[0] + le[0]
    for t in range(1, len(y)):
        a = logsumexp(a[:, None] + lt, axis=0) + le[t]
    return logsumexp(a)


def hmm(y):
    trans = numpyro.param("trans", jnp.asarray(TRANS, jnp.float32))
    locs = numpyro.param("locs", jnp.asarray(LOCS, jnp.float32))

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer={"enumerate": "parallel"})
        with numpyro.plate("series", y_t.shape[-1], dim=-1):
            numpyro.sample("y", dist.Normal(locs[x], 1.0), obs=y_t)
        return x, None

    scan(step, jnp.zeros((), jnp.int32), y)


def hmm_plated(y):
    trans = numpyro.param("trans", jnp.asarray(TRANS, jnp.float32))
    locs = numpyro.param("locs", jnp.asarray(LOCS, jnp.float32))

    def step(x_prev, y_t):
        with numpyro.plate("series", y_t.shape[-1], dim=-1):
            x = numpyro.sample(
                "x", dist.Categorical(trans[x_prev]), infer={"enumerate": "parallel"}
            )
            numpyro.sample("y", dist.Normal(locs[x], 1.0), obs=y_t)
        return x, None

    scan(step, jnp.zeros(y.shape[-1], jnp.int32), y)


def guide(y):
    pass


@pytest.mark.parametrize(
    "model, num_series", [(hmm, 1), (hmm_plated, 2)], ids=["forward", "product"]
)
def test_long_chain_float32_log_likelihood(model, num_series):
    if jax.config.read("jax_enable_x64"):
        pytest.skip("a float32 check")
    y = _data(num_series)
    exact = sum(_forward64(y[:, j]) for j in range(num_series))
    params = {"trans": jnp.asarray(TRANS, jnp.float32), "locs": jnp.asarray(LOCS, jnp.float32)}
    loss = jax.jit(
        lambda p: ppl.objectives.elbo().loss(
            jax.random.PRNGKey(0), p, model, guide, jnp.asarray(y, jnp.float32)
        )
    )(params)
    assert loss.dtype == jnp.float32
    # rounding of one step's terms, summed by a tree: 6e-4 and 4e-4 here (bound 9e-3 and
    # 1.8e-2); a running log-product carried through the scan was 8e-2 and 1.2e-1 off
    eps = float(np.finfo(np.float32).eps)
    assert abs(-float(loss) - exact) < 8 * eps * abs(exact), (-float(loss), exact)
