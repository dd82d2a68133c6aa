"""Reference profiles of a model's inputs and predictions, and drift statistics against them.

Three steps, each a function of explicit inputs:

1. :func:`reference_measures` (training run): lazy statistics of the model-input rows and of the
   validation predictions: a quantile sketch (:func:`dpipe.ops.stats.quantile_sketch`), count
   and missing count per numeric feature, counts of the fitted categories per categorical one.
   :func:`reference_profile` turns their computed values into ``profile.json``: fixed bins.
2. :func:`current_measures` (a new batch): counts on the profile's fixed bins, computed per
   partition (``np.searchsorted`` + ``np.bincount``) and summed in one tree reduction, so the
   batch is read once and nothing is shuffled.
3. :func:`compare`: per feature PSI, Jensen-Shannon distance, KS (numbers), missing-rate change
   and unseen-category rate; the same for the predictions; metrics when labels were measured.

Bins
----
A numeric feature gets up to :data:`BINS` bins between the reference's quantiles at 1/20, 2/20,
... (values of the sketch, de-duplicated, so a discrete feature gets one bin per value), with
open ends: bin ``i`` holds ``edges[i-1] <= x < edges[i]`` (``np.searchsorted(edges, x,
side="right")``), bin 0 everything below ``edges[0]``, the last everything from ``edges[-1]`` up.
``profile.json`` stores only the inner edges (JSON has no infinity). For KS the same is done on
finer edges (:data:`KS_BINS` quantiles). Reference fractions come from the sketch's weights, so
they are exact while it holds every value (fewer than 2048) and within its rank error past that.
Numbers are compared as the model sees them (float32).

Statistics
----------
PSI and JS compare distributions over the bins (categories) plus one bin for missing values:
``PSI = sum((c - r) * ln(c / r))``, where an empty bin counts as :data:`EPSILON` (0.01%) on either
side so PSI stays finite; JS is the Jensen-Shannon distance with base-2 logarithms (the square
root of the divergence, in [0, 1], as :func:`scipy.spatial.distance.jensenshannon` with
``base=2``). KS is the largest difference of the two CDFs (of non-missing values) at the fine
edges: a lower bound of the exact two-sample KS statistic, which takes the supremum over every
value. The unseen-category rate is the fraction of batch rows whose value has no category in the
model (never seen in training, or too rare to get one), read from the source column of the same
name before the feature ops (a categorical feature the ops derive has none).

Predictions
-----------
Every prediction column (one for binary and regression objectives, ``prediction_<k>`` per class
of ``multi:softprob``) is profiled like a numeric feature: multiclass drift is judged per class
probability, and the worst column stands for the predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dpipe.ops.base import count_rows, plain, to_builtin
from dpipe.ops.encoding import OTHER, lookup, vocab_index
from dpipe.ops.stats import quantile_sketch
from dpipe.train import ModelInput

#: The profile's file in a model bundle.
PROFILE = "profile.json"
PROFILE_VERSION = 1
#: Quantile bins per numeric feature for PSI and JS, and finer ones for KS.
BINS = 20
KS_BINS = 100
#: The fraction an empty bin counts as in PSI (and only there).
EPSILON = 1e-4
#: Unseen values kept as examples, per categorical feature.
EXAMPLES = 10
#: Uniform bins of predicted probabilities for AUC (pairs in one bin count half).
AUC_BINS = 1024

_SEP = "\x1f"


# -- reference ---------------------------------------------------------------------------------
def reference_measures(frame: Any, model_input: ModelInput, *, prediction: Any = None) -> dict[str, Any]:
    """Lazy statistics of the model-input rows ``frame`` (and of ``prediction``) for a profile.

    Nothing is computed: every leaf is a lazy Dask object, to compute in one pass with the other
    measures of a run. ``frame`` holds the feature columns (more are ignored); ``prediction``
    is a Dask Series or a DataFrame of prediction columns (the validation rows'), or ``None``.

    Examples
    --------
    >>> values = dask.compute(reference_measures(train_rows, model_input, prediction=preds))[0]
    >>> profile = reference_profile(values, model_input)
    """
    rows = frame.map_partitions(model_input, meta=model_input(frame._meta))
    numeric = [c for c in model_input.features if c not in model_input.categorical]
    out: dict[str, Any] = {
        "rows": count_rows(rows),
        "numeric": {c: _numeric_measures(rows, c) for c in numeric},
        "categorical": {
            c: {"counts": _category_counts(rows, c), "missing": rows[c].isna().sum()} for c in model_input.categorical
        },
    }
    if prediction is not None:
        preds = prediction.to_frame() if getattr(prediction, "ndim", 2) == 1 else prediction
        preds = preds.astype("float32")
        out["prediction"] = {
            "rows": count_rows(preds),
            "numeric": {c: _numeric_measures(preds, c) for c in preds.columns},
        }
    return out


def build_profile(
    frame: Any,
    model_input: ModelInput,
    *,
    prediction: Any = None,
    compute: Callable[..., tuple[Any, ...]] | None = None,
) -> dict[str, Any]:
    """:func:`reference_measures` computed in one ``compute(*lazy)`` call (default
    ``dask.compute``), then :func:`reference_profile`: ``profile.json`` in one step.

    Examples
    --------
    >>> preds = predict_frame(booster, placed.valid, model_input, [])
    >>> profile = build_profile(placed.train, model_input, prediction=preds, compute=compute)
    """
    import dask

    lazy = reference_measures(frame, model_input, prediction=prediction)
    paths, leaves = _leaves(lazy)
    computed = (compute or dask.compute)(*leaves)
    values: dict[str, Any] = {}
    for path, value in zip(paths, computed, strict=True):
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return reference_profile(values, model_input)


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> tuple[list[tuple[str, ...]], list[Any]]:
    paths: list[tuple[str, ...]] = []
    leaves: list[Any] = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            p, v = _leaves(value, (*prefix, key))
            paths += p
            leaves += v
        else:
            paths.append((*prefix, key))
            leaves.append(value)
    return paths, leaves


def _numeric_measures(frame: Any, column: str) -> dict[str, Any]:
    return {
        "sketch": quantile_sketch(frame, column),
        "count": frame[column].count(),
        "missing": frame[column].isna().sum(),
    }


@dataclass(frozen=True)
class _CategoryCounts:
    column: str

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        s = pdf[self.column]
        cats = s.dtype.categories
        codes = s.cat.codes.to_numpy()
        counts = np.bincount(codes[codes >= 0], minlength=len(cats))
        return pd.DataFrame({"category": pd.Series(list(cats), dtype=object), "n": counts.astype("int64")})


def _sum_categories(parts: pd.DataFrame) -> pd.DataFrame:
    # Every part lists the same categories in the same order; sort=False keeps it.
    return parts.groupby("category", sort=False)["n"].sum().reset_index()


def _category_counts(frame: Any, column: str) -> Any:
    meta = pd.DataFrame({"category": pd.Series(dtype=object), "n": pd.Series(dtype="int64")})
    chunk = _CategoryCounts(column)
    return frame[[column]].reduction(chunk=chunk, combine=_sum_categories, aggregate=_sum_categories, meta=meta)


def reference_profile(values: Mapping[str, Any], model_input: ModelInput) -> dict[str, Any]:
    """``profile.json`` from the computed :func:`reference_measures`: JSON-able, fixed bins.

    Per numeric feature ``edges`` (inner bin edges), ``fractions`` (of non-missing values per
    bin), ``ks_edges`` and ``ks_fractions`` (the same on finer bins), ``missing_rate``, ``count``
    and a few quantiles; per categorical feature ``categories`` and their ``fractions``; the
    same for each prediction column under ``prediction``.
    """
    rows = int(values["rows"])
    features: dict[str, Any] = {}
    for c in model_input.features:
        if c in model_input.categorical:
            features[c] = _categorical_profile(values["categorical"][c])
        else:
            features[c] = _numeric_profile(values["numeric"][c])
    profile: dict[str, Any] = {
        "version": PROFILE_VERSION,
        "rows": rows,
        "bins": BINS,
        "ks_bins": KS_BINS,
        "features": features,
        "prediction": None,
    }
    if values.get("prediction") is not None:
        pred = values["prediction"]
        profile["prediction"] = {
            "rows": int(pred["rows"]),
            "columns": {c: _numeric_profile(m) for c, m in pred["numeric"].items()},
        }
    return profile


def _numeric_profile(m: Mapping[str, Any]) -> dict[str, Any]:
    sketch: pd.DataFrame = m["sketch"]
    order = np.argsort(sketch["value"].to_numpy(), kind="stable")
    points = sketch["value"].to_numpy(dtype="float64")[order]
    weights = sketch["weight"].to_numpy(dtype="float64")[order]
    count, missing = int(m["count"]), int(m["missing"])
    edges, ks_edges = _edges(points, weights, BINS), _edges(points, weights, KS_BINS)
    total = weights.sum()
    quantiles = {
        name: _point(points, weights, q) for name, q in (("min", 0.0), ("p05", 0.05), ("median", 0.5), ("p95", 0.95))
    }
    quantiles["max"] = float(points[-1]) if len(points) else None
    return {
        "kind": "numeric",
        "count": count,
        "missing": missing,
        "missing_rate": missing / (count + missing) if count + missing else 0.0,
        "edges": edges.tolist(),
        "fractions": _fractions(_bin(points, weights, edges), total),
        "ks_edges": ks_edges.tolist(),
        "ks_fractions": _fractions(_bin(points, weights, ks_edges), total),
        "quantiles": quantiles,
    }


def _categorical_profile(m: Mapping[str, Any]) -> dict[str, Any]:
    counts: pd.DataFrame = m["counts"]
    n = counts["n"].to_numpy(dtype="float64")
    count, missing = int(n.sum()), int(m["missing"])
    return {
        "kind": "categorical",
        "count": count,
        "missing": missing,
        "missing_rate": missing / (count + missing) if count + missing else 0.0,
        "categories": [to_builtin(v) for v in counts["category"]],
        "fractions": _fractions(n, n.sum()),
    }


def _edges(points: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges: the sketch's values at the quantiles 1/bins ... (bins-1)/bins, unique."""
    if not len(points):
        return np.array([], dtype="float64")
    cum = np.cumsum(weights)
    targets = cum[-1] * np.arange(1, bins) / bins
    # The smallest value whose cumulative weight reaches the target (the inverted CDF): always a
    # value of the data, so a discrete feature's edges are its values.
    idx = np.minimum(np.searchsorted(cum, targets * (1 - 1e-12), side="left"), len(points) - 1)
    return np.unique(points[idx])


def _point(points: np.ndarray, weights: np.ndarray, q: float) -> float | None:
    if not len(points):
        return None
    cum = np.cumsum(weights)
    return float(points[min(int(np.searchsorted(cum, q * cum[-1], side="left")), len(points) - 1)])


def _bin(values: np.ndarray, weights: np.ndarray | None, edges: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, weights=weights, minlength=len(edges) + 1).astype("float64")


def _fractions(counts: np.ndarray, total: float) -> list[float]:
    return (counts / total).tolist() if total > 0 else [0.0] * len(counts)


# -- current batch -----------------------------------------------------------------------------
# Each partition gives one long frame of counts: `key` says what is counted (group, item, field),
# `i` the bin, `value` an unseen category's text (else ""), `n` the count. Every partition lists
# every bin (zeros too), so the summed frame has them all.
_COUNTS_META = {"key": object, "i": "int64", "value": object, "n": "float64"}


def _key(group: str, item: str, field: str) -> str:
    return _SEP.join((group, item, field))


@dataclass(frozen=True)
class _Bins:
    """Counts of a numeric column on a profile's bins and fine bins, and its missing values."""

    group: str
    column: str
    edges: tuple[float, ...]
    ks_edges: tuple[float, ...]

    def count(self, pdf: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        x = np.asarray(pdf[self.column].to_numpy(dtype="float32", na_value=np.nan), dtype="float64")
        missing = np.isnan(x)
        v = x[~missing]
        return [
            (_key(self.group, self.column, "missing"), np.array([missing.sum()], dtype="float64")),
            (_key(self.group, self.column, "bins"), _bin(v, None, np.array(self.edges))),
            (_key(self.group, self.column, "ks"), _bin(v, None, np.array(self.ks_edges))),
        ]

    def examples(self, pdf: pd.DataFrame) -> list[tuple[str, pd.Series]]:
        return []


@dataclass(frozen=True)
class _Categories:
    """Counts of a categorical column's fitted categories, and of source values the model has no
    category for (``raw``: the source column, before the feature ops)."""

    column: str
    categories: tuple[Any, ...]
    raw: str | None

    def count(self, pdf: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        s = pdf[self.column]
        if isinstance(s.dtype, pd.CategoricalDtype) and list(s.dtype.categories) == list(self.categories):
            codes = s.cat.codes.to_numpy()
        else:
            codes = lookup(s, vocab_index(list(self.categories)))
        out = [
            (_key("feature", self.column, "missing"), np.array([(codes < 0).sum()], dtype="float64")),
            (
                _key("feature", self.column, "categories"),
                np.bincount(codes[codes >= 0], minlength=len(self.categories)).astype("float64"),
            ),
        ]
        if self.raw is not None:
            out.append((_key("feature", self.column, "unseen"), np.array([self._unseen(pdf).sum()], dtype="float64")))
        return out

    def _unseen(self, pdf: pd.DataFrame) -> np.ndarray:
        assert self.raw is not None
        raw = pdf[self.raw]
        vocabulary = [c for c in self.categories if c != OTHER]
        return (lookup(raw, vocab_index(vocabulary)) < 0) & raw.notna().to_numpy()

    def examples(self, pdf: pd.DataFrame) -> list[tuple[str, pd.Series]]:
        if self.raw is None:
            return []
        unseen = plain(pdf[self.raw])[self._unseen(pdf)]
        top = unseen.astype(str).value_counts().head(2 * EXAMPLES)
        return [(_key("feature", self.column, "example"), top)]


@dataclass(frozen=True)
class _Labels:
    """Sums behind the metrics of the predictions against labels (see :data:`METRICS`)."""

    family: str
    prediction: tuple[str, ...]
    label: str

    def count(self, pdf: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        y = pd.to_numeric(pdf[self.label], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        p = np.column_stack([pdf[c].to_numpy(dtype="float64", na_value=np.nan) for c in self.prediction])
        ok = ~np.isnan(y) & ~np.isnan(p).any(axis=1)
        y, p = y[ok], p[ok]
        sums = _FAMILIES[self.family](y, p)
        return [(_key("labels", self.family, name), np.atleast_1d(np.asarray(v, dtype="float64"))) for name, v in sums]

    def examples(self, pdf: pd.DataFrame) -> list[tuple[str, pd.Series]]:
        return []


def _binary_sums(y: np.ndarray, p: np.ndarray) -> list[tuple[str, Any]]:
    prob = np.clip(p[:, 0], 1e-15, 1 - 1e-15)
    pos = y > 0.5
    bins = np.minimum((prob * AUC_BINS).astype("int64"), AUC_BINS - 1)
    return [
        ("n", len(y)),
        ("logloss", -(y * np.log(prob) + (1 - y) * np.log1p(-prob)).sum()),
        ("errors", ((prob > 0.5) != pos).sum()),
        ("positive", np.bincount(bins[pos], minlength=AUC_BINS)),
        ("negative", np.bincount(bins[~pos], minlength=AUC_BINS)),
    ]


def _regression_sums(y: np.ndarray, p: np.ndarray) -> list[tuple[str, Any]]:
    err = p[:, 0] - y
    return [("n", len(y)), ("squared", (err**2).sum()), ("absolute", np.abs(err).sum())]


def _class_sums(y: np.ndarray, p: np.ndarray) -> list[tuple[str, Any]]:
    k = y.astype("int64")
    if p.shape[1] == 1:  # multi:softmax predicts the class
        return [("n", len(y)), ("errors", (p[:, 0].astype("int64") != k).sum())]
    inside = (k >= 0) & (k < p.shape[1])
    chosen = np.where(inside, p[np.arange(len(k)), np.clip(k, 0, p.shape[1] - 1)], 0.0)
    return [
        ("n", len(y)),
        ("logloss", -np.log(np.clip(chosen, 1e-15, 1.0)).sum()),
        ("errors", (p.argmax(axis=1) != k).sum()),
    ]


_FAMILIES = {"binary": _binary_sums, "regression": _regression_sums, "classes": _class_sums}


def label_family(objective: str) -> str | None:
    """Which sums an objective's predictions give metrics from (``None``: no metric is computed)."""
    if objective == "binary:logistic":
        return "binary"
    if objective.startswith(("reg:", "count:")):
        return "regression"
    if objective in ("multi:softprob", "multi:softmax"):
        return "classes"
    return None


def _auc(s: Mapping[str, np.ndarray]) -> float | None:
    pos, neg = s["positive"], s["negative"]
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def _mean(field: str) -> Callable[[Mapping[str, np.ndarray]], float]:
    return lambda s: float(s[field][0] / s["n"][0])


@dataclass(frozen=True)
class Metric:
    """A metric of the batch, computed from the summed sums of its ``family`` (XGBoost's name)."""

    family: str
    higher_is_better: bool
    compute: Callable[[Mapping[str, np.ndarray]], float | None]

    def value(self, sums: Mapping[str, np.ndarray]) -> float | None:
        if "n" not in sums or sums["n"][0] == 0:
            return None
        try:
            return self.compute(sums)
        except KeyError:
            return None


#: The metrics monitored against the bundle's validation metrics (by XGBoost's names).
METRICS: dict[str, Metric] = {
    "logloss": Metric("binary", False, _mean("logloss")),
    "auc": Metric("binary", True, _auc),
    "error": Metric("binary", False, _mean("errors")),
    "rmse": Metric("regression", False, lambda s: float(math.sqrt(s["squared"][0] / s["n"][0]))),
    "mae": Metric("regression", False, _mean("absolute")),
    "mlogloss": Metric("classes", False, _mean("logloss")),
    "merror": Metric("classes", False, _mean("errors")),
}


@dataclass(frozen=True)
class _Counter:
    """The partition function of :func:`current_measures`: every count of one partition."""

    items: tuple[Any, ...]

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        parts = [pd.DataFrame({"key": [_key("rows", "", "rows")], "i": [0], "value": [""], "n": [float(len(pdf))]})]
        for item in self.items:
            for key, counts in item.count(pdf):
                parts.append(
                    pd.DataFrame({"key": key, "i": np.arange(len(counts)), "value": "", "n": counts.astype("float64")})
                )
            for key, top in item.examples(pdf):
                if len(top):
                    parts.append(
                        pd.DataFrame(
                            {"key": key, "i": 0, "value": top.index.astype(object), "n": top.to_numpy("float64")}
                        )
                    )
        return pd.concat(parts, ignore_index=True).astype(_COUNTS_META)


def _sum_counts(parts: pd.DataFrame) -> pd.DataFrame:
    return parts.groupby(["key", "i", "value"], sort=False)["n"].sum().reset_index().astype(_COUNTS_META)


def current_measures(
    frame: Any,
    profile: Mapping[str, Any],
    *,
    prediction: str | Sequence[str] | None = None,
    label: str | None = None,
    objective: str | None = None,
    raw: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Lazy counts of a batch on the profile's fixed bins, in one tree reduction (one pass).

    ``frame`` holds the transformed feature columns and, by name, the ``prediction`` column(s),
    the ``label`` column (with ``objective``, the training objective: metrics are computed) and
    ``raw``: for a categorical feature, the column holding its source values (to count values
    the model has no category for). Keeping them all in one frame keeps the batch read once.
    Returns ``{"counts": lazy DataFrame}``; give its computed value to :func:`compare`.
    """
    items: list[Any] = []
    for name, feature in profile["features"].items():
        if feature["kind"] == "numeric":
            items.append(_Bins("feature", name, tuple(feature["edges"]), tuple(feature["ks_edges"])))
        else:
            items.append(_Categories(name, tuple(feature["categories"]), (raw or {}).get(name)))
    columns = [*profile["features"], *(raw or {}).values()]
    predicted = [prediction] if isinstance(prediction, str) else list(prediction or [])
    reference = (profile.get("prediction") or {}).get("columns", {})
    for c in predicted:
        if c in reference:
            items.append(_Bins("prediction", c, tuple(reference[c]["edges"]), tuple(reference[c]["ks_edges"])))
    family = label_family(objective) if label is not None and objective and predicted else None
    if family is not None and label is not None:
        items.append(_Labels(family, tuple(predicted), label))
        columns.append(label)
    columns += predicted
    counter = _Counter(tuple(items))
    selected = frame[list(dict.fromkeys(columns))]
    meta = pd.DataFrame({k: pd.Series(dtype=v) for k, v in _COUNTS_META.items()})
    return {"counts": selected.reduction(chunk=counter, combine=_sum_counts, aggregate=_sum_counts, meta=meta)}


# -- statistics --------------------------------------------------------------------------------
def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two distributions (fractions); empty bins count as :data:`EPSILON`."""
    r = np.maximum(np.asarray(reference, dtype="float64"), EPSILON)
    c = np.maximum(np.asarray(current, dtype="float64"), EPSILON)
    return float(((c - r) * np.log(c / r)).sum())


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two distributions (normalised here)."""
    p = np.asarray(reference, dtype="float64")
    q = np.asarray(current, dtype="float64")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float((a[mask] * np.log2(a[mask] / m[mask])).sum())

    return float(math.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """The largest difference of two CDFs given by fractions on the same bins (at the bin edges)."""
    r = np.cumsum(reference) / np.sum(reference)
    c = np.cumsum(current) / np.sum(current)
    return float(np.abs(r - c).max())


def _decode(counts: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, list[tuple[str, int]]]]:
    dense: dict[str, np.ndarray] = {}
    examples: dict[str, list[tuple[str, int]]] = {}
    for key, group in counts.groupby("key", sort=False):
        if str(key).endswith(_SEP + "example"):
            top = group.groupby("value")["n"].sum().sort_values(ascending=False, kind="stable").head(EXAMPLES)
            examples[str(key)] = [(str(v), int(n)) for v, n in top.items()]
        else:
            group = group.sort_values("i")
            dense[str(key)] = group["n"].to_numpy(dtype="float64")
    return dense, examples


def compare(profile: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """Drift statistics of a batch (the computed :func:`current_measures`) against a profile.

    Returns a JSON-able dict: ``rows``, ``features`` (per feature ``psi``, ``js``, ``ks``,
    ``missing_rate``, ``missing_rate_change``, ``unseen_rate`` and ``unseen_examples``),
    ``prediction`` (per column, and the ``worst``), ``labels`` (the summed sums, for
    :func:`metrics`) and ``worst`` (the feature of the largest PSI).
    """
    dense, examples = _decode(current["counts"])
    rows = int(dense.get(_key("rows", "", "rows"), np.zeros(1))[0])
    features = {name: _compare_one("feature", name, ref, dense, examples) for name, ref in profile["features"].items()}
    out: dict[str, Any] = {"rows": rows, "reference_rows": profile.get("rows"), "features": features}
    reference = (profile.get("prediction") or {}).get("columns", {})
    columns = {
        c: _compare_one("prediction", c, ref, dense, examples)
        for c, ref in reference.items()
        if _key("prediction", c, "bins") in dense
    }
    out["prediction"] = {"columns": columns, "worst": _worst(columns)} if columns else None
    labels = {
        key.split(_SEP)[2]: v.tolist() for key, v in dense.items() if key.startswith("labels" + _SEP)
    }  # field -> sums
    family = next((key.split(_SEP)[1] for key in dense if key.startswith("labels" + _SEP)), None)
    out["labels"] = {"family": family, "sums": labels} if family else None
    out["worst"] = _worst(features)
    return out


def _worst(table: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    scored = [(v["psi"], k) for k, v in table.items() if v.get("psi") is not None]
    if not scored:
        return None
    value, name = max(scored)
    return {"name": name, "psi": value}


def _compare_one(
    group: str,
    name: str,
    ref: Mapping[str, Any],
    dense: Mapping[str, np.ndarray],
    examples: Mapping[str, list[tuple[str, int]]],
) -> dict[str, Any]:
    field = "bins" if ref["kind"] == "numeric" else "categories"
    counts = dense.get(_key(group, name, field))
    missing = float(dense.get(_key(group, name, "missing"), np.zeros(1))[0])
    result: dict[str, Any] = {
        "kind": ref["kind"],
        "psi": None,
        "js": None,
        "ks": None,
        "missing_rate": None,
        "reference_missing_rate": ref["missing_rate"],
        "missing_rate_change": None,
    }
    if ref["kind"] == "categorical":
        result.update(unseen_rate=None, unseen_examples=[])
    if counts is None:
        return result
    total = counts.sum() + missing
    if total == 0:
        return result
    rate = missing / total
    ref_dist = np.append(np.asarray(ref["fractions"]) * (1 - ref["missing_rate"]), ref["missing_rate"])
    cur_dist = np.append(counts / total, rate)
    result.update(
        psi=psi(ref_dist, cur_dist),
        js=js_distance(ref_dist, cur_dist) if ref_dist.sum() > 0 else None,
        missing_rate=rate,
        missing_rate_change=rate - ref["missing_rate"],
    )
    if ref["kind"] == "numeric":
        fine = dense.get(_key(group, name, "ks"))
        if fine is not None and fine.sum() > 0 and sum(ref["ks_fractions"]) > 0:
            result["ks"] = ks_statistic(np.asarray(ref["ks_fractions"]), fine)
    else:
        unseen = dense.get(_key(group, name, "unseen"))
        if unseen is not None:
            result["unseen_rate"] = float(unseen[0] / total)
            result["unseen_examples"] = [
                {"value": v, "rows": n} for v, n in examples.get(_key(group, name, "example"), [])
            ]
    return result


def metrics(compared: Mapping[str, Any], names: Sequence[str] | None = None) -> dict[str, float | None]:
    """The batch's metrics from :func:`compare`'s ``labels`` (those of ``names`` its family gives)."""
    labels = compared.get("labels")
    if not labels:
        return {}
    sums = {k: np.asarray(v, dtype="float64") for k, v in labels["sums"].items()}
    wanted = list(names) if names is not None else [m for m, spec in METRICS.items() if spec.family == labels["family"]]
    return {m: METRICS[m].value(sums) for m in wanted if m in METRICS and METRICS[m].family == labels["family"]}
