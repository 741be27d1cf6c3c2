"""On-policy reverse KL to a reward posterior: the KL-penalized reward by the score function
with leave-one-out baselines (PPO's target reached REINFORCE-style, RLOO)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..core.arguments import count
from ..infer.svi import Objective
from ..reward.proposals import draw, report_metrics


def ppo(num_samples: int = 4):
    """E_π[log p(G=1 | y)] − KL(π_θ ‖ p_ref) = E_π[r] / β − KL for the "exp" likelihood: the
    objective PPO maximizes (up to the factor β), whose optimum is the reward posterior.

    Per prompt: y_1..n ~ π_θ (held fixed), R_i = log p_ref(y_i) + log p(G=1 | y_i) −
    log π_θ(y_i); value mean_i R_i (an ELBO: log Z − KL(π_θ ‖ posterior), summed over
    prompts), gradient (1/n) Σ_i (R_i − mean_{j≠i} R_j) ∇log π_θ(y_i): unbiased for n ≥ 2
    (leave-one-out baselines). No ratio clipping: every step samples the current policy.

    Example::

        svi = SVI(target, policy, optax.adam(1e-3), loss=ppl.objectives.ppo(4))
    """
    num_samples = count(num_samples, "num_samples", "ppo", minimum=2)

    def program(model, guide, *args, **kwargs):
        d = draw(model, guide, "policy", num_samples, args, kwargs)
        reward = d.scores.log_target - lax.stop_gradient(d.log_policy)  # (n, *batch)
        n = num_samples
        loo = (jnp.sum(reward, axis=0, keepdims=True) - reward) / (n - 1)
        value = jnp.mean(reward, axis=0)
        surrogate = jnp.mean(lax.stop_gradient(reward - loo) * d.log_policy, axis=0)
        report_metrics(model, d, -value)
        return jnp.sum(value + surrogate - lax.stop_gradient(surrogate))

    return Objective(program, name=f"ppo(num_samples={num_samples})")
