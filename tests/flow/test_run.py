"""Flows that go wrong, for real: each step a `dpipe run` process on a real `dask scheduler` and
workers; a step killed mid-run, one that times out, one that fails, and resuming from it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dpipe.flow import load_flow, run_flow


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


def _write(path: Path, flow: dict) -> Path:
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return path


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
