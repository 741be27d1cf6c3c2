"""Autoregressive sequence policies: the scan program, the one-site distribution and
teacher forcing agree; sampling follows the teacher-forced distribution."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpyro.handlers import seed, trace
from numpyro.infer import SVI

import ppl
from ppl.reward.model import program_log_prob

VOCAB, LENGTH = 3, 3


@functools.cache
def policy_net():
    """The policy network, built on first use (not by every pytest worker at collection)."""
    return ppl.reward.TinyTransformer(VOCAB, max_len=8, key=jax.random.PRNGKey(0))


PROMPTS = jnp.array([[0, 1], [2, 2]])


def test_scan_program_distribution_and_teacher_forcing_agree():
    ys = jnp.array([[0, 2, 1], [1, 1, 0]])
    one_site = ppl.reward.sequence_policy(policy_net(), LENGTH, param=None)
    scanned = ppl.reward.sequence_policy(policy_net(), LENGTH, param=None, per_position=True)
    tf, a, b = jax.jit(
        lambda ys: (
            ppl.reward.teacher_forced_log_prob(policy_net(), PROMPTS, ys),
            program_log_prob(one_site, {"y": ys}, (2,), PROMPTS),
            program_log_prob(scanned, {"y": ys.T}, (2,), PROMPTS),
        )
    )(ys)
    np.testing.assert_allclose(a, tf, rtol=1e-5)
    np.testing.assert_allclose(b, tf, rtol=1e-5)
    tr = trace(seed(scanned, 0)).get_trace(PROMPTS)
    assert tr["y"]["value"].shape == (LENGTH, 2)  # one Categorical per position (scan)


@pytest.mark.slow
def test_sampling_matches_teacher_forced_probabilities():
    """Frequencies of the 27 responses over 6000 draws of the scan program vs exp(log π),
    within 4.5 binomial standard errors (Bonferroni-ish for 54 cells)."""
    policy = ppl.reward.sequence_policy(policy_net(), LENGTH, param=None, per_position=True)
    draws = jax.jit(jax.vmap(lambda k: seed(policy, k)(PROMPTS)))(
        jax.random.split(jax.random.PRNGKey(1), 6000)
    )  # (6000, 2, L)
    seqs = jnp.asarray(ppl.reward.all_sequences(VOCAB, LENGTH))
    for b in range(2):
        prob = jnp.exp(
            ppl.reward.teacher_forced_log_prob(
                policy_net(), jnp.broadcast_to(PROMPTS[b], (seqs.shape[0], 2)), seqs
            )
        )
        np.testing.assert_allclose(prob.sum(), 1.0, rtol=1e-5)
        idx = (draws[:, b] * jnp.array([9, 3, 1])).sum(-1)
        freq = np.bincount(np.asarray(idx), minlength=27) / draws.shape[0]
        se = np.sqrt(prob * (1 - prob) / draws.shape[0])
        assert np.all(np.abs(freq - prob) < 4.5 * se + 1e-4)


@pytest.mark.slow
def test_brain_trains_a_transformer_policy_towards_the_posterior():
    """A sequence reward posterior over 27 responses: 100 BRAIn steps cut the exact
    KL(posterior || policy) by more than half."""
    reference = ppl.reward.sequence_policy(policy_net(), LENGTH, param=None)
    reward = lambda y, prompts: 1.5 * jnp.sum(y == prompts[:, :1], axis=-1).astype(float)
    target = ppl.reward.posterior(reference, reward, beta=1.0)
    policy = ppl.reward.sequence_policy(policy_net(), LENGTH, param="policy")
    seqs = jnp.asarray(ppl.reward.all_sequences(VOCAB, LENGTH))
    candidates = {"y": jnp.broadcast_to(seqs[:, None], (seqs.shape[0], 2, LENGTH))}
    log_post = ppl.reward.exact_posterior(target, candidates, PROMPTS)  # (27, 2)

    def kl(params):
        net = eqx.combine(
            params["policy$params"], eqx.partition(policy_net(), eqx.is_inexact_array)[1]
        )
        lq = jax.vmap(lambda y: ppl.reward.teacher_forced_log_prob(net, PROMPTS, y))(
            candidates["y"]
        )
        return float(jnp.sum(jnp.exp(log_post) * (log_post - lq)) / 2)

    svi = SVI(target, policy, optax.adam(3e-3), loss=ppl.objectives.brain(8))
    result = svi.run(jax.random.PRNGKey(0), 100, PROMPTS, progress_bar=False)
    init = svi.get_params(svi.init(jax.random.PRNGKey(0), PROMPTS))
    assert kl(result.params) < 0.5 * kl(init), (kl(init), kl(result.params))


@pytest.mark.slow
def test_objectives_accept_the_scan_program():
    """Reference and policy as per-position scan programs (site values (L, B)): the BRAIn
    loss is D_SN summed over prompts, and the metrics are filled in."""
    reference = ppl.reward.sequence_policy(policy_net(), LENGTH, param=None, per_position=True)
    policy = ppl.reward.sequence_policy(policy_net(), LENGTH, param="policy", per_position=True)
    reward = lambda y, prompts: jnp.sum(y == 2, axis=-1).astype(float)
    target = ppl.reward.posterior(reference, reward)
    svi = SVI(target, policy, optax.adam(1e-3), loss=ppl.objectives.brain(4))
    state = svi.init(jax.random.PRNGKey(0), PROMPTS)
    state, loss = svi.update(state, PROMPTS)
    metrics = state.mutable_state["reward_metrics"]
    np.testing.assert_allclose(loss, 2 * metrics["d_sn"], rtol=1e-5)
    assert 1.0 <= float(metrics["ess"]) <= 4.0
