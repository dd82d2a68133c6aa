"""SQL text for the database connectors: quoted identifiers, literals, filters, range and watermark
predicates.

Values are written as quoted literals, not bound parameters, so the query a source records in its
lineage is exactly the text that ran and can be run again. Every identifier is double-quoted
(names are exact: ``Events`` is not ``events``); strings are quoted for the dialect (PostgreSQL's
``E'...'`` form, where backslashes are escapes whatever ``standard_conforming_strings`` says).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dpipe.errors import SpecError

#: Partition predicates: (lower bound or None, upper bound or None); open ends read everything
#: beyond the ranges found, and the first range also takes the column's NULLs.
Bounds = tuple[Any, Any]


@dataclass(frozen=True)
class Dialect:
    """How one database writes names and values."""

    name: str
    #: PostgreSQL: ``E'...'`` strings with backslashes escaped; DuckDB: standard ``'...'``.
    escape_strings: bool = False

    def ident(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def table(self, name: str) -> str:
        """``schema.name`` -> ``"schema"."name"``."""
        return ".".join(self.ident(part) for part in name.split("."))

    def string(self, text: str) -> str:
        if "\x00" in text:
            raise SpecError(f"{self.name}: a string value contains a NUL character, which SQL cannot hold")
        if self.escape_strings:
            return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
        return "'" + text.replace("'", "''") + "'"

    def literal(self, value: Any) -> str:
        """A Python value (a filter's, a range bound) as a SQL literal."""
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, numbers.Integral):
            return str(int(value))
        if isinstance(value, decimal.Decimal):
            if not value.is_finite():
                raise SpecError(f"{self.name}: the value {value!r} is not a finite number")
            return str(value)
        if isinstance(value, numbers.Real):
            number = float(value)
            if not math.isfinite(number):
                raise SpecError(f"{self.name}: the value {value!r} is not a finite number")
            return repr(number)
        if isinstance(value, _dt.datetime):
            kind = "TIMESTAMP" if value.tzinfo is None else "TIMESTAMPTZ"
            return f"{kind} {self.string(value.isoformat(sep=' '))}"
        if isinstance(value, _dt.date):
            return f"DATE {self.string(value.isoformat())}"
        if isinstance(value, str):
            return self.string(value)
        raise SpecError(f"{self.name}: cannot write {type(value).__name__} value {value!r} as a SQL literal")


POSTGRES = Dialect("postgresql", escape_strings=True)
DUCKDB = Dialect("duckdb")


def relation(dialect: Dialect, *, table: str | None, query: str | None) -> str:
    """What a source selects from: a table, or its query as a subquery."""
    if table is not None:
        return dialect.table(table)
    return f"({query}) AS {dialect.ident('_dpipe_query')}"


def select(dialect: Dialect, relation: str, columns: Sequence[str] | None, where: Sequence[str] = ()) -> str:
    """``SELECT <columns> FROM <relation> WHERE <a> AND <b>``; ``columns=None`` selects ``*``."""
    names = "*" if columns is None else ", ".join(dialect.ident(c) for c in columns)
    sql = f"SELECT {names} FROM {relation}"
    return f"{sql} WHERE {' AND '.join(where)}" if where else sql


def filter_groups(filters: list | None) -> list[list[tuple[str, str, Any]]]:
    """The filters as OR-ed groups of AND-ed triples (the two spellings a spec allows)."""
    if not filters:
        return []
    nested = isinstance(filters[0], list) and filters[0] and isinstance(filters[0][0], (list, tuple))
    groups = filters if nested else [filters]
    return [[(str(c), str(op), v) for c, op, v in group] for group in groups]


def filter_condition(dialect: Dialect, filters: list | None) -> str | None:
    """The WHERE condition of ``filters`` (``None`` without filters), parenthesised."""
    groups = filter_groups(filters)
    if not groups:
        return None
    ors = [" AND ".join(_comparison(dialect, *f) for f in group) for group in groups]
    return "(" + " OR ".join(f"({o})" for o in ors) + ")"


def _comparison(dialect: Dialect, column: str, op: str, value: Any) -> str:
    col = dialect.ident(column)
    if op in ("in", "not in"):
        # As the file sources filter (pyarrow's is_in): NULL is in a list that holds null, and
        # not in one that does not, rather than SQL's "unknown" (which drops the row either way).
        values = [v for v in value if v is not None]
        has_null = len(values) < len(list(value))
        listed = ", ".join(dialect.literal(v) for v in values)
        if op == "in":
            found = f"{col} IN ({listed})" if values else "FALSE"
            return f"({found} OR {col} IS NULL)" if has_null else found
        absent = f"{col} NOT IN ({listed})" if values else "TRUE"
        return f"({absent} AND {col} IS NOT NULL)" if has_null else f"({absent} OR {col} IS NULL)"
    if value is None:
        if op in ("==", "="):
            return f"{col} IS NULL"
        if op == "!=":
            return f"{col} IS NOT NULL"
        raise SpecError(f"{dialect.name}: filter on {column!r}: {op!r} cannot compare with null")
    sql_op = {"==": "=", "!=": "<>"}.get(op, op)
    return f"{col} {sql_op} {dialect.literal(value)}"


def split_range(low: Any, high: Any, n: int) -> list[Any]:
    """At most ``n + 1`` increasing edges from ``low`` to ``high`` (both included), equally spaced.

    Integers split exactly; floats, decimals, dates and timestamps by arithmetic of their own
    type. Equal edges (a narrow range) are merged, so fewer ranges may come back.
    """
    edges: list[Any]
    if isinstance(low, numbers.Integral) and isinstance(high, numbers.Integral) and not isinstance(low, bool):
        lo, hi = int(low), int(high)
        edges = [lo + (hi - lo) * i // n for i in range(n)] + [hi]
    elif isinstance(low, decimal.Decimal):
        edges = [low + (high - low) * i / n for i in range(n)] + [high]
    elif isinstance(low, numbers.Real):
        lo_f, hi_f = float(low), float(high)
        edges = [lo_f + (hi_f - lo_f) * i / n for i in range(n)] + [hi_f]
    elif isinstance(low, (_dt.datetime, _dt.date)):
        step = (high - low) / n
        edges = [low + step * i for i in range(n)] + [high]
    else:
        raise TypeError(f"cannot split a range of {type(low).__name__}")
    unique: list[Any] = []
    for edge in edges:
        if not unique or edge > unique[-1]:
            unique.append(edge)
    return unique


def range_bounds(edges: list[Any]) -> list[Bounds]:
    """The ranges between ``edges``, the first open below and the last open above.

    Open ends make the ranges cover every value (and the first takes NULLs), so each row is read
    exactly once even by reads that do not share the snapshot the edges came from.
    """
    if len(edges) < 2:
        return [(None, None)]
    k = len(edges) - 1
    return [(None if i == 0 else edges[i], None if i == k - 1 else edges[i + 1]) for i in range(k)]


def range_condition(dialect: Dialect, column: str, bounds: Bounds) -> str | None:
    """``col >= lo AND col < hi``; the first range (no ``lo``) also takes NULLs."""
    lo, hi = bounds
    col = dialect.ident(column)
    if lo is None and hi is None:
        return None
    if lo is None:
        return f"({col} < {dialect.literal(hi)} OR {col} IS NULL)"
    if hi is None:
        return f"{col} >= {dialect.literal(lo)}"
    return f"{col} >= {dialect.literal(lo)} AND {col} < {dialect.literal(hi)}"


def jsonable(value: Any) -> Any:
    """A range bound as it goes into lineage: dates as ISO text, decimals as text."""
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


#: How a bound of each kind of column comes back from its :func:`jsonable` form.
UNJSONABLE: dict[str, Callable[[Any], Any]] = {
    "integer": int,
    "float": float,
    "decimal": lambda v: decimal.Decimal(str(v)),
    "date": lambda v: _dt.date.fromisoformat(v),
    "timestamp": lambda v: _dt.datetime.fromisoformat(v),
}


def from_jsonable(value: Any, kind: str) -> Any:
    """The inverse of :func:`jsonable` for a column of ``kind`` (a key of :data:`UNJSONABLE`),
    so the value is written back as a literal of the column's type (``DATE '...'``, not text)."""
    return None if value is None else UNJSONABLE[kind](value)


def watermark_condition(dialect: Dialect, column: str, low: Any, high: Any) -> str:
    """``col > low AND col <= high`` (``low=None``: from the start). NULLs are in no range."""
    col = dialect.ident(column)
    upper = f"{col} <= {dialect.literal(high)}"
    return upper if low is None else f"{col} > {dialect.literal(low)} AND {upper}"
