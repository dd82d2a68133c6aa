"""Virtual environments for the orchestrators the integration tests run (Airflow, Prefect).

Each is created by the test run that first needs it, with ``--system-site-packages`` so that it
sees dpipe and its pinned dependencies, and the orchestrator's own packages (the extra of that
name in pyproject.toml) installed into it: dpipe's environment is never changed. It is kept in
``$DPIPE_TEST_VENVS`` (default ``~/.cache/dpipe-test-venvs``) under a name that changes with the
pins and the Python version, so later runs on the same machine reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extra(name: str) -> list[str]:
    """The requirements of the extra ``name`` in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"][name])


def orchestrator_python(name: str) -> Path:
    """The interpreter of the virtual environment with the extra ``name`` installed (made once)."""
    requirements = extra(name)
    key = hashlib.sha256(f"{sys.version}|{sys.prefix}|{requirements}".encode()).hexdigest()[:12]
    home = Path(os.environ.get("DPIPE_TEST_VENVS", Path.home() / ".cache" / "dpipe-test-venvs"))
    home.mkdir(parents=True, exist_ok=True)
    venv = home / f"{name}-{key}"
    python = venv / "bin" / "python"
    with open(home / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator at a time; the others wait and reuse it
        if (venv / "ready").exists():
            return python
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--clear", str(venv)], check=True)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"installing {requirements} into {venv} failed:\n{done.stdout}\n{done.stderr}")
        (venv / "ready").write_text("\n".join(requirements))
    return python
