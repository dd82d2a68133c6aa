"""The benchmark suite runs and writes well-formed JSON. Timings are never checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_split_rule_is_dpipes():
    from benchmarks.workload import ID, SPLIT_SEED, VALID_FRACTION, valid_mask
    from dpipe.columns import SIDE, VALID
    from dpipe.split import Splitter
    from dpipe.train import Labeler

    pdf = pd.DataFrame({ID: np.arange(5_000, dtype="int64"), "label": np.zeros(5_000, dtype="int8")})
    splitter = Splitter(key=(ID,), valid_fraction=VALID_FRACTION, seed=SPLIT_SEED)
    labeler = Labeler(column="label", expr=None, splitter=splitter)
    np.testing.assert_array_equal((labeler(pdf)[SIDE] == VALID).to_numpy(), valid_mask(pdf[ID].to_numpy()))


def test_data_is_deterministic_and_counted(tmp_path):
    import pyarrow.parquet as pq

    from benchmarks.data import dataset, dataset_bytes
    from benchmarks.measure import CountingFileSystem, bytes_read, counting_uri

    a = dataset(tmp_path / "a", 3_000, seed=1, log=lambda m: None)
    b = dataset(tmp_path / "b", 3_000, seed=1, log=lambda m: None)
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.num_rows == 3_000 and ta.equals(tb)
    counter = tmp_path / "counter"
    counter.mkdir()
    fs = CountingFileSystem(counter_dir=str(counter))
    root = CountingFileSystem._strip_protocol(counting_uri(a))
    for path in fs.find(root):
        with fs.open(path, "rb") as f:
            f.read()
    assert bytes_read(counter) == {"bytes": dataset_bytes(a) + len(b'{"rows": 3000, "seed": 1}'), "opens": 13}


@pytest.mark.timeout(600)
def test_quick_run_writes_well_formed_json(tmp_path):
    out = tmp_path / "quick.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=590,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    systems = report["systems"]
    assert set(systems) == {"dpipe", "handwritten", "pandas", "floor"}
    for name, s in systems.items():
        assert all(_number(s["total_s"][k]) for k in ("median", "min", "max")), name
        assert s["stages_s"] and all(_number(v["median"]) for v in s["stages_s"].values()), name
        assert 0.5 < s["valid_auc"] <= 1 and 0.5 < s["prediction_auc"] <= 1, name
        assert _number(s["rows_per_s"]) and _number(s["memory_mib"]["peak_total_mib"]), name
        assert s["memory_mib"]["peak_total_mib"] > 0, name
        assert _number(report["bytes_read"][name]["per_projected_byte"]), name
    assert set(systems["pandas"]["stages_s"]) == {"read", "fit", "transform", "matrix", "train", "predict"}
    assert _number(report["bytes_read"]["dpipe_fit_only"]["per_projected_byte"])
    for key in (
        "dpipe/handwritten",
        "dpipe/pandas",
        "dpipe/floor",
        "dpipe_non_training/floor_scan",
        "dpipe_matrix+train/floor_matrix+train",
        "dpipe_peak_memory/handwritten_peak_memory",
        "dpipe_fit_reads_per_input_byte",
    ):
        assert _number(report["ratios"][key]), key
    aucs = [s["valid_auc"] for s in systems.values()]
    assert max(aucs) - min(aucs) < 0.05  # the same work, so about the same model


def test_lakes_quick_run_compares_tables_and_postgres(tmp_path):
    from benchmarks import lakes

    out = tmp_path / "lakes.json"
    assert lakes.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["tables"]) == {"parquet folder", "delta", "iceberg"}
    assert report["tables"]["parquet folder"]["ratio_to_folder"] == 1.0
    assert all(r["median_s"] > 0 for r in report["tables"].values())
    reads = [k for k in report["postgres"] if k.startswith("dpipe, ")]
    assert len(reads) == 3 and all(report["postgres"][k]["rows_per_s"] > 0 for k in reads)


def test_incremental_quick_run_compares_every_mode_to_the_full_run(tmp_path):
    from benchmarks import incremental

    out = tmp_path / "incremental.json"
    assert incremental.main(["--quick", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    modes = [f"train incremental ({m})" for m in incremental.MODES]
    assert set(summary) == {"train full", *modes, "features full", "features incremental"}
    assert all(_number(summary[name]["ratio_to_full"]) for name in [*modes, "features incremental"])
    assert summary["features incremental"]["rows_read"] == 2000  # month 12 of 24k rows
    assert summary["train incremental (continue)"]["rows_read"] == 2000


def test_the_full_workload_by_hand_is_dpipes(tmp_path):
    """The hand-written systems' full workload (filter, derived and date columns, mean fill and
    scaling of every numeric column, ordinal codes) transforms the rows as dpipe's spec does."""
    import dask
    import dask.dataframe as dd

    import dpipe
    from benchmarks.data import dataset
    from benchmarks.workload import (
        CATEGORICAL,
        FULL_COLUMNS,
        FULL_FEATURES,
        FULL_NUMERIC,
        ID,
        dpipe_job,
        full_rows,
        full_scales,
        full_transform,
        ordinal_codes,
        valid_mask,
    )
    from dpipe.io import read
    from dpipe.pipeline import FeaturePipeline

    root = dataset(tmp_path / "data", 3_000, seed=2, log=lambda m: None)
    raw = read(str(root), columns=FULL_COLUMNS).frame.compute(scheduler="sync").reset_index(drop=True)
    # By hand, as the pandas system does it.
    rows = full_rows(raw)
    train = rows.loc[~valid_mask(rows[ID].to_numpy())]
    numeric = train[FULL_NUMERIC].astype("float64")
    scales = full_scales(numeric.var(ddof=0), numeric.count(), len(train))
    codes = {c: ordinal_codes(train[c].value_counts()) for c in CATEGORICAL}
    by_hand = full_transform(rows, numeric.mean().to_dict(), scales, codes)
    # dpipe's ops from the benchmark's spec, fitted on the same training rows.
    job = dpipe.job_from_dict(dpipe_job(str(root), str(tmp_path / "out"), workload="full"))
    pipe = FeaturePipeline.from_specs(job.features)
    frame = dd.from_pandas(raw.assign(is_valid=valid_mask(raw[ID].to_numpy())), npartitions=3)
    report = pipe.fit(frame, fit_rows=lambda f: f[~f["is_valid"]], compute=partial_sync(dask))
    assert len(report.phases) == 1  # the scaler is fitted through the fill
    got = pipe.transform(frame).compute(scheduler="sync")
    assert list(got.index) == list(by_hand.index)
    for c in FULL_FEATURES:
        np.testing.assert_allclose(
            got[c].to_numpy(dtype="float64", na_value=np.nan),
            by_hand[c].to_numpy(dtype="float64", na_value=np.nan),
            rtol=1e-5,
            atol=1e-5,
            err_msg=c,
        )


def partial_sync(dask):
    return lambda *collections: dask.compute(*collections, scheduler="sync")
