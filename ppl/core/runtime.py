"""One run of an expectation program under ppl's strategy handler.

A run is ``seed(f, key)`` with :class:`apply_strategies` installed. Four modes:

* ``discover`` (under ``jax.eval_shape``): list the random choices, their strategies and
  sizes, in execution order; nothing is computed.
* ``main``: jointly-enumerated sites are forced to one combination of values; records the
  pieces of the surrogate (score terms, enumeration weights, per-element parameters).
* ``replay``: like ``main``, plus one *target* changed: one element of one local
  (mvd / batched enum) site set to one alternative, or one particle of a
  :func:`ppl.particles` output replaced by the mean of the others (leave-one-out).

Forced values are written in ``postprocess_message``, after NumPyro's ``seed`` has split
its key, so every later site draws with the same key in every run (seeded replay).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from numpyro.primitives import Messenger

from .distributions import base_distribution, log_prob, num_elements
from .mvd import enum_rule, mvd_rule
from .running import RunningBaseline
from .strategies import (
    MVD,
    Enum,
    Reinforce,
    StrategyError,
    refuse_strategy_on_observed,
    resolve_strategy,
)

_STACK: list = []  # active runs (innermost last)


def box(x):
    """DiCE 'magic box': value 1, gradient d x."""
    return jnp.exp(x - lax.stop_gradient(x))


class Term(NamedTuple):
    """One log-density term of an additive program: sign * sum(lp) is added to its value."""

    lp: Any  # per-element log density (plate-scaled)
    plates: tuple  # (name, dim) of the site's plates
    sign: float  # +1 from ppl.density, -1 from ppl.simulate
    name: str  # the site's name
    lp_fixed_value: Any = None  # ppl.simulate: log q at the stop-gradient value


@dataclasses.dataclass
class SiteInfo:
    """Static description of one random choice (or one particles construct)."""

    name: str
    order: int
    kind: str  # "reparam" | "reinforce" | "joint_enum" | "local" | "particles"
    num_elements: int = 1  # elements including enclosing particle dimensions
    num_alternatives: int = 0
    support_size: int = 0
    pairs: tuple = ()
    num_params: int = 0
    loo: bool = False  # particles construct: some site inside uses baseline="loo"
    num_particles: int = 0
    in_particles: bool = False
    plates: tuple = ()  # (name, dim) of the enclosing plates
    batch_shape: tuple = ()
    value_shape: tuple = ()
    value_dtype: object = None
    plate_aligned: bool = False  # every batch dim of size > 1 is a plate dim
    fast: bool = False  # additive program: per-element values from one replay per alternative
    rao_blackwell: bool = False  # additive: score x its downstream terms (per element if aligned)


@dataclasses.dataclass
class Target:
    """Traced description of what a replay changes."""

    order: Any  # int32 scalar; -1 for none
    element: Any  # int32 scalar
    alternative: Any  # int32 scalar


class RunState:
    """State of one run (mode, forced values, records). Nested inside particles runs."""

    def __init__(
        self, mode, combo=None, target=None, sites=None, particle=None, parent=None, forced=None
    ):
        self.mode = mode
        self.forced = forced or {}  # order -> value (provenance analysis)
        self.terms: list[Term] = []  # log-density terms recorded by density / simulate
        self.combo = combo if combo is not None else {}  # joint-enum order -> support index
        self.target = target
        self.sites: list[SiteInfo] = sites if sites is not None else []
        self.by_order = {s.order: s for s in self.sites}
        self.parent = parent
        # particle coordinates of this run: (flat index, count) over enclosing particles
        self.particle = particle if particle is not None else (jnp.int32(0), 1)
        self.counter = parent.counter if parent is not None else [0]
        self.enum_lw = jnp.zeros(())  # sum of joint-enum log weights (main)
        self.enum_lp: dict[int, Any] = {}  # joint-enum order -> its log weight
        self.lw_up = jnp.zeros(())  # joint-enum log weight before the target (replay)
        self.lw_down = jnp.zeros(())  # ... after it
        self.score = jnp.zeros(())  # sum of reinforce log probs
        self.extra = jnp.zeros(())  # user-value baseline terms
        self.loo_score = jnp.zeros(())  # reinforce log probs of loo sites (inside particles)
        self.local: dict[int, tuple] = {}  # order -> (theta, coef, lw_up)
        self.loo: dict[int, tuple] = {}  # particles order -> (loo score (K,), lw_up)
        self.has_loo = False  # discover: a site in this particles run uses baseline="loo"
        self.reinforce_lp: dict[int, Any] = {}  # order -> per-element log prob (RB sites)
        self.learned: dict[int, Any] = {}  # order -> learned baseline value (differentiable)
        self.running: dict[int, RunningBaseline] = {}  # order -> running baseline read
        self.state_updates: dict[str, Any] = {}  # mutable-site name -> next value
        self.guide_runs: dict[int, tuple] = {}  # id(values) -> (values, guide trace)

    def next_order(self) -> int:
        order = self.counter[0]
        self.counter[0] += 1
        return order

    @property
    def top(self) -> RunState:
        return self if self.parent is None else self.parent.top

    def in_particles(self) -> bool:
        return self.parent is not None


def current_run() -> RunState | None:
    return _STACK[-1] if _STACK else None


def update_state(name: str, value) -> None:
    """Inside an expectation: set the next value of the mutable site ``name``.

    SVI carries it to the next step (``Objective.loss_with_mutable_state``); e.g. the
    chain of Markovian score climbing. No gradient flows through it.
    """
    state = current_run()
    if state is not None:
        state.top.state_updates[name] = jax.tree.map(lax.stop_gradient, value)


def record_terms(trace, arrays: dict, sign: float) -> None:
    """Record the per-site log-density arrays of a run (``simulate``: sign -1, with the
    fixed-value log q each term needs) in the current run."""
    from .constructs import site_log_prob_fixed  # local: constructs imports this module

    state = current_run()
    if state is None or state.in_particles():
        return
    for name, lp in arrays.items():
        site = trace[name]
        fixed = site_log_prob_fixed(site, "value") if sign < 0 else None
        state.terms.append(Term(lp, plate_frames(site.get("cond_indep_stack")), sign, name, fixed))


def record_term(lp, frames, sign: float, name: str) -> None:
    """Record one log-density term (per element of the plates ``frames``)."""
    state = current_run()
    if state is not None and not state.in_particles():
        state.terms.append(Term(lp, plate_frames(frames), sign, name))


class apply_strategies(Messenger):
    """Apply each sample site's gradient strategy for the run ``state``."""

    def __init__(self, fn=None, state: RunState | None = None, isolate: bool = False):
        self.state = state
        self.isolate = isolate  # particles: hide the inner sites from the outer run
        super().__init__(fn)

    def __enter__(self):
        _STACK.append(self.state)
        return super().__enter__()

    def __exit__(self, *exc):
        _STACK.pop()
        return super().__exit__(*exc)

    def process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["infer"] = dict(msg.get("infer") or {})  # never mutate the user's dict
            if self.isolate:
                msg["stop"] = True

    def postprocess_message(self, msg):
        if msg["type"] != "sample":
            return
        if msg["is_observed"]:
            refuse_strategy_on_observed(msg["name"], msg, "ppl.expectation")
            return
        state = self.state
        name, fn, x = msg["name"], msg["fn"], msg["value"]
        spec = msg["infer"].get("grad")
        if spec is None and msg["infer"].get("enumerate") == "parallel":
            spec = "enum"  # NumPyro's guide-side enumeration: an exact sum over the site
        strat = resolve_strategy(name, fn, spec)
        order = state.next_order()
        if state.mode == "discover":
            frames = msg.get("cond_indep_stack") or []
            state.sites.append(_describe(name, order, fn, x, strat, state, frames))
            if isinstance(strat, Reinforce) and strat.baseline == "loo":
                if not state.in_particles():
                    raise StrategyError(
                        f"site '{name}': reinforce baseline 'loo' needs the site inside "
                        "ppl.particles (leave-one-out is across particles)"
                    )
                state.has_loo = True
            if isinstance(strat, Reinforce) and isinstance(strat.baseline, RunningBaseline):
                if state.in_particles():
                    raise StrategyError(
                        f"site '{name}': a running baseline needs the site outside "
                        "ppl.particles (inside, use baseline='loo')"
                    )
            if isinstance(strat, Reinforce) and not isinstance(strat.baseline, str):
                _check_baseline_shape(name, fn, x, strat.baseline)
            return
        info = state.by_order[order]
        if info.kind in ("reparam",):
            return
        x = lax.stop_gradient(x)
        if order in state.forced and info.kind != "joint_enum":  # provenance: an input,
            x = state.forced[order] + 0 * x  # keeping x's data flow
        if info.kind == "reinforce":
            lp_elements = log_prob(fn, x)
            lp = jnp.sum(lp_elements)
            if info.rao_blackwell:
                state.reinforce_lp[order] = lp_elements
            else:
                state.score = state.score + lp
            baseline = strat.baseline
            if isinstance(baseline, str):
                if baseline == "loo":
                    state.loo_score = state.loo_score + lp
            elif isinstance(baseline, RunningBaseline):
                b = jnp.broadcast_to(baseline.value.astype(lp_elements.dtype), lp_elements.shape)
                state.extra = state.extra + jnp.sum((1.0 - box(lp_elements)) * b)
                state.running[order] = baseline
            else:
                b = jnp.broadcast_to(jnp.asarray(baseline, lp_elements.dtype), lp_elements.shape)
                state.extra = state.extra + jnp.sum((1.0 - box(lp_elements)) * lax.stop_gradient(b))
                if strat.learn:
                    state.learned[order] = b
        elif info.kind == "joint_enum":
            if order in state.forced:  # factored plan: the value is an input of its own
                x = state.forced[order]
            else:
                support = base_distribution(fn).enumerate_support(expand=False).reshape(-1)
                forced = support[state.combo[order]].astype(jnp.result_type(x))
                forced = jnp.broadcast_to(forced, jnp.shape(msg["value"]))
                # provenance analysis: the forced value depends on whatever the sample did
                x = forced + 0 * x if state.mode == "provenance" else forced
            lp = jnp.sum(log_prob(fn, x))
            state.enum_lw = state.enum_lw + lp
            state.enum_lp[order] = lp
            if state.mode == "replay":
                before = order < state.target.order
                state.lw_up = state.lw_up + jnp.where(before, lp, 0.0)
                state.lw_down = state.lw_down + jnp.where(before, 0.0, lp)
        elif info.kind == "local":
            rule = _local_rule(name, fn, strat)
            if state.mode in ("main", "provenance"):
                theta, coef = rule.parameters(fn, x)
                p = theta.shape[0]
                state.local[order] = (theta.reshape(p, -1), coef.reshape(p, -1), state.top.enum_lw)
            else:
                x = _apply_target(state, info, rule, fn, x, msg["kwargs"].get("rng_key"))
        msg["value"] = x
        msg["intermediates"] = []


def _check_baseline_shape(name, fn, x, baseline) -> None:
    """A reinforce baseline is a scalar or one value per element of the site's batch."""
    ndim = jnp.ndim(x) - len(fn.event_shape)
    batch = jnp.broadcast_shapes(tuple(fn.batch_shape), tuple(jnp.shape(x))[:ndim])
    if isinstance(baseline, RunningBaseline):
        shape, what = (
            tuple(jnp.shape(baseline.state["mean"])),
            f"running baseline '{baseline.name}'",
        )
    else:
        shape, what = tuple(jnp.shape(baseline)), "reinforce baseline"
    try:
        fits = jnp.broadcast_shapes(shape, batch) == batch
    except ValueError:
        fits = False
    if not fits:
        raise StrategyError(
            f"site '{name}': the {what} has shape {shape}, the site's batch shape is {batch}; "
            "a baseline is a scalar or one value per element (of that shape)"
        )


def _local_rule(name, fn, strat):
    return mvd_rule(name, fn) if isinstance(strat, MVD) else enum_rule(name, fn)


def _apply_target(state, info, rule, fn, x, key):
    """In a replay, set the targeted element of this site to the targeted alternative."""
    target = state.target
    key = jax.random.fold_in(key, 7) if key is not None else jax.random.PRNGKey(0)
    alts = rule.alternatives(fn, x, key).reshape(rule.num_alternatives, -1)
    local_n = alts.shape[1]
    flat_particle, _ = state.particle
    element = target.element - flat_particle * local_n  # element index inside this particle
    alt = alts[jnp.clip(target.alternative, 0, rule.num_alternatives - 1)]
    flat = x.reshape(-1)
    if info.fast:  # element -1: every element at once (terms are read per element)
        hit = (target.order == info.order) & (target.element < 0)
        return jnp.where(hit, alt, flat).reshape(jnp.shape(x))
    hit = (target.order == info.order) & (element >= 0) & (element < local_n)
    idx = jnp.clip(element, 0, local_n - 1)
    flat = jnp.where(hit, flat.at[idx].set(alt[idx]), flat)
    return flat.reshape(jnp.shape(x))


def plate_frames(frames) -> tuple:
    """(name, dim) of each plate: two plates at the same dim are different plates."""
    return tuple((f.name, f.dim) for f in frames or [])


def _describe(name, order, fn, x, strat, state, frames) -> SiteInfo:
    n_particles = state.particle[1]
    n = num_elements(fn, x)
    plates = plate_frames(frames)
    dims = {dim for _, dim in plates}
    batch = tuple(jnp.shape(x))[: jnp.ndim(x) - len(fn.event_shape)]
    aligned = not fn.event_shape and all(
        size == 1 or (i - len(batch)) in dims for i, size in enumerate(batch)
    )
    if isinstance(strat, Reinforce):
        return SiteInfo(
            name,
            order,
            "reinforce",
            n * n_particles,
            in_particles=state.in_particles(),
            plates=plates,
            batch_shape=batch,
            value_shape=tuple(jnp.shape(x)),
            value_dtype=jnp.result_type(x),
            plate_aligned=aligned,
        )
    if isinstance(strat, Enum) and n == 1 and not state.in_particles():
        size = base_distribution(fn).enumerate_support(expand=False).reshape(-1).shape[0]
        return SiteInfo(
            name,
            order,
            "joint_enum",
            1,
            support_size=int(size),
            value_shape=tuple(jnp.shape(x)),
            value_dtype=jnp.result_type(x),
        )
    if isinstance(strat, (Enum, MVD)):
        rule = _local_rule(name, fn, strat)
        n_params = len({j for j, _ in rule.pairs})
        return SiteInfo(
            name,
            order,
            "local",
            n * n_particles,
            num_alternatives=rule.num_alternatives,
            pairs=rule.pairs,
            num_params=n_params,
            in_particles=state.in_particles(),
            plates=plates,
            batch_shape=batch,
            value_shape=tuple(jnp.shape(x)),
            value_dtype=jnp.result_type(x),
            plate_aligned=aligned,
        )
    return SiteInfo(name, order, "reparam", n * n_particles, in_particles=state.in_particles())
