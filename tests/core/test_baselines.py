"""REINFORCE baselines: user values (fixed or learned) keep the gradient unbiased and a
learned one converges to the expected cost, lowering variance."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI

import ppl
from models.coin import DATA, model
from ppl.validate import check_unbiased, estimator_stats

KEY = jax.random.PRNGKey(0)
L1, L0 = 0.8**3 * 0.2 * 0.5, 0.2**3 * 0.8 * 0.5  # p(x, z=1), p(x, z=0)


def guide(data):
    p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
    b = numpyro.param("b", 0.0)
    numpyro.sample("z", dist.Bernoulli(p), infer={"grad": ppl.reinforce(baseline=b, learn=True)})


def exact_elbo(p):
    return p * (jnp.log(L1) - jnp.log(p)) + (1 - p) * (jnp.log(L0) - jnp.log(1 - p))


def grad_p(b, rao_blackwellize=True):
    loss = ppl.objectives.elbo(rao_blackwellize=rao_blackwellize)
    params = lambda p: {"p": p, "b": jnp.asarray(b)}  # noqa: E731
    return lambda k: jax.grad(lambda p: -loss.loss(k, params(p), model, guide, DATA))(0.7)


BASELINES = jnp.array([-10.0, -2.9, 0.0, 5.0])


@pytest.mark.parametrize("rao_blackwellize", [True, False])
def test_any_baseline_value_is_unbiased(rao_blackwellize):
    """Coordinate i: the gradient with baseline ``BASELINES[i]`` (the values are vmapped,
    not closed over: one compiled program for all of them)."""

    def estimator(k):
        return jax.vmap(lambda b: grad_p(b, rao_blackwellize)(k))(BASELINES)

    exact = jnp.broadcast_to(jax.grad(exact_elbo)(0.7), BASELINES.shape)
    check_unbiased(estimator, exact, KEY, 3000)


def test_learned_baseline_converges_and_lowers_variance():
    svi = SVI(model, guide, optax.adam(3e-2), loss=ppl.objectives.elbo())
    result = svi.run(KEY, 1500, DATA, progress_bar=False)
    log_px = jnp.log(L1 + L0)
    # at the optimum q = posterior and the cost log p(x,z) - log q(z) is log p(x) for all z
    assert abs(float(result.params["p"]) - L1 / (L1 + L0)) < 0.01
    assert abs(float(result.params["b"]) - float(log_px)) < 0.1
    baselines = jnp.stack([jnp.asarray(0.0), result.params["b"]])  # plain, learned
    _, _, s = estimator_stats(lambda k: jax.vmap(lambda b: grad_p(b)(k))(baselines), KEY, 3000)
    plain, learned = s[:, 0], s[:, 1]
    assert plain.var() / learned.var() > 5  # measured ~14


def test_learned_baseline_value_is_unchanged():
    params = {"p": jnp.array(0.7), "b": jnp.array(1.5)}
    with_b = ppl.objectives.elbo().loss(KEY, params, model, guide, DATA)

    def guide_plain(data):
        p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
        numpyro.sample("z", dist.Bernoulli(p))

    assert jnp.allclose(with_b, ppl.objectives.elbo().loss(KEY, params, model, guide_plain, DATA))


def test_learn_needs_a_value():
    with pytest.raises(ValueError, match="learn=True\\) needs a baseline value"):
        ppl.reinforce(baseline="loo", learn=True)
