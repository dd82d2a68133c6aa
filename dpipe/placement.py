"""Placement: the transformed data computed into worker memory, a fair share on every worker.

xgboost.dask trains on the partitions where they are ("does not repartition or move data between
workers") and fails with categorical features when a worker holds no partition, so placement is
explicit rather than left to the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from dpipe.columns import SIDE, TRAIN, VALID
from dpipe.errors import TrainingError

#: Seconds placement waits for a worker when the cluster has none (one being restarted).
WAIT_FOR_WORKERS = 30.0


def spread_partitions(client, df: dd.DataFrame, rows_per_partition: list[int] | None = None) -> dd.DataFrame:
    """Compute ``df`` into worker memory so that every worker holds a fair share of it.

    xgboost.dask trains on the partitions where they are and fails with categorical data when a
    worker holds none, so placement is explicit: largest partitions first, each to the worker with
    the fewest rows so far. Returns a DataFrame backed by the placed futures.
    """
    futures, _, _ = _place(client, df, rows_per_partition)
    return dd.from_delayed(futures, meta=df._meta, verify_meta=False)


@dataclass(frozen=True)
class Rows:
    """A row selection by conditions on internal integer columns, e.g. ``Rows(((SIDE, "==", TRAIN),))``
    (a picklable partition function)."""

    conditions: tuple[tuple[str, str, int], ...]

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        keep = np.ones(len(pdf), dtype=bool)
        for column, op, value in self.conditions:
            keep &= _COMPARE[op](pdf[column].to_numpy(), value)
        return pdf[keep]

    def where(self, column: str, op: str, value: int) -> Rows:
        return Rows((*self.conditions, (column, op, value)))


_COMPARE = {"==": np.equal, "!=": np.not_equal, "<=": np.less_equal}


@dataclass(frozen=True)
class PlacedRows:
    """Partitions computed into worker memory (futures), where each lies, and the workers."""

    futures: list[Any]
    where: list[str]
    workers: list[str]
    meta: pd.DataFrame


def place_rows(client, df: dd.DataFrame, rows_per_partition: list[int] | None = None) -> PlacedRows:
    """Compute ``df`` into worker memory, a fair share on every worker (see :func:`spread_partitions`)."""
    futures, where, workers = _place(client, df, rows_per_partition)
    return PlacedRows(futures, where, workers, df._meta)


def side(client, placed: PlacedRows, rows: Rows) -> dd.DataFrame:
    """The ``rows`` of placed partitions, cut where each partition lies, with every worker holding
    some of them.

    Every worker must hold rows of each matrix XGBoost builds (see above), which a fair share of
    the whole does not guarantee: a ``split.key`` on a partition column puts whole files on one
    side, a time split puts whole months, and a row filter can empty whole files. A worker left
    without rows gets part of the largest piece, so only those rows move between workers.
    """
    workers = placed.workers
    pieces = [
        client.submit(rows, f, workers=[w], allow_other_workers=False) for f, w in zip(placed.futures, placed.where)
    ]
    counts, holders = list(client.gather(client.map(len, pieces))), list(placed.where)
    share = max(sum(counts) // len(workers), 1)
    while True:
        load = {w: 0 for w in workers}
        for n, w in zip(counts, holders):
            load[w] += n
        empty = [w for w in workers if load[w] == 0]
        j = max(range(len(pieces)), key=lambda j: (counts[j], load[holders[j]]))
        if not empty or counts[j] < 2:
            break  # fewer rows than workers: XGBoost says what it needs
        moved = min(counts[j] // 2, share)
        start = counts[j] - moved
        # Cut where the piece is, then copy only the cut to the empty worker.
        rest = client.submit(_rows, pieces[j], 0, start, workers=[holders[j]], allow_other_workers=False)
        part = client.submit(_rows, pieces[j], start, counts[j], workers=[holders[j]], allow_other_workers=False)
        part = client.submit(_rows, part, 0, moved, workers=[empty[0]], allow_other_workers=False)
        pieces[j], counts[j] = rest, start
        pieces.append(part)
        counts.append(moved)
        holders.append(empty[0])
    return dd.from_delayed(pieces, meta=placed.meta, verify_meta=False)


def spread_train_valid(
    client, df: dd.DataFrame, rows_per_partition: list[int] | None = None
) -> tuple[dd.DataFrame, dd.DataFrame]:
    """Place ``df`` as :func:`spread_partitions` does, then split it into its training and
    validation rows (the ``SIDE`` column) where each partition lies (:func:`side`)."""
    placed = place_rows(client, df, rows_per_partition)
    return side(client, placed, Rows(((SIDE, "==", TRAIN),))), side(client, placed, Rows(((SIDE, "==", VALID),)))


def _rows(pdf: pd.DataFrame, start: int, stop: int) -> pd.DataFrame:
    return pdf.iloc[start:stop]


def _place(client, df: dd.DataFrame, rows_per_partition: list[int] | None):
    """The futures of ``df``'s partitions, the worker each was computed on, and all workers."""
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        # A worker being restarted (its nanny restarts it past its memory limit) is back soon.
        try:
            client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
        except TimeoutError:
            raise TrainingError(
                f"the cluster has no workers (none joined within {WAIT_FOR_WORKERS:g}s)",
                hint="start workers or check `cluster.address`",
            ) from None
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if df.npartitions < len(workers):
        df = df.repartition(npartitions=len(workers))
        rows_per_partition = None
    sizes = rows_per_partition or [1] * df.npartitions
    load = {w: 0 for w in workers}
    assignment = {}
    for i in sorted(range(df.npartitions), key=lambda i: -sizes[i]):
        target = min(workers, key=lambda w: (load[w], workers.index(w)))
        assignment[i] = target
        load[target] += max(sizes[i], 1)
    parts = df.to_delayed(optimize_graph=True)
    futures = [client.compute(part, workers=[assignment[i]], allow_other_workers=False) for i, part in enumerate(parts)]
    from distributed import wait

    with client.as_current():
        wait(futures)
    for f in futures:
        if f.status == "error":
            f.result()  # raises the task's own error
    return futures, [assignment[i] for i in range(len(futures))], workers
