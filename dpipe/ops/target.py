"""Target encoding: the smoothed label mean per category, cross-fitted on the training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dpipe.columns import FOLD, LABEL, SIDE, TRAIN
from dpipe.errors import ColumnError
from dpipe.ops.base import Op
from dpipe.ops.encoding import check_discrete, lookup, vocab_index, vocab_values
from dpipe.ops.stats import merge_sums


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
    #: The label prior over all training rows, the label sum and count of each fold, and per
    #: column its ``values`` with their sums and counts per fold (``fold_sum[fold][value]``).
    state = ("prior_", "fold_sum_", "fold_count_", "columns_")
    merges = {"sums": merge_sums, "prior": merge_sums}

    def describe(self, meta):
        self.require_columns(meta, self.spec.columns)
        check_discrete(self, meta)
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
        self.prior_ = total_sum / total_n if total_n else None
        self.fold_sum_ = [float(x) for x in prior["sum"]]
        self.fold_count_ = [float(x) for x in prior["count"]]
        self.columns_ = {}
        for c in self.spec.columns:
            table: pd.DataFrame = stats[f"sums:{c}"]
            per_fold = table.unstack(FOLD, fill_value=0)
            values = vocab_values(per_fold)
            if values:
                fold_sum = per_fold["sum"].reindex(columns=range(k), fill_value=0).to_numpy(dtype="float64")
                fold_count = per_fold["count"].reindex(columns=range(k), fill_value=0).to_numpy(dtype="float64")
            else:
                # No value at fit time (an all-missing column): the unstacked frame has no columns.
                fold_sum = fold_count = np.zeros((0, k))
            order = sorted(range(len(values)), key=lambda i: (str(type(values[i])), values[i]))
            self.columns_[c] = {
                "values": [values[i] for i in order],
                "fold_sum": fold_sum[order].T.tolist(),
                "fold_count": fold_count[order].T.tolist(),
            }

    def transform(self, pdf: pd.DataFrame) -> pd.DataFrame:
        m = self.spec.smooth
        prior = self.prior_ if self.prior_ is not None else np.nan
        training = LABEL in pdf.columns and FOLD in pdf.columns and SIDE in pdf.columns
        if training:
            fold = (pdf[FOLD].to_numpy() % self.spec.folds).astype("int64")
            in_train = pdf[SIDE].to_numpy() == TRAIN
            fold_sum, fold_count = np.asarray(self.fold_sum_), np.asarray(self.fold_count_)
            oof_n = fold_count.sum() - fold_count
            with np.errstate(invalid="ignore", divide="ignore"):
                oof_prior = np.where(oof_n > 0, (fold_sum.sum() - fold_sum) / oof_n, prior)
        out = {}
        for c in self.spec.columns:
            col = self.columns_[c]
            sums = np.asarray(col["fold_sum"], dtype="float64").reshape(self.spec.folds, -1)
            counts = np.asarray(col["fold_count"], dtype="float64").reshape(self.spec.folds, -1)
            codes = lookup(pdf[c], vocab_index(col["values"]))
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
