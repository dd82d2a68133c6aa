"""Shared fixtures: demo data, a process-based LocalCluster, a real moto S3 server, a real remote
Dask cluster (``dask scheduler`` + ``dask worker`` processes). Everything binds to 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    """Never use the developer's AWS config, a scheduler or an OpenLineage server from the
    environment; runs write their OpenLineage event files into a temporary DPIPE_HOME."""
    ours = ("DASK_SCHEDULER_ADDRESS", "DPIPE_HOME", "DPIPE_REGISTRY")
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("AWS_", "OPENLINEAGE_")) or k in ours}
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["DPIPE_HOME"] = str(tmp_path_factory.mktemp("dpipe-home"))
    yield
    for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED", "DPIPE_HOME"):
        os.environ.pop(k, None)
    os.environ.update(saved)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Demo data (20k rows, 4 date partitions) shared read-only by the tests."""
    from dpipe.demo import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    write_demo_data(str(root), rows=20_000, days=4, seed=1)
    return root


@contextlib.contextmanager
def local_client():
    """A process-based LocalCluster of 2 single-threaded workers (2 GiB each) and its client."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", memory_limit="2GiB"
        ) as cluster,
        Client(cluster, set_as_default=False) as c,
    ):
        yield c


@pytest.fixture(scope="session")
def client():
    with local_client() as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout}s")


@contextlib.contextmanager
def _moto_server(**env):
    """A moto S3 server in its own process on 127.0.0.1 (as s3fs's own tests run it)."""
    import requests

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )

    def up():
        try:
            return requests.get(f"{endpoint}/moto-api/", timeout=1).ok
        except requests.RequestException:
            return False

    try:
        _wait_for(up, 30, "moto server", proc)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def s3_server():
    with _moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_server_with_auth():
    """A moto server that checks credentials: only keys created through its IAM API are valid."""
    with _moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        yield endpoint


@pytest.fixture
def s3(s3_server):
    """A fresh bucket on the moto server, with the storage_options that reach it."""
    import requests
    import s3fs

    requests.post(f"{s3_server}/moto-api/reset", timeout=5)
    s3fs.S3FileSystem.clear_instance_cache()
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_server}}
    fs = s3fs.S3FileSystem(**options)
    bucket = f"dpipe-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return {"fs": fs, "bucket": bucket, "storage_options": options, "endpoint": s3_server}


@contextlib.contextmanager
def dask_processes(
    tmp: Path, *, workers: int = 2, nanny: bool = True, scheduler_args=(), worker_args=(), security=None
):
    """A real `dask scheduler` and ``workers`` `dask worker` processes (each with its nanny unless
    ``nanny`` is false) on 127.0.0.1; yields ``(address, worker processes)``. ``security`` (a
    ``distributed.Security``) is the client's for the readiness check (a TLS cluster)."""
    import json

    from distributed import Client

    scheduler_file = tmp / "scheduler.json"
    # The workers must import this checkout's dpipe, not whichever one is installed (an editable
    # install may point at another working tree).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # Each process's log goes to a file beside the scheduler file, for a failed test's post-mortem.
    logs = contextlib.ExitStack()

    def quiet(name: str) -> dict:
        log = logs.enter_context(open(tmp / f"{name}.log", "wb"))  # noqa: SIM115 - closed by logs
        return {"stdout": subprocess.DEVNULL, "stderr": log, "cwd": tmp, "env": env}

    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            ":0",
            "--scheduler-file",
            str(scheduler_file),
            *scheduler_args,
        ],
        **quiet("scheduler"),
    )
    procs = [scheduler]
    worker_procs = []
    try:
        _wait_for(scheduler_file.exists, 60, "dask scheduler", scheduler)
        for i in range(workers):
            worker_procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--nthreads",
                        "1",
                        "--memory-limit",
                        "2GiB",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                        *([] if nanny else ["--no-nanny"]),
                        *worker_args,
                    ],
                    **quiet(f"worker-{i}"),
                )
            )
        procs += worker_procs
        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address, set_as_default=False, timeout="30s", security=security) as c:
            c.wait_for_workers(workers, timeout=60)
        yield address, worker_procs
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()  # reaped, or its Popen warns when collected (in whichever test runs then)
        logs.close()


@pytest.fixture(scope="session")
def remote_scheduler(tmp_path_factory):
    """A real `dask scheduler` and two `dask worker` processes; yields the scheduler address."""
    with dask_processes(tmp_path_factory.mktemp("remote")) as (address, _):
        yield address


def job_dict(demo_root: Path, out: Path, **sections) -> dict:
    """A small, fast version of the quickstart job over the test demo data."""
    base = {
        "name": "test",
        "source": {"uri": str(demo_root / "events")},
        "id_columns": ["event_id"],
        "features": [
            {"op": "fill_missing", "columns": ["age", "tenure_days"], "strategy": "median"},
            {"op": "fill_missing", "columns": ["income"], "strategy": "mean"},
            {"op": "derive", "name": "log_income", "expr": "log1p(income)"},
            {"op": "standard_scale", "columns": ["pages_per_session"]},
            {"op": "categorical", "columns": ["country", "device", "plan"]},
        ],
        "label": {"column": "converted"},
        "split": {"valid_fraction": 0.25, "seed": 3, "key": ["event_id"]},
        "train": {
            "num_boost_round": 30,
            "early_stopping_rounds": 5,
            "params": {"max_depth": 4, "eta": 0.3},
            "exclude": ["date"],
        },
        "output": {"uri": str(out)},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "label":
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


# -- PostgreSQL (tests/postgres.py) ----------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the session, with password (SCRAM) authentication.

    Yields a :class:`tests.postgres.PostgresServer`: ``host``, ``port``, ``user``, ``password``,
    ``dbname``, ``uri`` and ``sql(statement)`` (runs psql, returns its output).
    """
    from tests.postgres import running_server

    with running_server() as server:
        yield server
