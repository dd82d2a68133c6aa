"""Delta Lake tables, both ways, with the ``deltalake`` package (delta-rs).

Reading: the client loads the table's log at one version (latest, ``version``, or ``as_of``),
prunes data files with the filters (exactly on partition columns, by min/max statistics on others)
and makes one Dask partition per data file. Workers read the Parquet files through fsspec, add the
partition values, apply the file's deletion vector (rows deleted without rewriting the file) and
then the row filter. A table feature dpipe cannot read correctly (column mapping, any reader
feature it does not know) is refused with its name: a table is never read wrong.

Writing: workers write Parquet data files of their partitions straight into the table's folder
(unreferenced files, invisible to readers) and return their add actions; the client commits them
in ONE Delta transaction, with the run's ``txn`` as an application transaction so a retried run
cannot append twice, and the job's manifest in the commit's metadata. Files of a run that fails
before its commit are deleted (and would be invisible to readers either way).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import posixpath
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io.arrow import arrow_to_pandas, empty_frame
from dpipe.io.connector import BadFileLog, Datum, OpenedSource, Written
from dpipe.io.fs import full_uri, resolve, storage_errors
from dpipe.io.sources import _coerce, _filter_expression
from dpipe.spec.base import redact_url
from dpipe.spec.delta import DeltaSinkSpec, DeltaSourceSpec

__all__ = ["DeltaSink", "DeltaSource", "delta_storage_options"]

#: Reader features whose tables dpipe reads correctly (deletion vectors are applied per file).
SUPPORTED_READER_FEATURES = frozenset(
    {"deletionVectors", "timestampNtz", "v2Checkpoint", "vacuumProtocolCheck", "variantType"}
)
#: The partition folder name of a null partition value (Hive's, which Delta uses).
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def delta_storage_options(storage_options: Mapping[str, Any], uri: str, *, writing: bool = False) -> dict[str, str]:
    """dpipe's fsspec ``storage_options`` (s3fs's ``key``/``secret``/``client_kwargs``) as delta-rs options.

    Keys delta-rs already understands (``AWS_REGION``, ``aws_endpoint``...) pass through. A plain
    ``http://`` endpoint (a local S3 such as MinIO or moto) sets ``AWS_ALLOW_HTTP``. Writes to S3
    without a locking provider are allowed (``AWS_S3_ALLOW_UNSAFE_RENAME``): a single writer per
    table is safe; for concurrent writers set ``AWS_S3_LOCKING_PROVIDER`` (see delta-rs).
    """
    options = dict(storage_options)
    out: dict[str, str] = {}
    client = options.pop("client_kwargs", None) or {}
    mapping = {
        "key": "AWS_ACCESS_KEY_ID",
        "secret": "AWS_SECRET_ACCESS_KEY",
        "token": "AWS_SESSION_TOKEN",
        "endpoint_url": "AWS_ENDPOINT_URL",
        "region_name": "AWS_REGION",
    }
    for source in (client, options):
        for key, value in source.items():
            if key in mapping and value is not None:
                out[mapping[key]] = str(value)
            elif source is options and isinstance(value, (str, int, float, bool)):
                out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    endpoint = out.get("AWS_ENDPOINT_URL")
    if uri.startswith(("s3://", "s3a://")):
        if endpoint:
            out.setdefault("AWS_REGION", "us-east-1")
            if endpoint.startswith("http://"):
                out.setdefault("AWS_ALLOW_HTTP", "true")
        if writing and "AWS_S3_LOCKING_PROVIDER" not in out:
            out.setdefault("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    return out


def _delta_errors():
    from deltalake.exceptions import DeltaError, DeltaProtocolError, TableNotFoundError

    return DeltaError, DeltaProtocolError, TableNotFoundError


def _load_table(uri: str, storage_options: Mapping[str, Any], where: str, *, version=None, as_of=None, writing=False):
    """The ``DeltaTable`` at ``uri`` (at ``version`` / ``as_of``), or ``None`` when there is none and ``writing``."""
    from deltalake import DeltaTable

    DeltaError, _, TableNotFoundError = _delta_errors()
    shown = redact_url(uri)
    options = delta_storage_options(storage_options, uri, writing=writing)
    try:
        table = DeltaTable(uri, version=version, storage_options=options)
    except TableNotFoundError as exc:
        if writing:
            return None
        raise SpecError(
            f"{where}.uri: no Delta table at {shown!r} ({_first_line(exc)})",
            hint=f"check `{where}.uri`: it names the table's folder, the one holding `_delta_log/`",
        ) from exc
    except (DeltaError, OSError) as exc:
        text = _first_line(exc)
        if version is not None and "version" in text.lower():
            raise SpecError(
                f"{where}.version: the Delta table {shown!r} has no version {version}: {text}",
                hint="list the versions with `DeltaTable(uri).history()`; old versions may have been vacuumed",
            ) from exc
        raise StorageError(
            f"{where}.uri: cannot open the Delta table {shown!r}: {text}",
            hint=f"check `{where}.uri`, the credentials and that the storage is reachable",
        ) from exc
    if as_of is not None:
        when = as_of if as_of.tzinfo else as_of.replace(tzinfo=_dt.UTC)
        first = min((h["timestamp"] for h in table.history() if "timestamp" in h), default=None)
        if first is not None and when.timestamp() * 1000 < first:
            created = _dt.datetime.fromtimestamp(first / 1000, _dt.UTC).isoformat()
            raise SpecError(
                f"{where}.as_of: the Delta table {shown!r} did not exist yet at {when.isoformat()}"
                f" (its first commit is from {created})",
                hint=f"choose an `{where}.as_of` after {created}",
            )
        try:
            table.load_as_version(when)
        except (DeltaError, OSError, ValueError) as exc:
            raise SpecError(
                f"{where}.as_of: the Delta table {shown!r} has no version at {when.isoformat()}: {_first_line(exc)}",
                hint="choose a time after the table's first commit (see `DeltaTable(uri).history()`)",
            ) from exc
    return table


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _check_protocol(table, uri: str, where: str) -> None:
    """Refuse, by name, every table feature that could make dpipe read wrong rows."""
    protocol = table.protocol()
    features = set(protocol.reader_features or [])
    config = table.metadata().configuration or {}
    mode = config.get("delta.columnMapping.mode", "none")
    if "columnMapping" in features or mode not in ("none", None):
        raise DataError(
            f"source: the Delta table {redact_url(uri)!r} uses column mapping (table feature `columnMapping`,"
            f" mode {mode!r}): its files name columns by physical ids, which dpipe does not read yet",
            hint="read a copy without column mapping, or ask for column-mapping support",
        )
    unknown = sorted(features - SUPPORTED_READER_FEATURES)
    if unknown or (protocol.min_reader_version > 3):
        raise DataError(
            f"source: the Delta table {redact_url(uri)!r} needs reader feature(s) {unknown or protocol.min_reader_version}"
            " that dpipe does not support; reading it could give wrong rows",
            hint=f"dpipe reads tables with reader features {sorted(SUPPORTED_READER_FEATURES)}",
        )


def _relative(uri: str, root: str) -> str:
    """A data file's path relative to the table root, percent-decoded (the log's and listings differ)."""
    uri = urllib.parse.unquote(uri.removeprefix("file://"))
    root = urllib.parse.unquote(root.removeprefix("file://")).rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) else uri


def _partition_value(text: str | None, arrow_type: pa.DataType) -> Any:
    """A partition value as the log stores it (a string) -> a scalar of the column's type."""
    if text is None or text == "":
        return pa.scalar(None, arrow_type)
    if pa.types.is_boolean(arrow_type):
        return pa.scalar(text.lower() == "true", arrow_type)
    return pc.cast(pa.scalar(text), arrow_type)


@dataclass(frozen=True)
class DeltaFileTask:
    """What a worker needs to read one data file of a Delta table: picklable, tokenised by content."""

    fragment: ds.Fragment
    uri: str
    schema: pa.Schema
    columns: tuple[str, ...]
    filter: ds.Expression | None = None
    #: ``np.packbits`` of the rows to keep (the file's deletion vector), and the file's row count.
    keep: bytes | None = None
    rows: int = 0
    bad_file_log: BadFileLog | None = None
    fs_token: str = ""

    def __dask_tokenize__(self):
        skip = self.bad_file_log.uri if self.bad_file_log else None
        mask = None if self.keep is None else hash(self.keep)
        return ("dpipe-delta", self.uri, self.fs_token, self.columns, str(self.filter), mask, skip)


def read_delta_file(task: DeltaFileTask, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one data file (runs on a worker): partition values, deletion vector, then the row filter."""
    columns = list(task.columns) if columns is None else list(columns)
    try:
        if task.keep is None:
            table = task.fragment.to_table(schema=task.schema, columns=columns, filter=task.filter)
        else:
            # A deletion vector masks rows by their position in the file: read it whole, in order.
            needed = sorted(set(columns) | _expression_columns(task.filter), key=task.schema.names.index)
            table = task.fragment.to_table(schema=task.schema, columns=needed)
            keep = np.unpackbits(np.frombuffer(task.keep, dtype=np.uint8), count=task.rows).astype(bool)
            if len(keep) != table.num_rows:
                raise DataError(
                    f"source: the deletion vector of {task.uri!r} covers {len(keep)} rows but the file has"
                    f" {table.num_rows}",
                    hint="the table's log and its files disagree: check the table with its writer",
                )
            table = table.filter(pa.array(keep))
            if task.filter is not None:
                table = table.filter(task.filter)
            table = table.select(columns)
    except FileNotFoundError as exc:
        raise StorageError(
            f"source: data file {task.uri!r} of the Delta table disappeared while reading",
            hint="a VACUUM removed it: read a newer version, or do not vacuum while jobs read old versions",
        ) from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        if task.bad_file_log is None:
            raise DataError(
                f"source: cannot read data file {task.uri!r} of the Delta table: {_first_line(exc)}",
                hint="the file is corrupt; restore it, or set `quarantine.bad_files: skip` to leave it out",
            ) from exc
        task.bad_file_log.record(task.uri, _first_line(exc))
        table = pa.schema([task.schema.field(c) for c in columns]).empty_table()
    return arrow_to_pandas(table)


def _expression_columns(expression: ds.Expression | None) -> set[str]:
    if expression is None:
        return set()
    import re

    return set(re.findall(r"\b([A-Za-z_]\w*)\b(?=\s*[=!<>]|\s+is)", str(expression))) | {
        m for m in re.findall(r"is_(?:in|null|valid)\(([A-Za-z_]\w*)", str(expression))
    }


class DeltaSource:
    """``format: delta``: one Dask partition per data file of one version of the table."""

    Spec: ClassVar[type[DeltaSourceSpec]] = DeltaSourceSpec

    def __init__(self, spec: DeltaSourceSpec, *, where: str = "source"):
        self.spec = spec
        self.where = where

    def open(self, *, bad_file_log: BadFileLog | None = None) -> OpenedSource:
        spec, where, uri = self.spec, self.where, self.spec.uri
        table = _load_table(uri, spec.storage_options, where, version=spec.version, as_of=spec.as_of)
        _check_protocol(table, uri, where)
        schema = pa.schema(table.schema().to_arrow())
        partition_columns = list(table.metadata().partition_columns)
        available = list(schema.names)
        selected = list(spec.columns) if spec.columns else available
        missing = [c for c in selected if c not in available]
        if missing:
            raise ColumnError(
                f"{where}.columns: column(s) {missing} not found in the Delta table {redact_url(uri)!r};"
                f" available: {available}",
                hint=f"fix `{where}.columns`",
            )
        expression = _filter_expression(spec.filters, schema, where) if spec.filters else None
        root = table.table_uri
        actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
        total = len(actions)
        if spec.filters:
            kept = {_relative(u, root) for u in self._pruned(table, schema)}
            actions = [a for a in actions if urllib.parse.unquote(a["path"]) in kept]
        if not actions:
            what = "no data file matches `filters`" if total else "has no data files"
            raise DataError(
                f"{where}: the Delta table {redact_url(uri)!r} (version {table.version()}) {what}",
                hint="loosen the filters, or read another version" if total else "write rows to the table first",
            )
        masks = self._deletion_vectors(table, root)
        fs, path = resolve(uri, spec.storage_options, where=f"{where}.uri")
        pafs = pa.fs.PyFileSystem(pa.fs.FSSpecHandler(fs))
        parquet = ds.ParquetFileFormat()
        tasks, datums = [], []
        for action in sorted(actions, key=lambda a: a["path"]):
            rel = urllib.parse.unquote(action["path"])
            file_path = f"{path.rstrip('/')}/{rel}"
            values = {
                c: _partition_value(action.get(f"partition.{c}"), schema.field(c).type) for c in partition_columns
            }
            partition_expression = _equals(values)
            keep = masks.get(rel)
            tasks.append(
                DeltaFileTask(
                    fragment=parquet.make_fragment(
                        file_path, filesystem=pafs, partition_expression=partition_expression
                    ),
                    uri=full_uri(fs, file_path),
                    schema=schema,
                    columns=tuple(selected),
                    filter=expression,
                    keep=None if keep is None else np.packbits(keep).tobytes(),
                    rows=0 if keep is None else len(keep),
                    bad_file_log=bad_file_log,
                    fs_token=str(getattr(fs, "_fs_token", "")),
                )
            )
            datums.append(Datum(full_uri(fs, file_path), action["size_bytes"], str(action["modification_time"])))
        frame = dd.from_map(
            read_delta_file, tasks, meta=empty_frame(schema, selected), label="dpipe-read-delta", enforce_metadata=False
        )
        record = {
            "kind": "delta",
            "table_uri": redact_url(root),
            "version": table.version(),
            "as_of": spec.as_of.isoformat() if spec.as_of else None,
            "files_selected": len(tasks),
            "files_in_version": total,
            "deletion_vectors": sum(t.keep is not None for t in tasks),
        }
        return OpenedSource(
            uri=uri,
            format="delta",
            frame=frame,
            schema=schema,
            files=[t.uri for t in tasks],
            datums=tuple(datums),
            record=record,
            partition_columns=partition_columns,
        )

    def _pruned(self, table, schema: pa.Schema) -> list[str]:
        """Data files that may hold matching rows (partition values exactly, min/max statistics)."""
        filters = self.spec.filters or []
        groups = filters if isinstance(filters[0], list) and isinstance(filters[0][0], (list, tuple)) else [filters]
        dnf = [
            [(c, "=" if op == "==" else op, _coerce(v, schema.field(c).type)) for c, op, v in group] for group in groups
        ]
        DeltaError, _, _ = _delta_errors()
        try:
            return list(table.file_uris(file_pruning_predicate=dnf if len(dnf) > 1 else dnf[0]))
        except (DeltaError, ValueError, TypeError, pa.ArrowInvalid):
            # A filter the log cannot prune by (a type it does not compare): every file, rows filtered.
            return list(table.file_uris())

    def _deletion_vectors(self, table, root: str) -> dict[str, np.ndarray]:
        if "deletionVectors" not in set(table.protocol().reader_features or []):
            return {}
        masks: dict[str, np.ndarray] = {}
        for batch in table.deletion_vectors():
            rb = pa.record_batch(batch)
            for file, vector in zip(rb.column("filepath").to_pylist(), rb.column("selection_vector").to_pylist()):
                masks[_relative(file, root)] = np.asarray(vector, dtype=bool)
        return masks


def _equals(values: Mapping[str, pa.Scalar]) -> ds.Expression | None:
    expression = None
    for column, value in values.items():
        term = ds.field(column).is_null() if not value.is_valid else ds.field(column) == value
        expression = term if expression is None else expression & term
    return expression


# -- the sink ---------------------------------------------------------------------------------
def arrow_schema(meta: pd.DataFrame) -> pa.Schema:
    """The Delta-compatible Arrow schema of a frame: plain strings, microsecond timestamps, no dictionaries."""
    fields = []
    for f in pa.Schema.from_pandas(meta, preserve_index=False):
        t = f.type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        if pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz=t.tz)
        if pa.types.is_null(t):
            t = pa.string()
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


@dataclass(frozen=True)
class DeltaWriteTask:
    """What a worker needs to write its partition's data files into the table folder."""

    fs: Any
    path: str
    prefix: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()

    def __dask_tokenize__(self):
        return ("dpipe-delta-write", self.path, self.prefix)


def write_delta_part(frame: pd.DataFrame, task: DeltaWriteTask, index: int) -> list[dict[str, Any]]:
    """Write one partition as data files (one per partition value); returns their add actions."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = pa.table([table.column(f.name).cast(f.type) for f in task.schema], schema=task.schema)
    if not task.partition_by:
        groups: list[tuple[dict[str, Any], pa.Table]] = [({}, table)] if table.num_rows else []
    else:
        keys = table.select(list(task.partition_by)).group_by(list(task.partition_by)).aggregate([]).to_pylist()
        groups = []
        for key in keys:
            mask = None
            for c, v in key.items():
                m = (
                    pc.is_null(table.column(c))
                    if v is None
                    else pc.equal(table.column(c), pa.scalar(v, table.schema.field(c).type))
                )
                mask = m if mask is None else pc.and_(mask, m)
            groups.append((key, table.filter(mask)))
    actions = []
    for j, (key, rows) in enumerate(groups):
        values = {c: _partition_text(v) for c, v in key.items()}
        folder = "/".join(
            f"{c}={urllib.parse.quote(v if v is not None else NULL_PARTITION, safe='')}" for c, v in values.items()
        )
        name = f"part-{task.prefix}-{index:05d}-{j:03d}.snappy.parquet"
        rel = f"{folder}/{name}" if folder else name
        data = rows.drop_columns(list(task.partition_by)) if task.partition_by else rows
        target = f"{task.path}/{rel}"
        task.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        with task.fs.open(target, "wb") as f:
            pq.write_table(data, f, compression="snappy")
        actions.append(
            {
                "path": rel,
                "size": task.fs.size(target),
                "partition_values": values,
                "modification_time": int(time.time() * 1000),
                "data_change": True,
                "stats": json.dumps(_stats(data)),
            }
        )
    return actions


def _flatten(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [action for part in parts for action in part]


def _partition_text(value: Any) -> str | None:
    """A partition value as the Delta log stores it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, _dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value.isoformat() if isinstance(value, _dt.date) else str(value)


def _stats(table: pa.Table) -> dict[str, Any]:
    """The file statistics readers skip files by: row count, and min/max/nulls of plain columns."""
    stats: dict[str, Any] = {"numRecords": table.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    for name, column in zip(table.column_names, table.columns):
        t = column.type
        stats["nullCount"][name] = column.null_count
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t) or pa.types.is_temporal(t)):
            continue
        if column.null_count == len(column) or len(column) == 0:
            continue
        bounds = pc.min_max(column)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if isinstance(low, float) and (np.isnan(low) or np.isnan(high)):
            continue
        if pa.types.is_string(t) and (len(low) > 32 or len(high) > 32):
            continue  # a truncated bound would need care; leave the column to be read
        stats["minValues"][name], stats["maxValues"][name] = _json_value(low), _json_value(high)
    return stats


def _json_value(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, _dt.date):
        return value.isoformat()
    return value


class DeltaSink:
    """``format: delta``: data files written by the workers, committed in one transaction.

    Examples
    --------
    >>> with open_sink({"format": "delta", "uri": "lake/scores", "mode": "append"}) as sink:
    ...     sink.write(predictions)
    ...     written = sink.commit(txn="scores-2024-06-01")
    >>> written.record["version"]
    """

    Spec: ClassVar[type[DeltaSinkSpec]] = DeltaSinkSpec

    def __init__(self, spec: DeltaSinkSpec, *, where: str = "output"):
        self.spec = spec
        self.where = where
        self.uri = spec.uri
        self.fs, path = resolve(spec.uri, spec.storage_options, where=f"{where}.uri")
        self.path = path.rstrip("/")
        self.table = _load_table(spec.uri, spec.storage_options, where, writing=True)
        existing = list(self.table.metadata().partition_columns) if self.table is not None else None
        if existing is not None and spec.partition_by is not None and list(spec.partition_by) != existing:
            raise SpecError(
                f"{where}.partition_by: {spec.partition_by} differs from the table's partition columns {existing}",
                hint=f"leave `{where}.partition_by` out to use the table's, or write to a new table",
            )
        self.partition_by = list(spec.partition_by or existing or [])
        if spec.mode == "overwrite_partitions" and not self.partition_by:
            raise SpecError(
                f"{where}.mode: `overwrite_partitions` replaces partitions, but"
                f" {'the table' if existing is not None else 'the new table'} {redact_url(spec.uri)!r} has none",
                hint=f"set `{where}.partition_by`, or use `mode: append` or `mode: overwrite`",
            )
        self.schema: pa.Schema | None = None
        self.actions: list[dict[str, Any]] = []
        self.committed = False

    @classmethod
    def from_spec(cls, spec: DeltaSinkSpec, *, where: str = "output") -> DeltaSink:
        return cls(spec, where=where)

    def __enter__(self) -> DeltaSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def check(self, meta: pd.DataFrame) -> None:
        """The frame's columns against the table's (and ``partition_by``), before any computation."""
        where = self.where
        missing = [c for c in self.partition_by if c not in meta.columns]
        if missing:
            raise ColumnError(
                f"{where}.partition_by: column(s) {missing} are not in the output; available: {list(meta.columns)}",
                hint=f"fix `{where}.partition_by`",
            )
        schema = arrow_schema(meta)
        if self.table is None or self.spec.mode == "overwrite":
            self.schema = schema
            return
        target = pa.schema(self.table.schema().to_arrow())
        extra = [n for n in schema.names if n not in target.names]
        absent = [n for n in target.names if n not in schema.names]
        if extra or absent:
            raise ColumnError(
                f"{where}: the output's columns do not match the Delta table {redact_url(self.uri)!r}:"
                + (f" not in the table: {extra};" if extra else "")
                + (f" missing from the output: {absent};" if absent else "")
                + f" the table has {target.names}",
                hint="select the table's columns, or write with `mode: overwrite` to replace the table and its schema",
            )
        bad = {
            n: (str(schema.field(n).type), str(target.field(n).type))
            for n in schema.names
            if not _castable(schema.field(n).type, target.field(n).type)
        }
        if bad:
            shown = ", ".join(f"{n!r} is {got} but the table has {want}" for n, (got, want) in bad.items())
            raise DataError(
                f"{where}: the output does not fit the Delta table {redact_url(self.uri)!r}: {shown}",
                hint="cast the columns to the table's types, or write with `mode: overwrite`",
            )
        self.schema = target

    def write(self, frame: dd.DataFrame, *, compute: Callable[[Any], Any] | None = None) -> None:
        """Write every partition's data files into the table folder (not yet part of the table)."""
        self.check(frame._meta)
        assert self.schema is not None
        task = DeltaWriteTask(self.fs, self.path, uuid.uuid4().hex[:16], self.schema, tuple(self.partition_by))
        parts = [dask.delayed(write_delta_part)(part, task, i) for i, part in enumerate(frame.to_delayed())]
        # One object to compute: `compute` (the run's, with its progress bar) returns one value per argument.
        together = dask.delayed(_flatten)(parts, dask_key_name=f"dpipe-delta-write-{task.prefix}")
        with storage_errors(self.where, self.uri):
            self.fs.makedirs(self.path, exist_ok=True)
            (results,) = (compute or dask.compute)(together)
        self.actions.extend(results)

    def commit(self, *, metadata: Mapping[str, Any] | None = None, txn: str | None = None) -> Written:
        """One Delta transaction adding the written files (``txn``: at most once per id)."""
        from deltalake import CommitProperties, Transaction
        from deltalake.exceptions import CommitFailedError, DeltaError
        from deltalake.schema import Schema as DeltaSchema
        from deltalake.transaction import AddAction, create_table_with_add_actions

        spec, where = self.spec, self.where
        if self.schema is None:
            raise StorageError(f"{where}: nothing was written to {redact_url(self.uri)!r}", hint="call write() first")
        options = delta_storage_options(spec.storage_options, spec.uri, writing=True)
        if txn is not None and self.table is not None:
            self.table.update_incremental()
            if self.table.transaction_version(txn) is not None:
                self.abort()
                self.committed = True
                return Written(
                    self._full_uri(),
                    0,
                    record={"kind": "delta", "version": self.table.version(), "mode": spec.mode, "txn": txn},
                    duplicate=True,
                )
        custom = {"dpipe.txn": txn} if txn else {}
        if metadata is not None:
            custom["dpipe"] = json.loads(json.dumps(dict(metadata), default=str))
        properties = CommitProperties(
            custom_metadata=custom or None,
            max_commit_retries=spec.max_commit_retries,
            app_transactions=[Transaction(app_id=txn, version=1)] if txn else None,
        )
        adds = [AddAction(**a) for a in self.actions]
        schema = DeltaSchema.from_arrow(self.schema)
        try:
            if self.table is None:
                create_table_with_add_actions(
                    spec.uri,
                    schema,
                    adds,
                    mode="error",
                    partition_by=self.partition_by or None,
                    storage_options=options,
                    commit_properties=properties,
                )
            else:
                mode = "append" if spec.mode == "append" else "overwrite"
                filters = self._written_partitions() if spec.mode == "overwrite_partitions" else None
                self.table.create_write_transaction(
                    adds,
                    mode,
                    schema,
                    partition_by=self.partition_by or None,
                    partition_filters=filters,
                    commit_properties=properties,
                )
        except CommitFailedError as exc:
            raise StorageError(
                f"{where}: the commit to the Delta table {redact_url(self.uri)!r} conflicted with another writer's"
                f" {spec.max_commit_retries + 1} time(s): {_first_line(exc)}",
                hint="rerun the job (nothing was committed), or raise `max_commit_retries`",
            ) from exc
        except (DeltaError, OSError) as exc:
            raise StorageError(
                f"{where}: cannot commit to the Delta table {redact_url(self.uri)!r}: {_first_line(exc)}",
                hint="nothing was committed; check the table and the credentials",
            ) from exc
        self.committed = True
        table = _load_table(spec.uri, spec.storage_options, where, writing=True)
        version = table.version() if table is not None else None
        rows = sum(json.loads(a["stats"])["numRecords"] for a in self.actions)
        datums = tuple(
            Datum(full_uri(self.fs, f"{self.path}/{a['path']}"), a["size"], str(a["modification_time"]))
            for a in self.actions
        )
        record = {"kind": "delta", "version": version, "mode": spec.mode, "txn": txn, "files": len(self.actions)}
        return Written(self._full_uri(), rows, datums, record)

    def _written_partitions(self) -> list:
        combos = sorted({tuple(a["partition_values"].get(c) for c in self.partition_by) for a in self.actions}, key=str)
        if len(self.partition_by) == 1:
            return [(self.partition_by[0], "in", [c[0] if c[0] is not None else "" for c in combos])]
        return [[(c, "=", v if v is not None else "") for c, v in zip(self.partition_by, combo)] for combo in combos]

    def _full_uri(self) -> str:
        return full_uri(self.fs, self.path)

    def abort(self) -> None:
        """Delete the data files written by this run (best effort; the table is unchanged either way)."""
        for action in self.actions:
            with contextlib.suppress(Exception):  # cleanup must not hide the error that caused it
                self.fs.rm(f"{self.path}/{action['path']}")
        self.actions = []


def _castable(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether values of ``got`` fit a column of ``want`` without loss of meaning."""
    if got == want:
        return True
    if pa.types.is_integer(got) and (pa.types.is_integer(want) or pa.types.is_floating(want)):
        return True
    if pa.types.is_floating(got) and pa.types.is_floating(want):
        return True
    if pa.types.is_timestamp(got) and pa.types.is_timestamp(want):
        return (got.tz is None) == (want.tz is None)
    if pa.types.is_null(got):
        return True
    return (pa.types.is_string(got) or pa.types.is_large_string(got)) and (
        pa.types.is_string(want) or pa.types.is_large_string(want)
    )
