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
    machine = {"commit": "x", "jax": "j", "numpyro": "n", "cores": 2}
    rows = [
        ("a", np.array([1.0, 1.1]), np.array([1.0, 1.05])),  # 1.02: met
        ("b", np.array([0.5, 1.2]), np.array([1.0, 1.1])),  # 0.81, wide: within 2 SE
        ("c", np.array([0.5, 0.51]), np.array([1.0, 1.01])),  # 0.50, tight: not met
    ]
    md = report(rows, 2, machine, "now", 60.0)
    body = [line for line in md.splitlines() if line.startswith(("| a ", "| b ", "| c "))]
    verdicts = [line.split("|")[5].strip() for line in body]
    assert verdicts == ["met", "within 2 SE", "not met"]
