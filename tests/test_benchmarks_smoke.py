"""Smoke test of the benchmark suite: one benchmark in quick mode, plus an unbiasedness check."""

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

bench = pytest.importorskip("benchmarks.run")


def test_logreg_elbo_gradient_benchmark_quick():
    cfg = dataclasses.replace(
        bench.Config.make(quick=True),
        lr_n=500,
        lr_d=10,
        var_keys=200,
        hand_softplus=False,
        diagnose=False,
        warm_up=False,
    )
    rows = bench.bench_elbo_gradient(cfg, only="logreg")
    assert len(rows) == 1
    row = rows[0]
    assert set(row["methods"]) == {"ours", "numpyro", "hand"}
    for stats in row["methods"].values():
        for key in ("median_ms", "min_ms", "compile_s", "trace_lower_s"):
            assert math.isfinite(stats[key]) and stats[key] > 0, (key, stats[key])
        assert stats["repeats"] == cfg.repeats
        assert stats["jaxpr_eqns"] > 0
    for key in ("ours_over_hand", "ours_over_numpyro", "numpyro_over_hand"):
        assert math.isfinite(row[key]) and row[key] > 0

    # mean gradient over 200 keys (same params): ours vs NumPyro Trace_ELBO within 4 s.e.
    agree = row["agreement"]
    assert (agree["a"], agree["b"], agree["keys"], agree["coords"]) == ("ours", "numpyro", 200, 20)
    assert agree["max_abs_t"] < 4.0, agree
    # both are genuinely stochastic estimators (the check is not vacuous)
    assert agree["min_std_a"] > 0 and agree["min_std_b"] > 0


def test_nuts_ess_per_grad_ratio_and_verdicts():
    """The many-seed ESS/grad table: the ratio of means with its delta-method SE (checked
    against a direct computation) and the three verdicts."""
    from benchmarks.nuts_ess_per_grad import ratio_and_se, report

    ours, theirs = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 5.0])
    r, se = ratio_and_se(ours, theirs)
    assert r == pytest.approx(2.0 / 3.0)
    va, vb = np.var(ours, ddof=1) / 3, np.var(theirs, ddof=1) / 3
    assert se == pytest.approx(r * math.sqrt(va / 4.0 + vb / 9.0))
    run = {"date": "now", "commit": "x", "jax": "j", "numpyro": "n"}

    def row(ours, theirs):
        return {"nuts": ours, "numpyro_nuts": theirs, "grads": {"nuts": [10], "numpyro_nuts": [5]}}

    posteriors = {
        "a": row([1.0, 1.1], [1.0, 1.05]),  # 1.02: met
        "b": row([0.5, 1.2], [1.0, 1.1]),  # 0.81, wide: within 2 SE
        "c": row([0.5, 0.51], [1.0, 1.01]),  # 0.50, tight: not met
    }
    md = report({"posteriors": {k: {**v, **run} for k, v in posteriors.items()}})
    body = [line for line in md.splitlines() if line.startswith(("| a ", "| b ", "| c "))]
    verdicts = [line.split("|")[5].strip() for line in body]
    assert verdicts == ["met", "within 2 SE", "not met"]


def test_hmm_time_split_and_kernels_outside_loops():
    """ENUM_RESULTS' split of a gradient's time into fixed + T x per step (solved from
    T = 100 and 1000) and its count of the kernels a compiled program runs outside loops."""
    import jax
    import jax.numpy as jnp

    from benchmarks.enum_report import HAND, PPL, _hmm_split
    from benchmarks.harness import entry_op_kinds

    def stats(fixed, step, T, ops=None):
        return {"median_ms": fixed + T * step, "entry_ops": ops}

    ops = {"fusion": 57, "dot": 2, "gather": 0, "scatter": 5, "loop": 1, "other": 3}
    rows = [
        {"S": 4, "T": T, "methods": {PPL: stats(0.20, 2e-4, T, ops), HAND: stats(0.08, 2e-4, T)}}
        for T in (100, 1000)
    ]
    lines = "\n".join(_hmm_split(rows)).splitlines()
    table = [line.split("|")[1:-1] for line in lines if line.startswith("| 4 ")]
    ppl_row, hand_row = ([c.strip() for c in row] for row in table)
    assert ppl_row[2:5] == ["0.200", "0.200", "0.120"]  # us per step, fixed ms, gap ms
    assert hand_row[2:4] == ["0.200", "0.080"]
    assert ppl_row[5:] == ["57", "2", "0", "5", "3", "1"]
    assert _hmm_split(rows[:1]) == []  # one length: nothing to solve

    def f(x):  # two dots (product, its transpose) and a loop outside, around the loop
        y = jax.lax.fori_loop(0, 7, lambda i, c: jnp.sin(c) @ x, x)
        return jax.grad(lambda x: jnp.sum(jnp.tanh(x @ x)))(x) + y

    kinds = entry_op_kinds(jax.jit(f).lower(jnp.ones((3, 3))).compile().as_text())
    assert kinds["loop"] == 1 and kinds["dot"] >= 2 and kinds["fusion"] >= 1, kinds
