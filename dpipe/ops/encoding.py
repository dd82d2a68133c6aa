"""Categorical encoding: vocabularies learned at fit time, and stateless feature hashing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpipe.errors import ColumnError, DataError
from dpipe.ops.base import Op, to_builtin
from dpipe.ops.stats import value_counts

#: Category of the out-of-vocabulary bucket of ``categorical`` with ``unknown: bucket``.
OTHER = "__other__"


class Categorical(Op):
    """Map values to a fixed, fitted vocabulary; anything else becomes missing, or one bucket.

    The vocabulary is ordered by decreasing frequency (ties by value), keeps values seen at least
    ``min_frequency`` times and at most ``max_categories`` of them. The same vocabulary is used at
    prediction, so codes never shift between training and serving.

    Values outside the vocabulary (unseen at fit time, too rare, beyond ``max_categories``) become
    missing with ``unknown: missing`` (the default). With ``unknown: bucket`` they share one
    out-of-vocabulary bucket: category ``"__other__"`` after the vocabulary (with an integer
    vocabulary the categories are then an object index mixing the integers and that string; only
    the codes reach XGBoost), or code ``len(vocabulary)`` with ``encoding: ordinal``. Missing input
    stays missing either way.

    Examples
    --------
    ``{op: categorical, columns: [country, device], min_frequency: 5, unknown: bucket}``
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
            if self.spec.unknown == "bucket" and OTHER in self.categories_[c]:
                raise DataError(
                    f"{self.where} ({self.name}): column {c!r} holds the value {OTHER!r}, which `unknown: bucket`"
                    " uses for values outside the vocabulary",
                    hint="use `unknown: missing`, or rename that value in the source",
                )

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
            if self.spec.unknown == "bucket":
                codes[(codes < 0) & values.notna().to_numpy()] = len(cats)
                if isinstance(categories.dtype, pd.StringDtype) or not cats:
                    categories = pd.Index([*cats, OTHER], dtype=pd.StringDtype("pyarrow"))
                else:
                    categories = pd.Index([*cats, OTHER], dtype=object)
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


class HashBucket(Op):
    """Feature hashing: each value goes to bucket ``hash(text of the value) mod n_buckets``.

    Stateless, for columns with too many values for a vocabulary. The hash is pandas'
    ``hash_array`` (SipHash with a fixed key) of the value's text, so a value lands in the same
    bucket in every process, on every machine and in every release of the same pandas hashing.
    Integers and integral floats hash alike (``10`` and ``10.0``: a column read as float where it
    has missing values keeps its buckets). ``encoding: category`` gives categories
    ``0 .. n_buckets - 1`` in every partition; ``ordinal`` gives float32 bucket numbers. Missing
    stays missing. Different values may share a bucket.

    Examples
    --------
    ``{op: hash_bucket, columns: [user_agent, referrer], n_buckets: 1024}``
    """

    name = "hash_bucket"

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        return self.transform(meta)

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        n = self.spec.n_buckets
        out = {}
        for c in self.spec.columns:
            values = pdf[c]
            if isinstance(values.dtype, pd.CategoricalDtype):
                values = values.astype(values.dtype.categories.dtype)
            present = values.notna().to_numpy()
            codes = np.full(len(values), -1, dtype="int64")
            if present.any():
                hashed = pd.util.hash_array(_text(values[present]), categorize=False)
                codes[present] = (hashed % np.uint64(n)).astype("int64")
            if self.spec.encoding == "category":
                dtype = pd.CategoricalDtype(pd.RangeIndex(n))
                out[c] = pd.Series(pd.Categorical.from_codes(codes, dtype=dtype), index=pdf.index)
            else:
                floats = codes.astype("float32")
                floats[~present] = np.nan
                out[c] = pd.Series(floats, index=pdf.index)
        return pdf.assign(**out)


def _text(values: pd.Series) -> np.ndarray:
    """Present values as an object array of their text, integral floats written as integers."""
    if pd.api.types.is_float_dtype(values.dtype):
        x = values.to_numpy(dtype="float64")
        integral = (np.mod(x, 1) == 0) & (np.abs(x) < 2.0**53)
        text = x.astype(str).astype(object)
        text[integral] = x[integral].astype("int64").astype(str)
        return text
    return values.astype(pd.StringDtype("pyarrow")).to_numpy(dtype=object)
