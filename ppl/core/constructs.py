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
from numpyro.primitives import Messenger

from ..sharding import _particle_placement
from .distributions import log_prob
from .finite import check_site
from .runtime import RunState, SiteInfo, apply_strategies, current_run, record_terms


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
    """Scaled log density of one traced sample site, per batch element."""
    lp = log_prob(site["fn"], site["value"])
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
    if fixed == "params":
        fn = jax.tree.map(jax.lax.stop_gradient, fn)
    else:
        value = jax.lax.stop_gradient(value)
    lp = log_prob(fn, value)
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
            values[name] = site["value"]
            if not site["is_observed"]:
                arrays[name] = site_log_prob_array(site)
                lp_stl = lp_stl + jnp.sum(site_log_prob_fixed(site, "params"))
        elif site["type"] == "plate" and site["args"][1] not in (None, site["args"][0]):
            values[name] = site["value"]  # a subsampled plate: the model sees the same minibatch
    for name, lp in arrays.items():
        check_site(name, tr[name], lp, "ppl.simulate")
    record_terms(tr, arrays, -1.0)
    return Simulation(values, _total(arrays), tr, lp_stl)


def _total(arrays):
    return sum((jnp.sum(a) for a in arrays.values()), start=jnp.zeros(()))


class _require_values(Messenger):
    def __init__(self, fn, values, what):
        self.values, self.what = values, what
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] not in self.values:
            raise ValueError(
                f"{self.what}: latent site '{msg['name']}' of the model has no value; "
                f"given values for {sorted(self.values)}"
            )


class _fix_params(Messenger):
    def postprocess_message(self, msg):
        if msg["type"] == "param":
            msg["value"] = jax.lax.stop_gradient(msg["value"])


def density(model: Callable, values: dict, *args, fix_params: bool = False, **kwargs):
    """Log joint density ``log p(values, observations)`` of ``model`` (scaled by plates).

    Every latent site of ``model`` must have a value in ``values`` (extra entries are
    ignored); ``values`` may be a :func:`ppl.simulate` result, whose sites are then also
    checked against the model's (discrete vs continuous). The model's sites are not
    random choices of the enclosing expectation.
    ``fix_params=True`` holds the model's ``numpyro.param`` values fixed (stop-gradient).
    """
    guide_trace = None
    if isinstance(values, Simulation):
        guide_trace, values = values.trace, values.values
    if not isinstance(values, dict):
        raise TypeError(
            f"ppl.density: values must be a dict of site values or a ppl.simulate result, "
            f"got {type(values)}"
        )
    fn = _require_values(substitute(model, data=values), values, "ppl.density")
    if fix_params:
        fn = _fix_params(fn)
    with block(hide_fn=lambda msg: msg["type"] == "sample"):
        tr = trace(fn).get_trace(*args, **kwargs)
    arrays = {}
    for name, site in tr.items():
        if site["type"] == "sample":
            _check_shape(name, site)
            if guide_trace is not None and not site["is_observed"] and name in guide_trace:
                _check_support(name, site, guide_trace[name])
            arrays[name] = site_log_prob_array(site)
            check_site(name, site, arrays[name], "ppl.density")
    record_terms(tr, arrays, 1.0)
    return _total(arrays)


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
    value_shape = jnp.shape(site["value"])
    fn_shape = tuple(site["fn"].shape())
    try:
        fits = jax.lax.broadcast_shapes(value_shape, fn_shape) == fn_shape
    except ValueError:
        fits = False
    if not fits:  # a value may broadcast to the site's shape, never grow it
        raise ValueError(
            f"site '{name}': value of shape {value_shape} does not fit the model's "
            f"distribution of shape {fn_shape} (check the plates of model and guide)"
        )


def particles(fn: Callable, num_particles: int) -> Callable:
    """``particles(fn, K)(*args)`` runs ``fn`` K times independently, vectorized with vmap.

    Returns ``fn``'s output stacked on a leading axis of size K. Inside an expectation,
    the K runs are K independent random choices; a ``reinforce(baseline="loo")`` site in
    ``fn`` uses as baseline the program's value with this particle's output replaced by
    the mean of the other particles' outputs (VIMCO-style for log weights).
    """
    if not callable(fn):
        raise TypeError(f"ppl.particles needs a callable, got {type(fn).__name__}")
    if not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(
            f"ppl.particles: num_particles must be a positive int, got {num_particles!r}"
        )

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
