"""BRAIn: alignment as Bayesian inference. Reward posteriors p(y | x, G=1) ∝
p_ref(y | x) p(G=1 | x, y) as NumPyro models, proposals for the reward objectives of
:mod:`ppl.objectives` (``brain``, ``dpg``, ``gdcpp``, ``fdiv``, ``ppo``, ``dpo``), offline
estimators, and autoregressive sequence policies as NumPyro programs."""

from .estimators import (
    brain_loss,
    dpo_loss,
    effective_sample_size,
    f_coefficients,
    f_value,
    normalized_log_weights,
    self_normalized_kl,
)
from .model import (
    RewardPosterior,
    Scores,
    exact_posterior,
    log_likelihood,
    posterior,
    score,
)
from .proposals import (
    Draws,
    Proposal,
    Samples,
    draw,
    keep_snapshot,
    mixture,
    snapshot,
)
from .sequence import (
    Autoregressive,
    TinyTransformer,
    all_sequences,
    sequence_policy,
    teacher_forced_log_prob,
)

__all__ = [
    "posterior",
    "RewardPosterior",
    "log_likelihood",
    "score",
    "Scores",
    "exact_posterior",
    "Proposal",
    "snapshot",
    "keep_snapshot",
    "mixture",
    "Samples",
    "Draws",
    "draw",
    "normalized_log_weights",
    "effective_sample_size",
    "self_normalized_kl",
    "f_value",
    "f_coefficients",
    "brain_loss",
    "dpo_loss",
    "TinyTransformer",
    "Autoregressive",
    "sequence_policy",
    "teacher_forced_log_prob",
    "all_sequences",
]
