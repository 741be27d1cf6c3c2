"""Importance-weighted objectives: unbiased value and gradient against exact enumeration.

Model: z ~ Bernoulli(0.5), x_i | z ~ Bernoulli(0.2 + 0.6 z); guide q(z) = Bernoulli(p).
With K particles the exact expectation enumerates all 2^K joint particle values.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl
from models.coin import DATA, model
from ppl.validate import check_unbiased, estimator_stats

KEY = jax.random.PRNGKey(0)
LOG_JOINT = jnp.log(jnp.array([0.2**3 * 0.8 * 0.5, 0.8**3 * 0.2 * 0.5]))  # log p(x, z)
K = 3


def guide(data):
    numpyro.sample("z", dist.Bernoulli(numpyro.param("p", 0.5)))


def exact(p, fn):
    """E over K iid particles z_k ~ q of fn(log w_1..K)."""
    q = jnp.array([1 - p, p])
    total = 0.0
    for zs in itertools.product([0, 1], repeat=K):
        zs = np.array(zs)
        total = total + jnp.prod(q[zs]) * fn(LOG_JOINT[zs] - jnp.log(q[zs]))
    return total


def lme(x):
    return jax.nn.logsumexp(x) - jnp.log(x.shape[0])


CASES = {
    "iwae": (ppl.objectives.iwae(K), lme),
    "renyi": (ppl.objectives.renyi(0.5, K), lambda lw: lme(0.5 * lw) / 0.5),
    "renyi_neg": (ppl.objectives.renyi(-1.0, K), lambda lw: lme(2.0 * lw) / 2.0),
    "vimco": (ppl.objectives.vimco(K), lme),
    "cubo": (ppl.objectives.cubo(2.0, K), lambda lw: -lme(2.0 * lw) / 2.0),
    "cubo_exp": (
        ppl.objectives.cubo(2.0, K, exponentiated=True),
        lambda lw: -jnp.mean(jnp.exp(2.0 * lw)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(
    "strategy",
    [
        "mvd",
        pytest.param("reinforce", marks=pytest.mark.slow),
        pytest.param("enum", marks=pytest.mark.slow),
    ],
)
def test_objective_value_and_gradient_unbiased(name, strategy):
    objective, fn = CASES[name]
    g = (
        guide
        if name == "vimco" and strategy == "reinforce"
        else ppl.strategy(guide, {"z": strategy})
    )

    def estimate(key):
        return jax.value_and_grad(lambda p: -objective.loss(key, {"p": p}, model, g, DATA))(0.7)

    exact_value_and_grad = jax.value_and_grad(lambda p: exact(p, fn))(0.7)
    check_unbiased(estimate, exact_value_and_grad, KEY, num_samples=3000)


def test_vimco_lowers_variance_of_reinforce():
    """VIMCO's leave-one-out baselines vs plain REINFORCE on the IWAE bound."""
    iwae, vimco = ppl.objectives.iwae(K), ppl.objectives.vimco(K)

    def grad(objective):
        return lambda k: jax.grad(lambda p: -objective.loss(k, {"p": p}, model, guide, DATA))(0.7)

    _, _, plain = estimator_stats(grad(iwae), KEY, 3000)
    _, _, loo = estimator_stats(grad(vimco), KEY, 3000)
    ratio = plain.var() / loo.var()
    assert ratio > 20, ratio  # measured ~80 on this model


def test_bad_arguments():
    with pytest.raises(ValueError, match="vimco: num_particles must be an int >= 2"):
        ppl.objectives.vimco(1)
    with pytest.raises(ValueError, match="alpha = 1 is the ELBO"):
        ppl.objectives.renyi(1.0)
    with pytest.raises(ValueError, match="cubo: n must be > 1"):
        ppl.objectives.cubo(0.5)
