"""Which workers XGBoost trains on (``train.layout``): every worker holding rows, or one worker
with every thread of the machine.

``xgboost.dask`` trains one process per worker that holds rows, each with that worker's threads,
and all-reduces the histograms of every tree level between them. On one machine that costs more
than it gives: measured on 2 cores and 2M rows (35 features, 100 rounds of depth 8, AUC on the
validation rows every round), two workers of one thread took 41-48 s where one worker training
with both threads took 36-38 s and a single process 34 s, and two workers of two threads each
(oversubscribed) 55-60 s. So when every worker runs on one host, ``auto`` copies the training
rows onto the worker that holds most of them and trains there with the threads of all the
host's workers; the other workers keep their rows for the stages after training. Across hosts
the work of each host's cores is needed: every worker trains.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dpipe.external.where import MATRIX_OVERHEAD, SHARE
from dpipe.keep import WORKER_BASELINE, size_text


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


def decide(how: str, workers: dict[str, dict[str, Any]], *, rows: int, width: int, device: str = "cpu") -> Layout:
    """``train.layout`` (``auto``, ``one``, ``all``) for ``rows`` transformed rows of ``width``
    bytes on ``workers`` (the scheduler's ``scheduler_info()["workers"]``).

    ``one`` gathers the rows whatever their size; ``auto`` only when every worker is on one
    host, training is on the CPU, and the rows with XGBoost's matrix fit in :data:`SHARE` of one
    worker's memory limit past what it holds idle.
    """
    if how == "all":
        return Layout(False, "every worker holding rows (train.layout is all)")
    if len(workers) < 2:
        return Layout(False, "one worker: it holds every row")
    hosts = {w.get("host") for w in workers.values()}
    if how == "one":
        return Layout(True, "one worker with its host's threads (train.layout is one)", _threads(workers))
    if device != "cpu":
        return Layout(False, f"every worker holding rows (train.device {device}: each worker's GPU)")
    if len(hosts) > 1:
        return Layout(False, f"every worker holding rows: the {len(workers)} workers run on {len(hosts)} hosts")
    need = int(rows * width * MATRIX_OVERHEAD)
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    if all(limits):
        budget = SHARE * max(min(limits) - WORKER_BASELINE, 0)
        if need > budget:
            return Layout(
                False,
                f"every worker holding rows: one worker would hold about {size_text(need)}, more than"
                f" {SHARE:.0%} of its {size_text(min(limits))} limit past what it holds idle",
            )
    threads = _threads(workers)
    return Layout(
        True,
        f"one worker with {threads} threads: the {len(workers)} workers share one host, and about"
        f" {size_text(need)} fits one worker",
        threads,
    )


def _threads(workers: dict[str, dict[str, Any]]) -> int:
    """The threads of every worker on the host with the most of them."""
    return max(host_threads(workers, w) for w in workers)


def host_threads(workers: dict[str, dict[str, Any]], worker: str) -> int:
    """The threads of every worker on ``worker``'s host: what one training process there uses."""
    host = workers[worker].get("host")
    return sum(int(w.get("nthreads") or 1) for w in workers.values() if w.get("host") == host)


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
    worker and cancels the copied rows (and with them the training) when it is gone, so the
    caller's restart (:func:`dpipe.resume.train_surviving`) takes over.
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
        self.futures = []
        out: list[Any] = []
        for frame in self.frames_of(placed):
            if frame is None:
                out.append(None)
                continue
            copied, futures = onto(self.client, frame, self.worker)
            self.futures += futures
            out.append(copied)
        return tuple(out)

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
        from dpipe.placement import live_workers

        while not done.wait(self.POLL_S):
            try:
                gone = self.worker not in live_workers(self.client)
            except Exception:  # noqa: BLE001 - the scheduler itself is gone: the training call fails anyway
                return
            if gone:
                lost.set()
                self.client.cancel(self.futures)
                return
