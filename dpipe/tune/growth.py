"""One trial's booster, grown segment by segment on the resident matrices.

A trial is pruned on the client, between segments: the training loop runs on the workers and
cannot reach the study. The booster stays on the workers from one segment to the next
(:class:`~dpipe.tune.resident.Resident`), and early stopping spans the segments: each segment
starts from the best iteration and score of the earlier ones, so a trial stops where one
uninterrupted training with XGBoost's own early stopping would.
"""

from __future__ import annotations

import math
import time
from typing import Any

from dpipe import train as _train
from dpipe.spec.tune import direction_of
from dpipe.tune.resident import Resident, Stopping


class Growth:
    """One trial's booster (``key`` on the workers), its merged history and best iteration.

    Early stopping is the run's: ``early_stopping_rounds`` on the last metric of the validation
    rows, decided as XGBoost's callback decides it.
    """

    def __init__(self, resident: Resident, key: str, config: _train.TrainConfig):
        self.resident, self.key, self.config = resident, key, config
        names = list(config.params.get("eval_metric", []))
        self.patience = config.early_stopping_rounds
        self.watched = names[-1] if names else None
        self.maximize = self.watched is not None and direction_of(self.watched) == "maximize"
        self.history: dict[str, dict[str, list[float]]] = {}
        self.rounds = 0
        self.best = -1  # the best iteration so far, -1 before the first round
        self.best_score: float | None = None
        self.boost_seconds = 0.0

    @property
    def stopped(self) -> bool:
        """Early stopping ended the trial (no round improved for ``early_stopping_rounds``)."""
        return self.patience is not None and self.rounds > 0 and self.rounds - 1 - self.best >= self.patience

    def grow(self, until: int) -> None:
        """Train up to ``until`` rounds in all (fewer when early stopping stops it)."""
        if until <= self.rounds or self.stopped:
            return
        stopping = None
        if self.patience and self.watched is not None:
            stopping = Stopping(self.patience, self.watched, self.maximize, self.best, self.best_score)
        t0 = time.perf_counter()
        out = self.resident.grow(
            self.key, self.config.params, until, eval_train=self.config.eval_train, stopping=stopping
        )
        self.boost_seconds += time.perf_counter() - t0
        for side, by_metric in out["history"].items():
            for name, values in by_metric.items():
                self.history.setdefault(side, {}).setdefault(name, []).extend(values)
        self.rounds = int(out["rounds"])
        if stopping is not None:
            self.best, self.best_score = int(out["best"]), out["best_score"]
        else:
            self.best = self.rounds - 1

    def at_best(self, side: str, name: str) -> float | None:
        values = self.history.get(side, {}).get(name, [])
        return _finite(values[self.best]) if 0 <= self.best < len(values) else None

    def metrics(self) -> dict[str, Any]:
        """The metrics :func:`dpipe.train.boost` gives: at the best iteration, and the history."""
        return {
            "best_iteration": int(self.best),
            "num_boosted_rounds": int(self.best + 1),
            "rounds_trained": int(self.rounds),
            "train": {m: self.at_best("train", m) for m in self.history.get("train", {})},
            "valid": {m: self.at_best("valid", m) for m in self.history.get("valid", {})},
            "history": {s: {m: [_finite(x) for x in v] for m, v in h.items()} for s, h in self.history.items()},
        }

    def booster(self) -> Any:
        """The booster from the workers, cut at its best iteration."""
        booster = self.resident.booster(self.key)
        return booster[: self.best + 1] if self.best + 1 < self.rounds else booster

    def drop(self) -> None:
        self.resident.drop(self.key)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
