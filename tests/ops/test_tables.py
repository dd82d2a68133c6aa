"""Joins, aggregates and dedupe against pandas, through the pipeline's fit (one compute per phase)."""

from __future__ import annotations

import pickle

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dpipe.errors import ColumnError, DataError, SpecError, StateError
from dpipe.pipeline import FeaturePipeline
from dpipe.plan import table_opener
from dpipe.spec import job_from_dict
from tests.test_pipeline import CountingCompute

STRING = pd.StringDtype("pyarrow")


def pipeline(*entries) -> FeaturePipeline:
    pipe = FeaturePipeline.from_specs([_spec(e) for e in entries])
    pipe.bind(table_opener())
    return pipe


def _spec(entry):
    from pydantic import TypeAdapter

    from dpipe.spec import OpSpec

    return TypeAdapter(OpSpec).validate_python(entry)


@pytest.fixture
def flights() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 2000
    return pd.DataFrame(
        {
            "flight_id": np.arange(n, dtype="int64"),
            "tailnum": pd.array(rng.choice([f"N{i}" for i in range(60)] + [None], n), dtype=STRING),
            "origin": pd.array(rng.choice(["EWR", "JFK", "LGA"], n), dtype=STRING),
            "hour": rng.integers(0, 24, n),
            "delay": rng.normal(10, 30, n),
        }
    )


@pytest.fixture
def planes(tmp_path) -> str:
    rng = np.random.default_rng(4)
    # N50..N59 have no plane row: their flights are unmatched.
    tails = [f"N{i}" for i in range(50)]
    table = pd.DataFrame(
        {
            "tailnum": pd.array(tails, dtype=STRING),
            "year": rng.integers(1990, 2013, len(tails)).astype("float64"),
            "seats": rng.integers(50, 400, len(tails)),
        }
    )
    path = tmp_path / "planes"
    path.mkdir()
    table.iloc[:25].to_parquet(path / "part-0.parquet")
    table.iloc[25:].to_parquet(path / "part-1.parquet")
    return str(path)


def _frame(pdf: pd.DataFrame, n: int = 4) -> dd.DataFrame:
    return dd.from_pandas(pdf, npartitions=n, sort=False)


@pytest.mark.parametrize("strategy", ["broadcast", "shuffle"])
def test_join_matches_pandas_merge_and_measures_unmatched_rows(flights, planes, strategy):
    pipe = pipeline(
        {"op": "join", "source": {"uri": planes}, "on": ["tailnum"], "prefix": "plane_", "strategy": strategy}
    )
    counter = CountingCompute()
    report = pipe.fit(_frame(flights), extras=lambda f: {"test": {"n": f.shape[0]}}, compute=counter)
    assert counter.calls == 1  # the measurements ride along with the extras
    out = pipe.transform(_frame(flights)).compute(scheduler="sync")
    right = pd.read_parquet(planes).rename(columns={"year": "plane_year", "seats": "plane_seats"})
    expected = flights.merge(right, how="left", on="tailnum")
    got = out.sort_values("flight_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected.sort_values("flight_id").reset_index(drop=True), check_dtype=False)
    step = report.steps["features[0]"]
    unmatched = int(expected["plane_year"].isna().sum())
    assert step["rows_in"] == step["rows_out"] == len(flights)
    assert step["unmatched"] == unmatched > 0
    assert step["unmatched_fraction"] == pytest.approx(unmatched / len(flights))
    assert step["strategy"] == strategy


def test_inner_join_drops_and_counts_unmatched_rows_in_training_only(flights, planes):
    from dpipe.columns import LABEL

    training = flights.assign(**{LABEL: 1.0})
    pipe = pipeline({"op": "join", "source": {"uri": planes}, "on": ["tailnum"], "how": "inner", "columns": ["seats"]})
    report = pipe.fit(_frame(training), extras=lambda f: {"test": {"n": f.shape[0]}}, compute=CountingCompute())
    out = pipe.transform(_frame(training)).compute(scheduler="sync")
    step = report.steps["features[0]"]
    assert step["rows_out"] == len(out) == len(flights) - step["unmatched"]
    assert list(out.columns) == [*training.columns, "seats"]
    # Prediction (no label columns) scores every row it is given.
    assert len(pipe.transform(_frame(flights)).compute(scheduler="sync")) == len(flights)


def test_join_keys_missing_values_match_nothing_and_ids_keep_their_type(tmp_path):
    big = 2**60
    left = pd.DataFrame(
        {
            "uid": pd.array([big, big + 1, big + 2, None], dtype="Int64"),
            "k": pd.array(["a", None, "b", None], dtype=STRING),
        }
    )
    right = pd.DataFrame(
        {"uid": np.array([big + 1, big + 3], dtype="uint64"), "k": pd.array([None, "b"], dtype=STRING), "v": [1, 2]}
    )
    (tmp_path / "r").mkdir()
    right.to_parquet(tmp_path / "r" / "part-0.parquet")
    pipe = pipeline({"op": "join", "source": {"uri": str(tmp_path / "r")}, "on": ["uid"], "columns": ["v"]})
    report = pipe.fit(_frame(left, 2), extras=lambda f: {"test": {"n": f.shape[0]}}, compute=CountingCompute())
    out = pipe.transform(_frame(left, 2)).compute(scheduler="sync")
    # 64-bit ids compare exactly (as float64 they would all collide), and keep their dtype.
    assert out["uid"].dtype == "Int64"
    assert out["uid"].tolist()[:3] == [big, big + 1, big + 2]
    np.testing.assert_array_equal(out["v"].to_numpy(), [np.nan, 1.0, np.nan, np.nan])
    assert report.steps["features[0]"]["unmatched"] == 3
    # A missing string key matches nothing, not the right side's missing key.
    pipe = pipeline({"op": "join", "source": {"uri": str(tmp_path / "r")}, "on": ["k"], "columns": ["v"]})
    report = pipe.fit(_frame(left, 2), extras=lambda f: {"test": {"n": f.shape[0]}}, compute=CountingCompute())
    out = pipe.transform(_frame(left, 2)).compute(scheduler="sync")
    np.testing.assert_array_equal(out["v"].to_numpy(), [np.nan, np.nan, 2.0, np.nan])
    assert report.steps["features[0]"]["unmatched"] == 3
    assert report.steps["features[0]"]["duplicate_keys"] == 0


def test_join_measures_in_the_same_call_that_applies_it(flights, planes):
    """No state between calls: the measurements come back with the frame, and any order works."""
    (op,) = pipeline({"op": "join", "source": {"uri": planes}, "on": ["tailnum"], "prefix": "p_"}).ops
    left = _frame(flights)
    out, measured = op.apply_measured(left)
    op.apply(left.head(10, compute=False))  # another application in between changes nothing
    (computed,) = dask.compute(measured, scheduler="sync")
    step = op.check(computed)
    assert step["rows_in"] == step["rows_out"] == len(out.compute(scheduler="sync")) == len(flights)
    matched = int(flights["tailnum"].isin([f"N{i}" for i in range(50)]).sum())
    assert step["unmatched"] == len(flights) - matched > 0
    assert step["right_rows"] == 50 and step["duplicate_keys"] == 0
    # Pickled into a task, the join leaves its (lazy) right table behind.
    again = pickle.loads(pickle.dumps(op))
    assert again._table is None and op._table is not None
    with pytest.raises(StateError, match=r"features\[0\] \(join\): the right table is not opened"):
        again.describe(left._meta)


def test_join_fails_on_too_many_unmatched_rows(flights, planes):
    pipe = pipeline(
        {"op": "join", "source": {"uri": planes}, "on": ["tailnum"], "prefix": "p_", "max_unmatched_fraction": 0.01}
    )
    with pytest.raises(
        DataError, match=r"features\[0\] \(join .* on \['tailnum'\]\): \d+ of 2000 rows .* found no match"
    ):
        pipe.fit(_frame(flights), extras=lambda f: {"test": {"n": f.shape[0]}}, compute=CountingCompute())


def test_join_refuses_a_right_table_with_duplicate_keys(flights, planes, tmp_path):
    dup = tmp_path / "dup"
    dup.mkdir()
    table = pd.read_parquet(planes)
    pd.concat([table, table.iloc[:3]], ignore_index=True).to_parquet(dup / "part-0.parquet")
    entry = {"op": "join", "source": {"uri": str(dup)}, "on": ["tailnum"], "prefix": "p_"}
    with pytest.raises(DataError, match=r"3 key\(s\) have more than one row in the right table \(up to 2\)"):
        pipeline(entry).fit(_frame(flights), extras=lambda f: {"test": {"n": f.shape[0]}}, compute=CountingCompute())
    # Asked for explicitly, a many-to-many join goes through and reports the growth.
    pipe = pipeline({**entry, "validate": "many_to_many"})
    report = pipe.fit(_frame(flights), extras=lambda f: {"test": {"n": f.shape[0]}}, compute=CountingCompute())
    step = report.steps["features[0]"]
    assert step["rows_out"] == len(flights.merge(table.iloc[:3], on="tailnum")) + len(flights)


def test_join_errors_name_the_problem(flights, planes):
    meta = _frame(flights)._meta
    with pytest.raises(ColumnError, match=r"column\(s\) \['year'\] exist|column\(s\) .* exist on both sides"):
        pipeline({"op": "join", "source": {"uri": planes}, "left_on": ["tailnum"], "right_on": ["tailnum"]}).describe(
            meta.assign(year=1.0)
        )
    with pytest.raises(ColumnError, match=r"column\(s\) \['tail'\] not found in .*planes"):
        pipeline({"op": "join", "source": {"uri": planes}, "left_on": ["tailnum"], "right_on": ["tail"]}).describe(meta)
    with pytest.raises(ColumnError, match=r"key 'tailnum' is int64 on the left but string"):
        pipeline({"op": "join", "source": {"uri": planes}, "on": ["tailnum"]}).describe(meta.assign(tailnum=1))
    with pytest.raises(SpecError, match=r"give the join keys"):
        job_from_dict(
            {
                "name": "j",
                "source": {"uri": "x"},
                "features": [{"op": "join", "source": {"uri": planes}}],
                "label": {"column": "y"},
                "output": {"uri": "o"},
            }
        )


def test_aggregate_matches_pandas_groupby_and_is_fitted_on_the_fit_rows(flights):
    entry = {"op": "aggregate", "by": ["tailnum"], "columns": {"delay": ["mean", "max", "std"], "hour": ["nunique"]}}
    pipe = pipeline(entry)
    train = flights[flights["flight_id"] < 1500]
    pipe.fit(_frame(train), compute=CountingCompute())
    new = flights.assign(tailnum=flights["tailnum"].where(flights["flight_id"] != 1999, "UNSEEN"))
    out = pipe.transform(_frame(new)).compute(scheduler="sync").sort_values("flight_id")
    g = train.groupby("tailnum")
    ref = pd.DataFrame(
        {
            "tailnum_count": g.size(),
            "tailnum_delay_mean": g["delay"].mean(),
            "tailnum_delay_max": g["delay"].max(),
            "tailnum_delay_std": g["delay"].std(),
            "tailnum_hour_nunique": g["hour"].nunique(),
        }
    )
    expected = new.join(ref.astype("float64"), on="tailnum")
    expected["tailnum_count"] = expected["tailnum_count"].fillna(0.0)
    pd.testing.assert_frame_equal(out.reset_index(drop=True), expected.reset_index(drop=True))
    unseen = out[out["flight_id"] == 1999].iloc[0]
    assert unseen["tailnum_count"] == 0 and np.isnan(unseen["tailnum_delay_mean"])
    # The fitted table survives JSON unchanged.
    again = FeaturePipeline.from_json(pipe.to_json()).transform(_frame(new)).compute(scheduler="sync")
    pd.testing.assert_frame_equal(again.sort_values("flight_id"), out)


def test_dedupe_passes_rows_with_missing_keys_and_never_keeps_a_missing_order():
    pdf = pd.DataFrame(
        {
            "fid": pd.array([1, None, None, 2, 2], dtype="Int64"),
            "ts": pd.to_datetime(["2020-01-01", "2020-01-01", "2020-01-02", None, "2020-01-05"]),
        }
    )
    pipe = pipeline({"op": "dedupe", "key": ["fid"], "order_by": "ts", "keep": "first"})
    out = pipe.transform(_frame(pdf, 2)).compute(scheduler="sync")
    assert len(out) == 4
    assert out.loc[out["fid"] == 2, "ts"].tolist() == [pd.Timestamp("2020-01-05")]


def test_aggregate_on_a_categorical_key_with_other_categories_at_prediction():
    train = pd.DataFrame({"m": pd.Categorical([1, 1, 2, 3]), "x": [1.0, 3.0, 5.0, 7.0]})
    pipe = pipeline({"op": "aggregate", "by": ["m"], "columns": {"x": ["mean"]}})
    pipe.fit(_frame(train, 2), compute=CountingCompute())
    new = pd.DataFrame({"m": pd.Categorical([1, 4]), "x": [0.0, 0.0]})
    out = pipe.transform(_frame(new, 1)).compute(scheduler="sync")
    assert out["m_x_mean"].tolist()[0] == 2.0 and np.isnan(out["m_x_mean"].tolist()[1])
    assert out["m_count"].tolist() == [2.0, 0.0]


def test_dedupe_keeps_one_row_per_key_across_partitions(flights):
    dupes = pd.concat([flights, flights.iloc[::7].assign(delay=lambda d: d["delay"] + 1000)], ignore_index=True)
    pipe = pipeline({"op": "dedupe", "key": ["flight_id"], "order_by": "delay", "keep": "last"})
    report = pipe.fit(_frame(dupes, 5), extras=lambda f: {"test": {"n": f.shape[0]}}, compute=CountingCompute())
    out = pipe.transform(_frame(dupes, 5)).compute(scheduler="sync").sort_values("flight_id")
    expected = dupes.sort_values("delay", kind="stable").drop_duplicates("flight_id", keep="last")
    pd.testing.assert_frame_equal(out.reset_index(drop=True), expected.sort_values("flight_id").reset_index(drop=True))
    assert report.steps["features[0]"] == {"op": "dedupe", "rows_in": len(dupes), "rows_out": len(flights)}


def test_mixed_pipeline_with_join_aggregate_and_encoders_fits_in_the_planned_passes(flights, planes):
    entries = (
        {"op": "join", "source": {"uri": planes}, "on": ["tailnum"], "prefix": "plane_"},
        {"op": "fill_missing", "columns": ["plane_year"], "strategy": "median"},
        {"op": "aggregate", "by": ["origin"], "columns": {"delay": ["mean"]}},
        {"op": "one_hot", "columns": ["origin"]},
        {"op": "derive", "name": "age", "expr": "2013 - plane_year"},
        {"op": "standard_scale", "columns": ["age"]},
    )
    pipe = pipeline(*entries)
    # join is stateless; fill/aggregate/one_hot read raw columns: phase 0; standard_scale reads
    # `age`, derived from the filled plane_year: phase 1.
    assert pipe.plan() == ([-1, 0, 0, 0, -1, 1], 0)
    counter = CountingCompute()
    report = pipe.fit(
        _frame(flights), extras=lambda f: {"test": {"n": f.shape[0]}}, extra_inputs={"flight_id"}, compute=counter
    )
    assert counter.calls == 2
    assert report.phases == [["features[1]", "features[2]", "features[3]"], ["features[5]"]]
    out = pipe.transform(_frame(flights)).compute(scheduler="sync")
    assert {"origin_EWR", "origin_JFK", "origin_LGA", "origin_other", "origin_delay_mean"} <= set(out.columns)
    assert "origin" not in out.columns
    assert out["age"].mean() == pytest.approx(0.0, abs=1e-9)


def test_transforms_do_not_mutate_their_input(flights, planes):
    pipe = pipeline(
        {"op": "join", "source": {"uri": planes}, "on": ["tailnum"], "prefix": "p_"},
        {"op": "aggregate", "by": ["origin"], "columns": {"delay": ["sum"]}},
    )
    pipe.fit(_frame(flights), compute=CountingCompute())
    before = flights.copy()
    with dask.config.set(scheduler="sync"):
        pipe.transform(_frame(flights)).compute()
        pipe.ops[1].transform(flights)
    pd.testing.assert_frame_equal(flights, before)


def test_fill_forward_within_groups_in_order_across_partitions():
    rng = np.random.default_rng(5)
    n = 600
    pdf = pd.DataFrame(
        {
            "sensor": pd.array(rng.choice(["a", "b", "c", "d"], n), dtype=STRING),
            "t": rng.permutation(n),
            "reading": rng.normal(size=n),
        }
    )
    pdf.loc[rng.random(n) < 0.3, "reading"] = np.nan
    pipe = pipeline(
        {"op": "fill_missing", "columns": ["reading"], "strategy": "forward", "by": ["sensor"], "order_by": "t"}
    )
    pipe.fit(_frame(pdf), compute=CountingCompute())
    out = pipe.transform(_frame(pdf)).compute(scheduler="sync").sort_values("t")
    expected = pdf.sort_values("t").assign(reading=lambda d: d.groupby("sensor")["reading"].ffill())
    pd.testing.assert_frame_equal(out.reset_index(drop=True), expected.reset_index(drop=True))
    with pytest.raises(SpecError, match=r"strategy 'forward' needs `by`"):
        _spec_error({"op": "fill_missing", "columns": ["reading"], "strategy": "forward"})


def _spec_error(entry):
    job_from_dict(
        {"name": "j", "source": {"uri": "x"}, "features": [entry], "label": {"column": "y"}, "output": {"uri": "o"}}
    )
