"""The documentation site builds strictly and its API reference covers every public name."""

import importlib
import importlib.util
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _inventory_names(path):
    """Object names in a Sphinx ``objects.inv`` (v2: four header lines, then zlib text)."""
    data = path.read_bytes()
    start = 0
    for _ in range(4):
        start = data.index(b"\n", start) + 1
    return {line.split()[0] for line in zlib.decompress(data[start:]).decode().splitlines()}


def _api_hook():
    spec = importlib.util.spec_from_file_location("api_pages", ROOT / "docs/hooks/api_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _api_modules():
    pages = sorted((ROOT / "docs" / "api").glob("*.md"))
    return [m for p in pages for m in _api_hook().DIRECTIVE.findall(p.read_text())]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for name in (
        "mkdocs",
        "material",
        "mkdocstrings",
        "mkdocstrings_handlers.python",
        "mkdocs_jupyter",
    ):
        pytest.importorskip(
            name, reason='the docs build needs the docs extra: pip install -e ".[docs]"'
        )
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_every_public_subpackage_has_an_api_page():
    import ppl

    documented = set(_api_modules())
    subpackages = {
        f"ppl.{name}"
        for name in dir(ppl)
        if getattr(getattr(ppl, name), "__name__", None) == f"ppl.{name}"
        and not set(getattr(ppl, name).__dict__.get("__all__", ppl.__all__)) <= set(ppl.__all__)
    }
    assert {"ppl.objectives", "ppl.mcmc", "ppl.validate"} <= subpackages
    assert subpackages | {"ppl"} <= documented, subpackages - documented


@pytest.mark.slow  # the mkdocs build (~15 s): CI's slow step builds and checks the site
def test_api_reference_lists_every_public_name(site):
    names = _inventory_names(site / "objects.inv")
    paths = [p for module in _api_modules() for p in _api_hook().public_paths(module)]
    assert len(paths) > 90  # the discovery found the pages
    missing = [public for public, path in paths if path not in names]
    assert not missing, missing


@pytest.mark.slow
def test_pages_include_the_readme_sections_and_tutorials(site):
    def text(page):
        return re.sub(r"<[^>]+>", "", (site / page / "index.html").read_text())

    assert "pip install -e" in text(".") and "ppl.expectation(f)" in text(".")
    assert "measure-valued derivative" in text("strategies")
    assert "annealed importance sampling" in text("objectives")
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        page = site / "tutorials" / notebook.stem / "index.html"
        assert page.exists(), f"{notebook.name} is not rendered (add it to mkdocs.yml's nav)"
