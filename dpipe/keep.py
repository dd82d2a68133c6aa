"""One read of the input per job: the rows read kept in worker memory for every pass after the first.

A training job passes over its rows several times: the quality pre-pass, the split's time range,
one fit phase or more, then the load that transforms and places them. Each pass would read the
storage again. When the rows fit in the workers' memory (``cluster.persist: auto``, the default),
the first pass keeps them there (``client.persist``) and the others read memory. The kept rows
are released once placed: training holds only the transformed rows.

Kept rows are the read's own partitions, so a worker lost before they are placed only costs Dask
reading its files again; placement recomputes a lost placed partition from storage, never from
the kept rows, which are gone by then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd

from dpipe.io.connector import OpenedSource

#: In-memory bytes per stored byte, by format (decompressed and decoded into pandas). Parquet's
#: dictionary-encoded strings and compressed floats grow the most; text shrinks into numbers.
EXPANSION = {"csv": 1.5, "json": 2.0}
PARQUET_EXPANSION = 4.0
#: The share of the workers' memory limit the kept rows may take under ``auto``: the placed rows,
#: and the quantile matrices XGBoost builds from them, need the rest.
SHARE = 0.25


@dataclass(frozen=True)
class Decision:
    """Whether the rows read are kept, and why (for the log)."""

    keep: bool
    reason: str


def decide(how: str, source: OpenedSource, memory_limit: int | None) -> Decision:
    """``cluster.persist`` (``auto``, ``always``, ``never``) for ``source`` on workers with
    ``memory_limit`` bytes in all (``None``: unknown or unlimited)."""
    if how == "never":
        return Decision(False, "cluster.persist is never: every pass reads the storage")
    if how == "always":
        return Decision(True, "cluster.persist is always")
    size = estimate(source)
    if size is None:
        return Decision(False, "the source's size is unknown (cluster.persist: always keeps the rows anyway)")
    if memory_limit is None:
        return Decision(False, "the workers' memory is not limited, so not known (cluster.persist: always)")
    budget = SHARE * memory_limit
    if size > budget:
        return Decision(
            False,
            f"about {size_text(size)} in memory is more than {SHARE:.0%} of the workers' {size_text(memory_limit)}:"
            " every pass reads the storage",
        )
    return Decision(
        True, f"about {size_text(size)} in memory, within {SHARE:.0%} of the workers' {size_text(memory_limit)}"
    )


def estimate(source: OpenedSource) -> int | None:
    """The rows' size in memory, from their size on storage (``None`` when the store cannot tell):
    the share of the stored columns the frame reads, grown by the format's :data:`EXPANSION`."""
    stored = source.nbytes
    if stored is None:
        return None
    columns = len(source.schema.names) if source.schema is not None else 0
    read = len(source.frame.columns)
    share = min(read / columns, 1.0) if columns else 1.0
    return int(stored * share * EXPANSION.get(source.format, PARQUET_EXPANSION))


#: What a worker holds before any data: dask.dataframe, pyarrow and XGBoost imported (~230-300 MiB).
WORKER_BASELINE = 300 * 2**20
#: How many copies of a partition in memory a task holds at its peak (read, transformed, written).
COPIES = 3


def piece_cap(client: Any) -> int | None:
    """The largest piece on storage (Parquet bytes) a worker's task can hold with the others of its
    threads within half the memory it has past its baseline (``None``: no worker has a limit).

    Combined pieces of ``partition_size`` (256 MiB by default) are a gigabyte in memory: a worker
    limited to less is restarted by its nanny in a loop.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    caps = [
        (w["memory_limit"] - WORKER_BASELINE) / 2 / max(w.get("nthreads") or 1, 1) / COPIES / PARQUET_EXPANSION
        for w in workers
        if w.get("memory_limit")
    ]
    return max(int(min(caps)), 1 << 20) if caps else None


def within_memory(source: OpenedSource, client: Any, log: Callable[[str], None]) -> OpenedSource:
    """``source`` with its pieces no larger than :func:`piece_cap` allows."""
    cap = piece_cap(client)
    if cap is None or source.combine_to is None or source.combine_to <= cap:
        return source
    log(f"pieces of at most {size_text(cap)} on storage (of {size_text(source.combine_to)}): the workers' memory limit")
    return dataclasses.replace(source, combine_to=cap)


def workers_memory(client: Any) -> int | None:
    """The memory limit of all workers together (``None`` when one has none)."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    limits = [w.get("memory_limit") or 0 for w in workers]
    return None if not limits or 0 in limits else int(sum(limits))


def keep(
    client: Any, source: OpenedSource, how: str, log: Callable[[str], None], *, frame: dd.DataFrame | None = None
) -> dd.DataFrame | None:
    """The source's frame (or ``frame``, the same rows in other partitions: pieces) persisted on
    the workers when :func:`decide` says so, else ``None``."""
    decision = decide(how, source, workers_memory(client))
    if not decision.keep:
        log(f"rows read for each pass: {decision.reason}")
        return None
    log(f"rows read once and kept in worker memory until placed: {decision.reason}")
    return client.persist(source.frame if frame is None else frame)


def release(frame: dd.DataFrame | None) -> None:
    """Drop kept rows from worker memory now (the frame may live on in reference cycles until a
    garbage collection, and its futures with it)."""
    if frame is None:
        return
    from distributed import futures_of

    for future in futures_of(frame):
        future.release()  # idempotent: the frame's own release, when collected, does nothing


def size_text(n: float) -> str:
    """Bytes as text: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
