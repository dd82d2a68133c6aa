"""Spec models of the built-in feature ops: one ``{op: <name>, ...params}`` entry each.

These are plain parameter models; the implementations live in :mod:`dpipe.ops` and are looked up
by the ``op`` name. Keeping them here lets ``dpipe validate`` check a spec without importing Dask.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from dpipe.expr import check_expression
from dpipe.spec.base import Strict

ColumnList = Annotated[list[str], Field(min_length=1)]


def _unique(columns: list[str]) -> list[str]:
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise ValueError(f"columns listed more than once: {dupes}")
    return columns


class FillMissing(Strict):
    """Fill missing values with a constant or a statistic learned at fit time.

    Example: ``{op: fill_missing, columns: [income], strategy: median}``
    """

    op: Literal["fill_missing"]
    columns: ColumnList
    strategy: Literal["constant", "mean", "median"] = "constant"
    value: float | int | str | bool | None = None

    _check_unique = field_validator("columns")(_unique)

    @model_validator(mode="after")
    def _value_matches_strategy(self):
        if self.strategy == "constant" and self.value is None:
            raise ValueError("strategy 'constant' needs a `value`")
        if self.strategy != "constant" and self.value is not None:
            raise ValueError(f"`value` is only used with strategy 'constant', not {self.strategy!r}")
        return self


class FilterRows(Strict):
    """Keep the rows where an expression is true (missing counts as false).

    Example: ``{op: filter, expr: "amount > 0 and country != 'XX'"}``
    """

    op: Literal["filter"]
    expr: str = Field(min_length=1)

    _check_expr = field_validator("expr")(check_expression)


class Derive(Strict):
    """Add (or replace) a column computed from an expression over other columns.

    Example: ``{op: derive, name: ratio, expr: "debt / (income + 1)"}``
    """

    op: Literal["derive"]
    name: str = Field(min_length=1)
    expr: str = Field(min_length=1)

    _check_expr = field_validator("expr")(check_expression)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.startswith("__dpipe"):
            raise ValueError(f"column names starting with '__dpipe' are reserved by dpipe, got {name!r}")
        return name


class StandardScale(Strict):
    """Center to mean 0 and scale to standard deviation 1 (population std, like scikit-learn).

    Example: ``{op: standard_scale, columns: [age, income]}``
    """

    op: Literal["standard_scale"]
    columns: ColumnList
    with_mean: bool = True
    with_std: bool = True

    _check_unique = field_validator("columns")(_unique)


class Categorical(Strict):
    """Encode string/integer columns as categories learned at fit time.

    Categories seen fewer than ``min_frequency`` times, beyond ``max_categories`` most frequent,
    or unseen at fit time become missing (XGBoost routes missing values down a learned branch),
    so prediction on new data never fails on a new value. ``encoding: category`` feeds XGBoost's
    native categorical support; ``encoding: ordinal`` emits float codes (-1 is never used:
    unknown is NaN).

    Example: ``{op: categorical, columns: [country, device], min_frequency: 10}``
    """

    op: Literal["categorical"]
    columns: ColumnList
    min_frequency: int = Field(default=1, ge=1)
    max_categories: int | None = Field(default=None, ge=1)
    encoding: Literal["category", "ordinal"] = "category"

    _check_unique = field_validator("columns")(_unique)


OpSpec = Annotated[
    Union[FillMissing, FilterRows, Derive, StandardScale, Categorical],
    Field(discriminator="op"),
]

#: Names of the built-in ops, as written in a spec's ``op`` field.
OP_MODELS = {
    model.model_fields["op"].annotation.__args__[0]: model
    for model in (FillMissing, FilterRows, Derive, StandardScale, Categorical)
}
OP_NAMES = tuple(OP_MODELS)
