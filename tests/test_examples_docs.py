"""Every Python example of docs/*.md runs as shown (the rules: tests/test_examples.py).

The three pages whose examples compile the most (a transformer trained for a few steps; a
dozen MCMC runs; an 8-device mesh in a subprocess) run in the slow step, which CI runs
too: the fast suite's 6-minute budget has no room for their ~80 s of CPU time."""

import pytest

from tests.test_examples import check_unit, readme_units, units

SLOW_UNITS = {"docs/brain.md", "docs/dt.md", "docs/mcmc.md", "docs/numpyro.md", "docs/sharding.md"}


def _param(unit):
    return pytest.param(unit, marks=pytest.mark.slow) if unit in SLOW_UNITS else unit


@pytest.mark.parametrize("unit", [_param(u) for u in sorted(set(units()) - set(readme_units()))])
def test_docs_examples_run(unit, tmp_path, monkeypatch):
    check_unit(unit, tmp_path, monkeypatch)


def test_slow_units_exist():
    from tests.test_examples import SLOW_README_UNITS

    assert SLOW_UNITS | SLOW_README_UNITS <= set(units())
