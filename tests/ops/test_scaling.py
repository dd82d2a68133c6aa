"""minmax_scale and robust_scale against scikit-learn (and dask-ml) on the same data."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.preprocessing import MinMaxScaler, RobustScaler

from dpipe.errors import ColumnError
from dpipe.ops import build_op
from tests.ops.conftest import STRING, assert_not_mutated, fit_pipeline, spec, transform, with_empty_partition

COLUMNS = ["x", "y", "k"]


@pytest.fixture
def data() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 1200
    df = pd.DataFrame(
        {
            "x": rng.normal(100, 20, n),
            "y": rng.lognormal(3, 1, n),
            "k": pd.array(rng.integers(-5, 40, n), dtype="Int64"),
            "s": pd.array(rng.choice(["a", "b"], n), dtype=STRING),
        }
    )
    df.loc[rng.random(n) < 0.1, "x"] = np.nan
    df.loc[rng.random(n) < 0.1, "k"] = pd.NA
    return df


@pytest.fixture
def unseen() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [-1e3, 100.0, np.nan],
            "y": [0.0, 1e9, 5.0],
            "k": pd.array([None, 99, -50], dtype="Int64"),
            "s": pd.array(["a", None, "c"], dtype=STRING),
        }
    )


def _floats(frame):
    return frame[COLUMNS].astype("float64").to_numpy()


@pytest.mark.parametrize("feature_range", [[0, 1], [-3, 2.5]])
def test_minmax_scale_matches_sklearn(data, unseen, feature_range):
    pipe, calls = fit_pipeline(
        [{"op": "minmax_scale", "columns": COLUMNS, "feature_range": feature_range}], with_empty_partition(data)
    )
    assert calls == [1]
    # scikit-learn ignores NaN when fitting and keeps it when transforming, like dpipe.
    ref = MinMaxScaler(feature_range=tuple(feature_range)).fit(_floats(data))
    op = pipe.ops[0]
    np.testing.assert_allclose([op.scale_[c] for c in COLUMNS], ref.scale_, rtol=1e-14)
    np.testing.assert_allclose([op.offset_[c] for c in COLUMNS], ref.min_, rtol=1e-14)
    for frame in (data, unseen):
        out = transform(pipe, with_empty_partition(frame, 2))
        np.testing.assert_allclose(_floats(out), ref.transform(_floats(frame)), rtol=1e-12, atol=1e-12)
        assert (out[COLUMNS].dtypes == "float64").all()
        pd.testing.assert_series_equal(out["s"], frame["s"])


def test_minmax_scale_matches_dask_ml(data):
    from dask_ml.preprocessing import MinMaxScaler as DaskMinMaxScaler

    ddf = dd.from_pandas(data[["x", "y"]], npartitions=4)
    ref = DaskMinMaxScaler().fit(ddf)
    pipe, _ = fit_pipeline([{"op": "minmax_scale", "columns": ["x", "y"]}], ddf)
    np.testing.assert_allclose([pipe.ops[0].scale_[c] for c in ("x", "y")], np.asarray(ref.scale_), rtol=1e-14)
    np.testing.assert_allclose([pipe.ops[0].offset_[c] for c in ("x", "y")], np.asarray(ref.min_), rtol=1e-14)


def test_minmax_constant_and_empty_columns_like_sklearn():
    df = pd.DataFrame({"c": np.full(40, 7.5), "e": np.full(40, np.nan)})
    pipe, _ = fit_pipeline(
        [{"op": "minmax_scale", "columns": ["c", "e"], "feature_range": [2, 3]}], dd.from_pandas(df, npartitions=4)
    )
    out = transform(pipe, dd.from_pandas(df, npartitions=4))
    np.testing.assert_array_equal(out["c"], MinMaxScaler(feature_range=(2, 3)).fit_transform(df[["c"]])[:, 0])
    assert (out["c"] == 2).all() and out["e"].isna().all()


@pytest.mark.parametrize(
    ("params", "sk"),
    [
        ({}, {}),
        ({"quantile_range": [10, 90]}, {"quantile_range": (10, 90)}),
        ({"with_centering": False}, {"with_centering": False}),
        ({"with_scaling": False}, {"with_scaling": False}),
    ],
)
def test_robust_scale_matches_sklearn(data, unseen, params, sk):
    pipe, calls = fit_pipeline([{"op": "robust_scale", "columns": COLUMNS, **params}], with_empty_partition(data))
    assert calls == [3]  # one sketch per column, one compute
    ref = RobustScaler(**sk).fit(_floats(data))
    op = pipe.ops[0]
    if ref.center_ is not None:
        np.testing.assert_allclose([op.center_[c] for c in COLUMNS], ref.center_, rtol=1e-14)
    if ref.scale_ is not None:
        np.testing.assert_allclose([op.scale_[c] for c in COLUMNS], ref.scale_, rtol=1e-14)
    for frame in (data, unseen):
        out = transform(pipe, with_empty_partition(frame, 2))
        np.testing.assert_allclose(_floats(out), ref.transform(_floats(frame)), rtol=1e-12, atol=1e-12)
        assert out["k"].isna().equals(frame["k"].isna())


def test_robust_scale_of_many_values_stays_close_to_sklearn():
    rng = np.random.default_rng(9)
    x = rng.pareto(2.0, 60_000)
    pipe, _ = fit_pipeline(
        [{"op": "robust_scale", "columns": ["x"]}], dd.from_pandas(pd.DataFrame({"x": x}), npartitions=8)
    )
    ref = RobustScaler().fit(x.reshape(-1, 1))
    # Past 2048 values the sketch is approximate: within a fraction of a percent here.
    assert pipe.ops[0].center_["x"] == pytest.approx(ref.center_[0], rel=0.01)
    assert pipe.ops[0].scale_["x"] == pytest.approx(ref.scale_[0], rel=0.01)


def test_robust_scale_constant_column_is_only_centred():
    df = pd.DataFrame({"c": np.full(50, 3.0)})
    pipe, _ = fit_pipeline([{"op": "robust_scale", "columns": ["c"]}], dd.from_pandas(df, npartitions=3))
    assert pipe.ops[0].scale_ == {"c": 1.0}
    out = transform(pipe, dd.from_pandas(df, npartitions=3))
    np.testing.assert_array_equal(out["c"], RobustScaler().fit_transform(df)[:, 0])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"op": "minmax_scale", "feature_range": [1, 1]},
            r"`feature_range` must be increasing \(low < high\), got \[1.0, 1.0\]",
        ),
        ({"op": "minmax_scale", "feature_range": [0, 1, 2]}, r"`feature_range` needs two numbers"),
        (
            {"op": "robust_scale", "quantile_range": [25, 175]},
            r"`quantile_range` must lie within \[0, 100\], got \[25.0, 175.0\]",
        ),
        ({"op": "robust_scale", "quantile_range": [75, 25]}, r"`quantile_range` must be increasing"),
    ],
)
def test_spec_errors(entry, message):
    with pytest.raises(ValidationError, match=message):
        spec(columns=["x"], **entry)


@pytest.mark.parametrize("op", ["minmax_scale", "robust_scale"])
def test_scalers_refuse_text_and_keep_input(data, op):
    with pytest.raises(ColumnError, match=rf"features\[2\] \({op}\): needs numeric columns, got \{{'s': 'string'\}}"):
        build_op(spec(op, columns=["x", "s"]), "features[2]").describe(data.iloc[:0])
    pipe, _ = fit_pipeline([{"op": op, "columns": COLUMNS}], dd.from_pandas(data, npartitions=2))
    assert_not_mutated(pipe.ops[0], data)
