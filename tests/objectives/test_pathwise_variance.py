"""Sticking the landing (ELBO) and doubly-reparameterized gradients (IWAE).

Conjugate model z ~ N(m0, 1), x | z ~ N(z, 1) with a Normal guide: the ELBO and its
gradient are closed form; the posterior is N((x + m0) / 2, 1/2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl
from ppl.validate import check_unbiased, estimator_stats

KEY = jax.random.PRNGKey(0)
X = 1.3
PARAMS = {"m": jnp.array(0.2), "s": jnp.array(0.9), "m0": jnp.array(0.1)}
OPTIMUM = {"m": jnp.array(X / 2), "s": jnp.sqrt(jnp.array(0.5)), "m0": jnp.array(0.0)}


def model(x):
    z = numpyro.sample("z", dist.Normal(numpyro.param("m0", 0.0), 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), numpyro.param("s", 1.0)))


def exact_elbo(p):
    m, s, m0 = p["m"], p["s"], p["m0"]
    return (
        -jnp.log(2 * jnp.pi)
        - 0.5 * ((m - m0) ** 2 + s**2)
        - 0.5 * ((X - m) ** 2 + s**2)
        + 0.5 * jnp.log(2 * jnp.pi * s**2)
        + 0.5
    )


def value_and_grad(loss, params):
    return lambda k: jax.value_and_grad(lambda p: -loss.loss(k, p, model, guide, X))(params)


@pytest.mark.parametrize("stl", [False, True])
def test_elbo_unbiased(stl):
    loss = ppl.objectives.elbo(stick_the_landing=stl)
    check_unbiased(value_and_grad(loss, PARAMS), jax.value_and_grad(exact_elbo)(PARAMS), KEY, 4000)


def test_stl_zero_variance_at_optimum():
    grads = {}
    for stl in (False, True):
        loss = ppl.objectives.elbo(stick_the_landing=stl)
        _, _, samples = estimator_stats(
            lambda k, loss=loss: value_and_grad(loss, OPTIMUM)(k)[1], KEY, 300
        )
        grads[stl] = samples.var(0)  # order: m, m0, s
    assert grads[False][0] > 1.0 and grads[False][2] > 1.0  # measured 2.0 and 3.8
    assert grads[True][0] < 1e-8 and grads[True][2] < 1e-8


def test_dreg_matches_iwae_gradient_with_lower_variance():
    """Reference: the plain IWAE estimator with many samples (its own SE accounted for)."""
    _, _, ref = estimator_stats(value_and_grad(ppl.objectives.iwae(4), PARAMS), KEY, 60000)
    _, _, dreg = estimator_stats(
        value_and_grad(ppl.objectives.iwae(4, dreg=True), PARAMS), jax.random.PRNGKey(1), 6000
    )
    se = np.hypot(ref.std(0) / np.sqrt(len(ref)), dreg.std(0) / np.sqrt(len(dreg)))
    assert np.all(np.abs(ref.mean(0) - dreg.mean(0)) < 4 * se + 1e-6)
    # guide parameters m (index 1) and s (index 3): measured variance ratio ~50-80
    ratio = ref.var(0) / dreg.var(0)
    assert ratio[1] > 10 and ratio[3] > 10, ratio
    # model param m0 (index 2): DReG keeps IWAE's estimator there, so equal variances within
    # 4 SE of the difference (SE of a sample variance: sqrt((m4 - s^4) / n); independent keys)
    d_ref, d_dreg = ref[:, 2] - ref[:, 2].mean(), dreg[:, 2] - dreg[:, 2].mean()
    v_ref, v_dreg = np.mean(d_ref**2), np.mean(d_dreg**2)
    se = np.hypot(
        np.sqrt((np.mean(d_ref**4) - v_ref**2) / len(ref)),
        np.sqrt((np.mean(d_dreg**4) - v_dreg**2) / len(dreg)),
    )
    assert abs(v_ref - v_dreg) < 4 * se, (v_ref, v_dreg, se)


def test_dreg_needs_reparameterized_guide():
    def discrete_guide(x):
        numpyro.sample("z", dist.Bernoulli(0.5))

    with pytest.raises(ppl.StrategyError, match="site 'z': iwae\\(dreg=True\\) needs"):
        ppl.objectives.iwae(2, dreg=True).loss(KEY, {}, model, discrete_guide, X)


def test_stl_needs_additive_program():
    with pytest.raises(ValueError, match="stick_the_landing needs an additive program"):
        ppl.expectation(lambda: 0.0, stick_the_landing=True)
    with pytest.raises(ValueError, match="stick_the_landing is not supported with loo=True"):
        ppl.objectives.elbo(2, stick_the_landing=True, loo=True)
