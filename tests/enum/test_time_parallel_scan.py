"""An enumerated ``scan``'s steps scored all at once (``ppl.core.time_parallel``).

Model-side enumeration evaluates a ``scan`` body at every step with ``jax.vmap`` where
its carry is the previous step's support (the same array at every step), gets varying
carry leaves (a step counter, data) from a ``lax.scan`` of the carry alone, and keeps
step-independent distribution parameters unstacked. The ELBO's value and gradient must be
exactly those of NumPyro's sequential ``scan`` (float64), on every carry form, and the
parallel path must actually be taken where it applies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import enable_x64
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer.autoguide import AutoDelta

import ppl
from ppl.core.time_parallel import recorded_decisions, sequential_scans

E = {"enumerate": "parallel"}
S, T = 3, 7
Y = np.sin(np.arange(T * 2.0)).reshape(T, 2)  # two series (float64 under enable_x64)
LENGTHS = jnp.array([T, 4])


def _params():
    return (
        numpyro.param("init", jnp.ones(S) / S, constraint=dist.constraints.simplex),
        numpyro.param(
            "trans", (0.2 + jnp.eye(S)) / (1 + 0.2 * S), constraint=dist.constraints.simplex
        ),
        numpyro.param("locs", jnp.linspace(-1.0, 1.0, S)),
    )


def homogeneous(y):
    """Carry: the previous state only (the parallel path, no carry scan)."""
    init, trans, locs = _params()
    x0 = numpyro.sample("x0", dist.Categorical(init), infer={**E})

    def step(x_prev, y_t):
        x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer={**E})
        numpyro.sample("y", dist.Normal(locs[x], 1.0), obs=y_t[0])
        return x, None

    scan(step, x0, y)


def counter_and_mask(y):
    """Carry: (state, step counter); a plate of series at dim -1, padded by a mask."""
    init, trans, locs = _params()

    def step(carry, y_t):
        x_prev, t = carry
        with numpyro.plate("series", 2, dim=-1), handlers.mask(mask=t < LENGTHS):
            x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer={**E})
            numpyro.sample("y", dist.Normal(locs[x], 1.0), obs=y_t)
        return (x, t + 1), None

    scan(step, (jnp.zeros(2, int), 0), y)


def second_order(y):
    init, trans, locs = _params()
    trans2 = numpyro.param(
        "trans2", (0.5 + jnp.eye(S)) / (1 + 0.5 * S), constraint=dist.constraints.simplex
    )

    def step(carry, y_t):
        x_2, x_1 = carry
        probs = 0.5 * trans[x_1] + 0.5 * trans2[x_2]
        x = numpyro.sample("x", dist.Categorical(probs), infer={**E})
        numpyro.sample("y", dist.Normal(locs[x], 1.0), obs=y_t[1])
        return (x_1, x), None

    scan(step, (0, 0), y, history=2)


def data_in_carry(y):
    """Carry: (state, previous observation): an autoregressive emission."""
    init, trans, locs = _params()
    phi = numpyro.param("phi", 0.3)

    def step(carry, y_t):
        x_prev, y_prev = carry
        x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer={**E})
        numpyro.sample("y", dist.Normal(locs[x] + phi * y_prev, 1.0), obs=y_t[0])
        return (x, y_t[0]), None

    scan(step, (0, 0.0), y)


def reversed_with_latent(y):
    """A reversed scan, a dict of inputs, and a continuous per-step latent that the guide
    samples (substituted into the body step by step)."""
    init, trans, locs = _params()
    x0 = numpyro.sample("x0", dist.Categorical(init), infer={**E})

    def step(x_prev, inputs):
        x = numpyro.sample("x", dist.Categorical(trans[x_prev]), infer={**E})
        u = numpyro.sample("u", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(locs[x] + u, 0.5), obs=inputs["y"] * inputs["w"])
        return x, None

    scan(step, x0, {"y": y[:, 0], "w": 1.0 + 0.1 * y[:, 1]}, reverse=True)


def two_steps(y):
    """One step after NumPyro's unrolled first step: nothing to parallelize."""
    homogeneous(y[:2])


CASES = {
    "homogeneous": (homogeneous, "parallel"),
    "counter_and_mask": (counter_and_mask, "parallel, carry scanned"),
    "second_order": (second_order, "parallel"),
    "data_in_carry": (data_in_carry, "parallel, carry scanned"),
    "reversed_with_latent": (reversed_with_latent, "parallel"),
    "two_steps": (two_steps, "sequential: fewer than 2 steps"),
}
SLOW_CASES = {"second_order", "data_in_carry"}  # (the fast suite's time budget)


def _guide_and_params(model):
    if model is not reversed_with_latent:
        return (lambda *a: None), {}
    guide = AutoDelta(handlers.block(model, hide=["x0", "x", "_PREV_x"]))
    return guide, {"u_auto_loc": 0.3 * jnp.cos(jnp.arange(T * 1.0))}


def _loss_and_grad(model, guide, params):
    loss = ppl.objectives.elbo()
    with handlers.seed(rng_seed=0):
        model_params = handlers.trace(model).get_trace(Y)
    params = {
        **{k: s["value"] for k, s in model_params.items() if s["type"] == "param"},
        **params,
    }
    return jax.jit(
        jax.value_and_grad(lambda p: loss.loss(jax.random.PRNGKey(0), p, model, guide, Y))
    )(params)


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES]
)
def test_parallel_scan_is_numpyros_scan(case):
    model, expected = CASES[case]
    with enable_x64():
        guide, params = _guide_and_params(model)
        with recorded_decisions() as decisions:
            value, grads = _loss_and_grad(model, guide, params)
        with sequential_scans(), recorded_decisions() as none:
            value_seq, grads_seq = _loss_and_grad(model, guide, params)
    assert decisions and all(d.startswith(expected) for d in decisions), decisions
    assert not none
    assert np.isfinite(value)
    np.testing.assert_allclose(value, value_seq, rtol=1e-12)
    for k in grads_seq:
        np.testing.assert_allclose(grads[k], grads_seq[k], rtol=1e-10, atol=1e-12, err_msg=k)
