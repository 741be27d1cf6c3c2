"""Amortized forward KL: exact value at init, learning on the inverse-gamma task, resume."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from models import dt_tasks as T
from ppl import CheckpointError
from ppl.dt import GMM, DistributionTransformer, amortized_forward_kl, dt_optimizer, train


def gmm_prior_simulator():
    m = numpyro.sample("m", dist.Normal(0.0, 2.0))
    theta = numpyro.sample("theta", dist.Normal(m, 1.0))
    with numpyro.plate("obs", 5):
        numpyro.sample("x", dist.Normal(theta, 0.5))


def _gmm_prior(v):
    return GMM(jnp.zeros(1), v["m"][None, None], jnp.ones((1, 1, 1)))


def _gmm_prior2(v):
    means = jnp.stack([v["m"] - 1.0, v["m"] + 1.0])[:, None]
    return GMM(jnp.log(jnp.array([0.5, 0.5])), means, jnp.ones((2, 1, 1)))


def test_value_at_init_is_the_weighted_prior_log_density():
    net = DistributionTransformer(
        1, 1, 1, key=jax.random.key(0), d_model=8, num_layers=1, num_heads=2
    )
    obj = amortized_forward_kl(
        gmm_prior_simulator,
        latent="theta",
        data="x",
        prior=_gmm_prior,
        num_problems=16,
        sequential=0.5,
    )
    key = jax.random.key(1)

    @eqx.filter_jit
    def run(net):
        sims = obj.simulate(key)
        return sims, obj.terms(net, sims), obj.value(net, key)

    sims, terms, value = run(net)
    assert set(terms) == {"posterior", "consistency", "sequential"}  # no encoder: no prior term
    expected = dist.Normal(sims["m"], 1.0).log_prob(sims["theta"])
    np.testing.assert_allclose(terms["posterior"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms["consistency"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(terms["sequential"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, 2.5 * expected.mean(), rtol=1e-5)


def _tiny(k=2, seed=0):
    return T.make_network(k, jax.random.key(seed), d_model=16, num_layers=1)


@pytest.mark.slow
def test_training_reduces_kl_on_the_inverse_gamma_task():
    problems = T.simulate_problems(jax.random.key(99), "narrow", 200)
    net = _tiny()
    kl0 = float(T.dt_kl(net, problems).mean())
    res = train(
        net,
        T.objective("narrow", num_problems=32),
        jax.random.key(5),
        300,
        every=300,
        learning_rate=3e-3,
    )
    kl1 = float(T.dt_kl(res.net, problems).mean())
    assert kl0 > 0.4 > kl1 and kl1 < kl0 / 2, (kl0, kl1)


def _small(d_model=8):
    return DistributionTransformer(
        1, 1, 2, key=jax.random.key(0), d_model=d_model, num_layers=1, num_heads=2
    )


@pytest.mark.slow  # (fast suite budget)
def test_resume_is_bit_identical(tmp_path):
    obj = amortized_forward_kl(
        gmm_prior_simulator, latent="theta", data="x", prior=_gmm_prior2, num_problems=8
    )
    opt = dt_optimizer(8, 1e-2)
    full = train(_small(), obj, jax.random.key(3), 8, optimizer=opt, every=4)
    assert not np.array_equal(full.losses[:4], full.losses[4:])
    ckpt = tmp_path / "dt.ckpt"
    train(_small(), obj, jax.random.key(3), 4, optimizer=opt, every=4, checkpoint=ckpt)
    # a fresh process would build the same skeleton; the key argument is superseded by the file
    resumed = train(_small(), obj, jax.random.key(123), 8, optimizer=opt, every=4, checkpoint=ckpt)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    a, b = eqx.filter(full.net, eqx.is_array), eqx.filter(resumed.net, eqx.is_array)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(jax.random.key_data(full.key), jax.random.key_data(resumed.key))
    with pytest.raises(CheckpointError):
        train(
            _small(d_model=12), obj, jax.random.key(3), 8, optimizer=opt, every=4, checkpoint=ckpt
        )


def test_bad_arguments_are_named():
    net = _tiny()
    obj = amortized_forward_kl(
        T.inverse_gamma_simulator, latent="sigma2", data="x", prior=T.prior_params
    )
    with pytest.raises(ValueError, match="no sample site 'sigma2'.*'var'"):
        obj.value(net, jax.random.key(0))
    with pytest.raises(ValueError, match="num_problems"):
        amortized_forward_kl(
            T.inverse_gamma_simulator, latent="var", data="x", prior="a", num_problems=0
        )
    with pytest.raises(ValueError, match="num_steps"):
        train(net, obj, jax.random.key(0), -1)
    with pytest.raises(ValueError, match="every"):
        train(net, obj, jax.random.key(0), 5, every=0)
