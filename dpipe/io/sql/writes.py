"""What the database sinks share: the Arrow schema rows are written with, the append check, and
the lazy per-partition write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pyarrow as pa

from dpipe.errors import ColumnError, DataError
from dpipe.io.arrow import writable_schema
from dpipe.io.sql.base import quietly

__all__ = ["check_append", "frame_schema", "partition_writes", "quietly", "to_arrow"]


def frame_schema(meta: pd.DataFrame) -> pa.Schema:
    """The Arrow schema rows are written with, from the frame's meta (the same on every worker)."""
    return writable_schema(meta)


def to_arrow(frame: pd.DataFrame, schema: pa.Schema, *, where: str) -> pa.Table:
    """One partition as Arrow with exactly ``schema`` (a worker's rows must match the stage's)."""
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False).select(schema.names)
        # Values must fit (a float of a column the meta says is int64 is an error, not truncated);
        # only timestamps may lose their nanoseconds (databases keep microseconds).
        columns = [table.column(f.name).cast(f.type, safe=not pa.types.is_timestamp(f.type)) for f in schema]
        return pa.table(columns, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, KeyError) as exc:
        raise DataError(
            f"{where}: a partition cannot be written with the output's types {dict(zip(schema.names, map(str, schema.types)))}: {exc}",
            hint="every partition must have the columns and types of the frame's meta",
        ) from exc


def _kind(t: pa.DataType) -> str:
    if isinstance(t, pa.BaseExtensionType):
        return "number" if getattr(t, "type_name", "") == "numeric" else "text"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_timestamp(t):
        return "timestamp with time zone" if t.tz else "timestamp"
    if pa.types.is_date(t):
        return "date"
    return str(t)


#: What a written column's kind may be stored in (an integer goes into a float column too).
_FITS = {"integer": {"integer", "number"}, "bool": {"bool"}, "number": {"number"}}


def check_append(written: pa.Schema, table: pa.Schema, *, where: str, name: str) -> None:
    """The rows to append have the table's columns, of compatible types; else a :class:`ColumnError`."""
    extra = [c for c in written.names if c not in table.names]
    missing = [c for c in table.names if c not in written.names]
    if extra or missing:
        parts = ([f"not in the table: {extra}"] if extra else []) + (
            [f"missing from the output: {missing}"] if missing else []
        )
        raise ColumnError(
            f"{where}.table: the output's columns differ from table {name!r}'s ({'; '.join(parts)});"
            f" the table has {list(table.names)}",
            hint="select the table's columns before writing, or use `mode: replace`",
        )
    wrong = {}
    for f in written:
        mine, theirs = _kind(f.type), _kind(table.field(f.name).type)
        if f.type != pa.null() and theirs not in _FITS.get(mine, {mine}):
            wrong[f.name] = f"{mine} into {theirs}"
    if wrong:
        raise ColumnError(
            f"{where}.table: column types differ from table {name!r}'s: {wrong}",
            hint="cast the columns to the table's types before writing, or use `mode: replace`",
        )


def partition_writes(frame: Any, write: Callable[..., int], target: Any) -> tuple[Any, int]:
    """The lazy write of every partition (``write(part, target, i) -> rows``) and their number.

    A Dask expression (the rows written, summed), so it computes in one graph with the run's
    other lazy values (the row counts of a features job) without mixing collection kinds.
    """
    rows = frame.map_partitions(_write_one, write, target, partition_info=True, meta=("rows", "int64"))
    return rows.sum(), frame.npartitions


def _write_one(part: Any, write: Callable[..., int], target: Any, partition_info: dict | None = None) -> Any:
    number = partition_info["number"] if partition_info else 0
    return pd.Series([write(part, target, number)], dtype="int64", name="rows")
