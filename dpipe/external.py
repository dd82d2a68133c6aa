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

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from dpipe.columns import SIDE
from dpipe.errors import TrainingError

logger = logging.getLogger(__name__)

#: Rows of one Parquet row group of a shard, and so of one batch XGBoost's iterator reads: about
#: 36 MiB of 35 float32 features.
BATCH_ROWS = 2**18
#: The share of the workers' memory, past what each holds idle, that in-memory training may take
#: under ``train.memory: auto``.
SHARE = 0.6
#: What in-memory training holds for each byte of transformed rows: the placed rows, XGBoost's
#: quantile matrix and gradients, and the copies made while cutting the sides (measured: ~1.9x).
MATRIX_OVERHEAD = 2.0
#: What a worker holds before any data: dask.dataframe, pyarrow and XGBoost imported (~230-300 MiB).
WORKER_BASELINE = 300 * 2**20


# -- where -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """Whether training reads its rows from disk, and why (for the log)."""

    external: bool
    reason: str


def decide(how: str, rows: int, width: int, memory_limit: int | None, workers: int = 1) -> Decision:
    """``train.memory`` (``auto``, ``memory``, ``external``) for ``rows`` transformed rows of
    ``width`` bytes each on ``workers`` workers with ``memory_limit`` bytes in all (``None``:
    unlimited)."""
    if how == "external":
        return Decision(True, "on disk (train.memory is external)")
    if how == "memory":
        return Decision(False, "in memory (train.memory is memory)")
    need = int(rows * width * MATRIX_OVERHEAD)
    if memory_limit is None:
        return Decision(False, "in memory: the workers' memory is not limited (train.memory: external spills anyway)")
    budget = SHARE * max(memory_limit - workers * WORKER_BASELINE, 0)
    if need > budget:
        return Decision(
            True,
            f"on disk: training in memory needs about {_size(need)}, more than {SHARE:.0%} of the workers'"
            f" {_size(memory_limit)} past what they hold idle (train.memory: memory keeps the rows there)",
        )
    return Decision(
        False, f"in memory: about {_size(need)}, within {SHARE:.0%} of the workers' {_size(memory_limit)} past idle"
    )


def row_width(model_input: Any) -> int:
    """Bytes of one transformed row in memory: float32 numbers and category codes, and the label,
    side and id columns that travel with them (counted as 16 bytes)."""
    return 4 * len(model_input.features) + 16


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def scratch_dir(given: str | None) -> str:
    """A new directory for one run's shards: under ``given`` (``train.scratch``) or the
    temporary directory of Dask's configuration (``temporary-directory``), else of the system."""
    import dask

    base = given or dask.config.get("temporary-directory", None) or tempfile.gettempdir()
    path = os.path.join(os.path.abspath(os.path.expanduser(base)), f"dpipe-shards-{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(path)
    except OSError as exc:
        raise TrainingError(
            f"train.scratch: cannot create {path!r} for the shards of external-memory training: {exc}",
            hint="set `train.scratch` to a writable directory every worker can read",
        ) from exc
    return path


def require_shared(client: Any, path: str) -> None:
    """Fail unless every worker sees ``path`` (the shards written by one worker are read by another)."""
    seen = client.run(os.path.isdir, path)
    blind = sorted(w for w, ok in seen.items() if not ok)
    if blind:
        raise TrainingError(
            f"train.memory: external: worker(s) {blind} cannot see the scratch directory {path!r}",
            hint="set `train.scratch` to a directory every worker mounts (shared storage), or train in memory",
        )


# -- shards ------------------------------------------------------------------------------------
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

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


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

        return _as_meta(pq.read_table(path).to_pandas(), self.meta)


def _as_meta(pdf: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
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


# -- training ----------------------------------------------------------------------------------
def train_external(
    client: Any,
    config: Any,
    train: Sequence[Shard],
    valid: Sequence[Shard] | None,
    *,
    features: Sequence[str],
    categorical: Sequence[str],
    label: str,
    meta: pd.DataFrame,
) -> tuple[Any, dict[str, Any]]:
    """Train on the shards with one task per worker, each building ``ExtMemQuantileDMatrix``
    objects from its share of the rows (:func:`deal`); returns ``(booster, metrics)`` as
    :func:`dpipe.train.train_booster` does (early stopping, checkpoints and the history from
    ``config`` alike)."""
    import xgboost as xgb
    from xgboost.collective import Config
    from xgboost.dask import _get_dask_config, _get_rabit_args

    from dpipe.placement import live_workers
    from dpipe.resumable import Resumable
    from dpipe.resume import Progress
    from dpipe.train import finish_training, training_error
    from dpipe.xgboost_logs import route_xgboost_logs

    workers = live_workers(client)
    rows = [sum(s.rows for s in train)] + ([sum(s.rows for s in valid)] if valid is not None else [])
    # Every worker of the collective needs rows of every matrix.
    workers = workers[: max(1, min(len(workers), *rows))]
    shares_train = deal(train, len(workers))
    shares_valid = deal(valid, len(workers)) if valid is not None else [None] * len(workers)
    before = config.progress or Progress()
    carried = Resumable(
        dataclasses.replace(before),
        early_stopping_rounds=config.early_stopping_rounds if valid is not None else None,
        checkpoints=config.checkpoints,
        every=config.checkpoint_every,
    )
    coll = Config(timeout=config.collective_timeout) if config.collective_timeout is not None else Config()
    task = _WorkerTrain(
        params=dict(config.params),
        num_boost_round=config.num_boost_round,
        eval_train=config.eval_train or valid is None,
        callbacks=(*config.callbacks, carried),
        xgb_model=config.xgb_model,
        columns=_Columns(tuple(features), tuple(categorical), label, meta[[*features, label]]),
    )
    with client.as_current():
        route_xgboost_logs(client)
        args = client.sync(_get_rabit_args, client, len(workers), _get_dask_config(), coll)
        futures = [
            client.submit(
                task, args, shares_train[k], shares_valid[k], workers=[w], allow_other_workers=False, pure=False
            )
            for k, w in enumerate(workers)
        ]
        try:
            results = client.gather(futures)
        except xgb.core.XGBoostError as exc:
            raise training_error(exc) from exc
        finally:
            client.cancel(futures)
    booster, history = results[0]
    return finish_training(config, booster, history, before, has_valid=valid is not None)


@dataclass(frozen=True)
class _Columns:
    features: tuple[str, ...]
    categorical: tuple[str, ...]
    label: str
    meta: pd.DataFrame


@dataclass(frozen=True)
class _WorkerTrain:
    """One worker's training task: its shares of the rows in external-memory matrices."""

    params: dict[str, Any]
    num_boost_round: int
    eval_train: bool
    callbacks: tuple[Any, ...]
    xgb_model: Any
    columns: _Columns

    def __call__(self, coll_args: dict, train: list[Range], valid: list[Range] | None) -> tuple[Any, dict]:
        import xgboost as xgb
        from distributed import get_worker
        from xgboost.dask import CommunicatorContext

        worker = get_worker()
        threads = int(self.params.get("nthread") or worker.state.nthreads)
        params = {**self.params, "nthread": threads}
        cache = tempfile.mkdtemp(prefix="dpipe-extmem-", dir=worker.local_directory)
        try:
            with CommunicatorContext(**coll_args), xgb.config_context(nthread=threads):
                return self._train(params, threads, cache, train, valid)
        finally:
            # The matrices are gone with `_train`'s frame: their page files can go.
            shutil.rmtree(cache, ignore_errors=True)

    def _train(self, params: dict, threads: int, cache: str, train: list[Range], valid: list[Range] | None):
        import xgboost as xgb

        max_bin = int(params.get("max_bin", 256))
        dtrain = xgb.ExtMemQuantileDMatrix(
            ShardIter(train, self.columns, os.path.join(cache, "train")),
            max_bin=max_bin,
            enable_categorical=True,
            nthread=threads,
        )
        evals = [(dtrain, "train")] if self.eval_train else []
        if valid is not None:
            dvalid = xgb.ExtMemQuantileDMatrix(
                ShardIter(valid, self.columns, os.path.join(cache, "valid")),
                ref=dtrain,
                max_bin=max_bin,
                enable_categorical=True,
                nthread=threads,
            )
            evals.append((dvalid, "valid"))
        history: dict = {}
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=self.num_boost_round,
            evals=evals,
            evals_result=history,
            verbose_eval=False,
            callbacks=list(self.callbacks),
            xgb_model=self.xgb_model,
        )
        return booster, history


def _shard_iter_class():
    import xgboost as xgb

    class ShardIter(xgb.DataIter):
        """XGBoost's data iterator over ranges of shards: one batch per row group."""

        def __init__(self, ranges: Sequence[Range], columns: _Columns, cache_prefix: str):
            self.batches = list(_batches(ranges))
            self.columns = columns
            self.k = 0
            super().__init__(cache_prefix=cache_prefix, release_data=True)

        def next(self, input_data) -> bool:
            if self.k == len(self.batches):
                return False
            X, y = _read_batch(self.batches[self.k], self.columns)
            self.k += 1
            input_data(data=X, label=y)
            return True

        def reset(self) -> None:
            self.k = 0

    return ShardIter


def ShardIter(ranges: Sequence[Range], columns: _Columns, cache_prefix: str):  # noqa: N802 - a class's factory
    """An ``xgboost.DataIter`` over ``ranges`` (defined on first use: XGBoost imports lazily)."""
    global _SHARD_ITER
    if _SHARD_ITER is None:
        _SHARD_ITER = _shard_iter_class()
    return _SHARD_ITER(ranges, columns, cache_prefix)


_SHARD_ITER: Any = None


@dataclass(frozen=True)
class _Batch:
    path: str
    group: int
    start: int
    stop: int


def _batches(ranges: Sequence[Range]):
    """The row groups each range covers, each cut to the range: one batch per row group."""
    import pyarrow.parquet as pq

    for r in ranges:
        metadata = pq.read_metadata(r.path)
        offset = 0
        for g in range(metadata.num_row_groups):
            n = metadata.row_group(g).num_rows
            lo, hi = max(r.start, offset), min(r.stop, offset + n)
            if lo < hi:
                yield _Batch(r.path, g, lo - offset, hi - offset)
            offset += n


def _read_batch(batch: _Batch, columns: _Columns) -> tuple[pd.DataFrame, np.ndarray]:
    import pyarrow.parquet as pq

    names = [*columns.features, columns.label]
    table = pq.ParquetFile(batch.path).read_row_group(batch.group, columns=names)
    table = table.slice(batch.start, batch.stop - batch.start)
    pdf = _as_meta(table.to_pandas(), columns.meta)
    X = {}
    for c in columns.features:
        s = pdf[c]
        if c in columns.categorical:
            X[c] = s
        else:
            X[c] = np.require(s.to_numpy(dtype="float32", na_value=np.nan), requirements="A")
    y = pdf[columns.label].to_numpy(dtype="float32")
    return pd.DataFrame(X, index=pdf.index), y
