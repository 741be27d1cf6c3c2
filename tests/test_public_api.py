"""Every public name is importable and documented."""

import inspect

import pytest

import ppl
import ppl.dt
import ppl.mcmc
import ppl.objectives
import ppl.reward
import ppl.validate

PUBLIC = [
    (mod, name)
    for mod in (ppl, ppl.objectives, ppl.validate, ppl.reward, ppl.dt, ppl.mcmc)
    for name in mod.__all__
]


@pytest.mark.parametrize("mod, name", PUBLIC, ids=[f"{m.__name__}.{n}" for m, n in PUBLIC])
def test_public_name_documented(mod, name):
    obj = getattr(mod, name)
    doc = inspect.getdoc(obj) if not inspect.ismodule(obj) else obj.__doc__
    assert doc and doc.strip(), f"{mod.__name__}.{name} has no docstring"


def test_readme_mentions_every_objective():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in ppl.objectives.__all__:
        if name not in ("log_weight", "log_weights", "log_mean_exp"):
            assert f"`{name}(" in readme, name
