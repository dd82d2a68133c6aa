"""The systems compared, each doing the work of :mod:`benchmarks.workload` end to end.

Every system reads the same columns, learns the same statistics from the training rows (median
fills, standard scaling, category vocabularies), splits by the same rule, trains XGBoost with the
same parameters for exactly 100 rounds evaluating AUC on the validation rows, then predicts the
validation rows and writes ``row_id, label, prediction`` as Parquet under ``out``.

Each returns ``{"stages": {name: seconds}, "auc": float}``. Stage names are the table's columns
(``read``, ``fit``, ``transform``, ``matrix``, ``train``, ``predict``); a lazy system that cannot
separate two of them reports the fused stage under a joined name such as ``read+fit``.
"""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.measure import MemorySampler, Stages, process_roles
from benchmarks.workload import (
    CATEGORICAL,
    COLUMNS,
    FEATURES,
    FILL_MEDIAN,
    FLOATS,
    FULL_COLUMNS,
    FULL_FEATURES,
    FULL_NUMERIC,
    ID,
    LABEL,
    PARAMS,
    ROUNDS,
    SCALE,
    cores,
    dpipe_job,
    full_rows,
    full_scales,
    full_transform,
    ordinal_codes,
    valid_mask,
    vocabulary,
)


# -- 1. dpipe ---------------------------------------------------------------------------------
def run_dpipe(
    client,
    uri: str,
    out: Path,
    storage_options: dict | None = None,
    *,
    rounds: int = ROUNDS,
    workload: str = "default",
    train: dict | None = None,
) -> dict:
    """``dpipe.run`` on the job spec. Its stages map to the table's as follows: ``plan`` (schema
    and footers) and ``fit`` (the one fit pass, which reads the data) -> ``read+fit``; ``load``
    (second read, transform, placement on the workers) -> ``read+transform``; ``train``
    (DaskQuantileDMatrix and xgboost.dask.train) -> ``matrix+train``; ``write`` (predict the
    validation rows, write them and the model bundle) -> ``predict``."""
    import dpipe

    job = dpipe_job(uri, str(out), storage_options, workload)
    job["train"].update(num_boost_round=rounds, **(train or {}))
    result = dpipe.run(dpipe.job_from_dict(job), client=client, progress=False)
    t = result.timings
    stages = {
        "read+fit": t["plan"] + t["fit"],
        "read+transform": t["load"],
        "matrix+train": t["train"],
        "predict": t["write"],
    }
    return {
        "stages": stages,
        "auc": result.metrics["valid"]["auc"],
        "predictions": str(out / "valid_predictions"),
        "memory_mode": result.manifest["training"]["memory"],
    }


# -- 2. hand-written Dask + xgboost.dask ------------------------------------------------------
def _valid_series(s: pd.Series) -> pd.Series:
    return pd.Series(valid_mask(s.to_numpy()), index=s.index)


def _predict_part(pdf: pd.DataFrame, booster, features: list[str] = FEATURES) -> pd.DataFrame:
    pred = booster.inplace_predict(pdf[features]) if len(pdf) else np.empty(0, "float32")
    return pd.DataFrame({ID: pdf[ID].to_numpy(), LABEL: pdf[LABEL].to_numpy(), "prediction": pred.astype("float32")})


def _write_predictions(valid, booster, features: list[str], out: Path) -> None:
    """``row_id, label, prediction`` of the validation rows, as Parquet under ``out``."""
    import dask

    meta = pd.DataFrame(
        {ID: pd.Series(dtype="int64"), LABEL: pd.Series(dtype="int8"), "prediction": pd.Series(dtype="float32")}
    )
    preds = valid.map_partitions(
        _predict_part, dask.delayed(booster, pure=True), features, meta=meta, align_dataframes=False
    )
    preds.to_parquet(str(out), write_index=False, write_metadata_file=False)


def run_handwritten(
    client, uri: str, out: Path, storage_options: dict | None = None, *, rounds: int = ROUNDS, workload: str = "default"
) -> dict:
    """What an expert writes directly: projected ``dd.read_parquet``, every statistic in one
    ``dask.compute``, ``persist`` of the transformed frame, ``DaskQuantileDMatrix``."""
    if workload == "full":
        return _handwritten_full(client, uri, out, storage_options, rounds=rounds)
    import dask
    import dask.dataframe as dd
    import xgboost as xgb
    import xgboost.dask  # noqa: F401
    from distributed import wait

    st = Stages()
    with st("read+fit"):
        df = dd.read_parquet(uri, columns=COLUMNS, storage_options=storage_options)
        df = df.assign(is_valid=df[ID].map_partitions(_valid_series, meta=(None, "bool")))
        train = df[~df["is_valid"]]
        stats = dask.compute(
            *[train[c].quantile(0.5) for c in FILL_MEDIAN],
            train[SCALE].mean(),
            train[SCALE].std(ddof=0),
            *[train[c].value_counts(split_out=1) for c in CATEGORICAL],
        )
    medians = dict(zip(FILL_MEDIAN, (float(m) for m in stats[: len(FILL_MEDIAN)])))
    means, stds = stats[len(FILL_MEDIAN)], stats[len(FILL_MEDIAN) + 1]
    vocab = {c: vocabulary(vc) for c, vc in zip(CATEGORICAL, stats[len(FILL_MEDIAN) + 2 :])}

    def transform(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.fillna(medians)
        for c in SCALE:
            pdf[c] = (pdf[c].astype("float64") - means[c]) / stds[c]
        for c in CATEGORICAL:
            pdf[c] = pdf[c].astype(pd.CategoricalDtype(vocab[c]))
        return pdf.astype({c: "float32" for c in FLOATS})

    with st("read+transform"):
        frame = df.map_partitions(transform).persist()
        wait(frame)
    with st("matrix+train"):
        is_valid = frame["is_valid"]
        dtrain = xgb.dask.DaskQuantileDMatrix(
            client, frame[~is_valid][FEATURES], frame[~is_valid][LABEL], enable_categorical=True
        )
        dvalid = xgb.dask.DaskQuantileDMatrix(
            client, frame[is_valid][FEATURES], frame[is_valid][LABEL], ref=dtrain, enable_categorical=True
        )
        result = xgb.dask.train(
            client, PARAMS, dtrain, num_boost_round=rounds, evals=[(dvalid, "valid")], verbose_eval=False
        )
    booster = result["booster"]
    with st("predict"):
        _write_predictions(frame[is_valid], booster, FEATURES, out)
    return {"stages": st.seconds, "auc": float(result["history"]["valid"]["auc"][-1]), "predictions": str(out)}


def _handwritten_full(client, uri: str, out: Path, storage_options: dict | None, *, rounds: int) -> dict:
    """The full workload by hand: the stateless columns per partition, every statistic in one
    ``dask.compute`` (the std of mean-filled values from the raw variance and counts), persist."""
    import dask
    import dask.dataframe as dd
    import xgboost as xgb
    import xgboost.dask  # noqa: F401
    from distributed import wait

    st = Stages()
    with st("read+fit"):
        raw = dd.read_parquet(uri, columns=FULL_COLUMNS, storage_options=storage_options)
        df = raw.map_partitions(full_rows)
        df = df.assign(is_valid=df[ID].map_partitions(_valid_series, meta=(None, "bool")))
        train = df[~df["is_valid"]]
        numeric = train[FULL_NUMERIC].astype("float64")
        means, count, var, rows, *counts = dask.compute(
            numeric.mean(),
            numeric.count(),
            numeric.var(ddof=0),
            train.map_partitions(len).sum(),
            *[train[c].value_counts(split_out=1) for c in CATEGORICAL],
        )
    means = {c: float(means[c]) for c in FULL_NUMERIC}
    scales = full_scales(var, count, int(rows))
    codes = {c: ordinal_codes(vc) for c, vc in zip(CATEGORICAL, counts)}
    with st("read+transform"):
        frame = df.map_partitions(full_transform, means, scales, codes).persist()
        wait(frame)
    with st("matrix+train"):
        is_valid = frame["is_valid"]
        dtrain = xgb.dask.DaskQuantileDMatrix(client, frame[~is_valid][FULL_FEATURES], frame[~is_valid][LABEL])
        dvalid = xgb.dask.DaskQuantileDMatrix(
            client, frame[is_valid][FULL_FEATURES], frame[is_valid][LABEL], ref=dtrain
        )
        result = xgb.dask.train(
            client, PARAMS, dtrain, num_boost_round=rounds, evals=[(dvalid, "valid")], verbose_eval=False
        )
    booster = result["booster"]
    with st("predict"):
        _write_predictions(frame[is_valid], booster, FULL_FEATURES, out)
    return {"stages": st.seconds, "auc": float(result["history"]["valid"]["auc"][-1]), "predictions": str(out)}


# -- 3. single-process pandas + xgboost.train -------------------------------------------------
def run_pandas(
    uri: str, out: Path, storage_options: dict | None = None, *, rounds: int = ROUNDS, workload: str = "default"
) -> dict:
    """pandas in one process, XGBoost with every core."""
    if workload == "full":
        return _pandas_full(uri, out, storage_options, rounds=rounds)
    import xgboost as xgb

    st = Stages()
    with st("read"):
        pdf = pd.read_parquet(uri, columns=COLUMNS, storage_options=storage_options)
    with st("fit"):
        valid = valid_mask(pdf[ID].to_numpy())
        train = pdf.loc[~valid]
        medians = train[FILL_MEDIAN].median()
        means, stds = train[SCALE].mean(), train[SCALE].std(ddof=0)
        vocab = {c: vocabulary(train[c].value_counts()) for c in CATEGORICAL}
        del train
    with st("transform"):
        pdf = pdf.fillna(medians.to_dict())
        for c in SCALE:
            pdf[c] = (pdf[c].astype("float64") - means[c]) / stds[c]
        for c in CATEGORICAL:
            pdf[c] = pdf[c].astype(pd.CategoricalDtype(vocab[c]))
        pdf = pdf.astype({c: "float32" for c in FLOATS})
    with st("matrix"):
        X, y = pdf[FEATURES], pdf[LABEL]
        dtrain = xgb.QuantileDMatrix(X[~valid], y[~valid], enable_categorical=True, nthread=cores())
        dvalid = xgb.QuantileDMatrix(X[valid], y[valid], ref=dtrain, enable_categorical=True, nthread=cores())
    return _train_and_predict(st, dtrain, dvalid, X[valid], pdf[ID][valid], y[valid], out, rounds)


def _pandas_full(uri: str, out: Path, storage_options: dict | None, *, rounds: int) -> dict:
    """The full workload in one pandas process."""
    import xgboost as xgb

    st = Stages()
    with st("read"):
        pdf = pd.read_parquet(uri, columns=FULL_COLUMNS, storage_options=storage_options)
    with st("fit"):
        pdf = full_rows(pdf)
        valid = valid_mask(pdf[ID].to_numpy())
        train = pdf.loc[~valid]
        numeric = train[FULL_NUMERIC].astype("float64")
        means = numeric.mean().to_dict()
        scales = full_scales(numeric.var(ddof=0), numeric.count(), len(train))
        codes = {c: ordinal_codes(train[c].value_counts()) for c in CATEGORICAL}
        del train, numeric
    with st("transform"):
        pdf = full_transform(pdf, means, scales, codes)
    with st("matrix"):
        X, y = pdf[FULL_FEATURES], pdf[LABEL]
        dtrain = xgb.QuantileDMatrix(X[~valid], y[~valid], nthread=cores())
        dvalid = xgb.QuantileDMatrix(X[valid], y[valid], ref=dtrain, nthread=cores())
    return _train_and_predict(st, dtrain, dvalid, X[valid], pdf[ID][valid], y[valid], out, rounds)


def _train_and_predict(st: Stages, dtrain, dvalid, X_valid, ids, y_valid, out: Path, rounds: int) -> dict:
    """``xgboost.train`` with every core, then the validation rows' predictions as Parquet."""
    import xgboost as xgb

    history: dict = {}
    with st("train"):
        booster = xgb.train(
            {**PARAMS, "nthread": cores()},
            dtrain,
            rounds,
            evals=[(dvalid, "valid")],
            evals_result=history,
            verbose_eval=False,
        )
    with st("predict"):
        pred = booster.inplace_predict(X_valid)
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({ID: ids, LABEL: y_valid, "prediction": pred}).to_parquet(out / "part-0.parquet", index=False)
    return {"stages": st.seconds, "auc": float(history["valid"]["auc"][-1]), "predictions": str(out)}


# -- 4. the floor: a pyarrow scan, numpy, native xgboost.train on an in-memory matrix -----------
def run_floor(
    uri: str, out: Path, storage_options: dict | None = None, *, rounds: int = ROUNDS, workload: str = "default"
) -> dict:
    """The least work that can produce the same model: an Arrow scan of the columns, numpy
    statistics and fills written straight into one float32 matrix (categories as codes), and
    ``xgboost.train`` on it. ``read`` is the scan floor; ``train`` is native training on an
    already-built matrix."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    import xgboost as xgb

    from benchmarks.measure import CountingFileSystem

    if workload != "default":
        raise ValueError(f"the floor implements the default workload only, not {workload!r}")

    fs, path = (
        (CountingFileSystem(**storage_options), CountingFileSystem._strip_protocol(uri))
        if storage_options
        else (None, uri)
    )
    st = Stages()
    with st("read"):
        table = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table(columns=COLUMNS)
    with st("fit"):
        valid = valid_mask(table[ID].to_numpy())
        train_idx = pa.array(np.flatnonzero(~valid))
        columns = {c: table[c].to_numpy().astype("float32", copy=False) for c in FLOATS}  # nulls become NaN
        medians = {c: float(np.nanmedian(columns[c][~valid])) for c in FILL_MEDIAN}
        means = {c: float(np.nanmean(columns[c][~valid].astype("float64"))) for c in SCALE}
        stds = {c: float(np.nanstd(columns[c][~valid].astype("float64"))) for c in SCALE}
        vocab = {}
        for c in CATEGORICAL:
            counts = pc.value_counts(pc.take(table[c], train_idx)).flatten()
            vocab[c] = vocabulary(pd.Series(counts[1].to_numpy(), index=counts[0].to_pylist()))
    with st("transform"):
        X = np.empty((table.num_rows, len(FEATURES)), dtype="float32")
        for j, c in enumerate(FLOATS):
            col = columns.pop(c)
            if c in medians:
                col = np.where(np.isnan(col), np.float32(medians[c]), col)
            elif c in means:
                col = (col.astype("float64") - means[c]) / stds[c]
            X[:, j] = col
        for j, c in enumerate(CATEGORICAL, start=len(FLOATS)):
            codes = pc.index_in(table[c], value_set=pa.array(vocab[c]))
            X[:, j] = codes.to_numpy(zero_copy_only=False)  # null (unseen) -> NaN
        y = table[LABEL].to_numpy().astype("float32")
        ids = table[ID].to_numpy()
        del table
    with st("matrix"):
        types = ["q"] * len(FLOATS) + ["c"] * len(CATEGORICAL)
        dtrain = xgb.QuantileDMatrix(
            X[~valid], y[~valid], feature_names=FEATURES, feature_types=types, enable_categorical=True, nthread=cores()
        )
        X_valid = X[valid]
        dvalid = xgb.QuantileDMatrix(
            X_valid,
            y[valid],
            ref=dtrain,
            feature_names=FEATURES,
            feature_types=types,
            enable_categorical=True,
            nthread=cores(),
        )
    history: dict = {}
    with st("train"):
        booster = xgb.train(
            {**PARAMS, "nthread": cores()},
            dtrain,
            rounds,
            evals=[(dvalid, "valid")],
            evals_result=history,
            verbose_eval=False,
        )
    with st("predict"):
        pred = booster.predict(dvalid)
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({ID: ids[valid], LABEL: y[valid], "prediction": pred}), out / "part-0.parquet")
    return {"stages": st.seconds, "auc": float(history["valid"]["auc"][-1]), "predictions": str(out)}


# -- dpipe, features only (no training) -------------------------------------------------------
def run_dpipe_features(
    client,
    uri: str,
    out: Path,
    storage_options: dict | None = None,
    *,
    write: bool = True,
    timeout: float | None = None,
    workload: str = "default",
) -> dict:
    """Read, fit, transform and write Parquet with dpipe's building blocks (``dpipe.io.read``,
    ``FeaturePipeline.fit/transform``, ``dpipe.io.write_parquet`` into a ``StagedOutput``): dpipe
    has no features-only job mode yet. Statistics are learned from every row (no split here).
    With ``write=False`` it stops after the fit pass (to count the bytes the fit reads); a pass
    taking more than ``timeout`` seconds raises ``TimeoutError``."""
    from distributed import wait

    import dpipe
    from dpipe.io import StagedOutput, read, write_parquet
    from dpipe.pipeline import FeaturePipeline

    def compute(*collections):
        futures = client.compute(list(collections))
        wait(futures, timeout=timeout)
        return tuple(client.gather(futures))

    spec = dpipe_job(uri, str(out), storage_options, workload)
    job = dpipe.job_from_dict(spec)
    st = Stages()
    with st("read+fit"):
        src = read(uri, columns=spec["source"]["columns"], storage_options=storage_options)
        pipe = FeaturePipeline.from_specs(job.features)
        pipe.fit(src.frame, compute=compute)
    if write:
        with st("read+transform+write"), StagedOutput(str(out)) as staged:
            write_parquet(pipe.transform(src.frame), staged, "", compute=lambda task: compute(task))
            staged.commit()
    return {"stages": st.seconds}


DASK_SYSTEMS = {"dpipe": run_dpipe, "handwritten": run_handwritten}
LOCAL_SYSTEMS = {"pandas": run_pandas, "floor": run_floor}
SYSTEMS = [*DASK_SYSTEMS, *LOCAL_SYSTEMS]


def _child(conn, system: str, uri: str, out: Path, storage_options: dict | None, rounds: int, workload: str) -> None:
    try:
        import pyarrow.dataset  # noqa: F401  (imports are not part of the measured work)
        import xgboost  # noqa: F401

        conn.send(("ok", LOCAL_SYSTEMS[system](uri, out, storage_options, rounds=rounds, workload=workload)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_local(
    system: str,
    uri: str,
    out: Path,
    storage_options: dict | None = None,
    *,
    rounds: int = ROUNDS,
    workload: str = "default",
) -> tuple[dict, dict]:
    """Run a single-process system in a fresh process; returns its result and its peak RSS.

    A fresh process measures that system's memory alone, not what the benchmark's own process
    (which hosts the Dask client and scheduler) has accumulated.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, system, uri, out, storage_options, rounds, workload), daemon=True)
    proc.start()
    child.close()
    with MemorySampler(process_roles(proc.pid)) as mem:
        try:
            status, payload = parent.recv()
        except EOFError:
            status, payload = "error", "the process died without a result"
    proc.join()
    if proc.exitcode not in (0, None) and status == "ok":
        status, payload = "error", f"exit code {proc.exitcode}"
    if status != "ok":
        raise RuntimeError(f"system {system!r} failed in its process:\n{payload}")
    return payload, mem.result()
