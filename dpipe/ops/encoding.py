"""Categorical encoding: vocabularies learned at fit time, and stateless feature hashing."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from dpipe.columns import FOLD, LABEL, VALID
from dpipe.errors import ColumnError, DataError
from dpipe.ops.base import Op, to_builtin
from dpipe.ops.stats import value_counts

#: Category of the out-of-vocabulary bucket of ``categorical`` with ``unknown: bucket``.
OTHER = "__other__"


class _Vocabulary(Op):
    """A stateful op whose fitted state is a list of values per column (``categories_``)."""

    stateful = True

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.categories_: dict | None = None

    def fit(self, df):
        return {f"counts:{c}": value_counts(df, c) for c in self.spec.columns}

    def get_state(self):
        return None if self.categories_ is None else {"categories": self.categories_}

    def set_state(self, state):
        self.categories_ = {c: list(v) for c, v in state["categories"].items()}


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
    stateful = True

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


def _check_discrete(op: Op, meta: pd.DataFrame) -> None:
    bad = {c: str(meta[c].dtype) for c in op.spec.columns if pd.api.types.is_float_dtype(meta[c].dtype)}
    bad.update({c: str(meta[c].dtype) for c in op.spec.columns if _is_temporal(meta[c].dtype)})
    if bad:
        raise ColumnError(
            f"{op.where} ({op.name}): float, date and time columns cannot be encoded as categories: {bad}",
            hint="bucketize numbers first, or cast them to integers or strings",
        )


def _plain(values: pd.Series) -> pd.Series:
    """Categories as their values, integers stored as floats (a file with nulls) as integers."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(values.dtype.categories.dtype)
    return values


def _vocab_values(counts: pd.Series) -> list:
    values = counts.index
    if pd.api.types.is_float_dtype(values.dtype) and np.all(np.mod(values, 1) == 0):
        values = values.astype("int64")
    return [to_builtin(v) for v in values]


def _lookup(values: pd.Series, vocab: list) -> np.ndarray:
    """Position of each value in ``vocab`` (-1: not in it, or missing)."""
    values = _plain(values)
    if vocab and isinstance(vocab[0], str):
        values = values.astype(pd.StringDtype("pyarrow"))
        index = pd.Index(vocab, dtype=pd.StringDtype("pyarrow"))
    else:
        index = pd.Index(vocab)
    return index.get_indexer(values)


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
    stateful = True

    def output_columns(self) -> set[str]:
        if self.categories_ is None:
            return set(self.spec.columns)
        return set(self.spec.columns) | {n for c in self.spec.columns for n in self._names(c)}

    def _names(self, column: str) -> list[str]:
        names = [one_hot_name(column, v) for v in self.categories_[column]]
        return names + ([f"{column}_other"] if self.spec.other else [])

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        _check_discrete(self, meta)
        if self.categories_ is None:
            return meta.drop(columns=list(self.spec.columns))
        return self.transform(meta)

    def finalize(self, stats):
        self.categories_ = {}
        for c in self.spec.columns:
            counts: pd.Series = stats[f"counts:{c}"]
            counts = counts[counts >= self.spec.min_frequency]
            counts = counts.sort_values(ascending=False, kind="stable").head(self.spec.max_categories)
            values = _vocab_values(counts)
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
            codes = _lookup(pdf[c], vocab)
            for k, name in enumerate(self._names(c)[: len(vocab)]):
                out[name] = (codes == k).astype("float32")
            if self.spec.other:
                out[f"{c}_other"] = ((codes < 0) & pdf[c].notna().to_numpy()).astype("float32")
        frame = pdf.drop(columns=list(self.spec.columns))
        return frame.assign(**{k: pd.Series(v, index=pdf.index) for k, v in out.items()})


class TargetEncode(Op):
    """Smoothed mean of the label per category, out-of-fold for the training rows.

    For category ``v`` with label sum ``S_v`` over ``n_v`` training rows and prior ``p`` (the
    label mean): ``(S_v + smooth * p) / (n_v + smooth)``. A training row in fold ``f`` is
    encoded from the rows of the other folds only (``S_v - S_vf``, ``n_v - n_vf`` and that
    subset's prior), so its own label never reaches its feature; this is scikit-learn's
    ``TargetEncoder`` cross fitting. Validation rows and prediction use all training rows.
    Unseen and missing values get the prior.

    Examples
    --------
    ``{op: target_encode, columns: [dest, tailnum], smooth: 20}``
    """

    name = "target_encode"
    stateful = True
    needs_label = True

    def __init__(self, spec, where):
        super().__init__(spec, where)
        self.encoding_: dict | None = None

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        _check_discrete(self, meta)
        # The fold column comes with the label from the runner's Labeler (``folds=True``); a frame
        # with a label but no folds cannot be cross-fitted either.
        if not self.fitted and not {LABEL, FOLD} <= set(meta.columns):
            raise ColumnError(
                f"{self.where} ({self.name}): needs the label to fit, and this frame has none",
                hint="target encoding is fitted by `dpipe run`, which adds the label",
            )
        if LABEL in meta.columns and not pd.api.types.is_numeric_dtype(meta[LABEL].dtype):
            raise ColumnError(f"{self.where} ({self.name}): the label must be numeric", hint="check `label`")
        return meta.astype({c: "float32" for c in self.spec.columns})

    def fit(self, df):
        # FeaturePipeline.fit does not describe() first (the runner does): check the frame here so
        # a frame without the label, or with a text label, fails with a ColumnError naming this op
        # rather than a KeyError or ValueError from inside Dask.
        self.describe(df._meta)
        k = self.spec.folds
        stats = {}
        for c in self.spec.columns:
            frame = df[[c, LABEL, FOLD]]
            frame = frame.assign(**{FOLD: frame[FOLD] % k})
            grouped = frame.groupby([c, FOLD], dropna=True, observed=True)[LABEL]
            stats[f"sums:{c}"] = grouped.agg(["sum", "count"], split_out=1)
        labels = df[[LABEL, FOLD]].assign(**{FOLD: df[FOLD] % k})
        stats["prior"] = labels.groupby(FOLD)[LABEL].agg(["sum", "count"], split_out=1)
        return stats

    def finalize(self, stats):
        k = self.spec.folds
        prior = stats["prior"].reindex(range(k), fill_value=0)
        total_sum, total_n = float(prior["sum"].sum()), float(prior["count"].sum())
        self.encoding_ = {
            "prior": total_sum / total_n if total_n else None,
            "fold_sum": [float(x) for x in prior["sum"]],
            "fold_count": [float(x) for x in prior["count"]],
            "columns": {},
        }
        for c in self.spec.columns:
            table: pd.DataFrame = stats[f"sums:{c}"]
            per_fold = table.unstack(FOLD, fill_value=0)
            values = _vocab_values(per_fold)
            if values:
                fold_sum = per_fold["sum"].reindex(columns=range(k), fill_value=0).to_numpy(dtype="float64")
                fold_count = per_fold["count"].reindex(columns=range(k), fill_value=0).to_numpy(dtype="float64")
            else:
                # No value at fit time (an all-missing column): the unstacked frame has no columns.
                fold_sum = fold_count = np.zeros((0, k))
            order = sorted(range(len(values)), key=lambda i: (str(type(values[i])), values[i]))
            self.encoding_["columns"][c] = {
                "values": [values[i] for i in order],
                "fold_sum": fold_sum[order].T.tolist(),
                "fold_count": fold_count[order].T.tolist(),
            }

    def get_state(self):
        return self.encoding_

    def set_state(self, state):
        self.encoding_ = state

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        m = self.spec.smooth
        enc = self.encoding_
        prior = enc["prior"] if enc["prior"] is not None else np.nan
        training = LABEL in pdf.columns and FOLD in pdf.columns and VALID in pdf.columns
        if training:
            fold = (pdf[FOLD].to_numpy() % self.spec.folds).astype("int64")
            in_train = ~pdf[VALID].to_numpy(dtype=bool)
            fold_sum, fold_count = np.asarray(enc["fold_sum"]), np.asarray(enc["fold_count"])
            oof_n = fold_count.sum() - fold_count
            with np.errstate(invalid="ignore", divide="ignore"):
                oof_prior = np.where(oof_n > 0, (fold_sum.sum() - fold_sum) / oof_n, prior)
        out = {}
        for c in self.spec.columns:
            col = enc["columns"][c]
            sums = np.asarray(col["fold_sum"], dtype="float64").reshape(self.spec.folds, -1)
            counts = np.asarray(col["fold_count"], dtype="float64").reshape(self.spec.folds, -1)
            codes = _lookup(pdf[c], col["values"])
            known = codes >= 0
            if not col["values"]:
                # Every row gets the prior; a zero column keeps the lookups below in bounds.
                sums, counts = np.zeros((self.spec.folds, 1)), np.zeros((self.spec.folds, 1))
            safe = np.where(known, codes, 0)
            s, n = sums.sum(axis=0)[safe], counts.sum(axis=0)[safe]
            value = _smoothed(s, n, m, prior, known)
            if training and len(pdf):
                f = fold[in_train]
                cs, ks = safe[in_train], known[in_train]
                oof_s = s[in_train] - sums[f, cs]
                oof_n_c = n[in_train] - counts[f, cs]
                value[in_train] = _smoothed(oof_s, oof_n_c, m, oof_prior[f], ks)
            out[c] = pd.Series(value.astype("float32"), index=pdf.index)
        return pdf.assign(**out)


def _smoothed(s, n, m, prior, known) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (s + m * prior) / (n + m)
    # No row of the category (out of fold, or unseen): the prior, whatever the smoothing.
    return np.where(known & (n > 0), value, prior).astype("float64")


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
