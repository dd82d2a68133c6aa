"""End to end: example jobs, train/serve parity, model quality, and bad input through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

import dpipe
from dpipe.errors import ColumnError, DataError, StorageError, TrainingError
from dpipe.spec import job_from_dict
from tests.conftest import ROOT, job_dict

# Training jobs over the demo events data; jobs/flights.yaml has its own test (tests/integration/test_flights.py),
# features jobs (jobs/*-features.yaml) theirs below, and flows (jobs/*-flow.yaml) tests/flow.
JOBS = sorted(
    p for p in (ROOT / "jobs").glob("*.yaml") if p.stem != "flights" and not p.stem.endswith(("-features", "-flow"))
)


def cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpipe.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".dpipe-" in p.name] if parent.exists() else []


@pytest.mark.parametrize("spec", JOBS, ids=[p.stem for p in JOBS])
def test_example_job_validates_and_runs(spec, demo_root, tmp_path):
    overrides = [
        "--set",
        f"source.uri={demo_root / 'events'}",
        "--set",
        f"output.uri={tmp_path / 'bundle'}",
        "--set",
        "train.num_boost_round=15",
        "--set",
        "cluster.n_workers=2",
        "--set",
        "cluster.threads_per_worker=1",
    ]
    checked = cli("validate", spec, *overrides)
    assert checked.returncode == 0, checked.stderr
    assert "valid; source has 4 file(s)" in checked.stdout

    ran = cli("run", spec, *overrides, "--json")
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    bundle = tmp_path / "bundle"
    assert {"model.ubj", "pipeline.json", "metrics.json", "manifest.json"} <= {p.name for p in bundle.iterdir()}
    assert result["rows"]["read"] == 20_000
    assert result["metrics"]["num_boosted_rounds"] <= 15
    assert set(result["timings"]) >= {"plan", "fit", "load", "train", "write"}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["spec"]["train"]["num_boost_round"] == 15
    assert len(manifest["input"]["files"]) == 4
    assert manifest["versions"]["xgboost"].startswith("3.2")
    assert "started LocalCluster (2 workers, 2 threads); dashboard: http://" in ran.stderr
    assert leftovers(tmp_path) == []

    shown = cli("show", bundle)
    assert shown.returncode == 0 and "best iteration" in shown.stdout


@pytest.fixture(scope="module")
def trained(demo_root, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "bundle"
    job = dpipe.job_from_dict(
        job_dict(
            demo_root,
            out,
            output={"uri": str(out), "valid_predictions": True},
            train={"num_boost_round": 40, "early_stopping_rounds": 5},
        )
    )
    return job, dpipe.run(job, client=client, progress=False)


def test_result_reports_metrics_rows_timings_and_bundle(trained):
    job, result = trained
    assert result.rows["read"] == 20_000
    assert result.rows["train"] + result.rows["valid"] == 20_000
    assert 0.2 < result.rows["valid"] / 20_000 < 0.3
    assert 0.7 < result.metrics["valid"]["auc"] <= 1.0
    assert result.metrics["best_iteration"] < result.metrics["rounds_trained"]
    assert Path(result.bundle_uri) == Path(job.output.uri)
    # Every stateful op reads raw columns only: one pass over the data fits them all.
    assert result.manifest["fit_phases"] == [["features[0]", "features[1]", "features[3]", "features[4]"]]


def test_split_is_deterministic_across_runs(trained, demo_root, client, tmp_path):
    job, result = trained
    again = job.model_copy(update={"output": job.output.model_copy(update={"uri": str(tmp_path / "again")})})
    second = dpipe.run(again, client=client, progress=False)
    first_ids = set(pd.read_parquet(Path(result.bundle_uri) / "valid_predictions")["event_id"])
    second_ids = set(pd.read_parquet(tmp_path / "again" / "valid_predictions")["event_id"])
    assert first_ids == second_ids
    assert second.metrics["valid"] == result.metrics["valid"]


def test_predict_reproduces_in_run_validation_predictions(trained, demo_root, client, tmp_path):
    job, result = trained
    scores = tmp_path / "scores"
    out = dpipe.predict(result.bundle_uri, str(demo_root / "events"), str(scores), client=client, progress=False)
    assert out.rows == 20_000
    assert (scores / "_SUCCESS").exists()
    predicted = pd.read_parquet(scores)
    assert list(predicted.columns) == ["event_id", "prediction"]
    in_run = pd.read_parquet(Path(result.bundle_uri) / "valid_predictions")
    merged = in_run.merge(predicted, on="event_id", suffixes=("_run", "_predict"))
    assert len(merged) == len(in_run) == result.rows["valid"]
    np.testing.assert_allclose(merged["prediction_run"], merged["prediction_predict"], rtol=0, atol=1e-6)

    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(in_run["label"], in_run["prediction"])
    assert auc == pytest.approx(result.metrics["valid"]["auc"], abs=1e-4)


def test_predict_checks_feature_types_before_starting_a_cluster(trained, demo_root, tmp_path):
    _, result = trained
    data = pd.read_parquet(demo_root / "events")
    data["sessions"] = "n" + data["sessions"].astype(str)  # a number in training, text now
    (tmp_path / "new").mkdir()
    data.to_parquet(tmp_path / "new" / "part.parquet")
    message = r"(?s)source: feature column\(s\) \{'sessions': 'string'\} of .* not numeric.*Hint:"
    with pytest.raises(ColumnError, match=message):
        dpipe.predict(result.bundle_uri, str(tmp_path / "new"), str(tmp_path / "scores"), progress=False)
    assert not (tmp_path / "scores").exists() and leftovers(tmp_path) == []


def test_columns_with_missing_values_in_some_files_only(client, tmp_path):
    # pyarrow gives an integer column float64, and a boolean column objects, in a file where it has
    # a missing value: the split, the vocabulary, the features and predict must not notice.
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    (tmp_path / "src").mkdir()
    for k in range(4):
        n = 1000
        code, flag, x = rng.integers(0, 5, n), rng.random(n) < 0.5, rng.random(n)
        y = (code == 2) ^ flag ^ (x > 0.8)
        gaps = rng.random(n) < 0.1
        pq.write_table(
            pa.table(
                {
                    "id": np.arange(k * n, (k + 1) * n),
                    "code": pa.array(code, mask=gaps if k % 2 else None),
                    "flag": pa.array(flag, mask=gaps if k % 2 == 0 else None),
                    "x": x,
                    "y": pa.array(y),
                }
            ),
            tmp_path / "src" / f"part-{k}.parquet",
        )
    job = dpipe.job_from_dict(
        {
            "source": {"uri": str(tmp_path / "src")},
            "id_columns": ["id"],
            "features": [
                {"op": "categorical", "columns": ["code"]},
                {"op": "derive", "name": "flag_if_x", "expr": "where(x > 0.5, flag, False)"},
            ],
            "label": {"column": "y"},
            "train": {"num_boost_round": 20, "params": {"max_depth": 4}},
            "output": {"uri": str(tmp_path / "bundle"), "valid_predictions": True},
        }
    )
    result = dpipe.run(job, client=client, progress=False)
    assert result.rows["read"] == 4000 and result.manifest["features"]["categorical"] == ["code"]
    assert result.metrics["valid"]["auc"] > 0.95  # flag is read as booleans, not as text

    dpipe.predict(result.bundle_uri, str(tmp_path / "src"), str(tmp_path / "scores"), client=client, progress=False)
    in_run = pd.read_parquet(tmp_path / "bundle" / "valid_predictions")
    merged = in_run.merge(pd.read_parquet(tmp_path / "scores"), on="id", suffixes=("_run", "_predict"))
    assert len(merged) == result.rows["valid"]
    np.testing.assert_allclose(merged["prediction_run"], merged["prediction_predict"], rtol=0, atol=1e-6)


def test_distributed_auc_matches_single_process_xgboost(trained, demo_root):
    """The distributed model is as good as xgboost.train on the same rows, features and split."""
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    from dpipe.bundle import Bundle
    from dpipe.columns import LABEL, SIDE, TRAIN, VALID
    from dpipe.runner import plan

    job, result = trained
    bundle = Bundle.load(result.bundle_uri)
    p = plan(job)
    raw = pd.read_parquet(demo_root / "events")[p.source.columns]
    labeled = p.labeler(raw)
    frame = bundle.pipeline.transform_partition(labeled)
    X = bundle.model_input(frame)
    train, valid = (frame[SIDE] == TRAIN).to_numpy(), (frame[SIDE] == VALID).to_numpy()
    assert train.sum() == result.rows["train"] and valid.sum() == result.rows["valid"]
    from dpipe.train import xgb_params

    params = {**xgb_params(job.train), "nthread": 2}
    dtrain = xgb.DMatrix(X[train], frame[LABEL][train], enable_categorical=True)
    dvalid = xgb.DMatrix(X[valid], frame[LABEL][valid], enable_categorical=True)
    single = xgb.train(params, dtrain, num_boost_round=result.metrics["num_boosted_rounds"])
    single_auc = roc_auc_score(frame[LABEL][valid], single.predict(dvalid))
    assert abs(result.metrics["valid"]["auc"] - single_auc) <= 0.01


def test_overwrite_false_fails_before_any_work(trained, client):
    job, result = trained
    job = job.model_copy(update={"output": job.output.model_copy(update={"overwrite": False})})
    with pytest.raises(StorageError, match=r"output.uri: .* already exists"):
        dpipe.run(job, client=client, progress=False)


def test_failed_run_keeps_the_previous_bundle(trained, client):
    job, result = trained
    bundle = Path(result.bundle_uri)
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    broken = job.model_copy(update={"train": job.train.model_copy(update={"params": {"max_depth": -3}})})
    with pytest.raises(TrainingError, match="train: XGBoost failed"):
        dpipe.run(broken, client=client, progress=False)
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before
    assert leftovers(bundle.parent) == []


def test_whole_files_on_one_side_of_the_split(demo_root, client, tmp_path):
    # A split key on the partition column puts whole files on one side, and the filter empties two
    # files: the training rows are one file, the validation rows another. Every worker still needs
    # rows of both (xgboost.dask fails with categorical features otherwise).
    spec = job_dict(demo_root, tmp_path / "out", split={"valid_fraction": 0.3, "seed": 1, "key": ["date"]})
    spec["features"].insert(0, {"op": "filter", "expr": "date in ['2024-01-01', '2024-01-04']"})
    spec["train"].update(num_boost_round=5)
    result = dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    assert (result.rows["train"], result.rows["valid"]) == (5000, 5000)
    assert 0.6 < result.metrics["valid"]["auc"] <= 1.0


def test_empty_after_filtering(demo_root, client, tmp_path):
    spec = job_dict(demo_root, tmp_path / "out")
    spec["features"] = [*spec["features"], {"op": "filter", "expr": "sessions > 1000"}]
    with pytest.raises(DataError, match=r"no rows left to train on: 20000 read, 0 without a label, 20000 removed"):
        dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_categorical_feature_without_any_frequent_value(demo_root, client, tmp_path):
    spec = job_dict(demo_root, tmp_path / "out")
    spec["features"][-1] = {"op": "categorical", "columns": ["country", "device", "plan"], "min_frequency": 100_000}
    message = r"(?s)train: categorical feature\(s\) \['country', 'device', 'plan'\] have no category.*Hint: lower"
    with pytest.raises(DataError, match=message):
        dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_label_with_one_class(demo_root, client, tmp_path):
    spec = job_dict(demo_root, tmp_path / "out", label={"expr": "sessions > 1000"})
    with pytest.raises(DataError, match=r"label: every training row has label 0.0: one class, nothing to learn"):
        dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_label_expression_leaves_its_inputs_out_of_the_features(demo_root, client, tmp_path):
    spec = job_dict(demo_root, tmp_path / "out", label={"expr": "sessions > 6"})
    spec["train"]["num_boost_round"] = 5
    result = dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    features = result.manifest["features"]["features"]
    assert "sessions" not in features and "converted" in features


def test_non_numeric_feature_is_caught_before_compute(demo_root, tmp_path):
    spec = job_dict(demo_root, tmp_path / "out")
    spec["features"] = [f for f in spec["features"] if f["op"] != "categorical"]
    with pytest.raises(
        ColumnError, match=r"(?s)neither numeric nor categorical.*Hint: encode them with a `categorical` op"
    ):
        dpipe.run(dpipe.job_from_dict(spec), progress=False)  # no client: fails before starting a cluster


# -- the CLI's contract for bad input: one message, exit 2 (spec) or 1 (runtime), nothing written ------
def _write(tmp_path, spec) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (
            lambda s: s["features"].append({"op": "standardize", "columns": ["age"]}),
            2,
            r"features\[5\]: unknown op 'standardize'",
        ),
        (lambda s: s["train"].update(rounds=3), 2, r"train.rounds: unknown key; allowed keys: .*num_boost_round"),
        (
            lambda s: s["split"].update(valid_fraction="half"),
            2,
            r"split.valid_fraction: Input should be a valid number",
        ),
        (
            lambda s: s["features"].append({"op": "derive", "name": "x", "expr": "age +* 2"}),
            2,
            r"features\[5\].expr: cannot parse",
        ),
        (
            lambda s: s["features"].append({"op": "standard_scale", "columns": ["incme"]}),
            2,
            r"features\[5\] \(standard_scale\): column\(s\) \['incme'\] not found.*did you mean 'income'",
        ),
        (lambda s: s["label"].update(column="convertd"), 2, r"label.column: column\(s\) \['convertd'\] not found"),
        (
            lambda s: s["source"].update(uri="/nonexistent/events"),
            1,
            r"source.uri: '/nonexistent/events' does not exist",
        ),
        (
            lambda s: s["source"].update(filters=[["date", ">", "2030-01-01"]]),
            1,
            r"no file under .* matches `source.filters`",
        ),
    ],
    ids=[
        "unknown-op",
        "unknown-key",
        "wrong-type",
        "bad-expression",
        "missing-column",
        "missing-label",
        "missing-path",
        "filters-match-nothing",
    ],
)
def test_cli_bad_input(demo_root, tmp_path, change, code, message):
    spec = job_dict(demo_root, tmp_path / "out")
    change(spec)
    done = cli("run", _write(tmp_path, spec))
    assert done.returncode == code, done.stderr
    assert done.stderr.count("dpipe: error:") == 1
    assert "Traceback" not in done.stderr
    assert "started LocalCluster" not in done.stderr  # caught before any cluster or compute
    import re

    assert re.search(message, done.stderr, re.S), done.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_cli_runtime_failure_exit_code_and_verbose_traceback(demo_root, tmp_path, client):
    spec = job_dict(demo_root, tmp_path / "out", label={"expr": "sessions > 1000"})
    path = _write(tmp_path, spec)
    # On the session's cluster: what is tested is the error, not starting a LocalCluster.
    scheduler = ("--scheduler", client.scheduler.address)
    done = cli("run", path, *scheduler)
    assert done.returncode == 1
    assert "dpipe: error: label: every training row has label 0.0" in done.stderr
    assert "Traceback" not in done.stderr
    verbose = cli("run", path, *scheduler, "--verbose", "--quiet")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_cli_predict_and_demo_data(tmp_path, trained, client):
    _, result = trained
    made = cli("demo-data", tmp_path / "demo", "--rows", "3000", "--days", "2")
    assert made.returncode == 0 and "wrote 3000 rows in 2 files" in made.stdout
    done = cli(
        "predict",
        result.bundle_uri,
        "--source",
        tmp_path / "demo" / "events",
        "--output",
        tmp_path / "scores",
        "--id-columns",
        "event_id,date",
        "--quiet",
        "--scheduler",
        client.scheduler.address,
    )
    assert done.returncode == 0, done.stderr
    scores = pd.read_parquet(tmp_path / "scores")
    assert list(scores.columns) == ["event_id", "date", "prediction"] and len(scores) == 3000
    assert scores["prediction"].between(0, 1).all()
    missing = cli("predict", tmp_path / "nope", "--source", tmp_path / "demo" / "events", "--output", tmp_path / "s2")
    assert missing.returncode == 1 and "bundle: " in missing.stderr and "does not exist" in missing.stderr


def test_corrupt_file_in_a_distributed_run_is_named(demo_root, client, tmp_path):
    import shutil

    data = tmp_path / "events"
    shutil.copytree(demo_root / "events", data)
    bad = data / "date=2024-01-03" / "part-0.parquet"
    bad.write_bytes(b"PAR1" + b"\0not parquet" * 64 + b"PAR1")
    spec = job_dict(demo_root, tmp_path / "out", source={"uri": str(data)})
    with pytest.raises(DataError, match=r"(?s)source: cannot read file '.*date=2024-01-03/part-0.parquet'.*Hint:"):
        dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_feature_ops_may_not_read_the_label(demo_root, tmp_path):
    spec = job_dict(demo_root, tmp_path / "out")
    spec["features"].append({"op": "filter", "expr": "converted >= 0"})
    with pytest.raises(ColumnError, match=r"features\[5\] \(filter\): reads the label column\(s\) \['converted'\]"):
        dpipe.run(dpipe.job_from_dict(spec), progress=False)


def test_predict_reads_only_the_columns_the_model_needs(trained, demo_root, client, tmp_path, monkeypatch):
    import dpipe.runner as runner

    _, result = trained
    asked = []
    real_open = runner.open_source

    def spy(spec, **kwargs):
        asked.append(kwargs.get("columns"))
        return real_open(spec, **kwargs)

    monkeypatch.setattr(runner, "open_source", spy)
    dpipe.predict(result.bundle_uri, str(demo_root / "events"), str(tmp_path / "s"), client=client, progress=False)
    needed = {"event_id", "age", "tenure_days", "income", "sessions", "pages_per_session", "country", "device", "plan"}
    assert set(asked[-1]) == needed  # not `converted` (the label) nor `date` (excluded)


def test_label_from_a_joined_table(client, demo_root, tmp_path):
    """Outcomes recorded in another table: joined for training only, unmatched rows counted."""
    import pyarrow.parquet as pq

    events = pd.read_parquet(demo_root / "events", columns=["event_id", "converted"])
    outcomes = events.iloc[: int(len(events) * 0.9)].rename(columns={"event_id": "id", "converted": "bought"})
    (tmp_path / "outcomes").mkdir()
    pq.write_table(pa.Table.from_pandas(outcomes, preserve_index=False), tmp_path / "outcomes" / "part-0.parquet")
    spec = job_dict(demo_root, tmp_path / "bundle")
    spec["source"]["columns"] = [c for c in events_columns(demo_root) if c != "converted"]
    spec["label"] = {
        "column": "bought",
        "join": {"source": {"uri": str(tmp_path / "outcomes")}, "left_on": ["event_id"], "right_on": ["id"]},
    }
    result = dpipe.run(job_from_dict(spec), client=client, progress=False)
    rows = result.rows
    assert rows["dropped_missing_label"] == len(events) - len(outcomes)
    assert rows["train"] + rows["valid"] + rows["dropped_by_filters"] == len(outcomes)
    step = result.manifest["steps"]["label.join"]
    assert step["unmatched"] == len(events) - len(outcomes)
    assert "bought" not in result.manifest["features"]["features"]
    assert result.metrics["valid"]["auc"] > 0.7
    # Too many rows without an outcome is an error, if asked for.
    spec["label"]["join"]["max_unmatched_fraction"] = 0.05
    spec["output"]["uri"] = str(tmp_path / "other")
    with pytest.raises(
        DataError, match=r"label.join \(join .*outcomes.* on \['id'\]\): \d+ of \d+ rows \(10\.0%\) found no match"
    ):
        dpipe.run(job_from_dict(spec), client=client, progress=False)
    assert not (tmp_path / "other").exists()


def events_columns(root) -> list[str]:
    import pyarrow.dataset as pads

    return pads.dataset(root / "events", partitioning="hive").schema.names


def test_the_fit_pass_reads_only_the_columns_the_statistics_need(demo_root, tmp_path):
    from dpipe.runner import plan

    p = plan(job_from_dict(job_dict(demo_root, tmp_path / "bundle")))
    # Ops' inputs, the label and the split key; `sessions` (a feature nothing transforms) and
    # `date` are read only by the load stage.
    assert p.fit_columns == [
        "event_id",
        "age",
        "income",
        "tenure_days",
        "pages_per_session",
        "country",
        "device",
        "plan",
        "converted",
    ]
    with_quarantine = job_dict(
        demo_root, tmp_path / "b2", checks=[{"check": "not_null", "columns": ["age"]}], quarantine={"max_fraction": 0.5}
    )
    assert plan(job_from_dict(with_quarantine)).fit_columns is None


def test_example_features_job_delivers_to_delta(demo_root, tmp_path):
    import deltalake

    spec = ROOT / "jobs" / "quickstart-features.yaml"
    table = tmp_path / "lake" / "features"
    overrides = ["--set", f"source.uri={demo_root / 'events'}", "--set", f"output.uri={table}"]
    overrides += ["--set", "cluster.n_workers=2", "--set", "cluster.threads_per_worker=1"]
    checked = cli("validate", spec, *overrides)
    assert checked.returncode == 0, checked.stderr
    ran = cli("run", spec, *overrides, "--json")
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["rows"]["read"] == result["rows"]["written"] == 20_000
    assert result["output"]["kind"] == "delta" and result["output"]["version"] == 0
    delta = deltalake.DeltaTable(str(table))
    assert delta.metadata().partition_columns == ["date"] and len(delta.to_pandas()) == 20_000
