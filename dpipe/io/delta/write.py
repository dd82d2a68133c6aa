"""Writing a Delta table: data files from the workers, one transaction from the client."""

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
import pyarrow.parquet as pq

from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io.arrow import writable_schema
from dpipe.io.connector import Datum, Written
from dpipe.io.delta.read import _partition_value
from dpipe.io.delta.table import NULL_PARTITION, _first_line, _load_table, delta_storage_options
from dpipe.io.fs import full_uri, resolve, storage_errors
from dpipe.spec.base import redact_url
from dpipe.spec.delta import DeltaSinkSpec


def arrow_schema(meta: pd.DataFrame) -> pa.Schema:
    """The Delta-compatible Arrow schema of a frame (zoned timestamps as UTC instants)."""
    return writable_schema(meta, utc_timestamps=True)


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


_ACTIONS_META = pd.DataFrame({"action": pd.Series([], dtype=object)})


def _write_partition(frame: pd.DataFrame, task: DeltaWriteTask, partition_info: dict | None = None) -> pd.DataFrame:
    """:func:`write_delta_part` as a frame of its add actions (JSON), for ``map_partitions``."""
    index = partition_info["number"] if partition_info else 0
    actions = write_delta_part(frame, task, index)
    return pd.DataFrame({"action": pd.Series([json.dumps(a) for a in actions], dtype=object)})


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
        self.prefixes: list[str] = []
        self.committed = False
        #: A commit that failed in a way that may have landed (a timeout): its files are kept.
        self.outcome_unknown = False

    @classmethod
    def from_spec(cls, spec: DeltaSinkSpec, *, where: str = "output") -> DeltaSink:
        return cls(spec, where=where)

    def __enter__(self) -> DeltaSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def has_commit(self, txn: str) -> bool:
        """Whether the table already holds a commit of ``txn`` (checked before any work)."""
        if self.table is None:
            return False
        self.table.update_incremental()
        return self.table.transaction_version(txn) is not None

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
        _delta_types(schema, where, self.uri)
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
        self.prefixes.append(task.prefix)  # abort() finds the files of a write that failed halfway by it
        # A frame of add actions, one row per data file: one collection to compute, of the same
        # kind as the frame (so the run can compute it with the quality values in one pass).
        actions = frame.map_partitions(
            _write_partition, task, meta=_ACTIONS_META, enforce_metadata=False, align_dataframes=False
        )
        with storage_errors(self.where, self.uri):
            self.fs.makedirs(self.path, exist_ok=True)
            (written,) = (compute or dask.compute)(actions)
        results = [json.loads(a) for a in written["action"]]
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
            elif spec.mode == "overwrite_partitions":
                # Exactly the files of the partitions written are removed, NULL partitions included
                # (delta-rs's partition filters cannot name a NULL partition).
                self.table.create_write_transaction(
                    [*adds, *self._replaced_files()],
                    "append",
                    schema,
                    partition_by=self.partition_by or None,
                    commit_properties=properties,
                )
            else:
                self.table.create_write_transaction(
                    adds,
                    spec.mode,
                    schema,
                    partition_by=self.partition_by or None,
                    commit_properties=properties,
                )
        except CommitFailedError as exc:
            raise StorageError(
                f"{where}: the commit to the Delta table {redact_url(self.uri)!r} conflicted with another writer's"
                f" {spec.max_commit_retries + 1} time(s): {_first_line(exc)}",
                hint="rerun the job (nothing was committed), or raise `max_commit_retries`",
            ) from exc
        except (DeltaError, OSError) as exc:
            if self._landed(txn):
                self.committed = True  # the commit landed before the error (a timeout on the reply)
            else:
                self.outcome_unknown = txn is None
                raise StorageError(
                    f"{where}: cannot commit to the Delta table {redact_url(self.uri)!r}: {_first_line(exc)}",
                    hint="check the table and the credentials; "
                    + (
                        "nothing was committed"
                        if txn is not None
                        else "the commit may or may not have landed: its data files were kept (see the table's history)"
                    ),
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

    def _replaced_files(self) -> list:
        """Remove actions for every current file in a partition this run wrote."""
        from deltalake.transaction import RemoveAction

        assert self.table is not None and self.schema is not None
        types = {c: self.schema.field(c).type for c in self.partition_by}

        def key(values: Mapping[str, Any]) -> tuple:
            out = []
            for c in self.partition_by:
                v = values.get(c)
                out.append(_partition_value(v, types[c]).as_py() if isinstance(v, str) or v is None else v)
            return tuple(out)

        written = {key(a["partition_values"]) for a in self.actions}
        now = int(time.time() * 1000)
        removes = []
        for current in pa.table(self.table.get_add_actions(flatten=True)).to_pylist():
            values = {c: current.get(f"partition.{c}") for c in self.partition_by}
            if key(values) in written:
                removes.append(
                    RemoveAction(
                        path=current["path"],
                        data_change=True,
                        deletion_timestamp=now,
                        size=current["size_bytes"],
                        partition_values={c: _partition_text(v) for c, v in zip(self.partition_by, key(values))},
                    )
                )
        return removes

    def _landed(self, txn: str | None) -> bool:
        """Whether a commit that raised is in the table after all (known only with a ``txn``)."""
        if txn is None:
            return False
        with contextlib.suppress(Exception):
            table = _load_table(self.spec.uri, self.spec.storage_options, self.where, writing=True)
            return table is not None and table.transaction_version(txn) is not None
        return False

    def _full_uri(self) -> str:
        return full_uri(self.fs, self.path)

    def abort(self) -> None:
        """Delete the data files written by this run (best effort; the table is unchanged either way).

        Files of partitions written before another partition failed are found by the write's
        prefix. After a commit whose outcome is unknown nothing is deleted: the table may
        reference the files (an unreferenced file is only space; a referenced one gone is a
        broken table).
        """
        if self.committed or self.outcome_unknown:
            return
        paths = {f"{self.path}/{a['path']}" for a in self.actions}
        for prefix in self.prefixes:
            with contextlib.suppress(Exception):
                for pattern in ("", "**/"):  # the table's root, and its partition folders
                    paths.update(self.fs.glob(f"{self.path}/{pattern}part-{prefix}-*.parquet"))
        for path in paths:
            with contextlib.suppress(Exception):  # cleanup must not hide the error that caused it
                self.fs.rm(path)
        self.actions = []
        self.prefixes = []


def _delta_types(schema: pa.Schema, where: str, uri: str) -> None:
    """Every column must have a Delta type: found here, not by the commit after all the work."""
    from deltalake.schema import Schema as DeltaSchema

    for f in schema:
        try:
            DeltaSchema.from_arrow(pa.schema([f]))
        except Exception as exc:  # noqa: BLE001 - delta-rs raises plain Exceptions for schema errors
            raise DataError(
                f"{where}: column {f.name!r} has type {f.type}, which a Delta table cannot hold ({redact_url(uri)!r})",
                hint="cast it to a supported type (numbers, strings, booleans, dates, timestamps, decimals)",
            ) from exc


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
