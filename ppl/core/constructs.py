"""Constructs for writing objectives: ``simulate``, ``density`` and ``particles``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
from jax import random
from numpyro.handlers import block, seed, substitute, trace
from numpyro.primitives import _PYRO_STACK, Messenger

from ..sharding import _particle_placement
from .arguments import count
from .consistency import check_model_guide, name_the_mismatch
from .data_check import check_observed
from .distributions import base_distribution, log_prob, site_log_density, site_shape
from .finite import check_site
from .model_enum import (
    CollapsedTerm,
    check_enumerable,
    collapsed_terms,
    enum_plate_nesting,
    is_marked,
)
from .runtime import (
    RunState,
    SiteInfo,
    apply_strategies,
    current_run,
    record_term,
    record_terms,
)
from .strategies import refuse_strategy_on_observed


class Simulation(NamedTuple):
    """A guide run: ``values`` of its sample (and plate) sites, ``log_prob`` = log q(values).

    ``log_prob_stl`` has the same value with the guide's parameters held fixed (gradients
    only through the sampled values: "sticking the landing", Roeder et al. 2017).
    """

    values: dict
    log_prob: Any
    trace: dict
    log_prob_stl: Any = None


def site_log_prob_array(site) -> Any:
    """Scaled log density of one traced sample site, per batch element (from its
    intermediates when it kept them: :func:`~ppl.core.distributions.site_log_density`)."""
    lp = site_log_density(site)
    if site.get("scale") is not None:
        lp = site["scale"] * lp
    return lp


def site_log_prob(site) -> Any:
    """Summed, scaled log density of one traced sample site."""
    return jnp.sum(site_log_prob_array(site))


def site_log_prob_fixed(site, fixed: str) -> Any:
    """Per-element log density with the distribution (``fixed="params"``) or the value
    (``fixed="value"``) held fixed (stop-gradient)."""
    fn, value = site["fn"], site["value"]
    try:
        if fixed == "params":
            fn = jax.tree.map(jax.lax.stop_gradient, fn)
        else:
            value = jax.lax.stop_gradient(value)
        lp = log_prob(fn, value)
    except NotImplementedError:  # a transform without an inverse (or not a pytree)
        return None
    if site.get("scale") is not None:
        lp = site["scale"] * lp
    return lp


def simulate(guide: Callable, *args, **kwargs) -> Simulation:
    """Run ``guide``; its sample sites are random choices of the enclosing expectation.

    Returns the values (by site name, and the indices of subsampled plates so that
    :func:`density` sees the same minibatch) and ``log q(values)`` (scaled by plates).
    ``guide`` may also be a sampler with an estimated density (:func:`ppl.marginal`,
    :func:`ppl.normalize`): anything with a ``simulate(*args, **kwargs)`` method.
    """
    if hasattr(guide, "simulate") and not hasattr(guide, "get_trace"):
        return guide.simulate(*args, **kwargs)
    if not callable(guide):
        raise TypeError(f"ppl.simulate needs a program (callable), got {type(guide).__name__}")
    tr = trace(guide).get_trace(*args, **kwargs)
    values, arrays, lp_stl = {}, {}, jnp.zeros(())
    for name, site in tr.items():
        if site["type"] == "sample":
            refuse_strategy_on_observed(name, site, "ppl.simulate")
            arrays[name] = site_log_prob_array(site)
            if not site["is_observed"]:
                values[name] = site["value"]
                fixed = site_log_prob_fixed(site, "params") if lp_stl is not None else None
                lp_stl = None if fixed is None else lp_stl + jnp.sum(fixed)
            elif lp_stl is not None:  # NumPyro's Trace_ELBO: an observed guide site counts in log q
                lp_stl = lp_stl + jnp.sum(arrays[name])
        elif site["type"] == "plate" and site["args"][1] not in (None, site["args"][0]):
            values[name] = site["value"]  # a subsampled plate: the model sees the same minibatch
    for name, lp in arrays.items():
        check_site(name, tr[name], lp, "ppl.simulate")
    record_terms(tr, arrays, -1.0)
    register_guide_run(values, tr)
    return Simulation(values, _total(arrays), tr, lp_stl)


def _total(arrays):
    return sum((jnp.sum(a) for a in arrays.values()), start=jnp.zeros(()))


class _valued_not_enumerated(Messenger):
    """A site with a value (from the guide) is not enumerated, whatever the model's mark:
    NumPyro's ``replay`` gives the model site the guide's value and ``infer``, so
    ``config_enumerate`` on both model and guide sums out only the sites the guide lacks."""

    def __init__(self, fn, values):
        self.values = values
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.values and is_marked(msg):
            infer = dict(msg.get("infer") or {})
            infer.pop("enumerate")
            msg["infer"] = infer


class _fill_enumerated(Messenger):
    """Every latent site needs a value, except sites marked for enumeration, which get a
    placeholder (their first support value) in this shape-and-structure run."""

    def __init__(self, fn, values, what):
        self.values, self.what, self.enumerated = values, what, []
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or msg["name"] in self.values:
            return
        name, fn = msg["name"], msg["fn"]
        if is_marked(msg):
            check_enumerable(name, fn, (msg.get("kwargs") or {}).get("sample_shape"))
            self.enumerated.append(name)
            support = fn.enumerate_support(expand=True)
            msg["value"] = support[(0,) * (jnp.ndim(support) - len(fn.shape()))]
            return
        hint = ""
        if getattr(base_distribution(fn), "has_enumerate_support", False):
            hint = (
                "; to sum it out exactly, mark it infer={'enumerate': 'parallel'} "
                "(or wrap the model in numpyro.contrib.funsor.config_enumerate)"
            )
        elif name.endswith("_unobserved"):
            hint = (
                f"; NumPyro's obs_mask on site '{name[: -len('_unobserved')]}' makes its"
                " masked entries this latent site: the guide must sample it (AutoGuides do)"
            )
        raise ValueError(
            f"{self.what}: latent site '{name}' of the model has no value; "
            f"given values for {sorted(self.values)}{hint}"
        )


def _has_key() -> bool:
    """A seed handler is active (checked without drawing: numpyro.prng_key() would split
    the handler's key and shift every later draw of the run)."""
    return any(isinstance(h, seed) for h in _PYRO_STACK)


class _fix_params(Messenger):
    def postprocess_message(self, msg):
        if msg["type"] == "param":
            msg["value"] = jax.lax.stop_gradient(msg["value"])


def register_guide_run(values: dict, guide_trace) -> None:
    """Remember which guide run produced ``values`` (for :func:`density`'s checks)."""
    state = current_run()
    if state is not None:
        state.top.guide_runs[id(values)] = (values, guide_trace)


def _guide_trace_of(values: dict):
    state = current_run()
    if state is None:
        return None
    entry = state.top.guide_runs.get(id(values))
    return entry[1] if entry is not None and entry[0] is values else None


def density(model: Callable, values: dict, *args, fix_params: bool = False, **kwargs):
    """Log joint density ``log p(values, observations)`` of ``model`` (scaled by plates).

    Every latent site of ``model`` needs a value in ``values`` (extra entries are
    ignored), except sites marked for enumeration (``infer={"enumerate": "parallel"}``,
    NumPyro's ``config_enumerate``): those without a value are summed out exactly, by
    variable elimination with NumPyro's funsor machinery (plates, ``markov``, ``scan``),
    so ``density`` returns ``log sum_z p(values, z, observations)``.

    When ``values`` comes from a guide run (a :func:`ppl.simulate` result or its
    ``.values``), model and guide are checked against each other first
    (:class:`ppl.ModelGuideMismatch`: guide sites the model lacks unless marked
    ``is_auxiliary``, observed model sites the guide samples, shapes and plate sizes
    that differ, discrete vs continuous). A marked site the guide samples takes the
    guide's value (NumPyro's ``replay``): ``config_enumerate`` on model and guide alike
    sums out only the sites the guide lacks. The model's sites are not random
    choices of the enclosing expectation. ``fix_params=True`` holds the model's
    ``numpyro.param`` values fixed (stop-gradient).
    """
    return density_terms(model, values, *args, fix_params=fix_params, **kwargs)[0]


def density_terms(model: Callable, values, *args, fix_params: bool = False, **kwargs):
    """:func:`density` with its parts: ``(total, terms, trace)``, ``terms`` a list of
    ``(name, lp, frames)``, each ``lp`` per element of its plates ``frames`` (plate-scaled;
    an eliminated group of enumerated sites is one term), ``trace`` the model's run."""
    guide_trace = None
    if isinstance(values, Simulation):
        guide_trace, values = values.trace, values.values
    if not isinstance(values, dict):
        raise TypeError(
            f"ppl.density: values must be a dict of site values or a ppl.simulate result, "
            f"got {type(values)}"
        )
    if guide_trace is None:
        guide_trace = _guide_trace_of(values)
    fn = _valued_not_enumerated(substitute(model, data=values), values)
    if fix_params:
        fn = _fix_params(fn)
    if not _has_key():  # scan's body draws its sites' placeholders with a key: any key
        fn = seed(fn, rng_seed=0)  # (no value is random: sites without one are refused)
    filled = _fill_enumerated(fn, values, "ppl.density")
    tracer = trace(filled)
    with block(hide_fn=lambda msg: msg["type"] == "sample"):
        with name_the_mismatch(tracer, guide_trace, values):
            tr = tracer.get_trace(*args, **kwargs)
    if guide_trace is not None:  # first: a guide value of the wrong shape breaks the rest
        check_model_guide(tr, guide_trace, values)
    check_observed(tr, "ppl.density")
    for name, site in tr.items():
        if site["type"] == "sample":
            refuse_strategy_on_observed(name, site, "ppl.density")
    if filled.enumerated:
        terms = collapsed_terms(fn, args, kwargs, enum_plate_nesting(tr, "ppl.density"))
    else:
        terms = [
            CollapsedTerm(n, None, tuple(s.get("cond_indep_stack") or ()), s)
            for n, s in tr.items()
            if s["type"] == "sample"
        ]
    total, parts = jnp.zeros(()), []
    for term in terms:
        lp = term.lp
        if term.site is not None:
            name, site = term.name, term.site
            _check_shape(name, site)
            if guide_trace is not None and not site["is_observed"] and name in guide_trace:
                _check_support(name, site, guide_trace[name])
            if lp is None:
                lp = site_log_prob_array(site)
            check_site(name, site, lp, "ppl.density")
        record_term(lp, term.frames, 1.0, term.name)
        total = total + jnp.sum(lp)
        parts.append((term.name, lp, term.frames))
    return total, parts, tr


def _check_support(name, site, guide_site):
    """A discrete model site needs discrete guide values, a continuous one continuous."""
    model_fn, guide_fn = site["fn"], guide_site.get("fn")
    if guide_site.get("type") != "sample" or guide_fn is None:
        return
    kind = {True: "discrete", False: "continuous"}
    m, g = model_fn.support.is_discrete, guide_fn.support.is_discrete
    if m != g:
        raise ValueError(
            f"site '{name}': the guide samples it from {type(guide_fn).__name__} "
            f"({kind[g]}) but the model's {type(model_fn).__name__} is {kind[m]}"
        )


def _check_shape(name, site):
    """A latent value may broadcast to its site's shape, never grow it (a guide with a plate
    the model lacks); observed data may (``sample("y", Normal(mu, 1), obs=y)`` with no plate:
    NumPyro sums the broadcast log density, and so does ppl), but must broadcast."""
    value_shape = jnp.shape(site["value"])
    fn_shape = site_shape(site)
    try:
        joint = jax.lax.broadcast_shapes(value_shape, fn_shape)
        fits = joint == fn_shape or site["is_observed"]
    except ValueError:
        fits = False
    if not fits:
        hint = "check the plates of model and guide"
        if site["is_observed"] and site.get("cond_indep_stack"):
            hint += (
                "; a subsampled plate (in the model, or in the guide, whose minibatch the "
                "model's plate takes) needs its data subsampled too: "
                "numpyro.subsample(data, event_dim=...) or data[idx]"
            )
        raise ValueError(
            f"site '{name}': value of shape {value_shape} does not fit the model's "
            f"distribution of shape {fn_shape} ({hint})"
        )


def particles(fn: Callable, num_particles: int) -> Callable:
    """``particles(fn, K)(*args)`` runs ``fn`` K times independently, vectorized with vmap.

    Returns ``fn``'s output stacked on a leading axis of size K. Inside an expectation,
    the K runs are K independent random choices; a ``reinforce(baseline="loo")`` site in
    ``fn`` uses as baseline the program's value with this particle's output replaced by
    the mean of the other particles' outputs (VIMCO-style for log weights).
    """
    return _particles(fn, num_particles)


SHARED_KEY = 0x7FFFFFFF  # fold_in(key, SHARED_KEY) is none of split(key, K) for K < 2^31


def _particles(fn: Callable, num_particles: int, shared_key: bool = False) -> Callable:
    """:func:`particles`; ``shared_key=True``: ``fn(shared, *args)`` also gets one key
    common to the K runs, derived from the particles' key without changing their K keys
    (the random stream of the runs is :func:`particles`' own)."""
    if not callable(fn):
        raise TypeError(f"ppl.particles needs a callable, got {type(fn).__name__}")
    num_particles = count(num_particles, "num_particles", "ppl.particles")

    def run(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Cannot generate JAX PRNG key")
            key = numpyro.prng_key()
        if key is None:
            raise RuntimeError(
                "ppl.particles needs a random key: call it inside ppl.expectation or under "
                "numpyro.handlers.seed"
            )
        keys = random.split(key, num_particles)
        if shared_key:
            args = (random.fold_in(key, SHARED_KEY), *args)
        parent = current_run()

        def vectorized(keys):
            if parent is None:
                return jax.vmap(lambda k: seed(fn, k)(*args, **kwargs))(keys)
            return _particles_in_run(parent, fn, num_particles, keys, args, kwargs)

        place = _particle_placement()  # None unless inside ppl.sharding.shard
        return vectorized(keys) if place is None else place(vectorized, keys)

    return run


def _particles_in_run(parent: RunState, fn, K, keys, args, kwargs):
    flat, count = parent.particle

    def one(k, key):
        child = RunState(
            parent.mode,
            combo=parent.combo,
            target=parent.target,
            sites=parent.sites,
            particle=(flat * K + k, count * K),
            parent=parent,
        )
        with apply_strategies(state=child, isolate=True), seed(rng_seed=key):
            out = fn(*args, **kwargs)
        local = {o: (th, cf) for o, (th, cf, _) in child.local.items()}
        return out, (child.score, child.extra, child.loo_score, local), child.has_loo

    has_loo = []

    def traced(k, key):
        out, recs, loo = one(k, key)
        has_loo.append(loo)
        return out, recs

    out, (score, extra, loo_score, local) = jax.vmap(traced)(jnp.arange(K), keys)
    order = parent.next_order()
    if parent.mode == "discover":
        if has_loo[0] and parent.in_particles():
            raise ValueError(
                "reinforce baseline 'loo' is supported in non-nested ppl.particles only"
            )
        parent.sites.append(
            SiteInfo("particles", order, "particles", K * count, loo=has_loo[0], num_particles=K)
        )
        return out
    parent.score = parent.score + jnp.sum(score)
    parent.extra = parent.extra + jnp.sum(extra)
    for o, (th, cf) in local.items():  # (K, P, n) -> (P, K * n)
        p = th.shape[1]
        parent.local[o] = (
            jnp.swapaxes(th, 0, 1).reshape(p, -1),
            jnp.swapaxes(cf, 0, 1).reshape(p, -1),
            parent.top.enum_lw,
        )
    info = parent.by_order[order]
    if info.loo:
        if parent.mode in ("main", "provenance"):
            parent.loo[order] = (loo_score, parent.enum_lw)
        elif parent.mode == "replay":
            target = parent.target
            hit = target.order == order
            k = jnp.clip(target.element, 0, K - 1)

            def leave_one_out(leaf):
                others = (jnp.sum(leaf, axis=0) - leaf[k]) / max(K - 1, 1)
                return jnp.where(hit, leaf.at[k].set(others), leaf)

            out = jax.tree.map(leave_one_out, out)
    return out
