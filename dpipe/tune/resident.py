"""Quantile matrices and boosters that stay in worker memory from one training to the next.

``xgboost.dask.DaskQuantileDMatrix`` is a handle on placed partitions: every
``xgboost.dask.train`` call builds the worker-local ``QuantileDMatrix`` again (the sketch and the
binning, in ``_get_dmatrices`` inside each call), and a call continuing ``xgb_model`` also
predicts every earlier tree to fill the new booster's prediction cache. At 1M rows on two
workers that is ~9 s of a 65 s, 100-round training, and ~20 s to add one round to a 100-round
model. Tuning trains dozens of times on the same rows, and a pruned trial in segments, so here:

* :meth:`Resident.build` builds each worker's ``QuantileDMatrix`` pair ONCE, inside one
  collective (the sketch is global), and keeps it in the worker process;
* :meth:`Resident.grow` runs XGBoost's training loop (``Booster.update`` + ``eval_set``, what
  ``xgboost.train`` does) on those matrices, one task per worker in a fresh collective, and keeps
  each trial's booster on the workers between segments, so continuing costs nothing extra;
* early stopping runs in the same loop, from the best score of the earlier segments (XGBoost's
  rule: strictly better, patience of ``rounds``), so every worker stops at the same round.

The handles (the ``DaskQuantileDMatrix`` pair of :func:`dpipe.train.quantile_matrices`) say which
worker holds which partition; nothing moves between workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dpipe.errors import TrainingError

#: On each worker: token -> {"train", "valid" (QuantileDMatrix), "nthread", "boosters": {key: Booster}}.
_STORE: dict[str, dict[str, Any]] = {}


def better(new: float | None, old: float | None, maximize: bool) -> bool:
    """XGBoost's early-stopping comparison: strictly better; a missing (NaN) score never is."""
    if new is None or new != new:
        return False
    if old is None or old != old:
        return False
    return new > old if maximize else new < old


@dataclass(frozen=True)
class Stopping:
    """Early stopping carried into a segment: patience, the watched validation metric, and the
    best iteration (``-1``: none yet) and score so far."""

    rounds: int
    metric: str
    maximize: bool
    best: int = -1
    best_score: float | None = None


@dataclass(frozen=True)
class Resident:
    """A pair of quantile matrices built once on the workers that hold the placed rows."""

    client: Any
    token: str
    workers: tuple[str, ...]
    max_bin: int
    #: Seconds a collective may wait for a peer (``train.collective_timeout``; ``None``: for ever).
    timeout: int | None = None

    @classmethod
    def build(cls, client: Any, matrices: Any, *, timeout: int | None = None) -> Resident:
        """Materialise ``matrices`` (:class:`dpipe.train.Matrices` with a validation side) on
        their workers: one collective that sketches every partition once. ``timeout``: the
        seconds a collective waits for a peer, for starting the group and for each operation (a
        peer lost before it joined is otherwise waited for without end)."""
        from xgboost import dask as xgb_dask

        from dpipe.xgboost_logs import route_xgboost_logs

        dtrain, dvalid = matrices.train, matrices.valid
        workers = tuple(sorted(xgb_dask._get_workers_from_data(dtrain, [(dvalid, "valid")])))
        resident = cls(client, uuid.uuid4().hex, workers, matrices.max_bin, timeout)
        with client.as_current():
            route_xgboost_logs(client)
        resident._collective(
            _build,
            lambda addr: (resident.token, dtrain._create_fn_args(addr), dvalid._create_fn_args(addr), id(dtrain)),
        )
        return resident

    def grow(
        self,
        key: str,
        params: Mapping[str, Any],
        until: int,
        *,
        eval_train: bool,
        stopping: Stopping | None,
    ) -> dict[str, Any]:
        """Grow trial ``key``'s booster (a new one at first) to ``until`` rounds in all, or fewer
        when early stopping stops it; returns this segment's ``history`` (``{side: {metric:
        [values]}}``), the ``rounds`` in all, and the ``best`` iteration and ``best_score`` so far."""
        return self._collective(_grow, lambda addr: (self.token, key, dict(params), until, eval_train, stopping))

    def booster(self, key: str) -> Any:
        """Trial ``key``'s booster, from one worker (they all hold the same model)."""
        import xgboost as xgb

        raw = self.client.submit(_raw, self.token, key, workers=[self.workers[0]], pure=False).result()
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        return booster

    def drop(self, key: str) -> None:
        """Free trial ``key``'s booster on the workers (those still there)."""
        self.client.run(_drop, self.token, key, workers=self.live())

    def close(self) -> None:
        """Free the matrices and every booster on the workers (those still there)."""
        self.client.run(_release, self.token, workers=self.live())

    def live(self) -> list[str]:
        """The workers holding the matrices that are still in the cluster."""
        there = self.client.scheduler_info(n_workers=-1)["workers"]
        return [w for w in self.workers if w in there]

    def _collective(self, func: Any, args_for: Any) -> Any:
        """``func(collective_args, *args_for(worker))`` on every worker at once; the first
        non-``None`` result (rank order does not matter: the results agree)."""
        import distributed
        from xgboost import dask as xgb_dask

        client = self.client
        live = self.live()
        gone = sorted(set(self.workers) - set(live))
        if gone:
            # A task bound to a worker that left would wait for it forever.
            raise TrainingError(
                f"tune: worker(s) {gone} holding the tuning's matrices left the cluster (of {list(self.workers)},"
                f" {live} are there)",
                hint="the tuning builds its matrices again on the workers there are (`train.max_restarts`)",
            )
        # Two trainings on one worker would each wait for the other's ranks: one at a time.
        with distributed.MultiLock(list(self.workers), client=client):
            from xgboost.collective import Config

            timeout = self.timeout
            config = None if timeout is None else Config(timeout=timeout, tracker_timeout=timeout)
            coll = client.sync(xgb_dask._get_rabit_args, client, len(self.workers), coll_cfg=config)
            futures = [
                client.submit(func, addr, coll, *args_for(addr), workers=[addr], allow_other_workers=False, pure=False)
                for addr in self.workers
            ]
            try:
                results = client.gather(futures)
            except Exception as exc:
                import xgboost as xgb

                # A lost worker's task would wait for it forever (it may run nowhere else).
                client.cancel(futures)

                if isinstance(exc, xgb.core.XGBoostError):
                    from dpipe.train import training_error

                    raise training_error(exc) from exc
                raise
        return next((r for r in results if r is not None), None)


# -- on the workers ---------------------------------------------------------------------------
def _threads() -> int:
    import distributed

    return int(distributed.get_worker().state.nthreads)


def _check_address(addr: str) -> None:
    import distributed

    if distributed.get_worker().address != addr:
        raise TrainingError(
            f"tune: a training task for worker {addr} ran on {distributed.get_worker().address}",
            hint="a worker died and was replaced: its matrices are gone; run the tuning again",
        )


def _store(token: str) -> dict[str, Any]:
    store = _STORE.get(token)
    if store is None:
        raise TrainingError(
            "tune: a worker no longer holds the tuning's matrices (it restarted)",
            hint="run the tuning again; finished trials are kept in the study",
        )
    return store


def _build(addr: str, coll: dict, token: str, train_ref: dict, valid_ref: dict, train_id: int) -> None:
    import xgboost as xgb
    from xgboost.collective import CommunicatorContext
    from xgboost.dask.data import _get_dmatrices

    _check_address(addr)
    n = _threads()
    # The validation matrix takes the training one's bins (`ref`), as in xgboost.dask.train.
    with CommunicatorContext(**coll), xgb.config_context(nthread=n):
        dtrain, evals = _get_dmatrices(
            train_ref, train_id, valid_ref, evals_id=[-1], evals_name=["valid"], n_threads=n, model=None
        )
    _STORE[token] = {"train": dtrain, "valid": evals[0][0], "nthread": n, "boosters": {}}


def _grow(
    addr: str,
    coll: dict,
    token: str,
    key: str,
    params: dict,
    until: int,
    eval_train: bool,
    stopping: Stopping | None,
) -> dict[str, Any] | None:
    """XGBoost's training loop (``xgboost.train``: update, then evaluate) on the kept matrices."""
    import xgboost as xgb
    from xgboost.collective import CommunicatorContext

    _check_address(addr)
    store = _store(token)
    n = store["nthread"]
    dtrain, dvalid = store["train"], store["valid"]
    evals = [(dtrain, "train")] if eval_train else []
    evals.append((dvalid, "valid"))
    history: dict[str, dict[str, list[float]]] = {}
    best, best_score = (stopping.best, stopping.best_score) if stopping is not None else (-1, None)
    with CommunicatorContext(**coll), xgb.config_context(nthread=n):
        booster = store["boosters"].get(key)
        if booster is None:
            booster = xgb.Booster({**params, "nthread": n}, [dtrain, dvalid])
            store["boosters"][key] = booster
        for i in range(booster.num_boosted_rounds(), until):
            booster.update(dtrain, iteration=i)
            for side, name, value in _parse(booster.eval_set(evals, i)):
                history.setdefault(side, {}).setdefault(name, []).append(value)
            if stopping is not None:
                score = history["valid"][stopping.metric][-1]
                if best < 0 or better(score, best_score, stopping.maximize):
                    best, best_score = i, score
                if i - best >= stopping.rounds:
                    break
        rounds = booster.num_boosted_rounds()
    return {"history": history, "rounds": rounds, "best": best, "best_score": best_score}


def _parse(line: str) -> list[tuple[str, str, float]]:
    """``[3]\\ttrain-logloss:0.51\\tvalid-auc:0.80`` -> ``[("train", "logloss", 0.51), ...]``."""
    out = []
    for item in line.split("\t")[1:]:
        label, _, value = item.rpartition(":")
        side, _, name = label.partition("-")
        out.append((side, name, float(value)))
    return out


def _raw(token: str, key: str) -> bytes:
    return bytes(_store(token)["boosters"][key].save_raw(raw_format="ubj"))


def _drop(token: str, key: str) -> None:
    store = _STORE.get(token)
    if store is not None:
        store["boosters"].pop(key, None)


def _release(token: str) -> None:
    _STORE.pop(token, None)
