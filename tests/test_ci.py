"""CI runs what the README says: its test command verbatim, and the script parses."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def readme_test_command():
    block = re.search(
        r"# 2\. install and run the test suite\n(.+)\n", (ROOT / "README.md").read_text()
    )
    assert block, "README quick start lost its test command"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim():
    command = readme_test_command()
    assert command.startswith("pip install -e") and "python -m pytest" in command
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert any(line.startswith(command) for line in lines), command


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_script_parses():
    proc = subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
