"""Smoke test of benchmarks/variance.py: a tiny run returns sane numbers."""

import math

from benchmarks import variance


def test_variance_quick():
    rows = variance.main(quick=True)
    by_name = {r["estimator"]: r for r in rows}
    for r in rows:
        for k in ("median_ms", "variance", "var_x_ms"):
            assert math.isfinite(r[k]) and r[k] > 0, (r["estimator"], k, r[k])
    rb = by_name["ours reinforce (RB)"]["variance"]
    no_rb = by_name["ours reinforce (no RB)"]["variance"]
    assert rb < no_rb
