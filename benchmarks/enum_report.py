"""Markdown tables of the enumeration benchmark (``benchmarks/enum.py``)."""

from __future__ import annotations

import statistics

from benchmarks.run import _fmt, _table

PPL, HAND, TE_MARKOV = "ppl elbo (scan)", "hand forward", "TraceEnum (markov)"


def _ms(s):
    return f"{s['median_ms']:.3f}"


def _cells(s):
    return [
        _ms(s),
        f"{s['min_ms']:.3f}",
        str(s["repeats"]),
        f"{s['compile_s']:.2f} ({s['trace_lower_s']:.2f})",
        str(s["jaxpr_eqns"]),
        _fmt(s.get("hlo_ops")),
        _fmt(s.get("xla_flops")),
        _fmt(s.get("xla_transcendentals")),
    ]


DETAIL = [
    "method",
    "run ms",
    "min ms",
    "calls",
    "compile s (trace+lower)",
    "jaxpr eqns",
    "HLO ops",
    "XLA flops",
    "XLA transc.",
]


def _ratio(m, a, b):
    return f"{m[a]['median_ms'] / m[b]['median_ms']:.2f}" if a in m and b in m else "n/a"


def _hmm(rows) -> list[str]:
    out = ["## 1. HMM: gradient of the loss w.r.t. the params", ""]
    head = [
        "S",
        "T",
        "ppl ms",
        "hand ms",
        "TraceEnum (markov) ms",
        "ppl/hand",
        "ppl/TraceEnum",
        "goal (<=1.10x hand, <=1x TraceEnum)",
        "ppl compile s",
        "hand compile s",
        "TraceEnum (markov) compile s",
        "|ppl - hand| loss",
        "TraceEnum (scan) loss - hand",
    ]
    body = []
    for r in rows:
        m, v = r["methods"], r["loss_values"]
        ph = m[PPL]["median_ms"] / m[HAND]["median_ms"]
        pt = m[PPL]["median_ms"] / m[TE_MARKOV]["median_ms"] if TE_MARKOV in m else None
        goal = "yes" if ph <= 1.10 and (pt is None or pt <= 1.0) else "no"
        body.append(
            [
                r["S"],
                r["T"],
                _ms(m[PPL]),
                _ms(m[HAND]),
                _ms(m[TE_MARKOV]) if TE_MARKOV in m else "not run",
                f"{ph:.2f}",
                "n/a" if pt is None else f"{pt:.2f}",
                goal,
                f"{m[PPL]['compile_s']:.2f}",
                f"{m[HAND]['compile_s']:.2f}",
                f"{m[TE_MARKOV]['compile_s']:.2f}" if TE_MARKOV in m else "n/a",
                f"{abs(v['ppl'] - v['hand']):.2g}",
                f"{v['TraceEnum scan'] - v['hand']:.4g}",
            ]
        )
    out += [_table(head, body), "", "Details:", ""]
    detail = [[r["S"], r["T"], name, *_cells(s)] for r in rows for name, s in r["methods"].items()]
    out += [_table(["S", "T", *DETAIL], detail), ""]
    return out + _hmm_split(rows)


def _hmm_split(rows) -> list[str]:
    """Per-step and fixed time of ppl and the hand-written gradient, from T = 100 and 1000.

    run ms ≈ fixed + T · per step, solved from the two lengths of each S; and the kernels
    each compiled gradient runs outside its loops (``harness.entry_op_kinds``, at T = 1000)."""
    by = {(r["S"], r["T"]): r["methods"] for r in rows}
    sizes = sorted({s for s, t in by if (s, 100) in by and (s, 1000) in by})
    if not sizes:
        return []
    head = ["S", "method", "per step us", "fixed ms", "ppl - hand fixed ms"]
    head += [f"{k} kernels outside loops" for k in ("fused", "dot", "gather", "scatter")]
    head += ["other", "loops"]
    body = []
    for S in sizes:
        short, long = by[(S, 100)], by[(S, 1000)]
        split = {}
        for name in (PPL, HAND):
            step = (long[name]["median_ms"] - short[name]["median_ms"]) / 900
            split[name] = (step, short[name]["median_ms"] - 100 * step)
        for name in (PPL, HAND):
            step, fixed = split[name]
            ops = long[name].get("entry_ops") or {}
            cells = [ops.get(k, "n/a") for k in ("fusion", "dot", "gather", "scatter")]
            gap = split[PPL][1] - split[HAND][1]
            body.append(
                [S, name, f"{1e3 * step:.3f}", f"{fixed:.3f}", f"{gap:.3f}" if name == PPL else ""]
                + cells
                + [ops.get("other", "n/a"), ops.get("loop", "n/a")]
            )
    return [
        "Where ppl's extra time goes: run ms = fixed + T x per step, solved from T = 100 "
        "and T = 1000 (medians above); kernels outside loops = the compiled gradient's "
        "top-level HLO instructions at T = 1000, by kind (fused kernels, dots, gathers, "
        "scatters, other computing instructions, loops).",
        "",
        _table(head, body),
        "",
    ]


def _mixture(rows) -> list[str]:
    out = ["## 2. Gaussian mixture: time to a fixed exact target", ""]
    steps = {r["K"]: r["step"] for r in rows if "step" in r}
    runs = [r for r in rows if "step" not in r]
    names = list(next(iter(steps.values())))
    head = ["K", "method", "step ms", "compile s", "steps to target (per seed)"]
    head += ["median time s", "median time incl. compile s", "final log-lik (per seed)"]
    body = []
    for K, step in steps.items():
        mine = [r for r in runs if r["K"] == K]
        for name in names:
            res = [r["methods"][name] for r in mine]
            times = [x["time_s"] for x in res]
            incl = [x["time_incl_compile_s"] for x in res]
            reached = all(t is not None for t in times)
            body.append(
                [
                    K,
                    name,
                    _ms(step[name]),
                    f"{step[name]['compile_s']:.2f}",
                    ", ".join(str(x["steps"] or "not reached") for x in res),
                    f"{statistics.median(times):.3f}" if reached else "n/a",
                    f"{statistics.median(incl):.2f}" if reached else "n/a",
                    ", ".join(f"{x['final_ll']:.1f}" for x in res),
                ]
            )
    out += [_table(head, body), ""]
    targets = [
        [r["K"], r["seed"], f"{r['ll0']:.2f}", f"{r['ll_star']:.2f}", f"{r['target']:.2f}"]
        for r in runs
    ]
    out += [_table(["K", "seed", "log-lik at init", "optimum log-lik", "target"], targets), ""]
    return out


def _chain(rows) -> list[str]:
    out = ["## 3. Guide-side enumeration: K sequential binary sites", ""]
    a, b = "ppl enum", "TraceEnum_ELBO"
    head = ["K", "ppl ms", "TraceEnum ms", "ppl/TraceEnum (run)", "ppl compile s"]
    head += ["TraceEnum compile s", "TraceEnum/ppl (compile)", "goal (run <=1x)", "|loss diff|"]
    body = []
    for r in rows:
        m, v = r["methods"], r["loss_values"]
        ratio = m[a]["median_ms"] / m[b]["median_ms"]
        body.append(
            [
                r["K"],
                _ms(m[a]),
                _ms(m[b]),
                f"{ratio:.2f}",
                f"{m[a]['compile_s']:.2f}",
                f"{m[b]['compile_s']:.2f}",
                f"{m[b]['compile_s'] / m[a]['compile_s']:.2f}",
                "yes" if ratio <= 1.0 else "no",
                f"{abs(v['ppl'] - v['TraceEnum']):.2g}",
            ]
        )
    out += [_table(head, body), "", "Details:", ""]
    detail = [[r["K"], name, *_cells(s)] for r in rows for name, s in r["methods"].items()]
    out += [_table(["K", *DETAIL], detail), ""]
    return out


SECTIONS = {"hmm": "1 (HMM)", "mixture": "2 (mixture)", "chain": "3 (guide-side chain)"}


def _remeasured(results) -> str:
    """Which sections a later ``--only`` run re-measured (date, commit, load average)."""
    notes = []
    if "hmm_date" in results:  # recorded before ``remeasured`` existed
        notes.append(
            f"section 1 (HMM) re-measured on {results['hmm_date']} with `--only hmm` "
            "after ppl's scan contraction changed"
        )
    for name, run in results.get("remeasured", {}).items():
        m = run["machine"]
        notes.append(
            f"section {SECTIONS[name]} re-measured on {run['date']} with `--only {name}` "
            f"(ppl commit {m.get('ppl_commit')}, tree {m.get('ppl_tree')}; load average "
            f"{m.get('loadavg_start')} at start, {m.get('loadavg_end')} at end)"
        )
    return "; " + "; ".join(notes) + "." if notes else "."


def _machine(results) -> list[str]:
    rows = [[k, v] for k, v in results["machine"].items()]
    return ["## Machine", "", _table(["item", "value"], rows), ""]


METHOD = """Method: every gradient is `jax.jit`-compiled `(params, key, *data) -> grads` of the
SVI loss w.r.t. the constrained params dict (all params are `numpyro.param` sites of the
model; the guide is param-only unless stated). *run ms* = median of *calls* timed calls
after warm-up, each `block_until_ready`, the methods of a row interleaved round-robin;
*compile s* = trace + lower + XLA compile + first call (trace + lower in parentheses).
The machine's 2 cores are shared with other jobs (see loadavg): absolute times are
inflated and noisy; the ratios, measured side by side in one process with interleaved
calls, are what to read. *XLA flops* is XLA's cost analysis of the compiled program: it
counts a `while` (scan) body once, so it is not comparable between a scan and an
unrolled program."""

NOTES = {
    "hmm": """*ppl* = `ppl.objectives.elbo()` on the model written with
`numpyro.contrib.control_flow.scan` (guide: none, all params are model params);
*TraceEnum (markov)* = `TraceEnum_ELBO` on the same model written as a `markov` Python
loop (one site per step, so its compile time grows with T: not run for T > 100);
*TraceEnum (scan, wrong value)* is shown for reference only: on the `scan` form
`TraceEnum_ELBO` returns a different (wrong) loss (last column, vs the forward
algorithm; `tests/enum/test_elbo_family.py::test_trace_enum_scan_differs`).
*hand forward* = `lax.scan` over time with a logsumexp per step, O(T S^2).

How ppl scores and contracts the chain. The scan body is evaluated at all steps at once
(`jax.vmap`, `ppl/core/time_parallel.py`), since its carry is the previous step's
enumerated support, the same array at every step; the homogeneous transition matrix stays
unstacked: its log-probability table is (S, S), scored once, never broadcast to
(T, S, S) (since stop 28; `tests/enum/test_jaxpr_size.py`). An enumerated Categorical
site is scored by moving its event axis to its dim (no gather, no scatter in the
gradient; `ppl/core/distributions.py`). Then one `lax.scan` over time
(`ppl/core/markov_chain.py`; the traced program is the same for every T) carries a
vector over the states (the forward algorithm, O(T S^2)), because this HMM's initial
factors reduce to a vector over the first step (other groups get the S x S matrix
product, O(T S^3)); where the chain's factors only add (as here: a transition table and
per-step emissions), the scan adds them one by one, as the hand-written loop does:
v' = logsumexp(v + A) + e_t. The row *diag: ppl elbo, sequential scan body* is the same
ELBO with the body stacked by NumPyro's `lax.scan` (T sequential steps); *diag: hand
log-depth tree* is funsor's parallel-prefix contraction, which NumPyro's
`compute_markov_factors` uses for `scan`, written in ~10 lines of JAX. Earlier runs of
this file: ppl 1.6-2.7x the hand-written gradient before issue 16's contraction work,
1.25-1.33x with the transition stacked to (T, S, S) (stop 27). What remains: the table
*Where ppl's extra time goes* above (the kernels the gradient runs outside the scan: the
generic scoring of the enumerated sites and the alignment of the factors, about twice
the hand-written gradient's count); on a loaded machine its per-step and fixed parts
move by tens of percent between runs.""",
    "mixture": """{mix_N} points from K well-separated 1-d Gaussians; params: weights
(simplex), locs, scales (one per component); Adam (lr {mix_lr}), same init (locs at K
data points drawn by the seed, unit scales, uniform weights) and same PRNG key per seed
for every method. *Target* (exact): the training log-likelihood log p(x | params),
assignments summed by logsumexp, reaching LL* - {mix_tol} (LL* - LL0), i.e. all but a
fraction {mix_tol} of the improvement from the initial LL0 to LL*, the best value seen on
a {mix_long_steps}-step `ppl elbo()` run from the same init (and on every method's run).
*steps* = first step whose params reach it (of {mix_steps}); *time* = steps x step ms
(median of interleaved single `svi.update` calls); *incl. compile* adds the compile time
of one update. Model-side methods (`TraceEnum_ELBO`, ppl `elbo()`, ppl `iwae(8)`) sum the
assignments out in the model (`infer={{"enumerate": "parallel"}}`, param-only guide) and
follow the exact gradient: they take the same steps. Guide-side methods sample the
assignments in a guide with per-point logits (`infer={{"grad": "enum"}}`: local
per-element enumeration; `"reinforce"`: score function, Rao-Blackwellized), so the model
params follow a coordinate-ascent-like path that must wait for q(z) to learn. A seed
that no method reaches (all *not reached*) is one where the long run left a plateau only
after the recorded steps: its LL* is a better optimum than any {mix_steps}-step run found.""",
    "chain": """A chain of K binary sites z_k | z_(k-1) in the model and in the guide
(q(z_k | z_(k-1)) = Bernoulli(logits = phi_k + psi_k z_(k-1))), all guide sites
enumerated: ppl `infer={{"grad": "enum"}}` with `elbo()` vs `TraceEnum_ELBO` with
`infer={{"enumerate": "parallel"}}` on the same guide sites.

How ppl sums the chain out (`ppl/core/factored_enum.py`, since issue 16): `elbo()` is
additive (a sum of log-density terms) and every other site of this program is pathwise,
so each term is a factor on the enumerated sites it reads (found by provenance
tracking), and the expectation over the guide is contracted by variable elimination
(funsor's elimination order), O(K 2^2) like `TraceEnum_ELBO`; its gradient is autodiff
through that exact sum. The factors' tables come from seeded replays of the whole program
on 4 rows (the chain's sites coloured alternately; a row gives each colour one value)
instead of the 2^K joint assignments of the earlier joint enumeration (then: 0.86x,
1.11x, 6.2x TraceEnum per call at K = 4, 8, 16; at K = 16 XLA flops 4.5e7, compile
4.7 s). The contraction adds to ppl's compile time (its program is still linear in K;
TraceEnum's grows faster).
Programs with REINFORCE / mvd / per-element sites beside the enumerated ones keep joint
enumeration. (For many independent or plate-local choices ppl's per-element `enum` avoids
the 2^K too: section 2.)""",
}


def render(results: dict, notes: dict | None = None) -> str:
    notes = NOTES if notes is None else notes
    quick = " --quick" if results["config"]["quick"] else ""
    lines = [
        "# Enumeration benchmarks: ppl vs NumPyro TraceEnum_ELBO vs hand-written JAX",
        "",
        f"Generated by `python -m benchmarks.enum{quick}` on {results['date']} "
        f"(total {results['total_s']:.0f} s)" + _remeasured(results),
        "",
    ]
    lines += _machine(results) + [METHOD, ""]
    for key, fn in (("hmm", _hmm), ("mixture", _mixture), ("chain", _chain)):
        if key in results:
            lines += fn(results[key])
            if key in notes:
                lines += [notes[key].format(**results["config"]), ""]
    return "\n".join(lines)
