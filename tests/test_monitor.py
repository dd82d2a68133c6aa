"""Drift monitoring end to end: a small bundle trained on the demo events, its reference profile,
and batches of new events checked against it on the session cluster (dpipe.monitor, dpipe monitor).

The bundle's ``profile.json`` is the one its training run measured (dpipe.stages.assess).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import dpipe
from dpipe import drift
from dpipe.bundle import Bundle
from dpipe.cli import main
from dpipe.errors import BundleError, ColumnError, SpecError
from dpipe.monitor import DRIFT_HTML, DRIFT_JSON, STATISTICS, monitor, monitor_spec
from dpipe.monitor_cli import DRIFT_EXIT
from dpipe.spec.monitor import MonitorSpec, ThresholdsSpec
from tests.conftest import job_dict
from tests.counting_fs import opened, register

register()

SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def data(demo_root, tmp_path_factory) -> Path:
    """The demo events (4 dates of 5000 rows, drawn alike) with the last date held back as new data."""
    root = tmp_path_factory.mktemp("monitor")
    shutil.copytree(demo_root / "events", root / "events")
    last = sorted((root / "events").glob("date=*"))[-1]
    shutil.move(str(last), root / "new")
    return root


@pytest.fixture(scope="module")
def bundle(data, client) -> str:
    spec = job_dict(data, data / "model")
    spec["train"] = {**spec["train"], "num_boost_round": 8, "early_stopping_rounds": None}
    job = dpipe.job_from_dict(spec)
    result = dpipe.run(job, client, progress=False)
    assert (Path(result.bundle_uri) / drift.PROFILE).exists()
    return result.bundle_uri


@pytest.fixture(scope="module")
def batches(data) -> dict[str, Path]:
    """New events: the held-back date (drawn like the training rows), the same with ``age`` moved
    up by 40 years and a fifth of ``country`` a value the model never saw, and one without columns."""
    root, same = data, data / "new"
    frame = pd.read_parquet(next(same.glob("*.parquet")))
    shifted = frame.assign(age=frame["age"] + 40)
    shifted.loc[shifted.index % 5 == 0, "country"] = SCRIPT
    (root / "shifted").mkdir()
    shifted.to_parquet(root / "shifted" / "part-0.parquet", index=False)
    (root / "partial").mkdir()
    frame.drop(columns=["age", "income"]).to_parquet(root / "partial" / "part-0.parquet", index=False)
    return {"same": same, "shifted": root / "shifted", "partial": root / "partial"}


class LogAtCompute:
    """The session client, noting the files opened so far when a computation is submitted."""

    def __init__(self, client, log: Path):
        self._client, self.log = client, log
        self.before: list[str] | None = None
        self.computed = 0

    def compute(self, *args, **kwargs):
        self.computed += 1
        self.before = opened(self.log)
        return self._client.compute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_every_threshold_is_judged_somewhere():
    assert set(STATISTICS) == set(ThresholdsSpec.model_fields)


def test_a_batch_like_the_training_data_has_not_drifted(bundle, batches, client, tmp_path):
    result = monitor(bundle, str(batches["same"]), client=client, output=str(tmp_path / "drift"), progress=False)
    assert not result.drifted and result.crossed == [], result.summary()
    assert result.rows == 5000
    assert {f["name"] for f in result.features} == set(Bundle.load(bundle).model_input.features)
    assert all(f["psi"] < 0.1 for f in result.features)
    assert result.report["prediction"]["columns"]["prediction"]["psi"] < 0.1
    # The label is in the batch: the job's metrics against the bundle's validation metrics.
    metrics = result.report["metrics"]
    assert set(metrics) == {"logloss", "auc"} and abs(metrics["auc"]["drop"]) < 0.05
    written = json.loads((tmp_path / "drift" / DRIFT_JSON).read_text())
    assert written == json.loads(json.dumps(result.report)) and written["drifted"] is False


def test_a_shifted_batch_crosses_thresholds_and_names_the_feature(bundle, batches, client, tmp_path):
    result = monitor(bundle, str(batches["shifted"]), client=client, output=str(tmp_path / "drift"), progress=False)
    assert result.drifted and result.worst["name"] == "age"
    crossed = {(c["statistic"], c["name"]) for c in result.crossed}
    assert {("psi", "age"), ("unseen_rate", "country"), ("psi", "country")} <= crossed
    country = result.report["features"]["country"]
    assert country["unseen_rate"] == pytest.approx(0.2, abs=0.01)
    assert country["unseen_examples"] == [{"value": SCRIPT, "rows": 1000}]
    assert result.report["features"]["device"]["psi"] < 0.1
    page = (tmp_path / "drift" / DRIFT_HTML).read_text()
    # Self-contained and escaped: the source's text never becomes markup, nothing is fetched.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "src=" not in page and "http" not in page.replace(result.report["bundle"], "")
    assert "DRIFT" in page and "age" in page


def test_a_hashed_column_has_no_unseen_values(data, batches, client, tmp_path):
    """A hash bucket's categories are bucket numbers, not source values: every value has one."""
    spec = job_dict(data, tmp_path / "hashed")
    spec["features"] = [
        *spec["features"][:-1],
        {"op": "hash_bucket", "columns": ["country"], "n_buckets": 8},
        {"op": "categorical", "columns": ["device", "plan"]},
    ]
    spec["train"] = {**spec["train"], "num_boost_round": 4, "early_stopping_rounds": None}
    hashed = dpipe.run(dpipe.job_from_dict(spec), client, progress=False).bundle_uri
    result = monitor(hashed, str(batches["same"]), client=client, progress=False)
    assert result.report["features"]["country"]["unseen_rate"] is None
    assert not any(c["statistic"] == "unseen_rate" for c in result.crossed), result.summary()


def test_the_batch_is_read_once_in_one_computation(bundle, data, client, tmp_path):
    log = tmp_path / "opens.log"
    events = data / "events"  # three files
    source = {"uri": f"opencount://{events}", "format": "parquet", "storage_options": {"log": str(log)}}
    counting = LogAtCompute(client, log)
    result = monitor(bundle, source, client=counting, progress=False)
    files = sorted(str(f) for f in events.rglob("*.parquet"))
    during = sorted(opened(log)[len(counting.before or []) :])
    assert len(files) == 3 and counting.computed == 1 and result.rows == 15000
    assert during == files, "each file of the batch is opened exactly once by the computation"


def test_a_batch_without_feature_columns_fails_before_any_computation(bundle, batches, client):
    counting = LogAtCompute(client, Path("/nonexistent"))
    with pytest.raises(ColumnError, match=r"the model needs column\(s\) \['age', 'income'\] that .* does not provide"):
        monitor(bundle, str(batches["partial"]), client=counting, progress=False)
    assert counting.computed == 0


def test_labels_required_but_absent(bundle, batches, client, tmp_path):
    frame = pd.read_parquet(next(batches["same"].rglob("*.parquet"))).drop(columns=["converted"])
    path = tmp_path / "unlabeled.parquet"
    frame.to_parquet(path, index=False)
    with pytest.raises(ColumnError, match=r"labels: the label needs column\(s\) \['converted'\]"):
        monitor(bundle, str(path), client=client, labels=True, progress=False)
    result = monitor(bundle, str(path), client=client, progress=False)
    assert result.report["metrics"] is None and "none in the batch" in result.report["labels"]


def test_a_bundle_without_a_profile(bundle, tmp_path, client):
    copy = tmp_path / "old"
    shutil.copytree(bundle, copy)
    (copy / drift.PROFILE).unlink()
    with pytest.raises(BundleError, match="has no profile.json"):
        monitor(str(copy), "unused", client=client, progress=False)


def test_thresholds_from_python_and_their_errors():
    spec = monitor_spec({"psi": 0.5, "ks": 0.2})
    assert spec.thresholds.psi == 0.5 and spec.thresholds.ks == 0.2 and spec.thresholds.missing_rate == 0.1
    assert monitor_spec({"thresholds": {"psi": None}, "ignore": ["age"]}).thresholds.active()["missing_rate"] == 0.1
    base = {"thresholds": {"psi": 0.3}, "retrain": "jobs/x.yaml"}
    assert monitor_spec({"js": 0.2}, saved=base) == MonitorSpec(
        thresholds={"psi": 0.3, "js": 0.2}, retrain="jobs/x.yaml"
    )
    with pytest.raises(SpecError, match=r"thresholds\.psii: unknown key.*did you mean 'psi'"):
        monitor_spec({"psii": 0.1})
    with pytest.raises(SpecError, match=r"thresholds\.js: .*less than or equal to 1"):
        monitor_spec({"js": 3})


def test_ignored_features_are_reported_not_judged(bundle, batches, client):
    result = monitor(
        bundle,
        str(batches["shifted"]),
        client=client,
        thresholds={"ignore": ["age", "country"], "thresholds": {"metric_drop": None}},
        progress=False,
    )
    assert not result.drifted, result.summary()
    assert result.report["features"]["age"]["psi"] > 1


def test_the_command_exits_3_on_drift_and_0_without(bundle, batches, client, tmp_path, capsys):
    address = client.scheduler.address
    base = ["monitor", bundle, "--scheduler", address, "-q"]
    entry = tmp_path / "batch.yaml"
    entry.write_text(json.dumps({"uri": str(batches["same"]), "format": "parquet"}))
    assert main([*base, "--source-spec", str(entry), "--output", str(tmp_path / "drift")]) == 0
    assert "no threshold crossed" in capsys.readouterr().out
    assert json.loads((tmp_path / "drift" / DRIFT_JSON).read_text())["drifted"] is False
    code = main([*base, "--source", str(batches["shifted"]), "--json", "--threshold", "metric_drop=none"])
    report = json.loads(capsys.readouterr().out)
    assert code == DRIFT_EXIT == 3
    assert report["drifted"] and report["worst"]["name"] == "age" and report["retrained"] is None
    assert report["thresholds"].get("metric_drop") is None


def test_the_command_exits_2_on_bad_input(bundle, batches, capsys):
    assert main(["monitor", bundle, "--source", str(batches["partial"])]) == 2
    assert "the model needs column(s) ['age', 'income']" in capsys.readouterr().err
    assert main(["monitor", bundle, "--source", "x", "--threshold", "psi"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
    assert main(["monitor", bundle, "--source", "x", "--threshold", "bogus=1"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["monitor", bundle]) == 2
    assert "exactly one of --source" in capsys.readouterr().err


def test_retrain_runs_the_job_when_drift_is_found(bundle, batches, demo_root, client, tmp_path, capsys):
    spec = job_dict(demo_root, tmp_path / "retrained")
    spec["train"] = {**spec["train"], "num_boost_round": 3, "early_stopping_rounds": None}
    spec["cluster"] = {"address": client.scheduler.address}
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(spec))  # JSON is YAML
    code = main(
        ["monitor", bundle, "--source", str(batches["shifted"]), "--retrain", str(job), "--json", "-q"]
        + ["--scheduler", client.scheduler.address]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == DRIFT_EXIT
    assert report["retrained"]["bundle_uri"].endswith("retrained")
    assert Bundle.load(str(tmp_path / "retrained")).model_input.features
