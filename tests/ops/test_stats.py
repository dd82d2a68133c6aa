"""Mergeable statistics against numpy on the same data, over many partitions."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dpipe.ops.stats import (
    SKETCH_SIZE,
    moments,
    quantile_sketch,
    quantile_sketches,
    sketch_quantile,
    split_sketches,
    value_counts,
)


def compute(lazy):
    (value,) = dask.compute(lazy, scheduler="sync")
    return value


def rank_error(data: np.ndarray, estimate: float, q: float) -> float:
    """How far (as a fraction of the rows) ``estimate`` sits from the ``q`` quantile's rank."""
    data = np.sort(data)
    lo = np.searchsorted(data, estimate, side="left") / len(data)
    hi = np.searchsorted(data, estimate, side="right") / len(data)
    return 0.0 if lo <= q <= hi else min(abs(lo - q), abs(hi - q))


@pytest.mark.parametrize("npartitions", [1, 7, 20])  # 20 > split_every: a combine level runs
def test_moments_match_numpy_with_a_large_offset(npartitions):
    rng = np.random.default_rng(0)
    x = 1e12 + rng.normal(0, 1, 5000)
    y = rng.normal(-3, 10, 5000)
    ddf = dd.from_pandas(pd.DataFrame({"x": x, "y": y}), npartitions=npartitions)

    m = compute(moments(ddf, ["x", "y"]))

    for c, values in {"x": x, "y": y}.items():
        assert m.loc[c, "n"] == len(values)
        np.testing.assert_allclose(m.loc[c, "mean"], values.mean(), rtol=1e-15)
        # sum/sum-of-squares would lose every digit of x's variance (~1) against x**2 ~ 1e24.
        # What is left is the spacing of float64 near 1e12 (1.2e-4) in the partition means.
        np.testing.assert_allclose(m.loc[c, "m2"] / m.loc[c, "n"], values.var(), rtol=1e-5)


def test_moments_skip_nulls_and_survive_all_null_partitions():
    # 16 partitions: the first 8 (one combine group) hold nothing but nulls in `x`.
    x = np.r_[np.full(800, np.nan), np.arange(800.0)]
    ddf = dd.from_pandas(pd.DataFrame({"x": x, "empty": np.nan}), npartitions=16)

    m = compute(moments(ddf, ["x", "empty"]))

    valid = x[~np.isnan(x)]
    assert m.loc["x", "n"] == 800
    assert m.loc["x", "mean"] == pytest.approx(valid.mean())
    assert m.loc["x", "m2"] / 800 == pytest.approx(valid.var())
    assert m.loc["empty", "n"] == 0
    assert np.isnan(m.loc["empty", "mean"]) and np.isnan(m.loc["empty", "m2"])


def test_value_counts_drops_nulls():
    s = pd.Series(["a", "b", None, "a", "c", "a", None], dtype="string[pyarrow]")
    counts = compute(value_counts(dd.from_pandas(s.to_frame("c"), npartitions=3), "c"))
    assert counts.to_dict() == {"a": 3, "b": 1, "c": 1}


@pytest.mark.parametrize("npartitions", [1, 4, 9])
def test_sketch_is_exact_below_the_sketch_size(npartitions):
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 2, SKETCH_SIZE - 48)
    x[::50] = np.nan
    ddf = dd.from_pandas(pd.DataFrame({"x": x}), npartitions=npartitions)

    sketch = compute(quantile_sketch(ddf, "x"))

    valid = x[~np.isnan(x)]
    assert len(sketch) == len(valid)
    for q in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        assert sketch_quantile(sketch, q) == np.quantile(valid, q)


@pytest.mark.parametrize("npartitions", [1, 8, 25])
def test_sketch_rank_error_is_small_on_skewed_data(npartitions):
    rng = np.random.default_rng(2)
    x = rng.lognormal(0, 2.5, 100_000)
    ddf = dd.from_pandas(pd.DataFrame({"x": x}), npartitions=npartitions)

    sketch = compute(quantile_sketch(ddf, "x"))

    assert len(sketch) <= SKETCH_SIZE
    assert sketch["weight"].sum() == pytest.approx(len(x))
    for q in (0.01, 0.1, 0.5, 0.9, 0.99):
        assert rank_error(x, sketch_quantile(sketch, q), q) < 0.005, q


@pytest.mark.parametrize("npartitions", [1, 25])  # 25 > split_every: a combine level runs
def test_sketches_of_many_columns_in_one_reduction_are_each_columns_sketch(npartitions):
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"a": rng.lognormal(0, 2, 50_000), "b": rng.normal(0, 1, 50_000), "c": np.nan})
    df.loc[::7, "b"] = np.nan
    df.loc[:100, "c"] = np.arange(101.0)  # below the sketch's size: exact
    ddf = dd.from_pandas(df, npartitions=npartitions)

    lazy = quantile_sketches(ddf, ["a", "b", "c"])
    assert len(lazy.dask) < 4 * npartitions + 10  # one task per partition, not one per column too
    together = split_sketches(compute(lazy), ["a", "b", "c", "missing"])

    for c in ("a", "b", "c"):
        pd.testing.assert_frame_equal(together[c], compute(quantile_sketch(ddf, c)).reset_index(drop=True), obj=c)
    assert together["missing"].empty


def test_sketch_of_no_values_has_no_quantile():
    ddf = dd.from_pandas(pd.DataFrame({"x": np.full(10, np.nan)}), npartitions=3)
    sketch = compute(quantile_sketch(ddf, "x"))
    assert sketch.empty
    assert sketch_quantile(sketch, 0.5) is None


@pytest.mark.parametrize("dtype", ["float64", "float32", "Float32", "int64"])
@pytest.mark.parametrize("n", [0, 1, 2047, 2048, 2049, 130_001])
def test_a_partitions_sketch_is_the_weighted_compression_of_unit_weights(n, dtype):
    """`_chunk_sketch` sorts without weights (faster), float32 as it is (faster still): the same
    points as `_compress` with weight 1 of the values as float64, missing ones left out."""
    from dpipe.ops.stats import SKETCH_SIZE, _chunk_sketch, _compress

    rng = np.random.default_rng(n)
    values = rng.integers(0, 50, n).astype(float) + rng.random(n).round(1)
    missing = rng.random(n) < 0.1
    if dtype == "int64":
        series = pd.Series(values.round().astype("int64"))
    else:
        series = pd.Series(np.where(missing, np.nan, values)).astype(dtype)
    wide = series.to_numpy(dtype="float64", na_value=np.nan)
    kept = wide[~np.isnan(wide)]
    v, w = _compress(kept, np.ones(len(kept)), SKETCH_SIZE)
    pd.testing.assert_frame_equal(_chunk_sketch(series), pd.DataFrame({"value": v, "weight": w}))
