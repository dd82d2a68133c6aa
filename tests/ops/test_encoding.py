"""categorical's out-of-vocabulary bucket and hash_bucket, on unseen values at prediction."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import OrdinalEncoder

from dpipe.errors import DataError
from dpipe.ops import build_op
from dpipe.pipeline import FeaturePipeline
from tests.ops.conftest import STRING, assert_not_mutated, fit_pipeline, spec, transform, with_empty_partition

CITIES = ["ams"] * 6 + ["rot"] * 4 + ["utr"] * 3 + ["gro"] + [None] * 3


@pytest.fixture
def train() -> pd.DataFrame:
    order = np.random.default_rng(4).permutation(len(CITIES))
    city = pd.array([CITIES[i] for i in order], dtype=STRING)
    code = pd.array([{"ams": 10, "rot": 9, "utr": 2, "gro": 4}.get(c) for c in city], dtype="Int64")
    return pd.DataFrame({"city": city, "code": code})


@pytest.fixture
def new() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "city": pd.array(["utr", "paris", None, "gro", "ams"], dtype=STRING),
            "code": pd.array([2, 77, None, 4, 10], dtype="Int64"),
        }
    )


def _values(series):
    return series.astype(object).where(series.notna(), None).tolist()


def test_unknown_bucket_with_category_encoding(train, new):
    entry = {"op": "categorical", "columns": ["city", "code"], "min_frequency": 2, "unknown": "bucket"}
    pipe, _ = fit_pipeline([entry], with_empty_partition(train))
    assert pipe.ops[0].categories_ == {"city": ["ams", "rot", "utr"], "code": [10, 9, 2]}

    out = transform(pipe, with_empty_partition(new, 2))
    # gro is too rare, paris unseen: both go to the bucket; missing stays missing.
    assert _values(out["city"]) == ["utr", "__other__", None, "__other__", "ams"]
    assert _values(out["code"]) == [2, "__other__", None, "__other__", 10]
    assert list(out["city"].cat.categories) == ["ams", "rot", "utr", "__other__"]
    assert out["city"].dtype.categories.dtype == STRING
    assert out["code"].dtype.categories.dtype == object
    assert out["city"].cat.codes.tolist() == [2, 3, -1, 3, 0]

    # Training output and a reloaded pipeline give the very same dtype.
    train_out = pipe.transform(with_empty_partition(train)).compute(scheduler="sync")
    reloaded = (
        FeaturePipeline.from_json(pipe.to_json())
        .transform(dd.from_pandas(new, npartitions=1))
        .compute(scheduler="sync")
    )
    for c in ("city", "code"):
        assert train_out[c].dtype == out[c].dtype == reloaded[c].dtype


def test_unknown_bucket_ordinal_matches_sklearn(train, new):
    entry = {"op": "categorical", "columns": ["city"], "encoding": "ordinal", "min_frequency": 2, "unknown": "bucket"}
    pipe, _ = fit_pipeline([entry], with_empty_partition(train))
    out = transform(pipe, with_empty_partition(new, 2))
    vocab = pipe.ops[0].categories_["city"]
    ref = OrdinalEncoder(
        categories=[vocab],
        handle_unknown="use_encoded_value",
        unknown_value=len(vocab),
        encoded_missing_value=np.nan,
        dtype=np.float32,
    ).fit(np.array(vocab, dtype=object).reshape(-1, 1))
    # scikit-learn buckets NaN too (it is not in the vocabulary); dpipe keeps it missing.
    present = new["city"].notna().to_numpy()
    as_object = new["city"][present].astype(object).to_numpy().reshape(-1, 1)
    np.testing.assert_array_equal(out["city"].to_numpy()[present], ref.transform(as_object)[:, 0])
    np.testing.assert_array_equal(out["city"].to_numpy(), [2, 3, np.nan, 3, 0])


def test_unknown_bucket_with_an_empty_vocabulary(train, new):
    pipe, _ = fit_pipeline(
        [{"op": "categorical", "columns": ["city"], "min_frequency": 100, "unknown": "bucket"}],
        dd.from_pandas(train, npartitions=2),
    )
    out = transform(pipe, dd.from_pandas(new, npartitions=2))
    assert list(out["city"].cat.categories) == ["__other__"]
    assert out["city"].cat.codes.tolist() == [0, 0, -1, 0, 0]


def test_unknown_missing_stays_the_default(train, new):
    pipe, _ = fit_pipeline(
        [{"op": "categorical", "columns": ["city"], "min_frequency": 2}], dd.from_pandas(train, npartitions=2)
    )
    out = transform(pipe, dd.from_pandas(new, npartitions=2))
    assert _values(out["city"]) == ["utr", None, None, None, "ams"]


def test_unknown_bucket_refuses_a_real_other_value():
    df = pd.DataFrame({"c": pd.array(["__other__", "a"], dtype=STRING)})
    with pytest.raises(DataError, match=r"features\[0\] \(categorical\): column 'c' holds the value '__other__'"):
        fit_pipeline([{"op": "categorical", "columns": ["c"], "unknown": "bucket"}], dd.from_pandas(df, npartitions=1))


# -- hash_bucket -------------------------------------------------------------------------------------
def test_hash_bucket_is_stable_and_consistent_across_partitions(train, new):
    pipe, calls = fit_pipeline(
        [{"op": "hash_bucket", "columns": ["city", "code"], "n_buckets": 16}], with_empty_partition(train)
    )
    assert calls == []
    out = transform(pipe, with_empty_partition(new, 2))
    assert out["city"].dtype == pd.CategoricalDtype(pd.RangeIndex(16))
    # Pinned values: the hash must not change between processes, machines or runs.
    assert _values(out["city"]) == [
        _bucket("utr", 16),
        _bucket("paris", 16),
        None,
        _bucket("gro", 16),
        _bucket("ams", 16),
    ]
    assert _values(out["city"]) == [2, 15, None, 14, 4]
    assert _values(out["code"]) == [_bucket("2", 16), _bucket("77", 16), None, _bucket("4", 16), _bucket("10", 16)]
    train_out = transform(pipe, with_empty_partition(train))
    by_value = dict(zip(train["city"].dropna(), train_out["city"][train["city"].notna()]))
    assert by_value["utr"] == out["city"][0] and by_value["ams"] == out["city"][4]


def _bucket(text: str, n: int) -> int:
    return int(pd.util.hash_array(np.array([text], dtype=object), categorize=False)[0] % np.uint64(n))


def test_hash_bucket_integers_hash_alike_whatever_their_dtype():
    op = build_op(spec("hash_bucket", columns=["n"], n_buckets=1024, encoding="ordinal"), "f")
    ints = op.transform(pd.DataFrame({"n": [10, 7, 123456]}))["n"]
    floats = op.transform(pd.DataFrame({"n": [10.0, 7.0, 123456.0]}))["n"]
    nullable = op.transform(pd.DataFrame({"n": pd.array([10, 7, 123456], dtype="Int64")}))["n"]
    np.testing.assert_array_equal(ints, floats)
    np.testing.assert_array_equal(ints, nullable)
    assert ints.dtype == "float32" and ((ints >= 0) & (ints < 1024)).all()
    half = op.transform(pd.DataFrame({"n": [2.5, np.nan]}))["n"]
    assert half[0] == _bucket("2.5", 1024) and np.isnan(half[1])


def test_hash_bucket_spreads_values():
    values = pd.DataFrame({"v": pd.array([f"user-{i}" for i in range(5000)], dtype=STRING)})
    out = build_op(spec("hash_bucket", columns=["v"], n_buckets=8), "f").transform(values)
    counts = out["v"].value_counts()
    assert len(counts) == 8 and counts.min() > 500


@pytest.mark.parametrize(
    "entry",
    [
        {"op": "categorical", "columns": ["city", "code"], "unknown": "bucket"},
        {"op": "categorical", "columns": ["city"], "unknown": "bucket", "encoding": "ordinal"},
        {"op": "hash_bucket", "columns": ["city", "code"], "n_buckets": 4},
    ],
)
def test_transform_never_mutates_its_input(train, new, entry):
    pipe, _ = fit_pipeline([entry], dd.from_pandas(train, npartitions=2))
    assert_not_mutated(pipe.ops[0], new)


def test_hash_bucket_spec_errors():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="greater than or equal to 2"):
        spec("hash_bucket", columns=["c"], n_buckets=1)
