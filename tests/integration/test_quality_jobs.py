"""End to end: data-quality checks, quarantined rows, skipped bad files and the row accounting."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import dpipe
from dpipe.errors import DataError
from dpipe.plan import plan
from tests.conftest import job_dict

DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".dpipe-" in p.name] if parent.exists() else []


def run(spec: dict, client):
    return dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)


def copy_days(demo_root: Path, dest: Path, days=DAYS[:3]) -> Path:
    """A small copy of the demo data (only the partitions a test needs), safe to corrupt."""
    for day in days:
        shutil.copytree(demo_root / "events" / f"date={day}", dest / f"date={day}")
    return dest


def reference(demo_root: Path) -> pd.DataFrame:
    """Every demo row with the file it came from, read with pandas only."""
    parts = []
    for day in DAYS:
        path = demo_root / "events" / f"date={day}" / "part-0.parquet"
        parts.append(pd.read_parquet(path).assign(file=str(path)))
    return pd.concat(parts, ignore_index=True)


QUARANTINE_CHECKS = [
    {"check": "range", "column": "age", "min": 20, "max": 80, "action": "quarantine"},
    {"check": "not_null", "columns": ["income"], "action": "quarantine", "name": "has_income"},
    {"check": "allowed_values", "column": "device", "values": ["mobile", "desktop", "tablet"]},
]


def test_quarantined_rows_are_written_with_check_and_file_and_left_out_of_training(demo_root, client, tmp_path):
    out = tmp_path / "out"
    spec = job_dict(
        demo_root,
        out,
        checks=QUARANTINE_CHECKS,
        quarantine={"max_fraction": 0.2},
        output={"uri": str(out), "valid_predictions": True},
    )
    result = run(spec, client)

    ref = reference(demo_root)
    bad_age = ref["age"].notna() & ((ref["age"] < 20) | (ref["age"] > 80))
    no_income = ref["income"].isna()
    expected = ref[bad_age | no_income].assign(check=lambda d: "range(age)")
    expected.loc[~bad_age[expected.index], "check"] = "has_income"  # the first check a row fails

    got = pd.read_parquet(out / "quarantine")
    assert list(got.columns) == [*ref.columns.drop("file"), "date", "__check", "__source_file"]
    got = got.sort_values("event_id").reset_index(drop=True)
    expected = expected.sort_values("event_id").reset_index(drop=True)
    assert got["event_id"].tolist() == expected["event_id"].tolist()
    assert got["__check"].tolist() == expected["check"].tolist()
    assert got["__source_file"].tolist() == expected["file"].tolist()
    pd.testing.assert_series_equal(got["income"], expected["income"], check_dtype=False)

    quality = result.manifest["quality"]
    by_name = {c["name"]: c for c in quality["checks"]}
    assert by_name["range(age)"]["violations"] == int(bad_age.sum())
    assert by_name["range(age)"]["quarantined"] == int(bad_age.sum())
    assert by_name["has_income"]["violations"] == int(no_income.sum())
    assert by_name["has_income"]["quarantined"] == int((no_income & ~bad_age).sum())
    assert by_name["allowed_values(device)"] == {
        "name": "allowed_values(device)",
        "check": "allowed_values",
        "action": "fail",
        "violations": 0,
    }
    assert quality["quarantined_rows"] == len(expected) == result.rows["quarantined"]
    assert quality["bad_files"] == [] and quality["prepasses"] == 0
    assert json.loads((out / "manifest.json").read_text())["quality"] == quality

    # Quarantined rows are not trained on: none is among the validation predictions.
    valid_ids = set(pd.read_parquet(out / "valid_predictions")["event_id"])
    assert valid_ids and not valid_ids & set(expected["event_id"])
    assert result.rows["train"] + result.rows["valid"] == 20_000 - len(expected)


def test_rows_add_up(demo_root, client, tmp_path):
    spec = job_dict(
        demo_root,
        tmp_path / "out",
        checks=[{"check": "range", "column": "age", "max": 70, "action": "quarantine"}],
        quarantine={"max_fraction": 0.1},
        label={"expr": "tenure_days > 100"},  # missing tenure: no label
        features=[
            {"op": "categorical", "columns": ["country", "device", "plan"]},
            {"op": "filter", "expr": "sessions >= 3"},
        ],
        train={"exclude": ["date", "converted"]},
    )
    rows = run(spec, client).rows
    assert rows["quarantined"] > 0 and rows["dropped_missing_label"] > 0 and rows["dropped_by_filters"] > 0
    assert (
        rows["read"]
        == 20_000
        == (
            rows["quarantined"]
            + rows["dropped_missing_label"]
            + rows["dropped_by_filters"]
            + rows["train"]
            + rows["valid"]
        )
    )
    ref = reference(demo_root)
    quarantined = ref["age"] > 70
    assert rows["quarantined"] == int(quarantined.sum())
    assert rows["dropped_missing_label"] == int((~quarantined & ref["tenure_days"].isna()).sum())


def test_too_many_quarantined_rows_fail_and_leave_no_output(demo_root, client, tmp_path):
    spec = job_dict(demo_root, tmp_path / "out", checks=QUARANTINE_CHECKS, quarantine={"max_fraction": 0.01})
    message = (
        r"(?s)quarantine: \d+ of 20000 rows \(\d+\.\d+%\) would be quarantined, more than "
        r"`quarantine.max_fraction` \(0.01, 200 rows\); per check: range\(age\): \d+, has_income: \d+.*Hint:"
    )
    with pytest.raises(DataError, match=message):
        run(spec, client)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_failing_checks_are_all_reported_with_counts_and_samples(demo_root, client, tmp_path):
    checks = [
        {"check": "not_null", "columns": ["age", "income"]},
        {"check": "range", "column": "sessions", "min": 0, "max": 12},
        {"check": "allowed_values", "column": "device", "values": ["mobile", "desktop"]},
        {"check": "regex", "column": "country", "pattern": "[A-Z]{2}"},  # passes
        {"check": "regex", "column": "plan", "pattern": "free|basic", "name": "cheap_plans"},
        {"check": "unique", "columns": ["event_id"]},  # passes
        {"check": "unique", "columns": ["country", "device"]},
        {"check": "null_fraction", "column": "age", "max": 0.01},
        {"check": "row_count", "min": 100_000},
    ]
    ref = reference(demo_root)
    with pytest.raises(DataError) as info:
        run(job_dict(demo_root, tmp_path / "out", checks=checks), client)
    text = str(info.value)
    first = str(demo_root / "events" / "date=2024-01-01" / "part-0.parquet")
    n_missing = int(ref[["age", "income"]].isna().any(axis=1).sum())
    assert text.startswith("data quality: 7 problems:\n")
    assert f"  - checks[0] `not_null(age,income)`: {n_missing} of 20000 rows violate it; e.g. age=None, income=" in text
    assert f"({first})" in text
    assert (
        f"checks[1] `range(sessions)`: {int((ref['sessions'] > 12).sum())} of 20000 rows violate it; e.g. sessions="
        in text
    )
    assert f"checks[2] `allowed_values(device)`: {int((ref['device'] == 'tablet').sum())} of 20000" in text
    assert "device='tablet'" in text
    assert "checks[3]" not in text and "checks[5]" not in text
    assert f"checks[4] `cheap_plans`: {int((~ref['plan'].isin(['free', 'basic'])).sum())} of 20000" in text
    assert "checks[6] `unique(country,device)`: " in text and "rows share a duplicated key" in text
    assert "country='US', device='mobile' (" in text
    n_age = int(ref["age"].isna().sum())
    assert f"checks[7] `null_fraction(age)`: {n_age} of 20000 rows ({n_age / 200:.2f}%) lack 'age'" in text
    assert "checks[8] `row_count`: 20000 rows read; expected at least 100000" in text
    assert "Hint: fix the data" in text
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_unique_with_quarantine_takes_one_prepass_and_quarantines_every_duplicate(demo_root, client, tmp_path):
    data = copy_days(demo_root, tmp_path / "events", DAYS[:2])
    dup = pd.read_parquet(data / "date=2024-01-01" / "part-0.parquet").head(30)
    (data / "date=2024-01-02" / "extra.parquet").write_bytes(b"")
    dup.to_parquet(data / "date=2024-01-02" / "extra.parquet", index=False)
    spec = job_dict(
        demo_root,
        tmp_path / "out",
        source={"uri": str(data)},
        checks=[{"check": "unique", "columns": ["event_id"], "action": "quarantine"}],
        quarantine={"max_fraction": 0.1},
    )
    result = run(spec, client)
    got = pd.read_parquet(tmp_path / "out" / "quarantine")
    assert sorted(got["event_id"]) == sorted(dup["event_id"].tolist() * 2)
    assert set(got["__check"]) == {"unique(event_id)"}
    assert got["__source_file"].str.endswith(("date=2024-01-01/part-0.parquet", "date=2024-01-02/extra.parquet")).all()
    assert result.manifest["quality"]["prepasses"] == 1
    assert result.manifest["quality"]["quarantined_rows"] == 60 == result.rows["quarantined"]
    assert result.rows["read"] == 10_030


def _corrupt_parquet(data: Path) -> Path:
    bad = data / "date=2024-01-02" / "part-0.parquet"
    bad.write_bytes(b"PAR1" + b"\0not parquet" * 64 + b"PAR1")
    return bad


def _type_changed(data: Path) -> Path:
    bad = data / "date=2024-01-02" / "part-0.parquet"
    table = pq.read_table(bad)
    sessions = pa.array([f"n{v}" for v in table.column("sessions").to_pylist()])
    pq.write_table(table.set_column(table.schema.get_field_index("sessions"), "sessions", sessions), bad)
    return bad


def _as_csv(data: Path) -> Path:
    """The copied days as CSV files; returns the second day's."""
    for day in DAYS[:3]:
        folder = data / f"date={day}"
        frame = pd.read_parquet(folder / "part-0.parquet")
        (folder / "part-0.parquet").unlink()
        frame.to_csv(folder / "part-0.csv", index=False)
    return data / "date=2024-01-02" / "part-0.csv"


def _csv_bad_row(data: Path) -> Path:
    bad = _as_csv(data)
    lines = bad.read_text().splitlines()
    lines.insert(len(lines) // 2, lines[-1] + ",surplus")  # one field too many
    bad.write_text("\n".join(lines) + "\n")
    return bad


def _csv_stray_quote(data: Path) -> Path:
    bad = _as_csv(data)
    lines = bad.read_text().splitlines()
    lines.insert(len(lines) // 2, '"' + lines[-1])  # a quote that never closes
    bad.write_text("\n".join(lines) + "\n")
    return bad


@pytest.mark.parametrize(
    "damage",
    [_corrupt_parquet, _type_changed, _csv_bad_row, _csv_stray_quote],
    ids=["corrupt", "type", "csv", "csv-stray-quote"],
)
def test_bad_file_fails_by_default_and_is_skipped_with_quarantine(damage, demo_root, client, tmp_path):
    data = copy_days(demo_root, tmp_path / "events")
    bad = damage(data)
    source = {"uri": str(data), "format": "csv" if bad.suffix == ".csv" else "parquet"}
    spec = job_dict(demo_root, tmp_path / "out", source=source)
    with pytest.raises(DataError, match=rf"(?s)source: cannot read file '{bad}': .*Hint: .*bad_files: skip"):
        run(spec, client)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []

    spec = job_dict(demo_root, tmp_path / "out", source=source, quarantine={})
    result = dpipe.run(dpipe.job_from_dict(spec), client=client, progress=True)
    bad_files = result.manifest["quality"]["bad_files"]
    assert [r["file"] for r in bad_files] == [str(bad)] and bad_files[0]["error"]
    assert result.rows["read"] == 10_000  # the two readable files
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["quality"]["bad_files"] == bad_files


def test_bad_file_is_in_the_log(demo_root, client, tmp_path, caplog):
    data = copy_days(demo_root, tmp_path / "events")
    bad = _corrupt_parquet(data)
    spec = job_dict(demo_root, tmp_path / "out", source={"uri": str(data)}, quarantine={"bad_files": "skip"})
    with caplog.at_level(logging.INFO, logger="dpipe"):
        dpipe.run(dpipe.job_from_dict(spec), client=client, progress=True)
    logged = [r.getMessage() for r in caplog.records if r.name == "dpipe"]
    assert any(m.startswith(f"skipped unreadable file {bad}: ") for m in logged)


def test_cli_validate_checks_the_checks_section(demo_root, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    def validate(checks):
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job_dict(demo_root, tmp_path / "out", checks=checks)))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, "-m", "dpipe.cli", "validate", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    ok = validate([{"check": "not_null", "columns": ["age"]}])
    assert ok.returncode == 0 and "; 1 quality check(s)" in ok.stdout
    missing = validate([{"check": "range", "column": "agee", "min": 0}])
    assert missing.returncode == 2
    assert "checks[0] (range(agee)): column(s) ['agee'] not found in the source" in missing.stderr
    bad = validate([{"check": "regex", "column": "plan", "pattern": "[a-"}])
    assert bad.returncode == 2 and "checks[0].pattern: not a valid regular expression" in bad.stderr


@pytest.mark.parametrize("mode", ["flag", "set_aside", "ignore"])
def test_prediction_applies_the_quarantining_checks_as_the_spec_says(demo_root, client, tmp_path, mode):
    spec = job_dict(
        demo_root,
        tmp_path / "bundle",
        checks=QUARANTINE_CHECKS,
        quarantine={"max_fraction": 0.2, "at_prediction": mode},
        train={"num_boost_round": 3},
    )
    bundle = run(spec, client).bundle_uri
    source = demo_root / "events" / f"date={DAYS[0]}"
    result = dpipe.predict(bundle, str(source), str(tmp_path / "scores"), client=client, progress=False)
    scores = pd.read_parquet(tmp_path / "scores")
    rows = pd.read_parquet(source)
    bad_age = rows["age"].notna() & ~rows["age"].between(20, 80)  # a range check passes missing values
    no_income = rows["income"].isna()
    manifest = json.loads((tmp_path / "scores" / "_dpipe_manifest.json").read_text())["manifest"]
    if mode == "ignore":
        assert len(scores) == len(rows) and "quarantined_by" not in scores and "quality" not in manifest
        return
    assert manifest["quality"] == {"at_prediction": mode, "checks": ["range(age)", "has_income"], "skipped": []}
    flagged = rows.assign(by=pd.Series(None, index=rows.index, dtype=object))
    flagged.loc[no_income, "by"] = "has_income"
    flagged.loc[bad_age, "by"] = "range(age)"  # the first failed check names the row
    assert bad_age.any() and no_income.any()
    if mode == "flag":
        assert len(scores) == len(rows) == result.rows
        got = scores.set_index("event_id")["quarantined_by"].sort_index()
        want = flagged.set_index("event_id")["by"].sort_index()
        assert got.isna().tolist() == want.isna().tolist()
        assert got.dropna().tolist() == want.dropna().tolist()
    else:
        kept = flagged.loc[flagged["by"].isna(), "event_id"]
        assert sorted(scores["event_id"]) == sorted(kept) and "quarantined_by" not in scores


# -- every kind of bad file at once -------------------------------------------------------------
def _files(demo_root: Path, dest: Path, n: int = 8) -> list[Path]:
    """The first demo day as ``n`` Parquet files ``part-0`` ... (in listing order), safe to damage."""
    table = pq.read_table(demo_root / "events" / f"date={DAYS[0]}" / "part-0.parquet")
    dest.mkdir(parents=True)
    step = -(-table.num_rows // n)
    paths = [dest / f"part-{i}.parquet" for i in range(n)]
    for i, path in enumerate(paths):
        pq.write_table(table.slice(i * step, step), path)
    return paths


#: The flat folder has no ``date`` partition column to leave out of the model.
NO_DATE = {"exclude": [], "num_boost_round": 5}

#: name -> how the file is damaged (``None``: a valid file of zero rows, which is data, not damage).
HOSTILE = {
    "random bytes (the first file)": lambda p: p.write_bytes(bytes(range(256)) * 7),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "wrong magic bytes": lambda p: p.write_bytes(p.read_bytes()[:-4] + b"PAR0"),  # the footer's
    "empty file": lambda p: p.write_bytes(b""),
    "type changed": lambda p: pq.write_table(
        (t := pq.read_table(p)).set_column(
            t.schema.get_field_index("sessions"),
            "sessions",
            pa.array([f"n{v}" for v in t.column("sessions").to_pylist()]),
        ),
        p,
    ),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_bad_file_is_named_before_any_work(kind, demo_root, tmp_path):
    paths = _files(demo_root, tmp_path / "events")
    bad = paths[list(HOSTILE).index(kind)]
    HOSTILE[kind](bad)
    spec = job_dict(demo_root, tmp_path / "out", source={"uri": str(tmp_path / "events")}, train=NO_DATE)
    with pytest.raises(DataError, match=rf"(?s)source: cannot read file '{bad}': .*Hint: .*bad_files: skip"):
        plan(dpipe.job_from_dict(spec))
    assert not (tmp_path / "out").exists()


def test_every_bad_file_is_skipped_and_counted_and_zero_rows_are_data(demo_root, client, tmp_path):
    paths = _files(demo_root, tmp_path / "events")
    for path, damage in zip(paths, HOSTILE.values()):
        damage(path)
    zero = paths[len(HOSTILE)]
    pq.write_table(pq.read_table(zero).slice(0, 0), zero)
    good = paths[len(HOSTILE) + 1 :]
    spec = job_dict(demo_root, tmp_path / "out", source={"uri": str(tmp_path / "events")}, quarantine={}, train=NO_DATE)
    result = run(spec, client)
    skipped = {r["file"]: r["error"] for r in result.manifest["quality"]["bad_files"]}
    assert sorted(skipped) == sorted(str(p) for p in paths[: len(HOSTILE)])
    assert all(skipped.values())
    assert result.rows["read"] == sum(pq.read_metadata(p).num_rows for p in good)
