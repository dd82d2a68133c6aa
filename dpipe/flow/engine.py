"""Run a flow: each step its own ``dpipe run`` on one shared cluster, in the order its data needs.

A step is a child process (``python -m dpipe run STEP.yaml --scheduler ADDRESS --json``), so a
timeout stops it for real, its log is its own file, and a crash takes down nothing else. It is
retried after runtime failures (exit 1, killed, timed out) with a growing delay, never after a
spec error (exit 2: the same job fails the same way). A step that fails stops the steps that
need it; the others go on, and every output already committed stays as it is: each job commits
once, atomically.

A step is *skipped* when its job finds nothing to do: a training job whose bundle holds the
result of the same spec on exactly the same input (its content key), a features or predict
job whose sink holds the commit of the same transaction, a register job whose bundle is a
version already, a monitor job whose report judged the same batch. So a rerun of an unchanged
flow computes nothing.

The state folder keeps, per run, the summary (``runs/<id>/summary.json``), each step's resolved
job and log; and ``state.json``, the last result of each step (what ``--from`` and ``show`` read).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpipe.errors import SpecError
from dpipe.flow.graph import Flow, Step

logger = logging.getLogger(__name__)

#: Exit statuses of ``dpipe run``: a spec or usage error (never retried), and drift (a success).
SPEC_EXIT, DRIFT_EXIT = 2, 3
#: Seconds a stopped step gets between SIGTERM and SIGKILL.
GRACE = 10.0
#: The states a step ends in; ``kept``: not run (``--from``), its last output used.
DONE = ("succeeded", "skipped", "kept")


@dataclass
class StepResult:
    """One step of one flow run."""

    name: str
    kind: str
    status: str = "pending"  # succeeded | skipped | failed | blocked | kept | not run
    attempts: int = 0
    seconds: float = 0.0
    output: str | None = None
    rows: Any = None
    drifted: bool = False
    error: str | None = None
    #: Why the job did nothing (``skipped``), or whose failure blocked the step (``blocked``).
    reason: str | None = None
    #: The outputs of other steps this one read, by step.
    inputs: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    #: What the job printed as its result (``dpipe run --json``): its lineage, metrics, commit.
    result: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        took = f"{self.seconds:6.1f}s" if self.attempts else "      -"
        tries = f", {self.attempts} attempts" if self.attempts > 1 else ""
        what = self.error or self.reason or self.output or ""
        drift = " DRIFT" if self.drifted else ""
        return f"{self.name:<20} {self.status:<10}{drift} {took}{tries}  {what}".rstrip()


@dataclass
class FlowResult:
    """A flow run: the state of each step, where its records are, and the overall status."""

    flow: str
    run_id: str
    steps: dict[str, StepResult]
    started_at: str
    finished_at: str
    folder: str

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.steps.items() if s.status in ("failed", "blocked")]

    @property
    def drifted(self) -> bool:
        """Whether a monitor step of this run found drift (one that found nothing new to judge,
        skipped, does not raise its alert again)."""
        return any(s.drifted and s.status == "succeeded" for s in self.steps.values())

    @property
    def status(self) -> str:
        return "failed" if self.failed else "succeeded"

    def summary(self) -> str:
        head = f"flow {self.flow!r} run {self.run_id}: {self.status}" + (" (drift)" if self.drifted else "")
        return "\n".join([head, *(s.line() for s in self.steps.values()), f"records: {self.folder}"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "run_id": self.run_id,
            "status": self.status,
            "drifted": self.drifted,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "folder": self.folder,
            "steps": {n: asdict(s) for n, s in self.steps.items()},
        }


def state_folder(flow: Flow) -> Path:
    """Where the flow's runs and last state are kept (``state:``, default ``.dpipe/flows/NAME``)."""
    return Path(flow.spec.state or Path(".dpipe") / "flows" / flow.name)


def last_state(flow: Flow) -> dict[str, dict[str, Any]]:
    """The last result of each step (``{}`` before the first run)."""
    path = state_folder(flow) / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise SpecError(
            f"flow state {str(path)!r} is corrupt: {exc}", hint="delete it; the next run writes it again"
        ) from exc
    return data.get("steps", {}) if isinstance(data, dict) else {}


def run_flow(
    flow: Flow,
    *,
    scheduler: str | None = None,
    start: str | None = None,
    steps: list[str] | None = None,
    force: bool = False,
    alerts: bool = True,
    log: Callable[[str], None] | None = None,
) -> FlowResult:
    """Run ``flow``'s steps on one cluster (``scheduler``, ``cluster.address``, or a LocalCluster
    started for the run), and raise its alerts.

    ``start`` (``--from``) runs that step and every step after it; ``steps`` (``--step``) runs
    exactly those (what an orchestrator's task does). The steps they need and do not run are
    taken as their last results left them. ``force`` makes every job run even when it would skip.
    """
    from dpipe.flow.alerts import raise_alerts

    log = log or logger.info
    names = _selected(flow, start, steps)
    previous = last_state(flow)
    results = {n: StepResult(n, s.kind, status="pending" if n in names else "not run") for n, s in flow.steps.items()}
    outputs: dict[str, str] = {}
    for name in flow.upstream(names):
        before = previous.get(name) or {}
        if before.get("status") not in DONE:
            raise SpecError(
                f"flow {flow.name!r}: step {name!r} is needed but has not succeeded in an earlier run"
                + (f" ({before['status']})" if before.get("status") else ""),
                hint=f"run it first (`dpipe flow run {flow.path} --from {name}`), or run the whole flow",
            )
        results[name] = StepResult(name, flow.steps[name].kind, status="kept", output=before.get("output"))
        if before.get("output"):
            outputs[name] = before["output"]
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    folder = state_folder(flow) / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).isoformat()
    with _cluster(flow, scheduler, log) as (address, workers):
        parallel = flow.spec.max_parallel or max(1, workers)
        log(f"flow {flow.name!r} run {run_id}: {len(names)} step(s), up to {parallel} at a time on {address}")
        runner = _Runner(flow, address, folder, run_id, force, log)
        try:
            _schedule(flow, names, results, outputs, runner, parallel, log)
        finally:
            runner.stop_all()
    result = FlowResult(flow.name, run_id, results, started, dt.datetime.now(dt.UTC).isoformat(), str(folder))
    summary = folder / "summary.json"
    summary.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    _save_state(flow, result)
    if alerts:
        raise_alerts(flow.spec.alerts, result, summary, log)
    return result


def _selected(flow: Flow, start: str | None, steps: list[str] | None) -> list[str]:
    for name in [start] if start is not None else steps or []:
        if name not in flow.steps:
            raise SpecError(f"flow {flow.name!r}: no step {name!r}; the steps are {list(flow.steps)}")
    if start is not None and steps:
        raise SpecError("give either a step to start from (--from) or the steps to run (--step), not both")
    if start is not None:
        return flow.downstream(start)
    if steps:
        return [n for n in flow.steps if n in steps]
    return list(flow.steps)


def _schedule(
    flow: Flow,
    names: list[str],
    results: dict[str, StepResult],
    outputs: dict[str, str],
    runner: _Runner,
    parallel: int,
    log: Callable[[str], None],
) -> None:
    """Start every step whose needs are met, up to ``parallel`` at once, until none is left."""
    waiting = list(names)
    running: dict[cf.Future, str] = {}
    with cf.ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="dpipe-flow") as pool:
        while waiting or running:
            for name in list(waiting):
                step = flow.steps[name]
                failed = [n for n in step.needs if results[n].status in ("failed", "blocked")]
                if failed:
                    waiting.remove(name)
                    results[name].status = "blocked"
                    results[name].reason = f"not run: step {failed[0]!r} failed"
                    log(f"step {name!r}: not run, because step {failed[0]!r} failed")
                elif all(results[n].status in DONE for n in step.needs) and len(running) < parallel:
                    waiting.remove(name)
                    inputs = {producer: outputs[producer] for producer, _ in step.reads}
                    running[pool.submit(runner.run, step, outputs, results[name], inputs)] = name
            if not running:
                if waiting:  # cannot happen with a checked flow: say so rather than spin
                    raise RuntimeError(f"flow {flow.name!r}: steps {waiting} wait for steps that will not run")
                continue
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                future.result()  # the runner records failures in the result; this re-raises only bugs
                made = results[name].output
                if results[name].status in DONE and made is not None:
                    outputs[name] = made


class _Runner:
    """Runs steps as child processes, each with its retries and timeout."""

    def __init__(self, flow: Flow, address: str, folder: Path, run_id: str, force: bool, log: Callable[[str], None]):
        self.flow, self.address, self.folder, self.force, self.log = flow, address, folder, force, log
        self.env = {
            **os.environ,
            **flow.vars,
            "DPIPE_FLOW": flow.name,
            "DPIPE_FLOW_RUN_ID": run_id,
            "PYTHONUNBUFFERED": "1",
        }
        self.children: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self, step: Step, outputs: Mapping[str, str], result: StepResult, inputs: dict[str, str]) -> None:
        spec = step.spec
        job = self.flow.resolve(step, outputs)
        job_path = self.folder / f"{step.name}.yaml"
        job_path.write_text(yaml.safe_dump(job, sort_keys=False))
        log_path = self.folder / f"{step.name}.log"
        result.inputs, result.log = inputs, str(log_path)
        result.started_at = dt.datetime.now(dt.UTC).isoformat()
        began = time.monotonic()
        for attempt in range(1, spec.retries + 2):
            result.attempts = attempt
            self.log(f"step {step.name!r} ({step.kind}): started" + (f", attempt {attempt}" if attempt > 1 else ""))
            code, printed, why = self._attempt(step, job_path, log_path, attempt)
            if code in (0, DRIFT_EXIT):
                self._succeeded(step, result, printed, code == DRIFT_EXIT, outputs)
                break
            result.error = why
            if code == SPEC_EXIT or attempt > spec.retries or self.stopping.is_set():
                result.status = "failed"
                self.log(f"step {step.name!r}: failed: {why} (log: {log_path})")
                break
            delay = spec.retry_delay * spec.backoff ** (attempt - 1)
            self.log(f"step {step.name!r}: {why}; retrying in {delay:.0f}s")
            if self.stopping.wait(delay):
                result.status = "failed"
                break
        result.seconds = round(time.monotonic() - began, 2)
        result.finished_at = dt.datetime.now(dt.UTC).isoformat()

    def _attempt(self, step: Step, job_path: Path, log_path: Path, attempt: int) -> tuple[int, str, str]:
        """One run of the step's job: its exit status, what it printed, and why it failed."""
        command = [sys.executable, "-m", "dpipe", "run", str(job_path), "--scheduler", self.address, "--json"]
        command += _tls_flags(self.flow)
        if self.force:
            command.append("--force")
        env = {**self.env, "DPIPE_FLOW_STEP": step.name, "DPIPE_FLOW_ATTEMPT": str(attempt)}
        with open(log_path, "a") as log_file:
            log_file.write(f"--- attempt {attempt}, {dt.datetime.now(dt.UTC).isoformat()}: {' '.join(command)}\n")
            log_file.flush()
            child = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                command, stdout=subprocess.PIPE, stderr=log_file, env=env, text=True, start_new_session=True
            )
            with self.lock:
                self.children[step.name] = child
            (self.folder / f"{step.name}.pid").write_text(str(child.pid))
            try:
                printed, _ = child.communicate(timeout=step.spec.timeout)
                code = child.returncode
                why = _failure(code, log_path)
            except subprocess.TimeoutExpired:
                _stop(child)
                child.communicate()  # what is left in its pipe, which is closed then
                printed, code = "", 1
                why = f"timed out after {step.spec.timeout:.0f}s and was stopped"
            finally:
                with self.lock:
                    self.children.pop(step.name, None)
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / f"{step.name}.pid").unlink()
            log_file.write(f"--- exit status {code}\n")
        return code, printed, why

    def _succeeded(
        self, step: Step, result: StepResult, printed: str, drifted: bool, outputs: Mapping[str, str]
    ) -> None:
        data = printed_json(printed)
        result.result = data
        result.output = self.flow.output_of(step, outputs) or data.get("output")
        details = data.get("details")
        details = details if isinstance(details, dict) else {}
        result.rows = data.get("rows", details.get("rows"))
        result.drifted = drifted or bool(data.get("drifted"))
        result.error = None
        skipped = data.get("skipped")
        result.status = "skipped" if skipped else "succeeded"
        result.reason = skipped if isinstance(skipped, str) else None
        self.log(
            f"step {step.name!r}: {result.status}"
            + (f" ({result.reason})" if result.reason else "")
            + (" - DRIFT" if result.drifted else "")
            + f"; output: {result.output}"
        )

    def stop_all(self) -> None:
        """Stop every running step (the flow is interrupted)."""
        self.stopping.set()
        with self.lock:
            children = list(self.children.values())
        for child in children:
            _stop(child)


def _stop(child: subprocess.Popen) -> None:
    """SIGTERM the child's process group, then SIGKILL it after :data:`GRACE` seconds."""
    for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _failure(code: int, log_path: Path) -> str:
    """Why an attempt failed, from its exit status and the last ``dpipe: error:`` of its log."""
    if code in (0, DRIFT_EXIT):
        return ""
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    lines = log_path.read_text(errors="replace").splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("dpipe: error:")]
    if errors:
        first = errors[-1]
        return lines[first].removeprefix("dpipe: error: ").strip()
    tail = [line for line in lines if line.strip() and not line.startswith("---")][-1:]
    return f"exit status {code}" + (f": {tail[0].strip()[:300]}" if tail else "")


def printed_json(printed: str) -> dict[str, Any]:
    """The JSON object ``dpipe run --json`` printed last."""
    start = printed.find("{")
    if start < 0:
        return {}
    try:
        data = json.loads(printed[start:])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _tls_flags(flow: Flow) -> list[str]:
    tls = flow.spec.cluster.security
    if tls is None:
        return []
    flags = ["--tls-ca-file", tls.tls_ca_file, "--tls-cert", tls.tls_cert]
    return flags + (["--tls-key", tls.tls_key] if tls.tls_key else [])


@contextlib.contextmanager
def _cluster(flow: Flow, scheduler: str | None, log: Callable[[str], None]) -> Iterator[tuple[str, int]]:
    """The scheduler's address and its number of workers: the given cluster, or a LocalCluster
    (with worker processes, which the steps' processes reach over TCP) for the run."""
    from dpipe import cluster

    spec = flow.spec.cluster.model_copy(update={"processes": True})
    with cluster.connect(spec, address=scheduler, log=log) as client:
        workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        yield client.scheduler.address, workers


def _save_state(flow: Flow, result: FlowResult) -> None:
    """``state.json``: each step's last result; a step that did not run keeps its earlier one.

    Read again and written under a lock, so that runs of single steps at the same time (an
    orchestrator's tasks) each add theirs.
    """
    folder = state_folder(flow)
    with _locked(folder / "state.lock"):
        steps = last_state(flow)
        for name, step in result.steps.items():
            if step.status in ("kept", "not run") or (step.status == "blocked" and name in steps):
                continue
            steps[name] = {
                "status": step.status,
                "output": step.output if step.status in DONE else (steps.get(name) or {}).get("output"),
                "run_id": result.run_id,
                "finished_at": step.finished_at,
                "error": step.error,
            }
        staged = folder / f"state.json.{uuid.uuid4().hex[:8]}.tmp"
        staged.write_text(json.dumps({"flow": flow.name, "run_id": result.run_id, "steps": steps}, indent=2))
        staged.replace(folder / "state.json")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (``flock``), held for the block."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
