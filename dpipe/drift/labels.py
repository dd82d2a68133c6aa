"""Metrics of a batch's predictions against its labels, from sums taken per partition."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Uniform bins of predicted probabilities for AUC (pairs in one bin count half).
AUC_BINS = 1024


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


FAMILIES = {"binary": _binary_sums, "regression": _regression_sums, "classes": _class_sums}


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


def metrics(compared: Mapping[str, Any], names: Sequence[str] | None = None) -> dict[str, float | None]:
    """The batch's metrics from :func:`compare`'s ``labels`` (those of ``names`` its family gives)."""
    labels = compared.get("labels")
    if not labels:
        return {}
    sums = {k: np.asarray(v, dtype="float64") for k, v in labels["sums"].items()}
    wanted = list(names) if names is not None else [m for m, spec in METRICS.items() if spec.family == labels["family"]]
    return {m: METRICS[m].value(sums) for m in wanted if m in METRICS and METRICS[m].family == labels["family"]}
