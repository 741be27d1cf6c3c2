"""BRAIn (Pandey et al. 2024): distill a reward posterior into the policy by forward KL with
self-normalized importance weights and the self-normalized baseline; DPG and GDC++ ablations."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ..core.arguments import count
from ..infer.svi import Objective, _mutable_sites
from ..reward.estimators import brain_surrogate
from ..reward.proposals import draw, report_metrics

_BASELINES = ("self_normalized", "none", "gdcpp")


def brain(num_samples: int = 8, proposal="reference", baseline: str = "self_normalized"):
    """BRAIn: forward KL(p(y | x, G=1) ‖ π_θ(y | x)) by self-normalized importance sampling.

    Per prompt: y_1..n ~ q' (``proposal``: ``"reference"``, ``"policy"``, a program,
    ``ppl.reward.snapshot(every)``, ``ppl.reward.mixture(...)``, or ``"offline"``: stored
    :class:`ppl.reward.Samples` passed as ``samples=`` to the loss); target weights
    α̂ = softmax_i(log p_ref + log p(G=1 | y) − log q'), the policy's β̂ =
    softmax_i(log π_θ − log q'). Value: −D_SN = −Σ_i α̂_i log(α̂_i / β̂_i) (summed over
    prompts); gradient Σ_i (α̂_i − β̂_i) ∇log π_θ(y_i). Consistent for the forward KL's
    gradient as n grows (biased at finite n; D_SN is zero iff the policy matches the
    posterior on the samples). ``baseline="none"`` is DPG, ``"gdcpp"`` GDC++. The model
    is a :func:`ppl.reward.posterior` (any NumPyro model works with a non-reference
    proposal); the guide is the policy. Per-step ``d_sn``, ``ess``, ``reward`` go to the
    model's metrics site (``svi_state.mutable_state["reward_metrics"]``).

    Example::

        target = ppl.reward.posterior(reference, reward, beta=0.5)
        svi = SVI(target, policy, optax.adam(1e-3), loss=ppl.objectives.brain(8))
    """
    num_samples = count(num_samples, "num_samples", "brain")
    if baseline not in _BASELINES:
        raise ValueError(f"brain: unknown baseline {baseline!r}; choose one of {_BASELINES}")

    def program(model, guide, *args, **kwargs):
        d = draw(model, guide, proposal, num_samples, args, kwargs)
        value, surrogate = brain_surrogate(
            d.log_policy, d.log_proposal, d.scores.log_target, baseline
        )
        report_metrics(model, d, -value)
        return jnp.sum(value + surrogate - lax.stop_gradient(surrogate))

    cls = OfflineObjective if isinstance(proposal, str) and proposal == "offline" else Objective
    return cls(
        program,
        name=f"brain(num_samples={num_samples}, proposal={proposal!r}, baseline={baseline!r})",
    )


def dpg(num_samples: int = 8, proposal="reference"):
    """DPG (Khalifa et al. 2021) as BRAIn's ablation without a baseline: gradient
    Σ_i α̂_i ∇log π_θ(y_i) with self-normalized target weights; value −D_SN (see
    :func:`brain`)."""
    return brain(num_samples, proposal, baseline="none")


def gdcpp(num_samples: int = 8, proposal="reference"):
    """GDC++ (Korbak et al. 2022) as BRAIn's ablation with the non-self-normalized baseline:
    gradient Σ_i (α̂_i − π_θ(y_i) / (n q'(y_i))) ∇log π_θ(y_i); value −D_SN (see
    :func:`brain`)."""
    return brain(num_samples, proposal, baseline="gdcpp")


class OfflineObjective(Objective):
    """An objective whose loss reads stored samples from the keyword argument ``samples``,
    which model and guide never see (so SVI's plain runs for mutable state skip it)."""

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        """SVI loss plus mutable state; ``samples`` goes to the objective only."""
        plain = {k: v for k, v in kwargs.items() if k != "samples"}
        mutable = _mutable_sites(rng_key, param_map, model, guide, args, plain)
        value, updates = self.estimate_with_updates(
            rng_key, param_map, model, guide, *args, **kwargs
        )
        mutable.update(updates)
        return {"loss": -value, "mutable_state": mutable or None}
