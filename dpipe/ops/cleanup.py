"""Cleanup ops: filling missing values."""

from __future__ import annotations

import pandas as pd

from dpipe.ops.base import Op, to_builtin
from dpipe.ops.stats import moments, quantile_sketch, sketch_quantile


class FillMissing(Op):
    """Replace missing values by a constant, or by the mean or median of the training rows.

    Examples
    --------
    ``{op: fill_missing, columns: [age, income], strategy: median}``
    """

    name = "fill_missing"

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.stateful = spec.strategy != "constant"
        self.values_: dict | None = None if self.stateful else {c: spec.value for c in spec.columns}

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=self.stateful)
        if self.values_ is None:
            return meta
        return self.transform(meta)

    def fit(self, df):
        columns = list(self.spec.columns)
        if self.spec.strategy == "mean":
            return {"moments": moments(df, columns)}
        return {f"sketch:{c}": quantile_sketch(df, c) for c in columns}

    def finalize(self, stats):
        if self.spec.strategy == "mean":
            m = stats["moments"]
            self.values_ = {c: to_builtin(m.loc[c, "mean"]) for c in self.spec.columns}
        else:
            self.values_ = {c: sketch_quantile(stats[f"sketch:{c}"], 0.5) for c in self.spec.columns}

    def get_state(self):
        return None if self.values_ is None else {"values": self.values_}

    def set_state(self, state):
        self.values_ = dict(state["values"])

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        # A column with no value seen at fit time (all missing) stays missing.
        fill = {c: v for c, v in self.values_.items() if v is not None}
        if self.stateful:
            # The mean or median of integers need not be one, and a nullable integer column
            # (Int64, int64[pyarrow]) refuses 2.5: round, so every column keeps its dtype.
            fill = {c: round(v) if pd.api.types.is_integer_dtype(pdf[c].dtype) else v for c, v in fill.items()}
        return pdf.fillna(fill) if fill else pdf
