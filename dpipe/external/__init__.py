"""Training beyond memory: the transformed rows written to disk as shards, XGBoost's
external-memory matrices (``ExtMemQuantileDMatrix``) built from them on every worker, and one
training task per worker joined by XGBoost's collective tracker.

``xgboost.dask`` has no external-memory path: its matrices are built from partitions held in
worker memory. Here the rows never are: the load transforms each partition and writes it as one
Parquet file per side (:func:`write_shards`), every worker then reads an equal, contiguous share
of each side's rows batch by batch (:class:`ShardIter`) into XGBoost's page cache on its local
disk, and trains on it (:func:`train_external`). The assessment and the predictions read the
shards back as lazy frames (:meth:`Shards.frame`), so they stream too.

The shards lie in a scratch directory every worker must be able to read (``train.scratch``; by
default the client's temporary directory, which the workers of one machine share): a worker lost
during training loses nothing but its page cache, and the restart deals the shards to the
workers there are.
"""

from dpipe.external.shards import Range, Shard, Shards, deal, write_shards
from dpipe.external.training import train_external
from dpipe.external.where import Decision, decide, require_shared, row_width, scratch_dir

__all__ = [
    "Decision",
    "Range",
    "Shard",
    "Shards",
    "deal",
    "decide",
    "require_shared",
    "row_width",
    "scratch_dir",
    "train_external",
    "write_shards",
]
