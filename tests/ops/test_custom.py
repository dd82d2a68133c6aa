"""Ops of your own, named by import path: spec validation, fit/transform, bundles, a real cluster."""

from __future__ import annotations

import json
import types
from pathlib import Path

import dask
import dask.dataframe
import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter

import dpipe
from dpipe.errors import ColumnError, SpecError
from dpipe.ops import build_op, spec_dict
from dpipe.pipeline import FeaturePipeline
from dpipe.spec import OpSpec, job_from_dict
from dpipe.spec.features import CustomOp
from tests.conftest import job_dict
from tests.ops.conftest import fit_pipeline, transform, with_empty_partition
from tests.ops.custom_ops import Winsorize

PATH = "tests.ops.custom_ops:Winsorize"
ENTRY = {"op": PATH, "columns": ["x"], "q": 0.05}


def _job(*features) -> dict:
    return {
        "name": "custom",
        "source": {"uri": "data/events"},
        "features": list(features),
        "label": {"column": "y"},
        "output": {"uri": "runs/custom"},
    }


@pytest.fixture
def numbers() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    x = rng.standard_t(2, 1000)
    x[::37] = np.nan
    return pd.DataFrame({"x": x, "n": rng.integers(0, 100, 1000), "k": np.arange(1000)})


def test_spec_validates_by_import_path():
    spec = TypeAdapter(OpSpec).validate_python(ENTRY)
    assert isinstance(spec, CustomOp) and spec.params == {"columns": ["x"], "q": 0.05}
    job = job_from_dict(_job(ENTRY))
    assert job.features[0].op == PATH
    op = build_op(job.features[0], "features[0]")
    assert isinstance(op, Winsorize)
    # The op gets its own validated Params model, not the generic entry.
    assert isinstance(op.spec, Winsorize.Params) and op.spec.q == 0.05
    assert op.name == PATH  # no `name` set: the import path
    assert spec_dict(op) == ENTRY


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**ENTRY, "q": 0.7}, r"features\[0\]: op 'tests.ops.custom_ops:Winsorize': q: Input should be less than 0.5"),
        ({**ENTRY, "qq": 1}, r"features\[0\]: op 'tests.ops.custom_ops:Winsorize': qq: Extra inputs are not permitted"),
        ({"op": PATH}, r"features\[0\]: op 'tests.ops.custom_ops:Winsorize': columns: Field required"),
        (
            {"op": "no_such_pkg.features:Winsorize", "columns": ["x"]},
            (
                r"features\[0\]: cannot import op 'no_such_pkg.features:Winsorize': No module named 'no_such_pkg'; "
                r"the module must be importable on the client and on every worker"
            ),
        ),
        ({"op": "tests.ops.custom_ops:Nope"}, r"features\[0\]: module 'tests.ops.custom_ops' has no 'Nope'"),
        (
            {"op": "tests.ops.custom_ops:NotAnOp", "columns": ["x"]},
            r"features\[0\]: 'tests.ops.custom_ops:NotAnOp' is not a subclass of dpipe.ops.Op",
        ),
    ],
)
def test_bad_custom_entries_are_spec_errors(entry, message):
    with pytest.raises(SpecError, match=message):
        job_from_dict(_job(entry))


def test_problems_of_custom_and_builtin_ops_are_reported_together():
    with pytest.raises(SpecError, match=r"(?s)2 problems.*features\[0\].*features\[1\]\.n_buckets"):
        job_from_dict(_job({**ENTRY, "q": 2}, {"op": "hash_bucket", "columns": ["c"], "n_buckets": 1}))


def test_fit_transform_and_json_round_trip(numbers):
    pipe, calls = fit_pipeline([TypeAdapter(OpSpec).validate_python(ENTRY)], with_empty_partition(numbers))
    assert calls == [1]
    low, high = np.nanquantile(numbers["x"], [0.05, 0.95])
    assert pipe.ops[0].bounds_["x"] == pytest.approx([low, high])
    out = transform(pipe, with_empty_partition(numbers, 2))  # also checks the reloaded pipeline
    expected = numbers["x"].clip(low, high)
    pd.testing.assert_series_equal(out["x"], expected, check_exact=False)
    assert out["x"].isna().sum() == numbers["x"].isna().sum()

    saved = json.loads(pipe.to_json())["ops"][0]
    assert saved["spec"] == ENTRY and saved["state"] == {"bounds": {"x": [low, high]}}
    reloaded = FeaturePipeline.from_json(pipe.to_json())
    assert isinstance(reloaded.ops[0], Winsorize) and reloaded.ops[0].bounds_ == pipe.ops[0].bounds_


def test_an_op_may_assign_stateful_and_measure_in_diagnose(numbers):
    entry = {"op": "tests.ops.custom_ops:DropBelow", "column": "x"}
    pipe = FeaturePipeline.from_specs([TypeAdapter(OpSpec).validate_python(entry)])
    op = pipe.ops[0]
    assert not op.stateful and op.partition_wise and op.fitted
    frame = dask.dataframe.from_pandas(numbers, npartitions=3)
    report = pipe.fit(frame, extras=lambda f: {"test": {"n": f.shape[0]}}, compute=dask.compute)
    negative = int((numbers["x"] < 0).sum())
    assert report.steps["features[0]"] == {
        "op": "tests.ops.custom_ops:DropBelow",
        "rows_in": len(numbers),
        "rows_out": int((numbers["x"] >= 0).sum()),  # missing values are dropped too
        "negative": negative,
    }


def test_the_documented_op_declares_its_state_once(numbers):
    # The example of docs/ops.md, run as written: no get_state/set_state of its own.
    text = (Path(__file__).resolve().parents[2] / "docs" / "ops.md").read_text()
    code = text.split("```python\n# mypkg/features.py\n", 1)[1].split("```", 1)[0]
    module = types.ModuleType("mypkg_features")
    exec(compile(code, "docs/ops.md", "exec"), module.__dict__)
    cls = module.Winsorize
    pipe = FeaturePipeline([cls(cls.Params(columns=["x"], q=0.05), "features[0]")])
    assert not pipe.fitted
    pipe.fit(with_empty_partition(numbers), compute=lambda *v: dask.compute(*v, scheduler="sync"))
    low, high = np.nanquantile(numbers["x"], [0.05, 0.95])
    assert pipe.ops[0].get_state() == {"bounds": {"x": [pytest.approx(low), pytest.approx(high)]}}
    loaded = cls(cls.Params(columns=["x"], q=0.05), "features[0]")
    loaded.set_state(json.loads(json.dumps(pipe.ops[0].get_state())))
    assert loaded.fitted
    pd.testing.assert_frame_equal(loaded.transform(numbers), pipe.ops[0].transform(numbers))


def test_custom_op_column_errors_name_the_op(numbers):
    pipe = FeaturePipeline.from_specs([TypeAdapter(OpSpec).validate_python({**ENTRY, "columns": ["xx"]})])
    with pytest.raises(ColumnError, match=r"features\[0\] \(tests.ops.custom_ops:Winsorize\): column\(s\) \['xx'\]"):
        pipe.describe(numbers.iloc[:0])


def test_run_and_predict_on_a_cluster(demo_root, client, tmp_path):
    # The session cluster's workers are separate processes: they unpickle the op by importing
    # `tests.ops.custom_ops`, which works because they start with this process's sys.path (the
    # repository root). Users put their module on PYTHONPATH or install it on every worker.
    assert all(client.run(lambda: __import__("tests.ops.custom_ops").ops.custom_ops.Winsorize.name).values())
    features = [
        *job_dict(demo_root, tmp_path)["features"],
        {"op": PATH, "columns": ["tenure_days", "sessions"], "q": 0.02},
    ]
    out = tmp_path / "bundle"
    job = dpipe.job_from_dict(job_dict(demo_root, out, features=features, output={"uri": str(out)}))
    result = dpipe.run(job, client=client, progress=False)
    # It reads `tenure_days` after fill_missing: planned like any op, in the second phase.
    assert result.manifest["fit_phases"][1] == ["features[5]"]
    assert result.metrics["valid"]["auc"] > 0.7

    saved = FeaturePipeline.from_json((Path(result.bundle_uri) / "pipeline.json").read_text())
    winsorize = saved.ops[5]
    assert isinstance(winsorize, Winsorize) and set(winsorize.bounds_) == {"tenure_days", "sessions"}
    events = pd.read_parquet(demo_root / "events")
    # Fitted on the training rows (80%): close to the quantiles of all rows.
    low, high = winsorize.bounds_["sessions"]
    assert np.quantile(events["sessions"], 0.01) <= low <= np.quantile(events["sessions"], 0.03)
    assert np.quantile(events["sessions"], 0.97) <= high <= np.quantile(events["sessions"], 0.99)

    scores = tmp_path / "scores"
    predicted = dpipe.predict(result.bundle_uri, str(demo_root / "events"), str(scores), client=client, progress=False)
    assert predicted.rows == 20_000
    assert pd.read_parquet(scores)["prediction"].between(0, 1).all()
