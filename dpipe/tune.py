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

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import xgboost as xgb

from dpipe import stages
from dpipe import train as _train
from dpipe.columns import LABEL
from dpipe.errors import DpipeError, SpecError, StorageError, TrainingError
from dpipe.spec.base import redact_url
from dpipe.spec.load import redacted
from dpipe.spec.tune import ALIASES, Dimension, TuneSpec, default_storage, direction_of, is_url

logger = logging.getLogger(__name__)
Log = Callable[[str], None]
#: The job sections a study's trials depend on (its rows and its training), for the study's name.
STUDY_SECTIONS = ("source", "id_columns", "checks", "quarantine", "features", "label", "split", "train")
#: Trial states as the trials table writes them.
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def _quiet(message: str) -> None:
    """A ``log`` that drops the message."""


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TuneResult:
    """What a tuning produced: the best trial, its trained model, and every trial of the study."""

    study: str
    #: The storage URL, its password redacted.
    storage: str
    metric: str
    direction: str
    best_trial: int
    best_value: float
    #: The searched parameters of the best trial.
    best_params: Mapping[str, Any]
    #: Every XGBoost parameter of the best model (``train.params`` with the best trial's).
    params: Mapping[str, Any]
    #: One dict per trial: number, params, value, state, rounds, best_iteration, seconds, boost_seconds.
    trials: list[dict[str, Any]]
    #: The best trial's booster and metrics, as :func:`dpipe.stages.train` returns them.
    trained: stages.Trained
    #: ``matrices`` (the one sketch), ``trials`` (this call's), ``total`` seconds.
    timings: Mapping[str, float] = field(default_factory=dict)
    #: The best trial ran in an earlier session, so its model was trained again with its parameters.
    retrained: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able record (``tuning.json`` in a bundle)."""
        return {
            "study": self.study,
            "storage": self.storage,
            "metric": self.metric,
            "direction": self.direction,
            "best": {"trial": self.best_trial, "value": self.best_value, "params": dict(self.best_params)},
            "params": {k: v for k, v in self.params.items()},
            "retrained": self.retrained,
            "timings": dict(self.timings),
            "trials": self.trials,
        }


# -- defaults from the job --------------------------------------------------------------------
def default_study(job: Any) -> str:
    """``<job name>-<digest>``: the digest covers what the trials depend on (rows, features, split,
    training, and the search itself), so rerunning the job resumes its study and changing any of
    them starts a new one. ``n_trials``, ``timeout`` and where things are kept are left out."""
    spec = redacted(job)
    data = {"job": {k: spec.get(k) for k in STUDY_SECTIONS}, "tune": job.tune.identity()}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return f"{job.name}-{digest[:12]}"


def storage_url(storage: str) -> str:
    """An SQLAlchemy URL: URLs unchanged, a path as an SQLite file (its folder created)."""
    if is_url(storage):
        return storage
    path = os.path.abspath(os.path.expanduser(storage))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as exc:
        raise StorageError(
            f"tune.storage: cannot create the folder of {storage!r}: {exc.strerror or exc}",
            hint="give `tune.storage` a writable path, or an SQLAlchemy URL",
        ) from exc
    return f"sqlite:///{path}"


def tune_job(
    client: Any, placed: stages.Placed, base: _train.TrainConfig, job: Any, *, log: Log = _quiet
) -> TuneResult:
    """:func:`tune` with the study and storage a job's ``tune:`` section names (or their defaults)."""
    spec: TuneSpec = job.tune
    storage = spec.storage or default_storage(job.name, job.output.uri)
    return tune(client, placed, base, spec, study_name=spec.study or default_study(job), storage=storage, log=log)


# -- tuning -----------------------------------------------------------------------------------
def tune(
    client: Any,
    placed: stages.Placed,
    base: _train.TrainConfig,
    spec: TuneSpec,
    *,
    study_name: str,
    storage: str,
    log: Log = _quiet,
) -> TuneResult:
    """Search ``spec.space`` over ``base.params`` on placed data; return the best trial and its model.

    Parameters
    ----------
    client
        The ``distributed.Client`` whose workers hold ``placed``.
    placed
        Training and validation rows in worker memory (:func:`dpipe.stages.place`); folds are not
        supported (``placed.valid`` must be set).
    base
        The job's training (:meth:`TrainConfig.from_spec`): a trial replaces the searched
        parameters and keeps the rest, with the same rounds and early stopping.
    spec
        The ``tune:`` section.
    study_name, storage
        The Optuna study, and where it is kept (an SQLite path or an SQLAlchemy URL). An existing
        study is resumed: its finished trials count towards ``spec.n_trials``.

    Examples
    --------
    >>> placed = stages.place(client, p, fitted, gate, pre)
    >>> result = tune(client, placed, TrainConfig.from_spec(job.train), job.tune,
    ...               study_name="churn", storage="runs/churn.tune.db")
    >>> result.best_params, result.trained.metrics["valid"]
    """
    optuna = _optuna()
    started = time.perf_counter()
    if placed.valid is None:
        raise SpecError(
            "tune: trials are compared on the validation rows, and this split has none (`split.folds`)",
            hint="tune with a validation side (`split.valid_fraction` or `valid_from`), then cross-validate the best",
        )
    if base.xgb_model is not None:
        raise SpecError(
            "tune: trials train new models; continuing a previous one (`incremental.retrain: continue`) cannot be tuned",
            hint="leave out `tune:` for continued runs",
        )
    metrics = list(base.params.get("eval_metric", []))
    try:
        metric = spec.metric_for(metrics)
    except ValueError as exc:
        raise SpecError(f"tune.metric: {exc}", hint="name one of `train.eval_metric` (or leave it out)") from exc
    direction = spec.direction_for(metric)
    url = storage_url(storage)
    study = _open_study(optuna, spec, study_name, url, direction)
    finished = [t for t in study.get_trials(deepcopy=False) if STATES[t.state.name] in ("complete", "pruned", "failed")]
    remaining = spec.n_trials - len(finished)
    log(f"tune: study {study_name!r} in {redact_url(url)}: {len(finished)} trial(s) done, {max(remaining, 0)} to run")

    t0 = time.perf_counter()
    f = placed.features
    matrices = _train.quantile_matrices(
        client,
        placed.train[f],
        placed.train[LABEL],
        placed.valid[f],
        placed.valid[LABEL],
        max_bin=int(base.params.get("max_bin", 256)),
    )
    matrices_s = time.perf_counter() - t0
    trials = _Trials(client, matrices, base, spec, metric, log)
    t0 = time.perf_counter()
    if remaining > 0:
        study.optimize(
            trials.objective,
            n_trials=remaining,
            timeout=spec.timeout,
            n_jobs=spec.parallel,
            catch=(TrainingError,),
            gc_after_trial=False,
        )
    trials_s = time.perf_counter() - t0
    table = trials_table(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        counts = {s: sum(1 for r in table if r["state"] == s) for s in ("pruned", "failed")}
        raise TrainingError(
            f"tune: no trial of study {study_name!r} completed ({counts['pruned']} pruned, {counts['failed']} failed)",
            hint="see the trials' errors in the log; widen the space, or lower `tune.pruning.startup_trials`",
        )
    best = study.best_trial
    kept = trials.best_kept(best.number)
    retrained = kept is None
    if kept is None:
        log(f"tune: the best trial ({best.number}) ran in an earlier session; training its model again")
        kept = trials.train(best.params)
    booster, trained_metrics, params = kept
    return TuneResult(
        study=study_name,
        storage=redact_url(url),
        metric=metric,
        direction=direction,
        best_trial=best.number,
        best_value=float(best.value),
        best_params=dict(best.params),
        params=params,
        trials=table,
        trained=stages.Trained(booster, trained_metrics),
        timings={"matrices": matrices_s, "trials": trials_s, "total": time.perf_counter() - started},
        retrained=retrained,
    )


def trials_table(study: Any) -> list[dict[str, Any]]:
    """The study's trials, in order: number, params, value, state, rounds, best_iteration, seconds,
    boost_seconds (and ``error`` for a failed one)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row = {
            "number": t.number,
            "params": dict(t.params),
            "value": None if t.value is None or not math.isfinite(t.value) else float(t.value),
            "state": STATES.get(t.state.name, t.state.name.lower()),
            "rounds": attrs.get("rounds"),
            "best_iteration": attrs.get("best_iteration"),
            "seconds": attrs.get("seconds"),
            "boost_seconds": attrs.get("boost_seconds"),
        }
        if "error" in attrs:
            row["error"] = attrs["error"]
        rows.append(row)
    return rows


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise DpipeError(
            "tune: hyperparameter tuning needs the `optuna` package, which is not installed",
            hint="pip install 'dpipe[tune]' (on the client; the workers need only XGBoost)",
        ) from exc
    # Optuna's messages go to the `optuna` logger like every library's, not to its own stderr handler.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    return optuna


def _open_study(optuna: Any, spec: TuneSpec, name: str, url: str, direction: str) -> Any:
    """Create or resume the study; trials a dead process left running are marked failed."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        storage = optuna.storages.RDBStorage(url)
        try:
            study_id: int | None = storage.get_study_id_from_name(name)
        except KeyError:
            study_id = None
        if study_id is not None:
            stale = [t for t in storage.get_all_trials(study_id, deepcopy=False) if t.state.name == "RUNNING"]
            for t in stale:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                storage.set_trial_user_attr(trial_id, "error", "interrupted: the tuning process stopped mid-trial")
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        done = len(storage.get_all_trials(study_id, deepcopy=False)) if study_id is not None else 0
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            load_if_exists=True,
            direction=direction,
            sampler=_sampler(optuna, spec, seed=spec.seed + done),
            pruner=_pruner(optuna, spec),
        )
    except (SQLAlchemyError, OSError, ImportError) as exc:
        # ImportError: the URL names a database whose driver is not installed (psycopg2, ...).
        raise StorageError(
            f"tune.storage: cannot open the study storage {redact_url(url)}: {redact_url(str(exc).splitlines()[0])}",
            hint="give `tune.storage` a writable SQLite path, or the URL of a reachable database with its driver installed",
        ) from exc
    stored = study.direction.name.lower()
    if stored != direction:
        raise SpecError(
            f"tune: study {name!r} in {redact_url(url)} was created to {stored} and this spec would {direction}",
            hint="give `tune.study` a new name (or leave it out: the default name follows the spec)",
        )
    return study


# A resumed study's sampler is seeded past the trials it already has, so it does not propose the
# first session's random starting points again.
SAMPLERS: dict[str, Callable[[Any, int], Any]] = {
    "tpe": lambda optuna, seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda optuna, seed: optuna.samplers.RandomSampler(seed=seed),
}
PRUNERS: dict[str, Callable[[Any, Any], Any]] = {
    "median": lambda optuna, p: optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials),
    "percentile": lambda optuna, p: optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.startup_trials),
}


def _sampler(optuna: Any, spec: TuneSpec, *, seed: int) -> Any:
    return SAMPLERS[spec.sampler](optuna, seed)


def _pruner(optuna: Any, spec: TuneSpec) -> Any:
    return PRUNERS[spec.pruning.pruner](optuna, spec.pruning) if spec.pruning.enabled else optuna.pruners.NopPruner()


# -- one trial --------------------------------------------------------------------------------
def suggest(trial: Any, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """One point of the space, as the trial samples it."""
    out: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.kind == "choice":
            assert dim.choices is not None
            out[name] = trial.suggest_categorical(name, dim.choices)
        elif dim.kind == "int":
            assert dim.low is not None and dim.high is not None
            out[name] = trial.suggest_int(name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            assert dim.low is not None and dim.high is not None
            out[name] = trial.suggest_float(name, float(dim.low), float(dim.high), step=dim.step, log=dim.log)
    return out


def with_params(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes``, dropping the other name of a changed parameter (``eta`` for
    ``learning_rate``) so XGBoost sees each parameter once."""
    other = {b: a for a, b in ALIASES} | {a: b for a, b in ALIASES}
    dropped = {other[k] for k in changes if k in other}
    return {**{k: v for k, v in base.items() if k not in dropped}, **changes}


class _Trials:
    """Runs trials on one pair of matrices and keeps the best model of this session."""

    def __init__(
        self, client: Any, matrices: _train.Matrices, base: _train.TrainConfig, spec: TuneSpec, metric: str, log: Log
    ):
        self.client, self.matrices, self.base, self.spec, self.metric, self.log = (
            client,
            matrices,
            base,
            spec,
            metric,
            log,
        )
        self.steps = spec.pruning.steps(base.num_boost_round)
        self.maximize = spec.direction_for(metric) == "maximize"
        self._lock = threading.Lock()
        self._best: tuple[int, float, Any] | None = None  # (trial number, value, (booster, metrics, params))

    def objective(self, trial: Any) -> float:
        import optuna

        started = time.perf_counter()
        params = with_params(self.base.params, suggest(trial, self.spec.space))
        growth = _Growth(self.client, self.matrices, self.base.replace(params=params))
        try:
            for step in self.steps:
                growth.grow(step)
                if growth.stopped:
                    break
                trial.report(_value(growth.at_best("valid", self.metric)), step)
                if trial.should_prune():
                    self._record(trial, growth, started)
                    self.log(f"tune: trial {trial.number} pruned at round {growth.rounds} {trial.params}")
                    raise optuna.TrialPruned()
            if not growth.stopped:
                growth.grow(self.base.num_boost_round)
        except TrainingError as exc:
            self._record(trial, growth, started)
            trial.set_user_attr("error", exc.message)
            self.log(f"tune: trial {trial.number} failed: {exc.message} {trial.params}")
            raise
        self._record(trial, growth, started)
        booster, metrics = growth.result()
        value = _value(metrics["valid"].get(self.metric))
        self.log(f"tune: trial {trial.number}: {self.metric}={value:.6g} ({growth.rounds} rounds) {trial.params}")
        self._keep(trial.number, value, (booster, metrics, params))
        return value

    def train(self, searched: Mapping[str, Any]) -> tuple[Any, dict, dict]:
        """The model of given searched parameters, without pruning (an earlier session's best)."""
        params = with_params(self.base.params, searched)
        growth = _Growth(self.client, self.matrices, self.base.replace(params=params))
        growth.grow(self.base.num_boost_round)
        booster, metrics = growth.result()
        return booster, metrics, params

    def best_kept(self, number: int) -> tuple[Any, dict, dict] | None:
        return self._best[2] if self._best is not None and self._best[0] == number else None

    def _keep(self, number: int, value: float, kept: tuple[Any, dict, dict]) -> None:
        with self._lock:
            if self._best is None or _better(value, self._best[1], self.maximize):
                self._best = (number, value, kept)

    @staticmethod
    def _record(trial: Any, growth: _Growth, started: float) -> None:
        trial.set_user_attr("rounds", growth.rounds)
        trial.set_user_attr("best_iteration", growth.best)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        trial.set_user_attr("boost_seconds", growth.boost_seconds)


def _value(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _better(new: float | None, old: float | None, maximize: bool) -> bool:
    """XGBoost's early-stopping comparison: strictly better; a missing score never is."""
    if new is None or math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return False
    return new > old if maximize else new < old


# -- growing one booster in segments ------------------------------------------------------------
class _Growth:
    """One trial's booster grown segment by segment on the same matrices, with its history merged
    and early stopping carried across segments (the run's ``early_stopping_rounds``, on the last
    metric of the validation rows, as XGBoost's own callback decides it)."""

    def __init__(self, client: Any, matrices: _train.Matrices, config: _train.TrainConfig):
        self.client, self.matrices, self.config = client, matrices, config
        names = list(config.params.get("eval_metric", []))
        self.stopping = config.early_stopping_rounds
        self.watched = names[-1] if names else None
        self.maximize = self.watched is not None and direction_of(self.watched) == "maximize"
        self.booster: Any = None
        self.history: dict[str, dict[str, list]] = {}
        self.rounds = 0
        self.best = -1  # the best iteration so far, -1 before the first round
        self.boost_seconds = 0.0

    @property
    def stale(self) -> int:
        return self.rounds - 1 - self.best

    @property
    def stopped(self) -> bool:
        return self.stopping is not None and self.rounds > 0 and self.stale >= self.stopping

    def grow(self, until: int) -> None:
        """Train up to ``until`` rounds in all (fewer when early stopping stops it)."""
        if until <= self.rounds or self.stopped:
            return
        callbacks = list(self.config.callbacks)
        if self.stopping and self.watched is not None:
            best = self.at_best("valid", self.watched) if self.best >= 0 else None
            callbacks.append(_Patience(self.stopping, self.watched, self.maximize, self.best, best, self.rounds))
        segment = self.config.replace(
            num_boost_round=until - self.rounds,
            early_stopping_rounds=None,
            callbacks=tuple(callbacks),
            xgb_model=self.booster,
        )
        t0 = time.perf_counter()
        self.booster, metrics = _train.boost(self.client, segment, self.matrices)
        self.boost_seconds += time.perf_counter() - t0
        added = self.booster.num_boosted_rounds() - self.rounds
        for side, by_metric in metrics["history"].items():
            for name, values in by_metric.items():
                self.history.setdefault(side, {}).setdefault(name, []).extend(values)
        self._update_best(self.rounds, added)
        self.rounds += added

    def _update_best(self, first: int, added: int) -> None:
        if not self.stopping or self.watched is None:
            self.best = first + added - 1
            return
        values = self.history["valid"][self.watched]
        for i in range(first, first + added):
            if self.best < 0 or _better(values[i], values[self.best], self.maximize):
                self.best = i

    def at_best(self, side: str, name: str) -> float | None:
        values = self.history.get(side, {}).get(name, [])
        return values[self.best] if 0 <= self.best < len(values) else None

    def result(self) -> tuple[Any, dict[str, Any]]:
        """The booster cut at its best iteration, and its metrics as :func:`dpipe.train.boost` gives them."""
        booster = self.booster[: self.best + 1] if self.best + 1 < self.rounds else self.booster
        metrics = {
            "best_iteration": int(self.best),
            "num_boosted_rounds": int(self.best + 1),
            "rounds_trained": int(self.rounds),
            "train": {m: self.at_best("train", m) for m in self.history.get("train", {})},
            "valid": {m: self.at_best("valid", m) for m in self.history.get("valid", {})},
            "history": self.history,
        }
        return booster, metrics


class _Patience(xgb.callback.TrainingCallback):
    """XGBoost's early stopping, resumed: starts from the best iteration and score of the earlier
    segments (runs on the workers; each gets a copy)."""

    def __init__(self, rounds: int, metric: str, maximize: bool, best: int, best_score: float | None, start: int):
        super().__init__()
        self.rounds, self.metric, self.maximize = rounds, metric, maximize
        self.best, self.best_score, self.iteration = best, best_score, start - 1

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.iteration += 1
        score = float(evals_log["valid"][self.metric][-1])
        if self.best < 0 or _better(score, self.best_score, self.maximize):
            self.best, self.best_score = self.iteration, score
        return self.iteration - self.best >= self.rounds
