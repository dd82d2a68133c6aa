"""The XGBoost callback of training that goes on after a lost worker (see :mod:`dpipe.resume`).

Apart from :mod:`dpipe.resume` because it subclasses XGBoost's ``TrainingCallback``: importing it
imports XGBoost, which ``import dpipe`` does not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import xgboost as xgb

from dpipe.resume import Checkpoints, Progress, merged

#: XGBoost's rule for which metrics improve upwards (``xgboost.callback.EarlyStopping``).
_MAXIMIZE = ("auc", "aucpr", "pre", "pre@", "map", "ndcg", "auc@", "aucpr@", "map@", "ndcg@")


def maximize(metric: str) -> bool:
    """Whether ``metric`` improves upwards, as XGBoost's early stopping decides it."""
    return metric != "mape" and any(metric.startswith(m) for m in _MAXIMIZE)


def _rank() -> int:
    from xgboost import collective

    return collective.get_rank() if collective.is_distributed() else 0


class Resumable(xgb.callback.TrainingCallback):
    """An XGBoost callback: early stopping on the last validation metric that goes on from
    ``progress``, and a checkpoint every ``every`` rounds by rank 0 (see the module docstring).

    It stops exactly where ``xgboost.callback.EarlyStopping`` would (no ``min_delta``; the first
    round sets the best; a round must be strictly better) and sets the same booster attributes
    (``best_iteration``, ``best_score``).
    """

    def __init__(
        self,
        progress: Progress,
        *,
        early_stopping_rounds: int | None,
        checkpoints: Checkpoints | None,
        every: int | None,
    ):
        self.progress = progress
        self.early_stopping_rounds = early_stopping_rounds
        self.checkpoints = checkpoints
        self.every = every
        super().__init__()
        self._since = 0 if progress.best_iteration is None else progress.rounds - 1 - progress.best_iteration

    @classmethod
    def of(cls, config: Any, *, validated: bool) -> Resumable:
        """The callback of one training call of ``config`` (a :class:`dpipe.train.TrainConfig`):
        going on from its ``progress``, early stopping only when there are ``validated`` rows."""
        return cls(
            dataclasses.replace(config.progress or Progress()),
            early_stopping_rounds=config.early_stopping_rounds if validated else None,
            checkpoints=config.checkpoints,
            every=config.checkpoint_every,
        )

    def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
        rounds = model.num_boosted_rounds()
        stop = False
        valid = evals_log.get("valid")
        if self.early_stopping_rounds and valid:
            metric = list(valid)[-1]
            score = float(valid[metric][-1])
            p = self.progress
            best = p.best_score
            if best is None or (score > best if maximize(metric) else score < best):
                p.best_score, p.best_iteration, self._since = score, rounds - 1, 0
            else:
                self._since += 1
            model.set_attr(best_score=str(p.best_score), best_iteration=str(p.best_iteration))
            stop = self._since >= self.early_stopping_rounds
        if self.checkpoints is not None and self.every and (rounds % self.every == 0) and _rank() == 0:
            state = Progress(rounds, self.progress.best_iteration, self.progress.best_score, {})
            state.history = merged(self.progress.history, evals_log)
            self.checkpoints.save(model, state)
        return stop
