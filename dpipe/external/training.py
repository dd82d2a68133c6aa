"""One training task per worker on its share of the shards, in XGBoost's external-memory matrices,
joined by XGBoost's collective tracker."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dpipe import arrow_pool
from dpipe.external.shards import Range, Shard, as_meta, deal


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
    carried = Resumable.of(config, validated=valid is not None)
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
        arrow_pool.trim(client)
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
    pdf = as_meta(table.to_pandas(), columns.meta)
    X = {}
    for c in columns.features:
        s = pdf[c]
        if c in columns.categorical:
            X[c] = s
        else:
            X[c] = np.require(s.to_numpy(dtype="float32", na_value=np.nan), requirements="A")
    y = pdf[columns.label].to_numpy(dtype="float32")
    return pd.DataFrame(X, index=pdf.index), y
