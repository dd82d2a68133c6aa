"""Cleanup ops: missing values, types, bounds and the column set."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpipe.columns import INTERNAL
from dpipe.errors import ColumnError, DataError
from dpipe.ops.base import STRING, Op, is_numeric, is_temporal, plain, to_builtin, value_dtype
from dpipe.ops.stats import (
    merge_moments,
    merge_sketch,
    merge_sums,
    moments,
    quantile_sketch,
    sketch_quantile,
    value_counts,
)


class FillMissing(Op):
    """Replace missing values by a constant, or by the mean, median or mode of the training rows.

    ``mode`` is the most frequent value (ties go to the smallest value) and works for strings as
    well as numbers; ``mean`` and ``median`` need numbers.

    Examples
    --------
    ``{op: fill_missing, columns: [age, income], strategy: median}``

    >>> pipe = FeaturePipeline.from_specs([FillMissing(op="fill_missing", columns=["city"], strategy="mode")])
    """

    name = "fill_missing"
    state = ("values_",)
    merges = {"moments": merge_moments, "counts": merge_sums, "sketch": merge_sketch}

    def __init__(self, spec, where):
        super().__init__(spec, where)
        # What the op learns, and whether it is one partition at a time, depend on the strategy.
        self.stateful = spec.strategy not in ("constant", "forward")
        self.partition_wise = spec.strategy != "forward"
        if not self.stateful:
            # Saved although nothing is learned: bundles have always carried the constants.
            self.values_ = {c: spec.value for c in spec.columns}

    def not_incremental(self) -> str | None:
        if self.spec.strategy == "forward":
            return "a forward fill carries values from earlier rows, which an incremental run does not read"
        return super().not_incremental()

    def input_columns(self) -> set[str]:
        if self.spec.strategy != "forward":
            return set(self.spec.columns)
        return set(self.spec.columns) | set(self.spec.by) | {self.spec.order_by}

    def apply(self, df):
        if self.spec.strategy != "forward":
            return super().apply(df)
        # Groups must be whole in one partition: shuffle by the group key first.
        shuffled = df.shuffle(on=list(self.spec.by)) if df.npartitions > 1 else df
        return shuffled.map_partitions(self.transform, meta=self.describe(df._meta))

    def _forward(self, pdf: pd.DataFrame) -> pd.DataFrame:
        by = list(self.spec.by)
        ordered = pdf.sort_values([*by, self.spec.order_by], kind="stable")
        # Rows with a missing group key belong to no group: they keep their values.
        filled = ordered.groupby(by, sort=False, dropna=True)[list(self.spec.columns)].ffill()
        known = ordered[by].notna().all(axis=1)
        return ordered.assign(**{c: filled[c].where(known, ordered[c]) for c in self.spec.columns})

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=self.spec.strategy in ("mean", "median"))
        self.require_columns(meta, self.input_columns())
        if self.spec.strategy == "mode":
            bad = {c: str(meta[c].dtype) for c in self.spec.columns if is_temporal(meta[c].dtype)}
            if bad:
                raise ColumnError(
                    f"{self.where} ({self.name}): strategy 'mode' supports numbers, strings and booleans, got {bad}",
                    hint="fill date and time columns with strategy 'constant'",
                )
        if not self.fitted:
            return meta
        return self.transform(meta)

    def fit(self, df):
        columns = list(self.spec.columns)
        if self.spec.strategy == "mean":
            return {"moments": moments(df, columns)}
        if self.spec.strategy == "mode":
            return {f"counts:{c}": value_counts(df, c) for c in columns}
        return {f"sketch:{c}": quantile_sketch(df, c) for c in columns}

    def finalize(self, stats):
        if self.spec.strategy == "mean":
            m = stats["moments"]
            self.values_ = {c: to_builtin(m.loc[c, "mean"]) for c in self.spec.columns}
        elif self.spec.strategy == "mode":
            self.values_ = {c: _mode(stats[f"counts:{c}"]) for c in self.spec.columns}
        else:
            self.values_ = {c: sketch_quantile(stats[f"sketch:{c}"], 0.5) for c in self.spec.columns}

    @property
    def fills_missing(self) -> bool:
        return self.stateful

    def fills(self, meta: pd.DataFrame) -> dict[str, float]:
        # One missing value per column through `transform`: the constant as the column stores it.
        columns = [c for c in self.spec.columns if is_numeric(meta[c])]
        probe = self.transform(meta[columns].reindex(range(1)))
        out = {}
        for c in columns:
            value = probe[c].iloc[0]
            if pd.notna(value):
                out[c] = float(value)
        return out

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        if self.spec.strategy == "forward":
            return self._forward(pdf)
        # A column with no value seen at fit time (all missing) stays missing.
        fill = {c: v for c, v in self.values_.items() if v is not None}
        if self.stateful:
            # The mean or median of integers need not be one, and a nullable integer column
            # (Int64, int64[pyarrow]) refuses 2.5: round, so every column keeps its dtype.
            fill = {
                c: round(v) if pd.api.types.is_integer_dtype(pdf[c].dtype) and isinstance(v, float) else v
                for c, v in fill.items()
            }
        return pdf.fillna(fill) if fill else pdf


def _mode(counts: pd.Series):
    """The most frequent value of computed ``value_counts``; ties go to the smallest value."""
    if counts.empty:
        return None
    top = plain(counts[counts == counts.max()].index)
    try:
        return to_builtin(top.sort_values()[0])
    except TypeError:  # a mixed-type object column: compare as text
        return to_builtin(min(top, key=str))


class DropMissing(Op):
    """Drop the rows where any of ``columns`` is missing.

    Examples
    --------
    ``{op: drop_missing, columns: [age, income]}``
    """

    name = "drop_missing"
    filters_rows = True

    def output_columns(self):
        return set()

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        return pdf.dropna(subset=list(self.spec.columns))


# -- cast ------------------------------------------------------------------------------------
_INTEGER_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1024)}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
#: Output dtype of each ``cast`` target (nullable where numpy's would lose missing values).
CAST_DTYPES = {
    "float32": "float32",
    "float64": "float64",
    "int32": "Int32",
    "int64": "Int64",
    "bool": "boolean",
    "string": STRING,
}


class Cast(Op):
    """Convert columns to another type.

    Targets and the dtype they give: ``float32``/``float64`` (numpy floats, missing is NaN),
    ``int32``/``int64`` (pandas' nullable ``Int32``/``Int64``, so missing values need no float),
    ``bool`` (nullable ``boolean``; numbers 0/1 and the strings true/false, yes/no, t/f, y/n, 1/0),
    ``string`` (``string[pyarrow]``) and ``datetime`` (``datetime64[us]``). Strings become
    date-times by ``format`` (a ``strptime`` pattern; ISO 8601 when not given); strings with a UTC
    offset are converted to UTC; timezone-aware columns keep their timezone.

    A value that cannot be converted (``"abc"`` to a number, ``2.5`` to an integer) fails the
    transform naming the column, or becomes missing with ``errors: coerce``. Missing stays missing.

    Examples
    --------
    ``{op: cast, columns: {age: float32, zip: string, signup: datetime}, errors: coerce}``
    """

    name = "cast"

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        bad = {}
        for c, target in self.spec.columns.items():
            dtype = value_dtype(meta[c].dtype)
            temporal, number = is_temporal(dtype), pd.api.types.is_numeric_dtype(dtype)
            if (target != "string" and target != "datetime" and temporal) or (target == "datetime" and number):
                bad[c] = f"{dtype} -> {target}"
        if bad:
            raise ColumnError(
                f"{self.where} ({self.name}): cannot cast between numbers and date-times: {bad}",
                hint="use `datetime_parts` to turn date-times into numbers",
            )
        return self.transform(meta)

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c, target in self.spec.columns.items():
            values, bad = _cast(pdf[c], target, self.spec.format)
            if bad.any():
                if self.spec.errors == "raise":
                    examples = pdf[c][bad].drop_duplicates().head(3).tolist()
                    raise DataError(
                        f"{self.where} ({self.name}): column {c!r} has {int(bad.sum())} value(s) that cannot be"
                        f" cast to {target}, e.g. {examples}",
                        hint="fix them in the source, or set `errors: coerce` to make them missing"
                        + ("; give `format` for dates that are not ISO 8601" if target == "datetime" else ""),
                    )
                values = values.mask(bad)
            out[c] = values
        return pdf.assign(**out)


def _cast(series: pd.Series, target: str, fmt: str | None) -> tuple[pd.Series, pd.Series]:
    """``series`` converted to ``target``, and the mask of present values that could not be."""
    series = plain(series)
    present = series.notna()
    if target == "string":
        return series.astype(STRING), pd.Series(False, index=series.index)
    if target == "datetime":
        if is_temporal(series.dtype):
            unit = "datetime64[us]" if series.dt.tz is None else pd.DatetimeTZDtype("us", series.dt.tz)
            return series.astype(unit), pd.Series(False, index=series.index)
        text = series.astype(STRING)
        parsed = pd.to_datetime(text, format=fmt or "ISO8601", utc=True, errors="coerce")
        values = parsed.dt.tz_localize(None).astype("datetime64[us]")
        return values, present & values.isna()
    if target == "bool" and not pd.api.types.is_numeric_dtype(series.dtype):
        if pd.api.types.is_bool_dtype(series.dtype):
            return series.astype("boolean"), pd.Series(False, index=series.index)
        text = series.astype(STRING).str.strip().str.lower()
        values = pd.Series(pd.NA, index=series.index, dtype="boolean")
        values[text.isin(_TRUE).fillna(False).astype(bool)] = True
        values[text.isin(_FALSE).fillna(False).astype(bool)] = False
        return values, present & values.isna()
    # Numbers (and booleans or text meant as numbers) go through float64 with NaN for missing.
    if pd.api.types.is_numeric_dtype(series.dtype):
        numbers = series.astype("float64") if pd.api.types.is_bool_dtype(series.dtype) else series
    else:
        numbers = pd.to_numeric(series.astype(STRING), errors="coerce")
    floats = pd.Series(numbers.to_numpy(dtype="float64", na_value=np.nan), index=series.index)
    finite = np.isfinite(floats.to_numpy())
    if target == "bool":
        ok = floats.isin([0.0, 1.0])
        values = (floats == 1.0).astype("boolean").mask(~ok)
        return values, present & ~ok
    if target in _INTEGER_RANGE:
        lo, hi = _INTEGER_RANGE[target]
        x = floats.to_numpy()
        with np.errstate(invalid="ignore"):
            ok = finite & (np.mod(x, 1) == 0) & (x >= lo) & (x <= hi)
        bad = present & ~ok
        if pd.api.types.is_integer_dtype(series.dtype) and not bad.any():
            return series.astype(CAST_DTYPES[target]), bad  # no detour through float: keep every digit
        return floats.where(ok).astype(CAST_DTYPES[target]), bad
    ok = floats.notna().to_numpy()
    if target == "float32":
        # Beyond float32's range numpy warns and gives inf: that is a value that cannot be cast.
        ok = ok & ~(finite & (np.abs(floats.to_numpy()) > _FLOAT32_MAX))
    return floats.where(ok).astype(target), present & ~ok


# -- clip ------------------------------------------------------------------------------------
class Clip(Op):
    """Limit numbers to ``[lower, upper]``, or to the ``quantiles`` of the training rows.

    The output is float64. Quantiles come from the mergeable sketch of :mod:`dpipe.ops.stats`
    (exact, as ``numpy.quantile``, below 2048 values). Missing stays missing; a column without any
    value at fit time is not clipped.

    Examples
    --------
    ``{op: clip, columns: [age], lower: 0, upper: 100}``
    ``{op: clip, columns: [income], quantiles: [0.01, 0.99]}``
    """

    name = "clip"
    state = ("lower_", "upper_")
    merges = {"sketch": merge_sketch}

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.stateful = spec.quantiles is not None  # fixed bounds learn nothing

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=True)
        return meta.astype({c: "float64" for c in self.spec.columns})

    def fit(self, df):
        return {f"sketch:{c}": quantile_sketch(df, c) for c in self.spec.columns}

    def finalize(self, stats):
        low, high = self.spec.quantiles
        self.lower_ = {c: sketch_quantile(stats[f"sketch:{c}"], low) for c in self.spec.columns}
        self.upper_ = {c: sketch_quantile(stats[f"sketch:{c}"], high) for c in self.spec.columns}

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            # Fixed bounds live in the spec only; learned ones are the state.
            low, high = (self.lower_[c], self.upper_[c]) if self.stateful else (self.spec.lower, self.spec.upper)
            values = pd.Series(pdf[c].to_numpy(dtype="float64", na_value=np.nan), index=pdf.index)
            out[c] = values.clip(low, high)
        return pdf.assign(**out)


# -- the column set --------------------------------------------------------------------------
class Rename(Op):
    """Rename columns, ``{old: new}``; a new name may not be taken by a column that stays.

    Examples
    --------
    ``{op: rename, columns: {amt: amount, cntry: country}}``
    """

    name = "rename"

    def output_columns(self):
        return set(self.spec.columns.values())

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        staying = set(meta.columns) - set(self.spec.columns)
        taken = sorted(set(self.spec.columns.values()) & staying)
        if taken:
            raise ColumnError(
                f"{self.where} ({self.name}): new name(s) {taken} are taken by existing columns",
                hint="drop or rename those columns first (`drop`), or choose other names",
            )
        return self.transform(meta)

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        return pdf.rename(columns=dict(self.spec.columns))


class Select(Op):
    """Keep only ``columns``, in that order.

    Columns the model does not use and that no later op reads are better left out here than
    read and dropped: at prediction dpipe reads only what the ops and the model need.

    Examples
    --------
    ``{op: select, columns: [age, income, country]}``
    """

    name = "select"

    def output_columns(self):
        return set()

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        # dpipe's own label/split/fold columns of training frames are not the user's to drop.
        internal = [c for c in INTERNAL if c in pdf.columns and c not in self.spec.columns]
        return pdf[[*self.spec.columns, *internal]]


class Drop(Op):
    """Remove ``columns`` (each must exist: a misspelt name is an error, not a no-op).

    Examples
    --------
    ``{op: drop, columns: [raw_text, debug_id]}``
    """

    name = "drop"

    def output_columns(self):
        return set()

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        return pdf.drop(columns=list(self.spec.columns))
