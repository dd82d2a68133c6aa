"""dpipe under the schedulers teams already use: :mod:`dpipe.integrations.airflow` (an operator,
and a flow's steps as tasks of a DAG) and :mod:`dpipe.integrations.prefect` (a flow as a Prefect
flow on ``prefect-dask``'s task runner).

Each imports its orchestrator, which dpipe itself never depends on: install one with
``pip install "dpipe[airflow]"`` or ``pip install "dpipe[prefect]"``, ideally in the orchestrator's
own environment (see docs/flows.md).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from dpipe.errors import DpipeError

logger = logging.getLogger(__name__)


class StepFailed(DpipeError):
    """A dpipe job or flow step run by an orchestrator failed; the message is dpipe's own."""


def run_job(
    spec: str,
    *,
    vars: Mapping[str, str] | None = None,
    scheduler: str | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one job spec as ``dpipe run SPEC --json`` in a child process, with ``vars`` in its
    environment (``${ds}`` in the spec); stream its log lines to ``log``; return its result.

    Raises :class:`StepFailed` with dpipe's error message when the job fails.
    """
    from dpipe.flow.engine import DRIFT_EXIT, printed_json

    command = [sys.executable, "-m", "dpipe", "run", spec, "--json"]
    command += ["--scheduler", scheduler] if scheduler else []
    command += ["--force"] if force else []
    env = {**os.environ, **(vars or {}), "PYTHONUNBUFFERED": "1"}
    log = log or logger.info
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    errors: list[str] = []
    stdout, stderr = child.stdout, child.stderr
    assert stdout is not None and stderr is not None
    printed: list[str] = []
    # The result is read while the log streams: a large one must not fill its pipe meanwhile.
    reader = threading.Thread(target=lambda: printed.append(stdout.read()), daemon=True)
    reader.start()
    for line in stderr:
        log(line.rstrip())
        if line.startswith("dpipe: error:"):
            errors.append(line.removeprefix("dpipe: error:").strip())
    code = child.wait()
    reader.join()
    if code not in (0, DRIFT_EXIT):
        raise StepFailed(f"dpipe run {spec}: {errors[-1] if errors else f'exit status {code}'}")
    return printed_json("".join(printed))


def run_step(
    flow_path: str,
    step: str,
    *,
    vars: Mapping[str, str] | None = None,
    scheduler: str | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one step of a flow (the steps it needs are taken from their last run), as
    ``dpipe flow run FLOW --step STEP`` does; return the step's result as a dict.

    Raises :class:`StepFailed` naming the step and its error when it fails.
    """
    from dataclasses import asdict

    from dpipe.flow import load_flow, run_flow

    result = run_flow(
        load_flow(flow_path, vars=dict(vars or {})),
        scheduler=scheduler,
        steps=[step],
        force=force,
        alerts=False,  # the orchestrator alerts on its tasks
        log=log,
    )
    done = result.steps[step]
    if done.status not in ("succeeded", "skipped"):
        raise StepFailed(f"flow {result.flow!r}, step {step!r}: {done.error or done.reason} (log: {done.log})")
    return asdict(done)
