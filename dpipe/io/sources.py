"""The file connectors: partitioned Parquet, CSV and JSON-lines data as a Dask DataFrame.

Discovery is one listing (:func:`dpipe.io.listing.list_files`, which also gives each file's size
and version). Filters on Hive partition columns prune files on their paths alone; then the
schema of every selected file is read on the client (its Parquet footer, the first block of a
CSV or JSON file; in parallel, see :mod:`dpipe.io.schema`) and unified, so a column that only
later files have is read, types widen, and a column whose types do not agree names the file
that disagrees. Every file becomes one Dask partition, or several when it is larger than the
spec's ``partition_size`` (runs of row groups; byte ranges of whole lines), read by a worker with
column projection and the row filter pushed into pyarrow, so row groups whose statistics exclude
the filter are skipped. A file that fails to read is named in the error. Past the quality checks,
small files' partitions are combined into pieces of up to ``partition_size``
(:meth:`OpenedSource.combined`).

``read`` and ``BadFileLog`` stay importable from here (older code imports them so); ``Source`` is
now the connector protocol, and an opened source is a :class:`~dpipe.io.OpenedSource`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
import pyarrow.dataset as ds

from dpipe.errors import ColumnError, DataError, SpecError
from dpipe.io.arrow import empty_frame
from dpipe.io.connector import BadFileLog, Datum, Deferred, Increment, OpenedSource, Source, diff_datums
from dpipe.io.filters import filter_columns, filter_expression, partition_filters
from dpipe.io.fs import resolve, storage_errors
from dpipe.io.listing import Listing, list_files
from dpipe.io.parts import (
    BAD_FILE_HINT,
    ByteBlock,
    FragmentGroup,
    FragmentTask,
    Part,
    RowGroups,
    arrow_filesystem,
    read_fragment,
    read_fragments,
)
from dpipe.io.registry import read
from dpipe.io.schema import FileSchema, column_types, inspect_files, parquet_schema, text_schema, unify
from dpipe.spec.source import CSVSourceSpec, FileSourceSpec, JSONSourceSpec, ParquetSourceSpec

if TYPE_CHECKING:
    import dask.dataframe as dd

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
        opened = self._open(bad_file_log, None)
        assert isinstance(opened, OpenedSource)
        return opened

    def open_new(self, seen: Collection[Datum], *, bad_file_log: BadFileLog | None = None) -> Increment:
        """Only the files that are not among ``seen`` (by URI and ETag or mtime): the listing is
        diffed before any file is opened, so earlier files are not read at all (not even a footer)."""
        diff = self._open(bad_file_log, seen)
        assert isinstance(diff, Increment)
        return diff

    def _open(self, bad_file_log: BadFileLog | None, seen: Collection[Datum] | None) -> OpenedSource | Increment:
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
        diff = None
        if seen is not None:
            diff = diff_datums(listing.datums(paths), seen)
            if not diff.new:
                return diff
            new = {d.id for d in diff.new}
            paths = [p for p in paths if listing.datums_by_path[p].id in new]
        with storage_errors(f"{where}.uri", uri):
            sizes = [listing.datums_by_path[p].size for p in paths]
            infos = {i.path: i for i in inspect_files(fs, paths, sizes, self.inspect_file, file_format)}
        uris = {p: listing.datums_by_path[p].id for p in paths}
        schema, errors = self._unified(list(infos.values()), uris, types, partition, bad_file_log)
        self._found(len(schema))
        selected = self._selected(schema, types)
        expression = filter_expression(spec.filters, schema, where) if spec.filters else None
        fragments = [f for f in self._fragments(factory.finish(schema), expression, schema) if f.path in infos]
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
        sizes = [
            _part_bytes(infos[t.fragment.path], t.part, listing.datums_by_path[t.fragment.path].size) for t in tasks
        ]
        meta = empty_frame(schema, selected)
        frame = Deferred(functools.partial(_from_map, read_fragment, tasks, meta, f"dpipe-read-{spec.format}"), meta)

        def read_pieces(starts: list[int]) -> dd.DataFrame:
            groups = [FragmentGroup(tuple(tasks[a:b])) for a, b in zip(starts, starts[1:])]
            return _from_map(read_fragments, groups, meta, f"dpipe-read-{spec.format}-pieces")

        opened = OpenedSource(
            uri=uri,
            format=spec.format,
            frame=frame,
            schema=schema,
            files=[t.label for t in tasks],
            datums=listing.datums(fragment.path for fragment in fragments),
            record=listing.record(),
            partition_columns=list(partition.names),
            partition_sizes=() if None in sizes else tuple(n for n in sizes if n is not None),
            combine_to=target,
            read_pieces=read_pieces,
        )
        if diff is None:
            return opened
        return dataclasses.replace(diff, source=opened)

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
            return ds.FileSystemDatasetFactory(arrow_filesystem(fs), list(listing.paths), file_format, options)

    def _pruned(self, factory: ds.FileSystemDatasetFactory, partition: pa.Schema, paths: Sequence[str]) -> list[str]:
        """The files that the filters on partition columns keep (all, if some OR-group has none)."""
        groups = partition_filters(self.spec.filters, partition.names)
        if groups is None:
            return list(paths)
        expression = filter_expression(groups, partition, self.where)
        return [f.path for f in self._fragments(factory.finish(partition), expression, partition)]

    def _fragments(self, dataset: ds.Dataset, expression: ds.Expression | None, schema: pa.Schema) -> list:
        where = self.where
        try:
            with storage_errors(f"{where}.uri", self.spec.uri):
                fragments = list(dataset.get_fragments(filter=expression))
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            types = {c: str(schema.field(c).type) for c in filter_columns(self.spec.filters or [])}
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
            raise DataError(f"{where}: cannot read file {uris[first.path]!r}: {first.error}", hint=BAD_FILE_HINT)
        needed = None if not self.spec.columns else {*self.spec.columns, *filter_columns(self.spec.filters or [])}
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


def _from_map(read: Any, parts: list, meta: Any, label: str) -> dd.DataFrame:
    # `read` takes `columns=`, so Dask pushes projections (`frame[["a", "b"]]`) into it. Its
    # strings are Arrow strings already: no conversion layer (a task per partition where the
    # read has several consumers, as it has in a job's fit pass).
    import dask
    import dask.dataframe as dd

    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_map(read, parts, meta=meta, label=label, enforce_metadata=False)


def _part_bytes(info: FileSchema, part: Part | None, size: int | None) -> int | None:
    """Bytes on storage of one partition: the file's ``size``, or its part's share of it."""
    if isinstance(part, RowGroups):
        return sum(info.row_group_bytes[i] for i in part.ids)
    if isinstance(part, ByteBlock):
        return part.end - part.start
    return size if size is not None else info.size


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
