"""From computed sums to metrics and curves: one judge per kind of evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from dpipe.errors import SpecError
from dpipe.evaluation.kinds import OTHER, STATS, residual_value

Parts = Mapping[str, pd.DataFrame]
#: Bins of the stored residual histogram, up to the 99th percentile of the absolute error.
RESIDUAL_BINS = 40
_DIGITS = 6


def finish(
    values: Mapping[str, Any],
    kind: str | None = None,
    *,
    max_slice_values: int = 20,
    calibration_bins: int = 20,
) -> dict[str, Any]:
    """JSON-able metrics, curves, confusion matrix and per-slice metrics of computed measures.

    ``values`` is what ``dask.compute`` made of :func:`~dpipe.evaluation.measures`' result;
    ``kind``, when given, must be the one they were measured for. Each slice keeps its
    ``max_slice_values`` most frequent values, the others summed into ``"(other)"``; the 200
    calibration bins are merged into ``calibration_bins``. The layout is in :mod:`dpipe.evaluation`.
    """
    config, table = values["config"], values["table"]
    if kind is not None and kind != config["kind"]:
        raise SpecError(f"evaluation: these measures are of kind {config['kind']!r}, not {kind!r}")
    judge = JUDGES[config["kind"]](config, calibration_bins)
    rows = table.reset_index()
    overall = _parts(rows[(rows["slice"] == "") & (rows["value"] == "")])
    side: dict[str, Any] = {"rows": _count(overall, "total"), "skipped_rows": _count(overall, "skipped")}
    if config["kind"] == "binary":
        side["bins"] = config["bins"]
    side.update(judge.side(overall))
    side["slices"] = {
        column: [
            {"value": value, "rows": _count(parts, "total"), "metrics": judge.metrics(parts)}
            for value, parts in _slice_values(rows[rows["slice"] == column], max_slice_values)
        ]
        for column in config["slices"]
    }
    return _jsonable(side)


def _parts(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One group's sums by part, each indexed by ``key``."""
    return {str(part): g.groupby("key").sum(numeric_only=True) for part, g in rows.groupby("part", sort=False)}


def _count(parts: Parts, part: str) -> int:
    return int(parts[part]["n"].sum()) if part in parts else 0


def _slice_values(rows: pd.DataFrame, keep: int) -> Iterator[tuple[str, dict[str, pd.DataFrame]]]:
    totals = rows[rows["part"] == "total"].groupby("value")["n"].sum().sort_values(ascending=False, kind="stable")
    top = list(totals.index[:keep])
    for value in top:
        yield str(value), _parts(rows[rows["value"] == value])
    rest = rows[~rows["value"].isin(top)]
    if len(rest):
        yield OTHER, _parts(rest)


def _totals(parts: Parts, kind: str) -> pd.Series:
    if "total" not in parts:
        return pd.Series(0.0, index=list(STATS[kind]))
    return parts["total"].sum()


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), _DIGITS) for v in values]


# -- binary -------------------------------------------------------------------------------------
class BinaryJudge:
    """ROC, precision-recall and calibration from the prediction bins; exact threshold counts."""

    def __init__(self, config: Mapping[str, Any], calibration_bins: int):
        self.bins, self.threshold = int(config["bins"]), float(config["threshold"])
        self.calibration_bins = max(1, min(int(calibration_bins), self.bins))

    def _binned(self, parts: Parts) -> pd.DataFrame:
        found = parts.get("bin", pd.DataFrame(columns=list(STATS["binary"])))
        return found.reindex(range(self.bins), fill_value=0.0)

    def metrics(self, parts: Parts) -> dict[str, Any]:
        t = _totals(parts, "binary")
        n = float(t["n"])
        curve = _Curve(self._binned(parts))
        tp, fp, fn, tn = (float(t[k]) for k in ("tp", "fp", "fn", "tn"))
        return {
            "auc": curve.auc,
            "auc_error_bound": curve.auc_error_bound,
            "aucpr": curve.average_precision,
            "logloss": _ratio(t["logloss"], n),
            "brier": _ratio(t["brier"], n),
            "accuracy": _ratio(tp + tn, n),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "positive_rate": _ratio(t["pos"], n),
            "predicted_positive_rate": _ratio(tp + fp, n),
        }

    def side(self, parts: Parts) -> dict[str, Any]:
        binned = self._binned(parts)
        curve = _Curve(binned)
        t = _totals(parts, "binary")
        group = np.arange(self.bins) * self.calibration_bins // self.bins
        merged = binned.groupby(group).sum()
        merged = merged[merged["n"] > 0]
        return {
            "metrics": self.metrics(parts),
            "curves": {
                "roc": curve.roc(),
                "pr": curve.pr(),
                "calibration": {
                    "predicted": _rounded(merged["psum"] / merged["n"]),
                    "observed": _rounded(merged["pos"] / merged["n"]),
                    "rows": [int(v) for v in merged["n"]],
                },
            },
            "confusion": {
                "labels": ["0", "1"],
                "matrix": [[int(t["tn"]), int(t["fp"])], [int(t["fn"]), int(t["tp"])]],
                "threshold": self.threshold,
            },
        }


class _Curve:
    """Cumulative counts from the top bin down: point ``j`` predicts positive the ``j`` top bins."""

    def __init__(self, binned: pd.DataFrame):
        pos, neg = binned["pos"].to_numpy(), binned["neg"].to_numpy()
        self.pos, self.neg = pos, neg
        self.tp = np.concatenate([[0.0], np.cumsum(pos[::-1])])
        self.fp = np.concatenate([[0.0], np.cumsum(neg[::-1])])
        self.edge = np.concatenate([[1.0], np.arange(len(pos) - 1, -1, -1) / len(pos)])
        # Point 0 and every point after a non-empty bin: an empty bin repeats the point before it.
        self.kept = np.concatenate([[True], (pos + neg)[::-1] > 0])
        self.P, self.N = float(self.tp[-1]), float(self.fp[-1])

    @property
    def auc(self) -> float | None:
        if not (self.P and self.N):
            return None
        tpr, fpr = self.tp / self.P, self.fp / self.N
        return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))

    @property
    def auc_error_bound(self) -> float | None:
        return float(np.sum(self.pos * self.neg) / (2 * self.P * self.N)) if self.P and self.N else None

    @property
    def average_precision(self) -> float | None:
        if not self.P:
            return None
        predicted = self.tp + self.fp
        recall = self.tp / self.P
        step = np.diff(recall)
        precision = np.divide(self.tp[1:], predicted[1:], out=np.zeros(len(step)), where=predicted[1:] > 0)
        return float(np.sum(step * precision))

    def roc(self) -> dict[str, list[float]]:
        k = self.kept
        fpr = self.fp[k] / self.N if self.N else np.zeros(k.sum())
        tpr = self.tp[k] / self.P if self.P else np.zeros(k.sum())
        return {"fpr": _rounded(fpr), "tpr": _rounded(tpr), "threshold": _rounded(self.edge[k])}

    def pr(self) -> dict[str, list[float]]:
        predicted = self.tp + self.fp
        k = self.kept & (predicted > 0)
        if not self.P:
            return {"recall": [], "precision": [], "threshold": []}
        return {
            "recall": _rounded(self.tp[k] / self.P),
            "precision": _rounded(self.tp[k] / predicted[k]),
            "threshold": _rounded(self.edge[k]),
        }


# -- regression ---------------------------------------------------------------------------------
class RegressionJudge:
    """Error sums, label moments, residual buckets and the predicted-against-actual grid."""

    def __init__(self, config: Mapping[str, Any], calibration_bins: int):
        self.shift, self.grid, self.range = float(config["shift"]), int(config["grid"]), config["label_range"]

    def metrics(self, parts: Parts) -> dict[str, Any]:
        t = _totals(parts, "regression")
        n = float(t["n"])
        if not n:
            return dict.fromkeys(("rmse", "mae", "r2", "bias", "label_mean", "label_std", "prediction_mean"))
        mean = t["y"] / n
        variance = max(t["y2"] / n - mean**2, 0.0)
        out = {
            "rmse": math.sqrt(t["sq"] / n),
            "mae": t["abs"] / n,
            "r2": 1 - t["sq"] / (n * variance) if variance > 0 else None,
            "bias": t["err"] / n,
            "label_mean": mean + self.shift,
            "label_std": math.sqrt(variance),
            "prediction_mean": t["p"] / n,
        }
        if "resid" in parts:
            size, counts = _abs_buckets(parts["resid"])
            for name, q in (("median_abs_error", 0.5), ("p90_abs_error", 0.9), ("p99_abs_error", 0.99)):
                out[name] = _quantile(size, counts, q)
        return out

    def side(self, parts: Parts) -> dict[str, Any]:
        curves: dict[str, Any] = {}
        if "resid" in parts:
            curves["residuals"] = _residual_histogram(parts["resid"])
        if self.range is not None:
            cells = parts.get("grid", pd.DataFrame(columns=["n"]))
            cells = cells[cells["n"] > 0]
            curves["predicted_vs_actual"] = {
                "range": list(self.range),
                "grid": self.grid,
                "cells": [[int(k) // self.grid, int(k) % self.grid, int(n)] for k, n in cells["n"].items()],
                "outside": int(_totals(parts, "regression")["outside"]),
            }
        return {"metrics": self.metrics(parts), "curves": curves}


def _abs_buckets(resid: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    size = np.abs(residual_value(resid.index.to_numpy()))
    order = np.argsort(size, kind="stable")
    return size[order], resid["n"].to_numpy()[order]


def _quantile(size: np.ndarray, counts: np.ndarray, q: float) -> float | None:
    total = counts.sum()
    if not total:
        return None
    return float(size[np.searchsorted(np.cumsum(counts), q * total)])


def _residual_histogram(resid: pd.DataFrame) -> dict[str, Any]:
    value, counts = residual_value(resid.index.to_numpy()), resid["n"].to_numpy()
    size, sorted_counts = _abs_buckets(resid)
    limit = _quantile(size, sorted_counts, 0.99) or float(size.max(initial=0.0)) or 1.0
    edges = np.linspace(-limit, limit, RESIDUAL_BINS + 1)
    index = np.clip(np.floor((value + limit) / (2 * limit) * RESIDUAL_BINS), 0, RESIDUAL_BINS - 1).astype(int)
    inside = np.abs(value) <= limit
    hist = np.bincount(index[inside], weights=counts[inside], minlength=RESIDUAL_BINS)
    return {
        "edges": _rounded(edges),
        "counts": [int(v) for v in hist],
        "below": int(counts[value < -limit].sum()),
        "above": int(counts[value > limit].sum()),
    }


# -- multiclass ---------------------------------------------------------------------------------
class MulticlassJudge:
    """The confusion matrix's cells, correct predictions and the summed log loss."""

    def __init__(self, config: Mapping[str, Any], calibration_bins: int):
        self.classes, self.softmax = int(config["classes"]), bool(config["softmax"])

    def _matrix(self, parts: Parts) -> np.ndarray:
        k = self.classes
        cells = parts.get("cell", pd.DataFrame(columns=["n"]))["n"].reindex(range(k * k), fill_value=0.0)
        return cells.to_numpy().reshape(k, k)

    def metrics(self, parts: Parts, *, per_class: bool = False) -> dict[str, Any]:
        t = _totals(parts, "multiclass")
        n = float(t["n"])
        m = self._matrix(parts)
        actual, predicted, hit = m.sum(axis=1), m.sum(axis=0), np.diag(m)
        f1 = np.divide(2 * hit, actual + predicted, out=np.zeros(self.classes), where=(actual + predicted) > 0)
        present = (actual + predicted) > 0
        out: dict[str, Any] = {
            "accuracy": _ratio(t["correct"], n),
            "mlogloss": None if self.softmax else _ratio(t["logloss"], n),
            "macro_f1": float(f1[present].mean()) if present.any() else None,
        }
        if per_class:
            out["per_class"] = {
                str(c): {
                    "precision": _ratio(hit[c], predicted[c]),
                    "recall": _ratio(hit[c], actual[c]),
                    "f1": float(f1[c]) if present[c] else None,
                    "rows": int(actual[c]),
                }
                for c in range(self.classes)
            }
        return out

    def side(self, parts: Parts) -> dict[str, Any]:
        return {
            "metrics": self.metrics(parts, per_class=True),
            "curves": {},
            "confusion": {
                "labels": [str(c) for c in range(self.classes)],
                "matrix": [[int(v) for v in row] for row in self._matrix(parts)],
            },
        }


#: Kind -> its judge: ``side(parts)`` for all rows (metrics, curves, confusion) and
#: ``metrics(parts)`` for one slice value.
JUDGES: dict[str, Any] = {"binary": BinaryJudge, "regression": RegressionJudge, "multiclass": MulticlassJudge}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
