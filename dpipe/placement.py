"""Placement: the transformed data computed into worker memory, a fair share on every worker.

xgboost.dask trains on the partitions where they are ("does not repartition or move data between
workers") and fails with categorical features when a worker holds no partition, so placement is
explicit rather than left to the scheduler.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

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

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-rows"

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
    """Pieces computed into worker memory (futures), where each lies, and the workers; with the
    graphs of each piece's partitions (``parts``: small partitions are combined into one piece)
    and its rows, to compute again those a lost worker held."""

    futures: list[Any]
    where: list[str]
    workers: list[str]
    meta: pd.DataFrame
    parts: list[list[Any]] | None = None
    sizes: list[int] | None = None


def place_rows(
    client, df: dd.DataFrame, rows_per_partition: list[int] | None = None, *, rebuild: dd.DataFrame | None = None
) -> PlacedRows:
    """Compute ``df`` into worker memory, a fair share on every worker (see :func:`spread_partitions`).

    ``rebuild`` is the same rows from another graph, partition for partition, to compute again
    those a lost worker held: ``df`` computed from rows kept in memory (:mod:`dpipe.keep`), which
    are released once placed, and ``rebuild`` from the storage.
    """
    futures, where, workers, parts, sizes = _place_parts(client, df, rows_per_partition, rebuild)
    return PlacedRows(futures, where, workers, df._meta, parts, sizes)


def restore(client, placed: PlacedRows) -> PlacedRows:
    """The placed rows after workers were lost: the partitions no live worker holds computed
    again from their graphs (reading and transforming only those) on the workers there are now,
    the least loaded first; the others stay where they lie."""
    assert placed.parts is not None and placed.sizes is not None
    workers = live_workers(client)
    futures, where = list(placed.futures), list(placed.where)
    lost = _lost(client, futures, where, workers)
    _again(client, futures, where, placed.parts, placed.sizes, lost, workers)
    _wait_placed(client, futures, where, placed.parts, placed.sizes)
    workers = sorted(set(live_workers(client)) | set(where))
    return PlacedRows(futures, where, workers, placed.meta, placed.parts, placed.sizes)


def lost_pieces(client, placed: PlacedRows) -> set[int]:
    """The placed pieces no live worker holds (their worker is gone or came back empty)."""
    return _lost(client, placed.futures, placed.where, live_workers(client))


def _lost(client, futures: list[Any], where: list[str], workers: list[str]) -> set[int]:
    """The partitions whose worker is gone, or that no worker holds (a worker restarted on the
    same address comes back empty)."""
    alive = set(workers)
    # A piece whose data was lost and whose task cannot run again (the rows it was computed from
    # were released) is cancelled by the scheduler: lost too.
    held = client.who_has([f for f in futures if not f.cancelled()])
    return {i for i, (f, w) in enumerate(zip(futures, where)) if f.cancelled() or w not in alive or not held.get(f.key)}


def side(client, placed: PlacedRows, rows: Rows) -> dd.DataFrame:
    """The ``rows`` of placed partitions, cut where each partition lies, with every worker holding
    some of them.

    Every worker must hold rows of each matrix XGBoost builds (see above), which a fair share of
    the whole does not guarantee: a ``split.key`` on a partition column puts whole files on one
    side, a time split puts whole months, and a row filter can empty whole files. A worker left
    without rows gets part of the largest piece, so only those rows move between workers.
    """
    workers = placed.workers
    # Not pure: a piece cut again after a worker was lost must not be the lost piece's key. One
    # call per worker, not per partition.
    pieces: list[Any] = [None] * len(placed.futures)
    for w in sorted(set(placed.where)):
        mine = [i for i, holder in enumerate(placed.where) if holder == w]
        cut = client.map(rows, [placed.futures[i] for i in mine], workers=[w], allow_other_workers=False, pure=False)
        for i, piece in zip(mine, cut):
            pieces[i] = piece
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
        rest = client.submit(_rows, pieces[j], 0, start, workers=[holders[j]], allow_other_workers=False, pure=False)
        part = client.submit(
            _rows, pieces[j], start, counts[j], workers=[holders[j]], allow_other_workers=False, pure=False
        )
        part = client.submit(_rows, part, 0, moved, workers=[empty[0]], allow_other_workers=False, pure=False)
        pieces[j], counts[j] = rest, start
        pieces.append(part)
        counts.append(moved)
        holders.append(empty[0])
    return dd.from_delayed(pieces, meta=placed.meta, verify_meta=False)


def onto(client, frames: list[dd.DataFrame], worker: str) -> tuple[list[dd.DataFrame], list[Any]]:
    """``frames``' partitions, computed from placed ones, all onto ``worker`` in one computation: a
    partition another worker holds is copied there once; one it holds is not copied (a one-worker
    training layout, :mod:`dpipe.layout`). Returns the frames and all their futures."""
    from distributed import wait

    parts = [frame.map_partitions(_aligned, meta=frame._meta).to_delayed(optimize_graph=True) for frame in frames]
    flat = client.compute([p for ps in parts for p in ps], workers=[worker], allow_other_workers=False)
    while True:
        try:
            with client.as_current():
                wait(flat, timeout=2.0)
            break
        except TimeoutError:
            # A task pinned to a lost worker would wait for it forever.
            if worker not in live_workers(client):
                raise TrainingError(f"worker {worker} was lost while the training rows were copied onto it") from None
    for f in flat:
        if f.status == "error":
            f.result()  # raises the task's own error
    out, start = [], 0
    for frame, ps in zip(frames, parts):
        out.append(dd.from_delayed(flat[start : start + len(ps)], meta=frame._meta, verify_meta=False))
        start += len(ps)
    return out, flat


def _aligned(part: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
    """``part`` with every buffer XGBoost reads aligned: it refuses misaligned ones ("Input
    pointer misalignment"), and distributed deserialises a copied partition's arrays at any byte
    offset of its message. Numbers are copied only where needed; categories are rebuilt (they
    are small), as :class:`dpipe.train.ModelInput` does."""
    if isinstance(part, pd.Series):
        return _aligned_column(part) if _misaligned(part) else part
    bad = [c for c in part.columns if _misaligned(part[c])]
    if not bad:
        return part
    return part.assign(**{c: _aligned_column(part[c]) for c in bad})


def _misaligned(column: pd.Series) -> bool:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return True  # its categories may be, and they are small
    # Other extension arrays (nullable numbers: values and mask) count as misaligned.
    return not isinstance(column.dtype, np.dtype) or not column.to_numpy(copy=False).flags.aligned


def _aligned_column(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.CategoricalDtype):
        cats = column.dtype.categories
        dtype = pd.CategoricalDtype(pd.Index(cats.tolist(), dtype=cats.dtype), ordered=column.dtype.ordered)
        codes = np.require(column.cat.codes.to_numpy(), requirements="A")
        return pd.Series(pd.Categorical.from_codes(codes, dtype=dtype), index=column.index, name=column.name)
    return column.copy(deep=True)


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
    futures, where, workers, _, _ = _place_parts(client, df, rows_per_partition, None)
    return futures, where, workers


def live_workers(client) -> list[str]:
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
    return workers


def _place_parts(client, df: dd.DataFrame, rows_per_partition: list[int] | None, rebuild: dd.DataFrame | None):
    workers = live_workers(client)
    if rebuild is not None and rebuild.npartitions != df.npartitions:
        raise ValueError(f"`rebuild` has {rebuild.npartitions} partitions, `df` {df.npartitions}")
    if df.npartitions < len(workers):
        df = df.repartition(npartitions=len(workers))
        rebuild = None if rebuild is None else rebuild.repartition(npartitions=len(workers))
        rows_per_partition = None
    sizes = list(rows_per_partition or [1] * df.npartitions)
    load = {w: 0 for w in workers}
    assignment = {}
    for i in sorted(range(df.npartitions), key=lambda i: -sizes[i]):
        target = min(workers, key=lambda w: (load[w], workers.index(w)))
        assignment[i] = target
        load[target] += max(sizes[i], 1)
    first = df.to_delayed(optimize_graph=True)
    parts = first if rebuild is None else rebuild.to_delayed(optimize_graph=True)
    where = [assignment[i] for i in range(len(parts))]
    bundles = [[i] for i in range(len(parts))]
    if rows_per_partition is not None:
        bundles = _bundles(where, sizes, _piece_rows(df._meta))
        first = _combined(first, bundles)
        where = [where[b[0]] for b in bundles]
        sizes = [sum(sizes[i] for i in b) for b in bundles]
    # What a lost piece is computed again from: its partitions' graphs.
    parts = [[parts[i] for i in b] for b in bundles]
    # One round trip per worker, not per partition (10,000 files are 10,000 partitions).
    futures: list[Any] = [None] * len(parts)
    for w in workers:
        mine = [i for i, target in enumerate(where) if target == w]
        if mine:
            computed = client.compute([first[i] for i in mine], workers=[w], allow_other_workers=False)
            for i, f in zip(mine, computed):
                futures[i] = f
    _wait_placed(client, futures, where, parts, sizes)
    # A worker lost while placing was replaced by those that took its partitions.
    return futures, where, sorted(set(live_workers(client)) | set(where)), parts, sizes


#: Bytes of one placed piece, when small partitions are combined: with many small files each
#: worker holds a few pieces rather than one per file, so what follows the placement (the sides'
#: cuts, XGBoost's matrices, the assessment) pays its per-partition costs a few times.
PIECE_BYTES = 64 * 2**20


def _piece_rows(meta: pd.DataFrame) -> int:
    """Rows in :data:`PIECE_BYTES`, from the columns' dtypes (text and objects counted as 32 bytes)."""
    width = sum(dtype.itemsize if isinstance(dtype, np.dtype) and dtype.kind != "O" else 32 for dtype in meta.dtypes)
    return max(PIECE_BYTES // max(width, 1), 1)


def _bundles(where: list[str], sizes: list[int], rows: int) -> list[list[int]]:
    """Partitions grouped into pieces of at most ``rows`` rows, each of one worker's partitions (in
    order); a larger partition is a piece of its own."""
    bundles: list[list[int]] = []
    open_: dict[str, tuple[list[int], int]] = {}
    for i, w in enumerate(where):
        bundle, n = open_.get(w, ([], 0))
        if bundle and n + sizes[i] > rows:
            bundles.append(bundle)
            bundle, n = [], 0
        open_[w] = ([*bundle, i], n + sizes[i])
    bundles += [bundle for bundle, _ in open_.values() if bundle]
    return sorted(bundles)


def _combined(parts: list[Any], bundles: list[list[int]]) -> list[Any]:
    return [parts[b[0]] if len(b) == 1 else _concat_delayed([parts[i] for i in b]) for b in bundles]


def _concat_delayed(parts: list[Any]) -> Any:
    import dask

    return dask.delayed(_concat, pure=False)(*parts)


def _concat(*frames: pd.DataFrame) -> pd.DataFrame:
    out = pd.concat(frames)
    # Categoricals with other categories in other frames come out as objects: the union of the
    # categories keeps them categorical without losing a value.
    for c in out.columns:
        first = frames[0][c].dtype
        if isinstance(first, pd.CategoricalDtype) and out[c].dtype != first:
            union = union_categoricals([f[c] for f in frames], ignore_order=True).categories
            out[c] = out[c].astype(pd.CategoricalDtype(union, ordered=first.ordered))
    return out


def _wait_placed(client, futures: list[Any], where: list[str], parts: list[Any], sizes: list[int]) -> None:
    """Wait for placed partitions, computing again (in the lists, in place) those whose worker
    was lost meanwhile: a task pinned to a dead worker would wait for it forever."""
    from distributed import wait

    while True:
        try:
            with client.as_current():
                wait(futures, timeout=2.0)
        except TimeoutError:
            workers = live_workers(client)
            _again(
                client, futures, where, parts, sizes, {i for i, w in enumerate(where) if w not in set(workers)}, workers
            )
            continue
        for f in futures:
            if f.status == "error":
                f.result()  # raises the task's own error
        return


def _again(client, futures, where, parts, sizes, lost: set[int], workers: list[str]) -> None:
    """Compute the ``lost`` partitions again on ``workers``, the least loaded first."""
    if not lost:
        return
    load = {w: 0 for w in workers}
    for i, w in enumerate(where):
        if i not in lost:
            load[w] += max(sizes[i], 1)
    from dask.graph_manipulation import clone

    for i in sorted(lost, key=lambda i: -sizes[i]):
        where[i] = min(workers, key=lambda w: (load[w], workers.index(w)))
        load[where[i]] += max(sizes[i], 1)
        # Under new keys: the scheduler keeps the old ones pinned to the dead worker, where they
        # would wait forever.
        futures[i].release()
        seed = uuid.uuid4().hex
        members = [clone(part, seed=seed) for part in parts[i]]
        piece = members[0] if len(members) == 1 else _concat_delayed(members)
        futures[i] = client.compute(piece, workers=[where[i]], allow_other_workers=False)
