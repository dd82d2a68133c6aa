"""``format: iceberg`` sources: one snapshot of a table, one Dask partition per planned data file."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
from pyiceberg import expressions as ex
from pyiceberg.exceptions import ResolveError
from pyiceberg.io import FileIO, load_file_io
from pyiceberg.io.pyarrow import ArrowScan, schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, ManifestGroupPlanner, Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.types import StringType

from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io.arrow import arrow_to_pandas, empty_frame
from dpipe.io.connector import BadFileLog, Datum, OpenedSource
from dpipe.io.iceberg.catalog import load_table, open_catalog, short, slim
from dpipe.spec.iceberg import IcebergSourceSpec
from dpipe.spec.source import Filter

#: pyiceberg's predicates, typed ``Any``: mypy reads their pydantic fields as the constructor's.
_P: Any = ex
#: Filter operators -> pyiceberg predicates.
_OPS: dict[str, Callable[[str, Any], ex.BooleanExpression]] = {
    "==": _P.EqualTo,
    "=": _P.EqualTo,
    "!=": _P.NotEqualTo,
    "<": _P.LessThan,
    "<=": _P.LessThanOrEqual,
    ">": _P.GreaterThan,
    ">=": _P.GreaterThanOrEqual,
    "in": lambda column, values: _P.In(column, tuple(values)),
    "not in": lambda column, values: _P.NotIn(column, tuple(values)),
    "is null": lambda column, _: _P.IsNull(column),
    "not null": lambda column, _: _P.NotNull(column),
}


@dataclass(frozen=True)
class ScanPart:
    """What a worker needs to read one data file with its delete files: picklable, tokenised."""

    task: FileScanTask
    metadata: TableMetadata
    io_properties: dict[str, str]
    schema: Schema
    row_filter: ex.BooleanExpression
    arrow_schema: pa.Schema
    bad_file_log: BadFileLog | None = None
    where: str = "source"

    @property
    def uri(self) -> str:
        return self.task.file.file_path

    def __dask_tokenize__(self):
        deletes = sorted(d.file_path for d in self.task.delete_files)
        skip = self.bad_file_log.uri if self.bad_file_log else None
        return ("dpipe-iceberg", str(self.metadata.table_uuid), self.uri, deletes, str(self.row_filter), skip)


def read_scan_part(part: ScanPart, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one data file on a worker, its deletes applied and the row filter on (pyiceberg's Arrow scan).

    ``columns`` is how Dask pushes a projection of the frame into the read.
    """
    columns = list(part.arrow_schema.names) if columns is None else list(columns)
    io = load_file_io(part.io_properties, part.metadata.location)
    schema = part.schema.select(*(columns or part.arrow_schema.names[:1]))
    try:
        table = ArrowScan(part.metadata, io, schema, part.row_filter).to_table([part.task]).select(columns)
    except FileNotFoundError as exc:
        raise StorageError(
            f"{part.where}: data file {part.uri!r} of the Iceberg snapshot is gone",
            hint="the snapshot may have been expired (its files deleted) while the job ran; read a newer one",
        ) from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ResolveError, ValueError) as exc:
        if part.bad_file_log is None:
            raise DataError(
                f"{part.where}: cannot read data file {part.uri!r}: {short(exc)}",
                hint="the file is corrupt or does not match the table's schema; set `quarantine.bad_files: skip`"
                " to leave such files out",
            ) from exc
        part.bad_file_log.record(part.uri, short(exc))
        table = pa.schema([part.arrow_schema.field(c) for c in columns]).empty_table()
    except OSError as exc:  # denied, unreachable: the storage, not the file
        raise StorageError(
            f"{part.where}: cannot read data file {part.uri!r} ({short(exc)})",
            hint="check the credentials and endpoint (`storage_options`, or the s3.* properties in `catalog`)",
        ) from exc
    return arrow_to_pandas(table)


class IcebergSource:
    """``format: iceberg``: one snapshot of a table, one Dask partition per planned data file.

    Examples
    --------
    >>> src = open_source({"format": "iceberg", "table": "lake.events", "catalog": {"warehouse": "data/lake"}})
    >>> src.record["snapshot_id"]
    """

    Spec: ClassVar[type[IcebergSourceSpec]] = IcebergSourceSpec

    def __init__(self, spec: IcebergSourceSpec, *, where: str = "source"):
        self.spec = spec
        self.where = where

    def open(self, *, bad_file_log: BadFileLog | None = None) -> OpenedSource:
        spec, where = self.spec, self.where
        catalog = open_catalog(spec, where)
        table = load_table(catalog, spec.table, where)
        snapshot = self._snapshot(table)
        schema = table.scan(snapshot_id=snapshot.snapshot_id).projection()  # the snapshot's schema
        available = schema.column_names
        selected = list(spec.columns) if spec.columns else list(available)
        missing = [c for c in selected if c not in available]
        if missing:
            raise ColumnError(
                f"{where}.columns: column(s) {missing} not found in table {spec.table!r}; available: {available}",
                hint=f"fix `{where}.columns`",
            )
        row_filter = filter_expression(spec.filters, schema, where) if spec.filters else ex.AlwaysTrue()
        scan = table.scan(row_filter=row_filter, selected_fields=tuple(selected), snapshot_id=snapshot.snapshot_id)
        tasks, added_by = self._plan(scan, snapshot, table.io)
        if not tasks:
            what = "no data file matches `filters`" if spec.filters else "the snapshot has no data files"
            raise DataError(
                f"{where}: table {spec.table!r} at snapshot {snapshot.snapshot_id}: {what}",
                hint="loosen the filters or read another snapshot",
            )
        projection = scan.projection()
        as_arrow = schema_to_pyarrow(projection, include_field_ids=False)
        arrow_schema = pa.schema([as_arrow.field(c) for c in selected])  # in the order asked for
        metadata, io_properties = slim(table.metadata), dict(table.io.properties)
        parts = [
            ScanPart(task, metadata, io_properties, projection, row_filter, arrow_schema, bad_file_log, where)
            for task in tasks
        ]
        frame = dd.from_map(
            read_scan_part,
            parts,
            meta=empty_frame(arrow_schema, selected),
            label="dpipe-read-iceberg",
            enforce_metadata=False,
        )
        datums = tuple(Datum(t.file.file_path, t.file.file_size_in_bytes, _version(t, added_by)) for t in tasks)
        record = {
            "kind": "iceberg",
            "catalog": catalog.name,
            "table": spec.table,
            "snapshot_id": snapshot.snapshot_id,
            "snapshot_timestamp_ms": snapshot.timestamp_ms,
        }
        partition_columns = [
            table.schema().find_column_name(f.source_id) or ""
            for f in table.spec().fields
            if str(f.transform) == "identity"
        ]
        return OpenedSource(
            uri=spec.uri,
            format=spec.format,
            frame=frame,
            schema=arrow_schema,
            files=[p.uri for p in parts],
            datums=datums,
            record=record,
            partition_columns=[c for c in partition_columns if c in selected],
        )

    def _snapshot(self, table: Table) -> Snapshot:
        spec, where = self.spec, self.where
        ids = [s.snapshot_id for s in table.metadata.snapshots]
        if spec.snapshot_id is not None:
            found = table.snapshot_by_id(spec.snapshot_id)
            if found is None:
                raise SpecError(
                    f"{where}.snapshot_id: snapshot {spec.snapshot_id} not found in table {spec.table!r};"
                    f" its snapshots (oldest first, last 10): {ids[-10:]}",
                    hint="the snapshot may have been expired; pick one of those listed or use `as_of`",
                )
            return found
        if spec.as_of is not None:
            as_of = spec.as_of if spec.as_of.tzinfo else spec.as_of.replace(tzinfo=dt.UTC)
            found = table.snapshot_as_of_timestamp(int(as_of.timestamp() * 1000))
            if found is None:
                first = table.history()[0].timestamp_ms if table.history() else None
                since = dt.datetime.fromtimestamp(first / 1000, dt.UTC).isoformat() if first else "never"
                raise SpecError(
                    f"{where}.as_of: table {spec.table!r} has no snapshot at or before {as_of.isoformat()};"
                    f" its first snapshot is from {since}",
                    hint=f"use a later `{where}.as_of`",
                )
            return found
        current = table.current_snapshot()
        if current is None:
            raise DataError(
                f"{where}: table {spec.table!r} has no snapshot (nothing was ever committed to it)",
                hint="write to the table first, or check `table`",
            )
        return current

    def _plan(self, scan: Any, snapshot: Snapshot, io: FileIO) -> tuple[list[FileScanTask], dict[str, int | None]]:
        """``scan.plan_files()`` done by the same planner, keeping the snapshot that added each file."""
        added_by: dict[str, int | None] = {}

        def keep(entry: Any) -> bool:
            added_by[entry.data_file.file_path] = entry.snapshot_id
            return True

        planner = ManifestGroupPlanner(scan.table_metadata, io, scan.row_filter, scan.case_sensitive, scan.options)
        try:
            tasks = list(planner.plan_files(snapshot.manifests(io), manifest_entry_filter=keep))
        except (ValueError, TypeError) as exc:
            if "equality deletes" in str(exc):
                raise DataError(
                    f"{self.where}: table {self.spec.table!r} has equality delete files, which pyiceberg cannot"
                    " apply; refusing to read rows that may have been deleted",
                    hint="compact the table with an engine that applies them (Spark's rewrite_data_files),"
                    " or read a snapshot from before the deletes",
                ) from exc
            raise SpecError(
                f"{self.where}.filters: {short(exc)}",
                hint=f"compare numbers with numbers and strings with quoted strings in `{self.where}.filters`",
            ) from exc
        except OSError as exc:
            raise StorageError(f"{self.where}: cannot read the manifests of {self.spec.table!r}: {short(exc)}") from exc
        return tasks, added_by


def _version(task: FileScanTask, added_by: Mapping[str, int | None]) -> str:
    """The snapshot that added the file; a file's rows change only by the deletes applied to it."""
    version = str(added_by.get(task.file.file_path))
    if task.delete_files:
        paths = "\n".join(sorted(d.file_path for d in task.delete_files))
        version += f"+deletes-{hashlib.sha1(paths.encode()).hexdigest()[:12]}"
    return version


def filter_expression(filters: list, schema: Schema, where: str) -> ex.BooleanExpression:
    """``[column, op, value]`` triples (AND), or lists of them (OR of ANDs), as a pyiceberg expression."""
    groups = filters if isinstance(filters[0], list) and isinstance(filters[0][0], (list, tuple)) else [filters]
    ors = []
    for group in groups:
        ands = [_term(tuple(f), schema, where) for f in group]
        ors.append(ex.And(*ands) if len(ands) > 1 else ands[0])
    return ex.Or(*ors) if len(ors) > 1 else ors[0]


def _term(f: Filter, schema: Schema, where: str) -> ex.BooleanExpression:
    column, op, value = f
    if column not in schema.column_names:
        raise ColumnError(
            f"{where}.filters: column {column!r} not found; available: {schema.column_names}",
            hint=f"fix `{where}.filters`",
        )
    if value is None and op in ("==", "=", "!="):
        op = "not null" if op == "!=" else "is null"
    if isinstance(schema.find_type(column), StringType):
        value = _as_text(value)
    return _OPS[op](column, value)


def _as_text(value: Any) -> Any:
    """YAML turns 2024-03-01 into a date; compare it as text with a string column."""
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value
