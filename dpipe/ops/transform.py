"""Transformations: date-time parts, log and power, bucketing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpipe.errors import ColumnError, DataError
from dpipe.ops.base import STRING, Op, plain, value_dtype
from dpipe.ops.stats import merge_min_max, merge_sketch, min_max, quantile_sketch, sketch_quantile

_PARTS = {
    "year": lambda t: t.dt.year,
    "quarter": lambda t: t.dt.quarter,
    "month": lambda t: t.dt.month,
    "day": lambda t: t.dt.day,
    "dayofyear": lambda t: t.dt.dayofyear,
    "weekday": lambda t: t.dt.weekday,
    "hour": lambda t: t.dt.hour,
    "minute": lambda t: t.dt.minute,
    "is_weekend": lambda t: t.dt.weekday >= 5,
}


class DatetimeParts(Op):
    """Add ``{column}_{part}`` number columns from date-time columns.

    Parts: ``year``, ``quarter``, ``month``, ``day``, ``dayofyear``, ``weekday`` (Monday 0),
    ``hour``, ``minute``, ``is_weekend`` (1.0/0.0) as float32, and ``epoch_seconds`` (seconds
    since 1970-01-01 UTC) as float64: float32 would round today's timestamps to about two minutes.
    A missing time gives NaN parts.

    Columns may hold date-times or strings; strings are parsed with ``format`` (a ``strptime``
    pattern, ISO 8601 when not given), and a string that does not parse fails the transform
    naming the column, or gives NaN parts with ``errors: coerce``. A timezone-aware column gives
    its wall-clock parts (``hour`` in its own timezone); strings with a UTC offset are read as UTC.
    ``drop: true`` removes the source columns.

    Examples
    --------
    ``{op: datetime_parts, columns: [ts], parts: [hour, weekday, month], drop: true}``
    """

    name = "datetime_parts"

    def output_columns(self):
        return {f"{c}_{p}" for c in self.spec.columns for p in self.spec.parts}

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        bad = {c: str(meta[c].dtype) for c in self.spec.columns if not _datetime_like(meta[c].dtype)}
        if bad:
            raise ColumnError(
                f"{self.where} ({self.name}): needs date-time or string columns, got {bad}",
                hint="numbers are not read as epoch times: convert them in a `derive`, or remove the column",
            )
        dropped = set(self.spec.columns) if self.spec.drop else set()
        taken = sorted(self.output_columns() & (set(meta.columns) - dropped))
        if taken:
            raise ColumnError(
                f"{self.where} ({self.name}): output column(s) {taken} already exist",
                hint="rename or drop the existing columns first (`rename`, `drop`)",
            )
        return self.transform(meta)

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            t = self._parse(pdf[c], c)
            for part in self.spec.parts:
                if part == "epoch_seconds":
                    naive = t.dt.tz_convert("UTC").dt.tz_localize(None) if t.dt.tz is not None else t
                    seconds = (naive - pd.Timestamp(0)) / pd.Timedelta(seconds=1)
                    out[f"{c}_{part}"] = seconds.astype("float64")
                else:
                    value = _PARTS[part](t)
                    out[f"{c}_{part}"] = value.astype("float32").where(t.notna())
        frame = pdf.assign(**out)
        return frame.drop(columns=list(self.spec.columns)) if self.spec.drop else frame

    def _parse(self, values: pd.Series, column: str) -> pd.Series:
        values = plain(values)
        if pd.api.types.is_datetime64_any_dtype(values.dtype):
            return values
        if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) in ("date", "datetime"):
            # Date and datetime objects (Arrow's date32 reads so): converted, not formatted and
            # parsed as text (15x faster).
            return pd.to_datetime(values, utc=True).dt.tz_localize(None)
        text = values.astype(STRING)
        parsed = pd.to_datetime(text, format=self.spec.format or "ISO8601", utc=True, errors="coerce")
        bad = parsed.isna() & text.notna()
        if bad.any() and self.spec.errors == "raise":
            examples = text[bad].drop_duplicates().head(3).tolist()
            raise DataError(
                f"{self.where} ({self.name}): column {column!r} has {int(bad.sum())} value(s) that are not dates"
                f" in format {self.spec.format or 'ISO 8601'!r}, e.g. {examples}",
                hint="give the strings' `format` (e.g. '%d/%m/%Y %H:%M'), or set `errors: coerce` to make them missing",
            )
        return parsed.dt.tz_localize(None)


def _datetime_like(dtype) -> bool:
    dtype = value_dtype(dtype)
    return (
        pd.api.types.is_datetime64_any_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
    )


def _floats(values: pd.Series) -> np.ndarray:
    """A numeric column as a float64 array with NaN for missing (nullable dtypes included)."""
    return values.to_numpy(dtype="float64", na_value=np.nan)


class Log(Op):
    """``log(x + offset)`` as float64 (natural log).

    Values at or below ``-offset`` have no logarithm and become missing (NaN), as do missing
    values. With the default ``offset: 1.0`` this is ``log1p`` for counts and amounts.

    Examples
    --------
    ``{op: log, columns: [income, sessions], offset: 1.0}``
    """

    name = "log"

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=True)
        return meta.astype({c: "float64" for c in self.spec.columns})

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            x = _floats(pdf[c]) + self.spec.offset
            with np.errstate(invalid="ignore"):
                positive = x > 0
            # Only positive values reach the log: no -inf, no RuntimeWarning.
            out[c] = pd.Series(np.log(np.where(positive, x, np.nan)), index=pdf.index)
        return pdf.assign(**out)


class Power(Op):
    """Signed power ``sign(x) * |x| ** exponent`` as float64.

    The sign is kept so negative values stay ordered below positive ones (``exponent: 0.5`` on
    -4 gives -2, not NaN). Missing stays missing.

    Examples
    --------
    ``{op: power, columns: [income], exponent: 0.5}``
    """

    name = "power"

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=True)
        return meta.astype({c: "float64" for c in self.spec.columns})

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            x = _floats(pdf[c])
            out[c] = pd.Series(np.sign(x) * np.abs(x) ** self.spec.exponent, index=pdf.index)
        return pdf.assign(**out)


class Bucketize(Op):
    """Replace numbers by the index of their bin, as float32 (missing stays NaN).

    ``strategy: fixed`` cuts at the given ``boundaries`` (``len(boundaries) + 1`` bins; a value
    equal to a boundary goes to the upper bin). ``uniform`` and ``quantile`` learn ``n_bins`` bins
    of equal width between the training min and max, or of (about) equal counts, exactly as
    scikit-learn's ``KBinsDiscretizer(encode="ordinal")``: quantile edges are its default
    ``averaged_inverted_cdf`` quantiles (exact below 2048 values, from the mergeable sketch above
    that), bins narrower than 1e-8 are merged, a constant column is one bin (0), and values outside
    the training range go to the first or last bin. A column with no value at fit time stays NaN.

    Examples
    --------
    ``{op: bucketize, columns: [age], strategy: fixed, boundaries: [18, 30, 65]}``
    ``{op: bucketize, columns: [income], strategy: quantile, n_bins: 10}``
    """

    name = "bucketize"
    #: Interior bin edges per column (scikit-learn's ``bin_edges_[1:-1]``: JSON has no inf).
    state = ("edges_",)
    merges = {"min_max": merge_min_max, "sketch": merge_sketch}

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.stateful = spec.strategy != "fixed"  # fixed boundaries learn nothing

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=True)
        return meta.astype({c: "float32" for c in self.spec.columns})

    def fit(self, df):
        if self.spec.strategy == "uniform":
            return {"min_max": min_max(df, list(self.spec.columns))}
        return {f"sketch:{c}": quantile_sketch(df, c) for c in self.spec.columns}

    def finalize(self, stats):
        n = self.spec.n_bins
        self.edges_: dict[str, list[float] | None] = {}
        for c in self.spec.columns:
            if self.spec.strategy == "uniform":
                lo, hi = stats["min_max"].loc[c, "min"], stats["min_max"].loc[c, "max"]
            else:
                sketch = stats[f"sketch:{c}"]
                lo, hi = (np.nan, np.nan) if sketch.empty else (sketch["value"].min(), sketch["value"].max())
            if np.isnan(lo):
                self.edges_[c] = None
            elif lo == hi:
                self.edges_[c] = []  # scikit-learn's constant feature: one bin
            elif self.spec.strategy == "uniform":
                self.edges_[c] = [float(e) for e in np.linspace(lo, hi, n + 1)[1:-1]]
            else:
                levels = np.linspace(0, 100, n + 1) / 100
                edges = np.array([sketch_quantile(sketch, q, method="averaged_inverted_cdf") for q in levels])
                # Collapse edges closer than 1e-8, as scikit-learn does (but without its warning).
                edges = edges[np.ediff1d(edges, to_begin=np.inf) > 1e-8]
                self.edges_[c] = [float(e) for e in edges[1:-1]]

    def state_loaded(self):
        self.edges_ = {c: None if e is None else [float(v) for v in e] for c, e in self.edges_.items()}

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            x = _floats(pdf[c])
            # Fixed boundaries live in the spec only; learned edges are the state.
            edges = self.edges_[c] if self.stateful else self.spec.boundaries
            if edges is None:
                codes = np.full(len(x), np.nan, dtype="float32")
            else:
                # Values below the first / above the last edge land in the end bins.
                codes = np.searchsorted(np.asarray(edges, dtype="float64"), x, side="right").astype("float32")
                codes[np.isnan(x)] = np.nan
            out[c] = pd.Series(codes, index=pdf.index)
        return pdf.assign(**out)
