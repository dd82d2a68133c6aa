"""Reading a Delta table: one Dask partition per data file, deletion vectors applied on the workers."""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from dpipe.errors import ColumnError, DataError, StorageError
from dpipe.io.arrow import arrow_to_pandas, empty_frame
from dpipe.io.connector import BadFileLog, Datum, OpenedSource
from dpipe.io.delta.table import _check_protocol, _delta_errors, _first_line, _load_table
from dpipe.io.filters import coerce, filter_columns, filter_expression
from dpipe.io.fs import full_uri, resolve
from dpipe.spec.base import redact_url
from dpipe.spec.delta import DeltaSourceSpec


def _relative(uri: str, root: str, *, decode: bool = True) -> str:
    """A data file's path relative to the table root, as it is named on storage.

    The log's ``path`` and the deletion vectors' ``filepath`` are URIs: percent-encoded once more
    than the file's name (``city=New%2520York`` for the folder ``city=New%20York``), so they are
    decoded once (``decode``); ``file_uris()`` already gives the names as on storage.
    """
    uri, root = uri.removeprefix("file://"), root.removeprefix("file://")
    if decode:
        uri = urllib.parse.unquote(uri)
    root = urllib.parse.unquote(root).rstrip("/") + "/"
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
    #: The columns ``filter`` reads (read along with ``columns`` when a deletion vector masks the file).
    filter_columns: tuple[str, ...] = ()
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
            needed = sorted(set(columns) | set(task.filter_columns), key=task.schema.names.index)
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
        expression = filter_expression(spec.filters, schema, where) if spec.filters else None
        root = table.table_uri
        actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
        total = len(actions)
        if spec.filters:
            kept = {_relative(u, root, decode=False) for u in self._pruned(table, schema)}
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
                    filter_columns=tuple(filter_columns(spec.filters or [])),
                    keep=None if keep is None else np.packbits(keep).tobytes(),
                    rows=0 if keep is None else len(keep),
                    bad_file_log=bad_file_log,
                    fs_token=str(getattr(fs, "_fs_token", "")),
                )
            )
            # A deletion vector changes a file's rows without touching the file: it is in the version.
            version = str(action["modification_time"])
            if keep is not None:
                version += ":dv=" + hashlib.sha1(np.packbits(keep).tobytes()).hexdigest()[:16]
            datums.append(Datum(full_uri(fs, file_path), action["size_bytes"], version))
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
            [(c, "=" if op == "==" else op, coerce(v, schema.field(c).type)) for c, op, v in group] for group in groups
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
