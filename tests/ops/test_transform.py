"""Transformation ops against pandas / numpy / scikit-learn on multi-partition data."""

from __future__ import annotations

import warnings

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.preprocessing import KBinsDiscretizer

from dpipe.errors import ColumnError, DataError
from dpipe.ops import build_op
from tests.ops.conftest import (
    STRING,
    assert_not_mutated,
    fit_pipeline,
    fit_transform,
    spec,
    transform,
    with_empty_partition,
)


@pytest.fixture
def times() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 300
    ts = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 3 * 365 * 86400, n), unit="s")
    ts = pd.Series(ts).astype("datetime64[us]")
    ts[rng.random(n) < 0.1] = pd.NaT
    text = ts.dt.strftime("%d/%m/%Y %H:%M").astype(STRING)
    return pd.DataFrame({"ts": ts, "text": text, "y": np.arange(n, dtype="float64")})


ALL_PARTS = ["year", "quarter", "month", "day", "dayofyear", "weekday", "hour", "minute", "is_weekend", "epoch_seconds"]


def _expected_parts(t: pd.Series) -> dict[str, pd.Series]:
    utc = t.dt.tz_convert("UTC").dt.tz_localize(None) if t.dt.tz is not None else t
    return {
        "year": t.dt.year, "quarter": t.dt.quarter, "month": t.dt.month, "day": t.dt.day,
        "dayofyear": t.dt.dayofyear, "weekday": t.dt.dayofweek, "hour": t.dt.hour, "minute": t.dt.minute,
        "is_weekend": t.dt.dayofweek.isin([5, 6]).where(t.notna()),
        "epoch_seconds": (utc - pd.Timestamp("1970-01-01")).dt.total_seconds(),
    }  # fmt: skip


def test_datetime_parts_match_pandas(times):
    entry = {"op": "datetime_parts", "columns": ["ts"], "parts": ALL_PARTS}
    _, out = fit_transform([entry], with_empty_partition(times))
    for part, expected in _expected_parts(times["ts"]).items():
        dtype = "float64" if part == "epoch_seconds" else "float32"
        pd.testing.assert_series_equal(out[f"ts_{part}"], expected.astype(dtype).rename(f"ts_{part}"), obj=part)
    pd.testing.assert_series_equal(out["ts"], times["ts"])


def test_datetime_parts_of_strings_with_a_format_and_drop(times):
    entry = {
        "op": "datetime_parts",
        "columns": ["text"],
        "parts": ["hour", "weekday"],
        "format": "%d/%m/%Y %H:%M",
        "drop": True,
    }
    _, out = fit_transform([entry], with_empty_partition(times))
    assert list(out.columns) == ["ts", "y", "text_hour", "text_weekday"]
    np.testing.assert_array_equal(out["text_hour"], times["ts"].dt.hour.astype("float32"))
    np.testing.assert_array_equal(out["text_weekday"], times["ts"].dt.weekday.astype("float32"))


def test_datetime_parts_keep_wall_clock_of_timezone_aware_columns():
    local = pd.Series(pd.to_datetime(["2024-03-30 23:30", "2024-07-01 08:15", None])).dt.tz_localize("Europe/Amsterdam")
    out = build_op(
        spec("datetime_parts", columns=["t"], parts=["hour", "day", "weekday", "epoch_seconds"]), "f"
    ).transform(pd.DataFrame({"t": local}))
    np.testing.assert_array_equal(out["t_hour"], [23, 8, np.nan])
    np.testing.assert_array_equal(out["t_day"], [30, 1, np.nan])
    np.testing.assert_array_equal(out["t_weekday"], [5, 0, np.nan])  # Saturday, Monday
    # 23:30 in Amsterdam (UTC+1 before the switch) is 22:30 UTC.
    assert out["t_epoch_seconds"][0] == pd.Timestamp("2024-03-30 22:30", tz="UTC").timestamp()


def test_datetime_parts_of_date_objects_are_those_of_their_text():
    """Arrow's date32 reads as ``datetime.date`` objects: converted, not parsed as text, with the same parts."""
    import datetime as dt

    days = [dt.date(2024, 2, 29), None, dt.date(2023, 12, 31)]
    parts = ["year", "dayofyear", "weekday", "epoch_seconds"]
    op = build_op(spec("datetime_parts", columns=["d"], parts=parts), "f")
    objects = op.transform(pd.DataFrame({"d": pd.Series(days, dtype=object)}))
    text = op.transform(pd.DataFrame({"d": pd.Series([str(d) if d else None for d in days], dtype=STRING)}))
    for part in parts:
        pd.testing.assert_series_equal(objects[f"d_{part}"], text[f"d_{part}"], obj=part)
    assert objects["d_dayofyear"].tolist()[::2] == [60, 365]


def test_datetime_parts_name_the_column_of_bad_strings():
    df = pd.DataFrame({"when": ["2024-01-01", "soon", None]})
    op = build_op(spec("datetime_parts", columns=["when"], parts=["month"]), "features[4]")
    with pytest.raises(
        DataError, match=r"features\[4\] \(datetime_parts\): column 'when' has 1 value\(s\) that are not dates"
    ):
        op.transform(df)
    coerced = build_op(spec("datetime_parts", columns=["when"], parts=["month"], errors="coerce"), "f").transform(df)
    np.testing.assert_array_equal(coerced["when_month"], [1, np.nan, np.nan])


def test_datetime_parts_refuses_numbers_and_taken_names(times):
    with pytest.raises(
        ColumnError,
        match=r"features\[0\] \(datetime_parts\): needs date-time or string columns, got \{'y': 'float64'\}",
    ):
        build_op(spec("datetime_parts", columns=["y"], parts=["hour"]), "features[0]").describe(times.iloc[:0])
    taken = times.assign(ts_hour=1.0)
    with pytest.raises(ColumnError, match=r"output column\(s\) \['ts_hour'\] already exist"):
        build_op(spec("datetime_parts", columns=["ts"], parts=["hour"]), "features[0]").describe(taken.iloc[:0])


# -- log / power -------------------------------------------------------------------------------------
@pytest.fixture
def signed() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 5, 200)
    x[::17] = np.nan
    return pd.DataFrame({"x": x, "n": pd.array(rng.integers(-3, 30, 200), dtype="Int64")})


def test_log_matches_numpy_and_drops_values_without_a_log(signed):
    _, out = fit_transform([{"op": "log", "columns": ["x", "n"], "offset": 2.0}], with_empty_partition(signed))
    for c in ("x", "n"):
        x = signed[c].to_numpy(dtype="float64", na_value=np.nan) + 2.0
        expected = np.full(len(x), np.nan)
        expected[x > 0] = np.log(x[x > 0])
        np.testing.assert_allclose(out[c].to_numpy(), expected, rtol=1e-15)
        assert out[c].dtype == "float64"
    assert out["x"].isna().sum() > signed["x"].isna().sum()  # values <= -2 became missing


def test_power_is_signed(signed):
    _, out = fit_transform([{"op": "power", "columns": ["x", "n"], "exponent": 0.5}], with_empty_partition(signed))
    for c in ("x", "n"):
        x = signed[c].to_numpy(dtype="float64", na_value=np.nan)
        np.testing.assert_allclose(out[c].to_numpy(), np.sign(x) * np.sqrt(np.abs(x)), rtol=1e-15)
    assert build_op(spec("power", columns=["x"], exponent=2), "f").transform(pd.DataFrame({"x": [-3.0]}))["x"][0] == -9


# -- bucketize ---------------------------------------------------------------------------------------
@pytest.fixture
def skewed() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 1500
    df = pd.DataFrame(
        {
            "x": rng.lognormal(0, 1, n),
            "ties": rng.choice([0.0, 0.0, 0.0, 1.0, 2.0, 5.0], n),  # many equal quantiles
            "k": pd.array(rng.integers(0, 100, n), dtype="Int64"),
        }
    )
    df.loc[rng.random(n) < 0.1, "x"] = np.nan
    return df


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [2, 5, 10])
def test_bucketize_matches_kbins_discretizer(skewed, strategy, n_bins):
    columns = ["x", "ties", "k"]
    pipe, calls = fit_pipeline(
        [{"op": "bucketize", "columns": columns, "strategy": strategy, "n_bins": n_bins}], with_empty_partition(skewed)
    )
    assert len(calls) == 1
    # Prediction data reaches past the training range at both ends.
    new = pd.DataFrame(
        {
            "x": [-5.0, 0.5, 1e6, np.nan],
            "ties": [-1.0, 0.0, 3.0, 9.0],
            "k": pd.array([-4, 50, None, 400], dtype="Int64"),
        }
    )
    train = transform(pipe, with_empty_partition(skewed))
    predict = transform(pipe, dd.from_pandas(new, npartitions=2))
    for c in columns:
        values = skewed[c].to_numpy(dtype="float64", na_value=np.nan)
        present = ~np.isnan(values)
        # scikit-learn refuses NaN: fit it on the present values (dpipe skips missing ones).
        with warnings.catch_warnings():
            # scikit-learn warns where it merges equal quantiles (column `ties`); dpipe does not.
            warnings.filterwarnings("ignore", "Bins whose width are too small", UserWarning)
            ref = KBinsDiscretizer(n_bins=n_bins, encode="ordinal", strategy=strategy).fit(
                values[present].reshape(-1, 1)
            )
        np.testing.assert_allclose(pipe.ops[0].edges_[c], ref.bin_edges_[0][1:-1], rtol=1e-12)
        expected = np.full(len(values), np.nan)
        expected[present] = ref.transform(values[present].reshape(-1, 1))[:, 0]
        np.testing.assert_array_equal(train[c].to_numpy(), expected.astype("float32"))
        new_values = new[c].to_numpy(dtype="float64", na_value=np.nan)
        ok = ~np.isnan(new_values)
        expected = np.full(len(new_values), np.nan)
        expected[ok] = ref.transform(new_values[ok].reshape(-1, 1))[:, 0]
        np.testing.assert_array_equal(predict[c].to_numpy(), expected.astype("float32"))
        assert train[c].dtype == "float32"


def test_bucketize_fixed_boundaries_match_numpy_digitize(skewed):
    _, out = fit_transform(
        [{"op": "bucketize", "columns": ["x", "k"], "strategy": "fixed", "boundaries": [0.5, 1, 3]}],
        with_empty_partition(skewed),
    )
    for c in ("x", "k"):
        x = skewed[c].to_numpy(dtype="float64", na_value=np.nan)
        expected = np.digitize(x, [0.5, 1, 3], right=False).astype("float32")
        expected[np.isnan(x)] = np.nan
        np.testing.assert_array_equal(out[c].to_numpy(), expected)


def test_bucketize_constant_and_empty_columns():
    df = pd.DataFrame({"c": np.full(30, 4.0), "e": np.full(30, np.nan)})
    pipe, out = fit_transform(
        [{"op": "bucketize", "columns": ["c", "e"], "strategy": "uniform", "n_bins": 4}],
        dd.from_pandas(df, npartitions=3),
    )
    assert pipe.ops[0].edges_ == {"c": [], "e": None}
    assert (out["c"] == 0).all() and out["e"].isna().all()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"strategy": "fixed"}, "strategy 'fixed' needs `boundaries`"),
        (
            {"strategy": "fixed", "boundaries": [1, 3, 2]},
            r"`boundaries` must be strictly increasing, got \[1.0, 3.0, 2.0\]",
        ),
        ({"strategy": "fixed", "boundaries": [1], "n_bins": 3}, "`n_bins` is not used with strategy 'fixed'"),
        ({"strategy": "uniform", "n_bins": 1}, "`n_bins` must be at least 2, got 1"),
        ({"strategy": "quantile", "boundaries": [1]}, "`boundaries` is only used with strategy 'fixed'"),
    ],
)
def test_bucketize_spec_errors(entry, message):
    with pytest.raises(ValidationError, match=message):
        spec("bucketize", columns=["x"], **entry)


def test_other_spec_errors():
    with pytest.raises(ValidationError, match="greater than 0"):
        spec("power", columns=["x"], exponent=0)
    with pytest.raises(ValidationError, match=r"parts listed more than once: \['hour'\]"):
        spec("datetime_parts", columns=["t"], parts=["hour", "hour"])
    with pytest.raises(ValidationError, match="Input should be 'year'"):
        spec("datetime_parts", columns=["t"], parts=["hours"])


@pytest.mark.parametrize("op", ["log", "power", "bucketize"])
def test_numeric_ops_refuse_text(times, op):
    params = {"exponent": 2} if op == "power" else {}
    with pytest.raises(ColumnError, match=rf"features\[0\] \({op}\): needs numeric columns, got \{{'text'"):
        build_op(spec(op, columns=["text"], **params), "features[0]").describe(times.iloc[:0])


@pytest.mark.parametrize(
    "entry",
    [
        {
            "op": "datetime_parts",
            "columns": ["ts", "text"],
            "parts": ["hour"],
            "format": "%d/%m/%Y %H:%M",
            "drop": True,
        },
        {"op": "log", "columns": ["y"]},
        {"op": "power", "columns": ["y"], "exponent": 1.5},
        {"op": "bucketize", "columns": ["y"], "n_bins": 3},
    ],
)
def test_transform_never_mutates_its_input(times, entry):
    pipe, _ = fit_pipeline([entry], dd.from_pandas(times, npartitions=2))
    assert_not_mutated(pipe.ops[0], times)
