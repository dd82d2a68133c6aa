"""``dpipe inspect``: a bundle's fitted pipeline as a table, whatever the ops' state looks like."""

from __future__ import annotations

import json
import re
from functools import partial

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dpipe.bundle import Bundle
from dpipe.cli import main
from dpipe.inspection import render, summarize
from dpipe.io import StagedOutput
from dpipe.pipeline import FeaturePipeline
from dpipe.spec import OP_MODELS
from dpipe.train import ModelInput
from dpipe.versions import library_versions

STEPS = [
    {"op": "fill_missing", "columns": ["age"], "strategy": "median"},
    {"op": "filter", "expr": "sessions > 0"},
    {"op": "derive", "name": "log_income", "expr": "log1p(income)"},
    {"op": "standard_scale", "columns": ["age", "log_income"]},
    {"op": "categorical", "columns": ["plan", "country"]},
]


@pytest.fixture
def bundle(tmp_path):
    import xgboost as xgb

    rng = np.random.default_rng(0)
    n = 200
    data = pd.DataFrame(
        {
            "age": np.where(rng.random(n) < 0.1, np.nan, rng.normal(40, 10, n)),
            "income": rng.lognormal(10, 0.5, n),
            "sessions": rng.integers(0, 5, n),
            "plan": pd.array(rng.choice(["free", "basic", "pro"], n), dtype="string[pyarrow]"),
            "country": pd.array([f"country-{i % 40:02d}" for i in range(n)], dtype="string[pyarrow]"),
        }
    )
    pipe = FeaturePipeline.from_specs([OP_MODELS[s["op"]](**s) for s in STEPS])
    report = pipe.fit(dd.from_pandas(data, npartitions=2), compute=partial(dask.compute, scheduler="sync"))
    features = ["age", "income", "sessions", "log_income", "plan", "country"]
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(rng.random((20, 2)), np.arange(20) % 2), 1)
    manifest = {"job": "tiny", "fit_phases": report.phases, "versions": library_versions()}
    b = Bundle(booster, pipe, ModelInput(features, ["plan", "country"]), ["id"], {"best_iteration": 0}, manifest)
    with StagedOutput(str(tmp_path / "bundle"), marker="manifest.json") as out:
        b.write(out)
        out.commit()
    return tmp_path / "bundle"


def inspect(capsys, *argv) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_one_row_per_step_with_columns_and_state(bundle, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = inspect(capsys, bundle)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"bundle: {bundle}  (job 'tiny')"
    assert lines[1].startswith("versions: dpipe ") and "xgboost 3.2" in out and "pandas " in out
    assert "  numeric (4): age, income, sessions, log_income" in lines
    assert "  categorical (2): plan, country" in lines
    assert "fit passes (2): 1) features[0], features[4]  2) features[3]" in out
    rows = {line.split()[0]: line for line in lines if line.startswith("features[")}
    assert list(rows) == [f"features[{i}]" for i in range(5)]
    assert rows["features[0]"].split()[1:4] == ["fill_missing", "age", "age:"]
    assert "sessions -> (rows)" in rows["features[1]"] and rows["features[1]"].endswith("  -")
    assert "income -> log_income" in rows["features[2]"] and rows["features[2]"].endswith("  -")
    assert "age: mean=" in rows["features[3]"] and ", scale=" in rows["features[3]"]
    assert "log_income: mean=" in out  # the second column of the scaler, on its own line
    assert "plan: 3 categories: " in rows["features[4]"]
    country = next(line.strip() for line in lines if "country: " in line)
    assert re.fullmatch(r"country: 40 categories: (country-\d\d, )+\.\.\.", country)
    assert all(len(line) <= 120 for line in lines)


@pytest.mark.parametrize("width", [40, 72, 200])
def test_lines_fit_the_terminal(bundle, capsys, monkeypatch, width):
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = inspect(capsys, bundle)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= width
    assert out.count("features[") >= 5


def test_unknown_ops_and_any_json_state_are_summarised(bundle, capsys, monkeypatch):
    """Ops added later (or by another dpipe) are shown from their saved spec and state alone."""
    monkeypatch.setenv("COLUMNS", "160")
    path = bundle / "pipeline.json"
    data = json.loads(path.read_text())
    data["ops"].append(
        {
            "spec": {"op": "bucketize_future", "columns": ["age", "income"], "bins": 100},
            "where": "features[5]",
            "state": {
                "edges": {"age": list(np.linspace(0, 1, 100).round(3)), "income": [1, 2]},
                "total": 12345.678901,
                "flag": True,
                "missing": None,
                "nested": {"a": {"b": [1, 2, 3]}},
                "note": "x" * 300,
            },
        }
    )
    path.write_text(json.dumps(data))
    code, out, _ = inspect(capsys, bundle)
    assert code == 0
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("features[5]"))
    assert "bucketize_future" in lines[row] and "age, income" in lines[row]
    assert "total=12345.7, flag=true, missing=null, nested={a={3 b: 1, 2, 3}}, note=xxx" in lines[row]
    assert lines[row].endswith("x...")
    assert lines[row + 1].lstrip().startswith("age: 100 edges: 0, 0.01, 0.02, ") and lines[row + 1].endswith("...")
    assert lines[row + 2].lstrip() == "income: 2 edges: 1, 2"
    assert all(len(line) <= 160 for line in lines)


def test_summarize_any_json_value():
    assert summarize([], 40) == "0 items: []"
    assert summarize(list(range(100)), 30) == "100 items: 0, 1, 2, 3, 4, ..."
    assert summarize({"a": 1.0, "b": None, "c": "", "d": [True]}, 60) == "a=1, b=null, c='', 1 d: true"
    assert summarize("y" * 50, 20) == "y" * 17 + "..."
    assert summarize({"k": {"x": {"y": 2}}}, 40) == "k={x={y=2}}"


def test_render_without_manifest_details():
    text = render({"format_version": 1, "ops": []}, {}, uri="b", width=80)
    assert text.splitlines()[:3] == ["bundle: b", "versions: unknown", "features (0):"]
    assert "(no feature steps" in text


def test_json_prints_the_saved_pipeline(bundle, capsys):
    code, out, _ = inspect(capsys, bundle, "--json")
    assert code == 0
    parsed = json.loads(out)
    assert parsed == json.loads((bundle / "pipeline.json").read_text())
    assert [op["where"] for op in parsed["ops"]] == [f"features[{i}]" for i in range(5)]
    assert set(parsed["versions"]) >= {"dpipe", "dask", "pandas", "pyarrow", "xgboost"}


def test_missing_bundle_is_one_error_line(tmp_path, capsys):
    code, out, err = inspect(capsys, tmp_path / "nope")
    assert code == 1 and out == ""
    assert [line for line in err.splitlines() if line.startswith("dpipe:")] == [
        f"dpipe: error: bundle: '{tmp_path / 'nope'}' does not exist"
    ]
    assert "Hint: pass the `output.uri` of a finished `dpipe run`" in err


def test_incomplete_and_corrupt_bundles(bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = inspect(capsys, tmp_path / "empty")
    assert code == 1 and "is not a complete model bundle (no manifest.json)" in err
    (bundle / "pipeline.json").write_text("{not json")
    code, _, err = inspect(capsys, bundle)
    assert code == 1 and err.startswith(f"dpipe: error: bundle: '{bundle}' is corrupt: ")
    (bundle / "pipeline.json").write_text("[]")
    code, _, err = inspect(capsys, bundle)
    assert code == 1 and "is corrupt: pipeline.json has no list of `ops`" in err


def test_inspect_a_bundle_on_s3(bundle, s3, capsys):
    prefix = f"{s3['bucket']}/models/tiny"
    s3["fs"].put(str(bundle), prefix, recursive=True)
    code, out, err = inspect(capsys, f"s3://{prefix}", "--storage-options", json.dumps(s3["storage_options"]))
    assert code == 0, err
    assert "plan: 3 categories:" in out
