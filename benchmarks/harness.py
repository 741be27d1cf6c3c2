"""Timing and profiling helpers: compile vs run time, jaxpr sizes, XLA cost analysis."""

from __future__ import annotations

import collections
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable

import jax
import jax.extend as jex
import jax.monitoring
import numpy as np

# JAX's compilation events: trace, lowering to MLIR, XLA compile (seconds, summed per run)
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_s: dict[str, float] = collections.defaultdict(float)
_listening = False


def _record_duration(event: str, duration: float, **_) -> None:
    _compile_s[event] += duration


def start_compile_clock() -> None:
    """Zero the compile-time clock (the JAX listener is registered on first use)."""
    global _listening
    if not _listening:
        jax.monitoring.register_event_duration_secs_listener(_record_duration)
        _listening = True
    _compile_s.clear()


def compile_seconds() -> float:
    """Seconds JAX spent compiling since :func:`start_compile_clock`."""
    return sum(_compile_s[e] for e in _COMPILE_EVENTS)


def _count_eqns(jaxpr, counter: Counter) -> int:
    """Equations of a (closed) jaxpr, sub-jaxprs (pjit, custom_jvp, cond, ...) included."""
    total = 0
    for eqn in jaxpr.eqns:
        counter[eqn.primitive.name] += 1
        total += 1
        for sub in jex.core.jaxprs_in_params(eqn.params):
            total += _count_eqns(sub, counter)
    return total


def jaxpr_stats(closed_jaxpr) -> dict:
    counter: Counter = Counter()
    n = _count_eqns(closed_jaxpr.jaxpr, counter)
    return {"eqns": n, "top_level_eqns": len(closed_jaxpr.jaxpr.eqns), "primitives": dict(counter)}


def _cost(compiled) -> dict:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # pragma: no cover - backend without cost analysis
        return {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    keys = ("flops", "transcendentals", "bytes accessed")
    return {k.replace(" ", "_"): float(cost[k]) for k in keys if k in cost}


class Compiled:
    """A function compiled with ``jax.jit``; records trace/lower, XLA-compile, first-call times."""

    def __init__(self, name: str, fn: Callable, args: tuple):
        self.name, self.args = name, args
        t0 = time.perf_counter()
        traced = jax.jit(fn).trace(*args)
        lowered = traced.lower()
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        jax.block_until_ready(self.compiled(*args))
        t3 = time.perf_counter()
        self.trace_lower_s = t1 - t0
        self.xla_compile_s = t2 - t1
        self.compile_s = t3 - t0  # first call, lowering included
        self.jaxpr = jaxpr_stats(traced.jaxpr)
        self.cost = _cost(self.compiled)
        text = _hlo_text(self.compiled)
        self.hlo_ops = _hlo_op_count(text)
        self.entry_ops = entry_op_kinds(text)

    def __call__(self, *args):
        return self.compiled(*(args or self.args))

    def time_once(self) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self.compiled(*self.args))
        return time.perf_counter() - t0


def _hlo_text(compiled) -> str | None:
    """The optimized HLO of ``compiled`` as text (None where the backend gives none)."""
    try:
        return compiled.as_text()
    except Exception:  # pragma: no cover
        return None


def _hlo_op_count(text: str | None) -> int | None:
    """Instructions in the optimized HLO (all computations, fusion bodies included)."""
    if text is None:
        return None
    return sum(
        1 for line in text.splitlines() if " = " in line and not line.startswith("HloModule")
    )


ENTRY_KINDS = ("fusion", "dot", "gather", "scatter", "loop")


def entry_op_kinds(text: str | None) -> dict[str, int] | None:
    """Kernels the optimized HLO runs outside its loops: the ENTRY computation's
    instructions of each kind in :data:`ENTRY_KINDS` (``loop``: a ``while``, or the ``call``
    XLA's CPU backend makes of a small one; its body runs per iteration), and ``other`` for
    the rest that compute (copies included; parameters, tuples, constants and bitcasts
    are free), in ``text``, a compiled program's ``as_text()``.

    Where a gradient's extra time is fixed rather than per step, this is where it runs."""
    if text is None:
        return None
    counts = dict.fromkeys((*ENTRY_KINDS, "other"), 0)
    free = ("parameter", "tuple", "get-tuple-element", "constant", "bitcast")
    in_entry = False
    for line in text.splitlines():
        if line.startswith("ENTRY "):
            in_entry = True
            continue
        if in_entry and line.startswith("}"):
            break
        rhs = line.split(" = ", 1)[1] if in_entry and " = " in line else ""
        m = re.search(r" ([a-z][a-z0-9-]*)\(", rhs)  # the op: the first word before a "("
        if m is None:
            continue
        op = "loop" if m.group(1) in ("while", "call") else m.group(1)
        if op in counts:
            counts[op] += 1
        elif op not in free:
            counts["other"] += 1
    return counts


def time_side_by_side(
    fns: list[Compiled],
    repeats: int,
    warmup: int,
    max_repeats: int | None = None,
    budget_s: float = 0.0,
) -> dict[str, dict]:
    """Median run time of each function; calls interleaved round-robin to share drift.

    At least ``repeats`` rounds (one call of each function per round); more, up to
    ``max_repeats``, while the rounds fit in ``budget_s`` (estimated from the warm-up).
    """
    warm = []
    for f in fns:
        warm.append(min([f.time_once() for _ in range(max(warmup, 1))]))
    if max_repeats is not None and budget_s > 0:
        repeats = int(min(max_repeats, max(repeats, budget_s / max(sum(warm), 1e-9))))
    times: dict[str, list[float]] = {f.name: [] for f in fns}
    for r in range(repeats):
        order = fns[r % len(fns) :] + fns[: r % len(fns)]  # rotate who goes first
        for f in order:
            times[f.name].append(f.time_once())
    out = {}
    for f in fns:
        ts = np.asarray(times[f.name]) * 1e3
        out[f.name] = {
            "median_ms": float(statistics.median(ts)),
            "p25_ms": float(np.percentile(ts, 25)),
            "p75_ms": float(np.percentile(ts, 75)),
            "min_ms": float(ts.min()),
            "repeats": int(len(ts)),
            "compile_s": f.compile_s,
            "trace_lower_s": f.trace_lower_s,
            "xla_compile_s": f.xla_compile_s,
            "jaxpr_eqns": f.jaxpr["eqns"],
            "jaxpr_primitives": f.jaxpr["primitives"],
            "hlo_ops": f.hlo_ops,
            "entry_ops": f.entry_ops,
            **{f"xla_{k}": v for k, v in f.cost.items()},
        }
    return out


def gradient_samples(compiled: Compiled, params, keys, *data) -> dict[str, np.ndarray]:
    """Gradient (flattened per top-level param) at each key: {name: (n_keys, size)}."""
    rows: dict[str, list] = {}
    for key in keys:
        grads = compiled(params, key, *data)
        for name, g in grads.items():
            leaves = jax.tree.leaves(g)
            rows.setdefault(name, []).append(np.concatenate([np.ravel(x) for x in leaves]))
    return {name: np.stack(r) for name, r in rows.items()}


def mean_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """max over coordinates of |mean_a - mean_b| / standard error of the difference."""
    n_a, n_b = a.shape[0], b.shape[0]
    se = np.sqrt(a.var(axis=0, ddof=1) / n_a + b.var(axis=0, ddof=1) / n_b)
    diff = np.abs(a.mean(axis=0) - b.mean(axis=0))
    ok = se > 0
    z = np.where(ok, diff / np.where(ok, se, 1.0), np.where(diff > 1e-6, np.inf, 0.0))
    return float(z.max()) if z.size else 0.0
