"""Hyperparameter tuning on placed data: Optuna trials that reuse one pair of quantile matrices.

The transformed rows are already in worker memory (:func:`dpipe.stages.place`); :func:`tune`
sketches them into quantile matrices ONCE (:func:`dpipe.train.quantile_matrices`, with
``max_bin`` fixed) and every trial boosts on them (:func:`dpipe.train.boost`). No trial reads,
transforms or sketches the data again.

Pruning is decided on the client: ``xgboost.dask`` callbacks run on the workers and cannot reach
the study. A trial trains up to its first checkpoint, reports its validation metric, and, unless
the pruner stops it, continues the same booster (``xgb_model``) on the same matrices to the next
checkpoint. Early stopping spans the segments: a callback carries the best score so far and the
rounds since it into each segment, so a trial stops where one uninterrupted training with
XGBoost's own early stopping would.

The study lives in SQLite (or any SQLAlchemy URL): an interrupted tuning resumes, and
``n_trials`` counts every trial the study has finished.
"""

from dpipe.tune.growth import Growth
from dpipe.tune.resident import Resident
from dpipe.tune.search import TuneResult, suggest, tune, tune_job, with_params
from dpipe.tune.study import PRUNERS, SAMPLERS, STATES, default_study, open_study, storage_url, trials_table

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "STATES",
    "Growth",
    "Resident",
    "TuneResult",
    "default_study",
    "open_study",
    "storage_url",
    "suggest",
    "trials_table",
    "tune",
    "tune_job",
    "with_params",
]
