"""Row filters of every source kind: ``[column, op, value]`` triples (AND), or lists of them (OR).

One syntax for files, Delta, Iceberg and SQL (:data:`dpipe.spec.source.Filters`); here they become
a ``pyarrow.dataset`` expression (the rows a worker keeps), their columns (what a read must include)
and the terms on partition columns (what prunes whole files before any is read).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dpipe.errors import ColumnError, SpecError

__all__ = ["coerce", "filter_columns", "filter_expression", "filter_groups", "partition_filters"]


def partition_filters(filters: list | None, names: Sequence[str]) -> list[list] | None:
    """The filters' terms on partition columns, as OR-groups (``None``: they cannot prune)."""
    if not filters or not names:
        return None
    groups = [[f for f in group if f[0] in names] for group in filter_groups(filters)]
    return None if not all(groups) else groups


def filter_groups(filters: list) -> list:
    return filters if isinstance(filters[0], list) and isinstance(filters[0][0], (list, tuple)) else [filters]


def filter_columns(filters: list) -> list[str]:
    return sorted({f[0] for group in (filter_groups(filters) if filters else []) for f in group})


def filter_expression(filters: list, schema: pa.Schema, where: str) -> ds.Expression:
    normalised = []
    for group in filter_groups(filters):
        conj = []
        for column, op, value in group:
            if column not in schema.names:
                raise ColumnError(
                    f"{where}.filters: column {column!r} not found; available: {schema.names}",
                    hint=f"fix `{where}.filters`",
                )
            conj.append((column, "==" if op == "=" else op, coerce(value, schema.field(column).type)))
        normalised.append(conj)
    try:
        return pq.filters_to_expression(normalised)
    except (TypeError, ValueError, pa.ArrowInvalid) as exc:
        raise SpecError(f"{where}.filters: {exc}") from exc


def coerce(value, arrow_type: pa.DataType):
    """YAML turns 2024-03-01 into a date; compare it as text against string partition keys."""
    if isinstance(value, list):
        return [coerce(v, arrow_type) for v in value]
    if isinstance(value, (_dt.date, _dt.datetime)) and pa.types.is_string(arrow_type):
        return value.isoformat()
    return value
