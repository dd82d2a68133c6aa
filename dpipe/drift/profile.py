"""The reference side: lazy measures of the training rows, and ``profile.json`` from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dpipe.ops.base import count_rows, to_builtin
from dpipe.ops.stats import quantile_sketches, split_sketches
from dpipe.train import ModelInput

#: The profile's file in a model bundle.
PROFILE = "profile.json"
PROFILE_VERSION = 1
#: Quantile bins per numeric feature for PSI and JS, and finer ones for KS.
BINS = 20
KS_BINS = 100


def reference_measures(
    frame: Any, model_input: ModelInput, *, prediction: Any = None, prepared: bool = False
) -> dict[str, Any]:
    """Lazy statistics of the model-input rows ``frame`` (and of ``prediction``) for a profile.

    Nothing is computed: every leaf is a lazy Dask object, to compute in one pass with the other
    measures of a run. ``frame`` holds the feature columns (more are ignored); ``prediction``
    is a Dask Series or a DataFrame of prediction columns (the validation rows'), or ``None``.
    ``prepared``: ``frame``'s features are the model's input already (placed rows).

    Examples
    --------
    >>> values = dask.compute(reference_measures(train_rows, model_input, prediction=preds))[0]
    >>> profile = reference_profile(values, model_input)
    """
    # ``prepared``: the rows are the model's input already (placed rows): read as they are,
    # without ModelInput's copies.
    rows = frame[model_input.features] if prepared else frame.map_partitions(model_input, meta=model_input(frame._meta))
    numeric = [c for c in model_input.features if c not in model_input.categorical]
    out: dict[str, Any] = {
        "rows": count_rows(rows),
        "numeric": quantile_sketches(rows, numeric) if numeric else None,
        "categorical": {
            c: {"counts": _category_counts(rows, c), "missing": rows[c].isna().sum()} for c in model_input.categorical
        },
    }
    if prediction is not None:
        preds = prediction.to_frame() if getattr(prediction, "ndim", 2) == 1 else prediction
        preds = preds.astype("float32")
        out["prediction"] = {"rows": count_rows(preds), "numeric": quantile_sketches(preds, list(preds.columns))}
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
    numeric = [c for c in model_input.features if c not in model_input.categorical]
    # The sketches' weights add up to each column's count (missing values are not in them), so a
    # column's count and missing values need no reductions of their own: the rows' count gives them.
    sketches = split_sketches(values["numeric"], numeric) if numeric else {}
    features: dict[str, Any] = {}
    for c in model_input.features:
        if c in model_input.categorical:
            features[c] = _categorical_profile(values["categorical"][c])
        else:
            features[c] = _numeric_profile(sketches[c], rows)
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
        columns = list(dict.fromkeys(pred["numeric"]["column"]))
        profile["prediction"] = {
            "rows": int(pred["rows"]),
            "columns": {
                c: _numeric_profile(sketch, int(pred["rows"]))
                for c, sketch in split_sketches(pred["numeric"], columns).items()
            },
        }
    return profile


def _numeric_profile(sketch: pd.DataFrame, rows: int) -> dict[str, Any]:
    order = np.argsort(sketch["value"].to_numpy(), kind="stable")
    points = sketch["value"].to_numpy(dtype="float64")[order]
    weights = sketch["weight"].to_numpy(dtype="float64")[order]
    # Merges keep the total weight (each point stands for total / size rows): the count, to rounding.
    total = weights.sum()
    count = int(round(float(total)))
    missing = rows - count
    edges, ks_edges = _edges(points, weights, BINS), _edges(points, weights, KS_BINS)
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
        "fractions": _fractions(bin_counts(points, weights, edges), total),
        "ks_edges": ks_edges.tolist(),
        "ks_fractions": _fractions(bin_counts(points, weights, ks_edges), total),
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


def bin_counts(values: np.ndarray, weights: np.ndarray | None, edges: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, weights=weights, minlength=len(edges) + 1).astype("float64")


def _fractions(counts: np.ndarray, total: float) -> list[float]:
    return (counts / total).tolist() if total > 0 else [0.0] * len(counts)
