"""Spec models of the ops across rows and tables (:mod:`dpipe.ops.tables`): join, aggregate, dedupe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict
from dpipe.spec.features.base import ColumnList, unique
from dpipe.spec.source import SourceSpec


class Join(Strict):
    """Enrich every row with columns of another table (any source), matched by key.

    ``strategy: broadcast`` ships the (small) right table to every partition; ``shuffle`` is a
    partitioned merge for large tables; ``auto`` picks broadcast below ``broadcast_limit`` bytes
    on storage. Row counts and the fraction of unmatched rows are measured in the fit pass:
    a right key that is not unique (with ``validate: many_to_one``) or more than
    ``max_unmatched_fraction`` of rows without a match fails the run, so silent row loss or
    explosion cannot go unnoticed. ``how: inner`` drops unmatched rows (and counts them).

    Example::

        {op: join, source: {uri: data/flights/planes}, on: [tailnum],
         columns: [year, seats], prefix: plane_, max_unmatched_fraction: 0.2}
    """

    op: Literal["join"]
    source: SourceSpec
    on: list[str] | None = Field(default=None, min_length=1)
    left_on: list[str] | None = Field(default=None, min_length=1)
    right_on: list[str] | None = Field(default=None, min_length=1)
    columns: list[str] | None = Field(default=None, min_length=1)
    prefix: str = ""
    how: Literal["left", "inner"] = "left"
    strategy: Literal["auto", "broadcast", "shuffle"] = "auto"
    broadcast_limit: int = Field(default=256 * 2**20, ge=0)
    validate_keys: Literal["many_to_one", "many_to_many"] = Field(default="many_to_one", alias="validate")
    max_unmatched_fraction: float | None = Field(default=None, ge=0.0, le=1.0)

    model_config = {"populate_by_name": True}

    @model_validator(mode="after")
    def _keys(self):
        if self.on is not None and (self.left_on or self.right_on):
            raise ValueError("give either `on` or `left_on` + `right_on`, not both")
        if self.on is None:
            if not (self.left_on and self.right_on):
                raise ValueError("give the join keys: `on`, or `left_on` + `right_on`")
            if len(self.left_on) != len(self.right_on):
                raise ValueError(
                    f"`left_on` has {len(self.left_on)} column(s) and `right_on` {len(self.right_on)}; they pair up"
                )
        if self.prefix.startswith("__dpipe"):
            raise ValueError("column names starting with '__dpipe' are reserved by dpipe")
        return self

    @property
    def left_keys(self) -> list[str]:
        keys = self.on or self.left_on
        assert keys is not None  # `_keys` requires `on`, or `left_on` with `right_on`
        return list(keys)

    @property
    def right_keys(self) -> list[str]:
        keys = self.on or self.right_on
        assert keys is not None  # `_keys` requires `on`, or `left_on` with `right_on`
        return list(keys)


AGGREGATIONS = ("count", "mean", "sum", "min", "max", "std", "nunique")


class Aggregate(Strict):
    """Per-entity statistics over the training rows, joined back to every row by key.

    Output columns are named ``{prefix}{column}_{agg}`` (``{prefix}count`` for the row count;
    the prefix defaults to ``{by}_``). The table of statistics is fitted once on the training
    rows and stored in the bundle, so prediction sees the same values; unseen keys get missing
    values and a count of 0.

    Example: ``{op: aggregate, by: [tailnum], columns: {dep_delay: [mean, max], distance: [sum]}}``
    """

    op: Literal["aggregate"]
    by: ColumnList
    columns: dict[str, list[Literal["mean", "sum", "min", "max", "std", "nunique", "count"]]] = Field(
        default_factory=dict
    )
    count: bool = True
    prefix: str | None = None

    _check_unique = field_validator("by")(unique)

    @model_validator(mode="after")
    def _something(self):
        if not self.columns and not self.count:
            raise ValueError("nothing to aggregate: give `columns` or keep `count: true`")
        overlap = sorted(set(self.by) & set(self.columns))
        if overlap:
            raise ValueError(f"{overlap} are the group keys and cannot be aggregated")
        return self

    @property
    def output_prefix(self) -> str:
        return self.prefix if self.prefix is not None else "_".join(self.by) + "_"


class Dedupe(Strict):
    """Keep one row per key: the first (or last) by ``order_by``.

    Rows are shuffled by key so duplicates meet in one partition, whatever files they came from;
    the number of rows dropped is measured and reported. Without ``order_by`` the surviving row
    of a duplicated key is one of them, not a specific one.

    Example: ``{op: dedupe, key: [flight_id], order_by: updated_at, keep: last}``
    """

    op: Literal["dedupe"]
    key: ColumnList
    order_by: str | None = None
    keep: Literal["first", "last"] = "first"

    _check_unique = field_validator("key")(unique)
