"""Evaluation measures in one pass over the rows, and ``evaluation.json``.

:func:`measures` returns lazy Dask objects: per partition, the rows are binned and summed (NumPy
and a pandas group-by of that partition alone), and the partitions' small tables are summed by a
tree reduction (``split_out=1``): no sort, no shuffle, nothing but sums leaves a worker. The caller
computes them in one ``dask.compute`` with anything else of the same rows; :func:`finish` turns
the computed sums into JSON-able metrics and curves, and :func:`evaluation_document` builds the
file a bundle stores::

    values = measures(predictions, kind_of("binary:logistic"), slices=["country"])
    (computed,) = dask.compute(values)
    side = finish(computed)                      # {"rows", "metrics", "curves", "confusion", "slices"}
    evaluation_document("binary:logistic", {"valid": side}, threshold=0.5, slices=["country"])

``evaluation.json`` (``format_version`` 1)::

    {"format_version": 1, "objective": "binary:logistic", "kind": "binary", "threshold": 0.5,
     "slices": ["country"],
     "sides": {"valid": SIDE, "test": SIDE}}       # the sides that were evaluated

    SIDE = {"rows": 3988, "skipped_rows": 0, "bins": 200,
            "metrics": {...},                      # by kind, below
            "curves": {...},                       # by kind, below
            "confusion": {"labels": ["0", "1"], "matrix": [[tn, fp], [fn, tp]]},  # rows: actual
            "slices": {"country": [{"value": "US", "rows": 812, "metrics": {...}}, ...]}}

* **binary**: metrics ``auc``, ``auc_error_bound``, ``aucpr``, ``logloss``, ``brier``, and at the
  threshold ``accuracy``, ``precision``, ``recall``, ``f1``, ``positive_rate`` (of the labels),
  ``predicted_positive_rate``; curves ``roc`` (``fpr``, ``tpr``, ``threshold``), ``pr``
  (``recall``, ``precision``, ``threshold``) and ``calibration`` (``predicted``: mean prediction,
  ``observed``: fraction of positives, ``rows``, per non-empty group of bins).
* **regression**: metrics ``rmse``, ``mae``, ``r2``, ``bias`` (mean of prediction - label),
  ``label_mean``, ``label_std``, ``prediction_mean``, ``median_abs_error``, ``p90_abs_error``,
  ``p99_abs_error``; curves ``residuals`` (a histogram: ``edges``, ``counts``) and, when the
  label's range was given, ``predicted_vs_actual`` (``range``, ``grid``, ``cells``: ``[actual
  cell, predicted cell, rows]``, ``outside``: rows clipped into the edge cells).
* **multiclass**: metrics ``accuracy``, ``mlogloss`` (``multi:softprob`` only), ``macro_f1``,
  ``per_class`` (``precision``, ``recall``, ``f1``, ``rows`` per class); the confusion matrix.

A metric that cannot be computed (an AUC with one class present) is ``null``.

How the binned measures differ from exact ones
----------------------------------------------
Binary predictions fall in ``bins`` equal bins on [0, 1] (200 by default). The ROC and PR curves
have a point at each bin edge, and the AUC is the trapezoid under the ROC points: exactly the AUC
of the predictions rounded to their bin, ties counted half (as ``sklearn.metrics.roc_auc_score``
counts them). It differs from the exact AUC only through pairs of a positive and a negative row
in the same bin, so ``|auc - exact| <= auc_error_bound = sum_b pos_b * neg_b / (2 * P * N)``,
computed and stored with it; at 200 bins it is typically below 1e-3. ``aucpr`` is the average
precision (``sklearn.metrics.average_precision_score``'s step sum, not a trapezoid) over the same
points. Threshold metrics and the confusion matrix are exact: each row is compared with the
threshold itself (a prediction above it is positive, as XGBoost's ``error`` metric counts).

Regression residuals are bucketed on a signed logarithmic scale (buckets 2% wide relative to their
value, from 1e-12 up), which needs no range and gives the absolute-error quantiles within 1%; the
stored histogram is those buckets spread over 40 equal bins up to the 99th percentile of the
absolute error. The predicted-against-actual grid needs fixed cells: it is measured only when
``label_range`` is given (the training labels' minimum and maximum, from the fit pass), with
values outside the range counted in the edge cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dpipe.evaluation.finish import JUDGES as JUDGES
from dpipe.evaluation.finish import finish
from dpipe.evaluation.kinds import OBJECTIVE_KINDS as OBJECTIVE_KINDS
from dpipe.evaluation.kinds import REFUSED as REFUSED
from dpipe.evaluation.kinds import Kind as Kind
from dpipe.evaluation.kinds import kind_of
from dpipe.evaluation.measure import measures

__all__ = ["EVALUATION", "FORMAT_VERSION", "evaluation_document", "finish", "kind_of", "measures"]

#: The file of a bundle that holds :func:`evaluation_document`.
EVALUATION = "evaluation.json"
FORMAT_VERSION = 1


def evaluation_document(
    objective: str,
    sides: Mapping[str, Mapping[str, Any]],
    *,
    threshold: float = 0.5,
    slices: Sequence[str] = (),
) -> dict[str, Any]:
    """The content of a bundle's ``evaluation.json``: the finished sides (``valid``, ``test``).

    ``threshold`` and ``slices`` are the ones the sides were measured with.

    Examples
    --------
    >>> doc = evaluation_document("binary:logistic", {"valid": finish(v), "test": finish(t)}, slices=["plan"])
    >>> out.write_json(EVALUATION, doc)
    """
    return {
        "format_version": FORMAT_VERSION,
        "objective": objective,
        "kind": kind_of(objective),
        "threshold": float(threshold),
        "slices": list(slices),
        "sides": {str(name): dict(side) for name, side in sides.items()},
    }
