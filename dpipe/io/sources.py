"""Read partitioned Parquet, CSV and JSON-lines data into a Dask DataFrame.

Discovery, Hive partition pruning and filter translation use ``pyarrow.dataset`` on the client
(only listings and one file footer are touched there); every file then becomes one Dask partition
read by a worker with column projection and the row filter pushed into pyarrow, so row groups
whose statistics exclude the filter are skipped. A file that fails to read is named in the error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dpipe.errors import ColumnError, DataError, SpecError, StorageError
from dpipe.io.fs import full_uri, resolve, storage_errors

_GLOB = set("*?[")


def _types_mapper(dtype: pa.DataType):
    # Arrow-backed strings: no Python objects, and the same dtype Dask itself would pick.
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return pd.StringDtype("pyarrow")
    # Nullable booleans: numpy has no missing bool, so a file with a missing value would give
    # object, which Dask then turns into the strings 'True'/'False' in that partition only.
    if pa.types.is_boolean(dtype):
        return pd.BooleanDtype()
    return None


def arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    # Decimals would become Python Decimal objects, which Dask turns into text: read them as
    # float64 (what XGBoost uses anyway), in the meta and in every partition alike. Dictionary
    # columns (pandas writes its categories so) would become categories that differ from file to
    # file: read their values; the `categorical` op learns one vocabulary for all files.
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.float64()))
        elif pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table.to_pandas(types_mapper=_types_mapper, self_destruct=True, split_blocks=True)


def _file_format(fmt: str):
    # Every fragment is later read with the dataset's unified schema, so CSV and JSON files are
    # converted to the types inferred from the first file, not each to its own.
    if fmt == "parquet":
        return ds.ParquetFileFormat()
    if fmt == "csv":
        return ds.CsvFileFormat()
    if fmt == "json":
        return ds.JsonFileFormat()
    raise SpecError(f"source.format: unknown format {fmt!r}")  # pragma: no cover - spec validates


@dataclass(frozen=True)
class BadFileLog:
    """A folder where workers record the input files they skipped, one small JSON file each.

    Records are named by a hash of the file's URI, so reading a file again (a retried task, a
    second pass) overwrites its record instead of adding one.
    """

    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def record(self, file: str, error: str) -> None:
        fs, path = resolve(self.uri, self.storage_options, where="bad files")
        name = hashlib.sha1(file.encode()).hexdigest()[:20]
        with storage_errors("bad files", self.uri):
            fs.makedirs(path, exist_ok=True)
            with fs.open(f"{path.rstrip('/')}/{name}.json", "w") as f:
                json.dump({"file": file, "error": error}, f)

    def records(self) -> list[dict[str, str]]:
        """Every record written so far, sorted by file."""
        fs, path = resolve(self.uri, self.storage_options, where="bad files")
        with storage_errors("bad files", self.uri):
            if not fs.exists(path):
                return []
            found = []
            for p in sorted(fs.glob(f"{path.rstrip('/')}/*.json")):
                with fs.open(p, "r") as f:
                    found.append(json.load(f))
        return sorted(found, key=lambda r: r["file"])

    def __dask_tokenize__(self):
        return ("dpipe-bad-file-log", self.uri)


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
    except FileNotFoundError:
        raise StorageError(
            f"source: file {task.uri!r} disappeared while reading",
            hint="do not modify the input while a job runs",
        ) from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        error = str(exc).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if task.bad_file_log is None:
            raise DataError(
                f"source: cannot read file {task.uri!r}: {error}",
                hint="the file is corrupt or its schema differs from the other files; fix or remove it,"
                " or set `quarantine.bad_files: skip` to leave such files out",
            ) from None
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
        ) from None


@dataclass
class Source:
    """A lazily read input: the Dask DataFrame plus what was selected to build it."""

    uri: str
    frame: dd.DataFrame
    files: list[str]
    schema: pa.Schema
    partition_columns: list[str] = field(default_factory=list)
    fs: Any = field(default=None, repr=False)
    paths: list[str] = field(default_factory=list, repr=False)

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    @functools.cached_property
    def nbytes(self) -> int | None:
        """Bytes of the selected files on storage (``None`` if the store cannot tell)."""
        try:
            return int(sum(self.fs.sizes(self.paths)))
        except Exception:  # noqa: BLE001 - a size is only a hint (join strategy); never fail on it
            return None


def read(
    uri: str,
    *,
    format: str = "parquet",
    columns: list[str] | None = None,
    filters: list | None = None,
    partitioning: str = "hive",
    storage_options: dict[str, Any] | None = None,
    on_bad_file: Literal["raise", "skip"] = "raise",
    bad_file_log: BadFileLog | None = None,
    where: str = "source",
) -> Source:
    """Open a partitioned dataset lazily.

    Parameters
    ----------
    uri
        A file, a directory (read recursively) or a glob, local or any fsspec URL.
    format
        ``parquet``, ``csv`` or ``json`` (JSON lines).
    columns
        Columns to read (projection); all when ``None``.
    filters
        ``[column, op, value]`` triples (AND), or a list of such lists (OR of ANDs).
    partitioning
        ``hive`` to parse ``key=value`` directories into columns, ``none`` to ignore them.
    storage_options
        Passed to the fsspec filesystem (credentials, endpoint).
    on_bad_file
        ``raise``: a file that cannot be read (corrupt, malformed rows, a column of another type)
        fails the computation with a :class:`DataError` naming it. ``skip``: that file's
        partition is empty and the file and its error are recorded in ``bad_file_log``. The
        first file is read on the client for the schema, so it must be readable either way.
    bad_file_log
        Where workers record skipped files; required with ``on_bad_file="skip"``.

    Examples
    --------
    >>> src = read("data/demo/events", columns=["f0", "country"], filters=[["date", ">=", "2024-06-01"]])
    >>> src.frame.npartitions, len(src.files)
    """
    if on_bad_file not in ("raise", "skip"):
        raise ValueError(f"`on_bad_file` must be 'raise' or 'skip'. Instead got {on_bad_file!r}")
    if on_bad_file == "skip" and bad_file_log is None:
        raise ValueError("`on_bad_file='skip'` needs a `bad_file_log` to record the skipped files in")
    fs, path = resolve(uri, storage_options, where=f"{where}.uri")
    hive = ds.HivePartitioning.discover(infer_dictionary=False) if partitioning == "hive" else None
    with _unreadable(where, uri), storage_errors(f"{where}.uri", uri):
        if _GLOB & set(path):
            paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
            if not paths:
                raise FileNotFoundError(f"no file matches {path}")
            base = path[: min(path.index(c) for c in _GLOB & set(path))].rsplit("/", 1)[0]
            dataset = ds.dataset(
                paths, filesystem=fs, format=_file_format(format), partitioning=hive, partition_base_dir=base
            )
        else:
            if not fs.exists(path):
                raise FileNotFoundError(path)
            dataset = ds.dataset(path, filesystem=fs, format=_file_format(format), partitioning=hive)
    try:
        schema = dataset.schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{where}: cannot read the schema of {uri!r}: {exc}") from None
    if len(schema) == 0:
        raise DataError(
            f"{where}: no {format} data found under {uri!r}",
            hint=f"check `{where}.uri` and `{where}.format`",
        )
    partitioning_ = getattr(dataset, "partitioning", None)
    partition_columns = list(partitioning_.schema.names) if partitioning_ is not None else []
    # A partition key can shadow a same-named column inside the files; the directory wins.
    available = list(schema.names)

    selected = list(columns) if columns else available
    missing = [c for c in selected if c not in available]
    if missing:
        raise ColumnError(
            f"{where}.columns: column(s) {missing} not found in {uri!r}; available: {available}",
            hint=f"fix `{where}.columns`",
        )
    expression = _filter_expression(filters, schema, where) if filters else None
    try:
        with storage_errors(f"{where}.uri", uri):
            fragments = list(dataset.get_fragments(filter=expression))
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        types = {c: str(schema.field(c).type) for c in _filter_columns(filters)}
        raise SpecError(
            f"{where}.filters: the filter values do not match the column types {types}: {str(exc).splitlines()[0]}",
            hint=f"compare numbers with numbers and strings with quoted strings in `{where}.filters`",
        ) from None
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
            bad_file_log=bad_file_log if on_bad_file == "skip" else None,
            fs_token=str(getattr(fs, "_fs_token", "")),
        )
        for fragment in fragments
    ]
    meta = arrow_to_pandas(pa.schema([schema.field(c) for c in selected]).empty_table())
    # `read_fragment` takes `columns=`, so Dask pushes projections (`frame[["a", "b"]]`) into it.
    frame = dd.from_map(read_fragment, tasks, meta=meta, label=f"dpipe-read-{format}", enforce_metadata=False)
    return Source(
        uri=uri,
        frame=frame,
        files=[t.uri for t in tasks],
        schema=schema,
        partition_columns=partition_columns,
        fs=fs,
        paths=[fragment.path for fragment in fragments],
    )


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
        raise SpecError(f"{where}.filters: {exc}") from None


def _coerce(value, arrow_type: pa.DataType):
    """YAML turns 2024-03-01 into a date; compare it as text against string partition keys."""
    if isinstance(value, list):
        return [_coerce(v, arrow_type) for v in value]
    if isinstance(value, (_dt.date, _dt.datetime)) and pa.types.is_string(arrow_type):
        return value.isoformat()
    return value
