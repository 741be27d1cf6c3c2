"""Proposals q'(y | x) for the reward objectives: the reference, the policy, a frozen and
periodically refreshed snapshot of the policy, any program, mixtures, stored samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
from jax import lax
from numpyro.handlers import block, seed, substitute, trace
from numpyro.primitives import mutable

from ..core.arguments import count
from ..core.constructs import particles
from ..core.runtime import update_state
from .model import RewardPosterior, Scores, latent_values, program_log_prob, score


class Samples(NamedTuple):
    """Stored samples for offline training: ``values`` (the latent sites, leading axis n),
    and per response ``log_proposal`` log q'(y | x), ``log_reference`` log p_ref(y | x) and
    ``reward`` r(x, y), each of shape (n, *batch)."""

    values: dict
    log_proposal: Any
    log_reference: Any
    reward: Any


class Context(NamedTuple):
    """What a proposal's ``log_prob`` may read: the scores and the policy's log density."""

    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    batch: tuple
    scores: Scores
    log_policy: Any


def _hidden_run(fn, args, kwargs, params=None) -> dict:
    """Sample ``fn`` with its own key, its sample sites (and, with ``params``, its param
    sites) hidden from enclosing handlers; returns the latent values (no gradient)."""
    key = numpyro.prng_key()
    types = ("sample",) if params is None else ("sample", "param")
    with block(hide_fn=lambda msg: msg["type"] in types):
        run = seed(fn, key)
        if params is not None:
            run = substitute(run, data=params)
        tr = trace(run).get_trace(*args, **kwargs)
    return latent_values(tr)


class Proposal:
    """A proposal: ``sample(n, model, guide, args, kwargs)`` -> values with a leading axis
    n; ``log_prob(values, ctx)`` -> (n, *batch); ``update(model, guide, args, kwargs)``
    sets the next state of a stateful proposal (the snapshot)."""

    name = "proposal"

    def sample(self, n, model, guide, args, kwargs) -> dict:
        fn = self.program(model, guide)
        return particles(lambda: _hidden_run(fn, args, kwargs), n)()

    def program(self, model, guide) -> Callable:
        raise NotImplementedError

    def log_prob(self, values, ctx: Context):
        raise NotImplementedError

    def update(self, model, guide, args, kwargs) -> None:
        return None

    def __repr__(self) -> str:
        return self.name


class Reference(Proposal):
    """q' = the reference policy of the reward posterior (BRAIn's SFT proposal)."""

    name = "reference"

    def program(self, model, guide):
        if not isinstance(model, RewardPosterior):
            raise ValueError(
                "proposal 'reference' needs a model built by ppl.reward.posterior (it reads "
                "model.reference); pass proposal=<program> for other models"
            )
        return model.reference

    def log_prob(self, values, ctx):
        return ctx.scores.log_reference


class Policy(Proposal):
    """q' = the current policy, held fixed (on-policy sampling)."""

    name = "policy"

    def program(self, model, guide):
        return guide

    def log_prob(self, values, ctx):
        return lax.stop_gradient(ctx.log_policy)


class Program(Proposal):
    """q' = any NumPyro program over the response sites, with the model's signature."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = f"program({getattr(fn, '__name__', 'fn')})"

    def program(self, model, guide):
        return self.fn

    def log_prob(self, values, ctx):
        return jax.vmap(lambda v: program_log_prob(self.fn, v, ctx.batch, *ctx.args, **ctx.kwargs))(
            values
        )


class Snapshot(Proposal):
    """q' = a frozen copy of the policy's parameters, refreshed every ``every`` steps.

    The copy lives in the mutable site ``name`` (SVI carries it); wrap the guide with
    :func:`keep_snapshot` to declare it.
    """

    def __init__(self, every: int, state: str = "policy_snapshot"):
        every = count(every, "every", "ppl.reward.snapshot")
        self.every, self.state = every, state
        self.name = f"snapshot(every={every})"

    def _state(self):
        state = mutable(self.state)
        if state is None:
            raise ValueError(
                f"proposal {self.name}: no snapshot state '{self.state}'; wrap the guide: "
                f"guide = ppl.reward.keep_snapshot(guide, name={self.state!r})"
            )
        return state

    def sample(self, n, model, guide, args, kwargs):
        params = self._state()["params"]
        return particles(lambda: _hidden_run(guide, args, kwargs, params), n)()

    def log_prob(self, values, ctx):
        params = self._state()["params"]

        def one(v):
            with block(hide_fn=lambda msg: msg["type"] == "param"):
                fn = substitute(ctx.guide, data=params)
                return program_log_prob(fn, v, ctx.batch, *ctx.args, **ctx.kwargs)

        return lax.stop_gradient(jax.vmap(one)(values))

    def update(self, model, guide, args, kwargs):
        state = self._state()
        current = _guide_params(guide, args, kwargs, state["params"])
        age = state["age"] + 1
        refresh = age >= self.every
        params = jax.tree.map(lambda c, o: jnp.where(refresh, c, o), current, state["params"])
        update_state(self.state, {"params": params, "age": jnp.where(refresh, 0, age)})


def _guide_params(guide, args, kwargs, like) -> dict:
    key = numpyro.prng_key()
    with block(hide_fn=lambda msg: msg["type"] == "sample"):
        tr = trace(seed(guide, key)).get_trace(*args, **kwargs)
    return {k: lax.stop_gradient(tr[k]["value"]) for k in like}


def keep_snapshot(guide: Callable, name: str = "policy_snapshot") -> Callable:
    """Wrap a guide so that it declares the snapshot state of :func:`snapshot` proposals:
    the mutable site ``name`` = {"params": a copy of the guide's params, "age": steps since
    the last refresh}, initialized to the initial params."""

    def wrapped(*args, **kwargs):
        with trace() as tr:
            out = guide(*args, **kwargs)
        params = {k: lax.stop_gradient(s["value"]) for k, s in tr.items() if s["type"] == "param"}
        mutable(name, {"params": params, "age": jnp.zeros((), jnp.int32)})
        return out

    wrapped.__name__ = getattr(guide, "__name__", "guide")
    return wrapped


class Mixture(Proposal):
    """q' = sum_c w_c q'_c: ``round(w_c n)`` samples from each component (stratified), all
    weighted with the mixture density (multiple importance sampling, balance heuristic)."""

    def __init__(self, components, weights):
        self.components = [as_proposal(c) for c in components]
        w = jnp.asarray(weights if weights is not None else [1.0] * len(self.components))
        if w.shape != (len(self.components),) or not bool(jnp.all(w > 0)):
            raise ValueError(
                f"ppl.reward.mixture: need one positive weight per component, got {weights}"
            )
        self.weights = [float(x) for x in w / jnp.sum(w)]
        self.name = (
            "mixture("
            + ", ".join(f"{c}: {w:.3g}" for c, w in zip(self.components, self.weights, strict=True))
            + ")"
        )

    def counts(self, n):
        counts = [round(w * n) for w in self.weights]
        if sum(counts) != n or any(
            abs(c - w * n) > 1e-6 for c, w in zip(counts, self.weights, strict=True)
        ):
            raise ValueError(
                f"{self.name}: num_samples={n} does not split into whole numbers of samples "
                f"per component with weights {self.weights}"
            )
        return counts

    def sample(self, n, model, guide, args, kwargs):
        parts = [
            c.sample(k, model, guide, args, kwargs)
            for c, k in zip(self.components, self.counts(n), strict=True)
            if k > 0
        ]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)

    def log_prob(self, values, ctx):
        terms = [
            jnp.log(w) + c.log_prob(values, ctx)
            for c, w in zip(self.components, self.weights, strict=True)
        ]
        return jax.nn.logsumexp(jnp.stack(terms), axis=0)

    def update(self, model, guide, args, kwargs):
        for c in self.components:
            c.update(model, guide, args, kwargs)


def snapshot(every: int, name: str = "policy_snapshot") -> Snapshot:
    """A frozen copy of the policy refreshed every ``every`` SVI steps (wrap the guide with
    :func:`keep_snapshot`)."""
    return Snapshot(every, name)


def mixture(*components, weights=None) -> Mixture:
    """A mixture of proposals, e.g. ``mixture("reference", snapshot(10), weights=(1, 3))``."""
    return Mixture(components, weights)


def as_proposal(spec) -> Proposal:
    """A proposal from ``"reference"``, ``"policy"``, a program, or a :class:`Proposal`."""
    if isinstance(spec, Proposal):
        return spec
    if spec == "reference":
        return Reference()
    if spec == "policy":
        return Policy()
    if isinstance(spec, str):
        raise ValueError(
            f"unknown proposal {spec!r}: use 'reference', 'policy', 'offline', a program, "
            "ppl.reward.snapshot(every) or ppl.reward.mixture(...)"
        )
    if callable(spec):
        return Program(spec)
    raise TypeError(f"proposal must be a string, a program or a Proposal, got {type(spec)}")


class Draws(NamedTuple):
    """n responses per prompt and their log densities (each (n, *batch)); ``log_policy``
    carries the policy's gradient, the others none."""

    values: dict
    log_policy: Any
    log_proposal: Any
    scores: Scores


def draw(model, guide, proposal: Proposal | str, n: int, args, kwargs) -> Draws:
    """Sample n responses from ``proposal`` and score them under model, guide and proposal.

    ``proposal="offline"`` reads stored :class:`Samples` from ``kwargs["samples"]``.
    """
    if proposal == "offline":
        return _offline(model, guide, args, kwargs)
    proposal = as_proposal(proposal)
    values = proposal.sample(n, model, guide, args, kwargs)
    scores = jax.tree.map(
        lax.stop_gradient, jax.vmap(lambda v: score(model, v, *args, **kwargs))(values)
    )
    batch = tuple(scores.log_reference.shape[1:])
    log_policy = jax.vmap(lambda v: program_log_prob(guide, v, batch, *args, **kwargs))(values)
    ctx = Context(model, guide, args, kwargs, batch, scores, log_policy)
    log_proposal = lax.stop_gradient(proposal.log_prob(values, ctx))
    proposal.update(model, guide, args, kwargs)
    return Draws(values, log_policy, log_proposal, scores)


def _offline(model, guide, args, kwargs):
    samples = kwargs.pop("samples", None)
    if not isinstance(samples, Samples):
        raise ValueError(
            "proposal 'offline' needs stored samples: pass samples=ppl.reward.Samples(...) to "
            "the loss (svi.update(state, *args, samples=...))"
        )
    if not isinstance(model, RewardPosterior):
        raise ValueError("proposal 'offline' needs a model built by ppl.reward.posterior")
    from .model import log_likelihood

    reward = jnp.asarray(samples.reward)
    batch = tuple(reward.shape[1:])
    lik = log_likelihood(reward, model.beta, model.likelihood)
    scores = Scores(jnp.asarray(samples.log_reference), lik, reward)
    values = jax.tree.map(lax.stop_gradient, samples.values)
    log_policy = jax.vmap(lambda v: program_log_prob(guide, v, batch, *args, **kwargs))(values)
    return Draws(values, log_policy, jnp.asarray(samples.log_proposal), scores)


def report_metrics(model, draws: Draws, divergence) -> None:
    """Write the per-step diagnostics to the model's metrics site (a mutable site SVI carries):
    ``d_sn`` (self-normalized KL of the target weights from the policy's), ``ess`` (of the
    target weights, 1..n), ``reward`` (mean reward of the drawn responses) and the
    objective's own ``divergence``; each averaged over prompts."""
    name = getattr(model, "metrics", None)
    if not name:
        return
    from .estimators import effective_sample_size, normalized_log_weights, self_normalized_kl

    log_alpha = normalized_log_weights(draws.scores.log_target, draws.log_proposal)
    log_beta = jax.nn.log_softmax(lax.stop_gradient(draws.log_policy - draws.log_proposal), 0)
    metrics = {
        "d_sn": jnp.mean(self_normalized_kl(log_alpha, log_beta)),
        "ess": jnp.mean(effective_sample_size(log_alpha)),
        "reward": jnp.mean(draws.scores.reward),
        "divergence": jnp.mean(divergence),
    }
    update_state(name, jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), metrics))
