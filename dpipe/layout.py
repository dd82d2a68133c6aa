"""Which workers XGBoost trains on (``train.layout``): every worker holding rows, or one worker
with every thread of its host.

``xgboost.dask`` trains one process per worker that holds rows, each with that worker's threads,
and all-reduces the histograms of every tree level between them (``all``, the default). With
``one`` the training and validation rows are copied onto the worker that holds most of them,
which trains alone with the threads of every worker on its host; the other workers keep their
rows for the stages after training.

Measured on one 2-core machine, 2 workers of one thread against one worker training with both
threads, the same cluster and rows: with the benchmarks' full workload (no missing values left,
35 features, 100 rounds of depth 8, AUC on the validation rows every round) ``one`` trained in
0.96x the time at 2M rows (medians of 3) but 1.10x at 10M (one run each); on raw rows with
missing values, 0.8x at 2M. Not a consistent win, so it is not the default.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Layout:
    """Where training runs: ``one`` worker (the live one holding most of the rows, chosen when
    training starts, again after a lost worker) with ``threads`` threads, or every worker
    holding rows; and why (for the log and the manifest)."""

    one: bool
    reason: str
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"workers": "one" if self.one else "all", "threads": self.threads, "reason": self.reason}


def decide(how: str, workers: dict[str, dict[str, Any]]) -> Layout:
    """``train.layout`` (``all`` or ``one``) on ``workers`` (``scheduler_info()["workers"]``)."""
    if how == "all":
        return Layout(False, "every worker holding rows (train.layout: all)")
    if len(workers) < 2:
        return Layout(False, "one worker: it holds every row")
    threads = _threads(workers)
    return Layout(True, f"one worker with its host's {threads} threads (train.layout: one)", threads)


def _threads(workers: dict[str, dict[str, Any]]) -> int:
    """The threads of every worker on the host with the most of them (what one training process
    there uses)."""
    per_host: dict[Any, int] = {}
    for w in workers.values():
        per_host[w.get("host")] = per_host.get(w.get("host"), 0) + int(w.get("nthreads") or 1)
    return max(per_host.values())


def target(workers: list[str], where: list[str], sizes: list[int] | None) -> str:
    """The live worker (of ``workers``) holding the most rows, by piece holders ``where`` and
    their ``sizes`` (rows): the one that receives the fewest."""
    held = {w: 0 for w in workers}
    for i, w in enumerate(where):
        if w in held:
            held[w] += sizes[i] if sizes else 1
    return max(workers, key=lambda w: (held[w], -workers.index(w)))


class OneWorker:
    """Training frames copied onto one worker (:func:`dpipe.placement.onto`), and a training call
    that fails when that worker is lost.

    ``frames(placed)`` picks the live worker holding the most placed rows (again on every attempt)
    and copies the frames that ``frames_of`` cuts onto it; ``fit`` trains on them
    (:func:`dpipe.train.train_booster`). Dask would move XGBoost's training task to another worker
    after a loss, where it would wait forever for rows pinned to the lost one: ``fit`` watches the
    worker and, once it is gone, cancels what the training call waits for (:func:`_leaves`), so
    the call fails and the caller's restart (:func:`dpipe.resume.train_surviving`) takes over.
    """

    #: Seconds between two looks at the training worker.
    POLL_S = 0.5

    def __init__(self, client: Any, frames_of: Callable[[Any], tuple[Any, ...]]):
        self.client, self.frames_of = client, frames_of
        self.worker: str | None = None
        self.futures: list[Any] = []

    def frames(self, placed: Any) -> tuple[Any, ...]:
        from dpipe.placement import live_workers, onto

        rows = placed.rows
        assert rows is not None
        self.worker = target(live_workers(self.client), rows.where, rows.sizes)
        frames = self.frames_of(placed)
        copied, self.futures = onto(self.client, [f for f in frames if f is not None], self.worker)
        it = iter(copied)
        return tuple(None if f is None else next(it) for f in frames)

    def fit(self, client: Any, config: Any, *frames: Any) -> tuple[Any, dict[str, Any]]:
        from dpipe.errors import TrainingError
        from dpipe.train import train_booster

        done, lost = threading.Event(), threading.Event()
        watch = threading.Thread(target=self._watch, args=(done, lost), daemon=True, name="dpipe-training-worker")
        watch.start()
        try:
            return train_booster(client, config, *frames)
        except Exception as exc:
            if lost.is_set():
                raise TrainingError(f"train: lost the training worker {self.worker}") from exc
            raise
        finally:
            done.set()
            watch.join()
            self.futures = []

    def _watch(self, done: threading.Event, lost: threading.Event) -> None:
        """Until ``done``: once the training worker is gone, set ``lost`` and cancel the leaves of
        the copied rows' graph (again at each look: XGBoost may still be adding to it)."""
        from distributed import Future

        from dpipe.placement import live_workers

        while not done.wait(self.POLL_S):
            try:
                if not lost.is_set() and self.worker in live_workers(self.client):
                    continue
                lost.set()
                keys = [f.key for f in self.futures]
                leaves = self.client.run_on_scheduler(_leaves, keys, self.client.id)
                if leaves:
                    self.client.cancel([Future(k, self.client) for k in leaves])
            except Exception:  # noqa: BLE001 - the scheduler itself is gone: the training call fails anyway
                return


def _leaves(keys: list[Any], client: str, dask_scheduler: Any = None) -> list[Any]:
    """(On the scheduler.) The tasks downstream of ``keys`` that no task depends on and that
    ``client`` wants: XGBoost's result, or the partitions it is still gathering.

    Cancelling these, not ``keys``, is what stops the training call: the scheduler cancels a key's
    dependents with it and fails an assertion on one that no client wants (an intermediate
    reduction task of XGBoost's), which drops the client's connection and with it every future."""
    assert dask_scheduler is not None
    tasks = dask_scheduler.tasks
    seen: set[Any] = set()
    stack = [tasks[k] for k in keys if k in tasks]
    leaves = []
    while stack:
        ts = stack.pop()
        if ts.key in seen:
            continue
        seen.add(ts.key)
        if ts.dependents:
            stack.extend(ts.dependents)
        elif any(cs.client_key == client for cs in ts.who_wants or ()):
            leaves.append(ts.key)
    return leaves
