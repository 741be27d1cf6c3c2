"""The end-to-end alignment task (models/alignment.py) in its quick mode."""

import jax
import numpy as np
import optax
import pytest
from numpyro.infer import SVI

import ppl
from models import alignment


@pytest.mark.slow
def test_alignment_task_quick():
    task = alignment.build(quick=True)
    np.testing.assert_allclose(np.exp(task.log_posterior).sum(-1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.exp(task.log_reference).sum(-1), 1.0, rtol=1e-4)
    summary = alignment.data_summary(task)
    assert summary["kl_sft_data_to_reference"] < 0.2  # SFT learned the data rule
    assert summary["reward_true_correlation"] > 0.6  # the BT reward model learned the reward
    assert summary["posterior_reward"] > summary["reference_reward"]
    policy = ppl.reward.sequence_policy(task.reference_net, alignment.LENGTH, param="policy")
    svi = SVI(task.target, policy, optax.adam(3e-3), loss=ppl.objectives.brain(8))
    result = svi.run(jax.random.PRNGKey(0), 40, task.prompts, progress_bar=False)
    before = alignment.evaluate(task, task.reference_net)
    after = alignment.evaluate(task, alignment.policy_net(task, result.params))
    assert after["kl_posterior"] < 0.8 * before["kl_posterior"], (before, after)
    assert after["reward"] > before["reward"]
