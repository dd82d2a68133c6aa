"""Watch mode: poll a job's source and run it incrementally whenever new datums arrive.

Micro-batches on one warm cluster: every ``every`` the source is diffed against the run state
(files landing in a prefix, new Delta versions, new Iceberg snapshots, rows above a watermark);
new datums run as one incremental batch of at most ``max_datums``, logged in one line. SIGINT or
SIGTERM stops the watch between batches; a batch in flight finishes its commit first (a second
signal aborts it, and an aborted batch commits nothing: the next run picks its datums up again).

Examples
--------
>>> dpipe.watch(dpipe.load_job("jobs/quickstart-features.yaml"), every=60)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dpipe import cluster as _cluster
from dpipe.errors import DataError, DpipeError, SpecError

logger = logging.getLogger("dpipe.watch")

#: Consecutive failed batches after which the watch gives up (each is logged; the next poll retries).
MAX_FAILURES = 3


@dataclass
class WatchSummary:
    """What a watch did before it stopped."""

    polls: int = 0
    batches: int = 0
    datums: int = 0
    rows: int = 0
    failures: int = 0
    stopped_by: str | None = None


def watch(
    job: Any,
    *,
    every: float | dt.timedelta = 60.0,
    max_datums: int | None = None,
    client: Any = None,
    scheduler: str | None = None,
    stop: threading.Event | None = None,
    max_batches: int | None = None,
) -> WatchSummary:
    """Run ``job`` incrementally whenever its source has new datums, until stopped.

    Parameters
    ----------
    every
        Seconds (or a timedelta) between polls; a poll finds new datums from listings, table
        logs or a ``max(watermark)`` query, never by reading data.
    max_datums
        At most this many new datums per batch; the rest go to the next ones, without waiting.
    stop
        Set it to stop after the batch in flight (what SIGINT and SIGTERM do when the watch runs
        in the main thread).
    max_batches
        Stop after this many batches that processed data (default: never).
    """
    from dpipe.runner import run

    interval = every.total_seconds() if isinstance(every, dt.timedelta) else float(every)
    if interval <= 0:
        raise SpecError(f"watch: --every must be positive, got {interval}s", hint="e.g. --every 60s")
    stop = stop or threading.Event()
    summary = WatchSummary()
    with _signals(stop, summary), _quiet_runs():
        connected = _cluster.connect(job.cluster, client=client, address=scheduler, log=logger.info)
        with connected as client:
            logger.info(f"watching {job.source.uri} every {interval:g}s (job {job.name!r}); Ctrl-C or SIGTERM stops")
            while not stop.is_set():
                summary.polls += 1
                started = time.perf_counter()
                try:
                    result = run(job, client, progress=False, incremental=True, max_datums=max_datums)
                except SpecError:
                    raise
                except DpipeError as exc:
                    summary.failures += 1
                    first = str(exc).splitlines()[0]
                    logger.warning(f"batch failed ({summary.failures} in a row): {first}")
                    if summary.failures >= MAX_FAILURES:
                        raise DataError(
                            f"watch: {MAX_FAILURES} batches failed in a row; the last: {first}",
                            hint="fix the cause and start the watch again; committed batches are kept",
                        ) from exc
                    stop.wait(interval)
                    continue
                summary.failures = 0
                record = result.manifest.get("incremental", {})
                if result.skipped is not None:
                    logger.debug(f"poll {summary.polls}: no new data")
                    stop.wait(interval)
                    continue
                summary.batches += 1
                new = record.get("new_datums", len(result.manifest.get("input", {}).get("files", [])))
                summary.datums += int(new or 0)
                rows = result.rows.get("read", 0)
                summary.rows += int(rows or 0)
                logger.info(
                    f"batch {summary.batches}: {_describe(result, record)} in {time.perf_counter() - started:.1f}s"
                )
                if max_batches is not None and summary.batches >= max_batches:
                    summary.stopped_by = "max_batches"
                    break
                if "left for the next run" not in str(record.get("reason", "")):
                    stop.wait(interval)
    logger.info(
        f"watch stopped ({summary.stopped_by or 'stop'}): {summary.batches} batch(es), {summary.datums} datum(s),"
        f" {summary.rows} row(s) in {summary.polls} poll(s)"
    )
    return summary


def _describe(result: Any, record: dict) -> str:
    rows = result.rows
    action = record.get("action")
    what = "full run (every datum)" if action == "full" else f"{record.get('new_datums', '?')} new datum(s)"
    if hasattr(result, "bundle_uri"):
        valid = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.get("valid", {}).items() if v is not None)
        return f"{what}, {rows.get('read')} rows read, model committed to {result.bundle_uri} ({valid})"
    return f"{what}, {rows.get('read')} rows read, {rows.get('written')} written to {result.output_uri}"


@contextlib.contextmanager
def _signals(stop: threading.Event, summary: WatchSummary) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the batch in flight finishes); a second one aborts it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        name = signal.Signals(signum).name
        if stop.is_set():
            raise KeyboardInterrupt(f"{name} again: aborting the batch in flight (it commits nothing)")
        summary.stopped_by = name
        stop.set()
        logger.info(f"{name}: stopping after the batch in flight (send it again to abort that batch)")

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _quiet_runs() -> Iterator[None]:
    """One line per batch: the runs' own progress lines are kept to warnings while watching
    (unless the ``dpipe`` logger is at DEBUG, as with ``--verbose``)."""
    root = logging.getLogger("dpipe")
    level = root.level
    if root.getEffectiveLevel() == logging.INFO:  # not with --quiet (warnings only) or --verbose
        root.setLevel(logging.WARNING)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)
        logger.setLevel(logging.NOTSET)
