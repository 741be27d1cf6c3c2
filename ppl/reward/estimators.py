"""Self-normalized importance weights and the per-sample coefficients of the reward
objectives, as pure functions of log densities (axis 0: the n samples of one prompt)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

F_DIVERGENCES = ("forward_kl", "reverse_kl", "js", "tv", "alpha")


def normalized_log_weights(log_target, log_proposal):
    """log α̂ = log softmax_i(log p~(y_i) − log q'(y_i)) over axis 0 (no gradient)."""
    return jax.nn.log_softmax(lax.stop_gradient(log_target - log_proposal), axis=0)


def effective_sample_size(log_alpha):
    """ESS = 1 / Σ_i α̂_i² of normalized log weights (axis 0), between 1 and n."""
    return 1.0 / jnp.sum(jnp.exp(2.0 * log_alpha), axis=0)


def self_normalized_kl(log_alpha, log_beta):
    """D_SN = Σ_i α̂_i log(α̂_i / β̂_i) (axis 0): zero iff the policy matches the target on
    the samples."""
    return jnp.sum(jnp.exp(log_alpha) * (log_alpha - log_beta), axis=0)


def _xlogy_ratio(a, la, lb):
    return jnp.where(a > 0, a * (la - lb), 0.0)


def f_value(f: str, log_alpha, log_beta, alpha: float = 0.5):
    """Self-normalized D_f(π ‖ p) = Σ_i α̂_i f(β̂_i / α̂_i) (axis 0), in closed forms that
    stay finite for tiny weights."""
    a, b = jnp.exp(log_alpha), jnp.exp(log_beta)
    if f == "forward_kl":
        return jnp.sum(_xlogy_ratio(a, log_alpha, log_beta), axis=0)
    if f == "reverse_kl":
        return jnp.sum(_xlogy_ratio(b, log_beta, log_alpha), axis=0)
    if f == "js":
        lm = jnp.logaddexp(log_alpha, log_beta) - jnp.log(2.0)
        return 0.5 * jnp.sum(_xlogy_ratio(a, log_alpha, lm) + _xlogy_ratio(b, log_beta, lm), axis=0)
    if f == "tv":
        return 0.5 * jnp.sum(jnp.abs(b - a), axis=0)
    if f == "alpha":
        mixed = jnp.exp(alpha * log_beta + (1.0 - alpha) * log_alpha)
        return jnp.sum(mixed - alpha * b - (1.0 - alpha) * a, axis=0) / (alpha * (alpha - 1.0))
    raise ValueError(f"unknown f-divergence {f!r}; choose one of {F_DIVERGENCES}")


def f_coefficients(f: str, log_alpha, log_beta, alpha: float = 0.5):
    """c_i with ∇D_f ≈ Σ_i c_i ∇log π(y_i): c_i = g_i − β̂_i Σ_j g_j, g_i = β̂_i f'(β̂_i/α̂_i)
    (f-DPG with the self-normalized baseline Σ_j β̂_j f'(ρ_j)); no gradient."""
    la, lb = lax.stop_gradient(log_alpha), lax.stop_gradient(log_beta)
    a, b = jnp.exp(la), jnp.exp(lb)
    if f == "forward_kl":  # f = -log t
        g = -a
    elif f == "reverse_kl":  # f = t log t
        g = b * (lb - la + 1.0)
    elif f == "js":  # f'(t) = log(2t / (1 + t)) / 2
        g = 0.5 * b * (jnp.log(2.0) - jax.nn.softplus(la - lb))
    elif f == "tv":  # f = |t - 1| / 2
        g = 0.5 * b * jnp.sign(lb - la)
    elif f == "alpha":  # f'(t) = (t^(alpha-1) - 1) / (alpha - 1)
        g = (jnp.exp(alpha * lb + (1.0 - alpha) * la) - b) / (alpha - 1.0)
    else:
        raise ValueError(f"unknown f-divergence {f!r}; choose one of {F_DIVERGENCES}")
    return g - b * jnp.sum(g, axis=0, keepdims=True)


def brain_surrogate(log_policy, log_proposal, log_target, baseline: str = "self_normalized"):
    """(−D_SN, surrogate): maximizing the surrogate follows BRAIn's gradient
    Σ_i (α̂_i − β̂_i) ∇log π(y_i) per prompt (``baseline="none"``: DPG, Σ_i α̂_i ∇log π;
    ``"gdcpp"``: GDC++, Σ_i (α̂_i − π(y_i) / (n q'(y_i))) ∇log π). Both have the batch shape
    of the inputs without axis 0; ``log_policy`` carries the gradient."""
    log_alpha = normalized_log_weights(log_target, log_proposal)
    alpha = jnp.exp(log_alpha)
    log_beta = jax.nn.log_softmax(log_policy - lax.stop_gradient(log_proposal), axis=0)
    d_sn = self_normalized_kl(log_alpha, lax.stop_gradient(log_beta))
    if baseline == "self_normalized":
        surrogate = jnp.sum(alpha * log_beta, axis=0)
    elif baseline == "none":
        surrogate = jnp.sum(alpha * log_policy, axis=0)
    elif baseline == "gdcpp":
        n = log_policy.shape[0]
        b = jnp.exp(lax.stop_gradient(log_policy - log_proposal)) / n
        surrogate = jnp.sum((alpha - b) * log_policy, axis=0)
    else:
        raise ValueError(
            f"brain: unknown baseline {baseline!r}; choose 'self_normalized', 'none' or 'gdcpp'"
        )
    return -d_sn, surrogate


def brain_loss(log_policy, log_proposal, log_reference, reward, beta=1.0, likelihood="exp"):
    """Offline BRAIn loss (to minimize) from stored samples: D_SN, summed over prompts,
    with the BRAIn gradient −Σ_i (α̂_i − β̂_i) ∇log π(y_i). ``log_policy`` (n, *batch) is
    the policy's differentiable log density of the stored responses.

    Example::

        loss = ppl.reward.brain_loss(policy_logp(params, ys), logq_old, logp_ref, r, beta=0.5)
    """
    from .model import log_likelihood

    log_target = jnp.asarray(log_reference) + log_likelihood(reward, beta, likelihood)
    value, surrogate = brain_surrogate(log_policy, jnp.asarray(log_proposal), log_target)
    return -jnp.sum(value + surrogate - lax.stop_gradient(surrogate))


def dpo_loss(log_policy_w, log_policy_l, log_reference_w, log_reference_l, beta=1.0):
    """DPO loss −log σ(beta [log(π/p_ref)(y_w) − log(π/p_ref)(y_l)]) of stored preference
    pairs (winner w, loser l), averaged over pairs."""
    margin = (log_policy_w - log_reference_w) - (log_policy_l - log_reference_l)
    return -jnp.mean(jax.nn.log_sigmoid(beta * margin))
