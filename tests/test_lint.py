"""The habits hold: ruff lint and format are clean and mypy passes on dpipe/ (config in pyproject.toml).

Part of the test command, so CI runs them with everything else; `pre-commit install` runs the
same checks on each commit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["dpipe", "tests", "benchmarks"]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "argv",
    [("ruff", "check", *PATHS), ("ruff", "format", "--check", *PATHS)],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(argv):
    done = _run(*argv)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy():
    done = _run("mypy", "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache"))
    assert done.returncode == 0, done.stdout + done.stderr
