"""Features jobs end to end: delivery to a Delta table and a Parquet folder, read back by outside tools."""

from __future__ import annotations

import json

import deltalake
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml

import dpipe
from dpipe import cli
from dpipe.errors import DataError, SpecError
from tests.conftest import job_dict

FEATURES = [
    {"op": "fill_missing", "columns": ["income"], "strategy": "mean"},
    {"op": "standard_scale", "columns": ["pages_per_session"]},
    {"op": "derive", "name": "log_income", "expr": "log1p(income)"},
]


def features_job(demo_root, output: dict, **sections) -> dpipe.FeaturesJobSpec:
    spec = {
        "kind": "features",
        "name": "events-features",
        "source": {"uri": str(demo_root / "events")},
        "features": FEATURES,
        "columns": ["event_id", "date", "income", "log_income", "pages_per_session"],
        "output": output,
        **sections,
    }
    return dpipe.job_from_dict(spec)


def test_fitted_on_its_own_data_into_delta_exactly_once(demo_root, tmp_path, client):
    uri = str(tmp_path / "lake" / "features")
    job = features_job(demo_root, {"format": "delta", "uri": uri, "mode": "append", "partition_by": ["date"]})
    result = dpipe.run(job, client, progress=False)
    events = pd.read_parquet(demo_root / "events")
    assert result.rows["read"] == result.rows["written"] == len(events)

    table = deltalake.DeltaTable(uri)
    got = table.to_pandas().sort_values("event_id").reset_index(drop=True)
    assert list(got["event_id"]) == sorted(events["event_id"])
    assert table.metadata().partition_columns == ["date"]
    # The statistics were fitted on these rows: the scaled column has mean 0 and the fill used their mean.
    assert abs(got["pages_per_session"].mean()) < 1e-9
    raw = events.sort_values("event_id").reset_index(drop=True)
    filled = got.loc[raw["income"].isna().to_numpy(), "income"]
    assert len(filled) and np.allclose(filled, raw["income"].mean())
    # The commit says how the rows were made: the manifest and the fitted pipeline.
    commit = table.history(1)[0]["dpipe"]
    assert commit["manifest"]["job"] == "events-features"
    assert len(commit["manifest"]["input"]["lineage"]["datums"]) == 4
    assert [op["spec"]["op"] for op in commit["pipeline"]["ops"]] == ["fill_missing", "standard_scale", "derive"]
    assert result.output["version"] == 0 and result.manifest["output"]["rows"] == len(events)

    again = dpipe.run(job, client, progress=False)  # a retry of the same run on the same data
    assert again.output["duplicate"] and deltalake.DeltaTable(uri).version() == 0
    assert len(deltalake.DeltaTable(uri).to_pandas()) == len(events)


def test_the_pipeline_of_a_bundle_is_applied_unchanged(demo_root, tmp_path, client):
    bundle = tmp_path / "bundle"
    train = job_dict(demo_root, bundle, train={"num_boost_round": 3})
    dpipe.run(dpipe.job_from_dict(train), client, progress=False)
    fitted = json.loads((bundle / "pipeline.json").read_text())
    fill_age = next(op for op in fitted["ops"] if op["spec"]["op"] == "fill_missing" and "age" in op["spec"]["columns"])

    out = tmp_path / "scoring-features"
    job = dpipe.job_from_dict(
        {
            "kind": "features",
            "source": {"uri": str(demo_root / "events"), "filters": [["date", ">=", "2024-01-03"]]},
            "pipeline_from": str(bundle),
            "columns": ["event_id", "date", "age", "log_income", "country"],
            "output": {"uri": str(out), "partition_by": ["date"]},
        }
    )
    result = dpipe.run(job, client, progress=False)
    dataset = ds.dataset(str(out), format="parquet", partitioning="hive")  # read as any Parquet reader would
    got = dataset.to_table().to_pandas().sort_values("event_id").reset_index(drop=True)
    events = pd.read_parquet(demo_root / "events").astype({"date": str})
    events = events[events["date"] >= "2024-01-03"].sort_values("event_id").reset_index(drop=True)
    assert result.rows["written"] == len(got) == len(events)
    assert sorted({str(d) for d in got["date"]}) == sorted(set(events["date"]))
    missing_age = events["age"].isna().to_numpy()
    assert np.allclose(got.loc[missing_age, "age"], fill_age["state"]["values"]["age"])
    manifest = json.loads((out / "_dpipe_manifest.json").read_text())
    assert manifest["manifest"]["pipeline_from"] == str(bundle)
    assert manifest["pipeline"]["ops"] == fitted["ops"]


def test_a_failing_check_commits_nothing(demo_root, tmp_path, client):
    uri = str(tmp_path / "features")
    first = features_job(demo_root, {"format": "delta", "uri": uri})
    dpipe.run(first, client, progress=False)
    failing = features_job(
        demo_root,
        {"format": "delta", "uri": uri},
        checks=[{"check": "range", "column": "age", "min": 200, "action": "fail"}],
    )
    with pytest.raises(DataError, match=r"checks\[0\]"):
        dpipe.run(failing, client, progress=False)
    table = deltalake.DeltaTable(uri)
    assert table.version() == 0 and len(table.to_pandas()) == 20000
    assert len(list((tmp_path / "features").rglob("*.parquet"))) == len(table.file_uris())


def test_features_job_specs_are_checked_whole(demo_root, tmp_path):
    with pytest.raises(SpecError, match="either `features` .* or `pipeline_from`"):
        features_job(demo_root, {"uri": str(tmp_path / "o")}, pipeline_from="runs/x")
    with pytest.raises(SpecError, match=r"`quarantine.uri` is required in a features job"):
        features_job(demo_root, {"uri": str(tmp_path / "o")}, quarantine={"bad_files": "skip"})
    with pytest.raises(SpecError, match=r"output.mode: .*'replace'"):
        features_job(demo_root, {"format": "delta", "uri": str(tmp_path / "o"), "mode": "replace"})
    with pytest.raises(SpecError, match="unknown job kind 'feature'"):
        dpipe.job_from_dict({"kind": "feature", "source": {"uri": "x"}, "output": {"uri": "y"}})


def test_cli_validates_and_runs_a_features_job_and_predicts_into_delta(demo_root, tmp_path, capsys):
    spec = {
        "kind": "features",
        "source": {"uri": str(demo_root / "events")},
        "features": FEATURES,
        "output": {"format": "delta", "uri": str(tmp_path / "features")},
        "cluster": {"n_workers": 1, "threads_per_worker": 2},
    }
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert cli.main(["validate", str(path)]) == 0
    assert "valid; source has 4 partition(s), 3 op(s)" in capsys.readouterr().out
    assert cli.main(["run", str(path), "-q"]) == 0
    assert "20000 rows read, 20000 written" in capsys.readouterr().out

    bundle = tmp_path / "bundle"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_dict(demo_root, bundle, train={"num_boost_round": 3})))
    assert cli.main(["run", str(job), "-q"]) == 0
    sink = tmp_path / "sink.yaml"
    sink.write_text(yaml.safe_dump({"format": "delta", "uri": str(tmp_path / "scores"), "mode": "append"}))
    args = ["predict", str(bundle), "--source", str(demo_root / "events"), "--output-spec", str(sink), "-q"]
    capsys.readouterr()
    assert cli.main(args) == 0
    assert capsys.readouterr().out.strip().endswith("({'version': 0})")
    scores = deltalake.DeltaTable(str(tmp_path / "scores"))
    assert len(scores.to_pandas()) == 20000 and "prediction" in scores.to_pandas().columns
    assert scores.history(1)[0]["dpipe"]["manifest"]["bundle"] == str(bundle)
    assert cli.main(args) == 0  # the same scoring again: committed once
    assert "already committed" in capsys.readouterr().out
    assert len(deltalake.DeltaTable(str(tmp_path / "scores")).to_pandas()) == 20000


def test_rerunning_with_the_recorded_pins_reads_the_same_rows(demo_root, tmp_path, client):
    events = pd.read_parquet(demo_root / "events").astype({"date": str})
    lake = str(tmp_path / "events")
    deltalake.write_deltalake(lake, pa.Table.from_pandas(events.iloc[:5000], preserve_index=False))
    spec = {
        "kind": "features",
        "source": {"format": "delta", "uri": lake},
        "output": {"uri": str(tmp_path / "out")},
    }
    first = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    pinned = first.manifest["input"]["lineage"]["version"]
    deltalake.write_deltalake(lake, pa.Table.from_pandas(events.iloc[5000:6000], preserve_index=False), mode="append")
    latest = dpipe.run(dpipe.job_from_dict(spec), client, progress=False)
    again = dpipe.run(
        dpipe.job_from_dict({**spec, "source": {**spec["source"], "version": pinned}}), client, progress=False
    )
    assert (first.rows["written"], latest.rows["written"], again.rows["written"]) == (5000, 6000, 5000)
    assert again.manifest["input"]["lineage"]["datums"] == first.manifest["input"]["lineage"]["datums"]
