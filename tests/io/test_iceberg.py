"""``format: iceberg``: real tables in a SQLite catalog, on local disk and on the moto S3 server.

Tables are written and read back with pyiceberg itself; dpipe reads them through ``open_source``
and writes them through ``open_sink``.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.table import FileScanTask
from pyiceberg.typedef import Record

import dpipe
import dpipe.io.iceberg.source as iceberg_source
from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io import BadFileLog, Datum, open_sink, open_source
from dpipe.io.iceberg import ScanPart, read_scan_part
from dpipe.io.iceberg.catalog import slim
from dpipe.plan import plan
from tests.conftest import free_port, job_dict

DAYS = ["2024-06-01", "2024-06-02", "2024-06-03"]


def day_rows(day: int, n: int = 10) -> pa.Table:
    """Rows of one day: ids ``day*100 ..``, amounts ``day*10 ..`` (so a file's amount range is its day's)."""
    return pa.table(
        {
            "id": pa.array(range(day * 100, day * 100 + n), pa.int64()),
            "day": pa.array([DAYS[day]] * n, pa.string()),
            "amount": pa.array([day * 10.0 + i / 10 for i in range(n)], pa.float64()),
            "country": pa.array(["de", "fr"] * (n // 2), pa.string()),
        }
    )


def embedded(tmp_path) -> dict:
    """The catalog entry of a spec: the embedded SQLite catalog of a local warehouse."""
    return {"name": "lake", "warehouse": str(tmp_path / "wh")}


def lake(tmp_path):
    """The same catalog, opened by pyiceberg itself (the embedded one is ``<warehouse>/catalog.db``)."""
    wh = tmp_path / "wh"
    wh.mkdir(exist_ok=True)
    return load_catalog("lake", type="sql", uri=f"sqlite:///{wh}/catalog.db", warehouse=f"file://{wh}")


@pytest.fixture
def events(tmp_path):
    """``shop.events``, partitioned by ``day``: three appends (three snapshots), one file each."""
    catalog = lake(tmp_path)
    catalog.create_namespace("shop")
    table = catalog.create_table("shop.events", schema=day_rows(0).schema)
    with table.update_spec() as update:
        update.add_identity("day")
    for day in range(3):
        table.append(day_rows(day))
    return table


def source(tmp_path, **keys) -> dict:
    return {"format": "iceberg", "table": "shop.events", "catalog": embedded(tmp_path), **keys}


def rows(frame: pd.DataFrame, by: str = "id") -> pd.DataFrame:
    return frame.sort_values(by).reset_index(drop=True)


# -- source -----------------------------------------------------------------------------------
def test_reads_the_current_snapshot_with_projection_record_and_datums(tmp_path, events, monkeypatch):
    seen = []
    read = iceberg_source.read_scan_part

    def spy(part, columns=None):
        seen.append(columns)
        return read(part, columns=columns)

    monkeypatch.setattr(iceberg_source, "read_scan_part", spy)
    src = open_source(source(tmp_path, columns=["id", "amount", "country"]))

    current = events.current_snapshot()
    assert src.uri == "iceberg://lake/shop.events" and src.format == "iceberg"
    assert src.record == {
        "kind": "iceberg",
        "catalog": "lake",
        "table": "shop.events",
        "snapshot_id": current.snapshot_id,
        "snapshot_timestamp_ms": current.timestamp_ms,
    }
    files = {t.file.file_path: t.file for t in events.scan().plan_files()}
    assert sorted(src.files) == sorted(files) and src.frame.npartitions == 3
    # One datum per data file, versioned by the snapshot that added it (one per append here).
    added = [s.snapshot_id for s in events.metadata.snapshots]
    assert sorted(d.version for d in src.datums) == sorted(str(s) for s in added)
    assert {d.id: d.size for d in src.datums} == {p: f.file_size_in_bytes for p, f in files.items()}
    assert all(isinstance(d, Datum) for d in src.datums) and src.lineage()["datums"][0]["id"] in files

    expected = events.scan(selected_fields=("id", "amount", "country")).to_pandas()
    got = src.frame.compute(scheduler="sync")
    pd.testing.assert_frame_equal(rows(got), rows(expected), check_dtype=False)
    assert list(got.columns) == ["id", "amount", "country"]
    assert str(got["country"].dtype) == "string" and str(got["id"].dtype) == "int64"
    assert seen == [None] * 3
    seen.clear()
    assert src.frame[["amount"]].compute(scheduler="sync")["amount"].sum() == pytest.approx(expected["amount"].sum())
    assert seen == [["amount"]] * 3  # the projection reached the read
    reordered = open_source(source(tmp_path, columns=["country", "id"]))
    assert list(reordered.frame.compute(scheduler="sync").columns) == ["country", "id"] == reordered.schema.names


def test_filters_prune_data_files_and_filter_rows(tmp_path, events):
    # On the partition column: only that day's file is planned.
    one_day = open_source(source(tmp_path, filters=[["day", "==", DAYS[1]]]))
    assert one_day.frame.npartitions == len(one_day.files) == len(one_day.datums) == 1
    assert "day=2024-06-02" in one_day.files[0]
    assert sorted(one_day.frame.compute(scheduler="sync")["id"]) == list(range(100, 110))
    assert one_day.partition_columns == ["day"]
    # On another column: the files' min/max statistics prune, then rows are filtered exactly.
    amounts = open_source(source(tmp_path, filters=[["amount", ">=", 20.5], ["country", "in", ["de"]]]))
    assert amounts.frame.npartitions == 1
    assert sorted(amounts.frame.compute(scheduler="sync")["id"]) == [206, 208]
    # A list of lists is an OR of ANDs; YAML dates compare as text with string columns.
    either = open_source(source(tmp_path, filters=[[["day", "=", dt.date(2024, 6, 1)]], [["id", ">", 208]]]))
    assert either.frame.npartitions == 2
    assert sorted(either.frame.compute(scheduler="sync")["id"]) == [*range(10), 209]


def test_time_travel_by_snapshot_id_and_as_of(tmp_path, events):
    first, second, third = events.metadata.snapshots
    by_id = open_source(source(tmp_path, snapshot_id=first.snapshot_id))
    assert by_id.record["snapshot_id"] == first.snapshot_id
    assert sorted(by_id.frame.compute(scheduler="sync")["id"]) == list(range(10))

    at = dt.datetime.fromtimestamp(second.timestamp_ms / 1000, dt.UTC)
    as_of = open_source(source(tmp_path, as_of=at.isoformat()))
    assert as_of.record["snapshot_id"] == second.snapshot_id
    assert as_of.frame.npartitions == 2 and len(as_of.frame.compute(scheduler="sync")) == 20
    naive = open_source(source(tmp_path, as_of=at.replace(tzinfo=None)))  # a date-time without zone is UTC
    assert naive.record["snapshot_id"] == second.snapshot_id


def test_rows_deleted_by_pyiceberg_are_not_read(tmp_path, events):
    events.delete("id == 103 or id == 205")
    src = open_source(source(tmp_path))
    assert src.record["snapshot_id"] == events.current_snapshot().snapshot_id
    ids = sorted(src.frame.compute(scheduler="sync")["id"])
    assert len(ids) == 28 and 103 not in ids and 205 not in ids
    assert ids == sorted(events.scan().to_pandas()["id"])


def test_a_task_with_positional_delete_files_is_read_without_the_deleted_rows(tmp_path, events):
    # pyiceberg itself writes deletes by rewriting files; other engines write positional delete
    # files. A scan task carrying one (as planning returns it) is read with those rows left out.
    [task] = events.scan(row_filter="day == '2024-06-03'").plan_files()
    deletes = tmp_path / "deletes.parquet"
    pq.write_table(pa.table({"file_path": [task.file.file_path] * 2, "pos": pa.array([0, 4], pa.int64())}), deletes)
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=f"file://{deletes}",
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=2,
        file_size_in_bytes=deletes.stat().st_size,
    )
    projection = events.schema()
    part = ScanPart(
        task=FileScanTask(task.file, delete_files={delete_file}),
        metadata=slim(events.metadata),
        io_properties=dict(events.io.properties),
        schema=projection,
        row_filter=task.residual,
        arrow_schema=schema_to_pyarrow(projection, include_field_ids=False),
    )
    part = pickle.loads(pickle.dumps(part))  # what a worker process gets
    frame = read_scan_part(part, columns=["id", "amount"])
    assert list(frame.columns) == ["id", "amount"]
    assert sorted(frame["id"]) == [201, 202, 203, 205, 206, 207, 208, 209]


def test_an_unreadable_data_file_is_named_or_skipped_and_recorded(tmp_path, events):
    [task] = events.scan(row_filter="day == '2024-06-02'").plan_files()
    path = task.file.file_path.removeprefix("file://")
    with open(path, "wb") as f:
        f.write(b"not parquet at all")
    src = open_source(source(tmp_path))
    with pytest.raises(DataError, match=r"source: cannot read data file '.*day=2024-06-02.*'"):
        src.frame.compute(scheduler="sync")
    log = BadFileLog(str(tmp_path / "bad"))
    skipped = open_source(source(tmp_path), bad_file_log=log)
    assert sorted(skipped.frame.compute(scheduler="sync")["id"]) == [*range(10), *range(200, 210)]
    assert [r["file"] for r in log.records()] == [task.file.file_path]


@pytest.mark.parametrize(
    ("keys", "error", "match"),
    [
        (
            {"table": "shop.orders"},
            SpecError,
            r"source.table: table 'shop.orders' not found in catalog 'lake'; tables: \['shop.events'\]",
        ),
        (
            {"table": "crm.events"},
            SpecError,
            r"source.table: namespace 'crm' not found in catalog 'lake'; namespaces: \['shop'\]",
        ),
        ({"snapshot_id": 12345}, SpecError, r"source.snapshot_id: snapshot 12345 not found in table 'shop.events'"),
        (
            {"as_of": "2001-01-01T00:00:00Z"},
            SpecError,
            r"source.as_of: table 'shop.events' has no snapshot at or before 2001-01-01",
        ),
        (
            {"columns": ["id", "amout"]},
            ColumnError,
            r"source.columns: column\(s\) \['amout'\] not found in table 'shop.events'",
        ),
        ({"filters": [["amout", ">", 1]]}, ColumnError, r"source.filters: column 'amout' not found"),
        ({"filters": [["id", ">", "many"]]}, SpecError, r"source.filters: Could not convert many into a long"),
        (
            {"filters": [["day", "==", "2030-01-01"]]},
            DataError,
            r"source: table 'shop.events' at snapshot \d+: no data file matches `filters`",
        ),
        ({"snapshot_id": 1, "as_of": "2024-01-01"}, SpecError, r"give either `snapshot_id` or `as_of`, not both"),
        ({"table": "events"}, SpecError, r"source.table: expected `namespace.name`"),
    ],
)
def test_what_is_missing_or_wrong_is_named(tmp_path, events, keys, error, match):
    with pytest.raises(error, match=match):
        open_source(source(tmp_path, **keys))


def test_a_catalog_that_cannot_be_opened_is_named_and_nothing_is_created(tmp_path):
    missing = tmp_path / "nowhere" / "catalog.db"
    with pytest.raises(StorageError, match=r"source.catalog: no catalog database at '.*nowhere/catalog.db'"):
        open_source(source(tmp_path, catalog={"uri": f"sqlite:///{missing}", "warehouse": str(tmp_path)}))
    assert not missing.parent.exists()
    with pytest.raises(
        StorageError, match=r"(?s)no catalog database at .*Hint: check `catalog.uri` \(or `catalog.warehouse`"
    ):
        open_source(source(tmp_path, catalog={"warehouse": str(tmp_path / "empty")}))
    rest = f"http://user:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(
        StorageError, match=r"source.catalog: cannot reach catalog 'default' at 'http://user:\*\*\*@127"
    ) as exc:
        open_source(source(tmp_path, catalog={"type": "rest", "uri": rest, "token": "hunter2"}))
    assert "hunter2" not in str(exc.value)
    with pytest.raises(
        SpecError, match=r"source.catalog: cannot load catalog 'default': 'hive2' is not a valid CatalogType"
    ):
        open_source(source(tmp_path, catalog={"type": "hive2", "uri": "thrift://127.0.0.1:1"}))
    with pytest.raises(SpecError, match=r"source.catalog: no catalog given"):
        open_source(source(tmp_path, catalog={}))
    with pytest.raises(SpecError, match=r"embedded SQLite catalog needs a local `warehouse`"):
        open_source(source(tmp_path, catalog={"warehouse": "s3://bucket/wh"}))


def test_an_iceberg_source_validates_and_plans_as_a_job_source(tmp_path, demo_root):
    catalog = lake(tmp_path)
    catalog.create_namespace("shop")
    data = ds.dataset(str(demo_root / "events"), partitioning="hive").to_table()
    data = data.cast(pa.schema([pa.field(f.name, pa.string() if f.name == "date" else f.type) for f in data.schema]))
    catalog.create_table("shop.events", schema=data.schema).append(data)
    spec = job_dict(
        demo_root, tmp_path / "out", source={"format": "iceberg", "table": "shop.events", "catalog": embedded(tmp_path)}
    )
    del spec["source"]["uri"]  # job_dict's file source had one; an Iceberg source's is filled in
    job = dpipe.job_from_dict(spec)
    assert type(job.source).__name__ == "IcebergSourceSpec" and job.source.uri == "iceberg://lake/shop.events"
    planned = plan(job)
    assert planned.source.record["kind"] == "iceberg" and len(planned.source.files) == 1
    assert "age" in planned.source.frame.columns
    with pytest.raises(dpipe.SpecError, match=r"source.snapshot: unknown key; .*did you mean 'snapshot_id'"):
        dpipe.job_from_dict({**spec, "source": {**spec["source"], "snapshot": 1}})


# -- S3 -----------------------------------------------------------------------------------------
def s3_catalog(tmp_path, s3) -> tuple[dict, dict]:
    """A local SQLite catalog with its warehouse in the test bucket: the spec's entry, pyiceberg's properties."""
    entry = {"name": "lake", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"s3://{s3['bucket']}/wh"}
    props = {
        "type": "sql",
        "uri": entry["uri"],
        "warehouse": entry["warehouse"],
        "s3.endpoint": s3["endpoint"],
        "s3.access-key-id": "testing",
        "s3.secret-access-key": "testing",
        "s3.region": "us-east-1",
    }
    return entry, props


def test_reads_a_table_on_s3_with_the_storage_options_mapped(tmp_path, s3, client):
    entry, props = s3_catalog(tmp_path, s3)
    catalog = load_catalog("lake", **{k: v for k, v in props.items()})
    catalog.create_namespace("shop")
    table = catalog.create_table("shop.events", schema=day_rows(0).schema)
    with table.update_spec() as update:
        update.add_identity("day")
    for day in range(3):
        table.append(day_rows(day))
    spec = {"format": "iceberg", "table": "shop.events", "catalog": entry, "storage_options": s3["storage_options"]}

    src = open_source({**spec, "filters": [["day", "in", DAYS[1:]]], "columns": ["id", "day"]})
    assert src.frame.npartitions == 2 and all(f.startswith(f"s3://{s3['bucket']}/wh/") for f in src.files)
    assert src.record["snapshot_id"] == table.current_snapshot().snapshot_id
    # On the process cluster: the scan tasks pickle, the workers rebuild the FileIO and reach moto.
    got = client.compute(src.frame).result(timeout=60)
    assert sorted(got["id"]) == [*range(100, 110), *range(200, 210)]
    first = table.metadata.snapshots[0].snapshot_id
    assert len(open_source({**spec, "snapshot_id": first}).frame.compute(scheduler="sync")) == 10
    with pytest.raises(SpecError, match="table 'shop.nope' not found") as exc:
        open_source({**spec, "table": "shop.nope"})
    assert "testing" not in str(exc.value)


# -- sink -------------------------------------------------------------------------------------
def sink(tmp_path, **keys) -> dict:
    return {"format": "iceberg", "table": "shop.scores", "catalog": embedded(tmp_path), **keys}


def frame(start: int, n: int = 12, npartitions: int = 3) -> dd.DataFrame:
    data = pd.DataFrame(
        {
            "id": range(start, start + n),
            "score": [i / n for i in range(n)],
            "day": pd.array([DAYS[i % 2] for i in range(n)], dtype="string"),
        }
    )
    return dd.from_pandas(data, npartitions=npartitions, sort=False)


def run_folders(table) -> list:
    data = table.location().removeprefix("file://") + "/data"
    import os

    return sorted(p for p in os.listdir(data) if p.startswith("dpipe-")) if os.path.exists(data) else []


def test_appends_twice_then_overwrites_each_as_one_snapshot(tmp_path):
    with open_sink(sink(tmp_path, partition_by=["day"])) as out:
        out.write(frame(0))
        first = out.commit()
    table = lake(tmp_path).load_table("shop.scores")
    assert [f.name for f in table.schema().fields] == ["id", "score", "day"]
    assert [str(f.transform) for f in table.spec().fields] == ["identity"]
    assert first.record == {
        "kind": "iceberg",
        "catalog": "lake",
        "table": "shop.scores",
        "snapshot_id": table.current_snapshot().snapshot_id,
        "mode": "append",
    }
    assert first.rows == 12 and first.uri == "iceberg://lake/shop.scores" and not first.duplicate
    planned = {t.file.file_path for t in table.scan().plan_files()}
    assert {d.id for d in first.datums} == planned and len(planned) == 6  # 3 partitions x 2 days

    with open_sink(sink(tmp_path)) as out:
        out.write(frame(100))
        second = out.commit()
    table = lake(tmp_path).load_table("shop.scores")
    assert len(table.metadata.snapshots) == 2 and second.record["snapshot_id"] == table.current_snapshot().snapshot_id
    assert sorted(table.scan().to_pandas()["id"]) == [*range(12), *range(100, 112)]
    second_day = table.scan(row_filter="day == '2024-06-02'").to_pandas()["id"]
    assert sorted(second_day) == [*range(1, 12, 2), *range(101, 112, 2)]

    with open_sink(sink(tmp_path, mode="overwrite")) as out:
        out.write(frame(500, n=4, npartitions=1))
        third = out.commit()
    table = lake(tmp_path).load_table("shop.scores")
    assert len(table.metadata.snapshots) == 3 and table.current_snapshot().summary.operation.value == "overwrite"
    assert sorted(table.scan().to_pandas()["id"]) == [500, 501, 502, 503]
    assert third.record["mode"] == "overwrite" and third.rows == 4
    # What was read before the overwrite can still be read by snapshot id.
    assert len(table.scan(snapshot_id=second.record["snapshot_id"]).to_pandas()) == 24


def test_a_repeated_txn_commits_nothing_and_metadata_is_stored(tmp_path):
    manifest = {"job": "scores", "rows": {"read": 12}, "spec": {"source": "iceberg://lake/shop.events"}}
    with open_sink(sink(tmp_path)) as out:
        out.write(frame(0))
        first = out.commit(metadata=manifest, txn="run-7")
    table = lake(tmp_path).load_table("shop.scores")
    summary = table.current_snapshot().summary
    assert summary["dpipe.txn"] == "run-7" and json.loads(summary["dpipe.manifest"]) == manifest

    with open_sink(sink(tmp_path)) as out:
        out.write(frame(0))
        again = out.commit(metadata=manifest, txn="run-7")
    table = lake(tmp_path).load_table("shop.scores")
    assert again.duplicate and again.rows == 0 and again.record["snapshot_id"] == first.record["snapshot_id"]
    assert len(table.metadata.snapshots) == 1 and len(table.scan().to_pandas()) == 12
    assert len(run_folders(table)) == 1  # the repeated run's files were deleted


class Boom(RuntimeError):
    pass


def exploding(part: pd.DataFrame) -> pd.DataFrame:
    if part["id"].min() >= 8:
        raise Boom("worker failed")
    return part


def in_order(task):
    # Partitions run one after the other: the failing last one runs after the others wrote their
    # files, and no task is still writing when the error reaches abort() (with threads or a
    # cluster, a task that was running then may still leave an unreferenced file behind).
    return dask.compute(task, scheduler="sync")


def test_a_failed_write_leaves_the_table_and_storage_as_they_were(tmp_path):
    with open_sink(sink(tmp_path)) as out:
        out.write(frame(0))
        before = out.commit().record["snapshot_id"]
    with pytest.raises(Boom), open_sink(sink(tmp_path)) as out:
        out.write(frame(0).map_partitions(exploding, meta=frame(0)._meta), compute=in_order)
    table = lake(tmp_path).load_table("shop.scores")
    assert table.current_snapshot().snapshot_id == before and len(table.metadata.snapshots) == 1
    assert len(run_folders(table)) == 1  # the failed run's files are gone

    # A new table (and namespace) are not created by a failed run.
    new = {"table": "crm.scores"}
    with pytest.raises(Boom), open_sink(sink(tmp_path, **new)) as out:
        out.write(frame(0).map_partitions(exploding, meta=frame(0)._meta), compute=in_order)
    assert not lake(tmp_path).namespace_exists("crm")
    with pytest.raises(NoSuchTableError):
        lake(tmp_path).load_table("crm.scores")
    # abort() after a write and before commit deletes the files.
    out = open_sink(sink(tmp_path))
    out.write(frame(0))
    out.abort()
    assert len(run_folders(lake(tmp_path).load_table("shop.scores"))) == 1


def test_a_schema_mismatch_is_found_before_any_computation(tmp_path):
    with open_sink(sink(tmp_path)) as out:
        out.write(frame(0))
        out.commit()
    computed = []

    def counted(part):
        computed.append(len(part))
        return part

    def counting(f: dd.DataFrame) -> dd.DataFrame:
        return f.map_partitions(counted, meta=f._meta)  # with meta given, Dask does not call it to infer one

    extra = counting(frame(0).assign(extra=1.0))
    with (
        pytest.raises(
            ColumnError,
            match=r"output: the output's columns do not match table 'shop.scores': not in the table \['extra'\], missing from the output \[\]",
        ),
        open_sink(sink(tmp_path)) as out,
    ):
        out.write(extra)
    missing = frame(0)[["id", "score"]]
    with pytest.raises(ColumnError, match=r"missing from the output \['day'\]"), open_sink(sink(tmp_path)) as out:
        out.check(missing._meta)
    wrong = counting(frame(0).assign(score=lambda f: f["score"].astype("string")))
    with (
        pytest.raises(
            DataError,
            match=r"column types do not match table 'shop.scores': 'score' is string in the output, double in the table",
        ),
        open_sink(sink(tmp_path)) as out,
    ):
        out.write(wrong)
    with (
        pytest.raises(SpecError, match=r"output.partition_by: table 'shop.scores' is partitioned by"),
        open_sink(sink(tmp_path, partition_by=["day"])) as out,
    ):
        out.check(frame(0)._meta)
    assert computed == []
    # A type Iceberg promotes (int32 -> long) is accepted and written as the table's type.
    with open_sink(sink(tmp_path)) as out:
        out.write(frame(50).assign(id=lambda f: f["id"].astype("int32")))
        out.commit()
    assert sorted(lake(tmp_path).load_table("shop.scores").scan().to_pandas()["id"])[-1] == 61


def another_writer(tmp_path) -> None:
    lake(tmp_path).load_table("shop.scores").append(
        pa.table({"id": pa.array([999], pa.int64()), "score": [0.5], "day": [DAYS[0]]})
    )


def racing(out, tmp_path, monkeypatch) -> None:
    """Another writer commits after ``out`` built its transaction and before it commits it."""
    build = out._transaction

    def late(table):
        tx = build(table)
        another_writer(tmp_path)
        return tx

    monkeypatch.setattr(out, "_transaction", late)


def test_a_commit_that_conflicts_with_a_concurrent_one_is_retried(tmp_path, monkeypatch):
    with open_sink(sink(tmp_path)) as out:
        out.write(frame(0))
        out.commit()
    # Between the write and the commit: the commit builds on the table as it is then.
    with open_sink(sink(tmp_path)) as out:
        out.write(frame(100))
        another_writer(tmp_path)
        out.commit()
    # Between building the commit and committing it: pyiceberg refreshes the table and retries.
    with open_sink(sink(tmp_path)) as out:
        out.write(frame(200))
        racing(out, tmp_path, monkeypatch)
        written = out.commit()
    table = lake(tmp_path).load_table("shop.scores")
    assert len(table.metadata.snapshots) == 5 and written.record["snapshot_id"] == table.current_snapshot().snapshot_id
    assert sorted(table.scan().to_pandas()["id"]) == [*range(12), *range(100, 112), *range(200, 212), 999, 999]


def test_a_conflict_that_cannot_be_retried_fails_clearly_and_commits_nothing(tmp_path, monkeypatch):
    with open_sink(sink(tmp_path)) as out:
        out.write(frame(0))
        out.commit()
    # An overwrite must not drop rows it never saw: a concurrent append makes it fail.
    with (
        pytest.raises(
            StorageError, match=r"output: the commit to table 'shop.scores' conflicts with concurrent commits"
        ),
        open_sink(sink(tmp_path, mode="overwrite")) as out,
    ):
        out.write(frame(100))
        racing(out, tmp_path, monkeypatch)
        out.commit()
    table = lake(tmp_path).load_table("shop.scores")
    assert sorted(table.scan().to_pandas()["id"]) == [*range(12), 999]  # the other writer's row, not ours
    assert len(run_folders(table)) == 1  # this run's files were deleted
    # With retries turned off (a table property), an append fails the same way.
    with table.transaction() as tx:
        tx.set_properties({"commit.retry.num-retries": "0"})
    with pytest.raises(StorageError, match="conflicts with concurrent commits"), open_sink(sink(tmp_path)) as out:
        out.write(frame(300))
        racing(out, tmp_path, monkeypatch)
        out.commit()
    assert 300 not in set(lake(tmp_path).load_table("shop.scores").scan().to_pandas()["id"])


def test_writes_on_a_process_cluster_and_on_s3(tmp_path, s3, client):
    entry, props = s3_catalog(tmp_path, s3)
    spec = {"format": "iceberg", "table": "shop.scores", "catalog": entry, "storage_options": s3["storage_options"]}

    def compute(task):  # as the runner's reporter computes: a tuple of results
        return tuple(client.gather(client.compute([task])))

    with open_sink(spec) as out:
        out.write(frame(0), compute=compute)
        written = out.commit(txn="s3-run")
    table = load_catalog("lake", **props).load_table("shop.scores")
    assert table.location().startswith(f"s3://{s3['bucket']}/wh/")
    assert sorted(table.scan().to_pandas()["id"]) == list(range(12))
    assert written.rows == 12 and all(d.id.startswith("s3://") for d in written.datums)
    with pytest.raises(Boom), open_sink(spec) as out:
        out.write(
            frame(0).map_partitions(exploding, meta=frame(0)._meta), compute=lambda t: dask.compute(t, scheduler="sync")
        )
    s3["fs"].invalidate_cache()
    # pyarrow's S3 filesystem leaves a `data/` directory marker; besides it, only the first run's folder.
    data = [p for p in s3["fs"].ls(f"{s3['bucket']}/wh/shop/scores/data") if not p.endswith("/")]
    assert len(data) == 1  # the failed run left nothing behind
