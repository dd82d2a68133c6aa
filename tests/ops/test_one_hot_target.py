"""one_hot and target_encode against scikit-learn and pandas references, through the pipeline's fit."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import OneHotEncoder, TargetEncoder

from dpipe.columns import FOLD, LABEL, SIDE, TRAIN, VALID
from dpipe.errors import ColumnError, DataError
from dpipe.ops.encoding import one_hot_name
from dpipe.pipeline import FeaturePipeline
from dpipe.split import Splitter
from dpipe.train import Labeler
from tests.ops.conftest import STRING, fit_pipeline, spec, transform, with_empty_partition

#: The internal columns of a training frame without cross-validation folds.
INTERNAL = [LABEL, SIDE, FOLD]
CITIES = ["New York", "a/b", "Zürich", "ams", "rot", "utr", "gro"]


def _objects(values: pd.Series) -> np.ndarray:
    """A one-column object array for scikit-learn, missing as NaN."""
    return values.astype(object).where(values.notna(), np.nan).to_numpy().reshape(-1, 1)


# -- one_hot ---------------------------------------------------------------------------------
@pytest.fixture
def cities() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 400
    # Skewed frequencies (with a tie at the top-3 boundary would be ambiguous: weights avoid it).
    city = rng.choice([*CITIES, None], n, p=[0.3, 0.2, 0.15, 0.12, 0.1, 0.06, 0.02, 0.05])
    code = rng.choice([3, 10, 2, 7, -1, None], n, p=[0.35, 0.25, 0.2, 0.1, 0.05, 0.05])
    return pd.DataFrame(
        {
            "city": pd.array(city, dtype=STRING),
            "code": pd.array(code, dtype="Int64"),
            "x": rng.normal(size=n),
        }
    )


@pytest.fixture
def unseen() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "city": pd.array(["ams", "paris", None, "New York", "gro", "Zürich"], dtype=STRING),
            "code": pd.array([10, 99, None, 3, -1, 2], dtype="Int64"),
            "x": np.arange(6, dtype="float64"),
        }
    )


def reference_vocabulary(values: pd.Series, *, max_categories: int, min_frequency: int) -> list:
    """The documented rule in pandas: most frequent first (ties by value), then sorted."""
    counts = values.dropna().value_counts()
    counts = counts[counts >= min_frequency].sort_index().sort_values(ascending=False, kind="stable")
    return sorted(counts.head(max_categories).index.tolist())


def test_one_hot_matches_sklearn_without_limits(cities, unseen):
    entry = {"op": "one_hot", "columns": ["city", "code"], "max_categories": 1000}
    pipe, calls = fit_pipeline([entry], with_empty_partition(cities))
    assert calls == [2]  # both columns' counts in one compute
    out = transform(pipe, with_empty_partition(unseen, 2))

    for c in ("city", "code"):
        train = cities[c].dropna()
        # scikit-learn would make missing a category of its own: dpipe never does.
        ref = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
        ref.fit(_objects(train))
        assert pipe.ops[0].categories_[c] == sorted(train.unique().tolist())
        names = [one_hot_name(c, v) for v in ref.categories_[0]]
        present = unseen[c].notna().to_numpy()
        expected = ref.transform(_objects(unseen[c][present]))
        np.testing.assert_array_equal(out.loc[present, names].to_numpy(), expected)
        # Missing sets no column, not even `other`; unseen values set only `other`.
        assert (out.loc[~present, [*names, f"{c}_other"]] == 0).all(axis=None)
        seen = unseen[c].isin(ref.categories_[0]).fillna(False).to_numpy()
        assert out[f"{c}_other"].tolist() == (present & ~seen).astype("float32").tolist()

    assert [c for c in out.columns if c.startswith("city_")] == [
        "city_New_York", "city_Z_rich", "city_a_b", "city_ams", "city_gro", "city_rot", "city_utr", "city_other",
    ]  # fmt: skip
    assert [c for c in out.columns if c.startswith("code_")] == [
        "code_-1", "code_2", "code_3", "code_7", "code_10", "code_other",
    ]  # fmt: skip
    assert (out.drop(columns=["x"]).dtypes == "float32").all()
    assert "city" not in out and "code" not in out
    pd.testing.assert_series_equal(out["x"], unseen["x"])


@pytest.mark.parametrize(("max_categories", "min_frequency"), [(3, 1), (20, 30), (2, 50), (4, 500)])
def test_one_hot_vocabulary_limits_match_pandas_and_sklearn_infrequent(cities, max_categories, min_frequency):
    entry = {"op": "one_hot", "columns": ["city", "code"], "max_categories": max_categories,
             "min_frequency": min_frequency}  # fmt: skip
    pipe, _ = fit_pipeline([entry], with_empty_partition(cities))
    out = transform(pipe, with_empty_partition(cities))
    for c in ("city", "code"):
        vocab = reference_vocabulary(cities[c], max_categories=max_categories, min_frequency=min_frequency)
        assert pipe.ops[0].categories_[c] == vocab
        names = [one_hot_name(c, v) for v in vocab]
        assert [n for n in out.columns if n.startswith(f"{c}_")] == [*names, f"{c}_other"]
        present = cities[c].notna().to_numpy()
        values = cities[c].astype(object)
        for v, name in zip(vocab, names):
            assert out[name].tolist() == (values == v).fillna(False).astype("float32").tolist()
        assert out[f"{c}_other"].tolist() == (present & ~values.isin(vocab).to_numpy()).astype("float32").tolist()

        # scikit-learn's infrequent category is dpipe's `other` when some value is left out; its
        # max_categories counts that category too.
        train = _objects(cities[c][present])
        if len(vocab) < cities[c].nunique():
            ref = OneHotEncoder(handle_unknown="infrequent_if_exist", sparse_output=False, dtype=np.float32,
                                min_frequency=min_frequency, max_categories=max_categories + 1).fit(train)  # fmt: skip
            np.testing.assert_array_equal(out.loc[present, [*names, f"{c}_other"]].to_numpy(), ref.transform(train))


def test_one_hot_ties_at_the_cut_go_by_value_whatever_the_partitioning():
    values = ["b"] * 5 + ["a"] * 5 + ["c"] * 5 + ["d"] * 9
    for order in (values, values[::-1]):
        for npartitions in (1, 3):
            frame = pd.DataFrame({"c": pd.array(order, dtype=STRING)})
            pipe, _ = fit_pipeline([{"op": "one_hot", "columns": ["c"], "max_categories": 2}],
                                   dd.from_pandas(frame, npartitions=npartitions))  # fmt: skip
            assert pipe.ops[0].categories_ == {"c": ["a", "d"]}


def test_one_hot_describe_names_columns_only_once_fitted(cities):
    pipe = FeaturePipeline.from_specs([spec("one_hot", columns=["city"], max_categories=2)])
    meta = cities.iloc[:0]
    assert list(pipe.describe(meta).columns) == ["code", "x"]
    assert pipe.ops[0].output_columns() == {"city"}
    pipe.fit(with_empty_partition(cities), compute=lambda *v: dask.compute(*v, scheduler="sync"))
    described = pipe.describe(meta)
    assert list(described.columns) == ["code", "x", "city_New_York", "city_a_b", "city_other"]
    assert (described[["city_New_York", "city_a_b", "city_other"]].dtypes == "float32").all()
    assert pipe.ops[0].output_columns() == {"city", "city_New_York", "city_a_b", "city_other"}


def test_one_hot_json_round_trip_and_other_off(cities, unseen):
    entry = {"op": "one_hot", "columns": ["code", "city"], "max_categories": 3, "other": False}
    pipe, _ = fit_pipeline([entry], with_empty_partition(cities))
    reloaded = FeaturePipeline.from_json(pipe.to_json())
    assert reloaded.ops[0].categories_ == pipe.ops[0].categories_
    assert reloaded.ops[0].categories_["code"] == [2, 3, 10]  # integers, not their text
    new = dd.from_pandas(unseen, npartitions=2)
    out = pipe.transform(new).compute(scheduler="sync")
    pd.testing.assert_frame_equal(reloaded.transform(new).compute(scheduler="sync"), out)
    assert not [c for c in out.columns if c.endswith("_other")]
    assert out["code_10"].tolist() == [1, 0, 0, 0, 0, 0]


def test_one_hot_integers_read_as_floats_in_some_partitions(cities):
    # pyarrow reads an integer column as float64 in a file where it has a missing value: the
    # vocabulary stays integer and names the columns `code_10`, not `code_10.0`.
    parts = [cities.iloc[:200].assign(code=cities["code"].iloc[:200].astype("float64")), cities.iloc[200:]]
    ddf = dd.from_map(lambda i: parts[i], range(2), meta=cities.iloc[:0], enforce_metadata=False)
    pipe, _ = fit_pipeline([{"op": "one_hot", "columns": ["code"]}], ddf)
    assert pipe.ops[0].categories_["code"] == [-1, 2, 3, 7, 10]
    assert all(isinstance(v, int) for v in pipe.ops[0].categories_["code"])
    out = transform(pipe, with_empty_partition(cities))
    assert out["code_10"].sum() == (cities["code"] == 10).sum()


def test_one_hot_refuses_floats_and_clashing_names():
    frame = pd.DataFrame({"f": [1.5, 2.0], "c": pd.array(["a b", "a/b"], dtype=STRING)})
    with pytest.raises(ColumnError, match=r"features\[0\] \(one_hot\): float, date and time columns"):
        fit_pipeline([{"op": "one_hot", "columns": ["f"]}], dd.from_pandas(frame, npartitions=1))[0].describe(
            frame.iloc[:0]
        )
    with pytest.raises(DataError, match=r"values of 'c' give the same column name\(s\) \['c_a_b'\]"):
        fit_pipeline([{"op": "one_hot", "columns": ["c"]}], dd.from_pandas(frame, npartitions=1))


def test_one_hot_column_without_values_gives_only_other():
    frame = pd.DataFrame({"c": pd.array([None, None, None], dtype=STRING), "x": [1.0, 2.0, 3.0]})
    pipe, _ = fit_pipeline([{"op": "one_hot", "columns": ["c"]}], with_empty_partition(frame, 2))
    out = transform(pipe, dd.from_pandas(pd.DataFrame({"c": pd.array(["z", None], dtype=STRING), "x": [0.0, 1.0]}),
                                         npartitions=1))  # fmt: skip
    assert list(out.columns) == ["x", "c_other"]
    assert out["c_other"].tolist() == [1.0, 0.0]


# -- target_encode ---------------------------------------------------------------------------
FOLDS = 5
SMOOTH = 4.0


def _data(target: str, n: int = 3000, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    city = rng.choice([*CITIES, None], n, p=[0.25, 0.2, 0.15, 0.12, 0.1, 0.08, 0.002, 0.098])
    code = rng.choice([1, 2, 3, 40, None], n, p=[0.4, 0.3, 0.2, 0.05, 0.05])
    effect = pd.Series(city).map({"New York": 1.0, "a/b": -0.5, "ams": 0.5}).fillna(0.0).to_numpy()
    effect = effect + pd.Series(code).map({1: 0.3, 40: -1.0}).fillna(0.0).to_numpy()
    score = effect + rng.normal(size=n)
    y = (score > 0.3).astype("int64") if target == "binary" else 10 * score + 5
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype="int64"),
            "city": pd.array(city, dtype=STRING),
            "code": pd.array(code, dtype="Int64"),
            "y": y,
        }
    )


def labeled(pdf: pd.DataFrame, npartitions: int = 4) -> dd.DataFrame:
    """Training frames as the runner builds them: label, validation flag and fold per partition."""
    labeler = Labeler(column="y", expr=None, splitter=Splitter(key=("id",), valid_fraction=0.2, seed=1), folds=True)
    return with_empty_partition(pdf, npartitions).map_partitions(labeler)


def fit_target(ddf, **params) -> FeaturePipeline:
    pipe = FeaturePipeline.from_specs([spec("target_encode", **params)])
    pipe.describe(ddf._meta)
    pipe.fit(ddf, fit_rows=lambda f: f[f[SIDE] == TRAIN], compute=lambda *v: dask.compute(*v, scheduler="sync"))
    return pipe


@pytest.fixture(params=["binary", "continuous"])
def target_case(request):
    data = _data(request.param)
    ddf = labeled(data)
    pipe = fit_target(ddf, columns=["city", "code"], smooth=SMOOTH, folds=FOLDS)
    frame = ddf.compute(scheduler="sync")
    return request.param, pipe, ddf, frame


def _oof_reference(train: pd.DataFrame, column: str) -> np.ndarray:
    """Out-of-fold encodings in plain pandas: each row from the other folds' rows only."""
    fold = train[FOLD].to_numpy() % FOLDS
    y = train[LABEL].astype("float64").to_numpy()
    values = train[column].astype(object).to_numpy()
    out = np.empty(len(train))
    for j in range(FOLDS):
        mine, rest = fold == j, fold != j
        prior = y[rest].mean()
        stats = pd.DataFrame({"v": values[rest], "y": y[rest]}).dropna().groupby("v")["y"].agg(["sum", "count"])
        s = pd.Series(values[mine]).map(stats["sum"]).to_numpy(dtype="float64", na_value=np.nan)
        n = pd.Series(values[mine]).map(stats["count"]).to_numpy(dtype="float64", na_value=np.nan)
        enc = (s + SMOOTH * prior) / (n + SMOOTH)
        out[mine] = np.where(np.isnan(n), prior, enc)
    return out


def test_target_encode_prediction_matches_sklearn(target_case):
    target, pipe, _, frame = target_case
    train = frame[frame[SIDE] == TRAIN]
    y_train = train[LABEL].astype("float64").to_numpy()
    new = pd.DataFrame(
        {
            "city": pd.array(["ams", "paris", None, "New York", "gro", "utr"], dtype=STRING),
            "code": pd.array([40, 99, None, 1, 2, 3], dtype="Int64"),
        }
    )
    out = transform(pipe, with_empty_partition(new, 2))
    assert (out.dtypes == "float32").all() and not set(INTERNAL) & set(out.columns)
    prior = y_train.mean()
    assert pipe.ops[0].prior_ == pytest.approx(prior, rel=1e-6)
    for c in ("city", "code"):
        ref = TargetEncoder(smooth=SMOOTH, target_type=target).fit(_objects(train[c]), y_train)
        present = new[c].notna().to_numpy()
        expected = ref.transform(_objects(new[c][present]))[:, 0]
        np.testing.assert_allclose(out.loc[present, c], expected, rtol=1e-5)
        # scikit-learn encodes missing as a category; dpipe gives it the prior, like unseen values.
        np.testing.assert_allclose(out.loc[~present, c], prior, rtol=1e-5)
    np.testing.assert_allclose(out["city"][1], prior, rtol=1e-5)  # unseen
    np.testing.assert_allclose(out["code"][1], prior, rtol=1e-5)


def test_target_encode_training_rows_are_out_of_fold(target_case):
    target, pipe, ddf, frame = target_case
    out = pipe.transform(ddf).compute(scheduler="sync")
    pd.testing.assert_frame_equal(out[INTERNAL], frame[INTERNAL])
    is_train = (frame[SIDE] == TRAIN).to_numpy()
    train = frame[is_train]
    y_train = train[LABEL].astype("float64").to_numpy()
    fold = train[FOLD].to_numpy() % FOLDS
    cv = [(np.flatnonzero(fold != j), np.flatnonzero(fold == j)) for j in range(FOLDS)]
    for c in ("city", "code"):
        got = out.loc[is_train, c].to_numpy(dtype="float64")
        np.testing.assert_allclose(got, _oof_reference(train, c), rtol=1e-5)

        ref = TargetEncoder(smooth=SMOOTH, target_type=target, cv=cv)
        expected = ref.fit_transform(_objects(train[c]), y_train)[:, 0]
        present = train[c].notna().to_numpy()
        np.testing.assert_allclose(got[present], expected[present], rtol=1e-5)
        # Missing gets the prior of the other folds.
        fold_prior = np.array([y_train[fold != j].mean() for j in range(FOLDS)])
        np.testing.assert_allclose(got[~present], fold_prior[fold[~present]], rtol=1e-5)

        # Validation rows get the encodings of all training rows, as at prediction.
        full = TargetEncoder(smooth=SMOOTH, target_type=target).fit(_objects(train[c]), y_train)
        valid = frame[~is_train]
        present = valid[c].notna().to_numpy()
        np.testing.assert_allclose(
            out.loc[~is_train, c].to_numpy()[present], full.transform(_objects(valid[c][present]))[:, 0], rtol=1e-5
        )
        np.testing.assert_allclose(out.loc[~is_train, c].to_numpy()[~present], y_train.mean(), rtol=1e-5)


def test_target_encode_json_round_trip(target_case):
    _, pipe, ddf, _ = target_case
    reloaded = FeaturePipeline.from_json(pipe.to_json())
    assert reloaded.ops[0].get_state() == pipe.ops[0].get_state()
    for frame in (ddf, ddf.drop(columns=INTERNAL)):
        pd.testing.assert_frame_equal(
            reloaded.transform(frame).compute(scheduler="sync"), pipe.transform(frame).compute(scheduler="sync")
        )


def test_target_encode_out_of_fold_does_not_leak_a_noise_label():
    # One row per category and a label that is pure noise: an in-sample encoding is a rescaled
    # copy of the label; an out-of-fold one never saw the row and knows nothing about it.
    n = 4000
    rng = np.random.default_rng(5)
    data = pd.DataFrame(
        {
            "id": np.arange(n, dtype="int64"),
            "uid": pd.array([f"u{i}" for i in range(n)], dtype=STRING),
            "y": rng.integers(0, 2, n),
        }
    )
    ddf = labeled(data)
    pipe = fit_target(ddf, columns=["uid"], smooth=1.0)
    out = pipe.transform(ddf).compute(scheduler="sync")
    train = out[out[SIDE] == TRAIN]
    oof = np.corrcoef(train["uid"], train[LABEL])[0, 1]
    assert abs(oof) < 0.1
    # The same rows encoded in-sample (as at prediction) give the label back.
    in_sample = pipe.transform(ddf.drop(columns=INTERNAL)).compute(scheduler="sync")
    in_sample = in_sample.loc[(out[SIDE] == TRAIN).to_numpy(), "uid"]
    assert np.corrcoef(in_sample, train[LABEL])[0, 1] > 0.99


def test_target_encode_needs_a_label_frame():
    data = _data("binary", n=50)
    plain = with_empty_partition(data.drop(columns=["y"]), 2)
    message = (
        r"(?s)features\[0\] \(target_encode\): needs the label to fit.*Hint: target encoding is fitted by `dpipe run`"
    )
    with pytest.raises(ColumnError, match=message):
        FeaturePipeline.from_specs([spec("target_encode", columns=["city"])]).describe(plain._meta)
    with pytest.raises(ColumnError, match=message):
        fit_pipeline([{"op": "target_encode", "columns": ["city"]}], plain)
    # A label but no folds (a Labeler without `folds`) is refused the same way.
    no_folds = Labeler(column="y", expr=None, splitter=Splitter(key=("id",), valid_fraction=0.2, seed=1))
    with pytest.raises(ColumnError, match=r"needs the label to fit"):
        fit_pipeline([{"op": "target_encode", "columns": ["city"]}], dd.from_pandas(data, 2).map_partitions(no_folds))


def test_target_encode_needs_a_numeric_label():
    data = _data("binary", n=50)
    frame = labeled(data).compute(scheduler="sync")
    frame[LABEL] = frame[LABEL].map({0.0: "no", 1.0: "yes"}).astype(STRING)
    ddf = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(ColumnError, match=r"(?s)features\[0\] \(target_encode\): the label must be numeric.*Hint"):
        fit_pipeline([{"op": "target_encode", "columns": ["city"]}], ddf)


def test_target_encode_column_without_values_gives_the_prior():
    data = _data("binary", n=200).assign(city=pd.array([None] * 200, dtype=STRING))
    ddf = labeled(data)
    pipe = fit_target(ddf, columns=["city"], smooth=SMOOTH, folds=FOLDS)
    out = pipe.transform(ddf).compute(scheduler="sync")
    train = out[out[SIDE] == TRAIN]
    fold = train[FOLD].to_numpy() % FOLDS
    y = train[LABEL].astype("float64").to_numpy()
    fold_prior = np.array([y[fold != j].mean() for j in range(FOLDS)])
    np.testing.assert_allclose(train["city"], fold_prior[fold], rtol=1e-5)
    np.testing.assert_allclose(out.loc[out[SIDE] == VALID, "city"], y.mean(), rtol=1e-5)
