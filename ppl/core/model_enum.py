"""Model-side enumeration: ``ppl.density`` sums out discrete model latents that have no value.

A model site marked ``infer={"enumerate": "parallel"}`` (NumPyro's ``config_enumerate``)
that is given no value is eliminated exactly by tensor variable elimination in log space,
with NumPyro's funsor machinery (``numpyro.contrib.funsor``: ``enum``, plates, ``markov``,
``scan``), as ``TraceEnum_ELBO`` does:

    log p(x, z_values) = sum_g scale_g * log sum_{e in g} prod_{f in g} exp(f)

The model's log factors are split into groups connected by enumerated variables. A factor
that touches none is an ordinary term of its own site; each group is contracted over its
enumerated variables and over every plate not shared by all of its factors, and is kept
per element of the plates all its factors share, so that Rao-Blackwellization and the
per-element plate corrections of ``ppl.expectation`` see it as one term per plate element
(whose provenance is every value its factors read). A ``markov`` chain costs
O(T S^(order+1)); a first-order ``scan`` chain is contracted by one ``lax.scan``
(:mod:`ppl.core.markov_chain`), so its program does not grow with T: the forward
algorithm, O(T S^2), where the rest of its group reduces to a vector over its first
step, else the product of its T transition matrices, O(T S^3); its steps are scored all
at once (:mod:`ppl.core.time_parallel`).

An element of an enumerated site that a ``mask`` hides is summed with weights 1/S, so
where nothing reads it (``obs_mask``'s unobserved site at an observed entry, a padded
step of a chain) it adds nothing, as ``TraceEnum_ELBO`` finds; NumPyro's enumerated
``log_density`` counts it with weight 1 (log S more; the same gradient).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections import OrderedDict, defaultdict
from typing import NamedTuple

import funsor
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.contrib.funsor import enum, plate_to_enum_plate, to_data, to_funsor
from numpyro.contrib.funsor import trace as packed_trace
from numpyro.contrib.funsor.infer_util import _get_shift, _shift_name
from numpyro.handlers import block
from numpyro.primitives import Messenger

from .distributions import base_distribution, site_log_density, support_log_prob
from .markov_chain import Chain, markov_factors
from .time_parallel import time_parallel_scans

funsor.set_backend("jax")


class EnumerationError(ValueError):
    """A model whose enumerated sites cannot be summed out as written (the site is named)."""


class CollapsedTerm(NamedTuple):
    """One log-density term of a model with enumerated sites: per element of ``frames``."""

    name: str  # the site's name, or "enum(z1,z2)" for an eliminated group
    lp: object  # array aligned to the plate dims of ``frames`` (plate-scaled)
    frames: tuple  # plates the term is kept per element of: CondIndepStackFrame
    site: dict | None  # the trace site of a single-site term (None for a group)


def is_marked(site) -> bool:
    """NumPyro's marker for model-side enumeration."""
    return (site.get("infer") or {}).get("enumerate") == "parallel"


def check_enumerable(name: str, fn, sample_shape=()) -> None:
    """A site marked for enumeration must have finite support, scalar events and no
    ``sample_shape``."""
    if not getattr(base_distribution(fn), "has_enumerate_support", False):
        raise EnumerationError(
            f"site '{name}' is marked infer={{'enumerate': 'parallel'}} but "
            f"{type(base_distribution(fn)).__name__} has no finite support to sum over; "
            "remove the mark (and give the site a value, e.g. sample it in the guide)"
        )
    if fn.event_shape:  # .to_event(): NumPyro enumerates batch elements, not events
        raise EnumerationError(
            f"site '{name}' is marked infer={{'enumerate': 'parallel'}} but its "
            f"{type(fn).__name__} has event shape {fn.event_shape} (from .to_event()): "
            "enumeration sums over one value per batch element; put those dims in a "
            "numpyro.plate instead of .to_event(), or sample the site in the guide"
        )
    if tuple(sample_shape or ()):
        raise EnumerationError(
            f"site '{name}' is marked infer={{'enumerate': 'parallel'}} and has "
            f"sample_shape={tuple(sample_shape)}: NumPyro's enum gives the site one value "
            "per enumerated state, not one per sample, so its samples would share one "
            "value (TraceEnum_ELBO returns that wrong number without an error). Put those "
            "dims in a numpyro.plate (or .expand() the distribution) instead of sample_shape"
        )


_INDEX_SUPPORT = (
    dist.CategoricalProbs,
    dist.CategoricalLogits,
    dist.BernoulliProbs,
    dist.BernoulliLogits,
    dist.BinomialProbs,
    dist.BinomialLogits,
)


def support_values(fn):
    """The values of ``fn``'s support, ``(S, *batch)``, or ``None`` where they are the
    indices ``arange(S)``, the value NumPyro's ``enum`` gives an enumerated site (true of
    ``Categorical``, ``Bernoulli``, ``Binomial``; not of ``DiscreteUniform(-2, 2)``)."""
    base = base_distribution(fn)
    if isinstance(base, _INDEX_SUPPORT):
        return None
    support = base.enumerate_support(expand=False)
    try:
        concrete = np.asarray(support)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return support  # traced bounds: map to be safe
    index = np.arange(concrete.shape[0]).reshape((-1,) + (1,) * (concrete.ndim - 1))
    return None if np.array_equal(concrete, np.broadcast_to(index, concrete.shape)) else support


def check_index_enumeration(trace, who: str) -> None:
    """Refuse a site marked for enumeration whose support is not 0..S-1, in a program
    whose enumeration is NumPyro's own (its enumerated ``log_density``, which NumPyro's and
    ppl's HMC / NUTS sample): there it would be scored, and fed to the model, as the
    indices 0..S-1 instead of its values, a wrong posterior without an error."""
    for name, site in trace.items():
        if site["type"] != "sample" or site.get("is_observed") or not is_marked(site):
            continue
        if not getattr(site["fn"], "has_enumerate_support", False):
            continue  # NumPyro's enum leaves it alone
        check_enumerable(name, site["fn"], (site.get("kwargs") or {}).get("sample_shape"))
        support = support_values(site["fn"])
        if support is not None:
            base = base_distribution(site["fn"])
            raise EnumerationError(
                f"{who}: site '{name}' is marked for enumeration and its "
                f"{type(base).__name__} support is not 0..{jnp.shape(support)[0] - 1}: "
                "NumPyro's enumerated log density (numpyro.contrib.funsor), which this "
                "kernel samples, would score it and feed the model the indices 0..S-1 in "
                "place of its values. Sample an index instead (i ~ Categorical, value = "
                "support[i]), or fit the model with a ppl objective, whose enumeration "
                "uses the values"
            )


class _support_values(Messenger):
    """NumPyro's ``enum`` gives an enumerated site the indices ``arange(S)`` as its value
    (``numpyro.contrib.funsor.enum``), which are the support only where it is {0, ..., S-1}:
    ``TraceEnum_ELBO`` scores a ``DiscreteUniform(-2, 2)`` site, and feeds the model, the
    values 0..4. Installed inside ``enum``, this handler puts the support's values in
    their place (on the site's enumeration dim), before the trace records them."""

    def postprocess_message(self, msg):
        infer = msg.get("infer") or {}
        if (
            msg["type"] != "sample"
            or msg.get("is_observed")
            or not msg.get("done")
            or infer.get("enumerate") != "parallel"
            or infer.get("_ppl_support_values")
        ):
            return
        support = support_values(msg["fn"])
        if support is None:
            return
        # enum's value: arange(S) on the site's enumeration dim, size 1 right of it
        value_shape = jnp.shape(msg["value"])
        batch = tuple(jnp.shape(support)[1:])
        pad = len(value_shape) - 1 - len(batch)
        if pad < 0 or value_shape[0] != jnp.shape(support)[0]:
            raise EnumerationError(
                f"site '{msg['name']}': its support {tuple(jnp.shape(support))} does not fit "
                f"the enumerated value's shape {value_shape}"
            )
        msg["value"] = jnp.reshape(support, (value_shape[0],) + (1,) * pad + batch)
        infer["_ppl_support_values"] = True


def max_plate_nesting(trace) -> int:
    """How many batch dims the model's plates use (from a plain trace)."""
    dims = [-f.dim for s in trace.values() for f in s.get("cond_indep_stack") or [] if f.dim]
    return max(dims, default=0)


_DECLARED_NESTING: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "ppl_max_plate_nesting", default=None
)


@contextlib.contextmanager
def declared_plate_nesting(nesting: int | None):
    """Within: model-side enumeration puts its dims left of ``nesting`` plate dims, as
    ``TraceEnum_ELBO(max_plate_nesting=nesting)`` does (``None``: as many as the model's
    plates use)."""
    token = _DECLARED_NESTING.set(nesting)
    try:
        yield
    finally:
        _DECLARED_NESTING.reset(token)


def _batch_ndim(site) -> int:
    """Dims of a sample site's log density (its value's batch dims broadcast with the
    distribution's): observed data may have dims outside any plate (``obs=y`` of shape
    (n,) with no plate), which NumPyro sums and ``TraceEnum_ELBO`` counts in its guessed
    ``max_plate_nesting``."""
    fn = site["fn"]
    value_shape = jnp.shape(site["value"])
    value_batch = value_shape[: max(len(value_shape) - len(fn.event_shape), 0)]
    try:
        return len(jax.lax.broadcast_shapes(value_batch, tuple(fn.batch_shape)))
    except ValueError:
        return len(fn.batch_shape)  # a shape error, reported by name later


def enum_plate_nesting(trace, who: str) -> int:
    """Batch dims left free for the model's plates and unplated data dims: the declared
    ``max_plate_nesting``, or the model's own (the most any site's log density uses, as
    ``TraceEnum_ELBO`` guesses it); a plate or data dim beyond the declared number is
    refused by name."""
    declared = _DECLARED_NESTING.get()
    plates = max_plate_nesting(trace)
    sites = [s for s in trace.values() if s["type"] == "sample"]
    used = max([plates, *(_batch_ndim(s) for s in sites)])
    if declared is None:
        return used
    if used > declared and plates <= declared:
        site = max(sites, key=_batch_ndim)
        raise EnumerationError(
            f"{who}: site '{site['name']}' has a log density of {_batch_ndim(site)} batch "
            f"dims (data dims outside any plate count too) but max_plate_nesting="
            f"{declared}; enumerated dims would collide with them. Raise max_plate_nesting "
            f"to at least {used} (or leave it unset: ppl reads it from the model)"
        )
    check_declared_nesting(declared, (trace,), who)  # a plate beyond it
    return declared


def check_declared_nesting(declared: int | None, traces, who: str) -> None:
    """Refuse by name a plate of model or guide (plain traces) that uses a batch dim beyond
    the declared ``max_plate_nesting``, with or without enumerated sites, as
    ``TraceEnum_ELBO`` does ("Ran out of free dims"): the declaration contradicts the
    program, and ignoring it silently would hide that."""
    if declared is None:
        return
    for tr in traces:
        for site in tr.values():
            frames = site.get("cond_indep_stack") or [] if site["type"] == "sample" else []
            for f in frames:
                if f.dim is not None and -f.dim > declared:
                    raise EnumerationError(
                        f"{who}: plate '{f.name}' (site '{site['name']}') uses batch dim "
                        f"{f.dim} but max_plate_nesting={declared}; NumPyro's "
                        "TraceEnum_ELBO refuses it too. Raise max_plate_nesting to at "
                        f"least {-f.dim} (or leave it unset: ppl reads it from the model)"
                    )


def _scale_of(site) -> float:
    scale = site.get("scale")
    if scale is None:
        return 1.0
    try:
        arr = np.asarray(scale)
    except jax.errors.TracerArrayConversionError:
        raise EnumerationError(
            f"site '{site['name']}': handlers.scale with a traced or array scale cannot be "
            "combined with model-side enumeration (the scale must be a concrete number)"
        ) from None
    if arr.size != 1:
        raise EnumerationError(
            f"site '{site['name']}': enumeration needs a scalar scale; got shape {arr.shape}"
        )
    return float(arr.reshape(()))


def _base_name(name: str) -> str:
    return _shift_name(name, -_get_shift(name))


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


class _own_infer(Messenger):
    """Give each site its own ``infer`` dict: the enumeration trace writes into it, and a
    dict shared between sites (``E = {"enumerate": "parallel"}`` at module level) would
    otherwise carry one site's dims into another's."""

    def process_message(self, msg):
        if msg["type"] == "sample":
            msg["infer"] = dict(msg.get("infer") or {})


def collapsed_terms(fn, args, kwargs, nesting: int) -> list[CollapsedTerm]:
    """Run ``fn`` (the model with values substituted) under enumeration and eliminate.

    Returns the terms in trace order: eliminated groups, and ordinary sites (``lp`` None:
    the caller scores them as it scores a model without enumerated sites).
    """
    tracer = packed_trace(time_parallel_scans(_own_infer(fn)))
    with block(hide_fn=lambda msg: msg["type"] == "sample"):
        with plate_to_enum_plate(), enum(first_available_dim=-nesting - 1), _support_values():
            tr = tracer.get_trace(*args, **kwargs)

    plate_dims, frames_by_name = {}, {}
    for site in tr.values():
        for f in site.get("cond_indep_stack") or []:
            if f.dim is not None:
                plate_dims[f.name] = f.dim
                frames_by_name[f.name] = f
    samples = [s for s in tr.values() if s["type"] == "sample"]
    enumerated = {
        s["name"]
        for s in samples
        if not s["is_observed"] and s["name"] in s["infer"]["dim_to_name"].values()
    }
    unobserved = frozenset(s["name"] for s in samples if not s["is_observed"])

    # log factors, unscaled (a common scale is applied after contraction)
    factors = []  # (funsor, site names)
    time_factors, time_sites = defaultdict(list), defaultdict(list)
    time_init, time_markov = defaultdict(frozenset), defaultdict(frozenset)
    history = 0
    for site in samples:
        dim_to_name = site["infer"]["dim_to_name"]
        if site["name"] in enumerated:  # its value is its support, on its own dim
            dim = next(d for d, n in dim_to_name.items() if n == site["name"])
            states = jnp.shape(site["value"])[dim]
            # an element a mask hides is summed with uniform weights 1/S: where nothing
            # reads it (obs_mask's unobserved site at an observed entry, a padded step)
            # it contributes log 1, as an element that does not exist
            lp = support_log_prob(site["fn"], site["value"], dim, masked=-np.log(states))
        else:
            lp = site_log_density(site)
        # dims no enumerated site or plate names (no name, or the enum trace's default
        # name for a dim no plate claims): refused left of the plate dims, where they
        # can only be a released enumeration dim; data dims outside any plate otherwise,
        # summed, as NumPyro sums them
        free = tuple(
            d
            for d in range(-jnp.ndim(lp), 0)
            if jnp.shape(lp)[d] > 1
            and (d not in dim_to_name or dim_to_name[d].startswith("_pyro_dim_"))
        )
        _refuse_leaked_enum_dims(site, [d for d in free if d < -nesting])
        if site["name"] in enumerated:
            _refuse_unplated_batch(site, [d for d in free if d >= -nesting], jnp.shape(lp))
        if free:
            lp = jnp.sum(lp, axis=free, keepdims=True)
            dim_to_name = OrderedDict((d, n) for d, n in dim_to_name.items() if d not in free)
        if all(d == 1 for d in jnp.shape(lp)) and not dim_to_name:
            lp = jnp.reshape(lp, ())
        factor = to_funsor(lp, output=funsor.Real, dim_to_name=dim_to_name)
        time_var = None
        for dim, name in dim_to_name.items():
            if name.startswith("_time"):
                # the chain's length from the site's value too: a factor constant in time
                # (a homogeneous transition) has size 1 there and no time input
                value = site["value"]
                batch = jnp.shape(value)[: jnp.ndim(value) - site["fn"].event_dim]
                full = jax.lax.broadcast_shapes(jnp.shape(lp), batch)
                time_var = funsor.Variable(name, funsor.Bint[full[dim]])
                history = max(history, max(_get_shift(n) for n in dim_to_name.values()))
                break
        if time_var is None:
            factors.append((factor, [site["name"]]))
            continue
        time_factors[time_var].append(factor)
        time_sites[time_var].append(site["name"])
        time_init[time_var] |= frozenset(n for n in dim_to_name.values() if n.startswith("_PREV_"))
    if time_factors and history == 0:
        raise EnumerationError(
            f"scan sites {sorted({n for v in time_sites.values() for n in v})}: a scan whose "
            "steps share no enumerated state cannot be eliminated here; use a plate instead"
        )
    for time_var, init_vars in time_init.items():
        for var in init_vars:
            current = _base_name(var)
            names = tr[current]["infer"]["dim_to_name"].values()
            if var in names:
                time_markov[time_var] |= frozenset(names)
    if time_factors:
        markov = markov_factors(
            time_factors, time_init, time_markov, unobserved, frozenset(plate_dims), history
        )
        for time_var, factor in zip(time_factors, markov, strict=True):
            factors.append((factor, time_sites[time_var]))

    # groups: factors connected through enumerated variables
    def enum_inputs(factor):
        return {_base_name(k) for k in factor.inputs if _base_name(k) in enumerated}

    _refuse_reads_from_inner_plates(tr, factors, enum_inputs)

    uf = _UnionFind()
    for i, (factor, _) in enumerate(factors):
        uf.find(("f", i))
        for var in enum_inputs(factor):
            uf.union(("f", i), ("v", var))
    groups = OrderedDict()
    for i in range(len(factors)):
        groups.setdefault(uf.find(("f", i)), []).append(i)

    terms = []
    for members in groups.values():
        names = [n for i in members for n in factors[i][1]]
        group_enum = {v for i in members for v in enum_inputs(factors[i][0])}
        if not group_enum:  # an ordinary site: its own term, as without enumeration
            site = tr[names[0]]
            terms.append(
                CollapsedTerm(site["name"], None, tuple(site.get("cond_indep_stack") or ()), site)
            )
            continue
        group = [factors[i][0] for i in members]
        if any(isinstance(f, Chain) for f in group):
            term = _forward(tr, group, names, group_enum, plate_dims)
            if term is not None:
                terms.append(term)
                continue
            group = [f.product() if isinstance(f, Chain) else f for f in group]
        terms.append(_contract(tr, group, names, group_enum, plate_dims, frames_by_name))
    return terms


def _forward(tr, group, names, group_enum, plate_dims) -> CollapsedTerm | None:
    """A group of one chain and factors over its first step only, outside plates: the
    forward algorithm (:meth:`Chain.forward`); None where the group is not of that form."""
    chains = [f for f in group if isinstance(f, Chain)]
    others = [f for f in group if not isinstance(f, Chain)]
    if len(chains) != 1:
        return None
    (chain,) = chains
    inputs = frozenset().union(*(f.inputs for f in group))
    if inputs & frozenset(plate_dims):
        return None
    currs = set(chain.step.values())
    if any(set(f.inputs) & currs for f in others):
        return None
    if others:
        other_inputs = frozenset().union(*(f.inputs for f in others))
        with funsor.interpretations.lazy:
            alpha = funsor.sum_product.sum_product(
                funsor.ops.logaddexp,
                funsor.ops.add,
                others,
                eliminate=other_inputs - frozenset(chain.step),
                plates=frozenset(),
            )
        alpha = funsor.optimizer.apply_optimizer(alpha)
    else:
        alpha = funsor.Tensor(jnp.zeros((), chain.dtype))
    lp = chain.forward(alpha)
    if lp is None:
        return None
    scale = _common_scale(tr, names, group_enum)
    label = f"enum({','.join(sorted(group_enum))})"
    return CollapsedTerm(label, lp if scale == 1.0 else scale * lp, (), None)


def _refuse_leaked_enum_dims(site, leaked) -> None:
    """A site whose log density varies along enumeration dims ``leaked`` (left of the
    plate dims) that name no enumerated site read an enumerated value after the
    ``markov`` / ``scan`` context that enumerated it had ended (the carry a ``scan``
    returns, the last value of a ``markov`` loop): its dim was released, so nothing says
    which site it belongs to. Summing along it would be a wrong number; NumPyro's
    ``TraceEnum_ELBO`` fails on such a model with a reshape error."""
    if leaked:
        raise EnumerationError(
            f"site '{site['name']}': its log density varies along enumeration dim(s) "
            f"{leaked}, which name no enumerated site: it reads an enumerated value outside "
            "the markov / scan context that enumerated it (the carry a scan returns, or the "
            "last value of a markov loop, used after the loop). Score it inside that "
            "context (in the scan body / the last markov step), or sample the value in the "
            "guide"
        )


def _site_plates(site) -> frozenset:
    return frozenset(f.name for f in site.get("cond_indep_stack") or [] if f.dim is not None)


def _refuse_reads_from_inner_plates(tr, factors, enum_inputs) -> None:
    """A site that reads an enumerated site of a plate it is not in (a likelihood outside
    ``plate("p")`` fed by a ``z`` inside it): under the plate each element of z is its own
    variable, but NumPyro's enum gives z one value per state, so the outside site would
    see all elements share it. Contracting that gives a wrong number (``TraceEnum_ELBO``
    returns it: 7.06 where brute force gives 4.82, for 3 Bernoullis); refused by name."""
    for factor, names in factors:
        if len(names) != 1:  # a scan chain's stacked factor: plates checked by NumPyro
            continue
        reader = tr[names[0]]
        for var in enum_inputs(factor):
            missing = _site_plates(tr[var]) - _site_plates(reader)
            if var != reader["name"] and missing:
                raise EnumerationError(
                    f"site '{reader['name']}' reads the enumerated site '{var}' of plate(s) "
                    f"{sorted(missing)} but is not inside them: each element of '{var}' is "
                    "its own variable there, and enumeration gives them one shared value. "
                    f"Put '{reader['name']}' inside the plate, or sample '{var}' in the guide"
                )


def _refuse_unplated_batch(site, dims, shape) -> None:
    """An enumerated site whose elements vary along batch dims ``dims`` that no plate
    declares (``Bernoulli(probs)`` with a vector ``probs``, ``.expand([n])``, outside a
    plate): NumPyro's ``enum`` gives it one value per state, shared by those elements, so
    they cannot be summed out one by one; summing that shared value would be a wrong
    number (3 independent Bernoullis: 6.99 where brute force gives 3.80)."""
    if dims:
        sizes = tuple(shape[d] for d in dims)
        raise EnumerationError(
            f"site '{site['name']}' is enumerated and has batch dims {tuple(dims)} (sizes "
            f"{sizes}) that no numpyro.plate declares: its elements are independent draws "
            "that NumPyro's enum would give one shared value. Put the site (and the sites "
            "that read it) in a numpyro.plate of that size"
        )


def _common_scale(tr, names, group_enum) -> float:
    scales = {_scale_of(tr[n]) for n in names}
    if len(scales) != 1:
        detail = ", ".join(f"'{n}': {_scale_of(tr[n]):g}" for n in sorted(set(names)))
        raise EnumerationError(
            f"enumerated sites {sorted(group_enum)} and the sites they touch have different "
            f"scales ({detail}): log sum_z of a scaled joint is not the scaled log marginal. "
            "This happens when a global enumerated site has children in a subsampled plate "
            "or under handlers.scale; sample that site in the guide instead"
        )
    (scale,) = scales
    return scale


@contextlib.contextmanager
def _recursion_limit(limit: int):
    """Python's recursion limit raised to at least ``limit`` inside: funsor's optimizer
    walks a contraction's expression recursively, one level per factor of a ``markov``
    chain (T = 1000 steps overflowed the default 1000)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _contract(tr, group, names, group_enum, plate_dims, frames_by_name) -> CollapsedTerm:
    inputs = frozenset().union(*(f.inputs for f in group))
    group_plates = frozenset(k for k in inputs if k in plate_dims)
    outermost = frozenset.intersection(*(frozenset(f.inputs) & group_plates for f in group))
    eliminate = frozenset(k for k in inputs if _base_name(k) in group_enum)
    label = f"enum({','.join(sorted(group_enum))})"
    try:
        with funsor.interpretations.lazy:
            cost = funsor.sum_product.sum_product(
                funsor.ops.logaddexp,
                funsor.ops.add,
                group,
                eliminate=eliminate | (group_plates - outermost),
                plates=group_plates,
            )
        with _recursion_limit(2000 + 20 * len(group)):  # funsor recurses per factor
            cost = funsor.optimizer.apply_optimizer(cost)
    except (ValueError, NotImplementedError) as err:
        raise EnumerationError(
            f"sites {sorted(set(names))}: the enumerated sites {sorted(group_enum)} cannot be "
            f"summed out exactly with plates {sorted(group_plates)} ({err}); enumerate fewer "
            "sites or sample some of them in the guide"
        ) from err
    left = set(cost.inputs) - outermost
    if left:
        raise EnumerationError(
            f"sites {sorted(set(names))}: summing out {sorted(group_enum)} left the "
            f"variables {sorted(left)}; this structure cannot be eliminated exactly"
        )
    scale = _common_scale(tr, names, group_enum)
    kept = sorted(outermost, key=lambda p: plate_dims[p])
    lp = to_data(cost, name_to_dim=OrderedDict((p, plate_dims[p]) for p in kept))
    lp = jnp.asarray(lp)
    if scale != 1.0:
        lp = scale * lp
    frames = tuple(frames_by_name[p] for p in kept)
    return CollapsedTerm(label, lp, frames, None)
