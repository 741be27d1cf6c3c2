"""Markovian score climbing: the chain state travels through SVI's mutable state and the
guide converges to the inclusive-KL optimum (here the exact posterior)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import ppl

KEY = jax.random.PRNGKey(0)
X = 1.3


def model(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    ppl.objectives.msc_chain(z=0.0)
    loc = numpyro.param("m", -1.0)
    scale = numpyro.param("s", 2.0, constraint=dist.constraints.positive)
    numpyro.sample("z", dist.Normal(loc, scale))


def test_chain_state_moves_and_is_carried():
    loss = ppl.objectives.msc(4)
    params = {"m": jnp.asarray(0.0), "s": jnp.asarray(1.0)}
    state = {"values": {"z": jnp.asarray(0.3)}, "initialized": jnp.asarray(1.0)}
    out = loss.loss_with_mutable_state(KEY, {**params, "msc_chain": state}, model, guide, X)
    new = out["mutable_state"]["msc_chain"]
    assert float(new["initialized"]) == 1.0 and np.isfinite(out["loss"])
    # over many keys the kernel sometimes keeps the state, sometimes moves
    keys = jax.random.split(KEY, 200)
    step = jax.jit(
        jax.vmap(
            lambda k: loss.loss_with_mutable_state(
                k, {**params, "msc_chain": state}, model, guide, X
            )["mutable_state"]["msc_chain"]["values"]["z"]
        )
    )
    z = np.asarray(step(keys))
    kept = np.mean(z == 0.3)
    assert 0.05 < kept < 0.95, kept


def test_msc_kernel_leaves_the_posterior_invariant():
    """Start the chain at exact posterior draws; one CIS step keeps mean x/2, var 1/2."""
    loss = ppl.objectives.msc(3)
    params = {"m": jnp.asarray(-0.5), "s": jnp.asarray(1.5)}  # a poor proposal on purpose
    n = 20000
    keys = jax.random.split(KEY, n)
    z0 = X / 2 + jnp.sqrt(0.5) * jax.random.normal(jax.random.PRNGKey(9), (n,))

    def step(k, z):
        state = {"values": {"z": z}, "initialized": jnp.asarray(1.0)}
        out = loss.loss_with_mutable_state(k, {**params, "msc_chain": state}, model, guide, X)
        return out["mutable_state"]["msc_chain"]["values"]["z"]

    z1 = np.asarray(jax.jit(jax.vmap(step))(keys, z0))
    se_mean, se_var = np.sqrt(0.5 / n), 0.5 * np.sqrt(2 / n)
    assert abs(z1.mean() - X / 2) < 4 * se_mean * 1.5  # 1.5: z1 is correlated with z0
    assert abs(z1.var() - 0.5) < 4 * se_var * 1.5


def test_training_reaches_the_posterior():
    schedule = optax.exponential_decay(3e-2, 3000, 0.1)
    svi = SVI(model, guide, optax.adam(schedule), loss=ppl.objectives.msc(8))
    result = svi.run(KEY, 3000, X, progress_bar=False)
    assert abs(float(result.params["m"]) - X / 2) < 0.1
    assert abs(float(result.params["s"]) - np.sqrt(0.5)) < 0.1
    assert float(result.state.mutable_state["msc_chain"]["initialized"]) == 1.0


def test_msc_needs_a_declared_chain():
    def plain_guide(x):
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="msc: no chain state 'msc_chain'"):
        ppl.objectives.msc(3).loss(KEY, {}, model, plain_guide, X)
    with pytest.raises(ValueError, match="num_particles must be an int >= 2"):
        ppl.objectives.msc(1)
