"""What the database connectors share: the partitioned read, Arrow types, and the sinks' checks.

A source kind supplies a client-side :class:`Session` (the schema, the partition column's range,
and a picklable :class:`Reader` for the workers); :class:`SQLSource` does the rest the same way
for every database: it checks the columns, splits the range, and builds one :class:`RangeRead`
per range, each a Dask partition read by ``read_range`` with the projection pushed into its
SELECT list.

With a ``watermark`` column a read is one datum, the rows up to the column's highest value (read
in the same snapshot as the rest), and :meth:`SQLSource.open_new` reads only the rows above the
highest mark of the datums seen before: new rows, as long as the column only grows for them
(:mod:`~dpipe.io.sql.watermark`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dpipe.errors import ColumnError, DataError, DpipeError, SpecError, StorageError
from dpipe.io.arrow import arrow_to_pandas, empty_frame
from dpipe.io.connector import BadFileLog, Datum, Increment, OpenedSource
from dpipe.io.sql.text import (
    Dialect,
    filter_condition,
    filter_groups,
    jsonable,
    range_bounds,
    range_condition,
    relation,
    select,
    split_range,
)
from dpipe.io.sql.watermark import Mark, Watermark, increment, require_watermark
from dpipe.spec.sql import SQLSourceSpec

logger = logging.getLogger(__name__)

#: Partitions of a ``partition_on`` read when no Dask client says how many threads there are.
DEFAULT_PARTITIONS = 4


class Reader(Protocol):
    """Runs one SELECT on a worker and returns its rows as Arrow (picklable, tokenised)."""

    @property
    def token(self) -> str: ...

    def read(self, sql: str) -> pa.Table: ...


class Session(Protocol):
    """The client's connection while a source opens; ``keep()`` hands the workers their reader."""

    @property
    def version(self) -> str | None:
        """The datums' version: a watermark that changes when the data may have."""

    @property
    def snapshot(self) -> Any:
        """What the lineage records about the snapshot read (or ``None``)."""

    def table(self, sql: str) -> pa.Table: ...

    def keep(self) -> Reader: ...


# -- Arrow types ---------------------------------------------------------------------------------
def plain_type(field: pa.Field) -> pa.DataType:
    """The type a column is read as: database extension types as plain Arrow types.

    PostgreSQL's ``numeric`` comes as an opaque text type and is read as float64 (as decimals
    are everywhere in dpipe); JSON and UUID columns are read as text.
    """
    t = field.type
    if isinstance(t, pa.BaseExtensionType):
        name = getattr(t, "extension_name", "")
        if name == "arrow.opaque" and getattr(t, "type_name", "") == "numeric":
            return pa.float64()
        return (
            pa.string()
            if name in ("arrow.json", "arrow.uuid", "arrow.opaque")
            else plain_type(pa.field(field.name, t.storage_type))
        )
    return t


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """The schema the partitions have: plain types, no driver metadata."""
    return pa.schema([pa.field(f.name, plain_type(f), f.nullable) for f in schema])


def plain_table(table: pa.Table) -> pa.Table:
    """``table`` with the types of :func:`plain_schema`."""
    columns = []
    for f, column in zip(table.schema, table.columns):
        if isinstance(f.type, pa.BaseExtensionType):
            storage = pa.chunked_array([c.storage for c in column.chunks], type=f.type.storage_type)
            if getattr(f.type, "extension_name", "") == "arrow.uuid":
                storage = pa.array([None if b is None else str(uuid.UUID(bytes=b)) for b in storage.to_pylist()])
            column = pc.cast(storage, plain_type(f))
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=plain_schema(table.schema))


#: The column types that have ranges, and the kind of value (see :data:`dpipe.io.sql.text.UNJSONABLE`)
#: a bound of each is.
RANGE_KINDS: tuple[tuple[Callable[[pa.DataType], bool], str], ...] = (
    (pa.types.is_integer, "integer"),
    (pa.types.is_floating, "float"),
    (pa.types.is_decimal, "decimal"),
    (pa.types.is_date, "date"),
    (pa.types.is_timestamp, "timestamp"),
)


def range_kind(t: pa.DataType) -> str | None:
    """The kind of a column that has ranges (``"integer"``, ``"date"``...), else ``None``."""
    return next((kind for test, kind in RANGE_KINDS if test(t)), None)


def is_rangeable(t: pa.DataType) -> bool:
    """Can a column of this type be split into ranges: a number, a date or a timestamp."""
    return range_kind(t) is not None


# -- reading -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RangeRead:
    """One partition: the rows of ``relation`` matching ``where``, read by a worker."""

    reader: Any
    dialect: Dialect
    relation: str
    where: tuple[str, ...]
    schema: pa.Schema
    columns: tuple[str, ...]
    label: str

    def sql(self, columns: list[str]) -> str:
        if not columns:  # a count (len(frame)) selects no column; SQL needs one
            return select(self.dialect, self.relation, None, self.where).replace(
                "SELECT *", "SELECT 1 AS _dpipe_one", 1
            )
        return select(self.dialect, self.relation, columns, self.where)

    def __dask_tokenize__(self):
        return ("dpipe-sql", self.reader.token, self.relation, self.where, self.columns)


def read_range(task: RangeRead, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one partition on a worker; ``columns`` is how Dask pushes a projection into the SELECT."""
    columns = list(task.columns) if columns is None else list(columns)
    table = task.reader.read(task.sql(columns))
    if not columns:
        return pd.DataFrame(index=pd.RangeIndex(table.num_rows))
    table = plain_table(table)
    target = pa.schema([task.schema.field(c) for c in columns])
    if not table.schema.equals(target):
        table = table.cast(target)
    return arrow_to_pandas(table)


def default_partitions() -> int:
    """One partition per worker thread: of the cluster the run plans for (the ``dpipe.planned-threads``
    Dask config, which the runner sets), else of the current Dask client, else :data:`DEFAULT_PARTITIONS`."""
    import dask

    planned = dask.config.get("dpipe.planned-threads", None)
    if planned:
        return max(1, int(planned))
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return DEFAULT_PARTITIONS
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - a client that cannot answer: the plain default
        return DEFAULT_PARTITIONS


def _row(session: Session, sql: str) -> dict[str, Any]:
    """The one row of an aggregate query, read in the session's snapshot."""
    return plain_table(session.table(sql)).to_pylist()[0]


class SQLSource:
    """A table or query read in ranges of ``partition_on``: the open logic all databases share.

    Subclasses name their ``Spec``, ``dialect`` and ``kind``, and implement :meth:`session` (the
    client's connection) and :meth:`location` (the database, without credentials).
    """

    #: Whether equal lineage means equal rows (see :attr:`dpipe.io.OpenedSource.versioned`).
    versioned: ClassVar[bool] = False

    Spec: ClassVar[type[SQLSourceSpec]] = SQLSourceSpec
    dialect: ClassVar[Dialect]
    kind: ClassVar[str]

    def __init__(self, spec: SQLSourceSpec, *, where: str = "source"):
        self.spec = spec
        self.where = where

    def session(self) -> contextlib.AbstractContextManager[Session, bool | None]:
        raise NotImplementedError

    def location(self) -> str:
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The table, or ``query-<hash>``: how datums and labels name what is read."""
        spec = self.spec
        if spec.table is not None:
            return spec.table
        return "query-" + hashlib.sha1((spec.query or "").encode()).hexdigest()[:10]

    def open(self, *, bad_file_log: BadFileLog | None = None) -> OpenedSource:
        opened = self._read(None, bad_file_log=bad_file_log)
        assert opened is not None  # only a read above an earlier mark can find nothing
        return opened

    def open_new(self, seen: Collection[Datum], *, bad_file_log: BadFileLog | None = None) -> Increment:
        """Only the rows above the watermark of the ``seen`` datums (an earlier run's), as one datum.

        The earlier mark is the highest of the seen datums of this source and column
        (``events:ts(...,<mark>]``); the rows read are those with ``mark < watermark <= high``,
        ``high`` the column's highest value now, within ``filters``, split into ranges of
        ``partition_on`` as :meth:`open` does. No rows above the mark: ``Increment(source=None)``.
        ``changed`` and ``missing`` are always empty: rows updated, or inserted with a watermark
        below the mark, are not seen (that is what a watermark means).
        """
        require_watermark(self.spec.watermark, kind=self.kind, where=self.where)
        before = tuple(seen)
        return increment(before, self._read(before, bad_file_log=bad_file_log))

    def _read(self, seen: tuple[Datum, ...] | None, *, bad_file_log: BadFileLog | None) -> OpenedSource | None:
        """Everything (``seen=None``), or the rows above the watermark of ``seen`` (``None``: there are none)."""
        spec, where, d = self.spec, self.where, self.dialect
        if bad_file_log is not None:
            raise SpecError(
                f"{where}: format {spec.format!r} cannot skip unreadable data",
                hint="leave `quarantine.bad_files` unset for database sources",
            )
        rel = relation(d, table=spec.table, query=spec.query)
        mark: Mark | None = None  # with a watermark: the rows up to its highest value (above ``seen``'s)
        with self.session() as session:
            full = plain_schema(session.table(select(d, rel, None) + " LIMIT 0").schema)
            selected = self._columns(full)
            condition = filter_condition(d, spec.filters)
            where_sql = [condition] if condition else []
            if spec.watermark is not None:
                mark = self._watermark(full).mark(lambda sql: _row(session, sql), rel, where_sql, seen)
                if mark is None:
                    return None
                where_sql.append(mark.condition())
            edges, rows = self._edges(session, full, rel, where_sql)
            reader = session.keep()
            version, snapshot = session.version, session.snapshot
        schema = pa.schema([full.field(c) for c in selected])
        bounds = range_bounds(edges)
        location, name = self.location(), self.name
        tasks, ids = [], []
        for i, b in enumerate(bounds):
            predicate = range_condition(d, spec.partition_on, b) if spec.partition_on else None
            label = f"{location}/{name}#part={i}"
            within = tuple(where_sql + ([predicate] if predicate else []))
            tasks.append(RangeRead(reader, d, rel, within, schema, tuple(selected), label))
            ids.append(self._datum_id(name, edges, i) if mark is None else mark.datum_id())
        datums = tuple(Datum(i, None, version) for i in ids) if mark is None else (mark.datum(),)
        frame = dd.from_map(
            read_range,
            tasks,
            meta=empty_frame(schema, selected),
            label=f"dpipe-read-{self.kind}",
            enforce_metadata=False,
        )
        record: dict[str, Any] = {
            "kind": self.kind,
            "uri": location,
            "table": spec.table,
            "query": select(d, rel, selected, where_sql),
            "partition_on": spec.partition_on,
            "ranges": [[jsonable(edges[i]), jsonable(edges[i + 1])] for i in range(len(edges) - 1)],
            "rows": rows if rows is not None or mark is None else mark.rows,
            "snapshot": snapshot,
            "watermark": version,
        }
        if mark is not None:
            record.update(mark.record())
        return OpenedSource(
            uri=location + "/" + name,
            format=spec.format,
            frame=frame,
            schema=schema,
            files=[t.label for t in tasks],
            datums=datums,
            record=record,
            versioned=self.versioned,
            partition_datums=tuple(ids),
        )

    def _columns(self, full: pa.Schema) -> list[str]:
        spec, where = self.spec, self.where
        available = list(full.names)
        selected = list(spec.columns) if spec.columns else available
        named = [("columns", c) for c in selected] + [
            ("filters", c) for g in filter_groups(spec.filters) for c, _, _ in g
        ]
        named += [(key, getattr(spec, key)) for key in ("partition_on", "watermark") if getattr(spec, key)]
        for key, column in named:
            if column not in available:
                raise ColumnError(
                    f"{where}.{key}: column {column!r} not found in {self._what()}; available: {available}",
                    hint=f"fix `{where}.{key}`",
                )
        return selected

    def _what(self) -> str:
        return f"table {self.spec.table!r}" if self.spec.table is not None else "the query's result"

    def _edges(self, session: Session, full: pa.Schema, rel: str, where_sql: list[str]) -> tuple[list[Any], int | None]:
        """The range edges of ``partition_on`` (within the filters) and the row count they came with."""
        spec, where, d = self.spec, self.where, self.dialect
        column = spec.partition_on
        if column is None:
            return [], None
        kind = full.field(column).type
        if not is_rangeable(kind):
            raise SpecError(
                f"{where}.partition_on: column {column!r} has type {kind}; a partition column is a number, date or timestamp",
                hint="partition on an integer id or a timestamp column",
            )
        c = d.ident(column)
        sql = select(d, rel, None, where_sql).replace(
            "SELECT *", f"SELECT min({c}) AS lo, max({c}) AS hi, count(*) AS n", 1
        )
        lo, hi, n = _row(session, sql).values()
        if n and lo is None:
            raise DataError(
                f"{where}.partition_on: column {column!r} is NULL in every row of {self._what()}; it has no range to split",
                hint="partition on a column with values, or leave `partition_on` out to read one partition",
            )
        n_parts = spec.partitions or default_partitions()
        return (split_range(lo, hi, n_parts) if n else []), int(n)

    def _watermark(self, full: pa.Schema) -> Watermark:
        column = self.spec.watermark
        assert column is not None
        t = full.field(column).type
        return Watermark.of(column, t, range_kind(t), dialect=self.dialect, source=self.name, where=self.where)

    def _datum_id(self, name: str, edges: list[Any], i: int) -> str:
        if len(edges) < 2:
            return name
        close = "]" if i == len(edges) - 2 else ")"
        return f"{name}:{self.spec.partition_on}[{jsonable(edges[i])},{jsonable(edges[i + 1])}{close}"


# -- errors --------------------------------------------------------------------------------------
#: How a database's error is classified: what the message says and which error it raises.
QUERY_ERRORS: dict[str, tuple[type[DpipeError], str]] = {
    "missing": (StorageError, "check the table's name and schema (names are exact: `Events` is not `events`)"),
    "denied": (StorageError, "grant the database user SELECT on the table, or connect as another user"),
    "syntax": (SpecError, "fix the SQL; run it in psql or duckdb to see the error in place"),
    "column": (ColumnError, "check the column names the query uses"),
    "other": (DataError, "see the database's message above"),
}


def query_error(category: str, message: str, *, where: str, table: str | None, query: str | None) -> DpipeError:
    """One error for a failed query: the database's message and what was asked (never a password)."""
    cls, hint = QUERY_ERRORS.get(category, QUERY_ERRORS["other"])
    if table is not None:
        key, asked = "table", f"table {table!r}"
    else:
        key, asked = "query", f"the query {query!r}"
    return cls(f"{where}.{key}: the database refused {asked}: {message}", hint=hint)


@contextlib.contextmanager
def quietly(what: str) -> Iterator[None]:
    """Cleanup that must not hide the error that caused it: failures are logged, not raised."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        logger.warning("%s failed: %s", what, type(exc).__name__)
