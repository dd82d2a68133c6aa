"""Incremental fitting: statistics of old rows merged with those of new rows equal one fit over all.

Every mergeable op is fitted three ways on the same rows: over all of them, and over a first and a
second part, the second finalized with the first's saved statistics merged in (what an incremental
run does, through the JSON run state). The fitted states must agree: exactly for counts, sums and
vocabularies, to float rounding for moments, within the sketch's rank error for quantiles.
"""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dpipe.columns import FOLD, LABEL, SIDE, TRAIN
from dpipe.errors import StateError
from dpipe.pipeline import FeaturePipeline
from dpipe.state import decode, encode
from tests.ops.test_tables import STRING, _spec


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(3, 1, n)
    x[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "x": x,
            "k": rng.integers(0, 1000, n),
            "city": pd.array(rng.choice(["oslo", "rome", "lima", None], n, p=[0.5, 0.3, 0.15, 0.05]), dtype=STRING),
            "tail": pd.array(rng.choice([f"N{i}" for i in range(40)], n), dtype=STRING),
            LABEL: rng.integers(0, 2, n).astype("float64"),
            FOLD: rng.integers(0, 1 << 30, n),
            SIDE: np.full(n, TRAIN, dtype="int8"),
        }
    )


def _fit(entries, frame, partials=None):
    pipe = FeaturePipeline.from_specs([_spec(e) for e in entries])
    report = pipe.fit(dd.from_pandas(frame, npartitions=3), partials=partials)
    return pipe, report


def _saved(stats):
    """Through the run state's JSON, as a later run reads it."""
    return {w: {k: decode(encode(v)) for k, v in s.items()} for w, s in stats.items()}


EXACT = [
    {"op": "standard_scale", "columns": ["x", "k"]},
    {"op": "minmax_scale", "columns": ["x"]},
    {"op": "fill_missing", "columns": ["x"], "strategy": "mean"},
    {"op": "fill_missing", "columns": ["city"], "strategy": "mode"},
    {"op": "categorical", "columns": ["city", "tail"], "min_frequency": 30},
    {"op": "one_hot", "columns": ["city"]},
    {"op": "bucketize", "columns": ["x"], "strategy": "uniform", "n_bins": 5},
    {"op": "target_encode", "columns": ["city", "tail"]},
    {"op": "aggregate", "by": ["tail"], "columns": {"x": ["mean", "max", "min", "sum", "count"]}},
]


@pytest.mark.parametrize("entry", EXACT, ids=lambda e: e["op"] + ":" + str(e.get("strategy", "")))
def test_merged_statistics_equal_a_full_fit(entry):
    old, new = _rows(3000, 1), _rows(1200, 2)
    full, _ = _fit([entry], pd.concat([old, new], ignore_index=True))
    _, first = _fit([entry], old)
    merged, second = _fit([entry], new, partials=_saved(first.stats))
    _assert_same_state(full.ops[0].get_state(), merged.ops[0].get_state())
    # The merged statistics are what the next run merges into: saved and read back, they are the same.
    for where, stats in _saved(second.stats).items():
        for key, value in stats.items():
            original = second.stats[where][key]
            assert value.equals(original) if hasattr(value, "equals") else value == original, (where, key)


@pytest.mark.parametrize(
    "entry",
    [
        {"op": "robust_scale", "columns": ["x"]},
        {"op": "clip", "columns": ["x"], "quantiles": [0.05, 0.95]},
        {"op": "fill_missing", "columns": ["x"], "strategy": "median"},
        {"op": "bucketize", "columns": ["x"], "strategy": "quantile", "n_bins": 4},
    ],
    ids=lambda e: e["op"],
)
def test_merged_quantiles_are_within_the_sketch_error(entry):
    old, new = _rows(20000, 3), _rows(6000, 4)
    values = pd.concat([old, new])["x"].dropna().sort_values().to_numpy()
    _, first = _fit([entry], old)
    merged, _ = _fit([entry], new, partials=_saved(first.stats))
    state = merged.ops[0].get_state()
    numbers = [v for v in _numbers(state) if np.isfinite(v) and v > 0]
    assert numbers
    full, _ = _fit([entry], pd.concat([old, new], ignore_index=True))
    expected = [v for v in _numbers(full.ops[0].get_state()) if np.isfinite(v) and v > 0]
    # Compared by rank: each merged quantile is within 1/2048 (plus a little) of the full fit's.
    for got, want in zip(sorted(numbers), sorted(expected)):
        rank_got, rank_want = np.searchsorted(values, got) / len(values), np.searchsorted(values, want) / len(values)
        assert abs(rank_got - rank_want) <= 2 / 2048, (got, want)


def test_merging_saved_statistics_of_an_op_that_cannot_merge_is_refused():
    pipe = FeaturePipeline.from_specs([_spec({"op": "aggregate", "by": ["tail"], "columns": {"x": ["std"]}})])
    assert pipe.not_incremental() == [
        "features[0] (aggregate): its ['std'] per group cannot be merged across runs (count, sum, mean, min and max can)"
    ]
    with pytest.raises(StateError, match="cannot merge statistics: features"):
        pipe.fit(dd.from_pandas(_rows(100, 5), npartitions=2), partials={"features[0]": {}})


def test_ops_that_read_other_datums_or_fitted_outputs_are_not_incremental():
    pipe = FeaturePipeline.from_specs(
        [
            _spec({"op": "dedupe", "key": ["k"]}),
            _spec({"op": "fill_missing", "columns": ["x"], "strategy": "mean"}),
            _spec({"op": "standard_scale", "columns": ["x"]}),
            _spec({"op": "fill_missing", "columns": ["x"], "strategy": "forward", "by": ["tail"], "order_by": "k"}),
        ]
    )
    problems = pipe.not_incremental()
    assert [p.split(":")[0] for p in problems] == [
        "features[0] (dedupe)",
        "features[2] (standard_scale)",
        "features[3] (fill_missing)",
    ]
    assert "reads the output of another fitted op" in problems[1]


def _numbers(state):
    if isinstance(state, dict):
        for v in state.values():
            yield from _numbers(v)
    elif isinstance(state, list):
        for v in state:
            yield from _numbers(v)
    elif isinstance(state, (int, float)) and not isinstance(state, bool):
        yield float(state)


def _assert_same_state(want, got):
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(want) == set(got)
        for k in want:
            _assert_same_state(want[k], got[k])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(want) == len(got), (want, got)
        for a, b in zip(want, got):
            _assert_same_state(a, b)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12, nan_ok=True)
    else:
        assert got == want
