"""Every Python example in README.md and docs/*.md runs as shown.

The rule the README states at its top: the Python blocks of one README section (a ``##``
heading) run in order in one fresh namespace, the first of them complete on its own; the
same holds for the blocks of one docs page. A block that cannot run here (one that needs a
cluster) has ``<!-- not-run -->`` on the line before its fence; output and shell commands
use ``text`` / ``bash`` fences. Docs pages that include README sections with
``--8<-- "README.md:name"`` are covered by the README's sections.

Each block is compiled once, under its page's path and at its own line numbers, so a
failing example's traceback names the line of the page. Examples run in a temporary directory (the
files they write land there) with the repository root importable; ``docs/sharding.md``,
whose examples use an 8-device mesh, runs in a subprocess with 8 simulated CPU devices.
``python tests/test_examples.py UNIT`` runs one unit (e.g. ``README.md#ten-lines``).
"""

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "text", "bibtex"}
NOT_RUN = "<!-- not-run -->"
MAX_NOT_RUN = 2  # deliberately unrunnable Python blocks, all of them marked
EIGHT_DEVICES = {"docs/sharding.md"}  # units whose examples use 8 (simulated) devices
FIRST_EXAMPLE = "README.md#ten-lines"  # prints the number its text quotes
FENCE = re.compile(r"^\s*(```|~~~)(.*)$")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$')


class Block(NamedTuple):
    unit: str  # "README.md#section-slug" or "docs/page.md"
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    not_run: bool


def _slug(heading):
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def blocks(page):
    """The fenced blocks of a page, each with its unit (README: per ``##`` section)."""
    rel = page.relative_to(ROOT).as_posix()
    lines = page.read_text().splitlines()
    unit, out, i = rel, [], 0
    while i < len(lines):
        if rel == "README.md" and lines[i].startswith("## "):
            unit = f"{rel}#{_slug(lines[i][3:])}"
        match = FENCE.match(lines[i])
        if match:
            fence = match.group(1)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == fence)
            marked = i > 0 and lines[i - 1].strip() == NOT_RUN
            source = "\n".join(lines[i + 1 : end]) + "\n"
            lang = match.group(2).strip() if lines[i].startswith(fence) else "(indented)"
            out.append(Block(unit, i + 1, lang, source, marked))
            i = end
        i += 1
    return out


def all_blocks():
    return [b for page in PAGES for b in blocks(page)]


def units():
    found = {}
    for b in all_blocks():
        if b.lang == "python" and not b.not_run:
            found.setdefault(b.unit, []).append(b)
    return found


def run_unit(unit):
    """Run a unit's Python blocks in order in one fresh namespace; returns its stdout."""
    namespace = {"__name__": "__example__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for b in units()[unit]:
            path = unit.split("#")[0]
            padded = "\n" * b.line + b.source  # tracebacks give the page's own line numbers
            exec(compile(padded, str(ROOT / path), "exec"), namespace)
    return out.getvalue()


def test_every_block_is_labelled():
    """Every fence names its language; not-run markers are few and each marks a Python block."""
    found = all_blocks()
    unknown = [(b.unit, b.line, b.lang) for b in found if b.lang not in LANGUAGES]
    assert not unknown, f"fences without a known language: {unknown}"
    not_run = [(b.unit, b.line) for b in found if b.not_run]
    assert all(b.lang == "python" for b in found if b.not_run), not_run
    assert len(not_run) <= MAX_NOT_RUN, not_run
    for page in PAGES:
        text = page.read_text().splitlines()
        stray = [n for n, line in enumerate(text, 1) if NOT_RUN in line]
        marked = {b.line - 1 for b in blocks(page) if b.not_run}
        assert set(stray) == marked, f"{page.name}: a not-run marker not before a fence: {stray}"


def test_docs_includes_are_covered():
    """A docs page's ``--8<--`` includes are README sections (run there) or have no code."""
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        for line in page.read_text().splitlines():
            match = SNIPPET.match(line)
            if not match:
                continue
            target = match.group(1)
            if target.startswith("README.md:"):
                name = target.split(":", 1)[1]
                assert f"--8<-- [start:{name}]" in readme, (page.name, target)
            else:
                assert "```" not in (ROOT / target).read_text(), (page.name, target)


def test_count_of_runnable_blocks():
    """Guards the extraction itself: the README and each guide page have runnable code."""
    found = units()
    readme = [u for u in found if u.startswith("README.md#")]
    assert len(readme) >= 8, readme
    for page in ("docs/brain.md", "docs/dt.md", "docs/mcmc.md", "docs/sharding.md"):
        assert len(found.get(page, [])) >= 4, page


def readme_units():
    """The README's units; the docs pages' run from test_examples_docs.py (a second file, so
    pytest-xdist's ``--dist loadfile`` can run the two halves on different workers)."""
    return sorted(u for u in units() if u.startswith("README.md#"))


# units whose examples compile the most run in the slow step (CI runs it): the fast suite's
# 6-minute budget has no room for them (test_examples_docs.py lists the docs pages')
SLOW_README_UNITS = {"README.md#distribution-transformers", "README.md#mcmc-kernels-ppl-mcmc"}


def _param(unit):
    return pytest.param(unit, marks=pytest.mark.slow) if unit in SLOW_README_UNITS else unit


@pytest.mark.parametrize("unit", [_param(u) for u in readme_units()])
def test_examples_run(unit, tmp_path, monkeypatch):
    check_unit(unit, tmp_path, monkeypatch)


def check_unit(unit, tmp_path, monkeypatch):
    """Run ``unit`` in ``tmp_path`` (8 simulated devices in a subprocess where it needs them)."""
    monkeypatch.chdir(tmp_path)
    if unit in EIGHT_DEVICES:
        env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
        # the suite's XLA flags (fast compilation, tests/conftest.py) plus 8 host devices
        flags = os.environ.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), unit],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        return
    monkeypatch.syspath_prepend(str(ROOT))
    out = run_unit(unit)
    if unit == FIRST_EXAMPLE:
        _check_printed_number(out)


def _check_printed_number(out):
    """The README's first example prints the number its text quotes ("prints about x")."""
    text = (ROOT / "README.md").read_text().split("## Ten lines", 1)[1].split("\n## ", 1)[0]
    quoted = re.search(r"prints about (-?\d+\.\d+)", text)
    assert quoted, "the Ten lines text should say what its example prints"
    printed, text = float(out.split()[0]), quoted.group(1)
    decimals = len(text.split(".")[1])
    assert abs(printed - float(text)) <= 0.5 * 10.0**-decimals, (printed, text)  # rounds to it


if __name__ == "__main__":
    start = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    print(run_unit(sys.argv[1]), end="")
    print(f"[{sys.argv[1]}: {time.perf_counter() - start:.1f} s]", file=sys.stderr)
