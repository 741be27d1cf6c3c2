"""A ``scan`` chain's steps scored all at once, for model-side enumeration.

NumPyro's ``scan_enum`` stacks the trace of a ``scan`` body by running the body in a
``lax.scan``: T sequential steps, and every per-step array (a homogeneous chain's
transition matrix too) copied T times. Under enumeration the steps rarely depend on each
other: the carry is the previous step's enumerated value, which is the same array (the
site's support, ``arange(S)`` on its dim) at every step. Then

    trace_t = body(carry_t, x_t),   carry_t = K for every t,

and the body is evaluated at every step at once with ``jax.vmap``. Carry leaves that do
change (a step counter, data) get their sequence from a ``lax.scan`` over the carry alone
(the rest of the body is dead code there). A distribution parameter of the stacked trace that
depends on nothing that changes with t stays unstacked, with a time dim of size 1 (the
site's value keeps all T steps, which names the time dim), so a homogeneous chain's
transitions are scored once, not T times.

:func:`time_parallel_scans` installs this for the enumeration trace of
:func:`ppl.core.model_enum.collapsed_terms`; anything it cannot prove step-independent
(a carry that is not the support it was given) runs NumPyro's ``lax.scan`` unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import types
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.extend.core import Literal
from numpyro.primitives import Messenger

from .distributions import base_distribution

_scan_module = importlib.import_module("numpyro.contrib.control_flow.scan")
_SCAN_WRAPPER = _scan_module.scan_wrapper
_ARANGE_SUPPORT = (dist.CategoricalProbs, dist.CategoricalLogits, dist.BernoulliProbs)
_ARANGE_SUPPORT += (dist.BernoulliLogits,)

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("ppl_time_parallel", default=True)
_DECISIONS: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "ppl_scan_decisions", default=None
)


@contextlib.contextmanager
def sequential_scans():
    """Within: ``scan`` bodies run as NumPyro runs them (for comparisons and benchmarks)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


class time_parallel_scans(Messenger):
    """Handler: enumerated ``scan`` bodies are evaluated at all steps at once (see module
    docstring). It records the enumerated values it sees: how it knows that a carry is a
    site's support."""

    def __init__(self, fn=None):
        self.state = {"supports": {}}
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "control_flow" and msg["fn"] is _SCAN_WRAPPER and _ENABLED.get():
            msg["fn"] = partial(_scan_wrapper, self.state)

    def postprocess_message(self, msg):
        if msg["type"] != "sample" or msg.get("is_observed"):
            return
        if msg["name"] not in (msg.get("infer") or {}).get("dim_to_name", {}).values():
            return  # not enumerated here
        if not isinstance(base_distribution(msg["fn"]), _ARANGE_SUPPORT):
            return
        value = msg["value"]
        shape = jnp.shape(value)
        if sum(d > 1 for d in shape) <= 1:
            support = np.arange(int(np.prod(shape, dtype=int))).reshape(shape)
            self.state["supports"][id(value)] = (value, support)


@contextlib.contextmanager
def recorded_decisions():
    """Within: each enumerated ``scan`` appends how its steps ran to the yielded list:
    ``"parallel"`` (constant carry), ``"parallel, carry scanned"`` (the varying carry
    leaves or keys from a ``lax.scan`` of the carry alone) or ``"sequential: <why>"``."""
    decisions = []
    token = _DECISIONS.set(decisions)
    try:
        yield decisions
    finally:
        _DECISIONS.reset(token)


def _record(decision: str) -> None:
    decisions = _DECISIONS.get()
    if decisions is not None:
        decisions.append(decision)


def _scan_wrapper(state, *args, **kwargs):
    """NumPyro's ``scan_wrapper``, with the rolling ``lax.scan`` of ``scan_enum`` replaced
    by :func:`_time_parallel_scan` (NumPyro's own unrolled first steps, shape bookkeeping
    and trace post-processing are kept)."""
    if not kwargs.get("enum"):
        return _SCAN_WRAPPER(*args, **kwargs)
    proxy = types.SimpleNamespace(**vars(jax.lax))
    proxy.scan = partial(_time_parallel_scan, state)
    saved = _scan_module.lax
    _scan_module.lax = proxy
    try:
        return _SCAN_WRAPPER(*args, **kwargs)
    finally:
        _scan_module.lax = saved


def _dependencies(jaxpr):
    """For each output of ``jaxpr``: the set of inputs it depends on (-1: a constant
    captured from outside). Conservative: an equation's outputs depend on all its inputs."""
    deps = {v: frozenset([i]) for i, v in enumerate(jaxpr.invars)}
    deps.update({v: frozenset([-1]) for v in jaxpr.constvars})
    for eqn in jaxpr.eqns:
        d = frozenset().union(
            *(deps.get(v, frozenset()) for v in eqn.invars if not isinstance(v, Literal))
        )
        deps.update({v: d for v in eqn.outvars})
    return [frozenset() if isinstance(v, Literal) else deps[v] for v in jaxpr.outvars]


def _evaluate_constants(jaxpr, outvars):
    """Concrete values of outputs that depend on no input (iota, reshapes, literals)."""
    needed = {v for v in outvars if not isinstance(v, Literal)}
    eqns = []
    for eqn in reversed(jaxpr.eqns):
        if any(v in needed for v in eqn.outvars):
            eqns.append(eqn)
            needed.update(v for v in eqn.invars if not isinstance(v, Literal))
    env = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    with jax.ensure_compile_time_eval():
        for eqn in reversed(eqns):
            params = eqn.primitive.get_bind_params(eqn.params)
            out = eqn.primitive.bind(*map(read, eqn.invars), **params)
            out = out if eqn.primitive.multiple_results else [out]
            env.update(zip(eqn.outvars, out, strict=True))
        return [np.asarray(read(v)) for v in outvars]


def _time_parallel_scan(state, body, init, xs, length=None, reverse=False, **kwargs):
    """``lax.scan(body, init, xs, length, reverse)`` for ``scan_enum``'s rolling steps,
    where ``init = (step index, key, carry)`` and ``body`` returns ``(init', (trace, ys))``."""

    def sequential(why):
        _record(f"sequential: {why}")
        return jax.lax.scan(body, init, xs, length, reverse, **kwargs)

    n = length if length is not None else jax.tree.leaves(xs)[0].shape[0]
    if kwargs or n < 2:
        return sequential("scan options" if kwargs else "fewer than 2 steps")
    step0, key0, carry0 = init
    carry_leaves, carry_tree = jax.tree.flatten(carry0)
    key_leaves, key_tree = jax.tree.flatten(key0)
    x_leaves, x_tree = jax.tree.flatten(xs)
    nk, nc = len(key_leaves), len(carry_leaves)
    out_tree = []

    def one_step(i, keys, carry, x):
        wrapped = (i, jax.tree.unflatten(key_tree, keys), jax.tree.unflatten(carry_tree, carry))
        (_, _, new_carry), out = body(wrapped, jax.tree.unflatten(x_tree, x))
        new_leaves, new_tree = jax.tree.flatten(new_carry)
        paths_leaves, tree = jax.tree_util.tree_flatten_with_path(out)
        out_leaves = [leaf for _, leaf in paths_leaves]
        # leaves kept stacked: every ``ys`` leaf (NumPyro concatenates them with the
        # unrolled steps' outputs) and each site's value (its stacked shape names the
        # time dim in the enumeration trace)
        stacked = [
            path[0].idx == 1 or jax.tree_util.DictKey("value") in path for path, _ in paths_leaves
        ]
        out_tree[:] = [tree, stacked]
        if new_tree != carry_tree:
            raise _NotParallel
        return new_leaves, out_leaves

    x_first = [x[0] for x in x_leaves]
    try:
        closed = jax.make_jaxpr(one_step)(step0, key_leaves, carry_leaves, x_first)
    except _NotParallel:
        return sequential("the body changes its carry's structure")
    jaxpr = closed.jaxpr
    deps = _dependencies(jaxpr)
    new_deps, out_deps = deps[:nc], deps[nc:]
    # inputs, in make_jaxpr's flat order: step index, keys, carry leaves, x leaves
    i_in, key_in = 0, set(range(1, 1 + nk))
    carry_in = list(range(1 + nk, 1 + nk + nc))
    x_in = set(range(1 + nk + nc, len(jaxpr.invars)))

    # carry leaves that are a site's support at the first step and stay it
    constant = {}
    supports = state["supports"]
    for j, leaf in enumerate(carry_leaves):
        known = supports.get(id(leaf))
        if new_deps[j] or known is None or known[0] is not leaf:
            continue
        (value,) = _evaluate_constants(jaxpr, [jaxpr.outvars[j]])
        if value.shape == known[1].shape and np.array_equal(value, known[1]):
            constant[j] = jnp.asarray(value, dtype=jnp.result_type(leaf))
    varying_carry = [j for j in range(nc) if j not in constant]
    varying = {i_in, *x_in, *(carry_in[j] for j in varying_carry)}
    needs_key = any(d & key_in for d in out_deps) or any(
        new_deps[j] & key_in for j in varying_carry
    )
    if needs_key:
        varying |= key_in

    # per-step inputs in position order (a reversed scan visits position n-1 first)
    steps = jnp.arange(n)
    positions_step = (n - 1 - steps) if reverse else steps
    if varying_carry or needs_key:

        def carry_only(wrapped, x):
            new_wrapped, _ = body(wrapped, x)
            return new_wrapped, wrapped

        final, inputs = jax.lax.scan(carry_only, init, xs, length, reverse)
        step_i, keys_seq, carry_seq = inputs
        key_seq_leaves = jax.tree.leaves(keys_seq)
        carry_seq_leaves = jax.tree.leaves(carry_seq)
    else:
        step_i = step0 + positions_step
        key_seq_leaves, carry_seq_leaves = None, None

    carry_args = [constant[j] if j in constant else carry_seq_leaves[j] for j in range(nc)]
    carry_axes = [None if j in constant else 0 for j in range(nc)]
    key_args = key_seq_leaves if needs_key else key_leaves
    key_axes = [0 if needs_key else None] * nk
    batched = [bool(d & varying) or s for d, s in zip(out_deps, out_tree[1], strict=True)]

    def outputs(i, keys, carry, x):
        return one_step(i, keys, carry, x)[1]

    out_axes = [0 if b else None for b in batched]
    try:
        outs = jax.vmap(outputs, in_axes=(0, key_axes, carry_axes, 0), out_axes=out_axes)(
            step_i, key_args, carry_args, x_leaves
        )
    except ValueError:  # an output the analysis called step-independent is not
        return sequential("an output varies with the step")
    outs = [o if b else jnp.expand_dims(o, 0) for o, b in zip(outs, batched, strict=True)]
    trace, ys = jax.tree.unflatten(out_tree[0], outs)
    if varying_carry or needs_key:
        _record("parallel, carry scanned")
        return final, (trace, ys)
    _record("parallel")  # every carry leaf is constant: the final carry is those constants
    final_carry = jax.tree.unflatten(carry_tree, [constant[j] for j in range(nc)])
    return (step0 + n, key0, final_carry), (trace, ys)


class _NotParallel(Exception):
    """The body changes its carry's structure: run it as NumPyro does."""
