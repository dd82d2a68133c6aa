"""Training that survives a lost worker: checkpoints every few rounds, and where to go on from.

``xgboost.dask`` has no resilience ("resilience is not yet supported"): a worker lost in the middle
of training fails the whole call. So training carries its own state in an XGBoost callback
(:class:`dpipe.resumable.Resumable`): early stopping whose best score and round survive a restart (XGBoost's own
``EarlyStopping`` starts afresh on a continued booster) and, every ``every`` rounds, a checkpoint
written by rank 0 only: the booster as UBJ, then a JSON of where training stands (rounds done,
the best so far, the evaluation history). :func:`dpipe.stages.train` catches the loss, re-places
the data and calls ``xgboost.dask.train`` again with ``xgb_model`` set to the last checkpoint and
the remaining rounds (:class:`Progress` carried into a new callback).

The checkpoint files live under a folder of any fsspec store (the run's staging output), so a
worker that writes them and the client that reads them only need to reach that store.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dpipe.io.fs import resolve, storage_errors

_NAME = re.compile(r"^checkpoint-(\d+)\.json$")
_logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands: the rounds in the booster, the best validation score so far and its
    round (the rounds without improvement follow), and the evaluation history of every round (the
    JSON written beside each checkpoint)."""

    rounds: int = 0
    best_iteration: int | None = None
    best_score: float | None = None
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "best_iteration": self.best_iteration,
            "best_score": self.best_score,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(int(data["rounds"]), data.get("best_iteration"), data.get("best_score"), data.get("history") or {})


def merged(before: dict[str, dict[str, list[float]]], now: dict[str, dict[str, list[float]]]) -> dict:
    """The evaluation history of earlier attempts followed by this attempt's."""
    out = {side: {m: list(v) for m, v in metrics.items()} for side, metrics in before.items()}
    for side, metrics in now.items():
        for m, values in metrics.items():
            out.setdefault(side, {}).setdefault(m, []).extend(float(x) for x in values)
    return out


class Checkpoints:
    """Checkpoint pairs under ``uri``: ``checkpoint-<rounds>.ubj`` (the booster), then
    ``checkpoint-<rounds>.json`` (its :class:`Progress`). The JSON is written last, so a pair
    without it is incomplete and ignored; older pairs are deleted once a newer one is complete.
    Picklable: the filesystem travels to the workers with its storage options."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.uri = uri
        self.fs, path = resolve(uri, storage_options, where="checkpoints")
        self.path = path.rstrip("/")

    def save(self, booster: Any, progress: Progress) -> None:
        name = f"{self.path}/checkpoint-{progress.rounds:06d}"
        with storage_errors("checkpoints", self.uri):
            self.fs.makedirs(self.path, exist_ok=True)
            self.fs.pipe_file(f"{name}.ubj", bytes(booster.save_raw("ubj")))
            self.fs.pipe_file(f"{name}.json", json.dumps(progress.to_dict()).encode())
            for old in self._complete()[:-1]:
                self.fs.rm([f"{old}.json", f"{old}.ubj"])

    def latest(self) -> tuple[Any, Progress] | None:
        """The last complete checkpoint as ``(booster, progress)``, or ``None``."""
        import xgboost as xgb

        with storage_errors("checkpoints", self.uri):
            complete = self._complete()
            if not complete:
                return None
            progress = Progress.from_dict(json.loads(self.fs.cat_file(f"{complete[-1]}.json")))
            booster = xgb.Booster()
            booster.load_model(bytearray(self.fs.cat_file(f"{complete[-1]}.ubj")))
        return booster, progress

    def _complete(self) -> list[str]:
        # Listed afresh: s3fs answers from a cached listing otherwise (the writer is on a worker).
        self.fs.invalidate_cache(self.path)
        if not self.fs.exists(self.path):
            return []
        names = sorted(posixpath.basename(p) for p in self.fs.ls(self.path, detail=False))
        return [f"{self.path}/{n[: -len('.json')]}" for n in names if _NAME.match(n)]


# -- restarts ---------------------------------------------------------------------------------
#: An error that may be a lost peer rather than the job's own fault (XGBoost's collective says so
#: in words: a closed socket, a peer that hung up, a timed-out operation).
_COMMUNICATION = re.compile(
    r"socket|connect|peer|closed|broken pipe|timed? ?out|recv|send|communicat|worker|cancel|comm\.cc|coll(?:ective|_)",
    re.IGNORECASE,
)
#: Seconds to wait for the scheduler to notice a lost worker after training failed.
NOTICE_S = 10.0
#: A worker whose last heartbeat is older than this when a collective failed is hung (stopped,
#: swapping, stuck in a system call): it is taken out of the cluster like a lost one. Heartbeats
#: come every 0.5-5 s and go on while a task holds the GIL only in short gaps.
SILENT_S = 10.0


def _quiet(message: str) -> None:
    """A ``log`` that drops the message."""


@dataclass(frozen=True)
class Resilience:
    """How training survives a lost worker: checkpoints under ``checkpoint_uri`` (``None``: none,
    a restart trains from the first round) every ``every`` rounds, at most ``max_restarts``
    restarts, each waiting up to ``wait`` seconds for as many workers as before."""

    checkpoint_uri: str | None
    storage_options: dict[str, Any] = field(default_factory=dict)
    every: int | None = None
    max_restarts: int = 2
    wait: float = 30.0
    log: Callable[[str], None] = _quiet

    @classmethod
    def from_spec(cls, spec: Any, checkpoint_uri: str | None, storage_options=None, log=_quiet) -> Resilience:
        """From a ``train:`` section (:class:`~dpipe.spec.TrainSpec`)."""
        every = spec.checkpoint_every
        return cls(
            checkpoint_uri if every else None,
            dict(storage_options or {}),
            every,
            spec.max_restarts,
            spec.restart_wait,
            log,
        )

    def may_restart(self, done: int, gone: list[str], error: str, what: str, hint: str = "") -> None:
        """Raise :class:`TrainingError` (``what`` formatted with ``gone``) when ``done`` restarts
        are already ``max_restarts``."""
        from dpipe.errors import TrainingError

        if done >= self.max_restarts:
            raise TrainingError(
                f"{what.format(gone=gone)} ({error}); gave up after {done} restart(s)"
                f" (train.max_restarts: {self.max_restarts})",
                hint="check the workers' logs for why they die (memory limit, preemption), or raise"
                f" `train.max_restarts`{hint}",
            )

    def checkpoints(self, name: str) -> Checkpoints | None:
        if self.checkpoint_uri is None:
            return None
        return Checkpoints(f"{self.checkpoint_uri.rstrip('/')}/{name}", self.storage_options)


P = TypeVar("P")


def train_surviving(
    client: Any,
    config: Any,
    placed: P,
    frames: Callable[[P], tuple[Any, ...]],
    again: Callable[[P], P],
    resilience: Resilience | None,
    *,
    name: str = "model",
    fit: Callable[..., tuple[Any, dict[str, Any]]] | None = None,
) -> tuple[Any, dict[str, Any], P, list[dict[str, Any]]]:
    """:func:`dpipe.train.train_booster` on ``frames(placed)``, going on after a lost worker.

    When a training call fails and a worker of the cluster it started on is gone, wait for the
    workers (up to ``resilience.wait`` seconds for as many as before, else go on with those
    there are), place the rows again (``again``: the lost partitions computed again), and train
    the remaining rounds from the last checkpoint, with its early-stopping state and history.
    Any other error is raised as it is. Returns ``(booster, metrics, placed, restarts)``.
    ``fit(client, config, *frames(placed))`` trains (default :func:`dpipe.train.train_booster`).
    """
    from dpipe.train import train_booster

    fit = fit or train_booster
    if resilience is None:
        return (*fit(client, config, *frames(placed)), placed, [])
    checkpoints = resilience.checkpoints(name)
    first = config.xgb_model.num_boosted_rounds() if config.xgb_model is not None else 0
    attempt = config.replace(checkpoints=checkpoints, checkpoint_every=resilience.every)
    restarts: list[dict[str, Any]] = []
    while True:
        workers = _current(client)
        started = time.perf_counter()
        try:
            booster, metrics = fit(client, attempt, *frames(placed))
            return booster, metrics, placed, restarts
        except Exception as exc:  # noqa: BLE001 - judged by whether a worker is gone
            failed = time.perf_counter()
            gone = gone_workers(client, workers, exc)
            if not gone:
                raise
            error = one_line(exc)
        resilience.may_restart(len(restarts), gone, error, "train: lost worker(s) {gone} during training")
        now = wait_for_workers(client, len(workers), resilience.wait)
        placed = again(placed)
        last = checkpoints.latest() if checkpoints is not None else None
        booster, progress = last if last is not None else (config.xgb_model, None)
        done = progress.rounds if progress is not None else first
        attempt = config.replace(
            xgb_model=booster,
            progress=progress,
            num_boost_round=config.num_boost_round - (done - first),
            checkpoints=checkpoints,
            checkpoint_every=resilience.every,
        )
        record = {
            "model": name,
            "restart": len(restarts) + 1,
            "lost_workers": gone,
            "error": error,
            "failed_after_s": round(failed - started, 3),
            "from_round": done,
            "workers": len(now),
            "recovery_s": round(time.perf_counter() - failed, 3),
        }
        restarts.append(record)
        resilience.log(
            f"train: lost {len(gone)} worker(s) ({', '.join(gone)}): {error}; restart {record['restart']} of at most"
            f" {resilience.max_restarts} on {len(now)} worker(s), from round {done}"
            f" ({'the last checkpoint' if progress is not None else 'the start'}),"
            f" {attempt.num_boost_round} round(s) to go"
        )


def _current(client: Any) -> list[str]:
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


def gone_workers(client: Any, before: list[str], exc: BaseException) -> list[str]:
    """The workers of ``before`` no longer in the cluster; waits a little for the scheduler to
    notice when ``exc`` reads like a lost peer (its words or its kind). When none is gone but
    some have been silent for :data:`SILENT_S` (a hung worker: a collective timed out waiting
    for it), those are removed from the cluster and returned: their tasks and data are lost, as a
    dead worker's would be, and a restart goes on without them."""
    from dpipe.errors import DpipeError

    # A dpipe error (XGBoost's, wrapped) is judged by its own words and its cause's.
    words = f"{exc} {exc.__cause__ or ''}"
    suspicious = not isinstance(exc, DpipeError) or bool(_COMMUNICATION.search(words))
    deadline = time.monotonic() + (NOTICE_S if suspicious else 0.0)
    while True:
        try:
            gone = sorted(set(before) - set(_current(client)))
        except Exception:  # noqa: BLE001 - the scheduler itself is gone: not a worker's loss
            return []
        if gone:
            return gone
        if suspicious:
            hung = sorted(set(before) & set(client.run_on_scheduler(_silent, SILENT_S)))
            if hung:
                _logger.warning(
                    "worker(s) %s silent for more than %.0f s after a failed collective: taken out of the"
                    " cluster as hung",
                    ", ".join(hung),
                    SILENT_S,
                )
                client.run_on_scheduler(_remove, hung)
                return hung
        if time.monotonic() >= deadline:
            return []
        time.sleep(0.25)


def _silent(seconds: float, dask_scheduler: Any = None) -> list[str]:
    """(On the scheduler.) The workers whose last heartbeat is older than ``seconds``."""
    now = time.time()
    assert dask_scheduler is not None
    return [addr for addr, ws in dask_scheduler.workers.items() if now - ws.last_seen > seconds]


async def _remove(addresses: list[str], dask_scheduler: Any = None) -> None:
    """(On the scheduler.) Take hung workers out: their tasks go elsewhere, their data is lost."""
    assert dask_scheduler is not None
    for addr in addresses:
        await dask_scheduler.remove_worker(addr, stimulus_id=f"dpipe-hung-{time.time()}", close=True)


def wait_for_workers(client: Any, n: int, timeout: float) -> list[str]:
    """Up to ``timeout`` seconds for ``n`` workers; then the workers there are (at least one)."""
    from dpipe.placement import live_workers

    deadline = time.monotonic() + timeout
    while len(_current(client)) < n and time.monotonic() < deadline:
        time.sleep(0.25)
    return live_workers(client)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(getattr(exc, "message", exc)).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"
