"""Labels and sides, model inputs, and distributed XGBoost training."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dpipe.columns import FOLD, FOLD_MODULUS, INTERNAL, LABEL
from dpipe.errors import ColumnError, DataError, TrainingError
from dpipe.expr import Expression
from dpipe.split import Splitter
from dpipe.xgboost_logs import route_xgboost_logs

if TYPE_CHECKING:
    import dask.dataframe as dd

PREDICTION = "prediction"


# -- labels and split -------------------------------------------------------------------------
@dataclass(frozen=True)
class Labeler:
    """Adds the label, the side of the split and the folds to each partition (training only).

    A label expression is missing (and its row dropped) when any column it reads is missing, so
    ``arr_delay > 15`` does not silently label a row with an unknown delay as 0. The side comes
    from the :class:`~dpipe.split.Splitter` (a row without a time in a time split gets
    :data:`~dpipe.split.NO_SIDE`; :func:`dpipe.stages.prepare` drops and counts it).
    """

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-label"

    column: str | None
    expr: str | None
    splitter: Splitter
    #: Target-encoding folds (``FOLD``) from the row hash, for ops that cross-fit on the label.
    folds: bool = False

    @property
    def label_inputs(self) -> set[str]:
        return {self.column} if self.column else set(self._expression().columns)

    @property
    def split_inputs(self) -> set[str]:
        return self.splitter.inputs | (set(self.splitter.key) if self.folds else set())

    def _expression(self) -> Expression:
        assert self.expr is not None  # the spec gives exactly one of `column` and `expr`
        return Expression(self.expr, where="label.expr")

    def labels(self, pdf: pd.DataFrame) -> pd.Series:
        """The label of every row (float32; missing where it cannot be known)."""
        if self.column:
            y = pdf[self.column]
            if pd.api.types.is_bool_dtype(y.dtype):
                y = y.astype("float32")
            return pd.to_numeric(y, errors="coerce").astype("float32")
        value = self._expression().evaluate(pdf)
        y = pd.Series(value, index=pdf.index).astype("float32")
        return y.mask(pdf[sorted(self.label_inputs)].isna().any(axis=1))

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        y = self.labels(pdf)
        hashed = self.splitter.by != "time" or self.folds
        mixed = self.splitter.mixed(pdf) if hashed else None
        columns: dict[str, Any] = {LABEL: y, **self.splitter.sides(pdf, mixed)}
        if self.folds:
            assert mixed is not None
            # Low bits: independent of the high bits that decide the split.
            columns[FOLD] = (mixed % np.uint64(FOLD_MODULUS)).astype("uint16")
        out = pdf.assign(**columns)
        return out[out[LABEL].notna()]


@dataclass(frozen=True)
class Labels:
    """A partition function: the rows with a known label, the label in ``column`` (no split:
    scoring a bundle on rows it never saw)."""

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-label"

    labeler: Labeler
    column: str = "label"

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = pdf.assign(**{self.column: self.labeler.labels(pdf)})
        return out[out[self.column].notna()]


# -- model inputs -----------------------------------------------------------------------------
@dataclass
class ModelInput:
    """The exact columns and dtypes the model sees: float32 numbers and pandas categories."""

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-model-input"

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
    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-model-rows"

    model_input: ModelInput
    keep: tuple[str, ...]

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        out = self.model_input(pdf)
        for c in self.keep:
            out[c] = pdf[c]
        return out


# -- training ---------------------------------------------------------------------------------
DEFAULT_METRICS = {"binary": ["logloss", "auc"], "reg": ["rmse"], "multi": ["mlogloss"]}


def xgb_params(train_spec) -> dict:
    params = {"tree_method": "hist", "objective": train_spec.objective, **train_spec.params}
    if getattr(train_spec, "device", "cpu") != "cpu":
        params["device"] = train_spec.device
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


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`train_booster` runs: the ``train:`` section resolved for ``xgboost.dask.train``.

    ``callbacks`` and ``xgb_model`` go to ``xgboost.dask.train`` unchanged (``xgb_model``:
    continuing a saved booster). ``early_stopping_rounds`` stops on the last metric of the
    validation rows as XGBoost's own callback does, in :class:`dpipe.resume.Resumable`, which also
    writes a checkpoint every ``checkpoint_every`` rounds into ``checkpoints`` and goes on from
    ``progress`` (where an interrupted attempt left off, ``xgb_model`` being its booster).

    Examples
    --------
    >>> config = TrainConfig.from_spec(job.train).replace(num_boost_round=10)
    """

    params: Mapping[str, Any]
    num_boost_round: int
    early_stopping_rounds: int | None = None
    eval_train: bool = True
    callbacks: tuple[Any, ...] = ()
    xgb_model: Any = None
    #: Where checkpoints go (a :class:`dpipe.resume.Checkpoints`), and every how many rounds.
    checkpoints: Any = None
    checkpoint_every: int | None = None
    #: Where an earlier attempt left off (a :class:`dpipe.resume.Progress`).
    progress: Any = None
    #: Seconds a collective operation waits for the other workers (``None``: XGBoost's default).
    collective_timeout: int | None = None
    #: Which workers train: ``all`` or ``one`` (:mod:`dpipe.layout`).
    layout: str = "all"

    @classmethod
    def from_spec(cls, spec: Any) -> TrainConfig:
        """From a validated :class:`~dpipe.spec.TrainSpec`."""
        return cls(
            params=xgb_params(spec),
            num_boost_round=spec.num_boost_round,
            early_stopping_rounds=spec.early_stopping_rounds,
            eval_train=spec.eval_train,
            collective_timeout=spec.collective_timeout,
            layout=getattr(spec, "layout", "all"),
        )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Matrices:
    """XGBoost's quantile matrices of placed rows (``valid`` may be ``None``): handles on the
    placed partitions. :func:`boost` calls ``xgboost.dask.train``, which builds the worker-local
    matrices (the sketch included) again on every call; tuning keeps them on the workers
    instead (:mod:`dpipe.tune.resident`)."""

    train: Any
    valid: Any
    max_bin: int

    def release(self) -> None:
        """Drop the matrices' hold on the placed partitions now. A ``DaskDMatrix`` lives on in
        reference cycles until a garbage collection, and its futures (each a worker's partitions)
        with it: the rows would stay in worker memory after the run."""
        for matrix in (self.train, self.valid):
            for futures in getattr(matrix, "worker_map", {}).values():
                for future in futures:
                    future.release()  # idempotent: the matrix's own release, when collected, does nothing


def quantile_matrices(client, X_train, y_train, X_valid, y_valid, *, max_bin: int = 256) -> Matrices:
    """Sketch the placed rows into ``DaskQuantileDMatrix`` objects (the validation one on the
    training one's bins). The data stays on the workers."""
    import xgboost as xgb
    import xgboost.dask

    with client.as_current():
        route_xgboost_logs(client)
        try:
            dtrain = xgb.dask.DaskQuantileDMatrix(client, X_train, y_train, enable_categorical=True, max_bin=max_bin)
            dvalid = None
            if X_valid is not None:
                dvalid = xgb.dask.DaskQuantileDMatrix(
                    client, X_valid, y_valid, ref=dtrain, enable_categorical=True, max_bin=max_bin
                )
        except xgb.core.XGBoostError as exc:
            raise training_error(exc) from exc
    return Matrices(dtrain, dvalid, max_bin)


def train_booster(client, config: TrainConfig, X_train, y_train, X_valid, y_valid):
    """Train with ``DaskQuantileDMatrix`` on the workers; returns ``(booster, metrics)``.

    ``X_valid`` may be ``None`` (the model of all training rows after cross-validation): no early
    stopping then, and the training rows are evaluated.

    The data must already be on the workers (:mod:`dpipe.placement`): xgboost.dask trains where
    the partitions are. The booster is cut at the best iteration when early stopping is on, so the
    saved model is the one that was evaluated. Data is never pulled to the client.
    """
    max_bin = int(config.params.get("max_bin", 256))
    matrices = quantile_matrices(client, X_train, y_train, X_valid, y_valid, max_bin=max_bin)
    try:
        return boost(client, config, matrices)
    finally:
        matrices.release()


def boost(client, config: TrainConfig, matrices: Matrices):
    """Train on built matrices; returns ``(booster, metrics)`` as :func:`train_booster` does."""
    given = int(config.params.get("max_bin", matrices.max_bin))
    if given != matrices.max_bin:
        raise TrainingError(
            f"train: max_bin {given} differs from the {matrices.max_bin} the matrices were built with",
            hint="keep `max_bin` fixed while reusing matrices (tuning cannot search it)",
        )
    # xgboost.dask looks the client up inside its tasks: make it current for the whole call.
    with client.as_current():
        route_xgboost_logs(client)
        return _train(client, config, matrices)


def _train(client, config: TrainConfig, matrices: Matrices):
    import xgboost as xgb
    import xgboost.dask
    from xgboost.collective import Config

    from dpipe.resumable import Resumable
    from dpipe.resume import Progress

    dtrain, dvalid = matrices.train, matrices.valid
    evals = [(dtrain, "train")] if config.eval_train or dvalid is None else []
    if dvalid is not None:
        evals.append((dvalid, "valid"))
    before = config.progress or Progress()
    carried = Resumable.of(config, validated=dvalid is not None)
    try:
        out = xgb.dask.train(
            client,
            dict(config.params),
            dtrain,
            num_boost_round=config.num_boost_round,
            evals=evals,
            verbose_eval=False,
            callbacks=[*config.callbacks, carried],
            xgb_model=config.xgb_model,
            coll_cfg=None if config.collective_timeout is None else Config(timeout=config.collective_timeout),
        )
    except xgb.core.XGBoostError as exc:
        raise training_error(exc) from exc
    return finish_training(config, out["booster"], out["history"], before, has_valid=dvalid is not None)


def finish_training(config: TrainConfig, booster: Any, history: dict, before: Any, *, has_valid: bool):
    """``(booster, metrics)`` of a finished training call: the booster cut at its best iteration
    (early stopping), the metrics there and the whole history, after that of ``before`` (the
    :class:`dpipe.resume.Progress` an interrupted attempt left)."""
    from dpipe.resume import merged

    history = merged(before.history, history)
    rounds = booster.num_boosted_rounds()
    stopped = config.early_stopping_rounds and has_valid and "best_iteration" in booster.attributes()
    best = int(booster.attr("best_iteration")) if stopped else rounds - 1
    if best + 1 < rounds:
        booster = booster[: best + 1]
    # Continuing `xgb_model`, the booster's rounds count from its first tree but the history only
    # covers the rounds trained here (this call's, after those of the attempts it goes on from).
    start = rounds - max((len(v) for h in history.values() for v in h.values()), default=rounds)

    def at_best(values: list) -> float | None:
        return _finite(values[best - start]) if 0 <= best - start < len(values) else None

    metrics = {
        "best_iteration": int(best),
        "num_boosted_rounds": int(best + 1),
        "rounds_trained": int(rounds),
        "train": {m: at_best(v) for m, v in history.get("train", {}).items()},
        "valid": {m: at_best(v) for m, v in history.get("valid", {}).items()},
        "history": {s: {m: [_finite(x) for x in v] for m, v in h.items()} for s, h in history.items()},
    }
    return booster, metrics


def training_error(exc: Exception) -> TrainingError:
    """XGBoost's error as one :class:`TrainingError` line with a hint."""
    return TrainingError(
        f"train: XGBoost failed: {_xgboost_message(exc)}",
        hint="check `train.params` against the XGBoost parameter reference",
    )


def _xgboost_message(exc: Exception) -> str:
    """The first line of an XGBoost error, without its ``[12:00:00] src/file.cc:27:`` prefix;
    the lines after it are a C++ stack trace or parameter documentation."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    # XGBoost 2 writes ``[12:00:00] src/file.cc:27: ``, XGBoost 3 ``[file.cu:385|12:00:00]: ``.
    prefix = re.compile(r"^(?:-\s*)?(?:\[[\d:]+\] \S+:\d+:|\[[^\]]*\|[\d:]+\]:)\s*")
    texts = [prefix.sub("", line).strip() for line in lines]
    # A failed collective (a peer gone) can come with its location and nothing else.
    return next((t for t in texts if t), f"no message, at {lines[0].strip()}")[:500]


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# -- prediction -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Predict:
    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-predict"

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
    import dask

    return df.map_partitions(fn, dask.delayed(booster, pure=True), meta=meta, align_dataframes=False)
