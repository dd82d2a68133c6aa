"""Categorical encoding with vocabularies learned at fit time."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpipe.errors import ColumnError
from dpipe.ops.base import Op, to_builtin
from dpipe.ops.stats import value_counts


class Categorical(Op):
    """Map values to a fixed, fitted vocabulary; anything else becomes missing.

    The vocabulary is ordered by decreasing frequency (ties by value), keeps values seen at least
    ``min_frequency`` times and at most ``max_categories`` of them. The same vocabulary is used at
    prediction, so codes never shift between training and serving.

    Examples
    --------
    ``{op: categorical, columns: [country, device], min_frequency: 5}``
    """

    name = "categorical"
    stateful = True

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.categories_: dict | None = None

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        bad = {c: str(meta[c].dtype) for c in self.spec.columns if pd.api.types.is_float_dtype(meta[c].dtype)}
        if bad:
            raise ColumnError(
                f"{self.where} ({self.name}): float columns cannot be categories: {bad}",
                hint="use `standard_scale` for numbers, or cast them to integers or strings first",
            )
        # Timestamps would be learned as such but saved as text in the bundle's JSON, so every value
        # would be unseen (missing) at prediction.
        bad = {c: str(meta[c].dtype) for c in self.spec.columns if _is_temporal(meta[c].dtype)}
        if bad:
            raise ColumnError(
                f"{self.where} ({self.name}): date and time columns cannot be categories: {bad}",
                hint="store them as strings in the source, or leave them out (`train.exclude`)",
            )
        if self.categories_ is not None:
            return self.transform(meta)
        dtype = "category" if self.spec.encoding == "category" else "float32"
        return meta.astype({c: dtype for c in self.spec.columns})

    def fit(self, df):
        return {f"counts:{c}": value_counts(df, c) for c in self.spec.columns}

    def finalize(self, stats):
        self.categories_ = {}
        for c in self.spec.columns:
            counts: pd.Series = stats[f"counts:{c}"]
            counts = counts[counts >= self.spec.min_frequency]
            values = counts.index
            # An integer column is float64 in a file where it has a missing value (pyarrow gives
            # it no integer dtype there), and XGBoost refuses float categories: describe() lets
            # no float column through, so these floats are the integers they stand for.
            if pd.api.types.is_float_dtype(values.dtype) and np.all(np.mod(values, 1) == 0):
                values = values.astype("int64")
            frame = pd.DataFrame({"value": values, "n": counts.to_numpy()})
            key = frame["value"]
            if isinstance(key.dtype, pd.CategoricalDtype):
                key = key.astype(key.dtype.categories.dtype)
            # Ties go by value (2 before 10); only a mixed-type object column falls back to text.
            frame["key"] = key.astype(str) if key.dtype == object else key
            frame = frame.sort_values(["n", "key"], ascending=[False, True], kind="stable")
            if self.spec.max_categories is not None:
                frame = frame.head(self.spec.max_categories)
            self.categories_[c] = [to_builtin(v) for v in frame["value"]]

    def get_state(self):
        return None if self.categories_ is None else {"categories": self.categories_}

    def set_state(self, state):
        self.categories_ = {c: list(v) for c, v in state["categories"].items()}

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            cats = self.categories_[c]
            values = pdf[c]
            if isinstance(values.dtype, pd.CategoricalDtype):
                values = values.astype(values.dtype.categories.dtype)
            if cats and isinstance(cats[0], str):
                values = values.astype(pd.StringDtype("pyarrow"))
                categories = pd.Index(cats, dtype=pd.StringDtype("pyarrow"))
            else:
                categories = pd.Index(cats)
            # Codes by lookup: `pd.Categorical(values, categories=...)` warns on unseen values
            # under pandas 3 (Pandas4Warning) and will raise under pandas 4.
            codes = categories.get_indexer(values)
            if self.spec.encoding == "category":
                encoded = pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(categories))
                out[c] = pd.Series(encoded, index=pdf.index)
            else:
                codes = codes.astype("float32")
                codes[codes < 0] = np.nan
                out[c] = pd.Series(codes, index=pdf.index)
        return pdf.assign(**out)


def _is_temporal(dtype) -> bool:
    is_time = pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype)
    return is_time or isinstance(dtype, pd.PeriodDtype)
