"""Exact evaluation metrics of predictions on the cluster (the test side's, a promotion gate's).

XGBoost evaluates ``eval_metric`` on the training and validation rows while it trains; rows it
never saw (the test side, an evaluation source) are scored with the booster and measured here, in
one pass of reductions over ``label`` and ``prediction`` columns. The definitions are
scikit-learn's, so ``dpipe predict`` followed by ``sklearn.metrics`` reproduces them:

==========  =====================================================================================
auc         area under the ROC curve, ties counted half (``roc_auc_score``): one group-by over the
            distinct predicted values, whose (usually far fewer than rows) sums go to the client
aucpr       average precision (``average_precision_score``), from the same group-by
logloss     mean binary log loss, predictions clipped to [1e-15, 1 - 1e-15]
error       share of rows with ``(prediction > 0.5) != label`` (``error@t``: threshold ``t``)
rmse, mae   root mean squared and mean absolute error; ``mape``, ``rmsle`` likewise
mlogloss    mean multi-class log loss of ``prediction_k`` probabilities (``multi:softprob``)
merror      share of rows whose most probable class (or ``multi:softmax`` class) is wrong
==========  =====================================================================================

Examples
--------
>>> lazy = measures(preds, ["auc", "logloss"], objective="binary:logistic")
>>> metrics = finish(dask.compute(lazy)[0], ["auc", "logloss"])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dpipe.errors import SpecError

EPS = 1e-15
LABEL, PREDICTION = "label", "prediction"


@dataclass(frozen=True)
class Metric:
    """How one metric is measured: lazy reductions of a frame, and their values turned into it."""

    #: Objective families it applies to: ``binary``, ``reg``, ``multi``.
    families: frozenset[str]
    measure: Callable[[Any, str], Mapping[str, Any]]
    finish: Callable[[Mapping[str, Any], str], float | None]


def _family(objective: str) -> str:
    head = objective.split(":")[0]
    return head if head in ("binary", "multi") else "reg"


# -- binary --------------------------------------------------------------------------------------
def _ranked(frame, name: str) -> Mapping[str, Any]:
    return {"ranked": frame.groupby(PREDICTION)[LABEL].agg(["sum", "count"], split_out=1)}


def _curve(values: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """Positives and negatives per distinct prediction, highest first."""
    table = values["ranked"].sort_index(ascending=False)
    pos = table["sum"].to_numpy(dtype="float64")
    neg = table["count"].to_numpy(dtype="float64") - pos
    if pos.sum() == 0 or neg.sum() == 0:
        return None  # one class: the curve is undefined
    return pos, neg


def _auc(values: Mapping[str, Any], name: str) -> float | None:
    curve = _curve(values)
    if curve is None:
        return None
    pos, neg = curve
    tp_before = np.concatenate([[0.0], np.cumsum(pos)[:-1]])
    return float(np.sum(neg * (tp_before + pos / 2.0)) / (pos.sum() * neg.sum()))


def _average_precision(values: Mapping[str, Any], name: str) -> float | None:
    curve = _curve(values)
    if curve is None:
        return None
    pos, neg = curve
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    precision, recall = tp / (tp + fp), tp / pos.sum()
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def _logloss(frame, name: str) -> Mapping[str, Any]:
    p = frame[PREDICTION].astype("float64").clip(EPS, 1 - EPS)
    y = frame[LABEL].astype("float64")
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return {"sum": loss.sum(), "n": loss.count()}


def _threshold(name: str) -> float:
    match = re.fullmatch(r"error@([0-9.]+)", name)
    return float(match.group(1)) if match else 0.5


def _error(frame, name: str) -> Mapping[str, Any]:
    wrong = (frame[PREDICTION] > _threshold(name)).astype("float64") != frame[LABEL].astype("float64")
    return {"sum": wrong.astype("float64").sum(), "n": wrong.count()}


# -- regression ------------------------------------------------------------------------------
def _squared(frame, name: str) -> Mapping[str, Any]:
    d = frame[PREDICTION].astype("float64") - frame[LABEL].astype("float64")
    return {"sum": (d * d).sum(), "n": d.count()}


def _absolute(frame, name: str) -> Mapping[str, Any]:
    d = (frame[PREDICTION].astype("float64") - frame[LABEL].astype("float64")).abs()
    return {"sum": d.sum(), "n": d.count()}


def _relative(frame, name: str) -> Mapping[str, Any]:
    y = frame[LABEL].astype("float64")
    d = ((frame[PREDICTION].astype("float64") - y) / y).abs()
    return {"sum": d.sum(), "n": d.count()}


def _squared_log(frame, name: str) -> Mapping[str, Any]:
    d = np.log1p(frame[PREDICTION].astype("float64")) - np.log1p(frame[LABEL].astype("float64"))
    return {"sum": (d * d).sum(), "n": d.count()}


def _mean(values: Mapping[str, Any], name: str) -> float | None:
    n = int(values["n"])
    return float(values["sum"]) / n if n else None


def _root_mean(values: Mapping[str, Any], name: str) -> float | None:
    mean = _mean(values, name)
    return None if mean is None else float(np.sqrt(mean))


# -- multi-class -----------------------------------------------------------------------------
def _classes(frame) -> list[str]:
    return sorted((c for c in frame.columns if c.startswith(f"{PREDICTION}_")), key=lambda c: int(c.rsplit("_", 1)[1]))


def _multi_logloss(frame, name: str) -> Mapping[str, Any]:
    columns = _classes(frame)
    if not columns:
        return {"sum": None, "n": None}  # multi:softmax predicts classes, not probabilities
    return {
        "sum": frame.map_partitions(_true_class_loss, columns, meta=("loss", "float64")).sum(),
        "n": frame[LABEL].count(),
    }


def _true_class_loss(pdf: pd.DataFrame, columns: list[str]) -> pd.Series:
    probs = pdf[columns].to_numpy(dtype="float64")
    y = pdf[LABEL].to_numpy().astype("int64")
    picked = probs[np.arange(len(pdf)), np.clip(y, 0, len(columns) - 1)]
    return pd.Series(-np.log(np.clip(picked, EPS, 1.0)), index=pdf.index)


def _multi_error(frame, name: str) -> Mapping[str, Any]:
    columns = _classes(frame)
    wrong = frame.map_partitions(_wrong_class, columns, meta=("wrong", "float64"))
    return {"sum": wrong.sum(), "n": wrong.count()}


def _wrong_class(pdf: pd.DataFrame, columns: list[str]) -> pd.Series:
    if columns:
        predicted = pdf[columns].to_numpy(dtype="float64").argmax(axis=1)
    else:
        predicted = pdf[PREDICTION].to_numpy(dtype="float64")
    return pd.Series((predicted != pdf[LABEL].to_numpy(dtype="float64")).astype("float64"), index=pdf.index)


def _mean_or_none(values: Mapping[str, Any], name: str) -> float | None:
    return None if values["n"] is None else _mean(values, name)


BINARY, REG, MULTI = frozenset({"binary"}), frozenset({"reg"}), frozenset({"multi"})

METRICS: dict[str, Metric] = {
    "auc": Metric(BINARY, _ranked, _auc),
    "aucpr": Metric(BINARY, _ranked, _average_precision),
    "logloss": Metric(BINARY, _logloss, _mean),
    "error": Metric(BINARY, _error, _mean),
    "rmse": Metric(REG, _squared, _root_mean),
    "mae": Metric(REG, _absolute, _mean),
    "mape": Metric(REG, _relative, _mean),
    "rmsle": Metric(REG, _squared_log, _root_mean),
    "mlogloss": Metric(MULTI, _multi_logloss, _mean_or_none),
    "merror": Metric(MULTI, _multi_error, _mean),
}


def lookup(name: str) -> Metric | None:
    """The metric ``name`` (``error@0.7`` is ``error`` at threshold 0.7), or ``None``."""
    return METRICS.get("error" if re.fullmatch(r"error@[0-9.]+", name) else name)


def check(names: Iterable[str], objective: str, *, where: str) -> None:
    """Fail (before any data is read) on a metric dpipe cannot compute outside XGBoost."""
    family = _family(objective)
    bad = [n for n in names if (m := lookup(n)) is None or family not in m.families]
    if bad:
        known = sorted(n for n, m in METRICS.items() if family in m.families)
        raise SpecError(
            f"{where}: metric(s) {bad} cannot be computed on rows XGBoost does not evaluate for {objective};"
            f" known: {known}",
            hint="choose `train.eval_metric` among them (they are computed for the test side and the promotion gate)",
        )


def measures(frame, names: Iterable[str], *, objective: str) -> dict[str, Mapping[str, Any]]:
    """Lazy reductions of ``frame`` (``label`` and ``prediction`` columns) for every metric."""
    out: dict[str, Mapping[str, Any]] = {}
    for name in names:
        metric = lookup(name)
        assert metric is not None, name  # checked by check()
        out[name] = metric.measure(frame, name)
    return out


def finish(values: Mapping[str, Mapping[str, Any]], names: Iterable[str]) -> dict[str, float | None]:
    """The metrics from the computed reductions (``None`` where undefined, e.g. AUC of one class)."""
    out: dict[str, float | None] = {}
    for name in names:
        metric = lookup(name)
        assert metric is not None, name
        value = metric.finish(values[name], name)
        out[name] = None if value is None or not np.isfinite(value) else float(value)
    return out
