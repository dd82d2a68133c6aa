"""The file connectors: partitioned Parquet, CSV and JSON-lines data as a Dask DataFrame.

Discovery is one listing (:func:`dpipe.io.listing.list_files`, which also gives each file's size
and version). Filters on Hive partition columns prune files on their paths alone; then the
schema of every selected file is read on the client (its Parquet footer, the first block of a
CSV or JSON file; in parallel, see :mod:`dpipe.io.schema`) and unified, so a column that only
later files have is read, types widen, and a column whose types do not agree names the file
that disagrees. Every file becomes one Dask partition, or several when it is larger than the
spec's ``partition_size`` (runs of row groups; byte ranges of whole lines), read by a worker with
column projection and the row filter pushed into pyarrow, so row groups whose statistics exclude
the filter are skipped. A file that fails to read is named in the error.

``read`` and ``BadFileLog`` stay importable from here (older code imports them so); ``Source`` is
now the connector protocol, and an opened source is a :class:`~dpipe.io.OpenedSource`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io.arrow import arrow_to_pandas, empty_frame
from dpipe.io.connector import BadFileLog, OpenedSource, Source
from dpipe.io.fs import resolve, storage_errors
from dpipe.io.listing import Listing, list_files
from dpipe.io.registry import read
from dpipe.io.schema import FileSchema, column_types, inspect_files, parquet_schema, text_schema, unify
from dpipe.spec.source import CSVSourceSpec, FileSourceSpec, JSONSourceSpec, ParquetSourceSpec

__all__ = [
    "BadFileLog",
    "ByteBlock",
    "CSVSource",
    "FileSource",
    "JSONSource",
    "ParquetSource",
    "RowGroups",
    "Source",
    "read",
    "read_fragment",
]

#: Bytes read past a block's end in the same request, to find the line break that ends it.
LOOKAHEAD = 64 * 1024
_BAD_FILE_HINT = (
    "the file is corrupt or its schema differs from the other files; fix or remove it,"
    " or set `quarantine.bad_files: skip` to leave such files out"
)


@dataclass(frozen=True)
class RowGroups:
    """A run of a Parquet file's row groups, by index (one partition of a split file)."""

    ids: tuple[int, ...]

    def fragment(self, file: ds.Fragment) -> ds.Fragment:
        # `subset` reads the footer (that the read needs anyway) and keeps the ids in order;
        # `make_fragment(row_groups=...)`, which pickling uses too, would not.
        return file.subset(row_group_ids=list(self.ids))


@dataclass(frozen=True)
class ByteBlock:
    """Bytes ``[start, end)`` of a text file of ``size`` bytes, read as whole lines (one partition).

    A line belongs to the block that holds the line break before it (the first line to the
    first block), so consecutive blocks read every line exactly once; a block reads on past
    ``end`` to finish its last line. ``column_names`` (CSV) name the columns of a block that
    does not start with the header.
    """

    start: int
    end: int
    size: int
    column_names: tuple[str, ...] | None = None

    def fragment(self, file: ds.Fragment) -> ds.Fragment | None:
        """The block's lines as an in-memory fragment of the file's format (``None``: no lines)."""
        fs = getattr(getattr(file.filesystem, "handler", None), "fs", None)
        if fs is not None:
            # An fsspec store: exact ranged reads (a buffered file would read ahead a whole block).
            data = _lines(lambda n, at: fs.cat_file(file.path, start=at, end=at + n), self.size, self.start, self.end)
        else:
            with file.open() as f:
                data = _lines(f.read_at, self.size, self.start, self.end)
        if not data.strip():
            return None
        fmt = file.format
        if self.column_names is not None:
            fmt = ds.CsvFileFormat(
                parse_options=fmt.parse_options,
                read_options=pacsv.ReadOptions(column_names=list(self.column_names)),
                convert_options=fmt.default_fragment_scan_options.convert_options,
            )
        return fmt.make_fragment(pa.py_buffer(data), partition_expression=file.partition_expression)


#: A part of a file that is one partition: what :meth:`FileSource.parts` splits a file into.
Part = RowGroups | ByteBlock


@dataclass(frozen=True)
class FragmentTask:
    """What a worker needs to read one partition: picklable, tokenised by content.

    A partition is a whole file (``fragment``) or a ``part`` of it: :class:`RowGroups` of a
    Parquet file, a :class:`ByteBlock` of a text file. ``uri`` is the file's, ``label`` the
    partition's (``OpenedSource.files``; the file's URI when the file is not split). ``error``
    marks a file that is known to be unreadable (a column of another type): it is not read, and
    is skipped or fails as a file that cannot be read does.
    """

    fragment: ds.Fragment
    uri: str
    schema: pa.Schema
    columns: tuple[str, ...]
    filter: ds.Expression | None = None
    bad_file_log: BadFileLog | None = None
    fs_token: str = ""
    label: str = ""
    part: Part | None = None
    error: str | None = None

    def __dask_tokenize__(self):
        # The filesystem's token (a hash of its options) keeps two reads of one URL with other
        # storage_options from sharing Dask keys, and so from sharing one filesystem.
        skip = self.bad_file_log.uri if self.bad_file_log else None
        return (
            self.uri,
            self.label,
            self.fs_token,
            str(self.fragment.partition_expression),
            self.columns,
            str(self.filter),
            skip,
            self.part,
            self.error,
        )


def read_fragment(task: FragmentTask, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one partition (runs on a worker); partition columns come from the file's directory.

    ``columns`` (a subset of ``task.columns``) is how Dask pushes a column projection of the
    frame into the read: with it, a computation that needs fewer columns reads fewer bytes.
    With a ``bad_file_log`` a file that cannot be read gives an empty frame of the right columns
    and types, and the file and its error are recorded in the log instead of failing the task.
    """
    columns = list(task.columns) if columns is None else list(columns)
    if task.error is not None:
        return _unreadable(task, columns, task.error)
    try:
        table = _read_table(task, columns)
    except FileNotFoundError as exc:
        raise StorageError(
            f"source: file {task.uri!r} disappeared while reading",
            hint="do not modify the input while a job runs",
        ) from exc
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        error = str(exc).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return _unreadable(task, columns, error, exc)
    return arrow_to_pandas(table)


def _unreadable(task: FragmentTask, columns: list[str], error: str, exc: BaseException | None = None) -> pd.DataFrame:
    if task.bad_file_log is None:
        raise DataError(f"source: cannot read file {task.uri!r}: {error}", hint=_BAD_FILE_HINT) from exc
    task.bad_file_log.record(task.uri, error)
    return arrow_to_pandas(_empty(task.schema, columns))


def _empty(schema: pa.Schema, columns: list[str]) -> pa.Table:
    return pa.schema([schema.field(c) for c in columns]).empty_table()


def _read_table(task: FragmentTask, columns: list[str]) -> pa.Table:
    fragment = task.fragment if task.part is None else task.part.fragment(task.fragment)
    if fragment is None:
        return _empty(task.schema, columns)
    return fragment.to_table(schema=task.schema, columns=columns, filter=task.filter)


def _lines(read_at: Callable[[int, int], bytes], size: int, start: int, end: int) -> bytes:
    """The lines whose preceding line break is in ``[start, end)`` (from byte 0 if ``start`` is 0).

    ``read_at(n, offset)`` reads ``n`` bytes at ``offset``: usually once, :data:`LOOKAHEAD`
    bytes past ``end``; again only while a line runs on.
    """
    end = min(end, size)
    data = read_at(min(size, end + LOOKAHEAD) - start, start)

    def line_break(i: int) -> int:
        # The first b"\n" at or after data[i], reading on while the file has more.
        nonlocal data
        while (j := data.find(b"\n", i)) < 0 and start + len(data) < size:
            data += read_at(min(size - start - len(data), max(len(data), LOOKAHEAD)), start + len(data))
        return j

    begin = 0
    if start > 0:
        j = line_break(0)
        if j < 0:
            return b""  # the line that covers `start` runs to the end of the file: the block before reads it
        begin = j + 1
    stop = len(data)
    if end < size:
        j = line_break(end - start)
        stop = len(data) if j < 0 else j + 1
    return data[begin:stop] if stop > begin else b""


def _arrow_filesystem(fs: Any) -> pafs.FileSystem:
    """The fsspec filesystem as ``pyarrow.dataset`` wraps it (pyarrow's own for the local disk)."""
    if type(fs).__name__ == "LocalFileSystem":
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


class FileSource:
    """Files of one format, read through ``pyarrow.dataset``: one Dask partition per file (or part).

    Subclasses name their spec model, the ``pyarrow.dataset`` file format, how one file's schema
    is read on the client (:meth:`inspect_file`) and how a large file is split (:meth:`parts`).
    Every partition is read with the unified schema, so CSV and JSON files are converted to the
    types inferred from all of them, not each to its own.
    """

    Spec: ClassVar[type[FileSourceSpec]] = FileSourceSpec
    file_format: ClassVar[type[ds.FileFormat]]

    def __init__(self, spec: FileSourceSpec, *, where: str = "source"):
        self.spec = spec
        self.where = where

    def inspect_file(self, fs: Any, path: str, size: int | None, file_format: ds.FileFormat) -> FileSchema:
        """One file's schema, read on the client (in a thread pool, a file per call)."""
        raise NotImplementedError

    def parts(self, info: FileSchema, uri: str, target: int | None) -> list[tuple[str, Part | None]]:
        """``(label, part)`` of each partition of one file: the whole file (``None``) by default."""
        return [(uri, None)]

    def open(self, *, bad_file_log: BadFileLog | None = None) -> OpenedSource:
        spec, where, uri = self.spec, self.where, self.spec.uri
        fs, path = resolve(uri, spec.storage_options, where=f"{where}.uri")
        types = column_types(spec.schema_, where)
        file_format = self.file_format()
        with storage_errors(f"{where}.uri", uri):
            listing = list_files(fs, path)
        self._found(len(listing.paths))
        factory = self._factory(fs, listing, file_format)
        # The Hive columns come from the paths alone; filters on them prune before any file is read.
        partition = pa.schema([pa.field(f.name, types.get(f.name, f.type)) for f in factory.inspect(fragments=0)])
        paths = self._pruned(factory, partition, listing.paths)
        with storage_errors(f"{where}.uri", uri):
            sizes = [listing.datums_by_path[p].size for p in paths]
            infos = {i.path: i for i in inspect_files(fs, paths, sizes, self.inspect_file, file_format)}
        uris = {p: listing.datums_by_path[p].id for p in paths}
        schema, errors = self._unified(list(infos.values()), uris, types, partition, bad_file_log)
        self._found(len(schema))
        selected = self._selected(schema, types)
        expression = _filter_expression(spec.filters, schema, where) if spec.filters else None
        fragments = self._fragments(factory.finish(schema), expression, schema)
        target = spec.partition_bytes
        tasks = [
            FragmentTask(
                fragment=fragment,
                uri=uris[fragment.path],
                schema=schema,
                columns=tuple(selected),
                filter=expression,
                bad_file_log=bad_file_log,
                fs_token=str(getattr(fs, "_fs_token", "")),
                label=label,
                part=part,
                error=errors.get(fragment.path),
            )
            for fragment in fragments
            for label, part in (
                # A file that will not be read (unreadable, or of other types) stays one partition.
                self.parts(infos[fragment.path], uris[fragment.path], target)
                if infos[fragment.path].error is None and fragment.path not in errors
                else [(uris[fragment.path], None)]
            )
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
            files=[t.label for t in tasks],
            datums=listing.datums(fragment.path for fragment in fragments),
            record=listing.record(),
            partition_columns=list(partition.names),
        )

    def _found(self, n: int) -> None:
        if n == 0:
            raise DataError(
                f"{self.where}: no {self.spec.format} data found under {self.spec.uri!r}",
                hint=f"check `{self.where}.uri` and `{self.where}.format`",
            )

    def _factory(self, fs: Any, listing: Listing, file_format: ds.FileFormat) -> ds.FileSystemDatasetFactory:
        options = ds.FileSystemFactoryOptions(partition_base_dir=listing.base)
        if self.spec.partitioning == "hive":
            options.partitioning_factory = ds.HivePartitioning.discover(infer_dictionary=False)
        with storage_errors(f"{self.where}.uri", self.spec.uri):
            return ds.FileSystemDatasetFactory(_arrow_filesystem(fs), list(listing.paths), file_format, options)

    def _pruned(self, factory: ds.FileSystemDatasetFactory, partition: pa.Schema, paths: Sequence[str]) -> list[str]:
        """The files that the filters on partition columns keep (all, if some OR-group has none)."""
        groups = _partition_filters(self.spec.filters, partition.names)
        if groups is None:
            return list(paths)
        expression = _filter_expression(groups, partition, self.where)
        return [f.path for f in self._fragments(factory.finish(partition), expression, partition)]

    def _fragments(self, dataset: ds.Dataset, expression: ds.Expression | None, schema: pa.Schema) -> list:
        where = self.where
        try:
            with storage_errors(f"{where}.uri", self.spec.uri):
                fragments = list(dataset.get_fragments(filter=expression))
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            types = {c: str(schema.field(c).type) for c in _filter_columns(self.spec.filters or [])}
            raise SpecError(
                f"{where}.filters: the filter values do not match the column types {types}: {str(exc).splitlines()[0]}",
                hint=f"compare numbers with numbers and strings with quoted strings in `{where}.filters`",
            ) from exc
        if not fragments:
            raise DataError(
                f"{where}: no file under {self.spec.uri!r} matches `{where}.filters`",
                hint="loosen the filters or check the partition values",
            )
        return fragments

    def _unified(
        self,
        infos: list[FileSchema],
        uris: dict[str, str],
        types: dict[str, pa.DataType],
        partition: pa.Schema,
        bad_file_log: BadFileLog | None,
    ) -> tuple[pa.Schema, dict[str, str]]:
        """The files' unified schema with the partition columns, and the files left out of it.

        A file that cannot be read, or whose column types disagree with the other files', fails
        here, before any task, naming the file. With a bad-file log such files are left out of
        the schema instead, for the workers to record (a disagreeing one without reading it: its
        values might cast), as long as one file is readable to say what the data is.
        """
        where = self.where
        unreadable = [i for i in infos if i.error is not None]
        if unreadable and (bad_file_log is None or len(unreadable) == len(infos)):
            first = unreadable[0]
            raise DataError(f"{where}: cannot read file {uris[first.path]!r}: {first.error}", hint=_BAD_FILE_HINT)
        needed = None if not self.spec.columns else {*self.spec.columns, *_filter_columns(self.spec.filters or [])}
        paths = {uris[i.path]: i.path for i in infos}
        errors: dict[str, str] = {}
        while True:
            kept = [(uris[i.path], i.schema) for i in infos if i.schema is not None and i.path not in errors]
            schema, conflicts = unify(kept, types=types, needed=needed)
            if not conflicts:
                break
            conflict = conflicts[0]
            if bad_file_log is None:
                raise DataError(
                    f"{where}: cannot read file {conflict.got_in!r}: {conflict.message()}",
                    hint=f"cast the column upstream so that every file has one type, or give its type in"
                    f" `{where}.schema` (for example {{{conflict.column}: {conflict.expected}}}); or set"
                    " `quarantine.bad_files: skip` to leave such files out",
                )
            for file, got in conflict.files:
                errors[paths[file]] = (
                    f"column {conflict.column!r} is {got} in this file but {conflict.expected}"
                    f" in {conflict.expected_in!r}"
                )
        names = set(partition.names)
        fields = [partition.field(f.name) if f.name in names else f for f in schema]
        fields += [f for f in partition if f.name not in schema.names]
        return pa.schema(fields, metadata=schema.metadata), errors

    def _selected(self, schema: pa.Schema, types: dict[str, pa.DataType]) -> list[str]:
        """The columns read: ``columns``, all by default; ``columns`` and ``schema`` must name existing ones."""
        where, uri = self.where, self.spec.uri
        # A partition key can shadow a same-named column inside the files; the directory wins.
        available = list(schema.names)
        for key, named in (("schema", list(types)), ("columns", self.spec.columns or [])):
            missing = [c for c in named if c not in available]
            if missing:
                raise ColumnError(
                    f"{where}.{key}: column(s) {missing} not found in {uri!r}; available: {available}",
                    hint=f"fix `{where}.{key}`",
                )
        return list(self.spec.columns) if self.spec.columns else available


class ParquetSource(FileSource):
    """``format: parquet``: Parquet files, row groups skipped by their statistics.

    A file larger than ``partition_size`` with several row groups is read as several partitions,
    each a run of whole row groups (labelled ``<uri>#rg=<first>-<last>``).
    """

    Spec = ParquetSourceSpec
    file_format = ds.ParquetFileFormat

    def inspect_file(self, fs: Any, path: str, size: int | None, file_format: ds.FileFormat) -> FileSchema:
        return parquet_schema(fs, path, size, file_format)

    def parts(self, info: FileSchema, uri: str, target: int | None) -> list[tuple[str, Part | None]]:
        runs = _runs(info.row_group_bytes, target) if target is not None else []
        if len(runs) < 2:
            return [(uri, None)]
        return [(f"{uri}#rg={run[0]}-{run[-1]}", RowGroups(tuple(run))) for run in runs]


def _runs(sizes: Sequence[int], target: int) -> list[list[int]]:
    """Consecutive row groups, as many in each run as fit in ``target`` bytes (at least one)."""
    runs: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if current and total + n > target:
            runs.append(current)
            current, total = [], 0
        current.append(i)
        total += n
    return [*runs, current] if current else runs


class _TextSource(FileSource):
    """Lines of text: a file larger than ``partition_size`` is read as byte blocks of whole lines."""

    def inspect_file(self, fs: Any, path: str, size: int | None, file_format: ds.FileFormat) -> FileSchema:
        return text_schema(fs, path, size, file_format)

    def parts(self, info: FileSchema, uri: str, target: int | None) -> list[tuple[str, Part | None]]:
        size = info.size
        if target is None or size is None or not info.splittable or size <= target:
            return [(uri, None)]
        return [
            (
                f"{uri}#bytes={start}-{min(start + target, size)}",
                ByteBlock(start, min(start + target, size), size, info.header if start > 0 else None),
            )
            for start in range(0, size, target)
        ]


class CSVSource(_TextSource):
    """``format: csv``: CSV files with a header row."""

    Spec = CSVSourceSpec
    file_format = ds.CsvFileFormat


class JSONSource(_TextSource):
    """``format: json``: JSON lines, one object per line."""

    Spec = JSONSourceSpec
    file_format = ds.JsonFileFormat


def _partition_filters(filters: list | None, names: Sequence[str]) -> list[list] | None:
    """The filters' terms on partition columns, as OR-groups (``None``: they cannot prune)."""
    if not filters or not names:
        return None
    groups = [[f for f in group if f[0] in names] for group in _groups(filters)]
    return None if not all(groups) else groups


def _groups(filters: list) -> list:
    return filters if isinstance(filters[0], list) and isinstance(filters[0][0], (list, tuple)) else [filters]


def _filter_columns(filters: list) -> list[str]:
    return sorted({f[0] for group in (_groups(filters) if filters else []) for f in group})


def _filter_expression(filters: list, schema: pa.Schema, where: str) -> ds.Expression:
    normalised = []
    for group in _groups(filters):
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
