"""Faults on a real cluster: a `dask worker` process killed (SIGKILL) in the middle of a run.

The workers run in their own processes (``dask worker``, with or without a nanny to restart
them); the test kills one at a point of the run it watches from outside (a checkpoint file
appearing in the run's staging folder), as a preempted machine or the kernel's OOM killer would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import dpipe
from tests.conftest import dask_processes, job_dict
from tests.test_layout import training_task

#: Long enough that training is still going when the first checkpoint lands; early stopping off,
#: so both runs train every round. Every worker trains (``train.layout: all``, the default): the
#: one-worker layout has tests of its own below.
TRAIN = {
    "num_boost_round": 150,
    "early_stopping_rounds": None,
    "checkpoint_every": 5,
    "restart_wait": 30,
    "params": {"max_depth": 4, "eta": 0.05},
}


class KillWhen(threading.Thread):
    """SIGKILL process ``pid`` (or send it ``sig``) as soon as ``ready()`` holds (polled every 10 ms).
    ``pid`` may be a function, asked once ``ready()`` holds, returning the pid or ``None`` (not yet)."""

    def __init__(self, ready, pid, timeout: float = 180.0, sig: int = signal.SIGKILL):
        super().__init__(daemon=True)
        self.ready, self.pid, self.timeout, self.sig = ready, pid, timeout, sig
        self.killed_at: float | None = None
        self.killed: int | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            pid = (self.pid() if callable(self.pid) else self.pid) if self.ready() else None
            if pid is not None:
                os.kill(pid, self.sig)
                self.killed, self.killed_at = pid, time.monotonic()
                return
            time.sleep(0.01)


def checkpointed(out: Path):
    """True once the run writing ``out`` has a complete checkpoint in its staging folder."""
    return lambda: any(out.parent.glob(f".{out.name}.dpipe-staging-*/checkpoints/*/checkpoint-*.json"))


def worker_pids(address: str) -> dict[str, int]:
    from distributed import Client

    with Client(address, set_as_default=False, timeout="30s") as c:
        return c.run(os.getpid)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def run(demo_root: Path, out: Path, address: str, **train):
    job = dpipe.job_from_dict(job_dict(demo_root, out, train={**TRAIN, **train}))
    return dpipe.run(job, scheduler=address, progress=False)


@pytest.mark.parametrize(
    "nanny, memory",
    [(True, "memory"), (False, "memory"), (False, "external")],
    ids=["restarted-worker", "no-replacement", "external-memory"],
)
def test_training_goes_on_after_a_killed_worker(nanny, memory, demo_root, tmp_path):
    with dask_processes(tmp_path, workers=2, nanny=nanny) as (address, _):
        t0 = time.monotonic()
        steady = run(demo_root, tmp_path / "steady", address, memory=memory)
        steady_s = time.monotonic() - t0
        out = tmp_path / "killed"
        victim = sorted(worker_pids(address).items())[-1][1]
        killer = KillWhen(checkpointed(out), victim)
        killer.start()
        t0 = time.monotonic()
        # External memory: the shards on disk outlive the worker; the survivor reads them all.
        result = run(demo_root, out, address, restart_wait=30 if nanny else 2, memory=memory)
        elapsed = time.monotonic() - t0
        killer.join(1)

    assert killer.killed_at is not None, "the worker was never killed"
    restarts = manifest(out)["training"]["restarts"]
    assert len(restarts) == 1, restarts
    (restart,) = restarts
    assert restart["from_round"] >= 5 and restart["from_round"] % 5 == 0
    assert restart["workers"] == (2 if nanny else 1)
    assert len(restart["lost_workers"]) == 1
    # Every round trained, the evaluation history whole, and the model as good as the steady one's.
    assert result.metrics["rounds_trained"] == steady.metrics["rounds_trained"] == TRAIN["num_boost_round"]
    for name, values in result.metrics["history"]["valid"].items():
        assert len(values) == TRAIN["num_boost_round"], name
    assert abs(result.metrics["valid"]["auc"] - steady.metrics["valid"]["auc"]) <= 0.005
    assert manifest(tmp_path / "steady")["training"]["restarts"] == []
    # The bundle has no checkpoints: they lived in the staging folder only.
    assert not (out / "checkpoints").exists()
    print(f"restart: {restart}; killed run {elapsed:.1f}s, steady run {steady_s:.1f}s")


def test_training_goes_on_without_a_hung_worker(demo_root, tmp_path):
    """A worker stopped (SIGSTOP) mid-training: alive to the scheduler, silent to its peers. The
    collective times out, the silent worker is taken out, and training goes on without it."""
    with dask_processes(tmp_path, workers=2, nanny=False) as (address, _):
        out = tmp_path / "hung"
        victim = sorted(worker_pids(address).items())[-1]
        stopper = KillWhen(checkpointed(out), victim[1], sig=signal.SIGSTOP)
        stopper.start()
        try:
            result = run(demo_root, out, address, restart_wait=2, collective_timeout=10)
        finally:
            stopper.join(1)
            os.kill(victim[1], signal.SIGKILL)  # a stopped process acts on nothing else

    assert stopper.killed_at is not None, "the worker was never stopped"
    (restart,) = manifest(out)["training"]["restarts"]
    assert restart["lost_workers"] == [victim[0]] and restart["workers"] == 1
    assert result.metrics["rounds_trained"] == TRAIN["num_boost_round"]
    for values in result.metrics["history"]["valid"].values():
        assert len(values) == TRAIN["num_boost_round"]
    print(f"restart after a hung worker: {restart}")


@pytest.mark.parametrize("which", ["training", "idle"])
def test_training_on_one_worker_goes_on_after_a_killed_worker(which, demo_root, tmp_path):
    """The rows gathered onto one worker, which trains with both threads: killing it restarts
    training from the last checkpoint on the other; killing the other does not stop training,
    and the rows it held are placed again for the stages after it."""
    from distributed import Client

    with (
        dask_processes(tmp_path, workers=2, nanny=True) as (address, _),
        Client(address, set_as_default=False) as watcher,
    ):
        pids = worker_pids(address)
        out = tmp_path / "killed"

        def victim() -> int | None:
            busy = [w for w, keys in watcher.processing().items() if any(training_task(k) for k in keys)]
            if len(busy) != 1:
                return None
            return pids[busy[0]] if which == "training" else next(p for w, p in pids.items() if w != busy[0])

        killer = KillWhen(checkpointed(out), victim)
        killer.start()
        result = run(demo_root, out, address, layout="one")
        killer.join(1)

    assert killer.killed is not None, "no worker was killed"
    training = manifest(out)["training"]
    assert training["layout"]["workers"] == "one" and training["layout"]["threads"] == 2
    if which == "training":
        (restart,) = training["restarts"]
        assert restart["lost_workers"] == [next(w for w, p in pids.items() if p == killer.killed)]
        assert restart["from_round"] >= 5 and restart["from_round"] % 5 == 0
    else:
        assert training["restarts"] == []
    assert result.metrics["rounds_trained"] == TRAIN["num_boost_round"]
    for values in result.metrics["history"]["valid"].values():
        assert len(values) == TRAIN["num_boost_round"]
    assert result.rows["valid"] > 0 and result.metrics["valid"]["auc"] > 0.6


# -- ETL: a worker killed as a stage starts ----------------------------------------------------
class KillOnStage(logging.Handler):
    """SIGKILL worker process ``pid`` when the run logs the start of stage ``stage`` (once)."""

    def __init__(self, stage: str, pid: int):
        super().__init__(logging.INFO)
        self.stage, self.pid, self.killed = stage, pid, False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not self.killed and message.startswith(f"{self.stage}: ") and " done in " not in message:
            os.kill(self.pid, signal.SIGKILL)
            self.killed = True


@contextlib.contextmanager
def killing(stage: str, address: str):
    """Kill one worker as ``stage`` starts; afterwards wait until the nanny has replaced it."""
    from distributed import Client

    handler = KillOnStage(stage, sorted(worker_pids(address).items())[-1][1])
    logger = logging.getLogger("dpipe")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        with Client(address, set_as_default=False, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
    assert handler.killed, f"stage {stage!r} never started"


@pytest.fixture(scope="module")
def nanny_cluster(tmp_path_factory):
    with dask_processes(tmp_path_factory.mktemp("nanny-cluster"), workers=2) as (address, _):
        yield address


def sorted_table(folder: Path, by: str):
    import pyarrow.parquet as pq

    return pq.read_table(folder).sort_by(by)


def test_features_job_survives_a_worker_killed_in_its_fit_pass(nanny_cluster, demo_root, tmp_path):
    def features(out: Path) -> dict:
        base = job_dict(demo_root, out)
        return {
            "kind": "features",
            "name": "faults",
            "source": base["source"],
            "features": base["features"],
            "output": {"format": "parquet", "uri": str(out)},
        }

    dpipe.run(dpipe.job_from_dict(features(tmp_path / "steady")), scheduler=nanny_cluster, progress=True)
    with killing("fit", nanny_cluster):
        dpipe.run(dpipe.job_from_dict(features(tmp_path / "killed")), scheduler=nanny_cluster, progress=True)

    steady, killed = sorted_table(tmp_path / "steady", "event_id"), sorted_table(tmp_path / "killed", "event_id")
    assert killed.num_rows == 20_000
    assert killed.equals(steady)


def test_training_survives_a_worker_killed_while_the_rows_are_placed(nanny_cluster, demo_root, tmp_path):
    steady = run(demo_root, tmp_path / "steady", nanny_cluster, num_boost_round=30)
    with killing("load", nanny_cluster):
        killed = run(demo_root, tmp_path / "killed", nanny_cluster, num_boost_round=30)

    assert killed.rows == steady.rows
    # The fitted statistics are the fit pass's: the kill came after it.
    assert (tmp_path / "killed" / "pipeline.json").read_text() == (tmp_path / "steady" / "pipeline.json").read_text()
    assert abs(killed.metrics["valid"]["auc"] - steady.metrics["valid"]["auc"]) <= 0.005


def test_prediction_survives_a_worker_killed_while_it_writes(nanny_cluster, demo_root, tmp_path):
    bundle = run(demo_root, tmp_path / "model", nanny_cluster, num_boost_round=10).bundle_uri
    events = str(demo_root / "events")
    dpipe.predict(bundle, events, str(tmp_path / "steady"), scheduler=nanny_cluster, progress=True)
    with killing("predict", nanny_cluster):
        dpipe.predict(bundle, events, str(tmp_path / "killed"), scheduler=nanny_cluster, progress=True)

    steady, killed = sorted_table(tmp_path / "steady", "event_id"), sorted_table(tmp_path / "killed", "event_id")
    assert killed.num_rows == 20_000
    assert killed.equals(steady)


# -- tuning: a worker killed between trials and during one -------------------------------------
def tune_job(demo_root: Path, out: Path, **train) -> dict:
    # A peer killed before it joined a trial's collective is waited for up to collective_timeout.
    spec = job_dict(demo_root, out, train={**TRAIN, "num_boost_round": 40, "collective_timeout": 15, **train})
    spec["tune"] = {
        "space": {"eta": {"low": 0.05, "high": 0.3, "log": True}, "max_depth": {"low": 2, "high": 5}},
        "n_trials": 4,
        "pruning": False,
        "storage": str(out.parent / f"{out.name}.db"),
    }
    return spec


@pytest.mark.parametrize("when", ["after-trial-0", "in-trial-1"])
def test_tuning_goes_on_after_a_killed_worker(when, nanny_cluster, demo_root, tmp_path, monkeypatch):
    import optuna

    from dpipe.tune.resident import Resident

    out = tmp_path / "tuned"
    handler = KillOnStage("tune: trial 0", sorted(worker_pids(nanny_cluster).items())[-1][1])
    if when == "in-trial-1":
        # Killed 0.2 s into trial 1's training on the workers (this process drives the trials).
        handler.killed = True  # not by the log line
        grow = Resident.grow

        def growing(self, key, *args, **kwargs):
            if key == "trial-1" and not hasattr(growing, "armed"):
                growing.armed = True  # type: ignore[attr-defined]
                threading.Timer(0.2, os.kill, args=(handler.pid, signal.SIGKILL)).start()
            return grow(self, key, *args, **kwargs)

        monkeypatch.setattr(Resident, "grow", growing)
    logger = logging.getLogger("dpipe")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = dpipe.run(dpipe.job_from_dict(tune_job(demo_root, out)), scheduler=nanny_cluster, progress=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        from distributed import Client

        with Client(nanny_cluster, set_as_default=False, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
    assert handler.killed

    restarts = manifest(out)["training"]["restarts"]
    assert len(restarts) == 1 and restarts[0]["model"] == "tune", restarts
    assert restarts[0]["trials_done"] >= 1 and len(restarts[0]["lost_workers"]) == 1
    # Every trial ran: n_trials finished ones, besides any cut short by the lost worker (run again).
    study = optuna.load_study(study_name=manifest(out)["tuning"]["study"], storage=f"sqlite:///{out}.db")
    counted = [t for t in study.trials if "lost_worker" not in t.user_attrs]
    assert len(counted) == 4 and all(t.state.name == "COMPLETE" for t in counted)
    cut = [t for t in study.trials if "lost_worker" in t.user_attrs]
    for t in cut:  # the interrupted trial ran again with the same parameters
        assert any(c.params == t.params for c in counted)
    assert result.metrics["valid"]["auc"] > 0.6
    # The best model is this run's own trial, whichever side of the restart it ran on.
    assert abs(result.metrics["valid"]["auc"] - study.best_value) < 1e-9
