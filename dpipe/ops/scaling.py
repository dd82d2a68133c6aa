"""Scaling ops, fitted on lazy mergeable statistics and checked against scikit-learn.

dask-ml's scalers compute their statistics eagerly inside ``fit`` (one computation per op),
which defeats the planner's one ``dask.compute`` per fit phase; dpipe computes the same statistics
as lazy mergeable partials (:mod:`dpipe.ops.stats`) instead, and its tests compare the results with
scikit-learn and dask-ml on the same data.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dpipe.ops.base import Op, to_builtin
from dpipe.ops.stats import (
    merge_min_max,
    merge_moments,
    merge_sketch,
    min_max,
    moments,
    quantile_sketch,
    sketch_quantile,
)

EPS = float(np.finfo(np.float64).eps)


class StandardScale(Op):
    """``(x - mean) / std`` with the population std of the training rows (as scikit-learn).

    A constant column (std 0) is only centred. Missing values stay missing.

    Examples
    --------
    ``{op: standard_scale, columns: [age, income]}``
    """

    name = "standard_scale"
    stateful = True
    state = ("mean_", "scale_")
    merges = {"moments": merge_moments}

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=True)
        return meta.astype({c: "float64" for c in self.spec.columns})

    def fit(self, df):
        return {"moments": moments(df, list(self.spec.columns))}

    def finalize(self, stats):
        m = stats["moments"]
        self.mean_, self.scale_ = {}, {}
        for c in self.spec.columns:
            n, mean, m2 = m.loc[c, "n"], m.loc[c, "mean"], m.loc[c, "m2"]
            var = m2 / n if n > 0 else float("nan")
            # A constant column's variance is rounding noise, not 0 (the merged mean of 0.1s is
            # not exactly 0.1); dividing by it would blow the noise up to ~1. Same bound as
            # scikit-learn's `_is_constant_feature`.
            constant = n > 0 and var <= n * EPS * var + (n * mean * EPS) ** 2
            self.mean_[c] = to_builtin(mean) if self.spec.with_mean else 0.0
            use_std = self.spec.with_std and n > 0 and not constant
            self.scale_[c] = math.sqrt(var) if use_std else 1.0

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            mean = self.mean_[c] if self.mean_[c] is not None else 0.0
            out[c] = (pdf[c].astype("float64") - mean) / self.scale_[c]
        return pdf.assign(**out)


def _floats(values: pd.Series) -> pd.Series:
    return pd.Series(values.to_numpy(dtype="float64", na_value=np.nan), index=values.index)


class MinMaxScale(Op):
    """Scale to ``feature_range`` with the min and max of the training rows (as scikit-learn).

    ``x * scale + offset`` with ``scale = (high - low) / (max - min)`` and
    ``offset = low - min * scale``, the same arithmetic as ``sklearn.preprocessing.MinMaxScaler``.
    A constant column maps to ``low``; values outside the training range land outside
    ``feature_range`` (no clipping). Missing values are ignored when fitting and stay missing;
    a column without any value at fit time stays missing. Output is float64.

    Examples
    --------
    ``{op: minmax_scale, columns: [age, income], feature_range: [0, 1]}``
    """

    name = "minmax_scale"
    stateful = True
    state = ("scale_", "offset_")
    merges = {"min_max": merge_min_max}

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=True)
        return meta.astype({c: "float64" for c in self.spec.columns})

    def fit(self, df):
        return {"min_max": min_max(df, list(self.spec.columns))}

    def finalize(self, stats):
        low, high = self.spec.feature_range
        m = stats["min_max"]
        self.scale_, self.offset_ = {}, {}
        for c in self.spec.columns:
            lo, hi = m.loc[c, "min"], m.loc[c, "max"]
            span = hi - lo
            # scikit-learn's `_handle_zeros_in_scale`: a constant column is not divided by ~0.
            if span < 10 * EPS:
                span = 1.0
            scale = (high - low) / span
            self.scale_[c] = to_builtin(scale)
            self.offset_[c] = to_builtin(low - lo * scale)

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            x = _floats(pdf[c])
            if self.scale_[c] is None:
                out[c] = x * np.nan
            else:
                out[c] = x * self.scale_[c] + self.offset_[c]
        return pdf.assign(**out)


class RobustScale(Op):
    """``(x - median) / (q_high - q_low)`` with quantiles of the training rows (as scikit-learn).

    ``quantile_range`` is in percent (default the interquartile range ``[25, 75]``). Quantiles
    come from the mergeable sketch of :mod:`dpipe.ops.stats`: exact (``numpy`` linear
    interpolation, as ``sklearn.preprocessing.RobustScaler``) below 2048 values, within about
    1/2048 in rank above. A zero range is replaced by 1 (as scikit-learn). Missing values are
    ignored when fitting and stay missing. Output is float64.

    Examples
    --------
    ``{op: robust_scale, columns: [income], quantile_range: [25, 75]}``
    """

    # dask-ml 2025.1's RobustScaler fails on a Dask DataFrame under numpy 2 (it calls
    # `np.find_common_type`, removed in numpy 2.0), and would compute eagerly anyway: the
    # statistics come from the mergeable quantile sketch instead.

    name = "robust_scale"
    stateful = True
    state = ("center_", "scale_")
    merges = {"sketch": merge_sketch}

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=True)
        return meta.astype({c: "float64" for c in self.spec.columns})

    def fit(self, df):
        return {f"sketch:{c}": quantile_sketch(df, c) for c in self.spec.columns}

    def finalize(self, stats):
        q_low, q_high = (q / 100 for q in self.spec.quantile_range)
        self.center_, self.scale_ = {}, {}
        for c in self.spec.columns:
            sketch = stats[f"sketch:{c}"]
            median = sketch_quantile(sketch, 0.5)
            self.center_[c] = median if self.spec.with_centering else 0.0
            if not self.spec.with_scaling or sketch.empty:
                self.scale_[c] = 1.0
                continue
            high, low = sketch_quantile(sketch, q_high), sketch_quantile(sketch, q_low)
            assert high is not None and low is not None  # None only for an empty sketch, skipped above
            span = high - low
            # scikit-learn's `_handle_zeros_in_scale`.
            self.scale_[c] = 1.0 if span < 10 * EPS else span

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            # A column without values at fit time has no median: it stays missing.
            center = self.center_[c] if self.center_[c] is not None else np.nan
            out[c] = (_floats(pdf[c]) - center) / self.scale_[c]
        return pdf.assign(**out)
