"""Categorical encoding: vocabularies learned at fit time, and stateless feature hashing.

Target encoding, which learns from the label as well, is in :mod:`dpipe.ops.target`.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from dpipe.errors import ColumnError, DataError
from dpipe.ops.base import STRING, Op, is_temporal, plain, to_builtin
from dpipe.ops.stats import merge_sums, value_counts

#: Category of the out-of-vocabulary bucket of ``categorical`` with ``unknown: bucket``.
OTHER = "__other__"


class _Vocabulary(Op):
    """A stateful op whose fitted state is a list of values per column (``categories_``)."""

    stateful = True
    state = ("categories_",)
    merges = {"counts": merge_sums}

    def fit(self, df):
        return {f"counts:{c}": value_counts(df, c) for c in self.spec.columns}


class Categorical(_Vocabulary):
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
        bad = {c: str(meta[c].dtype) for c in self.spec.columns if is_temporal(meta[c].dtype)}
        if bad:
            raise ColumnError(
                f"{self.where} ({self.name}): date and time columns cannot be categories: {bad}",
                hint="store them as strings in the source, or leave them out (`train.exclude`)",
            )
        if self.fitted:
            return self.transform(meta)
        dtype = "category" if self.spec.encoding == "category" else "float32"
        return meta.astype({c: dtype for c in self.spec.columns})

    def finalize(self, stats):
        self.categories_ = {}
        for c in self.spec.columns:
            counts: pd.Series = stats[f"counts:{c}"]
            counts = counts[counts >= self.spec.min_frequency]
            # XGBoost refuses float categories: describe() lets no float column through, so
            # float values are integers read from a file with nulls.
            frame = pd.DataFrame({"value": integral(counts.index), "n": counts.to_numpy()})
            key = plain(frame["value"])
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

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            cats = self.categories_[c]
            categories = vocab_index(cats)
            codes = lookup(pdf[c], categories)
            if self.spec.unknown == "bucket":
                codes[(codes < 0) & pdf[c].notna().to_numpy()] = len(cats)
                if isinstance(categories.dtype, pd.StringDtype) or not cats:
                    categories = pd.Index([*cats, OTHER], dtype=STRING)
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


def check_discrete(op: Op, meta: pd.DataFrame) -> None:
    bad = {c: str(meta[c].dtype) for c in op.spec.columns if pd.api.types.is_float_dtype(meta[c].dtype)}
    bad.update({c: str(meta[c].dtype) for c in op.spec.columns if is_temporal(meta[c].dtype)})
    if bad:
        raise ColumnError(
            f"{op.where} ({op.name}): float, date and time columns cannot be encoded as categories: {bad}",
            hint="bucketize numbers first, or cast them to integers or strings",
        )


def integral(values: pd.Index) -> pd.Index:
    """Integers stored as floats (a file with nulls: pyarrow gives them no integer dtype) as integers."""
    if pd.api.types.is_float_dtype(values.dtype) and np.all(np.mod(values, 1) == 0):
        return values.astype("int64")
    return values


def vocab_values(counts) -> list:
    """The values of computed ``value_counts`` (or of a frame's index) as JSON-able scalars."""
    return [to_builtin(v) for v in integral(counts.index)]


def vocab_index(vocab: list) -> pd.Index:
    """A saved vocabulary as an index; text as Arrow strings, so lookups compare like with like."""
    if vocab and isinstance(vocab[0], str):
        return pd.Index(vocab, dtype=STRING)
    return pd.Index(vocab)


def lookup(values: pd.Series, vocab: pd.Index) -> np.ndarray:
    """Position of each value in ``vocab`` (from :func:`vocab_index`); -1: not in it, or missing.

    Codes by lookup: ``pd.Categorical(values, categories=...)`` warns on unseen values under
    pandas 3 (Pandas4Warning) and will raise under pandas 4.
    """
    values = plain(values)
    if isinstance(vocab.dtype, pd.StringDtype):
        values = values.astype(STRING)
    return vocab.get_indexer(values)


_UNSAFE = re.compile(r"[^0-9A-Za-z_.-]+")


def one_hot_name(column: str, value) -> str:
    """``{column}_{value}`` with characters XGBoost rejects in feature names replaced."""
    return f"{column}_{_UNSAFE.sub('_', str(value))}"


class OneHot(_Vocabulary):
    """0/1 indicator columns for the frequent values of low-cardinality columns.

    Examples
    --------
    ``{op: one_hot, columns: [origin], max_categories: 10}`` turns ``origin`` into
    ``origin_EWR``, ``origin_JFK``, ``origin_LGA`` and ``origin_other`` (float32).
    """

    name = "one_hot"

    def output_columns(self) -> set[str]:
        if not self.fitted:
            return set(self.spec.columns)
        return set(self.spec.columns) | {n for c in self.spec.columns for n in self._names(c)}

    def _names(self, column: str) -> list[str]:
        names = [one_hot_name(column, v) for v in self.categories_[column]]
        return names + ([f"{column}_other"] if self.spec.other else [])

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        check_discrete(self, meta)
        if not self.fitted:
            return meta.drop(columns=list(self.spec.columns))
        return self.transform(meta)

    def finalize(self, stats):
        self.categories_ = {}
        for c in self.spec.columns:
            counts: pd.Series = stats[f"counts:{c}"]
            counts = counts[counts >= self.spec.min_frequency]
            counts = counts.sort_values(ascending=False, kind="stable").head(self.spec.max_categories)
            values = vocab_values(counts)
            self.categories_[c] = sorted(values, key=lambda v: (str(type(v)), v))
            names = self._names(c)
            clashes = sorted({n for n in names if names.count(n) > 1})
            if clashes:
                raise DataError(
                    f"{self.where} ({self.name}): values of {c!r} give the same column name(s) {clashes}",
                    hint="clean the values first (e.g. with a `derive`), or use `categorical`",
                )

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in self.spec.columns:
            vocab = self.categories_[c]
            codes = lookup(pdf[c], vocab_index(vocab))
            for k, name in enumerate(self._names(c)[: len(vocab)]):
                out[name] = (codes == k).astype("float32")
            if self.spec.other:
                out[f"{c}_other"] = ((codes < 0) & pdf[c].notna().to_numpy()).astype("float32")
        frame = pdf.drop(columns=list(self.spec.columns))
        return frame.assign(**{k: pd.Series(v, index=pdf.index) for k, v in out.items()})


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
            values = plain(pdf[c])
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
    return values.astype(STRING).to_numpy(dtype=object)
