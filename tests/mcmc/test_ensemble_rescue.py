"""The warm-up rescue of lost chains (ppl/mcmc/ensemble_rescue.py): the rule flags a planted
lost chain and leaves healthy ensembles alone; ChEES's warm-up and vectorized NUTS chains
move a lost chain to a healthy chain's state during warm-up only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl import mcmc
from ppl.mcmc.base import GradState
from ppl.mcmc.chees import chees_warmup
from ppl.mcmc.ensemble_rescue import lost_chains, rescue_vectorized, restart_from_healthy


@pytest.mark.parametrize("num_chains", [4, 64])
@pytest.mark.parametrize("num_dim", [1, 10, 1000])
def test_healthy_ensembles_are_left_alone(num_chains, num_dim):
    """Log densities of a d-dim Gaussian's draws (−χ²_d/2): no chain flagged in 2000
    ensembles (the threshold is beyond the gap's 1e-9 quantile)."""
    rng = np.random.default_rng(num_dim)
    lp = -rng.chisquare(num_dim, (2000, num_chains)) / 2 + 7.0
    flags = jax.vmap(lambda x: lost_chains(x, num_dim))(jnp.asarray(lp))
    assert not np.any(flags)


def test_planted_lost_chains_are_flagged():
    rng = np.random.default_rng(0)
    lp = jnp.asarray(-rng.chisquare(4, 64) / 2)
    lost = lost_chains(lp.at[3].set(-1e4).at[5].set(jnp.nan).at[9].set(-jnp.inf), 4)
    assert set(np.flatnonzero(lost)) == {3, 5, 9}
    # NUTS on arma11, 4 chains at t = 49: two lost, the worst at -8e62 (-3e38 in float32)
    arma = jnp.array([-2.03e36, 64.8, 66.5, -3e38])
    assert list(lost_chains(arma, 4)) == [False, False, False, True]
    # two chains: the median is their mean, no outlier
    assert not np.any(lost_chains(jnp.array([0.0, -1e30]), 4))


def test_restart_from_healthy():
    x = {"a": jnp.arange(6.0), "b": jnp.arange(12.0).reshape(6, 2)}
    restart = jnp.array([True, False, False, True, False, False])
    y = restart_from_healthy(jax.random.key(0), x, restart)
    a = np.asarray(y["a"])
    np.testing.assert_array_equal(a[~restart], np.asarray(x["a"])[~restart])
    assert set(a[restart].astype(int)) <= {1, 2, 4, 5}
    np.testing.assert_array_equal(np.asarray(y["b"])[:, 0], 2 * a)  # whole states move
    same = restart_from_healthy(jax.random.key(0), x, jnp.ones(6, bool))  # no donor
    np.testing.assert_array_equal(same["a"], x["a"])


def _gauss(x):
    return -0.5 * jnp.sum(x**2)


@pytest.mark.slow
def test_chees_warmup_rescues_a_moving_lost_chain():
    """ChEES's warm-up ``rescue`` at t = 449 (second half: the stuck-chain rule is off), on
    an ensemble where chain 0 moves (idle 0) but sits at log density −5e5: it takes a
    healthy chain's position; a healthy ensemble, or a step not due, is left alone."""
    x = jax.random.normal(jax.random.key(0), (16, 3))
    w = chees_warmup(_gauss, 500)
    healthy = jax.vmap(lambda p: GradState(p, _gauss(p), -p))(x)
    adapt = w.start(0.1, healthy)
    lost = jax.vmap(lambda p: GradState(p, _gauss(p), -p))(x.at[0].set(1e3))
    moved, _ = w.rescue(jax.random.key(1), 449, lost, adapt)
    assert np.any(np.all(np.asarray(moved.position[0]) == np.asarray(x[1:]), axis=1))
    np.testing.assert_array_equal(moved.position[1:], x[1:])
    same, _ = w.rescue(jax.random.key(1), 449, healthy, adapt)
    np.testing.assert_array_equal(same.position, x)
    not_due, _ = w.rescue(jax.random.key(1), 448, lost, adapt)
    np.testing.assert_array_equal(not_due.position, lost.position)


@pytest.mark.slow
def test_rescue_vectorized_warmup_only():
    """``rescue_vectorized`` on vectorized NUTS states: at a due warm-up iteration the lost
    chain takes a healthy chain's whole state (position, log density, adaptation) but keeps
    its key; after warm-up (or between due iterations) nothing moves."""
    kernel = mcmc.NUTS(potential_fn=lambda x: -_gauss(x))
    x0 = jax.random.normal(jax.random.key(0), (4, 3)).at[0].set(1e3)
    state = kernel.init(jax.random.split(jax.random.key(1), 4), 100, init_params=x0)
    moved = rescue_vectorized(state, jnp.int32(49), 100)
    pos = np.asarray(moved.inner.position)
    donor = [i for i in (1, 2, 3) if np.array_equal(pos[0], np.asarray(x0[i]))]
    assert len(donor) == 1
    d = donor[0]
    assert float(moved.adapt.step_size[0]) == float(state.adapt.step_size[d])
    assert float(moved.inner.logdensity[0]) == float(state.inner.logdensity[d])
    np.testing.assert_array_equal(
        jax.random.key_data(moved.rng_key), jax.random.key_data(state.rng_key)
    )
    for t in (48, 149):  # not due; after warm-up
        same = rescue_vectorized(state, jnp.int32(t), 100)
        np.testing.assert_array_equal(same.inner.position, x0)
