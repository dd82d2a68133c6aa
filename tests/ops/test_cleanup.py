"""Cleanup ops against pandas on multi-partition data with nulls and an empty partition."""

from __future__ import annotations

import re

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from dpipe.errors import ColumnError, DataError
from dpipe.ops import build_op
from dpipe.pipeline import FeaturePipeline
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
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 400
    df = pd.DataFrame(
        {
            "x": rng.normal(50, 30, n),
            "k": pd.array(rng.choice([3, 1, 2, 7], n, p=[0.3, 0.3, 0.2, 0.2]), dtype="Int64"),
            "city": pd.array(rng.choice(["rot", "ams", "utr"], n, p=[0.4, 0.4, 0.2]), dtype=STRING),
            "flag": rng.random(n) < 0.5,
        }
    )
    df.loc[rng.random(n) < 0.1, "x"] = np.nan
    df.loc[rng.random(n) < 0.1, "k"] = pd.NA
    df.loc[rng.random(n) < 0.1, "city"] = pd.NA
    return df


# -- fill_missing: mode ----------------------------------------------------------------------------
def test_fill_mode_matches_pandas_for_strings_and_numbers(frame):
    pipe, calls = fit_pipeline(
        [{"op": "fill_missing", "columns": ["k", "city"], "strategy": "mode"}], with_empty_partition(frame)
    )
    assert calls == [2]
    op = pipe.ops[0]
    # pandas' mode lists every most frequent value, sorted: the first is the smallest.
    assert op.values_ == {"k": int(frame["k"].mode()[0]), "city": frame["city"].mode()[0]}
    out = transform(pipe, with_empty_partition(frame))
    expected = frame.fillna({"k": op.values_["k"], "city": op.values_["city"]})
    pd.testing.assert_frame_equal(out, expected)


def test_fill_mode_ties_go_to_the_smallest_value():
    df = pd.DataFrame({"n": [10, 9, 2, 10, 2, 9, np.nan], "s": ["b", "a", "b", "a", None, "c", "c"]})
    pipe, _ = fit_pipeline(
        [{"op": "fill_missing", "columns": ["n", "s"], "strategy": "mode"}], dd.from_pandas(df, npartitions=3)
    )
    assert pipe.ops[0].values_ == {"n": 2.0, "s": "a"}
    assert pipe.ops[0].values_ == {"n": df["n"].mode().min(), "s": df["s"].mode().min()}


def test_fill_mode_rejects_date_times():
    df = pd.DataFrame({"t": pd.to_datetime(["2024-01-01", None])})
    op = build_op(spec("fill_missing", columns=["t"], strategy="mode"), "features[1]")
    with pytest.raises(ColumnError, match=r"features\[1\] \(fill_missing\): strategy 'mode' supports numbers"):
        op.describe(df.iloc[:0])


# -- drop_missing ----------------------------------------------------------------------------------
def test_drop_missing_matches_pandas_dropna(frame):
    pipe, calls = fit_pipeline([{"op": "drop_missing", "columns": ["x", "city"]}], with_empty_partition(frame))
    assert calls == [] and pipe.ops[0].filters_rows
    out = transform(pipe, with_empty_partition(frame))
    pd.testing.assert_frame_equal(out, frame.dropna(subset=["x", "city"]))
    assert out["k"].isna().any()  # other columns are not looked at


# -- cast ------------------------------------------------------------------------------------------
@pytest.fixture
def raw() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "num": pd.array(["1.5", "-2", None, "3e2", "7"], dtype=STRING),
            "int": pd.array(["1", "2", None, "-4", "5"], dtype=STRING),
            "flt": [1.0, np.nan, 3.0, -4.0, 5.0],
            "yes": pd.array(["true", "No", None, "1", "F"], dtype=STRING),
            "zero_one": [0, 1, 1, 0, 1],
            "day": pd.array(["2024-05-01", "2024-05-02T13:45:00", None, "2023-12-31", "2024-02-29"], dtype=STRING),
            "code": [10, 20, 30, 40, 50],
        }
    )


CASTS = {
    "num": "float32", "int": "int64", "flt": "int32", "yes": "bool", "zero_one": "bool", "day": "datetime",
    "code": "string",
}  # fmt: skip


def test_cast_matches_pandas(raw):
    ddf = with_empty_partition(raw, 2)
    _, out = fit_transform([{"op": "cast", "columns": CASTS}], ddf)
    expected = pd.DataFrame(
        {
            "num": pd.Series([1.5, -2, np.nan, 300, 7], dtype="float32"),
            "int": pd.array([1, 2, None, -4, 5], dtype="Int64"),
            "flt": pd.array([1, None, 3, -4, 5], dtype="Int32"),
            "yes": pd.array([True, False, None, True, False], dtype="boolean"),
            "zero_one": pd.array([False, True, True, False, True], dtype="boolean"),
            "day": pd.Series(
                [
                    pd.Timestamp("2024-05-01"),
                    pd.Timestamp("2024-05-02 13:45"),
                    None,
                    pd.Timestamp("2023-12-31"),
                    pd.Timestamp("2024-02-29"),
                ],
                dtype="datetime64[us]",
            ),
            "code": pd.array(["10", "20", "30", "40", "50"], dtype=STRING),
        }
    )
    pd.testing.assert_frame_equal(out, expected)


def test_cast_strings_with_a_format_and_offsets():
    df = pd.DataFrame(
        {"d": ["01/05/2024 10:00", "31/12/2023 23:59", None], "iso": ["2024-05-01T12:00:00+02:00", None, "2024-05-01"]}
    )
    op = build_op(spec("cast", columns={"d": "datetime"}, format="%d/%m/%Y %H:%M"), "features[0]")
    out = op.transform(df)
    assert out["d"].tolist()[:2] == [pd.Timestamp("2024-05-01 10:00"), pd.Timestamp("2023-12-31 23:59")]
    # An offset is converted to UTC; the result is one naive dtype whatever the partition holds.
    iso = build_op(spec("cast", columns={"iso": "datetime"}), "features[0]").transform(df)["iso"]
    assert iso.dtype == "datetime64[us]"
    assert iso[0] == pd.Timestamp("2024-05-01 10:00") and iso[2] == pd.Timestamp("2024-05-01")


@pytest.mark.parametrize(
    ("column", "target", "values", "shown"),
    [
        ("a", "float64", ["1", "abc", None], "['abc']"),
        ("a", "int64", ["1", "2.5", "x"], "['2.5', 'x']"),
        ("a", "bool", ["true", "maybe", None], "['maybe']"),
        ("a", "datetime", ["2024-01-01", "yesterday", None], "['yesterday']"),
    ],
)
def test_cast_names_the_column_of_unparseable_values_or_coerces(column, target, values, shown):
    df = pd.DataFrame({column: pd.array(values, dtype=STRING)})
    op = build_op(spec("cast", columns={column: target}), "features[3]")
    message = rf"features\[3\] \(cast\): column 'a' has \d value\(s\) that cannot be cast to {target}, e\.g\. "
    with pytest.raises(DataError, match=message + re.escape(shown) + r"\n\nHint: .*errors: coerce"):
        op.transform(df)
    coerced = build_op(spec("cast", columns={column: target}, errors="coerce"), "features[3]").transform(df)
    good = df[column].notna() & ~df[column].isin(["abc", "2.5", "x", "maybe", "yesterday"]).fillna(False)
    assert coerced[column].notna().tolist() == good.astype(bool).tolist()


def test_cast_errors_travel_from_dask_tasks(raw):
    pipe = FeaturePipeline.from_specs([spec("cast", columns={"day": "int64"})])
    with pytest.raises(DataError, match=r"column 'day' has \d value\(s\) that cannot be cast to int64"):
        pipe.transform(dd.from_pandas(raw, npartitions=2)).compute(scheduler="sync")


def test_cast_refuses_numbers_to_date_times(raw):
    op = build_op(spec("cast", columns={"code": "datetime"}), "features[0]")
    with pytest.raises(
        ColumnError, match=r"cannot cast between numbers and date-times: \{'code': 'int64 -> datetime'\}"
    ):
        op.describe(raw.iloc[:0])


def test_cast_keeps_big_integers_exact():
    df = pd.DataFrame({"id": np.array([2**62 + 1, 5], dtype="int64")})
    out = build_op(spec("cast", columns={"id": "int64"}), "f").transform(df)
    assert out["id"].dtype == "Int64" and out["id"][0] == 2**62 + 1


# -- clip ------------------------------------------------------------------------------------------
def test_clip_fixed_bounds_match_pandas(frame):
    pipe, calls = fit_pipeline(
        [{"op": "clip", "columns": ["x", "k"], "lower": 0, "upper": 60}], with_empty_partition(frame)
    )
    assert calls == [] and not pipe.ops[0].stateful
    out = transform(pipe, with_empty_partition(frame))
    pd.testing.assert_series_equal(out["x"], frame["x"].clip(0, 60))
    pd.testing.assert_series_equal(out["k"], frame["k"].astype("float64").clip(0, 60))
    assert out["x"].isna().equals(frame["x"].isna())


def test_clip_one_sided():
    df = pd.DataFrame({"x": [-5.0, 0.5, 7.0, np.nan]})
    out = build_op(spec("clip", columns=["x"], upper=1), "f").transform(df)
    np.testing.assert_array_equal(out["x"], [-5.0, 0.5, 1.0, np.nan])


def test_clip_quantiles_are_learned_like_numpy(frame):
    pipe, calls = fit_pipeline(
        [{"op": "clip", "columns": ["x", "k"], "quantiles": [0.05, 0.9]}], with_empty_partition(frame)
    )
    assert calls == [2]
    op = pipe.ops[0]
    x = frame["x"].dropna().to_numpy()
    k = frame["k"].dropna().to_numpy(dtype="float64")
    assert op.lower_ == {"x": pytest.approx(np.quantile(x, 0.05)), "k": np.quantile(k, 0.05)}
    assert op.upper_ == {"x": pytest.approx(np.quantile(x, 0.9)), "k": np.quantile(k, 0.9)}
    out = transform(pipe, with_empty_partition(frame))
    np.testing.assert_allclose(out["x"], frame["x"].clip(np.quantile(x, 0.05), np.quantile(x, 0.9)))


# -- rename / select / drop ------------------------------------------------------------------------
def test_rename_select_drop_match_pandas(frame):
    specs = [
        {"op": "rename", "columns": {"x": "amount", "city": "town"}},
        {"op": "drop", "columns": ["flag"]},
        {"op": "standard_scale", "columns": ["amount"]},
        {"op": "select", "columns": ["town", "amount"]},
    ]
    pipe, calls = fit_pipeline(specs, with_empty_partition(frame))
    assert calls == [1]
    out = transform(pipe, with_empty_partition(frame))
    ref = frame.rename(columns={"x": "amount", "city": "town"})[["town", "amount"]]
    assert list(out.columns) == ["town", "amount"]
    pd.testing.assert_series_equal(out["town"], ref["town"])
    np.testing.assert_allclose(out["amount"], (ref["amount"] - ref["amount"].mean()) / ref["amount"].std(ddof=0))


def test_column_set_ops_declare_what_they_read(frame):
    specs = [
        {"op": "rename", "columns": {"x": "amount"}},
        {"op": "drop", "columns": ["flag"]},
        {"op": "derive", "name": "double", "expr": "amount * 2"},
        {"op": "select", "columns": ["double", "city", "k"]},
    ]
    pipe = FeaturePipeline.from_specs([spec(**s) for s in specs])
    # What prediction must read for the model's `double`: `x` (renamed), `flag` (dropped, which
    # checks it exists), and everything `select` keeps.
    assert pipe.required_columns(["double"]) == {"x", "flag", "city", "k"}
    assert set(pipe.describe(frame.iloc[:0]).columns) == {"double", "city", "k"}


def test_rename_swap_and_taken_names(frame):
    out = build_op(spec("rename", columns={"x": "k", "k": "x"}), "f").transform(frame)
    pd.testing.assert_series_equal(out["k"], frame["x"].rename("k"))
    op = build_op(spec("rename", columns={"x": "city"}), "features[2]")
    with pytest.raises(
        ColumnError, match=r"features\[2\] \(rename\): new name\(s\) \['city'\] are taken by existing columns"
    ):
        op.describe(frame.iloc[:0])


@pytest.mark.parametrize("op", ["select", "drop", "drop_missing"])
def test_column_ops_name_missing_columns(frame, op):
    with pytest.raises(
        ColumnError, match=rf"(?s)features\[1\] \({op}\): column\(s\) \['cty'\] not found.*did you mean 'city'"
    ):
        build_op(spec(op, columns=["cty"]), "features[1]").describe(frame.iloc[:0])


# -- purity and spec validation --------------------------------------------------------------------
@pytest.mark.parametrize(
    "entry",
    [
        {"op": "fill_missing", "columns": ["k", "city"], "strategy": "mode"},
        {"op": "drop_missing", "columns": ["x"]},
        {"op": "cast", "columns": {"x": "float32", "k": "string", "city": "string"}},
        {"op": "clip", "columns": ["x"], "quantiles": [0.1, 0.9]},
        {"op": "rename", "columns": {"x": "y"}},
        {"op": "select", "columns": ["x"]},
        {"op": "drop", "columns": ["x"]},
    ],
)
def test_transform_never_mutates_its_input(frame, entry):
    pipe, _ = fit_pipeline([entry], dd.from_pandas(frame, npartitions=2))
    assert_not_mutated(pipe.ops[0], frame)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"op": "clip", "columns": ["x"]}, "needs `lower` and/or `upper`, or `quantiles"),
        (
            {"op": "clip", "columns": ["x"], "lower": 5, "upper": 1},
            "`lower` must not exceed `upper`, got lower=5 > upper=1",
        ),
        (
            {"op": "clip", "columns": ["x"], "quantiles": [0.1, 1.5]},
            r"`quantiles` must lie within \[0, 1\], got \[0.1, 1.5\]",
        ),
        ({"op": "clip", "columns": ["x"], "quantiles": [0.9, 0.1]}, r"`quantiles` must be increasing"),
        ({"op": "clip", "columns": ["x"], "lower": 0, "quantiles": [0.1, 0.9]}, "not both"),
        (
            {"op": "cast", "columns": {"x": "flaot"}},
            r"unknown cast type\(s\) \{'x': 'flaot'\}; expected one of \['float32'",
        ),
        ({"op": "cast", "columns": {"x": "category"}}, "use the `categorical` op for categories"),
        ({"op": "rename", "columns": {"a": "c", "b": "c"}}, r"several columns renamed to the same name: \['c'\]"),
        ({"op": "rename", "columns": {"a": "__dpipe_x"}}, "reserved by dpipe"),
        ({"op": "select", "columns": ["a", "a"]}, r"columns listed more than once: \['a'\]"),
        ({"op": "drop", "columns": []}, "at least 1 item"),
    ],
)
def test_spec_rejects_bad_params(entry, message):
    with pytest.raises(ValidationError, match=message):
        spec(**entry)


def test_yaml_spec_errors_name_the_feature():
    from dpipe.errors import SpecError
    from dpipe.spec import job_from_dict

    job = {
        "source": {"uri": "data.parquet"},
        "label": {"column": "y"},
        "features": [{"op": "select", "columns": ["a"]}, {"op": "clip", "columns": ["a"], "quantiles": [0.2, 2]}],
    }
    with pytest.raises(SpecError, match=r"features\[1\]\.quantiles: `quantiles` must lie within \[0, 1\]"):
        job_from_dict(job, origin="job.yaml")
