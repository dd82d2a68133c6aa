"""The one pass: each partition's rows binned and summed, the partitions' sums added up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dpipe.errors import ColumnError, SpecError
from dpipe.evaluation.kinds import MISSING, SLICED, STATS, Kind, residual_key

_EPS = 1e-15
_STRING = pd.StringDtype("pyarrow")
#: A group of rows is (slice column, its value); "" and "" are all rows. ``part`` says what
#: ``key`` is: ``total`` (0), ``bin`` (of a binary prediction), ``resid`` (a residual bucket),
#: ``grid`` (a predicted-against-actual cell), ``cell`` (of a confusion matrix), ``skipped``.
GROUP = ["slice", "value", "part", "key"]


@dataclass(frozen=True)
class _Chunk:
    """One partition's rows -> its summed table (picklable: it travels to the workers)."""

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-evaluate"

    __name__ = "evaluation"  # its tasks' name (dask names them after the function)
    kind: Kind
    label: str
    predictions: tuple[str, ...]
    slices: tuple[str, ...]
    bins: int
    threshold: float
    classes: int
    label_range: tuple[float, float] | None
    grid: int
    shift: float

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        y = pd.to_numeric(pdf[self.label], errors="coerce").to_numpy("float64", na_value=np.nan)
        p = np.column_stack([pdf[c].to_numpy("float64", na_value=np.nan) for c in self.predictions])
        ok = np.isfinite(y) & np.isfinite(p).all(axis=1)
        if self.kind == "multiclass":
            ok &= (y >= 0) & (y < self.classes) & (y == np.floor(y))
        stats, parts = getattr(self, f"_{self.kind}")(y[ok], p[ok])
        tables = [self._sums("", np.full(int(ok.sum()), "", dtype=object), stats, parts)]
        for column in self.slices:
            values = pdf[column][ok].astype(object)
            keys = np.asarray(values.where(values.notna(), MISSING).astype(str), dtype=object)
            tables.append(self._sums(column, keys, stats, {k: v for k, v in parts.items() if k in SLICED}))
        skipped = {"slice": [""], "value": [""], "part": ["skipped"], "key": [0]}
        skipped.update({name: [float((~ok).sum()) if name == "n" else 0.0] for name in STATS[self.kind]})
        return _typed(pd.concat([*tables, pd.DataFrame(skipped)], ignore_index=True), STATS[self.kind])

    @staticmethod
    def _sums(column: str, values: np.ndarray, stats: dict, parts: dict) -> pd.DataFrame:
        rows = pd.DataFrame(stats)
        rows["value"] = values
        out = []
        for part, key in parts.items():
            summed = rows.assign(key=key).groupby(["value", "key"], sort=False).sum().reset_index()
            out.append(summed.assign(slice=column, part=part))
        return pd.concat(out, ignore_index=True)

    def _binary(self, y: np.ndarray, p: np.ndarray):
        p = p[:, 0]
        clipped = np.clip(p, _EPS, 1 - _EPS)
        yes, above = y == 1, p > self.threshold
        stats = {
            "n": np.ones_like(y),
            "pos": yes.astype("float64"),
            "neg": (~yes).astype("float64"),
            "psum": p,
            "logloss": -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped)),
            "brier": (p - y) ** 2,
            "tp": (yes & above).astype("float64"),
            "fp": (~yes & above).astype("float64"),
            "fn": (yes & ~above).astype("float64"),
            "tn": (~yes & ~above).astype("float64"),
        }
        bins = np.clip(np.floor(p * self.bins), 0, self.bins - 1).astype("int64")
        return stats, {"total": np.zeros(len(y), "int64"), "bin": bins}

    def _regression(self, y: np.ndarray, p: np.ndarray):
        p = p[:, 0]
        err = p - y
        stats = {
            "n": np.ones_like(y),
            "err": err,
            "sq": err**2,
            "abs": np.abs(err),
            "y": y - self.shift,
            "y2": (y - self.shift) ** 2,
            "p": p,
            "outside": np.zeros_like(y),
        }
        parts = {"total": np.zeros(len(y), "int64"), "resid": residual_key(err)}
        if self.label_range is not None:
            lo, hi = self.label_range
            stats["outside"] = ((y < lo) | (y > hi) | (p < lo) | (p > hi)).astype("float64")
            cell_y, cell_p = (np.clip(np.floor((v - lo) / (hi - lo) * self.grid), 0, self.grid - 1) for v in (y, p))
            parts["grid"] = (cell_y * self.grid + cell_p).astype("int64")
        return stats, parts

    def _multiclass(self, y: np.ndarray, p: np.ndarray):
        actual = y.astype("int64")
        if p.shape[1] == 1:  # multi:softmax: the class itself
            predicted, logloss = np.clip(p[:, 0], 0, self.classes - 1).astype("int64"), np.zeros_like(y)
        else:
            predicted = p.argmax(axis=1)
            chosen = p[np.arange(len(y)), actual] if len(y) else np.zeros(0)
            logloss = -np.log(np.clip(chosen, _EPS, 1))
        stats = {"n": np.ones_like(y), "correct": (predicted == actual).astype("float64"), "logloss": logloss}
        return stats, {"total": np.zeros(len(y), "int64"), "cell": actual * self.classes + predicted}


def _typed(frame: pd.DataFrame, stats: Sequence[str]) -> pd.DataFrame:
    frame = frame.astype({"slice": _STRING, "value": _STRING, "part": _STRING, "key": "int64"})
    return frame[[*GROUP, *stats]].astype(dict.fromkeys(stats, "float64"))


def measures(
    frame: Any,
    kind: Kind,
    *,
    label: str = "label",
    prediction: str = "prediction",
    slices: Sequence[str] = (),
    bins: int = 200,
    threshold: float = 0.5,
    label_range: tuple[float, float] | None = None,
    grid: int = 50,
    classes: int | None = None,
) -> dict[str, Any]:
    """Lazy evaluation measures of ``frame``'s predictions, computed in one pass over its rows.

    Parameters
    ----------
    frame : dask.dataframe.DataFrame
        Rows with the ``label`` column, the prediction (``prediction``, or for ``multi:softprob``
        ``prediction_0`` ... ``prediction_{k-1}``) and every ``slices`` column. Rows whose label
        or prediction is missing are left out and counted (``skipped_rows``).
    kind : {"binary", "multiclass", "regression"}
        From :func:`~dpipe.evaluation.kind_of`.
    slices : columns whose values each get their own metrics. Keep them to low-cardinality
        columns: the result holds a small table per value (:func:`finish` keeps the most frequent).
    bins : equal bins of binary predictions on [0, 1] (ROC, PR, calibration).
    threshold : a binary prediction above it counts as positive (accuracy, confusion...).
    label_range : ``(low, high)`` of the label (the training labels' extremes), for the
        regression predicted-against-actual grid of ``grid`` x ``grid`` cells; without it, that
        grid is not measured.
    classes : the number of classes of ``multi:softmax`` predictions (one column: the class).

    Returns
    -------
    dict
        ``{"table": <lazy dask DataFrame of sums>, "config": {...}}``: pass it to ``dask.compute``
        (with anything else), then the computed dict to :func:`~dpipe.evaluation.finish`.
        (``distributed.Client.compute`` takes a list, not a dict: compute ``[values["table"]]``,
        or use the compute of :meth:`dpipe.progress.Reporter.compute`, which flattens dicts.)

    Examples
    --------
    >>> values = measures(preds, "binary", slices=["country"])
    >>> (computed,) = dask.compute(values)
    """
    if kind not in STATS:
        raise SpecError(f"evaluation: kind must be one of {sorted(STATS)}. Instead got {kind!r}")
    if bins < 2 or grid < 2:
        raise SpecError(f"evaluation: `bins` and `grid` must be at least 2. Instead got {bins} and {grid}")
    columns = [str(c) for c in frame.columns]
    predictions: tuple[str, ...] = (prediction,)
    if kind == "multiclass" and prediction not in columns:
        numbered = {int(c[len(prediction) + 1 :]): c for c in columns if _numbered(c, prediction)}
        predictions = tuple(numbered[k] for k in sorted(numbered))
        classes = len(predictions)
    missing = [c for c in (label, *predictions, *slices) if c not in columns] or ([] if predictions else [prediction])
    if missing:
        raise ColumnError(
            f"evaluation: column(s) {missing} not found; available: {columns}",
            hint="the frame needs the label, the prediction column(s) and every slice column",
        )
    if kind == "multiclass" and not classes:
        raise SpecError("evaluation: `classes` is required for multi:softmax predictions (one column)")
    if label_range is not None:
        low, high = (float(v) for v in label_range)
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise SpecError(f"evaluation: `label_range` must be (low, high) with low < high. Instead got {label_range}")
        label_range = (low, high)
    chunk = _Chunk(
        kind=kind,
        label=label,
        predictions=predictions,
        slices=tuple(slices),
        bins=int(bins),
        threshold=float(threshold),
        classes=int(classes or 2),
        label_range=label_range if kind == "regression" else None,
        grid=int(grid),
        # Label moments are summed about the middle of its range: no cancellation for large labels.
        shift=(label_range[0] + label_range[1]) / 2 if label_range and kind == "regression" else 0.0,
    )
    partials = frame.map_partitions(chunk, meta=chunk(frame._meta))
    table = partials.groupby(GROUP, sort=False).sum(split_out=1)
    config = {
        "kind": kind,
        "bins": chunk.bins,
        "threshold": chunk.threshold,
        "classes": chunk.classes,
        "slices": list(slices),
        "label_range": list(chunk.label_range) if chunk.label_range else None,
        "grid": chunk.grid,
        "shift": chunk.shift,
        "softmax": kind == "multiclass" and len(predictions) == 1,
    }
    return {"table": table, "config": config}


def _numbered(column: str, prefix: str) -> bool:
    return column.startswith(f"{prefix}_") and column[len(prefix) + 1 :].isdigit()
