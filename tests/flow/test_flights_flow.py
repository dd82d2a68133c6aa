"""jobs/flights-flow.yaml, the example flow, on a 5% sample of the real flights data: run by
`dpipe flow run` on a real `dask scheduler` and workers, then again (every step skipped)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.flow.conftest import webhook


@pytest.fixture(scope="module")
def flights_sample(tmp_path_factory) -> Path:
    from dpipe.demo import write_flights_data

    root = tmp_path_factory.mktemp("flights-flow") / "flights"
    write_flights_data(str(root), sample=0.05, seed=1)
    return root


def _flow_with_alerts(tmp_path: Path, alerts: list[dict]) -> Path:
    """The example flow with its job files where they are, these alerts, and fewer boosting rounds."""
    flow = yaml.safe_load((ROOT / "jobs" / "flights-flow.yaml").read_text())
    for step in flow["steps"].values():
        if isinstance(step["job"], str):
            step["job"] = str(ROOT / "jobs" / step["job"])
    flow["alerts"] = alerts
    flow["steps"]["train"]["set"] = {"train.num_boost_round": 60, "train.early_stopping_rounds": 10}
    path = tmp_path / "flights-flow.yaml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return path


def _run(flow: Path, *args: str, cwd: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "dpipe", "flow", "run", str(flow), "--json", "-q", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
    assert done.returncode in (0, 3), done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_flights_flow_runs_every_step_then_a_rerun_skips_them_all(
    flights_sample, tmp_path, remote_scheduler, steps_env
):
    out = tmp_path / "out"
    with webhook() as (url, received):
        flow = _flow_with_alerts(
            tmp_path,
            [
                {"on": ["success", "failure", "drift"], "webhook": url},
                # Down: logged, and the run's result is the same.
                {"on": ["success", "drift"], "webhook": f"http://127.0.0.1:{free_port()}/gone", "timeout": 2},
            ],
        )
        variables = ["--var", f"data={flights_sample}", "--var", f"out={out}", "--scheduler", remote_scheduler]
        first = _run(flow, *variables, cwd=tmp_path)
        steps = first["steps"]
        assert first["status"] == "succeeded"
        assert {n: s["status"] for n, s in steps.items()} == dict.fromkeys(steps, "succeeded"), steps
        assert list(steps) == ["features", "train", "promote", "score", "monitor"]
        # Trained on months 1-10 of the Delta table the first step wrote.
        assert steps["train"]["inputs"] == {"features": f"{out}/lake/features"}
        assert steps["train"]["result"]["metrics"]["valid"]["auc"] > 0.6
        decision = steps["promote"]["result"]["details"]["decision"]
        assert steps["promote"]["output"] == "models:/flights/1" and decision["promoted"]
        assert decision["candidate_score"] > 0.6  # scored on November-December by the gate
        scored = steps["score"]["rows"]
        assert scored == _rows(out / "scores.duckdb", "delays") > 1000
        assert (out / "drift" / "drift.json").exists()
        assert received[-1]["run_id"] == first["run_id"] and received[-1]["status"] == "succeeded"

        again = _run(flow, *variables, cwd=tmp_path)
        assert {n: s["status"] for n, s in again["steps"].items()} == dict.fromkeys(steps, "skipped"), again
        assert again["steps"]["promote"]["output"] == "models:/flights/1"
        assert _rows(out / "scores.duckdb", "delays") == scored
        # The skipped monitor found nothing new: no second drift alert; success is said again.
        assert received[-1]["event"] == "success" and len(received) == 2

    shown = subprocess.run(
        [sys.executable, "-m", "dpipe", "flow", "show", str(flow), "--dot"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert '"promote" -> "score";' in shown.stdout and "skipped" in shown.stdout


def _rows(database: Path, table: str) -> int:
    import duckdb

    with duckdb.connect(str(database), read_only=True) as db:
        return db.sql(f"select count(*) as n from {table}").to_arrow_table()["n"][0].as_py()
