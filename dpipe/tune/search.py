"""The search: trials on one pair of quantile matrices, the best one kept, and its result."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dpipe import stages
from dpipe import train as _train
from dpipe.columns import LABEL
from dpipe.errors import SpecError, TrainingError
from dpipe.resume import Resilience, gone_workers, one_line, wait_for_workers
from dpipe.spec.base import redact_url
from dpipe.spec.tune import ALIASES, Dimension, TuneSpec, default_storage
from dpipe.tune.growth import Growth
from dpipe.tune.resident import Resident, better
from dpipe.tune.study import STATES, default_study, import_optuna, open_study, storage_url, trials_table

Log = Callable[[str], None]


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


def tune_job(
    client: Any,
    placed: stages.Placed,
    base: _train.TrainConfig,
    job: Any,
    *,
    log: Log = _quiet,
    resilience: Resilience | None = None,
) -> TuneResult:
    """:func:`tune` with the study and storage a job's ``tune:`` section names (or their defaults)."""
    spec: TuneSpec = job.tune
    storage = spec.storage or default_storage(job.name, job.output.uri)
    study_name = spec.study or default_study(job)
    return tune(client, placed, base, spec, study_name=study_name, storage=storage, log=log, resilience=resilience)


class WorkersLost(Exception):
    """Workers holding the matrices left during a trial: raised past Optuna's ``catch`` (the trial
    is recorded as failed, marked ``lost_worker``, and runs again after the restart)."""

    def __init__(self, gone: list[str], error: str, params: Mapping[str, Any] | None):
        super().__init__(f"lost worker(s) {gone}: {error}")
        self.gone, self.error, self.params = gone, error, params


def _finished(study: Any) -> int:
    """Trials that count towards ``n_trials``: finished, and not cut short by a lost worker."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if STATES[t.state.name] in ("complete", "pruned", "failed") and "lost_worker" not in t.user_attrs
    )


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
    resilience: Resilience | None = None,
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
    resilience
        When a worker holding the matrices is lost (``max_restarts`` times at most): wait for the
        workers (``wait``), place the lost rows again, build the matrices again and run the
        interrupted trial again (from its first round: its booster was on the workers). The
        finished trials stand. ``None``: a lost worker fails the tuning.

    Examples
    --------
    >>> placed = stages.place(client, p, fitted, gate, pre)
    >>> result = tune(client, placed, TrainConfig.from_spec(job.train), job.tune,
    ...               study_name="churn", storage="runs/churn.tune.db")
    >>> result.best_params, result.trained.metrics["valid"]
    """
    optuna = import_optuna()
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
    if base.callbacks:
        raise SpecError(
            "tune: trials run XGBoost's training loop on matrices kept on the workers; callbacks are not supported",
            hint="train without `callbacks` (early stopping is `train.early_stopping_rounds`)",
        )
    metrics = list(base.params.get("eval_metric", []))
    try:
        metric = spec.metric_for(metrics)
    except ValueError as exc:
        raise SpecError(f"tune.metric: {exc}", hint="name one of `train.eval_metric` (or leave it out)") from exc
    direction = spec.direction_for(metric)
    url = storage_url(storage)
    study = open_study(optuna, spec, study_name, url, direction)
    done = _finished(study)
    log(f"tune: study {study_name!r} in {redact_url(url)}: {done} trial(s) done, {max(spec.n_trials - done, 0)} to run")

    matrices_s = trials_s = 0.0
    restarts: list[dict[str, Any]] = []
    trials: _Trials | None = None  # kept across restarts, with the best model of this session
    while True:
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        attempt_started = time.perf_counter()
        try:
            t0 = time.perf_counter()
            resident = _resident(client, placed, base)  # the one sketch of the placed rows
            matrices_s += time.perf_counter() - t0
            try:
                if trials is None:
                    trials = _Trials(resident, base, spec, metric, log)
                trials.resident = resident
                t0 = time.perf_counter()
                remaining = spec.n_trials - _finished(study)
                left = None if spec.timeout is None else spec.timeout - trials_s
                if remaining > 0 and (left is None or left > 0):
                    study.optimize(
                        trials.objective,
                        n_trials=remaining,
                        timeout=left,
                        n_jobs=spec.parallel,
                        catch=(TrainingError,),
                        gc_after_trial=False,
                    )
                trials_s += time.perf_counter() - t0
                best, kept = _best(study, trials, study_name, log)
            finally:
                resident.close()
            break
        except Exception as exc:  # noqa: BLE001 - judged by whether a worker is gone
            failed = time.perf_counter()
            lost = exc if isinstance(exc, WorkersLost) else None
            gone = lost.gone if lost is not None else gone_workers(client, workers, exc)
            if resilience is None or not gone:
                raise
            error = lost.error if lost is not None else one_line(exc)
        resilience.may_restart(
            len(restarts),
            gone,
            error,
            "tune: lost worker(s) {gone} during the tuning",
            "; the finished trials are kept in the study",
        )
        now = wait_for_workers(client, len(workers), resilience.wait)
        placed = placed.again(client)
        if lost is not None and lost.params is not None:
            study.enqueue_trial(dict(lost.params), skip_if_exists=False)
        record = {
            "model": "tune",
            "restart": len(restarts) + 1,
            "lost_workers": gone,
            "error": error,
            "failed_after_s": round(failed - attempt_started, 3),
            "trials_done": _finished(study),
            "workers": len(now),
            "recovery_s": round(time.perf_counter() - failed, 3),
        }
        restarts.append(record)
        resilience.log(
            f"tune: lost {len(gone)} worker(s) ({', '.join(gone)}): {error}; restart {record['restart']} of at most"
            f" {resilience.max_restarts} on {len(now)} worker(s): the matrices are built again,"
            f" {record['trials_done']} trial(s) stand"
            + (", the interrupted trial runs again" if lost is not None and lost.params is not None else "")
        )
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
        trials=trials_table(study),
        trained=stages.Trained(booster, trained_metrics, restarts=tuple(restarts), placed=placed if restarts else None),
        timings={"matrices": matrices_s, "trials": trials_s, "total": time.perf_counter() - started},
        retrained=trials.best_kept(best.number) is None,
    )


def _resident(client: Any, placed: stages.Placed, base: _train.TrainConfig) -> Resident:
    """The placed rows' quantile matrices, built once on the workers that hold them."""
    assert placed.valid is not None
    f = placed.features
    matrices = _train.quantile_matrices(
        client,
        placed.train[f],
        placed.train[LABEL],
        placed.valid[f],
        placed.valid[LABEL],
        max_bin=int(base.params.get("max_bin", 256)),
    )
    return Resident.build(client, matrices, timeout=base.collective_timeout)


def _best(study: Any, trials: _Trials, study_name: str, log: Log) -> tuple[Any, tuple[Any, dict, dict]]:
    """The study's best trial and its (booster, metrics, params), trained again when it ran in an
    earlier session."""
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
    if kept is None:
        log(f"tune: the best trial ({best.number}) ran in an earlier session; training its model again")
        kept = trials.train(best.params)
    return best, kept


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

    def __init__(self, resident: Resident, base: _train.TrainConfig, spec: TuneSpec, metric: str, log: Log):
        self.resident, self.base, self.spec, self.metric, self.log = resident, base, spec, metric, log
        self.steps = spec.pruning.steps(base.num_boost_round)
        self.maximize = spec.direction_for(metric) == "maximize"
        self._lock = threading.Lock()
        self._best: tuple[int, float, Any] | None = None  # (trial number, value, (booster, metrics, params))

    def objective(self, trial: Any) -> float:
        import optuna

        started = time.perf_counter()
        params = with_params(self.base.params, suggest(trial, self.spec.space))
        growth = Growth(self.resident, f"trial-{trial.number}", self.base.replace(params=params))
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
            metrics = growth.metrics()
            value = _value(metrics["valid"].get(self.metric))
            self._keep(trial.number, value, growth, params)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            self._record(trial, growth, started)
            gone = gone_workers(self.resident.client, list(self.resident.workers), exc)
            if gone:
                # Not the trial's fault: it runs again once the matrices are built again.
                trial.set_user_attr("lost_worker", one_line(exc))
                raise WorkersLost(gone, one_line(exc), trial.params) from exc
            if not isinstance(exc, TrainingError):
                raise
            trial.set_user_attr("error", exc.message)
            self.log(f"tune: trial {trial.number} failed: {exc.message} {trial.params}")
            raise
        finally:
            if self.resident.live():
                growth.drop()
        self._record(trial, growth, started)
        self.log(f"tune: trial {trial.number}: {self.metric}={value:.6g} ({growth.rounds} rounds) {trial.params}")
        return value

    def train(self, searched: Mapping[str, Any]) -> tuple[Any, dict, dict]:
        """The model of given searched parameters, without pruning (an earlier session's best)."""
        params = with_params(self.base.params, searched)
        growth = Growth(self.resident, "retrain", self.base.replace(params=params))
        try:
            growth.grow(self.base.num_boost_round)
            return growth.booster(), growth.metrics(), params
        finally:
            growth.drop()

    def best_kept(self, number: int) -> tuple[Any, dict, dict] | None:
        return self._best[2] if self._best is not None and self._best[0] == number else None

    def _keep(self, number: int, value: float, growth: Growth, params: dict) -> None:
        """Keep a trial's model when it is the best of this session (fetched from the workers)."""
        with self._lock:
            if self._best is None or better(value, self._best[1], self.maximize):
                self._best = (number, value, (growth.booster(), growth.metrics(), params))

    @staticmethod
    def _record(trial: Any, growth: Growth, started: float) -> None:
        trial.set_user_attr("rounds", growth.rounds)
        trial.set_user_attr("best_iteration", growth.best)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        trial.set_user_attr("boost_seconds", growth.boost_seconds)


def _value(x: float | None) -> float:
    return float("nan") if x is None else float(x)
