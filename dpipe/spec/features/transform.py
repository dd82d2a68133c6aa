"""Spec models of the transformations (:mod:`dpipe.ops.transform`): date-time parts, log and power, bucketing."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict
from dpipe.spec.features.base import ColumnList, unique

#: Parts the ``datetime_parts`` op can extract.
DATETIME_PARTS = (
    "year",
    "quarter",
    "month",
    "day",
    "dayofyear",
    "weekday",
    "hour",
    "minute",
    "is_weekend",
    "epoch_seconds",
)


class DatetimeParts(Strict):
    """Add ``{column}_{part}`` number columns (year, weekday, hour, ...) from date-time columns.

    Example: ``{op: datetime_parts, columns: [ts], parts: [hour, weekday], drop: true}``
    """

    op: Literal["datetime_parts"]
    columns: ColumnList
    parts: Annotated[list[Literal[DATETIME_PARTS]], Field(min_length=1)]  # type: ignore[valid-type]
    drop: bool = False
    format: str | None = Field(default=None, min_length=1)
    errors: Literal["raise", "coerce"] = "raise"

    _check_unique = field_validator("columns")(unique)

    @field_validator("parts")
    @classmethod
    def _unique_parts(cls, parts):
        dupes = sorted({p for p in parts if parts.count(p) > 1})
        if dupes:
            raise ValueError(f"parts listed more than once: {dupes}")
        return parts


class Log(Strict):
    """``log(x + offset)``; values at or below ``-offset`` become missing.

    Example: ``{op: log, columns: [income], offset: 1.0}``
    """

    op: Literal["log"]
    columns: ColumnList
    offset: float = 1.0

    _check_unique = field_validator("columns")(unique)


class Power(Strict):
    """Signed power ``sign(x) * |x| ** exponent``.

    Example: ``{op: power, columns: [income], exponent: 0.5}``
    """

    op: Literal["power"]
    columns: ColumnList
    exponent: float = Field(gt=0)

    _check_unique = field_validator("columns")(unique)


class Bucketize(Strict):
    """Replace numbers by their bin index: fixed ``boundaries``, or ``n_bins`` of equal width
    (``uniform``) or equal count (``quantile``) learned at fit time.

    Example: ``{op: bucketize, columns: [age], strategy: quantile, n_bins: 5}``
    """

    op: Literal["bucketize"]
    columns: ColumnList
    strategy: Literal["fixed", "uniform", "quantile"] = "quantile"
    boundaries: list[float] | None = None
    n_bins: int | None = None  # 10 for uniform and quantile

    _check_unique = field_validator("columns")(unique)

    @model_validator(mode="before")
    @classmethod
    def _default_n_bins(cls, data):
        if isinstance(data, dict) and data.get("strategy", "quantile") != "fixed" and data.get("n_bins") is None:
            data = {**data, "n_bins": 10}
        return data

    @model_validator(mode="after")
    def _params_match_strategy(self):
        if self.strategy == "fixed":
            if not self.boundaries:
                raise ValueError("strategy 'fixed' needs `boundaries` (at least one number)")
            if self.n_bins is not None:
                raise ValueError("`n_bins` is not used with strategy 'fixed' (the boundaries define the bins)")
            b = self.boundaries
            if any(lo >= hi for lo, hi in pairwise(b)):
                raise ValueError(f"`boundaries` must be strictly increasing, got {b}")
        else:
            if self.boundaries is not None:
                raise ValueError(f"`boundaries` is only used with strategy 'fixed', not {self.strategy!r}")
            assert self.n_bins is not None  # `_default_n_bins` fills it in for these strategies
            if self.n_bins < 2:
                raise ValueError(f"`n_bins` must be at least 2, got {self.n_bins}")
        return self
