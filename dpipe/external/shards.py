"""The transformed rows on disk: one Parquet file per partition and side, written in one pass,
read back as lazy frames, and dealt to the workers in equal contiguous shares."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd
import pandas as pd

from dpipe.columns import SIDE

#: Rows of one Parquet row group of a shard, and so of one batch XGBoost's iterator reads: about
#: 36 MiB of 35 float32 features.
BATCH_ROWS = 2**18


@dataclass(frozen=True)
class Shard:
    """One side's rows of one partition, in one Parquet file."""

    path: str
    rows: int


@dataclass(frozen=True)
class Shards:
    """The transformed rows on disk, by side (the ``SIDE`` value), with their frame's schema."""

    root: str
    sides: Mapping[int, tuple[Shard, ...]]
    meta: pd.DataFrame

    def rows(self, side: int) -> int:
        return sum(s.rows for s in self.sides.get(side, ()))

    def frame(self, side: int) -> dd.DataFrame:
        """The side's rows as a lazy frame (one partition per shard), read where the task runs."""
        shards = list(self.sides.get(side, ()))
        if not shards:
            return dd.from_pandas(self.meta, npartitions=1)
        return dd.from_map(
            _ReadShard(self.meta), [s.path for s in shards], meta=self.meta, divisions=None, enforce_metadata=False
        )


def write_shards(frame: dd.DataFrame, root: str, compute: Any) -> Shards:
    """Write every partition of ``frame`` (transformed rows with their ``SIDE``) into ``root``,
    one Parquet file per side present in it, in ONE ``compute``: nothing is kept in memory but
    the partitions being written."""
    meta = frame._meta
    written = frame.map_partitions(
        _WriteShards(root), meta=_WRITTEN_META, partition_info=True, enforce_metadata=False, align_dataframes=False
    )
    (table,) = compute(written)
    sides: dict[int, list[Shard]] = {}
    for side, path, rows in table.sort_values("path").itertuples(index=False):
        sides.setdefault(int(side), []).append(Shard(str(path), int(rows)))
    return Shards(root, {k: tuple(v) for k, v in sides.items()}, meta)


_WRITTEN_META = pd.DataFrame(
    {"side": pd.Series([], dtype="int64"), "path": pd.Series([], dtype=object), "rows": pd.Series([], dtype="int64")}
)


@dataclass(frozen=True)
class _WriteShards:
    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-write-shards"

    root: str

    def __call__(self, pdf: pd.DataFrame, partition_info: Mapping[str, Any] | None = None) -> pd.DataFrame:
        import pyarrow as pa
        import pyarrow.parquet as pq

        number = 0 if partition_info is None else int(partition_info["number"])
        out = []
        if len(pdf):
            for side, rows in pdf.groupby(SIDE, sort=True, observed=True):
                path = os.path.join(self.root, f"part-{number:06d}.side-{int(side)}.parquet")
                table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
                # Written whole, then renamed: a retried task never leaves a torn file behind.
                partial = f"{path}.{uuid.uuid4().hex[:8]}.partial"
                pq.write_table(table, partial, row_group_size=BATCH_ROWS, compression="lz4")
                os.replace(partial, path)
                out.append((int(side), path, len(rows)))
        return pd.DataFrame(out, columns=list(_WRITTEN_META.columns)).astype(_WRITTEN_META.dtypes.to_dict())


@dataclass(frozen=True)
class _ReadShard:
    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-read-shard"

    meta: pd.DataFrame

    def __call__(self, path: str) -> pd.DataFrame:
        import pyarrow.parquet as pq

        return as_meta(pq.read_table(path).to_pandas(), self.meta)


def as_meta(pdf: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Arrow's pandas frame with the transformed frame's exact dtypes: a categorical column read
    back holds the categories of its file's dictionary, not every fitted one."""
    for c in meta.columns:
        if pdf[c].dtype != meta[c].dtype:
            pdf[c] = pdf[c].astype(meta[c].dtype)
    return pdf[list(meta.columns)]


# -- dealing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Rows ``start`` to ``stop`` of a shard."""

    path: str
    start: int
    stop: int


def deal(shards: Sequence[Shard], n: int) -> list[list[Range]]:
    """The shards' rows cut into ``n`` contiguous shares of equal size (within one row), in order:
    each worker reads whole shards but at its share's two ends."""
    total = sum(s.rows for s in shards)
    edges = [total * k // n for k in range(n + 1)]
    shares: list[list[Range]] = [[] for _ in range(n)]
    offset = 0
    for shard in shards:
        begin, end = offset, offset + shard.rows
        for k in range(n):
            lo, hi = max(begin, edges[k]), min(end, edges[k + 1])
            if lo < hi:
                shares[k].append(Range(shard.path, lo - begin, hi - begin))
        offset = end
    return shares
