"""A user-defined op as a user would write one, for tests/ops/test_custom.py.

It lives in an importable module (``tests.ops.custom_ops``) because workers import it by path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from dpipe.ops import Op
from dpipe.ops.stats import quantile_sketch, sketch_quantile


class Winsorize(Op):
    """Clip each column to its ``q`` and ``1 - q`` quantiles of the training rows."""

    stateful = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        columns: list[str] = Field(min_length=1)
        q: float = Field(default=0.01, gt=0.0, lt=0.5)

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.bounds_: dict | None = None

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns, numeric=True)
        return meta.astype({c: "float64" for c in self.spec.columns})

    def fit(self, df):
        return {c: quantile_sketch(df, c) for c in self.spec.columns}

    def finalize(self, stats):
        q = self.spec.q
        self.bounds_ = {c: [sketch_quantile(stats[c], q), sketch_quantile(stats[c], 1 - q)] for c in self.spec.columns}

    def get_state(self):
        return None if self.bounds_ is None else {"bounds": self.bounds_}

    def set_state(self, state):
        self.bounds_ = {c: list(b) for c, b in state["bounds"].items()}

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            low, high = self.bounds_[c]
            values = pd.Series(pdf[c].to_numpy(dtype="float64", na_value=np.nan), index=pdf.index)
            out[c] = values.clip(low, high)
        return pdf.assign(**out)


class DropBelow(Op):
    """Written the way dpipe 0.1's built-ins were: ``stateful`` assigned in ``__init__`` (it
    depends on the spec) and measurements of its own in ``diagnose``."""

    filters_rows = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        column: str
        learn: bool = False

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.stateful = spec.learn
        self.partition_wise = True

    def input_columns(self):
        return {self.spec.column}

    def output_columns(self):
        return set()

    def transform(self, pdf):
        return pdf[pdf[self.spec.column] >= 0]

    def diagnose(self, before, after):
        return {**super().diagnose(before, after), "negative": (before[self.spec.column] < 0).sum()}


class NotAnOp:
    """Has the right shape but does not subclass Op."""

    class Params(BaseModel):
        columns: list[str]
