"""Warehouses against real databases: a PostgreSQL server started for the session, DuckDB files.

Every test works in its own PostgreSQL schema (``schema.table`` names) or its own DuckDB file;
what dpipe writes is read back with the ADBC driver, ``psql`` or ``duckdb`` directly.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import uuid

import adbc_driver_postgresql.dbapi as pgdbapi
import dask.dataframe as dd
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import dpipe
from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io import open_sink, open_source
from dpipe.io.sql.base import RangeRead, read_range
from dpipe.plan import plan
from tests.conftest import free_port, job_dict

ROWS = 200  # plus one row whose `id` is NULL


# -- helpers -----------------------------------------------------------------------------------------
def pg_rows(postgres, sql: str) -> pd.DataFrame:
    """Rows read back with the ADBC driver, not with dpipe."""
    with pgdbapi.connect(postgres.uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table().to_pandas()


def tables(postgres, schema: str, containing: str) -> list[str]:
    out = postgres.sql(f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}' ORDER BY 1")
    return [name for name in out.split("\n") if containing in name]


def sorted_ids(frame: pd.DataFrame) -> list:
    return sorted(frame["id"].dropna().astype(int).tolist())


@pytest.fixture
def pg(postgres):
    """A fresh schema with ``events``: ids 1..200 (and one NULL id), text, numbers, timestamps, dates."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    postgres.sql(
        f"CREATE SCHEMA {schema};"
        f" CREATE TABLE {schema}.events AS SELECT g AS id, 'u' || (g % 5) AS who, g * 0.5 AS amount,"
        " timestamp '2024-01-01' + g * interval '1 hour' AS ts, date '2024-01-01' + (g % 10) AS day,"
        " NULL::integer AS nothing FROM generate_series(1, 200) g;"
        f" INSERT INTO {schema}.events (id, who) VALUES (NULL, 'nobody')"
    )
    yield {"server": postgres, "schema": schema, "table": f"{schema}.events", "uri": postgres.uri}
    postgres.sql(f"DROP SCHEMA {schema} CASCADE")


def pg_source(pg, **keys):
    return {"format": "postgresql", "uri": pg["uri"], **({"table": pg["table"]} if "query" not in keys else {}), **keys}


# -- PostgreSQL sources ------------------------------------------------------------------------------
@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_postgres_table_read_in_partitions_gives_every_row_once(pg, partitions):
    src = open_source(pg_source(pg, partition_on="id", partitions=partitions))
    assert src.frame.npartitions == len(src.files) == len(src.datums) == partitions
    got = src.frame.compute(scheduler="threads")

    assert len(got) == ROWS + 1  # the NULL id is read once, by the first partition
    assert sorted_ids(got) == list(range(1, ROWS + 1))
    expected = pg_rows(pg["server"], f"SELECT * FROM {pg['table']}")
    assert sorted(got["who"].tolist()) == sorted(expected["who"].tolist())
    assert src.record["kind"] == "postgresql"
    assert src.record["rows"] == ROWS + 1
    assert len(src.record["ranges"]) == partitions
    assert src.record["snapshot"]
    assert src.files[0] == f"postgresql://127.0.0.1:{pg['server'].port}/{pg['server'].dbname}/{pg['table']}#part=0"
    assert src.datums[-1].id.startswith(f"{pg['table']}:id[") and src.datums[-1].id.endswith("200]")
    assert pg["server"].password not in repr(src.lineage()) + repr(src.files)


def test_postgres_reads_on_worker_processes_in_one_snapshot(pg, client):
    """Tasks pickled to worker processes import the client's snapshot: rows added later are not read."""
    src = open_source(pg_source(pg, partition_on="id", partitions=3))
    pg["server"].sql(f"INSERT INTO {pg['table']} (id, who) VALUES (5, 'late'), (1000, 'late'), (NULL, 'late')")

    got = client.compute(src.frame).result()

    assert len(got) == ROWS + 1 and "late" not in set(got["who"])
    # Without the snapshot every partition reads what is there when it runs; the open ranges
    # still read each row exactly once, the late ones included.
    now = open_source(pg_source(pg, partition_on="id", partitions=3, snapshot=False))
    assert now.record["snapshot"] is None and now.record["watermark"]
    pg["server"].sql(f"INSERT INTO {pg['table']} (id, who) VALUES (-7, 'later')")
    rows = client.compute(now.frame).result()
    assert len(rows) == ROWS + 5 and sorted(rows["who"]).count("late") == 3


def test_postgres_default_partitions_are_the_clients_threads(pg, client):
    with client.as_current():
        src = open_source(pg_source(pg, partition_on="id"))
    assert src.frame.npartitions == sum(client.nthreads().values())
    assert open_source(pg_source(pg, partition_on="id")).frame.npartitions == 4  # no client: 4


def test_postgres_query_partitioned_on_a_timestamp(pg):
    query = f"SELECT id, who, ts FROM {pg['table']} WHERE id <= 100"
    src = open_source(pg_source(pg, query=query + ";", partition_on="ts", partitions=4))
    got = src.frame.compute(scheduler="threads")

    assert sorted_ids(got) == list(range(1, 101))
    assert src.record["table"] is None and query in src.record["query"]
    assert src.record["ranges"][0][0] == "2024-01-01T01:00:00"
    assert src.datums[0].id.startswith("query-") and ":ts[2024-01-01T01:00:00," in src.datums[0].id
    assert str(got["ts"].dtype).startswith("datetime64")


def test_postgres_partition_on_a_date_with_filters(pg):
    src = open_source(pg_source(pg, partition_on="day", partitions=3, filters=[["who", "in", ["u1", "u2"]]]))
    got = src.frame.compute(scheduler="threads")
    expected = pg_rows(pg["server"], f"SELECT id FROM {pg['table']} WHERE who IN ('u1', 'u2')")
    assert sorted_ids(got) == sorted(expected["id"].tolist())
    assert src.frame.npartitions == 3


def test_postgres_projection_is_the_select_list(pg, monkeypatch):
    src = open_source(pg_source(pg, columns=["who", "id"], partition_on="id", partitions=2))
    schema, table = pg["table"].split(".")
    assert src.record["query"] == f'SELECT "who", "id" FROM "{schema}"."{table}"'
    assert list(src.frame.columns) == ["who", "id"]
    ran, tasks = [], []
    sql = RangeRead.sql

    def spy(task, columns):
        tasks.append(task)
        ran.append(sql(task, columns))
        return ran[-1]

    monkeypatch.setattr(RangeRead, "sql", spy)
    # Dask pushes a later projection into each partition's SELECT (`read_range(columns=...)`).
    assert src.frame[["who"]].compute(scheduler="sync").shape == (ROWS + 1, 1)
    assert [q.split(" FROM ")[0] for q in ran] == ['SELECT "who"'] * 2
    assert sorted(q.split(" WHERE ")[1] for q in ran) == ['"id" >= 100', '("id" < 100 OR "id" IS NULL)']
    ran.clear()
    empty = read_range(tasks[0], columns=[])  # no column at all (a count): SQL still selects one
    assert ran[0].startswith("SELECT 1 AS _dpipe_one FROM") and empty.shape[1] == 0 and len(empty) > 0


def test_postgres_filters_become_a_where_clause_with_quoted_values(pg):
    filters = [[["who", "==", "u1"], ["amount", ">=", 50]], [["ts", "<", dt.datetime(2024, 1, 1, 3)]]]
    src = open_source(pg_source(pg, filters=filters))
    got = src.frame.compute(scheduler="threads")
    expected = pg_rows(
        pg["server"],
        f"SELECT id FROM {pg['table']} WHERE (who = 'u1' AND amount >= 50) OR ts < '2024-01-01 03:00'",
    )
    assert sorted_ids(got) == sorted(expected["id"].tolist())
    assert "\"ts\" < TIMESTAMP E'2024-01-01 03:00:00'" in src.record["query"]

    hostile = "x'; DROP TABLE events; --\\"
    none = open_source(pg_source(pg, filters=[["who", "==", hostile]])).frame.compute(scheduler="threads")
    assert len(none) == 0
    assert pg["server"].sql(f"SELECT count(*) FROM {pg['table']}") == str(ROWS + 1)


def test_postgres_password_from_storage_options_or_pgpassword_when_redacted(pg, monkeypatch):
    server = pg["server"]
    redacted = f"postgresql://{server.user}:***@{server.host}:{server.port}/{server.dbname}"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(SpecError, match="password was not saved") as exc:
        open_source({"format": "postgresql", "uri": redacted, "table": pg["table"]})
    assert "PGPASSWORD" in str(exc.value)

    by_option = {
        "format": "postgresql",
        "uri": redacted,
        "table": pg["table"],
        "storage_options": {"password": server.password},
    }
    assert len(open_source(by_option).frame.compute(scheduler="threads")) == ROWS + 1
    monkeypatch.setenv("PGPASSWORD", server.password)
    plain = {"format": "postgresql", "uri": server.uri_without_password, "table": pg["table"], "columns": ["id"]}
    assert len(open_source(plain).frame.compute(scheduler="threads")) == ROWS + 1


def test_postgres_snapshot_gone_is_a_clear_error(pg):
    """The server closed the connection holding the snapshot (as idle_in_transaction_session_timeout does)."""
    src = open_source(pg_source(pg, partition_on="id", partitions=2))
    terminated = pg["server"].sql(
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
        " WHERE query LIKE '%pg_export_snapshot()%' AND state = 'idle in transaction'"
    )
    assert int(terminated) >= 1
    with pytest.raises(
        DataError, match="the snapshot the source was opened in is gone.*invalid snapshot identifier"
    ) as exc:
        src.frame.compute(scheduler="sync")
    assert "snapshot: false" in str(exc.value)


def test_postgres_types_read_as_the_other_sources_read_them(pg):
    pg["server"].sql(
        f"CREATE TABLE {pg['schema']}.kinds AS SELECT 1.25::numeric(10, 2) AS price, '{{\"a\": 1}}'::jsonb AS doc,"
        " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS key, timestamptz '2024-01-01 10:00+02' AS at,"
        " true AS ok, 7::smallint AS small, NULL::boolean AS unknown"
    )
    src = open_source({"format": "postgresql", "uri": pg["uri"], "table": f"{pg['schema']}.kinds"})
    row = src.frame.compute(scheduler="sync").iloc[0]
    assert row["price"] == 1.25 and row["doc"] == '{"a": 1}' and row["key"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert row["at"] == pd.Timestamp("2024-01-01 08:00", tz="UTC") and bool(row["ok"]) and row["small"] == 7
    dtypes = {c: str(t) for c, t in src.frame.dtypes.items()}
    assert dtypes["price"] == "float64" and dtypes["ok"] == "boolean" and dtypes["doc"] == dtypes["key"] == "string"


# -- PostgreSQL errors -------------------------------------------------------------------------------
def test_postgres_missing_table(pg):
    with pytest.raises(StorageError, match=r"source\.table: the database refused table '.*nope'.*does not exist"):
        open_source({"format": "postgresql", "uri": pg["uri"], "table": f"{pg['schema']}.nope"})


def test_postgres_wrong_password_is_never_shown(pg):
    server = pg["server"]
    wrong = "Wr0ng-Secret!"
    uri = f"postgresql://{server.user}:{wrong}@{server.host}:{server.port}/{server.dbname}"
    with pytest.raises(
        StorageError, match="cannot log in to postgresql://127.0.0.1.*password authentication failed"
    ) as exc:
        open_source({"format": "postgresql", "uri": uri, "table": pg["table"]})
    text = str(exc.value) + repr(exc.value.__cause__) + repr(exc.value.__context__)
    assert wrong not in text and server.password not in text


def test_postgres_unreachable_server():
    uri = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/db"
    with pytest.raises(
        StorageError, match=r"source\.uri: cannot reach the database server postgresql://127\.0\.0\.1"
    ) as exc:
        open_source({"format": "postgresql", "uri": uri, "table": "t"})
    assert "hunter2" not in str(exc.value)


def test_postgres_query_with_a_syntax_error_names_the_query(pg):
    query = f"SELEC id FROM {pg['table']}"
    with pytest.raises(SpecError, match=r"source\.query: the database refused the query 'SELEC id .*syntax error"):
        open_source(pg_source(pg, query=query))


@pytest.mark.parametrize(
    ("column", "error", "message"),
    [
        ("nothing", DataError, "column 'nothing' is NULL in every row"),
        ("who", SpecError, "column 'who' has type string; a partition column is a number, date or timestamp"),
        ("nope", ColumnError, r"source\.partition_on: column 'nope' not found"),
    ],
)
def test_postgres_partition_column_without_a_usable_range(pg, column, error, message):
    with pytest.raises(error, match=message):
        open_source(pg_source(pg, partition_on=column, partitions=2))


def test_postgres_unknown_column_and_bad_specs(pg):
    with pytest.raises(ColumnError, match=r"source\.columns: column 'idd' not found .*available: \['id'"):
        open_source(pg_source(pg, columns=["idd"]))
    with pytest.raises(SpecError, match="exactly one of `table`"):
        open_source(pg_source(pg, query="SELECT 1", table="x"))
    with pytest.raises(SpecError, match="`partitions` needs `partition_on`"):
        open_source(pg_source(pg, partitions=3))
    with pytest.raises(SpecError, match="libpq URL"):
        open_source({"format": "postgresql", "uri": "mysql://x/y", "table": "t"})


# -- PostgreSQL sinks --------------------------------------------------------------------------------
def scores(n: int = 30, *, offset: int = 0, partitions: int = 3) -> dd.DataFrame:
    frame = pd.DataFrame(
        {
            "id": range(offset, offset + n),
            "score": [i / 10 for i in range(n)],
            "label": pd.array([f"c{i % 3}" for i in range(n)], dtype="string[pyarrow]"),
            "at": pd.date_range("2024-06-01", periods=n, freq="h"),
        }
    )
    return dd.from_pandas(frame, npartitions=partitions)


def pg_sink(pg, **keys):
    return {"format": "postgresql", "uri": pg["uri"], "table": f"{pg['schema']}.scores", **keys}


def test_postgres_sink_appends_twice_in_one_commit_each(pg):
    target = f"{pg['schema']}.scores"
    for offset in (0, 30):
        with open_sink(pg_sink(pg)) as sink:
            sink.write(scores(offset=offset), compute=lambda t: t.compute(scheduler="threads"))
            written = sink.commit(metadata={"job": "score", "n": offset})
    back = pg_rows(pg["server"], f"SELECT * FROM {target} ORDER BY id")
    assert back["id"].tolist() == list(range(60))
    assert written.rows == 30 and not written.duplicate
    assert {k: written.record[k] for k in ("kind", "table", "mode", "rows")} == {
        "kind": "postgresql",
        "table": target,
        "mode": "append",
        "rows": 30,
    }
    assert written.uri == f"postgresql://127.0.0.1:{pg['server'].port}/{pg['server'].dbname}/{target}"
    commits = pg["server"].sql(f"SELECT rows, metadata->>'n' FROM {pg['schema']}._dpipe_commits ORDER BY committed_at")
    assert commits.split("\n") == ["30|0", "30|30"]
    assert tables(pg["server"], pg["schema"], "__dpipe_stage_") == []
    assert pg["server"].sql(f"SELECT count(*) FROM {pg['schema']}._dpipe_staged") == "0"


def test_postgres_sink_replace_swaps_the_table(pg):
    with open_sink(pg_sink(pg, table=pg["table"], mode="replace")) as sink:
        sink.write(scores(n=7, partitions=2))
        written = sink.commit()
    back = pg_rows(pg["server"], f"SELECT * FROM {pg['table']} ORDER BY id")
    assert list(back.columns) == ["id", "score", "label", "at"] and back["id"].tolist() == list(range(7))
    expected = scores(n=7).compute()
    assert back["at"].tolist() == expected["at"].tolist() and back["label"].tolist() == expected["label"].tolist()
    assert back["score"].tolist() == expected["score"].tolist()
    assert written.rows == 7 and written.record["mode"] == "replace"
    assert tables(pg["server"], pg["schema"], "dpipe_") == ["_dpipe_commits", "_dpipe_staged"]


def test_postgres_sink_txn_commits_at_most_once(pg):
    for expected_duplicate in (False, True):
        with open_sink(pg_sink(pg)) as sink:
            sink.write(scores())
            written = sink.commit(txn="run-42")
        assert written.duplicate is expected_duplicate and written.record["txn"] == "run-42"
    assert pg["server"].sql(f"SELECT count(*) FROM {pg['schema']}.scores") == "30"
    assert tables(pg["server"], pg["schema"], "__dpipe_stage_") == []


def test_postgres_sink_failed_compute_leaves_the_table_as_it_was(pg):
    def boom(part):
        raise RuntimeError("worker failed")

    failing = scores().map_partitions(boom, meta=scores()._meta)
    with (
        pytest.raises(RuntimeError, match="worker failed"),
        open_sink(pg_sink(pg, table=pg["table"], mode="replace")) as sink,
    ):
        sink.write(failing)
        sink.commit()
    assert pg["server"].sql(f"SELECT count(*) FROM {pg['table']}") == str(ROWS + 1)
    assert tables(pg["server"], pg["schema"], "__dpipe_stage_") == []


def test_postgres_sink_schema_mismatch_is_found_before_any_compute(pg):
    computed = []
    with (
        pytest.raises(
            ColumnError,
            match=r"output\.table: the output's columns differ .*not in the table: \['score', 'label', 'at'\]",
        ),
        open_sink(pg_sink(pg, table=pg["table"])) as sink,
    ):
        sink.write(scores(), compute=computed.append)
    wrong_type = scores().rename(columns={"label": "who", "score": "amount", "at": "ts"})
    wrong_type = wrong_type.assign(who=wrong_type["id"], day=wrong_type["ts"], nothing=wrong_type["id"])
    sink = open_sink(pg_sink(pg, table=pg["table"]))
    with pytest.raises(ColumnError, match=r"column types differ .*'who': 'integer into text'"):
        sink.check(wrong_type._meta)
    with pytest.raises(StorageError, match="does not exist"), open_sink(pg_sink(pg, create=False)) as sink:
        sink.write(scores(), compute=computed.append)
    assert computed == []


def test_postgres_concurrent_commits_of_one_txn_write_once(pg):
    """Two runs with the same txn commit at the same moment: the txn's primary key lets one win."""
    sinks = []
    for _ in range(2):
        sink = open_sink(pg_sink(pg))
        sink.write(scores())
        sinks.append(sink)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        written = list(pool.map(lambda sink: sink.commit(txn="same-run"), sinks))
    assert sorted(w.duplicate for w in written) == [False, True]
    assert pg["server"].sql(f"SELECT count(*) FROM {pg['schema']}.scores") == "30"
    assert tables(pg["server"], pg["schema"], "__dpipe_stage_") == []


# -- DuckDB ------------------------------------------------------------------------------------------
@pytest.fixture
def duck(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            "CREATE TABLE events AS SELECT range::INTEGER AS id, 'u' || (range % 5) AS who, range * 0.5 AS amount,"
            " TIMESTAMP '2024-01-01' + to_hours(range) AS ts FROM range(1, 201)"
        )
        conn.execute("INSERT INTO events (id, who) VALUES (NULL, 'nobody')")
    return path


def duck_rows(path, sql: str) -> pd.DataFrame:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.sql(sql).to_arrow_table().to_pandas()


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_duckdb_table_read_in_partitions(duck, partitions):
    src = open_source(
        {"format": "duckdb", "uri": str(duck), "table": "events", "partition_on": "id", "partitions": partitions}
    )
    got = src.frame.compute(scheduler="threads")
    assert src.frame.npartitions == partitions and len(got) == ROWS + 1
    assert sorted_ids(got) == list(range(1, ROWS + 1))
    assert src.record["kind"] == "duckdb" and src.record["rows"] == ROWS + 1
    assert src.files[0] == f"duckdb://{duck}/events#part=0"
    assert src.datums[0].version


def test_duckdb_query_filters_projection_and_a_timestamp_range(duck):
    spec = {
        "format": "duckdb",
        "uri": str(duck),
        "query": "SELECT id, who, ts FROM events WHERE id <= 100",
        "columns": ["id", "ts"],
        "filters": [["who", "!=", "u0"]],
        "partition_on": "ts",
        "partitions": 3,
    }
    got = open_source(spec).frame.compute(scheduler="threads")
    expected = duck_rows(duck, "SELECT id FROM events WHERE id <= 100 AND who <> 'u0'")
    assert list(got.columns) == ["id", "ts"] and sorted_ids(got) == sorted(expected["id"].tolist())


def test_duckdb_errors(duck, tmp_path):
    with pytest.raises(StorageError, match=r"source\.table: the database refused table 'nope'.*does not exist"):
        open_source({"format": "duckdb", "uri": str(duck), "table": "nope"})
    with pytest.raises(SpecError, match=r"source\.query: the database refused the query 'SELEC 1'.*syntax error"):
        open_source({"format": "duckdb", "uri": str(duck), "query": "SELEC 1"})
    with pytest.raises(StorageError, match="does not exist"):
        open_source({"format": "duckdb", "uri": str(tmp_path / "missing.duckdb"), "table": "events"})
    with pytest.raises(SpecError, match="has type string"):
        open_source({"format": "duckdb", "uri": str(duck), "table": "events", "partition_on": "who", "partitions": 2})


def test_duckdb_source_refuses_a_file_changed_after_open(duck):
    src = open_source({"format": "duckdb", "uri": str(duck), "table": "events"})
    with duckdb.connect(str(duck)) as conn:
        conn.execute("INSERT INTO events (id) VALUES (999)")
        conn.execute("CHECKPOINT")
    with pytest.raises(DataError, match="changed since the source was opened"):
        src.frame.compute(scheduler="threads")


def duck_sink(path, **keys):
    return {"format": "duckdb", "uri": str(path), "table": "scores", **keys}


def test_duckdb_sink_append_replace_txn_and_abort(tmp_path):
    path = tmp_path / "out.duckdb"
    for offset in (0, 30):
        with open_sink(duck_sink(path)) as sink:
            sink.write(scores(offset=offset), compute=lambda t: t.compute(scheduler="threads"))
            written = sink.commit(txn=f"run-{offset}", metadata={"offset": offset})
    assert duck_rows(path, "SELECT id FROM scores ORDER BY id")["id"].tolist() == list(range(60))
    assert written.record == {"kind": "duckdb", "table": "scores", "mode": "append", "txn": "run-30", "rows": 30}

    with open_sink(duck_sink(path)) as sink:
        sink.write(scores())
        assert sink.commit(txn="run-30").duplicate
    assert duck_rows(path, "SELECT count(*) AS n FROM scores")["n"][0] == 60

    with open_sink(duck_sink(path, mode="replace")) as sink:
        sink.write(scores(n=5, partitions=1))
        assert sink.commit().rows == 5
    assert duck_rows(path, "SELECT id FROM scores ORDER BY id")["id"].tolist() == list(range(5))

    def boom(part):
        raise RuntimeError("worker failed")

    with pytest.raises(RuntimeError, match="worker failed"), open_sink(duck_sink(path, mode="replace")) as sink:
        sink.write(scores().map_partitions(boom, meta=scores()._meta))
    assert duck_rows(path, "SELECT count(*) AS n FROM scores")["n"][0] == 5
    commits = duck_rows(path, "SELECT txn, rows, metadata FROM _dpipe_commits ORDER BY committed_at")
    assert commits["txn"].tolist()[:2] == ["run-0", "run-30"] and len(commits) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out.duckdb"]  # no staging folder left


def test_duckdb_sink_schema_mismatch_before_compute(duck):
    computed = []
    sink = open_sink(duck_sink(duck, table="events"))
    with pytest.raises(ColumnError, match=r"missing from the output: \['who', 'amount', 'ts'\]"):
        sink.write(scores()[["id"]], compute=computed.append)
    assert computed == []


# -- a job with a database source ------------------------------------------------------------------
def test_job_with_a_postgres_source_validates_and_plans(postgres, demo_root, tmp_path):
    events = ds.dataset(str(demo_root / "events"), partitioning="hive").to_table()
    events = events.cast(pa.schema([f.with_type(pa.string()) if f.name == "date" else f for f in events.schema]))
    schema = f"t_{uuid.uuid4().hex[:10]}"
    postgres.sql(f"CREATE SCHEMA {schema}")
    with pgdbapi.connect(postgres.uri) as conn, conn.cursor() as cur:
        cur.adbc_ingest("events", events, mode="create", db_schema_name=schema)
        conn.commit()
    source = {
        "format": "postgresql",
        "uri": postgres.uri,
        "table": f"{schema}.events",
        "partition_on": "event_id",
        "partitions": 2,
    }
    job = dpipe.job_from_dict(job_dict(demo_root, tmp_path / "out", source=source))
    assert job.source.format == "postgresql" and job.source.partition_on == "event_id"

    planned = plan(job)

    assert planned.source.frame.npartitions == 2
    assert planned.source.record["rows"] == events.num_rows
    assert "income" in planned.source.frame.columns
    postgres.sql(f"DROP SCHEMA {schema} CASCADE")


# -- semantics shared with the other sources, and the review's cases -------------------------------------
def test_in_and_not_in_treat_null_as_the_file_sources_do(pg, duck):
    import pyarrow.parquet as pq

    values = pa.table({"id": [1, 2, None]})
    cases = [[("id", "in", [1])], [("id", "in", [1, None])], [("id", "not in", [1])], [("id", "not in", [1, None])]]
    for filters in cases:
        expected = sorted(values.filter(pq.filters_to_expression(filters))["id"].to_pylist(), key=str)
        listed = [list(f) for f in filters]
        pg_got = open_source(pg_source(pg, filters=listed)).frame.compute()["id"]
        kept = {None if pd.isna(v) else int(v) for v in pg_got} & {1, 2, None}
        assert sorted(kept, key=str) == expected, filters
        duck_got = open_source({"format": "duckdb", "uri": str(duck), "table": "events", "filters": listed})
        kept = {None if pd.isna(v) else int(v) for v in duck_got.frame.compute()["id"]} & {1, 2, None}
        assert sorted(kept, key=str) == expected, filters


def test_a_query_that_returns_other_rows_each_run_is_not_read_in_ranges(pg):
    with pytest.raises(
        SpecError, match=r"runs once per range, so it must return the same rows every time; this one has 'LIMIT'"
    ):
        open_source(pg_source(pg, query=f"SELECT * FROM {pg['table']} LIMIT 10", partition_on="id"))
    one = open_source(pg_source(pg, query=f"SELECT * FROM {pg['table']} ORDER BY id LIMIT 10"))
    assert len(one.frame.compute()) == 10


def test_a_txn_is_once_per_target_table(pg):
    for table in ("scores", "scores_copy"):
        with open_sink(pg_sink(pg, table=f"{pg['schema']}.{table}")) as sink:
            sink.write(scores())
            assert not sink.commit(txn="same-run").duplicate
    assert pg["server"].sql(f"SELECT count(*) FROM {pg['schema']}.scores_copy") == "30"


def test_a_unique_violation_in_the_target_is_named_as_such(pg):
    target = f"{pg['schema']}.keyed"
    pg["server"].sql(f"CREATE TABLE {target} (id bigint PRIMARY KEY, score double precision)")
    pg["server"].sql(f"INSERT INTO {target} VALUES (3, 0.0)")
    frame = dd.from_pandas(pd.DataFrame({"id": [1, 2, 3], "score": [0.1, 0.2, 0.3]}), npartitions=1)
    sink = open_sink(pg_sink(pg, table=target))
    with pytest.raises(DataError, match=r"violate a unique constraint of .*keyed.*nothing was committed"), sink:
        sink.write(frame)
        sink.commit()
    assert pg["server"].sql(f"SELECT count(*) FROM {target}") == "1"


def test_values_that_do_not_fit_the_output_types_fail_instead_of_truncating(tmp_path):
    meta = pd.DataFrame({"id": pd.Series([], dtype="int64")})
    drifted = dd.from_pandas(pd.DataFrame({"id": [1.5, 2.0]}), npartitions=1).map_partitions(lambda p: p, meta=meta)
    sink = open_sink(duck_sink(tmp_path / "out.duckdb"))
    with pytest.raises(DataError, match="cannot be written with the output's types"), sink:
        sink.write(drifted)
