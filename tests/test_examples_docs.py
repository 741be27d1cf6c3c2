"""Every Python example of docs/*.md runs as shown (the rules: tests/test_examples.py)."""

import pytest

from tests.test_examples import check_unit, readme_units, units


@pytest.mark.parametrize("unit", sorted(set(units()) - set(readme_units())))
def test_docs_examples_run(unit, tmp_path, monkeypatch):
    check_unit(unit, tmp_path, monkeypatch)
