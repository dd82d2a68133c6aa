"""The parts of files that become partitions, and how a worker reads one.

A file is one part, or several when it is larger than ``partition_size``: runs of Parquet row
groups (:class:`RowGroups`), or byte ranges of whole lines of CSV and JSON-lines files
(:class:`ByteBlock`; a line belongs to the block holding the line break before it, so every line is
read exactly once). :class:`FragmentTask` is what a worker gets (picklable, tokenised by content),
:func:`read_fragment` what it runs.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from dpipe.errors import DataError, StorageError
from dpipe.io.arrow import arrow_to_pandas
from dpipe.io.connector import BadFileLog

#: Bytes read past a block's end in the same request, to find the line break that ends it.
LOOKAHEAD = 64 * 1024
BAD_FILE_HINT = (
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


@dataclass(frozen=True)
class FragmentGroup:
    """Consecutive partitions read by one task, one after the other (small files: a piece)."""

    tasks: tuple[FragmentTask, ...]

    def __dask_tokenize__(self):
        return tuple(t.__dask_tokenize__() for t in self.tasks)


def read_fragments(group: FragmentGroup, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a group's partitions (runs on a worker) into one frame, each as :func:`read_fragment`
    reads it (a bad file skipped and recorded as there)."""
    frames = [read_fragment(task, columns) for task in group.tasks]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


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
    except Exception as exc:
        failure = storage_failure(task.uri, exc)
        if failure is not None:
            raise failure from exc
        if not isinstance(exc, (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError)):
            raise

        error = str(exc).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return _unreadable(task, columns, error, exc)
    return arrow_to_pandas(table)


#: botocore's names for a request the store refused for its rate (raised once its retries ran out).
_THROTTLED = ("SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "503")
_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError")


def _worker() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError):
        return "the client"


def storage_failure(uri: str, exc: BaseException) -> StorageError | None:
    """A storage error met while reading ``uri`` on a worker, for what it is (``None``: the file's
    content is at fault, not the storage): naming the file, the worker and what to set.

    A file that was listed when the job was planned and that a worker cannot find was deleted
    meanwhile, or the worker does not see the storage the client sees: other credentials or
    another endpoint (a worker started without the client's ``AWS_*`` variables used to meet this).
    """
    name, text = type(exc).__name__, " ".join(str(exc).split())[:300]
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""
    who = _worker()
    if isinstance(exc, FileNotFoundError):
        return StorageError(
            f"source: file {uri!r} was listed when the job was planned, but {who} cannot find it ({text or name})",
            hint="do not modify the input while a job runs; if it is there, the worker sees other storage than the"
            " client: give the credentials and endpoint in `storage_options` or set AWS_ACCESS_KEY_ID,"
            " AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL where dpipe runs",
        )
    if isinstance(exc, PermissionError) or name in ("NoCredentialsError", "PartialCredentialsError"):
        return StorageError(
            f"source: {who} was denied access to file {uri!r} ({name}: {text})",
            hint="give the credentials in `storage_options` or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            " where dpipe runs (they travel to the workers), or on the workers",
        )
    # s3fs turns SlowDown and ServiceUnavailable into OSError(EBUSY) once botocore's retries ran out.
    busy = isinstance(exc, OSError) and exc.errno == errno.EBUSY
    if busy or code in _THROTTLED or any(t in text for t in _THROTTLED[:4]):
        return StorageError(
            f"source: the storage throttled {who} reading {uri!r} after its retries ({code or name})",
            hint="read with fewer workers or threads at once, or raise `storage_options.config_kwargs.retries`",
        )
    if name in _UNREACHABLE or isinstance(exc, (ConnectionError, TimeoutError)):
        return StorageError(
            f"source: {who} cannot reach the storage for {uri!r} ({name})",
            hint="check the endpoint (`storage_options.client_kwargs.endpoint_url` or AWS_ENDPOINT_URL) and that"
            " the workers' network reaches it",
        )
    return None


def _unreadable(task: FragmentTask, columns: list[str], error: str, exc: BaseException | None = None) -> pd.DataFrame:
    if task.bad_file_log is None:
        raise DataError(f"source: cannot read file {task.uri!r}: {error}", hint=BAD_FILE_HINT) from exc
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


def arrow_filesystem(fs: Any) -> pafs.FileSystem:
    """The fsspec filesystem as ``pyarrow.dataset`` wraps it (pyarrow's own for the local disk)."""
    if type(fs).__name__ == "LocalFileSystem":
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
