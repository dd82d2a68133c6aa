"""New-data-only reads of database sources: a ``watermark`` column, and ``open_new`` above its mark.

What PostgreSQL ran is read from the server's own log: the tests' database (created and dropped
here) has ``log_statement = 'all'`` and ``auto_explain`` with ``log_analyze``, so every data
SELECT is logged with its text and the rows its plan returned. The settings are the database's,
so no other test's statements are logged. DuckDB files live in ``tmp_path``; rows are read back
with the ADBC driver or ``duckdb``, not with dpipe.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import adbc_driver_postgresql.dbapi as pgdbapi
import duckdb
import pandas as pd
import pytest

from dpipe.errors import ColumnError, DataError, SpecError
from dpipe.io import Datum, open_increment, open_source

ROWS = 200

#: The log's entries start with the default ``log_line_prefix`` (``%m [%p] ``).
ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.M)


# -- helpers -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged(postgres):
    """A database of this module's own whose every statement, and every plan with its rows, is logged."""
    name = f"wm_{uuid.uuid4().hex[:10]}"
    postgres.sql(f"CREATE DATABASE {name}", dbname="postgres")
    for setting in (
        "log_statement = 'all'",
        "session_preload_libraries = 'auto_explain'",
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_analyze = on",
        "auto_explain.log_timing = off",
    ):
        postgres.sql(f"ALTER DATABASE {name} SET {setting}", dbname="postgres")
    yield {"server": postgres, "dbname": name, "uri": postgres.uri_of(name)}
    postgres.sql(f"DROP DATABASE {name} WITH (FORCE)", dbname="postgres")


@pytest.fixture
def events(logged):
    """A table of its own in the logged database: ``id`` 1..200, ``who``, ``ts``, ``tstz``, ``day``
    (all growing with ``id``), indexed on ``id``."""
    table = f"events_{uuid.uuid4().hex[:8]}"
    run(
        logged,
        f"CREATE TABLE {table} AS SELECT g AS id, 'u' || (g % 5) AS who,"
        " timestamp '2024-01-01' + g * interval '1 hour' AS ts,"
        " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour' AS tstz,"
        " date '2024-01-01' + g AS day FROM generate_series(1, 200) g;"
        f" CREATE INDEX ON {table} (id)",
    )
    return {**logged, "table": table}


def run(db, statement: str) -> str:
    return db["server"].sql(statement, dbname=db["dbname"])


def add_rows(db, ids: range) -> None:
    """Rows ``ids`` with every growing column past the existing ones."""
    run(
        db,
        f"INSERT INTO {db['table']} SELECT g, 'new', timestamp '2024-01-01' + g * interval '1 hour',"
        " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour', date '2024-01-01' + g"
        f" FROM generate_series({ids.start}, {ids.stop - 1}) g",
    )


def pg_rows(db, where: str) -> pd.DataFrame:
    """Rows read back with the ADBC driver, not with dpipe, sorted by id."""
    with pgdbapi.connect(db["uri"]) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, who FROM {db['table']} WHERE {where} ORDER BY id")
        return cur.fetch_arrow_table().to_pandas()


def source(db, **keys):
    return {"format": "postgresql", "uri": db["uri"], "table": db["table"], **keys}


def plans(log: str, table: str) -> list[tuple[str, int]]:
    """The data SELECTs of ``table`` in ``log`` (auto_explain's entries): their text and the rows returned.

    A data SELECT names columns (``SELECT "id", ...``); the client's schema and range queries
    select ``*`` or aggregates.
    """
    found = []
    starts = [m.start() for m in ENTRY.finditer(log)] + [len(log)]
    for begin, end in zip(starts, starts[1:]):
        entry = log[begin:end]
        text = re.search(r"Query Text: (.*)\n(.*)", entry)
        if text is None or f'"{table}"' not in text.group(1) or 'SELECT "' not in text.group(1):
            continue
        rows = re.search(r"\brows=(\d+) loops=", text.group(2))
        assert rows, entry
        found.append((text.group(1), int(rows.group(1))))
    return found


def rows_of(frame: pd.DataFrame) -> list[tuple[int, str]]:
    return sorted(zip(frame["id"].astype(int), frame["who"].astype(str)))


# -- a full read, then only the new rows -----------------------------------------------------------
def test_full_read_then_only_the_new_rows_as_the_server_logged_them(events):
    server, table = events["server"], events["table"]
    spec = source(events, watermark="id", partition_on="id", partitions=2, columns=["id", "who"])
    start = server.log_size()
    full = open_source(spec)
    got = full.frame.compute(scheduler="threads")

    assert rows_of(got) == rows_of(pg_rows(events, "true"))
    assert [d.to_dict() for d in full.datums] == [{"id": f"{table}:id(,200]", "size": None, "version": "200"}]
    assert full.partition_datums == full.datum_of_partitions() == (f"{table}:id(,200]",) * 2
    assert full.files[1].endswith(f"/{table}#part=1")
    assert full.record["watermark_column"] == "id" and full.record["watermark_range"] == [None, 200]
    assert full.record["rows"] == ROWS and len(full.record["ranges"]) == 2
    assert full.select([full.datums[0].id]).frame.npartitions == 2
    read = plans(server.log_from(start), table)
    assert len(read) == 2 and all('"id" <= 200' in q for q, _ in read)
    assert sum(n for _, n in read) == ROWS

    add_rows(events, range(201, 204))
    start = server.log_size()
    inc = open_increment(spec, full.datums)
    new = inc.source.frame.compute(scheduler="threads")

    assert rows_of(new) == rows_of(pg_rows(events, "id > 200")) == [(201, "new"), (202, "new"), (203, "new")]
    assert inc.new == (Datum(f"{table}:id(200,203]", None, "203"),)
    assert inc.current == (*full.datums, *inc.new) and inc.changed == inc.missing == ()
    assert inc.source.record["watermark_range"] == [200, 203] and inc.source.record["rows"] == 3
    # The ranges of `partition_on` split the new rows only, so they too are read in parallel.
    assert inc.source.frame.npartitions == 2 and inc.source.record["ranges"][0][0] == 201
    assert inc.source.record["ranges"][-1][1] == 203
    # The server says what ran: each data SELECT above the old mark, returning only the new rows.
    read = plans(server.log_from(start), table)
    assert len(read) == 2 and all('"id" > 200 AND "id" <= 203' in q for q, _ in read)
    assert sum(n for _, n in read) == 3
    assert 'max("id")' in server.log_from(start)  # the new mark, read by the client

    # Nothing new: no source to read, and the datums are those seen.
    again = open_increment(spec, inc.current)
    assert again.source is None and again.new == () and again.current == inc.current


@pytest.mark.parametrize(
    ("column", "literal", "mark"),
    [
        ("ts", "TIMESTAMP E'2024-01-09 08:00:00'", "2024-01-09T08:00:00"),
        ("tstz", "TIMESTAMPTZ E'2024-01-09 08:00:00+00:00'", "2024-01-09T08:00:00+00:00"),
        ("day", "DATE E'2024-07-19'", "2024-07-19"),
    ],
)
def test_timestamp_and_date_marks_come_back_as_literals_of_their_type(events, column, literal, mark):
    server, table = events["server"], events["table"]
    spec = source(events, watermark=column, partition_on="id", partitions=2)
    full = open_source(spec)
    assert full.datums[0].id == f"{table}:{column}(,{mark}]" and json.loads(full.datums[0].version) == mark
    del full  # its snapshot's connection closes

    add_rows(events, range(201, 206))
    start = server.log_size()
    inc = open_increment(spec, [Datum(f"{table}:{column}(,{mark}]", None, json.dumps(mark))])
    new = inc.source.frame.compute(scheduler="threads")

    assert sorted(new["id"].astype(int)) == [201, 202, 203, 204, 205]
    assert inc.new[0].id.startswith(f"{table}:{column}({mark},")
    read = plans(server.log_from(start), table)
    assert read and all(f'"{column}" > {literal}' in q for q, _ in read)
    assert sum(n for _, n in read) == 5


def test_rows_inserted_while_a_read_runs_wait_for_the_next(events):
    """Without the shared snapshot, each partition reads what is there when it runs; the mark
    still bounds it, so late rows are not half-read, and the next read takes them all."""
    spec = source(events, watermark="id", partition_on="id", partitions=3, snapshot=False)
    full = open_source(spec)
    add_rows(events, range(201, 211))
    assert len(full.frame.compute(scheduler="threads")) == ROWS

    inc = open_increment(spec, full.datums)
    assert sorted(inc.source.frame.compute(scheduler="threads")["id"].astype(int)) == list(range(201, 211))


def test_filters_apply_and_the_mark_is_of_the_rows_they_select(events):
    spec = source(events, watermark="id", filters=[["who", "==", "u1"]])
    full = open_source(spec)
    assert full.datums[0].id.endswith(":id(,196]") and full.record["rows"] == 40
    assert full.frame.npartitions == 1

    add_rows(events, range(201, 205))  # `who` is 'new': not selected
    assert open_increment(spec, full.datums).source is None
    run(events, f"INSERT INTO {events['table']} (id, who) VALUES (300, 'u1'), (301, 'u2')")
    inc = open_increment(spec, full.datums)
    assert rows_of(inc.source.frame.compute(scheduler="threads")) == [(300, "u1")]
    assert inc.new[0].id.endswith(":id(196,300]")


# -- errors ------------------------------------------------------------------------------------------
def test_a_missing_or_text_watermark_column_is_refused_when_the_source_opens(events):
    with pytest.raises(ColumnError, match=r"source\.watermark: column 'nope' not found in table .*available"):
        open_source(source(events, watermark="nope"))
    with pytest.raises(
        SpecError,
        match=r"source\.watermark: column 'who' has type string; a watermark column is a number, date or timestamp",
    ):
        open_source(source(events, watermark="who"))
    with pytest.raises(SpecError, match=r"source\.watermark: column 'who' has type string"):
        open_increment(source(events, watermark="who"), [])


def test_an_incremental_read_without_a_watermark_is_a_spec_error(events):
    with pytest.raises(
        SpecError, match=r"source\.watermark: an incremental read of a postgresql source needs a watermark column"
    ) as info:
        open_increment(source(events), [])
    assert "watermark: <column>" in str(info.value)


def test_an_earlier_mark_that_is_not_of_the_columns_type_is_a_data_error(events):
    seen = [Datum(f"{events['table']}:day(,2024-01-10]", None, json.dumps("not a date"))]
    with pytest.raises(
        DataError, match=r"source\.watermark: the earlier read .* is not a value of column 'day' \(date\)"
    ):
        open_increment(source(events, watermark="day"), seen)


def test_a_query_that_returns_other_rows_each_time_cannot_have_a_watermark(events):
    with pytest.raises(SpecError, match="read above a `watermark`"):
        open_source(
            {"format": "postgresql", "uri": events["uri"], "query": "SELECT * FROM t LIMIT 5", "watermark": "id"}
        )


# -- DuckDB ------------------------------------------------------------------------------------------
def duckdb_file(tmp_path) -> str:
    path = str(tmp_path / "shop.duckdb")
    with duckdb.connect(path) as conn:
        conn.execute(
            "CREATE TABLE events AS SELECT g AS id, 'u' || (g % 5) AS who, DATE '2024-01-01' + g::INTEGER AS day,"
            " TIMESTAMP '2024-01-01' + g * INTERVAL 1 HOUR AS ts FROM range(1, 101) t(g)"
        )
    return path


def test_duckdb_date_watermark_reads_only_the_new_days(tmp_path):
    path = duckdb_file(tmp_path)
    spec = {
        "format": "duckdb",
        "uri": path,
        "table": "events",
        "watermark": "day",
        "partition_on": "id",
        "partitions": 2,
    }
    full = open_source(spec)
    assert len(full.frame.compute(scheduler="threads")) == 100
    assert full.datums[0].id == "events:day(,2024-04-10]" and full.datums[0].version == '"2024-04-10"'

    with duckdb.connect(path) as conn:
        conn.execute(
            "INSERT INTO events VALUES (101, 'new', DATE '2024-04-11', NULL), (102, 'new', DATE '2024-04-12', NULL),"
            " (103, 'new', DATE '2024-04-12', NULL)"
        )
    inc = open_increment(spec, full.datums)
    new = inc.source.frame.compute(scheduler="threads")

    with duckdb.connect(path, read_only=True) as conn:
        expected = conn.sql("SELECT id, who FROM events WHERE day > DATE '2024-04-10'").df()
    assert rows_of(new) == rows_of(expected) == [(101, "new"), (102, "new"), (103, "new")]
    assert inc.new == (Datum("events:day(2024-04-10,2024-04-12]", None, '"2024-04-12"'),)
    assert "\"day\" > DATE '2024-04-10' AND \"day\" <= DATE '2024-04-12'" in inc.source.record["query"]
    assert inc.source.frame.npartitions == 2
    assert open_increment(spec, inc.current).source is None


def test_duckdb_query_with_a_timestamp_watermark(tmp_path):
    path = duckdb_file(tmp_path)
    spec = {"format": "duckdb", "uri": path, "query": "SELECT id, ts FROM events WHERE id % 2 = 0", "watermark": "ts"}
    full = open_source(spec)
    name = full.datums[0].id.split(":", 1)[0]
    assert name.startswith("query-") and full.datums[0].id.endswith(":ts(,2024-01-05T04:00:00]")

    with duckdb.connect(path) as conn:
        conn.execute(
            "INSERT INTO events VALUES (102, 'x', NULL, TIMESTAMP '2024-02-01 00:00:00.5'), (103, 'x', NULL, TIMESTAMP '2024-03-01')"
        )
    inc = open_increment(spec, full.datums)
    new = inc.source.frame.compute(scheduler="threads")
    assert new["id"].tolist() == [102]
    assert new["ts"].tolist() == [pd.Timestamp("2024-02-01 00:00:00.5")]
    assert inc.new[0].id == f"{name}:ts(2024-01-05T04:00:00,2024-02-01T00:00:00.500000]"
    assert dt.datetime.fromisoformat(json.loads(inc.new[0].version)) == dt.datetime(2024, 2, 1, 0, 0, 0, 500000)
    assert open_increment(spec, inc.current).source is None
