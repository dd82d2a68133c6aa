"""A scaler after a fill is fitted in the fill's pass, on the fill's input: its state equals a
fit on the filled values (:func:`dpipe.ops.stats.filled`)."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dpipe.ops.stats import SKETCH_SIZE
from tests.test_pipeline import CountingCompute, fit_one_at_a_time, pipeline, states_close

SCALERS = [
    {"op": "standard_scale", "columns": ["a", "b", "e"]},
    {"op": "minmax_scale", "columns": ["a", "b", "e"]},
    {"op": "robust_scale", "columns": ["a", "b", "e"]},
    {"op": "clip", "columns": ["a", "b", "e"], "quantiles": [0.05, 0.9]},
]


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            # float32, as Parquet files of measurements usually are: the fill stores a float32.
            "a": rng.normal(10, 3, n).astype("float32"),
            "b": rng.exponential(2, n),
            # A nullable integer column: a mean fill is rounded to fit it.
            "i": pd.array(rng.integers(0, 50, n), dtype="Int64"),
            "e": rng.normal(-5, 2, n),
        }
    )
    df.loc[rng.random(n) < 0.15, "a"] = np.nan
    df.loc[rng.random(n) < 0.3, "b"] = np.nan
    df.loc[rng.random(n) < 0.2, "i"] = pd.NA
    # Extreme low values: a fill far from them moves the minimum and the quantiles.
    df.loc[: n // 50, "b"] = -100.0
    return df


@pytest.mark.parametrize("strategy", ["mean", "median", "mode"])
@pytest.mark.parametrize("scaler", SCALERS, ids=[s["op"] for s in SCALERS])
def test_a_scaler_after_a_fill_is_fitted_in_the_same_pass(strategy, scaler):
    data = frame(1500)  # under the sketch's 2048 values: quantiles are exact either way
    ddf = dd.from_pandas(data, npartitions=4)
    entries = ({"op": "fill_missing", "columns": ["a", "b"], "strategy": strategy}, scaler)
    pipe = pipeline(*entries)
    counter = CountingCompute()

    report = pipe.fit(ddf, compute=counter)

    assert counter.calls == 1 and report.phases == [["features[0]", "features[1]"]]
    reference = fit_one_at_a_time(pipeline(*entries), ddf)
    assert states_close([op.get_state() for op in pipe.ops], [op.get_state() for op in reference.ops])
    # The saved statistics are those of the filled values, as a two-pass fit saves them.
    two_pass = pipeline(*entries)
    saved = two_pass.fit(ddf, compute=CountingCompute(), derive=False).stats["features[1]"]
    for key, stat in report.stats["features[1]"].items():
        pd.testing.assert_frame_equal(stat, saved[key], check_exact=False, rtol=1e-12)


def test_an_integer_column_takes_the_rounded_constant():
    data = frame(800)
    ddf = dd.from_pandas(data, npartitions=3)
    entries = (
        {"op": "fill_missing", "columns": ["i"], "strategy": "mean"},
        {"op": "standard_scale", "columns": ["i"]},
    )
    pipe = pipeline(*entries)
    pipe.fit(ddf, compute=CountingCompute())
    filled = data["i"].fillna(round(data["i"].mean())).astype("float64")
    assert pipe.ops[1].mean_["i"] == pytest.approx(filled.mean(), rel=1e-12)
    assert pipe.ops[1].scale_["i"] == pytest.approx(filled.std(ddof=0), rel=1e-12)


def test_past_the_sketch_size_quantiles_stay_within_its_rank_error():
    data = frame(40_000, seed=3)
    ddf = dd.from_pandas(data, npartitions=8)
    entries = (
        {"op": "fill_missing", "columns": ["a", "b"], "strategy": "median"},
        {"op": "robust_scale", "columns": ["a", "b"], "quantile_range": [10, 90]},
    )
    pipe = pipeline(*entries)
    pipe.fit(ddf, compute=CountingCompute())
    median_b = pipe.ops[0].values_["b"]
    b = data["b"].fillna(median_b)
    # Within 2/SKETCH_SIZE in rank of the exact quantiles of the filled values.
    err = 2 / SKETCH_SIZE
    low, high = b.quantile([0.1 - err, 0.1 + err]), b.quantile([0.9 - err, 0.9 + err])
    span = pipe.ops[1].scale_["b"]
    assert high.iloc[0] - low.iloc[1] <= span <= high.iloc[1] - low.iloc[0]
    assert pipe.ops[1].center_["b"] == pytest.approx(b.median(), abs=b.std() * 4 / SKETCH_SIZE)


def test_the_fit_rows_are_the_scalers_rows_too():
    data = frame(1000).assign(side=np.where(np.arange(1000) % 4 == 0, "valid", "train"))
    ddf = dd.from_pandas(data, npartitions=4)
    entries = (
        {"op": "fill_missing", "columns": ["b"], "strategy": "mean"},
        {"op": "standard_scale", "columns": ["b"]},
    )
    pipe = pipeline(*entries)
    pipe.fit(ddf, fit_rows=lambda f: f[f["side"] == "train"], compute=CountingCompute())
    train = data.loc[data["side"] == "train", "b"]
    filled = train.fillna(train.mean())
    assert pipe.ops[1].scale_["b"] == pytest.approx(filled.std(ddof=0), rel=1e-12)


@pytest.mark.parametrize(
    ("between", "phases"),
    [
        # A filter between them changes the rows the scaler sees after the fill.
        ({"op": "filter", "expr": "e > -6"}, [0, -1, 1]),
        # A column rewritten between them is not the fill's output any more.
        ({"op": "derive", "name": "b", "expr": "b * 2"}, [0, -1, 1]),
        # Other columns written between them are fine.
        ({"op": "derive", "name": "z", "expr": "e * 2"}, [0, -1, 0]),
    ],
    ids=["filter", "rewritten", "unrelated"],
)
def test_what_comes_between_decides(between, phases):
    entries = (
        {"op": "fill_missing", "columns": ["b"], "strategy": "mean"},
        between,
        {"op": "standard_scale", "columns": ["b"]},
    )
    pipe = pipeline(*entries)
    assert pipe.plan()[0] == phases
    ddf = dd.from_pandas(frame(600), npartitions=3)
    pipe.fit(ddf, compute=CountingCompute())
    reference = fit_one_at_a_time(pipeline(*entries), ddf)
    assert states_close([op.get_state() for op in pipe.ops], [op.get_state() for op in reference.ops])


def test_other_inputs_must_be_final_where_the_fill_reads():
    entries = (
        {"op": "standard_scale", "columns": ["e"]},
        {"op": "fill_missing", "columns": ["b"], "strategy": "mean"},
        # `e` is final only after phase 0, `b` after the fill: the fill decides nothing here.
        {"op": "standard_scale", "columns": ["b", "e"]},
        # A fill's output through a derived column is no fill's output.
        {"op": "derive", "name": "g", "expr": "b + 1"},
        {"op": "minmax_scale", "columns": ["g"]},
    )
    assert pipeline(*entries).plan()[0] == [0, 0, 1, -1, 2]


def test_a_fill_after_a_fill_and_incremental_merges_are_not_derived():
    entries = (
        {"op": "fill_missing", "columns": ["b"], "strategy": "mean"},
        {"op": "fill_missing", "columns": ["b"], "strategy": "median"},
        {"op": "standard_scale", "columns": ["a"]},
    )
    pipe = pipeline(*entries)
    assert pipe.plan()[0] == [0, 1, 0]
    scaled = pipeline(
        {"op": "fill_missing", "columns": ["b"], "strategy": "mean"}, {"op": "standard_scale", "columns": ["b"]}
    )
    # Saved statistics of the scaler hold the old constant: an incremental run must refit.
    assert scaled.plan()[0] == [0, 0]
    assert scaled.not_incremental() == [
        "features[1] (standard_scale): it reads the output of another fitted op, whose statistics change with new rows"
    ]
