"""f-DPG (Go et al. 2023): any f-divergence D_f(π_θ ‖ p(y | x, G=1)) with self-normalized
importance weights and a self-normalized baseline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ..core.arguments import count
from ..infer.svi import Objective
from ..reward.estimators import F_DIVERGENCES, f_coefficients, f_value, normalized_log_weights
from ..reward.proposals import draw, report_metrics


def fdiv(f: str = "forward_kl", num_samples: int = 8, proposal="reference", alpha: float = 0.5):
    """Minimize D_f(π_θ ‖ p) = E_p[f(π_θ / p)] towards the reward posterior p (f-DPG).

    ``f``: ``"forward_kl"`` (KL(p ‖ π), f = −log t: BRAIn's gradient), ``"reverse_kl"``
    (KL(π ‖ p), f = t log t), ``"js"`` (Jensen–Shannon), ``"tv"`` (total variation) or
    ``"alpha"`` (f = (t^α − α t − (1 − α)) / (α(α − 1)), ``alpha`` ∉ {0, 1}). With
    y_1..n ~ q', α̂ and β̂ the self-normalized target and policy weights and ρ_i = β̂_i/α̂_i:
    value −Σ_i α̂_i f(ρ_i) (summed over prompts), gradient −Σ_i c_i ∇log π_θ(y_i) with
    c_i = β̂_i (f'(ρ_i) − Σ_j β̂_j f'(ρ_j)): E_π[f'(π/p) ∇log π] = ∇D_f with
    self-normalized weights and baseline; consistent as n grows. ``proposal`` as in
    :func:`brain`.

    Example::

        svi = SVI(target, policy, optax.adam(1e-3), loss=ppl.objectives.fdiv("js", 8))
    """
    if f not in F_DIVERGENCES:
        raise ValueError(f"fdiv: unknown f {f!r}; choose one of {F_DIVERGENCES}")
    if f == "alpha" and alpha in (0, 1):
        raise ValueError("fdiv: alpha must not be 0 or 1 (the limits are the two KLs)")
    num_samples = count(num_samples, "num_samples", "fdiv")

    def program(model, guide, *args, **kwargs):
        d = draw(model, guide, proposal, num_samples, args, kwargs)
        log_alpha = normalized_log_weights(d.scores.log_target, d.log_proposal)
        log_beta = jax.nn.log_softmax(d.log_policy - d.log_proposal, axis=0)
        divergence = f_value(f, log_alpha, lax.stop_gradient(log_beta), alpha)
        coef = f_coefficients(f, log_alpha, log_beta, alpha)
        surrogate = -jnp.sum(coef * d.log_policy, axis=0)
        report_metrics(model, d, divergence)
        return jnp.sum(-divergence + surrogate - lax.stop_gradient(surrogate))

    extra = f", alpha={alpha}" if f == "alpha" else ""
    return Objective(
        program, name=f"fdiv(f={f!r}{extra}, num_samples={num_samples}, proposal={proposal!r})"
    )
