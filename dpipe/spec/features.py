"""Spec models of the built-in feature ops: one ``{op: <name>, ...params}`` entry each.

These are plain parameter models; the implementations live in :mod:`dpipe.ops` and are looked up
by the ``op`` name. Keeping them here lets ``dpipe validate`` check a spec without importing Dask.
"""

from __future__ import annotations

from itertools import pairwise
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


def _not_reserved_name(name: str) -> str:
    if name.startswith("__dpipe"):
        raise ValueError(f"column names starting with '__dpipe' are reserved by dpipe, got {name!r}")
    return name


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

    _check_unique = field_validator("columns")(_unique)

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
        return _not_reserved_name(name)


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
    so prediction on new data never fails on a new value; with ``unknown: bucket`` they all go to one
    out-of-vocabulary category instead (``"__other__"``, or code ``len(vocabulary)``).
    ``encoding: category`` feeds XGBoost's native categorical support; ``encoding: ordinal``
    emits float codes (-1 is never used: unknown is NaN).

    Example: ``{op: categorical, columns: [country, device], min_frequency: 10}``
    """

    op: Literal["categorical"]
    columns: ColumnList
    min_frequency: int = Field(default=1, ge=1)
    max_categories: int | None = Field(default=None, ge=1)
    encoding: Literal["category", "ordinal"] = "category"
    unknown: Literal["missing", "bucket"] = "missing"

    _check_unique = field_validator("columns")(_unique)


def _bounds(pair: list[float], what: str, low: float, high: float) -> list[float]:
    if len(pair) != 2:
        raise ValueError(f"`{what}` needs two numbers [low, high], got {pair}")
    if not all(low <= v <= high for v in pair):
        raise ValueError(f"`{what}` must lie within [{low:g}, {high:g}], got {pair}")
    if pair[0] >= pair[1]:
        raise ValueError(f"`{what}` must be increasing (low < high), got {pair}")
    return pair


class DropMissing(Strict):
    """Drop the rows where any of ``columns`` is missing.

    Example: ``{op: drop_missing, columns: [age, income]}``
    """

    op: Literal["drop_missing"]
    columns: ColumnList

    _check_unique = field_validator("columns")(_unique)


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

    _check_unique = field_validator("columns")(_unique)

    @field_validator("quantiles")
    @classmethod
    def _check_quantiles(cls, quantiles):
        return None if quantiles is None else _bounds(quantiles, "quantiles", 0.0, 1.0)

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
            _not_reserved_name(new)
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

    _check_unique = field_validator("columns")(_unique)


class Drop(Strict):
    """Remove ``columns``.

    Example: ``{op: drop, columns: [raw_text]}``
    """

    op: Literal["drop"]
    columns: ColumnList

    _check_unique = field_validator("columns")(_unique)


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

    _check_unique = field_validator("columns")(_unique)

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

    _check_unique = field_validator("columns")(_unique)


class Power(Strict):
    """Signed power ``sign(x) * |x| ** exponent``.

    Example: ``{op: power, columns: [income], exponent: 0.5}``
    """

    op: Literal["power"]
    columns: ColumnList
    exponent: float = Field(gt=0)

    _check_unique = field_validator("columns")(_unique)


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

    _check_unique = field_validator("columns")(_unique)

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
            if self.n_bins < 2:
                raise ValueError(f"`n_bins` must be at least 2, got {self.n_bins}")
        return self


class MinMaxScale(Strict):
    """Scale to ``feature_range`` with the training rows' min and max (as scikit-learn).

    Example: ``{op: minmax_scale, columns: [age], feature_range: [0, 1]}``
    """

    op: Literal["minmax_scale"]
    columns: ColumnList
    feature_range: list[float] = Field(default_factory=lambda: [0.0, 1.0])

    _check_unique = field_validator("columns")(_unique)

    @field_validator("feature_range")
    @classmethod
    def _check_range(cls, pair):
        return _bounds(pair, "feature_range", float("-inf"), float("inf"))


class RobustScale(Strict):
    """``(x - median) / IQR`` with quantiles of the training rows (as scikit-learn's RobustScaler).

    Example: ``{op: robust_scale, columns: [income], quantile_range: [25, 75]}``
    """

    op: Literal["robust_scale"]
    columns: ColumnList
    quantile_range: list[float] = Field(default_factory=lambda: [25.0, 75.0])
    with_centering: bool = True
    with_scaling: bool = True

    _check_unique = field_validator("columns")(_unique)

    @field_validator("quantile_range")
    @classmethod
    def _check_range(cls, pair):
        return _bounds(pair, "quantile_range", 0.0, 100.0)


class HashBucket(Strict):
    """Hash values into ``n_buckets`` buckets (a stable hash of their text), for columns with too
    many values for a vocabulary.

    Example: ``{op: hash_bucket, columns: [user_agent], n_buckets: 1024}``
    """

    op: Literal["hash_bucket"]
    columns: ColumnList
    n_buckets: int = Field(default=1024, ge=2)
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
    FillMissing, DropMissing, Cast, Clip, Rename, Select, Drop, FilterRows, Derive, Dedupe,
    DatetimeParts, Log, Power, Bucketize,
    StandardScale, MinMaxScale, RobustScale,
    Categorical, OneHot, HashBucket, TargetEncode,
    Join, Aggregate,
)  # fmt: skip

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
