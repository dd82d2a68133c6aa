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


# -- the "full" workload (issue 13): every numeric column filled and scaled -------------------
# A row filter, two derived columns, day of week and day of year, the mean fill and standard
# scaling of all 32 numeric columns (a scale of mean-filled values), ordinal codes of the three
# categorical columns; 100 rounds of depth 8 with AUC on the validation rows.
WORKLOADS = ("default", "full")
DATE = "event_date"
FULL_KEEP_BELOW = ("f27", 2.5)  # rows with f27 < 2.5 (a missing f27 drops the row)
FULL_DERIVED = {"f00_f01": ("f00", "*", "f01"), "f02_f03": ("f02", "-", "f03")}
FULL_DATE_PARTS = {"weekday": f"{DATE}_weekday", "dayofyear": f"{DATE}_dayofyear"}
FULL_NUMERIC = [*FLOATS, *FULL_DERIVED, *FULL_DATE_PARTS.values()]
FULL_FEATURES = [*FULL_NUMERIC, *CATEGORICAL]
FULL_COLUMNS = [*COLUMNS, DATE]


def columns_read(workload: str) -> list[str]:
    return FULL_COLUMNS if workload == "full" else COLUMNS


def full_rows(pdf: pd.DataFrame) -> pd.DataFrame:
    """The full workload's stateless part on one pandas frame: filter, derived and date columns."""
    column, below = FULL_KEEP_BELOW
    pdf = pdf[pdf[column] < below]
    t = pd.to_datetime(pdf[DATE])
    derived = {name: pdf[a] * pdf[b] if op == "*" else pdf[a] - pdf[b] for name, (a, op, b) in FULL_DERIVED.items()}
    parts = {name: getattr(t.dt, part).astype("float32") for part, name in FULL_DATE_PARTS.items()}
    return pdf.assign(**derived, **parts).drop(columns=[DATE])


def full_transform(pdf: pd.DataFrame, means, scales, codes: dict) -> pd.DataFrame:
    """Mean fill, standard scale (float32), ordinal codes (unseen: NaN) of one pandas frame."""
    out = {}
    for c in FULL_NUMERIC:
        out[c] = ((pdf[c].astype("float64").fillna(means[c]) - means[c]) / scales[c]).astype("float32")
    for c in CATEGORICAL:
        out[c] = pdf[c].map(codes[c]).astype("float32")
    return pdf.assign(**out)


def full_scales(var, count, rows: int) -> dict:
    """The population std of mean-filled values: the filled values add no squared deviation."""
    out = {}
    for c in FULL_NUMERIC:
        v = float(var[c]) * float(count[c]) / rows if rows else 0.0
        out[c] = float(np.sqrt(v)) if v > 0 else 1.0
    return out


def ordinal_codes(counts: pd.Series) -> dict:
    """dpipe's ordinal codes: the vocabulary's order (frequency, then value) from 0."""
    return {v: float(i) for i, v in enumerate(vocabulary(counts))}


def dpipe_job(uri: str, out: str, storage_options: dict | None = None, workload: str = "default") -> dict:
    """The job spec for dpipe: the same pipeline, split and parameters as the baselines."""
    if workload == "full":
        column, below = FULL_KEEP_BELOW
        features = [
            {"op": "filter", "expr": f"{column} < {below}"},
            *[{"op": "derive", "name": n, "expr": f"{a} {op} {b}"} for n, (a, op, b) in FULL_DERIVED.items()],
            {"op": "datetime_parts", "columns": [DATE], "parts": list(FULL_DATE_PARTS), "drop": True},
            {"op": "fill_missing", "columns": FULL_NUMERIC, "strategy": "mean"},
            {"op": "standard_scale", "columns": FULL_NUMERIC},
            {"op": "categorical", "columns": CATEGORICAL, "encoding": "ordinal"},
        ]
    else:
        features = [
            {"op": "fill_missing", "columns": FILL_MEDIAN, "strategy": "median"},
            {"op": "standard_scale", "columns": SCALE},
            {"op": "categorical", "columns": CATEGORICAL},
        ]
    return {
        "name": "bench",
        "source": {"uri": uri, "columns": columns_read(workload), "storage_options": storage_options or {}},
        "id_columns": [ID],
        "features": features,
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
