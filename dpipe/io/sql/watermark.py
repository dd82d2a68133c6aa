"""Reads above a watermark column: what makes a SQL source's reads one datum each, and continuable.

With a ``watermark`` column a read is one datum, the rows up to the column's highest value (read
in the same snapshot as the rest), named ``events:ts(<low>,<high>]`` with the high mark as its
version. :meth:`~dpipe.io.sql.base.SQLSource.open_new` reads only the rows above the highest mark
of the datums seen before: new rows, as long as the column only grows for them. Rows updated, or
inserted with a watermark below the mark, are not seen (that is what a watermark means).

This module writes the SQL and keeps the datums' books; :class:`~dpipe.io.sql.base.SQLSource`
runs the queries in its session.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dpipe.errors import DataError, SpecError
from dpipe.io.connector import Datum, Increment, OpenedSource
from dpipe.io.sql.text import Dialect, from_jsonable, jsonable, select, watermark_condition


def require_watermark(column: str | None, *, kind: str, where: str) -> str:
    """The ``watermark`` column of a source read incrementally; a ``SpecError`` if it has none."""
    if column is None:
        raise SpecError(
            f"{where}.watermark: an incremental read of a {kind} source needs a watermark column, one"
            " that only grows for new rows (an insert timestamp, a serial id); got none",
            hint=f"add `watermark: <column>` to `{where}`, or read the source in full (not incrementally)",
        )
    return column


def increment(before: tuple[Datum, ...], opened: OpenedSource | None) -> Increment:
    """The increment of a read above the marks of ``before`` (``opened=None``: no rows above them)."""
    if opened is None:
        return Increment(source=None, current=before)
    return Increment(source=opened, new=opened.datums, current=before + opened.datums)


@dataclass(frozen=True)
class Watermark:
    """The ``watermark`` column of one source: its marks, its datums and its SQL.

    ``kind`` is the kind of the column's values (``"integer"``, ``"date"``, ``"timestamp"``...,
    see :data:`dpipe.io.sql.text.UNJSONABLE`); ``source`` is the source's name, which its datum
    ids start with.
    """

    column: str
    kind: str
    dialect: Dialect
    source: str
    where: str

    @classmethod
    def of(
        cls, column: str, type: pa.DataType, kind: str | None, *, dialect: Dialect, source: str, where: str
    ) -> Watermark:
        """The watermark ``column`` of ``type``; ``kind`` is :func:`~dpipe.io.sql.base.range_kind` of it
        (``None``: the column has no order to grow in, a ``SpecError``)."""
        if kind is None:
            raise SpecError(
                f"{where}.watermark: column {column!r} has type {type}; a watermark column is a number, date or"
                " timestamp that only grows for new rows",
                hint="use an insert timestamp or a serial id as `watermark`",
            )
        return cls(column, kind, dialect, source, where)

    def mark(
        self, row: Callable[[str], dict[str, Any]], rel: str, where_sql: Sequence[str], seen: Collection[Datum] | None
    ) -> Mark | None:
        """The rows to read: everything up to the highest mark (``seen=None``), or those above the
        marks of ``seen`` (``None``: there are none).

        ``row(sql)`` runs a query in the session's snapshot and returns its one row, so the
        partitions read exactly the rows up to the mark, and rows inserted while they run wait for
        the next read.
        """
        low = None if seen is None else self.previous(seen)
        high, n = self.high(row, rel, where_sql, low)
        if seen is not None and (not n or high == low):
            return None
        return Mark(self, low, high, n)

    def high(
        self, row: Callable[[str], dict[str, Any]], rel: str, where_sql: Sequence[str], low: Any
    ) -> tuple[Any, int]:
        """The column's highest value within the filters (above ``low``), and how many rows are there."""
        d, c = self.dialect, self.dialect.ident(self.column)
        above = [*where_sql, f"{c} > {d.literal(low)}"] if low is not None else list(where_sql)
        sql = select(d, rel, None, above).replace("SELECT *", f"SELECT max({c}) AS hi, count({c}) AS n", 1)
        high, n = row(sql).values()
        if self.kind == "timestamp" and hasattr(high, "to_pydatetime"):
            # Nanoseconds (a pandas Timestamp): SQL literals hold microseconds, so the mark is the
            # microsecond at or below the highest value; rows past it wait for a later mark.
            high = high.to_pydatetime(warn=False)
        return high, int(n)

    def previous(self, seen: Collection[Datum]) -> Any:
        """The highest mark of the ``seen`` datums read above this watermark (``None``: none)."""
        prefix = f"{self.source}:{self.column}("
        marks = []
        for datum in seen:
            if not datum.id.startswith(prefix) or datum.version is None:
                continue
            try:
                value = from_jsonable(json.loads(datum.version), self.kind)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"{self.where}.watermark: the earlier read {datum.id!r} ended at {datum.version!r}, which is not a"
                    f" value of column {self.column!r} ({self.kind})",
                    hint="the column's type changed since that run: read the source in full once",
                ) from exc
            if value is not None:
                marks.append(value)
        try:
            return max(marks, default=None)
        except TypeError as exc:  # timestamps with and without a time zone
            raise DataError(
                f"{self.where}.watermark: the earlier reads' marks of {self.column!r} cannot be compared: {marks}",
                hint="the column's type changed between runs: read the source in full once",
            ) from exc


@dataclass(frozen=True)
class Mark:
    """One read's rows: those with ``low < watermark <= high`` (``low=None``: from the start)."""

    watermark: Watermark
    low: Any
    high: Any
    #: How many rows are in it.
    rows: int

    def condition(self) -> str:
        """The predicate of the rows in this read."""
        w = self.watermark
        return watermark_condition(w.dialect, w.column, self.low, self.high)

    def datum_id(self) -> str:
        """``events:ts(<low>,<high>]``: the rows above ``low`` (``(,``: from the start) up to ``high``."""

        def text(v: Any) -> str:
            return "" if v is None else str(jsonable(v))

        return f"{self.watermark.source}:{self.watermark.column}({text(self.low)},{text(self.high)}]"

    def datum(self) -> Datum:
        """The one datum of a read: versioned by its high mark, where the next read starts."""
        return Datum(self.datum_id(), None, json.dumps(jsonable(self.high)))

    def record(self) -> dict[str, Any]:
        """What the lineage records about the read, besides the source's own record."""
        return {"watermark_column": self.watermark.column, "watermark_range": [jsonable(self.low), jsonable(self.high)]}
