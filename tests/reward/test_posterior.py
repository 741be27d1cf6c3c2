"""ppl.reward.posterior: an ordinary NumPyro model with the reference's signature."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.util import log_density

import ppl
from tests.reward.finite import (
    BETA,
    P_REF,
    PROMPTS,
    TARGET,
    B,
    R,
    V,
    exact_posterior,
    reference,
    reward,
)


def test_log_density_is_reference_plus_tempered_reward():
    y = jnp.array([4, 1])
    lp, tr = log_density(TARGET, (PROMPTS,), {}, {"y": y})
    expected = np.log(P_REF[[0, 1], [4, 1]]).sum() + R[[0, 1], [4, 1]].sum() / BETA
    np.testing.assert_allclose(lp, expected, rtol=1e-6)
    np.testing.assert_allclose(tr["reward"]["value"], R[[0, 1], [4, 1]], rtol=1e-6)


@pytest.mark.parametrize("likelihood", ["exp", "bradley_terry", "plackett_luce", "sigmoid"])
def test_exact_posterior_by_enumeration(likelihood):
    model = ppl.reward.posterior(
        reference, reward, beta=BETA, likelihood=likelihood, response_ndim=0
    )
    candidates = {"y": jnp.broadcast_to(jnp.arange(V)[:, None], (V, B))}
    log_post = ppl.reward.exact_posterior(model, candidates, PROMPTS)  # (V, B)
    kind = "sigmoid" if likelihood == "sigmoid" else "exp"
    np.testing.assert_allclose(np.exp(log_post).T, exact_posterior(kind), rtol=1e-5)


def test_likelihood_forms():
    r = jnp.array([-1.0, 0.0, 2.0])
    exp = ppl.reward.log_likelihood(r, 0.5, "exp")
    np.testing.assert_allclose(exp, r / 0.5)
    for name in ("bradley_terry", "plackett_luce"):
        np.testing.assert_allclose(ppl.reward.log_likelihood(r, 0.5, name), exp)
    np.testing.assert_allclose(
        ppl.reward.log_likelihood(r, 0.5, "sigmoid"), jax.nn.log_sigmoid(r / 0.5), rtol=1e-6
    )
    np.testing.assert_allclose(
        ppl.reward.log_likelihood(r, 2.0, lambda z: -(z**2)), -((r / 2) ** 2)
    )


def test_bad_settings():
    with pytest.raises(ValueError, match="unknown likelihood 'logistic'"):
        ppl.reward.posterior(reference, reward, likelihood="logistic")
    for beta in (0.0, -1.0):
        with pytest.raises(ValueError, match="beta must be > 0"):
            ppl.reward.posterior(reference, reward, beta=beta)
    with pytest.raises(ValueError, match="response_ndim must be an int >= 0"):
        ppl.reward.posterior(reference, reward, response_ndim=-1)


def test_reward_of_wrong_shape_names_the_expected_shape():
    model = ppl.reward.posterior(reference, lambda y, p: jnp.zeros((B, 3)), response_ndim=0)
    with pytest.raises(ValueError, match=r"reward returned shape \(2, 3\), expected \(2,\)"):
        numpyro.handlers.seed(model, 0)(PROMPTS)
    # a sequence response (2 prompts x 4 tokens): one reward per prompt
    seq = lambda p: numpyro.sample("y", dist.Categorical(logits=jnp.zeros((2, 4, 3))).to_event(1))
    model = ppl.reward.posterior(seq, lambda y, p: jnp.sum(y, axis=None))
    with pytest.raises(ValueError, match=r"shape \(\), expected \(2,\).*shape \(2, 4\)"):
        numpyro.handlers.seed(model, 0)(PROMPTS)


def test_nan_rewards():
    bad = lambda y, p: jnp.where(y == 0, jnp.nan, 1.0)
    model = ppl.reward.posterior(lambda p: jnp.array([0, 2]), bad, response_ndim=0)
    with pytest.raises(
        ValueError, match=r"reward is NaN for 1 of 2 responses \(first at index \(0,\)\)"
    ):
        model(PROMPTS)
    # traced (inside jit): located by ppl.check_finite
    model = ppl.reward.posterior(reference, bad, response_ndim=0)
    loss = ppl.objectives.brain(4)

    def run(logits):
        return loss.loss(jax.random.PRNGKey(0), {"logits": logits}, model, _guide, PROMPTS)

    with pytest.raises(ppl.NonFiniteError, match="reward is NaN"):
        ppl.check_finite(run)(jnp.zeros((B, V)))


def _guide(prompts):
    logits = numpyro.param("logits", jnp.zeros((B, V)))
    with numpyro.plate("prompts", prompts.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits))


def test_reference_must_return_the_response():
    model = ppl.reward.posterior(lambda p: None, reward)
    with pytest.raises(ValueError, match="returned None"):
        model(PROMPTS)
