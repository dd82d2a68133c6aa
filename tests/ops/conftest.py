"""Helpers of the op tests: fit through the pipeline (one compute per phase), transform, reload."""

from __future__ import annotations

from itertools import pairwise

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from dpipe.pipeline import FeaturePipeline
from dpipe.spec import OP_MODELS

STRING = pd.StringDtype("pyarrow")


def spec(op: str, **params):
    return OP_MODELS[op](op=op, **params)


def with_empty_partition(pdf: pd.DataFrame, npartitions: int = 4) -> dd.DataFrame:
    """``pdf`` split into ``npartitions`` partitions plus an empty one in the middle."""
    bounds = np.linspace(0, len(pdf), npartitions + 1).astype(int)
    parts = [pdf.iloc[lo:hi] for lo, hi in pairwise(bounds)]
    parts.insert(len(parts) // 2, pdf.iloc[:0])
    return dd.from_map(lambda i: parts[i], range(len(parts)), meta=pdf.iloc[:0], enforce_metadata=False)


def fit_pipeline(specs: list, ddf) -> tuple[FeaturePipeline, list[int]]:
    """Fit like a job does; returns the pipeline and the number of values each compute got."""
    calls: list[int] = []

    def compute(*values):
        calls.append(len(values))
        return dask.compute(*values, scheduler="sync")

    pipe = FeaturePipeline.from_specs([s if not isinstance(s, dict) else spec(**s) for s in specs])
    pipe.fit(ddf, compute=compute)
    return pipe, calls


def transform(pipe: FeaturePipeline, ddf) -> pd.DataFrame:
    """Transform ``ddf``; checks dtypes against ``describe`` and that a reloaded pipeline agrees."""
    before = ddf.compute(scheduler="sync")
    out = pipe.transform(ddf).compute(scheduler="sync")
    meta = pipe.describe(ddf._meta)
    pd.testing.assert_series_equal(out.dtypes, meta.dtypes, obj="dtypes vs describe()")
    reloaded = FeaturePipeline.from_json(pipe.to_json()).transform(ddf).compute(scheduler="sync")
    pd.testing.assert_frame_equal(reloaded, out, obj="reloaded pipeline")
    pd.testing.assert_frame_equal(ddf.compute(scheduler="sync"), before, obj="input after transform")
    return out


def fit_transform(specs: list, ddf, data=None) -> tuple[FeaturePipeline, pd.DataFrame]:
    pipe, _ = fit_pipeline(specs, ddf)
    return pipe, transform(pipe, ddf if data is None else data)


def assert_not_mutated(op, pdf: pd.DataFrame) -> None:
    before = pdf.copy(deep=True)
    op.transform(pdf)
    pd.testing.assert_frame_equal(pdf, before)
