"""Small partitions combined into pieces of about ``partition_size``, once the checks have run.

A source gives one partition per file (or part of a large file), so that the quality checks can
name the file of every row they set aside and a new-data-only run can select files. Past the
checks, a partition per small file only costs: every op, statistic and placement step is a task
per partition, and a 100-row partition costs about as much scheduling as a million-row one (a
job over 300 files of 100 rows ran 50 tasks per file). So consecutive partitions are
concatenated, by their bytes on storage, into pieces of at most the source's ``partition_size``;
at least :data:`MIN_PARTITIONS` pieces are kept, so a small source still spreads over a cluster
(Spark's ``maxPartitionBytes`` with its ``totalBytes / defaultParallelism`` floor).

The combination is a Dask expression (:class:`Combine`): column projections and row filters
still reach the read through it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from dask.dataframe.dask_expr import new_collection
from dask.dataframe.dask_expr._repartition import RepartitionToFewer

#: Fewest pieces combining leaves (when there were more partitions): a small source still gives
#: every worker thread of a modest cluster some of the work.
MIN_PARTITIONS = 32


def boundaries(sizes: Sequence[int], target: int, *, min_partitions: int = MIN_PARTITIONS) -> list[int]:
    """Where each piece starts, then ``len(sizes)``: consecutive partitions whose bytes add up to
    at most ``min(target, sum(sizes) / min_partitions)`` (a partition larger than that is a piece
    of its own). One piece per partition when nothing combines.

    >>> boundaries([10] * 8, 20, min_partitions=2)
    [0, 2, 4, 6, 8]
    >>> boundaries([10] * 8, 1000, min_partitions=2)
    [0, 4, 8]
    """
    limit = min(target, sum(sizes) / max(min_partitions, 1))
    starts, total = [0], 0
    for i, n in enumerate(sizes):
        if i > starts[-1] and total + n > limit:
            starts.append(i)
            total = 0
        total += n
    return [*starts, len(sizes)]


class Combine(RepartitionToFewer):
    """Consecutive partitions concatenated at the given ``boundaries`` (piece ``i`` is partitions
    ``boundaries[i]`` to ``boundaries[i + 1] - 1``): Dask's count-based ``RepartitionToFewer``
    with the boundaries chosen by bytes."""

    _parameters = ["frame", "new_partitions", "boundaries"]

    @functools.cached_property
    def _partitions_boundaries(self) -> list[int]:
        return list(self.operand("boundaries"))


def combine(frame: Any, sizes: Sequence[int], target: int | None, *, min_partitions: int = MIN_PARTITIONS) -> Any:
    """``frame`` (a Dask frame whose partition ``i`` holds ``sizes[i]`` bytes on storage) with its
    small partitions combined into pieces of at most ``target`` bytes; ``frame`` itself when
    ``target`` is ``None``, the sizes are unknown (``len(sizes)`` is not the frame's partition
    count) or nothing combines."""
    if target is None or not sizes or len(sizes) != frame.npartitions:
        return frame
    starts = boundaries(sizes, target, min_partitions=min_partitions)
    if len(starts) - 1 == frame.npartitions:
        return frame
    return new_collection(Combine(frame.expr, len(starts) - 1, tuple(starts)))
