"""Flows run for real: each step a `dpipe run` process on a real `dask scheduler` + workers,
outputs in Delta, DuckDB and a registry on disk, alerts to an HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from dpipe.flow import load_flow, run_flow
from tests.conftest import ROOT, free_port


@contextlib.contextmanager
def webhook():
    """An HTTP server on 127.0.0.1 that keeps the JSON bodies POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def steps_env(monkeypatch, tmp_path):
    """The steps' processes import this checkout (and a sitecustomize a test may write)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv("PYTHONPATH", f"{hooks}:{ROOT}")
    monkeypatch.chdir(tmp_path)
    return hooks


def _features(demo_root: Path, uri: Path, **output) -> dict:
    return {
        "kind": "features",
        "source": {"uri": str(demo_root / "events")},
        "features": [{"op": "fill_missing", "columns": ["age", "tenure_days"], "strategy": "median"}],
        "output": {"format": "delta", "uri": str(uri), "mode": "append", **output},
    }


def _train(source: dict, out: Path, **extra) -> dict:
    return {
        "source": source,
        "id_columns": ["event_id"],
        "features": [{"op": "categorical", "columns": ["country", "device", "plan"]}],
        "label": {"column": "converted"},
        "split": {"valid_fraction": 0.25, "seed": 3, "key": ["event_id"]},
        "train": {"num_boost_round": 10, "params": {"max_depth": 3}, "exclude": ["date"]},
        "output": {"uri": str(out)},
        **extra,
    }


def _rows(database: Path) -> int:
    import duckdb

    with duckdb.connect(str(database), read_only=True) as db:
        return db.sql("select count(*) as n from scores").to_arrow_table()["n"][0].as_py()


def _write(path: Path, flow: dict) -> Path:
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return path


def test_a_flow_runs_every_kind_of_step_then_a_rerun_skips_them_all(demo_root, tmp_path, remote_scheduler, steps_env):
    registry = tmp_path / "registry"
    table = {"uri": "${steps.features.output}", "format": "delta"}
    with webhook() as (url, received):
        flow_path = _write(
            tmp_path / "flow.yaml",
            {
                "name": "lifecycle",
                "alerts": [
                    {"on": ["success", "failure"], "webhook": url},
                    # Down: logged, and the run's result is the same.
                    {"on": ["success"], "webhook": f"http://127.0.0.1:{free_port()}/gone", "timeout": 2},
                ],
                "steps": {
                    "features": {"job": _features(demo_root, tmp_path / "lake" / "features")},
                    "train": {"job": _train(table, tmp_path / "model")},
                    "promote": {
                        "job": {
                            "kind": "register",
                            "bundle": "${steps.train.output}",
                            "registry": {"uri": str(registry), "name": "churn"},
                            "promote": "champion",
                        }
                    },
                    "score": {
                        "job": {
                            "kind": "predict",
                            "bundle": "models:/churn@champion",
                            "registry": str(registry),
                            "source": table,
                            "output": {"format": "duckdb", "uri": str(tmp_path / "scores.duckdb"), "table": "scores"},
                        }
                    },
                    "watch": {
                        "job": {
                            "kind": "monitor",
                            "bundle": "models:/churn@champion",
                            "registry": str(registry),
                            "source": table,
                            "output": str(tmp_path / "drift"),
                        }
                    },
                },
            },
        )
        flow = load_flow(flow_path)
        first = run_flow(flow, scheduler=remote_scheduler)
        assert first.status == "succeeded", first.summary()
        assert {n: s.status for n, s in first.steps.items()} == dict.fromkeys(flow.steps, "succeeded")
        assert first.steps["promote"].output == "models:/churn/1"
        assert first.steps["train"].inputs == {"features": str(tmp_path / "lake" / "features")}
        assert first.steps["score"].rows == 20_000
        assert _rows(tmp_path / "scores.duckdb") == 20_000
        assert (tmp_path / "drift" / "drift.json").exists()
        assert received[-1]["event"] == "success" and received[-1]["run_id"] == first.run_id
        summary = json.loads(Path(first.folder, "summary.json").read_text())
        assert summary["steps"]["train"]["result"]["metrics"]["valid"]["auc"] > 0.6
        assert Path(first.steps["train"].log).read_text().count("--- attempt") == 1

        again = run_flow(load_flow(flow_path), scheduler=remote_scheduler)
        assert {n: s.status for n, s in again.steps.items()} == dict.fromkeys(flow.steps, "skipped"), again.summary()
        assert again.steps["promote"].output == "models:/churn/1"
        assert _rows(tmp_path / "scores.duckdb") == 20_000
        assert len(received) == 2


KILL_AT_COMMIT = """
import os, signal
if os.environ.get("DPIPE_FLOW_STEP") == "features" and os.environ.get("DPIPE_FLOW_ATTEMPT") == "1":
    from dpipe.io.delta.write import DeltaSink

    def killed(self, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # the data files are written; the commit is not

    DeltaSink.commit = killed
"""


def test_failures_retries_timeouts_and_resuming_from_a_step(demo_root, tmp_path, remote_scheduler, steps_env):
    from deltalake import DeltaTable

    (steps_env / "sitecustomize.py").write_text(KILL_AT_COMMIT)
    lake = tmp_path / "lake" / "features"
    flow_path = _write(
        tmp_path / "flow.yaml",
        {
            "name": "faults",
            "vars": {"src": str(tmp_path / "nothing-here")},
            "alerts": [{"on": ["failure"], "command": f"cat > {tmp_path / 'alert.json'}"}],
            "steps": {
                # Killed mid-run on its first attempt: retried, and committed once.
                "features": {"job": _features(demo_root, lake), "retries": 2, "retry_delay": 0},
                # Fails (its source is missing): what needs it does not run.
                "train": {"job": _train({"uri": "${src}"}, tmp_path / "model")},
                "score": {
                    "job": {
                        "kind": "predict",
                        "bundle": "${steps.train.output}",
                        "source": {"uri": "${steps.features.output}", "format": "delta"},
                        "output": {"uri": str(tmp_path / "scores")},
                    }
                },
                # Stopped at its timeout.
                "slow": {"job": _features(demo_root, tmp_path / "lake" / "slow"), "timeout": 1},
            },
        },
    )
    first = run_flow(load_flow(flow_path), scheduler=remote_scheduler)
    states = {n: s.status for n, s in first.steps.items()}
    assert states == {"features": "succeeded", "train": "failed", "score": "blocked", "slow": "failed"}
    features = first.steps["features"]
    assert features.attempts == 2
    assert Path(features.log).read_text().count("--- exit status -9") == 1
    assert len(DeltaTable(str(lake)).history()) == 1  # one commit, whatever the killed attempt wrote
    assert "nothing-here' does not exist" in first.steps["train"].error
    assert first.steps["train"].attempts == 1
    assert "timed out after 1s" in first.steps["slow"].error
    assert (
        not (tmp_path / "lake" / "slow" / "_delta_log").exists()
        or not DeltaTable(str(tmp_path / "lake" / "slow")).history()
    )
    alert = json.loads((tmp_path / "alert.json").read_text())
    assert alert["event"] == "failure" and alert["steps"]["train"]["status"] == "failed"

    # Fixed by a variable: resume from the failed step; the features are taken from the last run.
    resumed = run_flow(
        load_flow(flow_path, vars={"src": str(demo_root / "events")}), scheduler=remote_scheduler, start="train"
    )
    states = {n: s.status for n, s in resumed.steps.items()}
    assert states == {"features": "kept", "train": "succeeded", "score": "succeeded", "slow": "not run"}, (
        resumed.summary()
    )
    assert len(DeltaTable(str(lake)).history()) == 1
    assert resumed.steps["score"].rows == 20_000
