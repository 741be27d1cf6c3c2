"""DPO (Rafailov et al. 2023) on pairs sampled from a proposal and labelled by the reward
posterior's likelihood: BRAIn's n = 2 relative with a hard or Bradley–Terry choice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
from jax import lax

from ..core.arguments import count
from ..infer.svi import Objective
from ..reward.proposals import draw, report_metrics

_LABELS = ("bradley_terry", "argmax")


def dpo(beta: float = 1.0, num_pairs: int = 1, proposal="reference", labels="bradley_terry"):
    """E log σ(beta [log(π_θ/p_ref)(y_w) − log(π_θ/p_ref)(y_l)]) over labelled pairs.

    Per prompt, 2 ``num_pairs`` responses ~ q' (default the reference) form pairs; the
    winner is drawn with P(y_1 ≻ y_2) = σ(s_1 − s_2), s = log p(G=1 | y) the posterior's
    log-likelihood (``labels="bradley_terry"``, i.e. σ((r_1 − r_2)/β) for rewards of that
    form), or is the higher-s response (``"argmax"``, ties skipped: DPO on reward-ranked
    samples). With Bradley–Terry labels and ``beta=1`` the population optimum is the reward
    posterior p_ref exp(s) / Z (wherever q' has support). Value: the mean log σ(·) per
    prompt, summed over prompts; its gradient is unbiased for the population objective.
    Stored preference pairs: :func:`ppl.reward.dpo_loss`.

    Example::

        svi = SVI(target, policy, optax.adam(1e-3), loss=ppl.objectives.dpo(beta=1.0))
    """
    if not beta > 0:
        raise ValueError(f"dpo: beta must be > 0, got {beta!r}")
    num_pairs = count(num_pairs, "num_pairs", "dpo")
    if labels not in _LABELS:
        raise ValueError(f"dpo: labels must be one of {_LABELS}, got {labels!r}")

    def program(model, guide, *args, **kwargs):
        d = draw(model, guide, proposal, 2 * num_pairs, args, kwargs)
        ratio = d.log_policy - d.scores.log_reference  # log(π / p_ref), (2m, *batch)
        s = d.scores.log_likelihood
        r1, r2 = ratio[0::2], ratio[1::2]
        s1, s2 = s[0::2], s[1::2]
        if labels == "bradley_terry":
            u = jax.random.uniform(numpyro.prng_key(), s1.shape)
            first = u < jax.nn.sigmoid(s1 - s2)
            keep = jnp.ones_like(s1)
        else:
            first = s1 > s2
            keep = (s1 != s2).astype(s1.dtype)
        margin = jnp.where(first, r1 - r2, r2 - r1)
        per_prompt = jnp.mean(keep * jax.nn.log_sigmoid(beta * margin), axis=0)
        report_metrics(model, d, -lax.stop_gradient(per_prompt))
        return jnp.sum(per_prompt)

    return Objective(
        program,
        name=f"dpo(beta={beta}, num_pairs={num_pairs}, proposal={proposal!r}, labels={labels!r})",
    )
