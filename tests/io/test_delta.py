"""Delta Lake tables both ways: read with dpipe, written tables read back with ``deltalake`` itself."""

from __future__ import annotations

import datetime as dt
import json
import struct
import time
from pathlib import Path

import dask
import dask.dataframe as dd
import deltalake
import pandas as pd
import pyarrow as pa
import pytest

import dpipe
from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io import open_sink, open_source
from dpipe.plan import plan
from tests.conftest import job_dict


def _table(n: int = 12, start: int = 0) -> pa.Table:
    x = list(range(start, start + n))
    return pa.table({"day": [f"2024-06-0{1 + i % 3}" for i in x], "x": x, "y": [float(i) / 2 for i in x]})


@pytest.fixture
def lake(tmp_path: Path) -> str:
    """A table partitioned by day with two versions: 12 rows, then 6 more."""
    uri = str(tmp_path / "events")
    deltalake.write_deltalake(uri, _table(), partition_by=["day"])
    deltalake.write_deltalake(uri, _table(6, start=100), partition_by=["day"], mode="append")
    return uri


def _rows(frame) -> list[int]:
    return sorted(int(v) for v in frame.compute()["x"])


def test_reads_the_latest_version_with_partition_values_and_lineage(lake):
    src = open_source({"format": "delta", "uri": lake})
    assert src.frame.npartitions == len(src.files) == len(src.datums) == 6  # 3 days x 2 commits
    frame = src.frame.compute()
    assert sorted(frame["x"]) == [*range(12), *range(100, 106)]
    assert set(frame["day"]) == {"2024-06-01", "2024-06-02", "2024-06-03"}
    assert src.partition_columns == ["day"]
    assert src.record["kind"] == "delta" and src.record["version"] == 1
    assert all(d.size and d.id.endswith(".parquet") for d in src.datums)
    assert src.lineage()["version"] == 1


def test_time_travel_by_version_and_by_time(lake):
    assert _rows(open_source({"format": "delta", "uri": lake, "version": 0}).frame) == list(range(12))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    src = open_source({"format": "delta", "uri": lake, "as_of": later.isoformat()})
    assert src.record["version"] == 1
    with pytest.raises(SpecError, match=r"source.version: the Delta table .* has no version 7"):
        open_source({"format": "delta", "uri": lake, "version": 7})
    with pytest.raises(SpecError, match=r"source.as_of: the Delta table .* did not exist yet at 2001-01-01"):
        open_source({"format": "delta", "uri": lake, "as_of": "2001-01-01T00:00:00"})
    with pytest.raises(SpecError, match="give either `version` or `as_of`"):
        open_source({"format": "delta", "uri": lake, "version": 0, "as_of": "2024-01-01T00:00:00"})


def test_filters_prune_files_through_the_log_and_filter_rows(lake):
    by_partition = open_source({"format": "delta", "uri": lake, "filters": [["day", "=", "2024-06-02"]]})
    assert by_partition.frame.npartitions == 2  # one file of that day per commit
    assert _rows(by_partition.frame) == [1, 4, 7, 10, 100, 103]
    # x >= 100 only lives in the second commit's files: the min/max statistics skip the first's.
    by_stats = open_source({"format": "delta", "uri": lake, "filters": [["x", ">=", 103]], "columns": ["x"]})
    assert by_stats.frame.npartitions == 3
    assert by_stats.record["files_in_version"] == 6 and by_stats.record["files_selected"] == 3
    assert _rows(by_stats.frame) == [103, 104, 105]
    assert list(by_stats.frame.columns) == ["x"]
    with pytest.raises(DataError, match="no data file matches `filters`"):
        open_source({"format": "delta", "uri": lake, "filters": [["day", "=", "1999-01-01"]]})


def test_projection_reaches_the_read(lake):
    src = open_source({"format": "delta", "uri": lake})
    assert list(src.frame[["y"]].compute().columns) == ["y"]
    with pytest.raises(ColumnError, match=r"source.columns: column\(s\) \['z'\] not found in the Delta table"):
        open_source({"format": "delta", "uri": lake, "columns": ["x", "z"]})


def test_a_missing_table_is_named(tmp_path):
    with pytest.raises(SpecError, match=r"source.uri: no Delta table at .*nowhere"):
        open_source({"format": "delta", "uri": str(tmp_path / "nowhere")})


# -- deletion vectors and column mapping ------------------------------------------------------
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def _z85(data: bytes) -> str:
    data += b"\0" * (-len(data) % 4)
    out = []
    for i in range(0, len(data), 4):
        (value,) = struct.unpack(">I", data[i : i + 4])
        chunk = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            chunk.append(_Z85[digit])
        out.append("".join(reversed(chunk)))
    return "".join(out)


def _delete_rows_with_a_deletion_vector(uri: str, positions: list[int]) -> None:
    """Commit what Spark's DELETE does on a table with deletion vectors: the file stays, its rows are masked.

    The vector is inline in the log (storage type ``i``): a RoaringBitmapArray after the magic
    number, Z85-encoded, as the Delta protocol describes.
    """
    import pyroaring

    log = Path(uri) / "_delta_log"
    add = next(json.loads(line)["add"] for line in (log / f"{0:020d}.json").read_text().splitlines() if '"add"' in line)
    payload = struct.pack("<iqi", 1681511377, 1, 0) + pyroaring.BitMap(positions).serialize()
    vector = {
        "storageType": "i",
        "pathOrInlineDv": _z85(payload),
        "sizeInBytes": len(payload),
        "cardinality": len(positions),
    }
    now = int(time.time() * 1000)
    remove = {
        "path": add["path"],
        "deletionTimestamp": now,
        "dataChange": True,
        "size": add["size"],
        "partitionValues": {},
    }
    entries = [
        {"commitInfo": {"timestamp": now, "operation": "DELETE"}},
        {"remove": remove},
        {"add": {**add, "deletionVector": vector, "modificationTime": now}},
    ]
    (log / f"{1:020d}.json").write_text("".join(json.dumps(e) + "\n" for e in entries))


def test_deletion_vectors_are_applied(tmp_path):
    uri = str(tmp_path / "dv")
    table = pa.table({"x": list(range(10)), "y": [float(i) for i in range(10)]})
    deltalake.write_deltalake(uri, table, configuration={"delta.enableDeletionVectors": "true"})
    _delete_rows_with_a_deletion_vector(uri, [1, 4, 7])
    expected = sorted(pa.RecordBatchReader.from_stream(deltalake.DeltaTable(uri).scan()).read_all()["x"].to_pylist())
    src = open_source({"format": "delta", "uri": uri})
    assert src.record["deletion_vectors"] == 1
    assert _rows(src.frame) == expected == [0, 2, 3, 5, 6, 8, 9]
    # Projection and a row filter on a masked file: the mask is applied by position first.
    filtered = open_source({"format": "delta", "uri": uri, "columns": ["x"], "filters": [["y", ">", 3]]})
    assert _rows(filtered.frame) == [5, 6, 8, 9]
    # The version before the delete still has every row.
    assert _rows(open_source({"format": "delta", "uri": uri, "version": 0}).frame) == list(range(10))


def test_column_mapping_is_refused_by_name(tmp_path):
    uri = str(tmp_path / "mapped")
    deltalake.write_deltalake(uri, pa.table({"x": [1, 2]}), configuration={"delta.columnMapping.mode": "name"})
    with pytest.raises(DataError, match=r"uses column mapping \(table feature `columnMapping`, mode 'name'\)"):
        open_source({"format": "delta", "uri": uri})


# -- the sink ---------------------------------------------------------------------------------
def _frame(values: list[float], day: str = "2024-06-01", npartitions: int = 2) -> dd.DataFrame:
    n = len(values)
    pdf = pd.DataFrame({"id": range(n), "day": [day] * n, "score": values})
    return dd.from_pandas(pdf, npartitions=npartitions)


def _read_back(uri: str) -> pd.DataFrame:
    return deltalake.DeltaTable(uri).to_pandas().sort_values(["day", "id"]).reset_index(drop=True)


def test_sink_appends_in_one_commit_and_a_retried_txn_appends_nothing(tmp_path):
    uri = str(tmp_path / "scores")
    with open_sink({"format": "delta", "uri": uri, "partition_by": ["day"]}) as sink:
        sink.write(_frame([0.1, 0.2, 0.3]))
        first = sink.commit(metadata={"job": "score", "rows": 3}, txn="score-run-1")
    assert first.rows == 3 and first.record["version"] == 0 and not first.duplicate
    table = deltalake.DeltaTable(uri)
    assert table.metadata().partition_columns == ["day"]
    assert table.transaction_version("score-run-1") == 1
    commit = table.history(1)[0]
    assert commit["dpipe"] == {"job": "score", "rows": 3} and commit["dpipe.txn"] == "score-run-1"

    with open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(_frame([0.1, 0.2, 0.3]))
        again = sink.commit(txn="score-run-1")
    assert again.duplicate and deltalake.DeltaTable(uri).version() == 0
    assert len(_read_back(uri)) == 3
    # The duplicate's data files were deleted, not left in the table folder.
    assert len(list(Path(uri).rglob("*.parquet"))) == len(deltalake.DeltaTable(uri).file_uris())

    with open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(_frame([0.5, 0.6], day="2024-06-02"))
        second = sink.commit(txn="score-run-2")
    assert second.record["version"] == 1
    assert list(_read_back(uri)["score"]) == [0.1, 0.2, 0.3, 0.5, 0.6]


def test_sink_overwrites_the_table_or_only_the_partitions_written(tmp_path):
    uri = str(tmp_path / "scores")
    with open_sink({"format": "delta", "uri": uri, "partition_by": ["day"]}) as sink:
        sink.write(dd.concat([_frame([0.1, 0.2]), _frame([0.3], day="2024-06-02")]))
        sink.commit()
    with open_sink({"format": "delta", "uri": uri, "mode": "overwrite_partitions"}) as sink:
        sink.write(_frame([0.9], day="2024-06-02", npartitions=1))
        written = sink.commit()
    assert written.record["mode"] == "overwrite_partitions"
    got = _read_back(uri)
    assert list(zip(got["day"], got["score"])) == [("2024-06-01", 0.1), ("2024-06-01", 0.2), ("2024-06-02", 0.9)]
    with open_sink({"format": "delta", "uri": uri, "mode": "overwrite"}) as sink:
        sink.write(_frame([0.7], npartitions=1).assign(extra=1))
        sink.commit()
    got = _read_back(uri)
    assert list(got["score"]) == [0.7] and "extra" in got.columns


def test_a_failed_write_leaves_the_table_as_it_was(tmp_path):
    uri = str(tmp_path / "scores")
    with open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(_frame([0.1, 0.2]))
        sink.commit()

    def explode(part):
        if len(part) and part["id"].iloc[0] == 2:
            raise RuntimeError("worker lost its mind")
        return part

    frame = _frame([0.4, 0.5, 0.6, 0.7], npartitions=2).map_partitions(explode)
    with pytest.raises(RuntimeError, match="lost its mind"), open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(frame)
        sink.commit()
    assert deltalake.DeltaTable(uri).version() == 0
    assert list(_read_back(uri)["score"]) == [0.1, 0.2]


def test_an_output_that_does_not_fit_the_table_fails_before_any_compute(tmp_path):
    uri = str(tmp_path / "scores")
    with open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(_frame([0.1]))
        sink.commit()
    touched = []

    def watch(part):
        touched.append(len(part))
        return part

    wrong = _frame([0.2]).assign(score="high")
    wrong_type = wrong.map_partitions(watch, meta=wrong._meta)
    sink = open_sink({"format": "delta", "uri": uri})
    with pytest.raises(DataError, match=r"'score' is (large_)?string but the table has double"):
        sink.write(wrong_type)
    extra = _frame([0.2]).assign(extra=1)
    with pytest.raises(ColumnError, match=r"not in the table: \['extra'\]"):
        sink.write(extra.map_partitions(watch, meta=extra._meta))
    assert touched == []
    with pytest.raises(SpecError, match=r"partition_by: \['day'\] differs from the table's partition columns \[\]"):
        open_sink({"format": "delta", "uri": uri, "partition_by": ["day"]})


# -- on S3, and as a job's source ---------------------------------------------------------------
def test_round_trip_on_s3(s3):
    uri = f"s3://{s3['bucket']}/lake/scores"
    options = s3["storage_options"]
    with open_sink({"format": "delta", "uri": uri, "partition_by": ["day"], "storage_options": options}) as sink:
        sink.write(_frame([0.1, 0.2, 0.3]))
        written = sink.commit(txn="s3-run")
    assert written.rows == 3
    delta_options = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    outside = deltalake.DeltaTable(uri, storage_options=delta_options)
    assert sorted(outside.to_pandas()["score"]) == [0.1, 0.2, 0.3]
    src = open_source({"format": "delta", "uri": uri, "storage_options": options, "columns": ["id", "score"]})
    assert sorted(src.frame.compute()["score"]) == [0.1, 0.2, 0.3]
    assert src.record["version"] == 0 and all(d.id.startswith("s3://") for d in src.datums)


def test_a_delta_table_is_a_job_source(tmp_path, demo_root):
    events = pd.read_parquet(demo_root / "events")
    events["date"] = events["date"].astype(str)  # the Hive folder names, read back as a category
    uri = str(tmp_path / "events")
    deltalake.write_deltalake(uri, pa.Table.from_pandas(events, preserve_index=False), partition_by=["date"])
    job = dpipe.job_from_dict(job_dict(demo_root, tmp_path / "out", source={"format": "delta", "uri": uri}))
    p = plan(job)
    assert p.source.record["kind"] == "delta" and p.source.frame.npartitions == events["date"].nunique()
    assert "log_income" in p.model_input.features


def test_concurrent_appends_are_retried_and_both_land(tmp_path):
    uri = str(tmp_path / "scores")
    with open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(_frame([0.1]))
        sink.commit()
    # Both writers read version 0, then commit one after the other: the second rebases on the first.
    first, second = open_sink({"format": "delta", "uri": uri}), open_sink({"format": "delta", "uri": uri})
    with first, second:
        first.write(_frame([0.2], day="2024-06-02"))
        second.write(_frame([0.3], day="2024-06-03"))
        assert first.commit(txn="writer-1").record["version"] == 1
        assert second.commit(txn="writer-2").record["version"] == 2
    assert sorted(_read_back(uri)["score"]) == [0.1, 0.2, 0.3]


def test_concurrent_overwrites_fail_clearly_and_leave_the_winner(tmp_path):
    uri = str(tmp_path / "scores")
    with open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(_frame([0.1]))
        sink.commit()
    first = open_sink({"format": "delta", "uri": uri, "mode": "overwrite"})
    second = open_sink({"format": "delta", "uri": uri, "mode": "overwrite"})
    with first:
        first.write(_frame([0.5]))
        first.commit()
    with pytest.raises(StorageError, match="conflicted with another writer's|cannot commit"), second:
        second.write(_frame([0.9]))
        second.commit()
    assert list(_read_back(uri)["score"]) == [0.5]


def test_partition_values_that_need_escaping_are_read_filtered_and_written(tmp_path):
    uri = str(tmp_path / "cities")
    stamps = pa.array([dt.datetime(2024, 1, 1, 10), dt.datetime(2024, 1, 2, 11), dt.datetime(2024, 1, 1, 10)])
    table = pa.table({"city": ["New York", "Paris", "a/b%c"], "ts": stamps, "x": [1, 2, 3]})
    deltalake.write_deltalake(uri, table, partition_by=["city", "ts"])
    # A filter on any column goes through the log's pruning, whose paths are escaped once more.
    assert _rows(open_source({"format": "delta", "uri": uri, "filters": [["x", ">=", 1]]}).frame) == [1, 2, 3]
    assert _rows(open_source({"format": "delta", "uri": uri, "filters": [["city", "=", "New York"]]}).frame) == [1]
    at_ten = open_source({"format": "delta", "uri": uri, "filters": [["ts", "=", dt.datetime(2024, 1, 1, 10)]]})
    assert _rows(at_ten.frame) == [1, 3]
    out = str(tmp_path / "copy")
    with open_sink({"format": "delta", "uri": out, "partition_by": ["city"]}) as sink:
        sink.write(dd.from_pandas(table.to_pandas(), npartitions=2))
        sink.commit()
    assert sorted(deltalake.DeltaTable(out).to_pandas()["city"]) == ["New York", "Paris", "a/b%c"]


def test_overwrite_partitions_replaces_a_null_partition_too(tmp_path):
    uri = str(tmp_path / "scores")
    pdf = pd.DataFrame({"k": ["a", "b", None, None], "v": [1, 2, 3, 4]})
    with open_sink({"format": "delta", "uri": uri, "partition_by": ["k"]}) as sink:
        sink.write(dd.from_pandas(pdf, npartitions=1))
        sink.commit()
    new = pd.DataFrame({"k": ["b", None], "v": [20, 30]})
    with open_sink({"format": "delta", "uri": uri, "mode": "overwrite_partitions"}) as sink:
        sink.write(dd.from_pandas(new, npartitions=1))
        sink.commit()
    assert sorted(deltalake.DeltaTable(uri).to_pandas()["v"]) == [1, 20, 30]


def test_a_write_that_fails_halfway_leaves_no_data_file(tmp_path):
    uri = str(tmp_path / "scores")

    def explode(part):
        if len(part) and part["id"].iloc[0] >= 4:
            raise RuntimeError("boom")
        return part

    frame = _frame([0.1] * 8, npartitions=4)
    with pytest.raises(RuntimeError, match="boom"), open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(frame.map_partitions(explode, meta=frame._meta), compute=lambda t: dask.compute(t, scheduler="sync"))
    assert list(Path(uri).rglob("*.parquet")) == []


def test_timezone_aware_timestamps_are_utc_and_unsupported_types_fail_before_compute(tmp_path):
    uri = str(tmp_path / "events")
    pdf = pd.DataFrame({"at": pd.to_datetime(["2024-06-01 12:00"]).tz_localize("Europe/Paris"), "v": [1]})
    with open_sink({"format": "delta", "uri": uri}) as sink:
        sink.write(dd.from_pandas(pdf, npartitions=1))
        sink.commit()
    got = deltalake.DeltaTable(uri).to_pandas()
    assert str(got["at"].iloc[0]) == "2024-06-01 10:00:00+00:00"
    nested = dd.from_pandas(pd.DataFrame({"v": [1]}), npartitions=1).assign(span=pd.Timedelta("1h"))
    with pytest.raises(DataError, match=r"column 'span' has type duration\[.*\], which a Delta table cannot hold"):
        open_sink({"format": "delta", "uri": str(tmp_path / "other")}).write(nested)
