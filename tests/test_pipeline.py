"""FeaturePipeline: phase planning, one computation per phase, JSON state round trip."""

from __future__ import annotations

import json
from functools import partial

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.callbacks import Callback

from dpipe.errors import BundleError, StateError
from dpipe.pipeline import FeaturePipeline
from dpipe.spec import OP_MODELS


def specs(*entries: dict) -> list:
    return [OP_MODELS[e["op"]](**e) for e in entries]


def pipeline(*entries: dict) -> FeaturePipeline:
    return FeaturePipeline.from_specs(specs(*entries))


class CountingCompute:
    """A ``compute=`` for ``FeaturePipeline.fit`` that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return dask.compute(*args, scheduler="sync")


class CountGraphs(Callback):
    """Counts graph executions, whoever starts them."""

    def __init__(self):
        super().__init__()
        self.runs = 0

    def _start(self, dsk):
        self.runs += 1


def fit_one_at_a_time(pipe: FeaturePipeline, ddf) -> FeaturePipeline:
    """The reference: one computation per stateful op, in order, on the fully transformed frame."""
    frame = ddf
    for op in pipe.ops:
        if not op.fitted:
            (stats,) = dask.compute(op.fit(frame), scheduler="sync")
            op.finalize(stats)
        frame = frame.map_partitions(op.transform, meta=op.describe(frame._meta))
    return pipe


@pytest.fixture
def data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame(
        {
            "a": rng.normal(10, 3, n),
            "b": rng.exponential(2, n),
            "c": pd.array(rng.choice(["x", "y", "z", "w"], n, p=[0.4, 0.3, 0.2, 0.1]), dtype=pd.StringDtype("pyarrow")),
            "e": rng.normal(-5, 2, n),
            "split": rng.choice(["train", "valid"], n, p=[0.75, 0.25]),
        }
    )
    df.loc[rng.random(n) < 0.1, "a"] = np.nan
    df.loc[rng.random(n) < 0.1, "b"] = np.nan
    return df


MIXED = (
    {"op": "fill_missing", "columns": ["a", "b"], "strategy": "median"},  # 0: phase 0
    # 1: reads 0's output; fitted through the fill -> phase 0 (phase 1 without `derive`)
    {"op": "standard_scale", "columns": ["a"]},
    {"op": "categorical", "columns": ["c"]},  # 2: independent -> phase 0
    {"op": "derive", "name": "d", "expr": "a * 2"},  # stateless; d final once 1 is fitted
    {"op": "filter", "expr": "d > 0.5"},  # rows final once 1 is fitted
    {"op": "standard_scale", "columns": ["e"]},  # 5: its rows need 1's state -> phase 1 (2)
)


def states_close(got: list, expected: list) -> bool:
    """Fitted states equal up to float rounding (a fit through a fill adds in another order)."""

    def close(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
        if isinstance(a, float) and isinstance(b, float):
            return a == pytest.approx(b, rel=1e-12, abs=1e-12)
        return a == b

    return close(got, expected)


# -- planning ------------------------------------------------------------------------------------
def test_plan_of_a_mixed_pipeline():
    pipe = pipeline(*MIXED)
    assert pipe.plan() == ([0, 0, 0, -1, -1, 1], 1)
    # Extras wait for the rows (phase 1) and for the columns they read.
    assert pipe.plan({"c"}) == ([0, 0, 0, -1, -1, 1], 1)
    assert pipe.plan({"e"}) == ([0, 0, 0, -1, -1, 1], 2)
    # Every op on its actual input: the scaler waits for the fill.
    assert pipe.plan(derive=False) == ([0, 1, 0, -1, -1, 2], 2)
    assert pipe.plan({"e"}, derive=False) == ([0, 1, 0, -1, -1, 2], 3)


def test_plan_of_independent_and_chained_ops():
    independent = pipeline(
        {"op": "filter", "expr": "e > -9"},
        {"op": "derive", "name": "f", "expr": "e * 2"},
        {"op": "fill_missing", "columns": ["a"], "strategy": "median"},
        {"op": "categorical", "columns": ["c"]},
        {"op": "standard_scale", "columns": ["f", "b"]},
        {"op": "fill_missing", "columns": ["b"], "value": 0},
    )
    assert independent.plan() == ([-1, -1, 0, 0, 0, -1], 0)
    # A derived column over a scaled column is final one phase later; so is a scaler reading it.
    chained = pipeline(
        {"op": "standard_scale", "columns": ["a"]},
        {"op": "derive", "name": "g", "expr": "a + b"},
        {"op": "fill_missing", "columns": ["g"], "strategy": "mean"},
        {"op": "standard_scale", "columns": ["g"]},
    )
    assert chained.plan() == ([0, -1, 1, 1], 0)
    assert chained.plan(derive=False) == ([0, -1, 1, 2], 0)
    # Overwriting a column with a stateless value makes it final again at once.
    overwritten = pipeline(
        {"op": "standard_scale", "columns": ["a"]},
        {"op": "derive", "name": "a", "expr": "b * 2"},
        {"op": "standard_scale", "columns": ["a"]},
    )
    assert overwritten.plan() == ([0, -1, 0], 0)


def test_fitted_ops_are_not_planned_again(data):
    pipe = pipeline(*MIXED)
    pipe.fit(dd.from_pandas(data, npartitions=3), compute=CountingCompute())
    assert pipe.fitted
    assert pipe.plan() == ([-1] * 6, 0)
    counter = CountingCompute()
    assert pipe.fit(dd.from_pandas(data, npartitions=3), compute=counter).phases == []
    assert counter.calls == 0


# -- one computation per phase -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entries", "n_phases"),
    [
        (
            (
                {"op": "filter", "expr": "e > -9"},
                {"op": "derive", "name": "f", "expr": "e * 2"},
                {"op": "fill_missing", "columns": ["a"], "strategy": "median"},
                {"op": "categorical", "columns": ["c"], "encoding": "ordinal"},
                {"op": "standard_scale", "columns": ["f", "b"]},
                {"op": "fill_missing", "columns": ["b"], "value": 0},
            ),
            1,
        ),
        (
            (
                {"op": "fill_missing", "columns": ["a", "b"], "strategy": "mean"},
                {"op": "standard_scale", "columns": ["a"]},
                {"op": "categorical", "columns": ["c"]},
            ),
            1,
        ),
        (MIXED, 2),
    ],
    ids=["independent", "dependent", "mixed"],
)
def test_fit_computes_once_per_phase_and_matches_fitting_op_by_op(data, entries, n_phases):
    ddf = dd.from_pandas(data, npartitions=4)
    pipe = pipeline(*entries)
    counter = CountingCompute()

    with CountGraphs() as graphs:
        report = pipe.fit(ddf, compute=counter)

    assert counter.calls == n_phases
    assert graphs.runs == n_phases
    assert len(report.phases) == n_phases
    reference = fit_one_at_a_time(pipeline(*entries), ddf)
    assert states_close([op.get_state() for op in pipe.ops], [op.get_state() for op in reference.ops])


def test_fit_with_the_default_compute_runs_one_graph_per_phase(data):
    ddf = dd.from_pandas(data, npartitions=4)
    pipe = pipeline(*MIXED)
    with dask.config.set(scheduler="sync"), CountGraphs() as graphs:
        report = pipe.fit(ddf)
    assert graphs.runs == 2
    assert report.phases == [["features[0]", "features[1]", "features[2]"], ["features[5]"]]


def test_mixed_pipeline_state_matches_pandas(data):
    pipe = pipeline(*MIXED)
    pipe.fit(dd.from_pandas(data, npartitions=4), compute=CountingCompute())

    median_a, median_b = data["a"].median(), data["b"].median()
    a = data["a"].fillna(median_a)
    scaled = (a - a.mean()) / a.std(ddof=0)
    kept = data.loc[scaled * 2 > 0.5, "e"]
    fill, scale_a, cat, _, _, scale_e = (op.get_state() for op in pipe.ops)
    assert fill == {"values": {"a": median_a, "b": median_b}}
    assert scale_a["mean"]["a"] == pytest.approx(a.mean()) and scale_a["scale"]["a"] == pytest.approx(a.std(ddof=0))
    assert cat == {"categories": {"c": ["x", "y", "z", "w"]}}
    assert 0 < len(kept) < len(data)
    assert scale_e["mean"]["e"] == pytest.approx(kept.mean())
    assert scale_e["scale"]["e"] == pytest.approx(kept.std(ddof=0))


def test_fit_rows_select_statistics_rows_and_extras_share_a_phase(data):
    ddf = dd.from_pandas(data, npartitions=4)
    pipe = pipeline(*MIXED)
    counter = CountingCompute()

    report = pipe.fit(
        ddf,
        fit_rows=lambda frame: frame[frame["split"] == "train"],
        extras=lambda frame: {"test": {"rows": frame.map_partitions(len).sum(), "c": frame["c"].value_counts()}},
        extra_inputs={"c"},
        compute=counter,
    )

    assert counter.calls == 2
    train = data[data["split"] == "train"]
    assert pipe.ops[0].values_ == {"a": train["a"].median(), "b": train["b"].median()}
    a = data["a"].fillna(train["a"].median())
    a_train = a[data["split"] == "train"]
    scaled = (a - a_train.mean()) / a_train.std(ddof=0)
    # The filter applies to every row; only the statistics come from the training rows.
    kept = scaled * 2 > 0.5
    assert report.extras["test"]["rows"] == kept.sum()
    assert pipe.ops[5].mean_["e"] == pytest.approx(data.loc[kept & (data["split"] == "train"), "e"].mean())
    assert report.extras["test"]["c"].to_dict() == data.loc[kept, "c"].value_counts().to_dict()


def test_stateless_ops_over_unfitted_columns_are_not_applied_early(data):
    # In phase 0 `c` is still text: `c * 2 + e` may only run once the encoder is fitted.
    entries = (
        {"op": "categorical", "columns": ["c"], "encoding": "ordinal"},
        {"op": "derive", "name": "h", "expr": "c * 2 + e"},
        {"op": "filter", "expr": "c >= 1"},
        {"op": "standard_scale", "columns": ["h"]},
    )
    ddf = dd.from_pandas(data, npartitions=3)
    pipe = pipeline(*entries)
    assert pipe.plan() == ([0, -1, -1, 1], 1)

    pipe.fit(ddf, compute=CountingCompute())

    reference = fit_one_at_a_time(pipeline(*entries), ddf)
    assert pipe.ops[3].get_state() == reference.ops[3].get_state()
    codes = data["c"].map({c: i for i, c in enumerate(pipe.ops[0].categories_["c"])}).astype(float)
    h = (codes * 2 + data["e"])[codes >= 1]
    assert pipe.ops[3].mean_["h"] == pytest.approx(h.mean())


# -- applying and saving -------------------------------------------------------------------------
def test_transform_matches_describe_and_the_partition_function(data):
    ddf = dd.from_pandas(data, npartitions=4)
    pipe = pipeline(*MIXED)
    pipe.fit(ddf, compute=CountingCompute())

    out = pipe.transform(ddf).compute(scheduler="sync")

    # ddf.compute(): the data as Dask holds it (its text columns are Arrow strings).
    pd.testing.assert_frame_equal(out, pipe.transform_partition(ddf.compute(scheduler="sync")))
    pd.testing.assert_series_equal(out.dtypes, pipe.describe(ddf._meta).dtypes)
    assert (out["d"] > 0.5).all()
    assert out[["a", "b"]].notna().all().all()


def test_json_round_trip_gives_identical_output(data):
    ddf = dd.from_pandas(data, npartitions=4)
    pipe = pipeline(*MIXED, {"op": "categorical", "columns": ["split"], "encoding": "ordinal", "min_frequency": 2})
    pipe.fit(ddf, compute=CountingCompute())

    text = pipe.to_json()
    loaded = FeaturePipeline.from_json(text)

    assert json.loads(text)["format_version"] == 1
    assert loaded.fitted
    assert loaded.to_json() == text
    new = data.sample(frac=1.0, random_state=1)
    new_ddf = dd.from_pandas(new, npartitions=3)
    pd.testing.assert_frame_equal(
        loaded.transform(new_ddf).compute(scheduler="sync"), pipe.transform(new_ddf).compute(scheduler="sync")
    )


def test_transform_refuses_an_unfitted_pipeline(data):
    pipe = pipeline(*MIXED)
    with pytest.raises(StateError, match=r"pipeline is not fitted: \['features\[0\]', 'features\[1\]'"):
        pipe.transform(dd.from_pandas(data, npartitions=2))


def test_state_of_another_format_version_is_refused(data):
    pipe = pipeline({"op": "standard_scale", "columns": ["e"]})
    pipe.fit(dd.from_pandas(data, npartitions=2), compute=partial(dask.compute, scheduler="sync"))
    state = pipe.to_dict()
    state["format_version"] = 99
    with pytest.raises(BundleError, match=r"format_version 99; this dpipe reads 1\n\nHint: re-train"):
        FeaturePipeline.from_dict(state)


def test_required_columns_are_every_input_no_earlier_op_produces():
    from dpipe.spec import OP_MODELS

    specs = [
        {"op": "fill_missing", "columns": ["a"], "strategy": "median"},
        {"op": "derive", "name": "ratio", "expr": "a / (b + 1)"},
        {"op": "filter", "expr": "keep > 0"},
        {"op": "derive", "name": "unused", "expr": "z * 2"},
        {"op": "derive", "name": "b", "expr": "b * 2"},
        {"op": "categorical", "columns": ["c"]},
    ]
    pipe = FeaturePipeline.from_specs([OP_MODELS[s["op"]].model_validate(s) for s in specs])
    # Every op runs at prediction, so `z` is read even though nothing downstream uses `unused`.
    assert pipe.required_columns(["ratio", "c", "id"]) == {"a", "b", "keep", "z", "c", "id"}
    assert pipe.required_columns(["b"]) == {"a", "b", "keep", "z", "c"}
