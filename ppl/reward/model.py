"""Reward posteriors p(y | x, G=1) ∝ p_ref(y | x) p(G=1 | x, y) as ordinary NumPyro models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
from jax.experimental import checkify
from numpyro.handlers import block, substitute, trace
from numpyro.primitives import mutable

from ..core.arguments import count
from ..core.constructs import site_log_prob_array
from ..core.finite import _ACTIVE

LIKELIHOODS = ("exp", "bradley_terry", "plackett_luce", "sigmoid")
FACTOR = "reward_likelihood"  # the factor site of a reward posterior
REWARD = "reward"  # the deterministic site recording the reward values
METRICS = "reward_metrics"  # the mutable site the objectives write their diagnostics to

METRICS_INIT = {"d_sn": 0.0, "ess": 0.0, "reward": 0.0, "divergence": 0.0}


def _check_settings(beta, likelihood, who="ppl.reward"):
    if not callable(likelihood) and likelihood not in LIKELIHOODS:
        raise ValueError(
            f"{who}: unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS} "
            "or pass a function reward / beta -> log p(G=1 | x, y)"
        )
    if isinstance(beta, jax.core.Tracer):
        return
    try:
        beta_value = float(beta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{who}: beta must be a positive number, got {beta!r}") from err
    if not beta_value > 0.0:
        raise ValueError(f"{who}: beta must be > 0 (the reward temperature), got {beta!r}")


def log_likelihood(reward, beta: float = 1.0, likelihood: str | Callable = "exp"):
    """log p(G=1 | x, y) of a reward (up to a constant, which self-normalization cancels).

    ``"exp"``: r / beta. ``"bradley_terry"`` and ``"plackett_luce"``: the same, since a
    reward model of the Bradley–Terry form P(y1 ≻ y2) = σ(r1 − r2) (or Plackett–Luce
    for rankings, which extends it) is exactly p(G=1 | y) ∝ exp(r(y)) / its normalizer,
    and β tempers it: the posterior is p_ref exp(r / β), the optimum of PPO's
    KL-regularized reward. ``"sigmoid"``: log σ(r / β), a reward read as the logit of a
    goodness classifier. A function is called with r / β and returns the log-likelihood.
    """
    _check_settings(beta, likelihood)
    z = jnp.asarray(reward, jnp.result_type(float)) / beta
    if callable(likelihood):
        return jnp.asarray(likelihood(z))
    if likelihood == "sigmoid":
        return jax.nn.log_sigmoid(z)
    return z


class RewardPosterior:
    """The reward posterior model built by :func:`posterior`; call it like the reference.

    Runs the reference (its sample sites are the model's latent sites), computes
    ``reward(response, *args, **kwargs)`` (recorded as the deterministic site
    ``"reward"``), and adds ``numpyro.factor("reward_likelihood", log p(G=1 | x, y))``.
    Attributes ``reference``, ``reward``, ``beta``, ``likelihood``, ``response_ndim`` are
    read by the objectives (``proposal="reference"``, the reward metrics).
    """

    def __init__(self, reference, reward, beta, likelihood, response_ndim, metrics):
        self.reference, self.reward, self.beta = reference, reward, beta
        self.likelihood, self.response_ndim, self.metrics = likelihood, response_ndim, metrics
        self.__name__ = f"posterior({getattr(reference, '__name__', 'reference')})"
        self.__doc__ = RewardPosterior.__doc__

    def __repr__(self) -> str:
        return f"ppl.reward.{self.__name__}"

    def __call__(self, *args, **kwargs):
        if self.metrics:
            mutable(self.metrics, dict(METRICS_INIT))
        response = self.reference(*args, **kwargs)
        if response is None:
            raise ValueError(
                "ppl.reward.posterior: the reference program returned None; it must return "
                "the response (e.g. the sampled tokens)"
            )
        r = self.reward(response, *args, **kwargs)
        r = check_reward(r, response, self.response_ndim)
        numpyro.deterministic(REWARD, r)
        numpyro.factor(FACTOR, log_likelihood(r, self.beta, self.likelihood))
        return response


def check_reward(r, response, response_ndim: int = 1):
    """The reward as a float array of shape response.shape[:-response_ndim]; clear errors
    for a wrong shape and for NaN rewards (concrete arrays at once; traced ones inside
    :func:`ppl.check_finite`)."""
    leaf = jax.tree.leaves(response)[0]
    shape = tuple(jnp.shape(leaf))
    if len(shape) < response_ndim:
        raise ValueError(
            f"ppl.reward.posterior: the response has shape {shape}, fewer than "
            f"response_ndim={response_ndim} axes; set response_ndim=0 for scalar responses"
        )
    expected = shape[: len(shape) - response_ndim]
    r = jnp.asarray(r)
    if r.shape != expected:
        raise ValueError(
            f"ppl.reward.posterior: reward returned shape {r.shape}, expected {expected}: "
            f"one reward per response (the response has shape {shape}, whose last "
            f"response_ndim={response_ndim} axes form one response)"
        )
    if not jnp.issubdtype(r.dtype, jnp.floating):
        r = r.astype(jnp.result_type(float))
    if not isinstance(r, jax.core.Tracer):
        bad = jnp.isnan(r)
        if bool(jnp.any(bad)):
            first = tuple(int(i[0]) for i in jnp.nonzero(bad))
            raise ValueError(
                f"ppl.reward.posterior: reward is NaN for {int(jnp.sum(bad))} of {r.size} "
                f"responses (first at index {first})"
            )
    elif _ACTIVE.get():
        checkify.check(~jnp.any(jnp.isnan(r)), "ppl.reward.posterior: reward is NaN: {r}", r=r)
    return r


def posterior(
    reference: Callable,
    reward: Callable,
    beta: float = 1.0,
    likelihood: str | Callable = "exp",
    response_ndim: int = 1,
    metrics: str | None = METRICS,
) -> RewardPosterior:
    """The reward posterior p(y | x, G=1) ∝ p_ref(y | x) p(G=1 | x, y) as a NumPyro model.

    ``reference(*args, **kwargs)`` is a NumPyro program over the response (e.g. a
    policy sampling tokens) that returns it; ``reward(response, *args, **kwargs)`` returns
    one reward per response: shape ``response.shape[:-response_ndim]`` (a batch of
    prompts gives a batch of rewards; ``response_ndim=0`` for scalar responses). The
    result has the reference's signature and its latent sites. ``likelihood``: see
    :func:`log_likelihood`. ``metrics`` names a mutable site where the objectives of
    :mod:`ppl.objectives` (``brain``, ``fdiv``, ...) write per-step diagnostics
    (``d_sn``, ``ess``, ``reward``, ``divergence``); ``None`` leaves it out.

    Example::

        target = ppl.reward.posterior(sft_policy, reward_model, beta=0.5)
        svi = SVI(target, policy, optax.adam(1e-3), loss=ppl.objectives.brain(8))
    """
    if not callable(reference) or not callable(reward):
        raise TypeError("ppl.reward.posterior: reference and reward must be callables")
    _check_settings(beta, likelihood, "ppl.reward.posterior")
    response_ndim = count(response_ndim, "response_ndim", "ppl.reward.posterior", minimum=0)
    return RewardPosterior(reference, reward, beta, likelihood, response_ndim, metrics)


class Scores(NamedTuple):
    """Per-response log densities of a reward posterior at given values (batch shape)."""

    log_reference: Any  # log p_ref(y | x)
    log_likelihood: Any  # log p(G=1 | x, y)
    reward: Any  # r(x, y) (zeros for models that are not reward posteriors)

    @property
    def log_target(self):
        """log p_ref + log p(G=1 | ·): the unnormalized posterior."""
        return self.log_reference + self.log_likelihood


def _per_response(lp, batch_shape):
    """Sum a per-element log density over its dims left of the batch dims."""
    lp = jnp.asarray(lp)
    extra = lp.ndim - len(batch_shape)
    if extra > 0:
        lp = jnp.sum(lp, axis=tuple(range(extra)))
    return jnp.broadcast_to(lp, batch_shape)


def _trace_at(fn, values, args, kwargs):
    """Trace ``fn`` at ``values``; its sample sites are hidden from enclosing handlers (no
    gradient strategy applies), its params still read the enclosing substitutions."""
    with block(hide_fn=lambda msg: msg["type"] == "sample"):
        return trace(substitute(fn, data=values)).get_trace(*args, **kwargs)


def _require(tr, values, who):
    for name, site in tr.items():
        if site["type"] == "sample" and not site["is_observed"] and name not in values:
            raise ValueError(f"{who}: latent site '{name}' has no value; given {sorted(values)}")


def score(model: Callable, values: dict, *args, **kwargs) -> Scores:
    """log p_ref(y), log p(G=1 | y) and r(y) of ``model`` at ``values``, one per response.

    The batch shape is the shape of the model's ``"reward_likelihood"`` factor (``()`` for
    other models, whose whole log density is then ``log_reference``).
    """
    tr = _trace_at(model, values, args, kwargs)
    _require(tr, values, "ppl.reward.score")
    factor = tr.get(FACTOR)
    if factor is not None:
        batch = tuple(jnp.shape(site_log_prob_array(factor)))
    else:
        batch = ()
    log_ref = jnp.zeros(batch)
    for name, site in tr.items():
        if site["type"] == "sample" and name != FACTOR:
            log_ref = log_ref + _per_response(site_log_prob_array(site), batch)
    if factor is None:
        return Scores(log_ref, jnp.zeros(batch), jnp.zeros(batch))
    lik = _per_response(site_log_prob_array(factor), batch)
    r = tr[REWARD]["value"] if REWARD in tr else jnp.zeros(batch)
    return Scores(log_ref, lik, jnp.broadcast_to(r, batch))


def program_log_prob(program: Callable, values: dict, batch_shape: tuple, *args, **kwargs):
    """log density of ``program``'s latent sites at ``values``, per response (``batch_shape``)."""
    tr = _trace_at(program, values, args, kwargs)
    _require(tr, values, "ppl.reward")
    total = jnp.zeros(batch_shape)
    for site in tr.values():
        if site["type"] == "sample" and not site["is_observed"]:
            total = total + _per_response(site_log_prob_array(site), batch_shape)
    return total


def latent_values(tr) -> dict:
    """The latent sample-site values of a trace (no gradient)."""
    return {
        name: jax.lax.stop_gradient(site["value"])
        for name, site in tr.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def exact_posterior(model: Callable, responses: dict, *args, **kwargs):
    """Exact log p(y | x, G=1) over a finite set of candidate responses, by enumeration.

    ``responses`` maps the model's latent sites to stacked values (leading axis: the
    candidates, which must cover the support). Returns the normalized log posterior, shape
    (num_candidates, *batch). Also the exact reference: with ``reward = 0`` it is log p_ref.
    """
    scores = jax.vmap(lambda v: score(model, v, *args, **kwargs))(responses)
    log_target = scores.log_target
    return log_target - jax.nn.logsumexp(log_target, axis=0)
