"""The one workload every system runs: columns, transforms, split rule and XGBoost parameters."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from benchmarks.data import CATEGORICAL as _CATS
from benchmarks.data import FLOATS

CATEGORICAL = list(_CATS)
FILL_MEDIAN = FLOATS[:10]  # fill_missing (median of the training rows)
SCALE = FLOATS[20:24]  # standard_scale (population std of the training rows); missing stays missing
FEATURES = [*FLOATS, *CATEGORICAL]  # the model's columns, in this order in every system
ID, LABEL = "row_id", "label"
COLUMNS = [ID, *FLOATS, *CATEGORICAL, LABEL]  # the projection every system reads

VALID_FRACTION, SPLIT_SEED = 0.2, 0
ROUNDS, DEPTH, ETA = 100, 8, 0.1
PARAMS = {"tree_method": "hist", "objective": "binary:logistic", "max_depth": DEPTH, "eta": ETA, "eval_metric": ["auc"]}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def valid_mask(row_id) -> np.ndarray:
    """dpipe's split rule (``split: {key: [row_id], seed: 0, valid_fraction: 0.2}``), reproduced.

    ``dpipe.train.Labeler`` hashes the key columns (numbers as float64) with pandas' row hash,
    mixes in the seed with SplitMix64 and compares the top 53 bits with the fraction. The smoke
    test checks this copy against dpipe's own on a sample.
    """
    key = pd.DataFrame({ID: np.asarray(row_id, dtype="float64")})
    h = pd.util.hash_pandas_object(key, index=False).to_numpy()
    z = h + np.uint64((SPLIT_SEED * 0x9E3779B97F4A7C15) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype("float64") / float(1 << 53) < VALID_FRACTION


def vocabulary(counts: pd.Series) -> list:
    """dpipe's category order: decreasing frequency, ties by value."""
    frame = pd.DataFrame({"value": counts.index.astype(str), "n": counts.to_numpy()})
    return frame.sort_values(["n", "value"], ascending=[False, True], kind="stable")["value"].tolist()


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged), for predictions read back from disk."""
    y = np.asarray(y, dtype="float64")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    pos = y.sum()
    neg = len(y) - pos
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def dpipe_job(uri: str, out: str, storage_options: dict | None = None) -> dict:
    """The job spec for dpipe: the same pipeline, split and parameters as the baselines."""
    return {
        "name": "bench",
        "source": {"uri": uri, "columns": COLUMNS, "storage_options": storage_options or {}},
        "id_columns": [ID],
        "features": [
            {"op": "fill_missing", "columns": FILL_MEDIAN, "strategy": "median"},
            {"op": "standard_scale", "columns": SCALE},
            {"op": "categorical", "columns": CATEGORICAL},
        ],
        "label": {"column": LABEL},
        "split": {"valid_fraction": VALID_FRACTION, "seed": SPLIT_SEED, "key": [ID]},
        "train": {
            "num_boost_round": ROUNDS,
            "early_stopping_rounds": None,
            "eval_metric": ["auc"],
            "eval_train": False,  # every system evaluates the validation rows only
            "params": {"max_depth": DEPTH, "eta": ETA},
        },
        "output": {"uri": out, "valid_predictions": True},
    }
