"""Labels, the deterministic split, model inputs, and distributed XGBoost training."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from dpipe.columns import FOLD, FOLD_MODULUS, INTERNAL, LABEL, VALID
from dpipe.errors import ColumnError, DataError, TrainingError
from dpipe.expr import Expression

PREDICTION = "prediction"


# -- labels and split -------------------------------------------------------------------------
@dataclass(frozen=True)
class Labeler:
    """Adds the label and the validation flag to each partition (training only).

    A label expression is missing (and its row dropped) when any column it reads is missing, so
    ``arr_delay > 15`` does not silently label a row with an unknown delay as 0.
    """

    column: str | None
    expr: str | None
    split_key: tuple[str, ...]
    valid_fraction: float
    seed: int
    folds: bool = False

    @property
    def label_inputs(self) -> set[str]:
        return {self.column} if self.column else set(Expression(self.expr, where="label.expr").columns)

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        if self.column:
            y = pdf[self.column]
            if pd.api.types.is_bool_dtype(y.dtype):
                y = y.astype("float32")
            y = pd.to_numeric(y, errors="coerce").astype("float32")
        else:
            value = Expression(self.expr, where="label.expr").evaluate(pdf)
            y = pd.Series(value, index=pdf.index).astype("float32")
            unknown = pdf[sorted(self.label_inputs)].isna().any(axis=1)
            y = y.mask(unknown)
        key = pdf[list(self.split_key)]
        # pandas hashes the bits of a value, so 5 (int64) and 5.0 (float64) differ; pyarrow gives an
        # integer column float64 in a file where it has a missing value. Hash numbers as float64.
        key = key.astype({c: "float64" for c in key.columns if pd.api.types.is_numeric_dtype(key[c].dtype)})
        hashed = pd.util.hash_pandas_object(key, index=False).to_numpy()
        mixed = _mix(hashed, self.seed)
        valid = (mixed >> np.uint64(11)).astype("float64") / float(1 << 53) < self.valid_fraction
        columns = {LABEL: y, VALID: valid}
        if self.folds:
            # Low bits: independent of the high bits that decide the split.
            columns[FOLD] = (mixed % np.uint64(FOLD_MODULUS)).astype("uint16")
        out = pdf.assign(**columns)
        return out[out[LABEL].notna()]


def _mix(h: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 finaliser over ``hash + seed``: pandas' row hash ignores its key for numbers."""
    z = h + np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# -- model inputs -----------------------------------------------------------------------------
@dataclass
class ModelInput:
    """The exact columns and dtypes the model sees: float32 numbers and pandas categories."""

    features: list[str]
    categorical: list[str]

    @classmethod
    def infer(
        cls, meta: pd.DataFrame, *, features: list[str] | None, exclude: set[str], allow_missing: bool = False
    ) -> ModelInput:
        """The model's inputs from the transformed frame's schema.

        ``allow_missing`` skips listed features not in ``meta`` (before a fit, when ops such as
        ``one_hot`` have not named their columns yet).
        """
        if features is not None:
            missing = [c for c in features if c not in meta.columns]
            if allow_missing:
                features = [c for c in features if c in meta.columns]
                missing = []
            if missing:
                raise ColumnError(
                    f"train.features: column(s) {missing} not found after the feature ops; available: {list(meta.columns)}",
                    hint="fix `train.features` (or leave it out to use every column)",
                )
            leaked = sorted(set(features) & exclude)
            if leaked:
                raise ColumnError(
                    f"train.features: {leaked} are the label, id columns or excluded, and cannot be features",
                    hint="remove them from `train.features`",
                )
        else:
            features = [c for c in meta.columns if c not in exclude and c not in INTERNAL]
        if not features and not allow_missing:
            raise ColumnError("train: no feature columns left", hint="check `train.features` and `train.exclude`")
        bad = {
            c: str(meta[c].dtype)
            for c in features
            if not (
                isinstance(meta[c].dtype, pd.CategoricalDtype)
                or pd.api.types.is_numeric_dtype(meta[c].dtype)
                or pd.api.types.is_bool_dtype(meta[c].dtype)
            )
        }
        if bad:
            raise ColumnError(
                f"train: feature column(s) {bad} are neither numeric nor categorical",
                hint=f"encode them with a `categorical` op, or list them in `train.exclude`: {sorted(bad)}",
            )
        categorical = [c for c in features if isinstance(meta[c].dtype, pd.CategoricalDtype)]
        return cls(features=list(features), categorical=categorical)

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        # XGBoost refuses misaligned buffers ("Input pointer misalignment"), and arrays that
        # distributed deserialises from a message may start at any byte offset. Numbers get a
        # fresh float32 array (copied only where needed); categories are rebuilt (they are small).
        cols = {}
        for c in self.features:
            s = pdf[c]
            if c in self.categorical:
                cats = s.dtype.categories
                dtype = pd.CategoricalDtype(pd.Index(cats.tolist(), dtype=cats.dtype))
                codes = np.require(s.cat.codes.to_numpy(), requirements="A")
                cols[c] = pd.Categorical.from_codes(codes, dtype=dtype)
            else:
                cols[c] = np.require(s.to_numpy(dtype="float32", na_value=np.nan), requirements="A")
        return pd.DataFrame(cols, index=pdf.index)

    def require_categories(self, meta: pd.DataFrame) -> None:
        """Fail on a categorical feature whose fitted vocabulary is empty: XGBoost cannot use it."""
        empty = [c for c in self.categorical if len(meta[c].dtype.categories) == 0]
        if empty:
            raise DataError(
                f"train: categorical feature(s) {empty} have no category: no value is frequent enough in the"
                " training rows",
                hint="lower `min_frequency` of their `categorical` op, or list them in `train.exclude`",
            )

    def with_passthrough(self, keep: list[str]):
        """A partition function returning model inputs plus the ``keep`` columns."""
        return _WithPassthrough(self, tuple(keep))

    def to_dict(self) -> dict:
        return {"features": self.features, "categorical": self.categorical}

    @classmethod
    def from_dict(cls, data: dict) -> ModelInput:
        return cls(features=list(data["features"]), categorical=list(data["categorical"]))


@dataclass(frozen=True)
class _WithPassthrough:
    model_input: ModelInput
    keep: tuple[str, ...]

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = self.model_input(pdf)
        for c in self.keep:
            out[c] = pdf[c]
        return out


# -- placement --------------------------------------------------------------------------------
def spread_partitions(client, df: dd.DataFrame, rows_per_partition: list[int] | None = None) -> dd.DataFrame:
    """Compute ``df`` into worker memory so that every worker holds a fair share of it.

    xgboost.dask trains on the partitions where they are and fails with categorical data when a
    worker holds none, so placement is explicit: largest partitions first, each to the worker with
    the fewest rows so far. Returns a DataFrame backed by the placed futures.
    """
    futures, _, _ = _place(client, df, rows_per_partition)
    return dd.from_delayed(futures, meta=df._meta, verify_meta=False)


def spread_train_valid(
    client, df: dd.DataFrame, rows_per_partition: list[int] | None = None
) -> tuple[dd.DataFrame, dd.DataFrame]:
    """Place ``df`` as :func:`spread_partitions` does, then split it into its training and
    validation rows (the ``VALID`` column) where each partition lies.

    Every worker must hold rows of both matrices (see above), which a fair share of ``df`` does not
    guarantee: a ``split.key`` on a partition column puts whole files on one side, and a row filter
    can empty whole files. A worker left without rows of one side gets part of the largest piece of
    that side, so only those rows move between workers.
    """
    placed, where, workers = _place(client, df, rows_per_partition)
    out = []
    for valid in (False, True):
        pieces = [client.submit(_side, f, valid, workers=[w], allow_other_workers=False) for f, w in zip(placed, where)]
        counts, holders = list(client.gather(client.map(len, pieces))), list(where)
        share = max(sum(counts) // len(workers), 1)
        while True:
            load = {w: 0 for w in workers}
            for n, w in zip(counts, holders):
                load[w] += n
            empty = [w for w in workers if load[w] == 0]
            j = max(range(len(pieces)), key=lambda j: (counts[j], load[holders[j]]))
            if not empty or counts[j] < 2:
                break  # fewer rows than workers: XGBoost says what it needs
            moved = min(counts[j] // 2, share)
            start = counts[j] - moved
            # Cut where the piece is, then copy only the cut to the empty worker.
            rest = client.submit(_rows, pieces[j], 0, start, workers=[holders[j]], allow_other_workers=False)
            part = client.submit(_rows, pieces[j], start, counts[j], workers=[holders[j]], allow_other_workers=False)
            part = client.submit(_rows, part, 0, moved, workers=[empty[0]], allow_other_workers=False)
            pieces[j], counts[j] = rest, start
            pieces.append(part)
            counts.append(moved)
            holders.append(empty[0])
        out.append(dd.from_delayed(pieces, meta=df._meta, verify_meta=False))
    return out[0], out[1]


def _side(pdf: pd.DataFrame, valid: bool) -> pd.DataFrame:
    return pdf[pdf[VALID]] if valid else pdf[~pdf[VALID]]


def _rows(pdf: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    return pdf.iloc[start:stop]


def _place(client, df: dd.DataFrame, rows_per_partition: list[int] | None):
    """The futures of ``df``'s partitions, the worker each was computed on, and all workers."""
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        raise TrainingError("the cluster has no workers", hint="start workers or check `cluster.address`")
    if df.npartitions < len(workers):
        df = df.repartition(npartitions=len(workers))
        rows_per_partition = None
    sizes = rows_per_partition or [1] * df.npartitions
    load = {w: 0 for w in workers}
    assignment = {}
    for i in sorted(range(df.npartitions), key=lambda i: -sizes[i]):
        target = min(workers, key=lambda w: (load[w], workers.index(w)))
        assignment[i] = target
        load[target] += max(sizes[i], 1)
    parts = df.to_delayed(optimize_graph=True)
    futures = [client.compute(part, workers=[assignment[i]], allow_other_workers=False) for i, part in enumerate(parts)]
    from distributed import wait

    with client.as_current():
        wait(futures)
    for f in futures:
        if f.status == "error":
            f.result()  # raises the task's own error
    return futures, [assignment[i] for i in range(len(futures))], workers


# -- training ---------------------------------------------------------------------------------
DEFAULT_METRICS = {"binary": ["logloss", "auc"], "reg": ["rmse"], "multi": ["mlogloss"]}


def xgb_params(train_spec) -> dict:
    params = {"tree_method": "hist", "objective": train_spec.objective, **train_spec.params}
    metrics = train_spec.eval_metric or DEFAULT_METRICS.get(train_spec.objective.split(":")[0], [])
    if metrics:
        params["eval_metric"] = list(metrics)
    return params


def check_label(objective: str, counts: pd.Series, where: str = "label") -> None:
    """Fail early on labels XGBoost would reject or learn nothing from."""
    values = sorted(float(v) for v in counts.index)
    if objective.startswith("binary:"):
        if not set(values) <= {0.0, 1.0}:
            raise DataError(
                f"{where}: {objective} needs labels 0 or 1; the training rows have {values[:10]}",
                hint="use `label.expr` to turn the target into a condition, e.g. `delay > 15`",
            )
        if len(values) < 2:
            raise DataError(
                f"{where}: every training row has label {values[0] if values else None!r}: one class, nothing to learn",
                hint="check `label` and the filters; the training data needs both classes",
            )
    elif objective.startswith("multi:") and len(values) < 2:
        raise DataError(f"{where}: only one class in the training rows", hint="check `label` and the filters")


def train_booster(client, params: dict, train_spec, X_train, y_train, X_valid, y_valid):
    """Train with ``DaskQuantileDMatrix`` on the workers; returns ``(booster, metrics)``.

    The booster is cut at the best iteration when early stopping is on, so the saved model is the
    one that was evaluated. Data is never pulled to the client.
    """
    import xgboost as xgb
    import xgboost.dask

    try:
        dtrain = xgb.dask.DaskQuantileDMatrix(client, X_train, y_train, enable_categorical=True)
        dvalid = xgb.dask.DaskQuantileDMatrix(client, X_valid, y_valid, ref=dtrain, enable_categorical=True)
        out = xgb.dask.train(
            client,
            params,
            dtrain,
            num_boost_round=train_spec.num_boost_round,
            evals=[(dtrain, "train"), (dvalid, "valid")] if train_spec.eval_train else [(dvalid, "valid")],
            early_stopping_rounds=train_spec.early_stopping_rounds,
            verbose_eval=False,
        )
    except xgb.core.XGBoostError as exc:
        raise TrainingError(
            f"train: XGBoost failed: {_xgboost_message(exc)}",
            hint="check `train.params` against the XGBoost parameter reference",
        ) from None
    booster, history = out["booster"], out["history"]
    rounds = booster.num_boosted_rounds()
    best = (
        booster.best_iteration
        if train_spec.early_stopping_rounds and "best_iteration" in booster.attributes()
        else rounds - 1
    )
    if best + 1 < rounds:
        booster = booster[: best + 1]
    metrics = {
        "best_iteration": int(best),
        "num_boosted_rounds": int(best + 1),
        "rounds_trained": int(rounds),
        "train": {m: _finite(v[best]) for m, v in history.get("train", {}).items()},
        "valid": {m: _finite(v[best]) for m, v in history.get("valid", {}).items()},
        "history": {s: {m: [_finite(x) for x in v] for m, v in h.items()} for s, h in history.items()},
    }
    return booster, metrics


def _xgboost_message(exc: Exception) -> str:
    """The first line of an XGBoost error, without its ``[12:00:00] src/file.cc:27:`` prefix;
    the lines after it are a C++ stack trace or parameter documentation."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0])[:500]


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# -- prediction -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Predict:
    model_input: ModelInput
    keep: tuple[str, ...]

    def __call__(self, pdf: pd.DataFrame, booster) -> pd.DataFrame:
        out = pdf[list(self.keep)].copy() if self.keep else pd.DataFrame(index=pdf.index)
        X = self.model_input(pdf)
        if len(X):
            pred = booster.inplace_predict(X, validate_features=True)
        else:
            # The output's shape depends on the objective and its parameters (multi:softmax gives
            # one column, multi:softprob and several quantile_alpha one per class or quantile):
            # ask the model with one all-missing row, so empty partitions match the others.
            pred = booster.inplace_predict(X.reindex(pd.RangeIndex(1)), validate_features=True)[:0]
        if pred.ndim == 1:
            out[PREDICTION] = pred.astype("float32")
        else:
            for k in range(pred.shape[1]):
                out[f"{PREDICTION}_{k}"] = pred[:, k].astype("float32")
        return out


def predict_frame(booster, df: dd.DataFrame, model_input: ModelInput, keep: list[str]) -> dd.DataFrame:
    """Lazy predictions for every row of ``df`` (after the feature pipeline), with ``keep`` columns.

    The booster travels to the workers once, as a single graph key.
    """
    fn = _Predict(model_input, tuple(keep))
    meta = fn(df._meta, booster)
    return df.map_partitions(fn, dask.delayed(booster, pure=True), meta=meta, align_dataframes=False)
