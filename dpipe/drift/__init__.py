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

from dpipe.drift.counts import current_measures
from dpipe.drift.labels import METRICS, Metric, label_family, metrics
from dpipe.drift.profile import (
    BINS,
    KS_BINS,
    PROFILE,
    PROFILE_VERSION,
    build_profile,
    reference_measures,
    reference_profile,
)
from dpipe.drift.statistics import EPSILON, compare, js_distance, ks_statistic, psi

__all__ = [
    "BINS",
    "EPSILON",
    "KS_BINS",
    "METRICS",
    "PROFILE",
    "PROFILE_VERSION",
    "Metric",
    "build_profile",
    "compare",
    "current_measures",
    "js_distance",
    "ks_statistic",
    "label_family",
    "metrics",
    "psi",
    "reference_measures",
    "reference_profile",
]
