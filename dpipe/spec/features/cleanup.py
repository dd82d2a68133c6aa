"""Spec models of the cleanup ops (:mod:`dpipe.ops.cleanup`): missing values, types, bounds, the column set."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict
from dpipe.spec.features.base import ColumnList, bounds, not_reserved_name, unique


class FillMissing(Strict):
    """Fill missing values with a constant or a statistic learned at fit time.

    ``mode`` (the most frequent value, ties to the smallest) also works for strings. ``forward``
    carries the last known value forward within each group of ``by``, in ``order_by`` order
    (rows are shuffled by group so each group is whole in one partition).

    Example: ``{op: fill_missing, columns: [income], strategy: median}``
    """

    op: Literal["fill_missing"]
    columns: ColumnList
    strategy: Literal["constant", "mean", "median", "mode", "forward"] = "constant"
    value: float | int | str | bool | None = None
    by: list[str] | None = Field(default=None, min_length=1)
    order_by: str | None = None

    _check_unique = field_validator("columns")(unique)

    @model_validator(mode="after")
    def _value_matches_strategy(self):
        if self.strategy == "constant" and self.value is None:
            raise ValueError("strategy 'constant' needs a `value`")
        if self.strategy != "constant" and self.value is not None:
            raise ValueError(f"`value` is only used with strategy 'constant', not {self.strategy!r}")
        if self.strategy == "forward" and (self.by is None or self.order_by is None):
            raise ValueError("strategy 'forward' needs `by` (the groups) and `order_by` (what 'previous' means)")
        if self.strategy != "forward" and (self.by is not None or self.order_by is not None):
            raise ValueError("`by` and `order_by` are only used with strategy 'forward'")
        return self


class DropMissing(Strict):
    """Drop the rows where any of ``columns`` is missing.

    Example: ``{op: drop_missing, columns: [age, income]}``
    """

    op: Literal["drop_missing"]
    columns: ColumnList

    _check_unique = field_validator("columns")(unique)


#: Target types of the ``cast`` op.
CAST_TYPES = ("float32", "float64", "int32", "int64", "bool", "string", "datetime")


class Cast(Strict):
    """Convert columns to a type: ``float32``, ``float64``, ``int32``, ``int64``, ``bool``, ``string``
    or ``datetime``. Integers and booleans use pandas' nullable dtypes (``Int64``, ``boolean``) so
    missing values survive; ``errors: coerce`` turns values that cannot be converted into missing.

    Example: ``{op: cast, columns: {age: float32, zip: string, day: datetime}}``
    """

    op: Literal["cast"]
    columns: dict[str, str] = Field(min_length=1)
    errors: Literal["raise", "coerce"] = "raise"
    format: str | None = Field(default=None, min_length=1)

    @field_validator("columns")
    @classmethod
    def _known_types(cls, columns: dict[str, str]) -> dict[str, str]:
        bad = {c: t for c, t in columns.items() if t not in CAST_TYPES}
        if bad:
            hint = " (use the `categorical` op for categories: it learns one vocabulary for all partitions)"
            raise ValueError(
                f"unknown cast type(s) {bad}; expected one of {list(CAST_TYPES)}"
                + (hint if "category" in bad.values() else "")
            )
        return columns


class Clip(Strict):
    """Limit values to ``[lower, upper]``, or to quantiles of the training rows.

    Example: ``{op: clip, columns: [income], quantiles: [0.01, 0.99]}``
    """

    op: Literal["clip"]
    columns: ColumnList
    lower: float | None = None
    upper: float | None = None
    quantiles: list[float] | None = None

    _check_unique = field_validator("columns")(unique)

    @field_validator("quantiles")
    @classmethod
    def _check_quantiles(cls, quantiles):
        return None if quantiles is None else bounds(quantiles, "quantiles", 0.0, 1.0)

    @model_validator(mode="after")
    def _one_way(self):
        fixed = self.lower is not None or self.upper is not None
        if fixed and self.quantiles is not None:
            raise ValueError("give either `lower`/`upper` or `quantiles`, not both")
        if not fixed and self.quantiles is None:
            raise ValueError("needs `lower` and/or `upper`, or `quantiles: [low, high]`")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"`lower` must not exceed `upper`, got lower={self.lower:g} > upper={self.upper:g}")
        return self


class Rename(Strict):
    """Rename columns: ``{old: new}``.

    Example: ``{op: rename, columns: {amt: amount}}``
    """

    op: Literal["rename"]
    columns: dict[str, str] = Field(min_length=1)

    @field_validator("columns")
    @classmethod
    def _check_names(cls, columns: dict[str, str]) -> dict[str, str]:
        for new in columns.values():
            not_reserved_name(new)
        targets = list(columns.values())
        dupes = sorted({t for t in targets if targets.count(t) > 1})
        if dupes:
            raise ValueError(f"several columns renamed to the same name: {dupes}")
        return columns


class Select(Strict):
    """Keep only ``columns`` (in that order).

    Example: ``{op: select, columns: [age, income, country]}``
    """

    op: Literal["select"]
    columns: ColumnList

    _check_unique = field_validator("columns")(unique)


class Drop(Strict):
    """Remove ``columns``.

    Example: ``{op: drop, columns: [raw_text]}``
    """

    op: Literal["drop"]
    columns: ColumnList

    _check_unique = field_validator("columns")(unique)
