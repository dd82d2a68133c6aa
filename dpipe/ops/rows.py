"""Row filters and derived columns from safe expressions."""

from __future__ import annotations

import pandas as pd

from dpipe.expr import Expression
from dpipe.ops.base import Op


class _ExpressionOp(Op):
    """An op driven by one safe expression, ``spec.expr``."""

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.expr = Expression(spec.expr, where=f"{where}.expr")

    def input_columns(self):
        return set(self.expr.columns)


class FilterRows(_ExpressionOp):
    """Keep rows where ``expr`` is true; rows where it is missing are dropped.

    Examples
    --------
    ``{op: filter, expr: "sessions > 0 and country != 'XX'"}``
    """

    name = "filter"
    filters_rows = True

    def output_columns(self):
        return set()

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        return pdf[self.expr.mask(pdf)]


class Derive(_ExpressionOp):
    """Add or replace column ``name`` with the value of ``expr``.

    Examples
    --------
    ``{op: derive, name: income_per_session, expr: "income / (sessions + 1)"}``
    """

    name = "derive"

    def output_columns(self):
        return {self.spec.name}

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        value = self.expr.evaluate(pdf)
        if isinstance(value, pd.Series) and pd.api.types.is_bool_dtype(value.dtype):
            # Conditions become 1.0 / 0.0, and NaN where an input was missing: one dtype always.
            value = value.astype("float32")
        return pdf.assign(**{self.spec.name: value})
