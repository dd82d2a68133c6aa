"""The file connectors: partitioned Parquet, CSV and JSON-lines data as a Dask DataFrame.

Discovery is one listing (:func:`dpipe.io.listing.list_files`, which also gives each file's size
and version); Hive partition pruning and filter translation use ``pyarrow.dataset`` on the client
(only the listing and one file footer are touched there). Every file then becomes one Dask
partition read by a worker with column projection and the row filter pushed into pyarrow, so row
groups whose statistics exclude the filter are skipped. A file that fails to read is named in the
error.

``read`` and ``BadFileLog`` stay importable from here (older code imports them so); ``Source`` is
now the connector protocol, and an opened source is a :class:`~dpipe.io.OpenedSource`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import dataclass
from typing import ClassVar

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io.arrow import arrow_to_pandas, empty_frame
from dpipe.io.connector import BadFileLog, OpenedSource, Source
from dpipe.io.fs import full_uri, resolve, storage_errors
from dpipe.io.listing import list_files
from dpipe.io.registry import read
from dpipe.spec.source import CSVSourceSpec, FileSourceSpec, JSONSourceSpec, ParquetSourceSpec

__all__ = ["BadFileLog", "CSVSource", "FileSource", "JSONSource", "ParquetSource", "Source", "read", "read_fragment"]


@dataclass(frozen=True)
class FragmentTask:
    """What a worker needs to read one file: picklable, tokenised by content."""

    fragment: ds.Fragment
    uri: str
    schema: pa.Schema
    columns: tuple[str, ...]
    filter: ds.Expression | None = None
    bad_file_log: BadFileLog | None = None
    fs_token: str = ""

    def __dask_tokenize__(self):
        # The filesystem's token (a hash of its options) keeps two reads of one URL with other
        # storage_options from sharing Dask keys, and so from sharing one filesystem.
        skip = self.bad_file_log.uri if self.bad_file_log else None
        return (self.uri, self.fs_token, str(self.fragment.partition_expression), self.columns, str(self.filter), skip)


def read_fragment(task: FragmentTask, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one file (runs on a worker); partition columns come from the file's directory.

    ``columns`` (a subset of ``task.columns``) is how Dask pushes a column projection of the
    frame into the read: with it, a computation that needs fewer columns reads fewer bytes.
    With a ``bad_file_log`` a file that cannot be read gives an empty frame of the right columns
    and types, and the file and its error are recorded in the log instead of failing the task.
    """
    columns = list(task.columns) if columns is None else list(columns)
    try:
        table = task.fragment.to_table(schema=task.schema, columns=columns, filter=task.filter)
    except FileNotFoundError as exc:
        raise StorageError(
            f"source: file {task.uri!r} disappeared while reading",
            hint="do not modify the input while a job runs",
        ) from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        error = str(exc).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if task.bad_file_log is None:
            raise DataError(
                f"source: cannot read file {task.uri!r}: {error}",
                hint="the file is corrupt or its schema differs from the other files; fix or remove it,"
                " or set `quarantine.bad_files: skip` to leave such files out",
            ) from exc
        task.bad_file_log.record(task.uri, error)
        table = pa.schema([task.schema.field(c) for c in columns]).empty_table()
    return arrow_to_pandas(table)


@contextlib.contextmanager
def _unreadable(where: str, uri: str):
    """Discovery reads the first file's schema: a corrupt or empty one is a data error."""
    try:
        yield
    except pa.ArrowInvalid as exc:
        raise DataError(
            f"{where}: cannot read {uri!r}: {str(exc).splitlines()[0][:300]}",
            hint=f"the file named above is corrupt or empty: fix or remove it, or check `{where}.format`",
        ) from exc


class FileSource:
    """Files of one format, read through ``pyarrow.dataset``: one Dask partition per file.

    Subclasses name their spec model and the ``pyarrow.dataset`` file format. Every fragment is
    read with the dataset's unified schema, so CSV and JSON files are converted to the types
    inferred from the first file, not each to its own.
    """

    Spec: ClassVar[type[FileSourceSpec]] = FileSourceSpec
    file_format: ClassVar[type[ds.FileFormat]]

    def __init__(self, spec: FileSourceSpec, *, where: str = "source"):
        self.spec = spec
        self.where = where

    def open(self, *, bad_file_log: BadFileLog | None = None) -> OpenedSource:
        spec, where, uri = self.spec, self.where, self.spec.uri
        fs, path = resolve(uri, spec.storage_options, where=f"{where}.uri")
        hive = ds.HivePartitioning.discover(infer_dictionary=False) if spec.partitioning == "hive" else None
        with _unreadable(where, uri), storage_errors(f"{where}.uri", uri):
            listing = list_files(fs, path)
            base = {} if listing.base is None else {"partition_base_dir": listing.base}
            dataset = ds.dataset(
                list(listing.paths), filesystem=fs, format=self.file_format(), partitioning=hive, **base
            )
        try:
            schema = dataset.schema
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{where}: cannot read the schema of {uri!r}: {exc}") from exc
        if len(schema) == 0:
            raise DataError(
                f"{where}: no {spec.format} data found under {uri!r}",
                hint=f"check `{where}.uri` and `{where}.format`",
            )
        partitioning = getattr(dataset, "partitioning", None)
        partition_columns = list(partitioning.schema.names) if partitioning is not None else []
        # A partition key can shadow a same-named column inside the files; the directory wins.
        available = list(schema.names)
        selected = list(spec.columns) if spec.columns else available
        missing = [c for c in selected if c not in available]
        if missing:
            raise ColumnError(
                f"{where}.columns: column(s) {missing} not found in {uri!r}; available: {available}",
                hint=f"fix `{where}.columns`",
            )
        expression = _filter_expression(spec.filters, schema, where) if spec.filters else None
        try:
            with storage_errors(f"{where}.uri", uri):
                fragments = list(dataset.get_fragments(filter=expression))
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            types = {c: str(schema.field(c).type) for c in _filter_columns(spec.filters or [])}
            raise SpecError(
                f"{where}.filters: the filter values do not match the column types {types}: {str(exc).splitlines()[0]}",
                hint=f"compare numbers with numbers and strings with quoted strings in `{where}.filters`",
            ) from exc
        if not fragments:
            raise DataError(
                f"{where}: no file under {uri!r} matches `{where}.filters`",
                hint="loosen the filters or check the partition values",
            )
        tasks = [
            FragmentTask(
                fragment=fragment,
                uri=full_uri(fs, fragment.path),
                schema=schema,
                columns=tuple(selected),
                filter=expression,
                bad_file_log=bad_file_log,
                fs_token=str(getattr(fs, "_fs_token", "")),
            )
            for fragment in fragments
        ]
        # `read_fragment` takes `columns=`, so Dask pushes projections (`frame[["a", "b"]]`) into it.
        frame = dd.from_map(
            read_fragment,
            tasks,
            meta=empty_frame(schema, selected),
            label=f"dpipe-read-{spec.format}",
            enforce_metadata=False,
        )
        return OpenedSource(
            uri=uri,
            format=spec.format,
            frame=frame,
            schema=schema,
            files=[t.uri for t in tasks],
            datums=listing.datums(fragment.path for fragment in fragments),
            record=listing.record(),
            partition_columns=partition_columns,
        )


class ParquetSource(FileSource):
    """``format: parquet``: Parquet files, row groups skipped by their statistics."""

    Spec = ParquetSourceSpec
    file_format = ds.ParquetFileFormat


class CSVSource(FileSource):
    """``format: csv``: CSV files with a header row."""

    Spec = CSVSourceSpec
    file_format = ds.CsvFileFormat


class JSONSource(FileSource):
    """``format: json``: JSON lines, one object per line."""

    Spec = JSONSourceSpec
    file_format = ds.JsonFileFormat


def _filter_columns(filters: list) -> list[str]:
    groups = (
        filters if filters and isinstance(filters[0], list) and isinstance(filters[0][0], (list, tuple)) else [filters]
    )
    return sorted({f[0] for group in groups for f in group})


def _filter_expression(filters: list, schema: pa.Schema, where: str) -> ds.Expression:
    groups = filters if isinstance(filters[0], list) and isinstance(filters[0][0], (list, tuple)) else [filters]
    normalised = []
    for group in groups:
        conj = []
        for column, op, value in group:
            if column not in schema.names:
                raise ColumnError(
                    f"{where}.filters: column {column!r} not found; available: {schema.names}",
                    hint=f"fix `{where}.filters`",
                )
            conj.append((column, "==" if op == "=" else op, _coerce(value, schema.field(column).type)))
        normalised.append(conj)
    try:
        return pq.filters_to_expression(normalised)
    except (TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise SpecError(f"{where}.filters: {exc}") from exc


def _coerce(value, arrow_type: pa.DataType):
    """YAML turns 2024-03-01 into a date; compare it as text against string partition keys."""
    if isinstance(value, list):
        return [_coerce(v, arrow_type) for v in value]
    if isinstance(value, (_dt.date, _dt.datetime)) and pa.types.is_string(arrow_type):
        return value.isoformat()
    return value
