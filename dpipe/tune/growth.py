"""One trial's booster, grown segment by segment on the same matrices.

A trial is pruned on the client, between segments: ``xgboost.dask`` callbacks run on the workers
and cannot reach the study. Early stopping spans the segments: :class:`Patience` (XGBoost's rule,
run on the workers) starts each segment from the best score so far and the rounds since it, so a
trial stops where one uninterrupted training with XGBoost's own early stopping would.
"""

from __future__ import annotations

import math
import time
from typing import Any

import xgboost as xgb

from dpipe import train as _train
from dpipe.spec.tune import direction_of


def better(new: float | None, old: float | None, maximize: bool) -> bool:
    """XGBoost's early-stopping comparison: strictly better; a missing score never is."""
    if new is None or math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return False
    return new > old if maximize else new < old


class Growth:
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
            callbacks.append(Patience(self.stopping, self.watched, self.maximize, self.best, best, self.rounds))
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
            if self.best < 0 or better(values[i], values[self.best], self.maximize):
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


class Patience(xgb.callback.TrainingCallback):
    """XGBoost's early stopping, resumed: starts from the best iteration and score of the earlier
    segments (runs on the workers; each gets a copy)."""

    def __init__(self, rounds: int, metric: str, maximize: bool, best: int, best_score: float | None, start: int):
        super().__init__()
        self.rounds, self.metric, self.maximize = rounds, metric, maximize
        self.best, self.best_score, self.iteration = best, best_score, start - 1

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.iteration += 1
        score = float(evals_log["valid"][self.metric][-1])
        if self.best < 0 or better(score, self.best_score, self.maximize):
            self.best, self.best_score = self.iteration, score
        return self.iteration - self.best >= self.rounds
