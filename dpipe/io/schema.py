"""The schema of many files: each file's own (a Parquet footer, the first block of a CSV or JSON
file), read on the client in parallel, and one unified schema that every file is then read with.

Only footers and first blocks are read: one ranged request per file (a second one for a Parquet
footer larger than :data:`FOOTER_BYTES`), many at a time, with the sizes the listing already
gave. Unification widens types (int32 and int64 to int64, int and float to float64, null to
anything, a date to a timestamp); types that do not widen into one another are a
:class:`Conflict` that names the column, both types and the file that disagrees with the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.utils import infer_compression

from dpipe.errors import SpecError
from dpipe.spec.source import parse_type_name

#: Bytes read from the end of a Parquet file for its footer, in one request (most footers fit).
FOOTER_BYTES = 64 * 1024
#: Bytes at the start of a CSV or JSON-lines file that its types are inferred from (pyarrow's
#: block size: the same bytes ``pyarrow.dataset`` would infer the first file's types from).
SAMPLE_BYTES = 1 << 20
#: Files inspected at once: the round trips of an object store overlap.
THREADS = 16
_PARSE_ERRORS = (pa.ArrowException, OSError, ValueError)


@dataclass(frozen=True)
class FileSchema:
    """What the client learnt about one file: its schema, or why it could not be read.

    ``row_group_bytes`` are a Parquet file's row group sizes on storage (compressed); ``header``
    is a CSV file's column names, in file order; ``splittable`` says that byte ranges of the file
    can be read on their own (an uncompressed text file of known size).
    """

    path: str
    size: int | None
    schema: pa.Schema | None = None
    error: str | None = None
    row_group_bytes: tuple[int, ...] = ()
    header: tuple[str, ...] | None = None
    splittable: bool = False


#: How a format reads one file's schema: ``(fs, path, size, file_format) -> FileSchema``.
Inspector = Callable[[Any, str, "int | None", ds.FileFormat], FileSchema]


def inspect_files(
    fs: Any, paths: Sequence[str], sizes: Sequence[int | None], inspect: Inspector, file_format: ds.FileFormat
) -> list[FileSchema]:
    """Every file's :class:`FileSchema`, in the order of ``paths``, read in parallel.

    A file whose content cannot be parsed gets ``error`` set; storage failures (a denied or
    vanished file) are raised as they are, for :func:`dpipe.io.fs.storage_errors` to translate.
    """
    if len(paths) <= 1:
        return [inspect(fs, p, s, file_format) for p, s in zip(paths, sizes)]
    with ThreadPoolExecutor(max_workers=min(THREADS, len(paths)), thread_name_prefix="dpipe-schema") as pool:
        return list(pool.map(lambda p, s: inspect(fs, p, s, file_format), paths, sizes))


def parquet_schema(fs: Any, path: str, size: int | None, file_format: ds.FileFormat) -> FileSchema:
    """The footer of a Parquet file: its Arrow schema and the size of each row group."""
    tail = _tail(fs, path, size)
    try:
        meta = pq.read_metadata(pa.BufferReader(tail))
        schema = meta.schema.to_arrow_schema()
        groups = tuple(
            sum(meta.row_group(i).column(j).total_compressed_size for j in range(meta.num_columns))
            for i in range(meta.num_row_groups)
        )
    except _PARSE_ERRORS as exc:
        return FileSchema(path, size, error=_first_line(exc) if tail else "the file is empty")
    return FileSchema(path, size, schema=schema, row_group_bytes=groups)


def text_schema(fs: Any, path: str, size: int | None, file_format: ds.FileFormat) -> FileSchema:
    """The types pyarrow infers from the first :data:`SAMPLE_BYTES` (whole lines) of a CSV or JSON file."""
    compression = infer_compression(path)
    sample = _head(fs, path, size, compression)
    try:
        schema = file_format.inspect(pa.py_buffer(sample))
    except _PARSE_ERRORS as exc:
        return FileSchema(path, size, error=_first_line(exc) if sample else "the file is empty")
    header = tuple(schema.names) if isinstance(file_format, ds.CsvFileFormat) else None
    return FileSchema(path, size, schema=schema, header=header, splittable=compression is None and size is not None)


def _tail(fs: Any, path: str, size: int | None) -> bytes:
    if size == 0:
        return b""
    n = FOOTER_BYTES if size is None else min(size, FOOTER_BYTES)
    data = fs.cat_file(path, start=-n if size is None else size - n)
    if len(data) >= 8 and data[-4:] == b"PAR1":
        needed = int.from_bytes(data[-8:-4], "little") + 8
        if size is not None and len(data) < needed <= size:
            data = fs.cat_file(path, start=size - needed, end=size - len(data)) + data
    return data


def _head(fs: Any, path: str, size: int | None, compression: str | None) -> bytes:
    """The first whole lines of at least :data:`SAMPLE_BYTES` (all of a smaller file)."""
    stream = None if compression is None else fs.open(path, "rb", compression=compression)
    buffer = b""

    def first(n: int) -> bytes:
        nonlocal buffer
        if stream is None:
            return fs.cat_file(path, start=0, end=n if size is None else min(size, n))
        while len(buffer) < n and (chunk := stream.read(n - len(buffer))):
            buffer += chunk
        return buffer[:n]

    try:
        n = SAMPLE_BYTES
        while True:
            data = first(n)
            if len(data) < n or (stream is None and size is not None and n >= size):
                return data  # the whole file
            if b"\n" in data:
                return data[: data.rfind(b"\n") + 1]
            n *= 2  # a first line longer than the sample
    finally:
        if stream is not None:
            stream.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- unification --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conflict:
    """Column ``column`` is ``expected`` in ``expected_in`` (and most files) but ``got`` in ``got_in``.

    ``files`` are all the files whose type does not widen into ``expected``, with their types.
    """

    column: str
    expected: pa.DataType
    expected_in: str
    got: pa.DataType
    got_in: str
    files: tuple[tuple[str, pa.DataType], ...]

    def message(self) -> str:
        return f"column {self.column!r} is {self.expected} in {self.expected_in!r} but {self.got} in {self.got_in!r}"


def unify(
    schemas: Sequence[tuple[str, pa.Schema]],
    *,
    types: Mapping[str, pa.DataType] | None = None,
    needed: Iterable[str] | None = None,
) -> tuple[pa.Schema, list[Conflict]]:
    """One schema for ``(file, schema)`` pairs, and the conflicts among the ``needed`` columns.

    Columns keep the order in which the files first show them; a column missing from some files
    is nullable (it is read as nulls there). ``types`` (a source's ``schema:``) fix a column's
    type whatever the files say. A conflict in a column that is not ``needed`` (``None``: all
    are) is no error: the column gets the type most files have and is never read.
    """
    types = dict(types or {})
    wanted = None if needed is None else set(needed)
    seen: dict[str, list[tuple[str, pa.DataType]]] = {}
    for file, schema in schemas:
        for f in schema:
            seen.setdefault(f.name, []).append((file, f.type))
    fields, conflicts = [], []
    for name, found in seen.items():
        if name in types:
            fields.append(pa.field(name, types[name]))
            continue
        merged = _fold(t for _, t in found)
        if merged is None:
            counts = Counter(str(t) for _, t in found)
            expected_in, expected = max(found, key=lambda ft: counts[str(ft[1])])  # ties: the first file
            bad = [(file, t) for file, t in found if _merge(expected, t) is None]
            merged = _fold(t for _, t in found if _merge(expected, t) is not None)
            if wanted is None or name in wanted:
                conflicts.append(Conflict(name, expected, expected_in, bad[0][1], bad[0][0], tuple(bad)))
        fields.append(pa.field(name, merged))
    metadata = schemas[0][1].metadata if schemas else None
    return pa.schema(fields, metadata=metadata), conflicts


def _fold(types: Iterable[pa.DataType]) -> Any:
    merged: pa.DataType | None = None
    for t in types:
        merged = t if merged is None else _merge(merged, t)
        if merged is None:
            return None
    return merged


def _merge(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type both widen to, or ``None`` if they do not (string and int64)."""
    if a.equals(b):
        return a
    if pa.types.is_dictionary(a) or pa.types.is_dictionary(b):
        # Files encode a column as a dictionary or not (pandas categories): compare the values.
        return _merge(_values(a), _values(b))
    # A day is a timestamp at midnight.
    if pa.types.is_date(a) and pa.types.is_timestamp(b):
        return b
    if pa.types.is_timestamp(a) and pa.types.is_date(b):
        return a
    try:
        return (
            pa.unify_schemas([pa.schema([("c", a)]), pa.schema([("c", b)])], promote_options="permissive").field(0).type
        )
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _values(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


# -- explicit types -----------------------------------------------------------------------------
_PARAMETRIC: dict[str, Callable[..., pa.DataType]] = {
    "timestamp": lambda unit, tz=None: pa.timestamp(unit, tz=tz),
    "duration": pa.duration,
    "time32": pa.time32,
    "time64": pa.time64,
    "decimal128": pa.decimal128,
    "decimal256": pa.decimal256,
}
_ALIASES = {"boolean": "bool", "str": "string"}


def arrow_type(name: str) -> pa.DataType:
    """A ``schema:`` type name as an Arrow type: ``"timestamp[us, tz=UTC]"`` -> ``pa.timestamp("us", tz="UTC")``."""
    kind, params = parse_type_name(name)
    if kind in _PARAMETRIC:
        return _PARAMETRIC[kind](**params)
    return pa.type_for_alias(_ALIASES.get(kind, kind))


def column_types(schema: Mapping[str, str] | None, where: str) -> dict[str, pa.DataType]:
    """A source's ``schema:`` as Arrow types; a name Arrow refuses is a :class:`SpecError` at its key."""
    types = {}
    for column, name in (schema or {}).items():
        try:
            types[column] = arrow_type(name)
        except (ValueError, TypeError, pa.ArrowException) as exc:
            raise SpecError(f"{where}.schema.{column}: {_first_line(exc)}", hint=f"fix `{where}.schema`") from exc
    return types
