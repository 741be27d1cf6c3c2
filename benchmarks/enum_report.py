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
    return out


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


def _machine(results) -> list[str]:
    rows = [[k, v] for k, v in results["machine"].items()]
    return ["## Machine", "", _table(["item", "value"], rows), ""]


def render(results: dict, notes: dict | None = None) -> str:
    notes = notes or {}
    quick = " --quick" if results["config"]["quick"] else ""
    lines = [
        "# Enumeration benchmarks: ppl vs NumPyro TraceEnum_ELBO vs hand-written JAX",
        "",
        f"Generated by `python -m benchmarks.enum{quick}` on {results['date']} "
        f"(total {results['total_s']:.0f} s).",
        "",
    ]
    lines += _machine(results)
    for key, fn in (("hmm", _hmm), ("mixture", _mixture), ("chain", _chain)):
        if key in results:
            lines += fn(results[key])
            if key in notes:
                lines += [notes[key], ""]
    return "\n".join(lines)
