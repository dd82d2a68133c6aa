"""A flow is checked as a whole before anything runs: no cluster, no data read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpipe.errors import SpecError
from dpipe.flow import load_flow

ROOT = Path(__file__).resolve().parents[2]


def _train(source: dict, **extra) -> dict:
    return {
        "source": source,
        "label": {"column": "converted"},
        "train": {"num_boost_round": 5},
        "output": {"uri": "runs/model"},
        **extra,
    }


def _features(uri: str = "lake/features", fmt: str = "delta") -> dict:
    return {"kind": "features", "source": {"uri": "data/events"}, "output": {"format": fmt, "uri": uri}}


def write(tmp_path: Path, steps: dict, **top) -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump({"name": "f", **top, "steps": steps}, sort_keys=False))
    return path


def problems(path: Path, **kw) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as err:
        load_flow(path, **kw)
    return list(err.value.problems)


def test_references_and_registered_models_order_the_steps(tmp_path):
    path = write(
        tmp_path,
        {
            # Listed out of order: the flow runs them in the order their data needs.
            "score": {
                "job": {
                    "kind": "predict",
                    "bundle": "models:/churn@champion",
                    "registry": "runs/registry",
                    "source": {"uri": "${steps.features.output}", "format": "delta"},
                    "output": {"uri": "runs/scores"},
                }
            },
            "promote": {
                "job": {
                    "kind": "register",
                    "bundle": "${steps.train.output}",
                    "registry": {"uri": "runs/registry", "name": "churn"},
                    "promote": "champion",
                }
            },
            "train": {"job": _train({"uri": "${steps.features.output}", "format": "delta"})},
            "features": {"job": _features()},
            "report": {"job": _features("lake/other", "parquet"), "needs": ["features"]},
        },
    )
    flow = load_flow(path)
    assert list(flow.steps) == ["features", "train", "report", "promote", "score"]
    assert flow.steps["train"].needs == ("features",)
    assert flow.steps["promote"].needs == ("train",)
    # `models:/churn@...` is made by the register step: the scoring waits for it.
    assert set(flow.steps["score"].needs) == {"features", "promote"}
    assert flow.steps["train"].reads == (("features", "source.uri"),)
    assert flow.resolve(flow.steps["train"], {"features": "s3://lake/f"})["source"]["uri"] == "s3://lake/f"
    assert flow.downstream("train") == ["train", "promote", "score"]
    dot = flow.dot({"train": "failed"})
    assert '"features" -> "train";' in dot and 'fillcolor="salmon"' in dot


def test_every_problem_is_reported_at_once_with_its_step(tmp_path):
    path = write(
        tmp_path,
        {
            "a": {"job": _train({"uri": "${steps.nope.output}"}), "needs": ["ghost"]},
            "b": {
                "job": {
                    "kind": "predict",
                    "bundle": "${steps.c.output}",
                    "source": {"uri": "x"},
                    "output": {"uri": "y"},
                }
            },
            "c": {"job": _features()},
            "d": {"job": _train({"uri": "${steps.c.output}"})},  # a Delta table read as Parquet
            "e": {"job": _train({"uri": "${steps.c.output}", "format": "csv"})},
            "f": {"job": {**_train({"uri": "data"}), "label": {"colum": "y"}}},
            "g": {"job": "missing.yaml"},
            "h": {"job": _train({"uri": "${steps.c.uri}"})},
            "i": {"job": {"kind": "monitor", "bundle": "m", "source": {"uri": "x"}, "output": "r"}},
            "j": {"job": _train({"uri": "${steps.i.output}"})},
        },
    )
    found = dict(problems(path))
    assert "no step 'ghost'" in found["steps.a.needs"]
    assert "no step 'nope'" in found["steps.a.job.source.uri"]
    assert "as a model bundle, but it is a table" in found["steps.b.job.bundle"]
    assert "add `format: delta`" in found["steps.d.job.source.uri"]
    assert "as csv, but the step writes delta" in found["steps.e.job.source.uri"]
    # A job's own error, under its step, with the job's own words.
    assert "step 'f'" in found["steps.f"] and "label.colum: unknown key" in found["steps.f"]
    assert "job spec" in found["steps.g.job"] and "missing.yaml" in found["steps.g.job"]
    assert "a step has only `output`" in found["steps.h.job.source.uri"]
    assert "drift report" in found["steps.j.job.source.uri"]


def test_a_cycle_is_named_step_by_step(tmp_path):
    path = write(
        tmp_path,
        {
            "a": {"job": _features("lake/a"), "needs": ["c"]},
            "b": {"job": _features("lake/b"), "needs": ["a"]},
            "c": {"job": _features("lake/c"), "needs": ["b"]},
            "d": {"job": _features("lake/d")},
        },
    )
    (found,) = problems(path)
    assert found == ("steps", "the steps need each other in a cycle: a -> c -> b -> a")


def test_variables_come_from_var_then_the_environment_then_the_flow(tmp_path, monkeypatch):
    job = _train({"uri": "data/events", "filters": [["date", "==", "${ds}"]]}, name="t-${ds}")
    path = write(tmp_path, {"t": {"job": job}}, vars={"ds": "2024-01-01"})
    assert load_flow(path).vars["ds"] == "2024-01-01"
    monkeypatch.setenv("ds", "2024-01-02")
    assert load_flow(path).vars["ds"] == "2024-01-02"
    assert load_flow(path, vars={"ds": "2024-01-03"}).vars["ds"] == "2024-01-03"
    # The job is checked with the value; its file keeps the variable for the step's environment.
    assert load_flow(path).steps["t"].data["name"] == "t-${ds}"


def test_a_variable_nobody_sets_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ds", raising=False)
    path = write(tmp_path, {"t": {"job": _train({"uri": "data/${ds}"})}})
    ((where, message),) = problems(path)
    assert where == "steps.t" and "environment variable 'ds' is not set" in message


def test_job_files_are_found_beside_the_flow_and_set_changes_them(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "train.yaml").write_text(yaml.safe_dump(_train({"uri": "data/events"})))
    path = write(tmp_path, {"t": {"job": "jobs/train.yaml", "set": {"train.num_boost_round": 77}}})
    step = load_flow(path).steps["t"]
    assert step.data["train"]["num_boost_round"] == 77
    assert step.data["name"] == "train"  # from the file's name, as `dpipe run` names it
    assert "jobs/train.yaml" in step.origin


def test_flow_keys_are_checked_like_job_keys(tmp_path):
    path = write(
        tmp_path,
        {"t": {"job": _features(), "retry": 3, "timeout": "soon"}},
        alerts=[{"on": ["failure"], "command": "x", "webhook": "http://127.0.0.1:1/"}],
    )
    found = dict(problems(path))
    assert "did you mean 'retries'" in found["steps.t.retry"]
    assert "not a duration" in found["steps.t.timeout"]
    assert "exactly one of `command` or `webhook`" in found["alerts[0]"]
    named = write(tmp_path, {"bad name!": {"job": _features()}})
    assert "step names ['bad name!']" in dict(problems(named))["steps"]


def test_the_cli_validates_and_shows_a_flow(tmp_path):
    path = write(
        tmp_path,
        {
            "features": {"job": _features()},
            "train": {"job": _train({"uri": "${steps.features.output}", "format": "delta"})},
        },
    )
    run = [sys.executable, "-m", "dpipe", "flow"]
    done = subprocess.run([*run, "validate", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "train: train (needs features)" in done.stdout
    shown = subprocess.run([*run, "show", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert "never run" in shown.stdout and "<- features" in shown.stdout
    bad = write(tmp_path, {"t": {"job": _train({"uri": "${steps.x.output}"})}})
    failed = subprocess.run([*run, "validate", str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert failed.returncode == 2
    assert "steps.t.job.source.uri" in failed.stderr and "Traceback" not in failed.stderr
