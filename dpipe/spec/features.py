"""Spec models of the built-in feature ops: one ``{op: <name>, ...params}`` entry each.

These are plain parameter models; the implementations live in :mod:`dpipe.ops` and are looked up
by the ``op`` name. Keeping them here lets ``dpipe validate`` check a spec without importing Dask.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from dpipe.expr import check_expression
from dpipe.spec.base import Strict
from dpipe.spec.source import SourceSpec

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


class OneHot(Strict):
    """One 0/1 float column per frequent value of a low-cardinality column.

    The vocabulary (at most ``max_categories`` values seen at least ``min_frequency`` times) is
    learned at fit time; columns are named ``{column}_{value}`` in sorted value order, and with
    ``other: true`` a ``{column}_other`` column flags values outside it (unseen or rare). A missing
    value sets no column. The source column is replaced by its indicator columns.

    Example: ``{op: one_hot, columns: [origin], max_categories: 10}``
    """

    op: Literal["one_hot"]
    columns: ColumnList
    min_frequency: int = Field(default=1, ge=1)
    max_categories: int = Field(default=20, ge=1, le=1000)
    other: bool = True

    _check_unique = field_validator("columns")(_unique)


class TargetEncode(Strict):
    """Replace a category by the smoothed mean of the label over the training rows.

    ``encoded = (sum_label + smooth * prior) / (count + smooth)``. Training rows get out-of-fold
    values (statistics of the other ``folds`` folds only), so no row sees its own label; validation
    rows and prediction use the statistics of all training rows. Unseen or missing values get the
    prior (the label mean). Binary and regression labels only.

    Example: ``{op: target_encode, columns: [dest], smooth: 20}``
    """

    op: Literal["target_encode"]
    columns: ColumnList
    smooth: float = Field(default=10.0, ge=0.0)
    folds: int = Field(default=5, ge=2, le=10)

    _check_unique = field_validator("columns")(_unique)


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
        return list(self.on or self.left_on)

    @property
    def right_keys(self) -> list[str]:
        return list(self.on or self.right_on)


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

    _check_unique = field_validator("by")(_unique)

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

    _check_unique = field_validator("key")(_unique)


class CustomOp(Strict):
    """An op class of your own, named by import path: ``{op: "mypkg.features:Winsorize", ...}``.

    The class subclasses :class:`dpipe.ops.Op` and declares its parameters as a pydantic model
    ``Params``; every key of the entry except ``op`` is validated by it when the job is loaded.
    """

    op: str = Field(pattern=r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")

    model_config = {"extra": "allow"}

    @model_validator(mode="after")
    def _params(self):
        from dpipe.spec.custom import validate_params

        validate_params(self.op, self.model_extra or {})
        return self

    @property
    def params(self) -> dict:
        return dict(self.model_extra or {})


BUILTIN_MODELS = (
    FillMissing,
    FilterRows,
    Derive,
    StandardScale,
    Categorical,
    OneHot,
    TargetEncode,
    Join,
    Aggregate,
    Dedupe,
)

#: Names of the built-in ops, as written in a spec's ``op`` field.
OP_MODELS = {model.model_fields["op"].annotation.__args__[0]: model for model in BUILTIN_MODELS}
OP_NAMES = tuple(OP_MODELS)
CUSTOM_TAG = "custom"


def _op_tag(value) -> str | None:
    op = value.get("op") if isinstance(value, dict) else getattr(value, "op", None)
    if op is None or op in OP_MODELS:
        return op
    if isinstance(op, str) and ("." in op or ":" in op):
        return CUSTOM_TAG
    return str(op)


_TAGGED = tuple(Annotated[model, Tag(name)] for name, model in OP_MODELS.items())
OpSpec = Annotated[
    Union.__getitem__((*_TAGGED, Annotated[CustomOp, Tag(CUSTOM_TAG)])),
    Discriminator(_op_tag),
]
