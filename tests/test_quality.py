"""Quality checks on small pandas/Dask data: specs, check classes, the gate's stages, plan-time columns."""

from __future__ import annotations

import dataclasses

import dask
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dpipe import quality
from dpipe.errors import ColumnError, DataError, SpecError, StateError
from dpipe.io import StagedOutput, read
from dpipe.spec import job_from_dict


def sync(*collections):
    return dask.compute(*collections, scheduler="sync")


def spec(tmp_path, checks, **more) -> dict:
    return {
        "source": {"uri": str(tmp_path / "data")},
        "label": {"column": "y"},
        "output": {"uri": str(tmp_path / "out")},
        "checks": checks,
        **more,
    }


def check(**kw):
    return job_from_dict(
        {
            "source": {"uri": "x"},
            "label": {"column": "y"},
            "output": {"uri": "o"},
            "checks": [kw],
            **({"quarantine": {}} if kw.get("action") == "quarantine" else {}),
        }
    ).checks[0]


FRAME = pd.DataFrame(
    {
        "x": [1.0, None, 5.0, -1.0, 101.0],
        "c": pd.array(["N1", "N2", None, "X3", "N"], dtype=pd.StringDtype("pyarrow")),
        "k": [1, 2, 2, 3, 1],
    }
)


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"check": "not_null", "columns": ["x", "c"]}, [False, True, True, False, False]),
        ({"check": "range", "column": "x", "min": 0, "max": 100}, [False, False, False, True, True]),
        ({"check": "range", "column": "x", "min": 5}, [True, False, False, True, False]),
        ({"check": "allowed_values", "column": "c", "values": ["N1", "N2"]}, [False, False, False, True, True]),
        ({"check": "regex", "column": "c", "pattern": "N[0-9]"}, [False, False, False, True, True]),
    ],
)
def test_row_masks_ignore_missing_values_except_not_null(kw, expected):
    assert quality.build_check(check(**kw)).mask(FRAME).tolist() == expected


def test_unique_mask_uses_the_duplicated_keys():
    c = quality.build_check(check(check="unique", columns=["k"], action="quarantine"))
    assert c.mask(FRAME, pd.Index([1, 2])).tolist() == [True, True, True, False, True]
    two = quality.build_check(check(check="unique", columns=["k", "c"], action="quarantine"))
    dups = pd.MultiIndex.from_tuples([(2, "N2")], names=["k", "c"])
    assert two.mask(FRAME, dups).tolist() == [False, True, False, False, False]
    with pytest.raises(StateError, match=r"checks\[0\] \(unique\(k\)\): the duplicated keys come from the pre-pass"):
        c.mask(FRAME)


def test_default_names_and_spec_errors():
    assert check(check="not_null", columns=["a", "b"]).name == "not_null(a,b)"
    assert check(check="row_count", min=1).name == "row_count"
    assert check(check="range", column="d", min=dt_date()).min == "2024-03-01"
    base = {"source": {"uri": "x"}, "label": {"column": "y"}, "output": {"uri": "o"}}
    cases = [
        ([{"check": "not_nul", "columns": ["a"]}], r"checks\[0\]: unknown check 'not_nul'.*did you mean 'not_null'"),
        ([{"check": "regex", "column": "c", "pattern": "("}], r"checks\[0\].pattern: not a valid regular expression"),
        ([{"check": "range", "column": "x"}], r"checks\[0\]: give `min`, `max` or both"),
        ([{"check": "range", "column": "x", "min": 5, "max": 1}], r"`min` \(5\) is greater than `max` \(1\)"),
        (
            [{"check": "null_fraction", "column": "x", "max": 0.1, "action": "quarantine"}],
            r"checks\[0\].action: a dataset check can only `fail`",
        ),
        (
            [{"check": "unique", "columns": ["a"], "colums": 1}],
            r"checks\[0\].colums: unknown key.*did you mean 'columns'",
        ),
        (
            [{"check": "not_null", "columns": ["a"]}] * 2,
            r"checks: checks\[1\] is named 'not_null\(a\)' like checks\[0\]",
        ),
        (
            [{"check": "not_null", "columns": ["a"], "action": "quarantine"}],
            r"quarantine: checks\[0\] quarantine rows but the job has no `quarantine` section",
        ),
    ]
    for checks, message in cases:
        with pytest.raises(SpecError, match=message):
            job_from_dict({**base, "checks": checks})
    with pytest.raises(SpecError, match=r"quarantine.bad_files: Input should be 'skip' or 'fail'"):
        job_from_dict({**base, "quarantine": {"bad_files": "ignore"}})


def dt_date():
    import datetime as dt

    return dt.date(2024, 3, 1)


@pytest.fixture
def data(tmp_path):
    (tmp_path / "data").mkdir()
    a = pd.DataFrame({"id": [1, 2, 3, 4], "x": [1.0, -5.0, None, 7.0], "s": ["N1", "Q", "N2", None], "y": [0, 1, 0, 1]})
    b = pd.DataFrame({"id": [4, 5, 6], "x": [200.0, 2.0, 3.0], "s": ["N3", "N4", "Z"], "y": [1, 0, 1]})
    a.to_parquet(tmp_path / "data" / "a.parquet", index=False)
    b.to_parquet(tmp_path / "data" / "b.parquet", index=False)
    return tmp_path


def test_plan_time_columns_and_types_name_the_check(data):
    meta = read(str(data / "data")).frame._meta
    for checks, message in [
        (
            [{"check": "not_null", "columns": ["x", "nope"]}],
            r"(?s)checks\[0\] \(not_null\(x,nope\)\): column\(s\) \['nope'\] not found in the source; available: \['id'.*Hint: fix `checks\[0\]`",
        ),
        (
            [{"check": "range", "column": "s", "min": 0}],
            r"checks\[0\] \(range\(s\)\): numeric bounds \[0\] need a numeric column",
        ),
        (
            [{"check": "regex", "column": "x", "pattern": "a"}],
            r"checks\[0\] \(regex\(x\)\): a regex needs a text column",
        ),
    ]:
        with pytest.raises(ColumnError, match=message):
            quality.check_columns(job_from_dict(spec(data, checks)), meta)


def gate_for(tmp_path, checks, quarantine=None):
    job = job_from_dict(spec(tmp_path, checks, **({"quarantine": quarantine} if quarantine is not None else {})))
    out = StagedOutput(job.output.uri)
    log = quality.bad_file_log(job, out)
    source = read(job.source.uri, on_bad_file="skip" if log else "raise", bad_file_log=log)
    return quality.QualityGate(job.checks, job.quarantine, source.files), source, out


def computed(lazy: dict) -> dict:
    return dict(zip(lazy, sync(*lazy.values())))


def rows(frame):
    return frame.map_partitions(len, meta=("n", "int64")).sum()


def evaluate(gate, source, out=None):
    """Pre-pass, checks and the row count, as the runner does: the rows to train on and the values."""
    pre = gate.prepass(source.frame, sync)
    checked = gate.apply(source.frame, pre, quarantine_to=out)
    values = computed({**checked.lazy, "rows_read": rows(source.frame)})
    return checked.frame, values


def test_gate_quarantines_first_failing_check_and_writes_rows(data):
    checks = [
        {"check": "range", "column": "x", "min": 0, "max": 100, "action": "quarantine"},
        {"check": "regex", "column": "s", "pattern": "N[0-9]", "action": "quarantine"},
        {"check": "unique", "columns": ["id"], "action": "quarantine"},
    ]
    gate, source, out = gate_for(data, checks, {"max_fraction": 1.0})
    with out:
        clean, values = evaluate(gate, source, out)
        report = gate.evaluate(values, rows_read=int(values["rows_read"]))
        written = pd.read_parquet(out.staged_path("quarantine")).sort_values("id")
    assert report["prepasses"] == 1
    assert sorted(clean.compute(scheduler="sync")["id"]) == [1, 3, 5]
    assert written["id"].tolist() == [2, 4, 4, 6]
    assert dict(zip(written["id"].astype(str) + written["__source_file"].str[-9:], written["__check"])) == {
        "2a.parquet": "range(x)",
        "4a.parquet": "unique(id)",
        "4b.parquet": "range(x)",
        "6b.parquet": "regex(s)",
    }
    assert report["quarantined_rows"] == 4
    assert [(c["name"], c["violations"], c["quarantined"]) for c in report["checks"]] == [
        ("range(x)", 2, 2),
        ("regex(s)", 2, 1),
        ("unique(id)", 2, 1),
    ]


def test_gate_limits(data):
    checks = [{"check": "not_null", "columns": ["x", "s"], "action": "quarantine"}]
    gate, source, out = gate_for(data, checks, {"max_fraction": 0.5, "max_rows": 1})
    with out:
        _, values = evaluate(gate, source, out)
        with pytest.raises(
            DataError,
            match=r"quarantine: 2 of 7 rows \(28.57%\) would be quarantined, more than"
            r" `quarantine.max_rows` \(1\); per check: not_null\(x,s\): 2",
        ):
            gate.evaluate(values, rows_read=7)


def test_gate_fail_checks_and_dataset_checks(data):
    checks = [
        {"check": "range", "column": "x", "max": 100},
        {"check": "unique", "columns": ["id"]},
        {"check": "null_fraction", "column": "s", "max": 0.5},
        {"check": "row_count", "min": 1, "max": 5},
    ]
    gate, source, out = gate_for(data, checks)
    with out:
        _, values = evaluate(gate, source)
        with pytest.raises(DataError) as info:
            gate.evaluate(values, rows_read=7)
    assert str(info.value).splitlines()[:4] == [
        "data quality: 3 problems:",
        "  - checks[0] `range(x)`: 1 of 7 rows violate it; e.g. x=200.0 (" + str(data / "data" / "b.parquet") + ")",
        "  - checks[1] `unique(id)`: 2 of 7 rows share a duplicated key (1 duplicated key(s); e.g. id=4 (2 rows))",
        "  - checks[3] `row_count`: 7 rows read; expected at most 5",
    ]


def test_read_skips_a_bad_file_and_records_it(tmp_path):
    (tmp_path / "d").mkdir()
    pd.DataFrame({"x": [1, 2]}).to_parquet(tmp_path / "d" / "a.parquet")
    pd.DataFrame({"x": [3]}).to_parquet(tmp_path / "d" / "b.parquet")
    (tmp_path / "d" / "b.parquet").write_bytes(b"PAR1garbagePAR1")
    log = quality.BadFileLog(str(tmp_path / "log"))
    src = read(str(tmp_path / "d"), on_bad_file="skip", bad_file_log=log)
    for _ in range(2):  # a re-read overwrites its record
        parts = [p.compute(scheduler="sync") for p in src.frame.to_delayed()]
    assert [len(p) for p in parts] == [2, 0] and parts[1].dtypes.equals(src.frame._meta.dtypes)
    records = log.records()
    assert [r["file"] for r in records] == [str(tmp_path / "d" / "b.parquet")] and records[0]["error"]
    assert len(list((tmp_path / "log").iterdir())) == 1
    with pytest.raises(ValueError, match="needs a `bad_file_log`"):
        read(str(tmp_path / "d"), on_bad_file="skip")
    assert np.asarray(pq.read_table(tmp_path / "d" / "a.parquet").column("x")).tolist() == [1, 2]


def test_checks_and_the_quarantine_write_share_one_read_of_each_file(data, monkeypatch):
    from dpipe.io import sources

    calls = []
    original = sources.read_fragment

    def counting(task):
        calls.append(task.uri)
        return original(task)

    monkeypatch.setattr(sources, "read_fragment", counting)
    checks = [
        {"check": "range", "column": "x", "min": 0, "action": "quarantine"},
        {"check": "not_null", "columns": ["s"]},
        {"check": "null_fraction", "column": "x", "max": 1.0},
    ]
    gate, source, out = gate_for(data, checks, {"max_fraction": 1.0})
    with out:
        checked = gate.apply(source.frame, quarantine_to=out)
        values = computed({**checked.lazy, "rows": rows(checked.frame)})
    assert sorted(calls) == sorted(gate.files) and len(calls) == 2  # one compute, each file read once
    assert values["rows"] == 6


# -- the gate's stages: explicit inputs, frozen results, any order ----------------------------
ORDER_CHECKS = [
    {"check": "range", "column": "x", "min": 0, "max": 100, "action": "quarantine"},
    {"check": "unique", "columns": ["id"], "action": "quarantine"},
    {"check": "regex", "column": "s", "pattern": "N[0-9]"},
    {"check": "null_fraction", "column": "x", "max": 0.5},
]


def test_apply_and_evaluate_need_no_call_order(data):
    """The model's frame (every column) and the fit pass's projection, applied in either order."""
    gate, source, _ = gate_for(data, ORDER_CHECKS, {"max_fraction": 1.0})
    state = dict(vars(gate))
    pre = gate.prepass(source.frame, sync)
    full, fit = source.frame, source.frame[["id", "x", "s"]]
    results = set()
    for order in [(full, fit), (fit, full)]:
        checked = dict(zip(map(id, order), [gate.apply(frame, pre) for frame in order]))
        for frame in (full, fit):
            with pytest.raises(DataError) as info:
                gate.evaluate(computed(checked[id(frame)].lazy), rows_read=7)
            clean = checked[id(frame)].frame
            results.add((str(info.value), tuple(sorted(clean.compute(scheduler="sync")["id"])), tuple(clean.columns)))
    assert vars(gate) == state  # nothing stored on the gate
    message = {r[0] for r in results}
    assert len(message) == 1 and message.pop().splitlines()[:2] == [
        "data quality: 1 problem:",
        f"  - checks[2] `regex(s)`: 2 of 7 rows violate it; e.g. s='Q' ({data / 'data' / 'a.parquet'}),"
        f" s='Z' ({data / 'data' / 'b.parquet'})",
    ]
    assert {r[1:] for r in results} == {((1, 3, 5, 6), ("id", "x", "s", "y")), ((1, 3, 5, 6), ("id", "x", "s"))}
    # The same rows checked twice are the same graph, computed once.
    assert gate.apply(full, pre).frame._name == gate.apply(full, pre).frame._name


def test_stage_results_are_frozen_and_required(data):
    gate, source, out = gate_for(data, ORDER_CHECKS, {"max_fraction": 1.0})
    assert gate.needs_prepass
    with pytest.raises(StateError, match=r"\['checks\[1\]'\] need the duplicated keys of `QualityGate.prepass`"):
        gate.apply(source.frame)
    pre = gate.prepass(source.frame, sync)
    assert pre.passes == 1 and list(pre.duplicated[1]) == [4]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.passes = 0
    checked = gate.apply(source.frame, pre)
    assert "write" not in checked.lazy  # the model's frame: nothing is written
    with pytest.raises(dataclasses.FrozenInstanceError):
        checked.frame = None
    with pytest.raises(StateError, match=r"`values` lack 'violations': pass the computed `Checked.lazy`"):
        gate.evaluate({"prepasses": 1, "quarantined": pd.Series(dtype="int64")}, rows_read=7)
    plain = quality.QualityGate([check(check="row_count", min=1)])
    assert not plain.needs_prepass and plain.prepass(source.frame, None) is quality.NO_PREPASS
    checked = plain.apply(source.frame)
    assert checked.frame is source.frame
    report = plain.evaluate(computed(checked.lazy), rows_read=7)
    assert report["prepasses"] == 0 and report["quarantine"] is None and report["bad_files"] == []


def test_evaluate_logs_bad_files_and_a_summary(data):
    checks = [{"check": "not_null", "columns": ["x"], "action": "quarantine"}]
    gate, source, _ = gate_for(data, checks, {"max_fraction": 1.0})
    lines = []
    records = [{"file": "c.parquet", "error": "not parquet"}]
    values = computed(gate.apply(source.frame).lazy)
    report = gate.evaluate(values, rows_read=7, bad_files=records, log=lines.append)
    assert lines == [
        "skipped unreadable file c.parquet: not parquet",
        "quality: 1 check(s) passed, 1 row(s) quarantined",
    ]
    assert report["bad_files"] == records and report["quarantined_rows"] == 1 and report["quarantine"] == "quarantine"
