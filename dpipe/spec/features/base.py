"""Field types and validators shared by the op spec models."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

ColumnList = Annotated[list[str], Field(min_length=1)]


def unique(columns: list[str]) -> list[str]:
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise ValueError(f"columns listed more than once: {dupes}")
    return columns


def not_reserved_name(name: str) -> str:
    if name.startswith("__dpipe"):
        raise ValueError(f"column names starting with '__dpipe' are reserved by dpipe, got {name!r}")
    return name


def bounds(pair: list[float], what: str, low: float, high: float) -> list[float]:
    if len(pair) != 2:
        raise ValueError(f"`{what}` needs two numbers [low, high], got {pair}")
    if not all(low <= v <= high for v in pair):
        raise ValueError(f"`{what}` must lie within [{low:g}, {high:g}], got {pair}")
    if pair[0] >= pair[1]:
        raise ValueError(f"`{what}` must be increasing (low < high), got {pair}")
    return pair
