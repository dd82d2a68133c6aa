"""Scaling ops."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dpipe.ops.base import Op, to_builtin
from dpipe.ops.stats import moments

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

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.mean_: dict | None = None
        self.scale_: dict | None = None

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

    def get_state(self):
        return None if self.mean_ is None else {"mean": self.mean_, "scale": self.scale_}

    def set_state(self, state):
        self.mean_, self.scale_ = dict(state["mean"]), dict(state["scale"])

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            mean = self.mean_[c] if self.mean_[c] is not None else 0.0
            out[c] = (pdf[c].astype("float64") - mean) / self.scale_[c]
        return pdf.assign(**out)
