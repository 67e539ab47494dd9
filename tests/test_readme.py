"""The README's promises: its --help blocks are current, its two commands exist."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_help_blocks_match_the_real_help():
    result = subprocess.run([sys.executable, "tools/readme_help.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "bash tools/setup.sh --live && .venv/bin/python -m pytest -q -p no:cacheprovider"
    assert command in readme
    assert command in ci
