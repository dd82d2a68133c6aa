import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dpipe.columns import SIDE, TRAIN, VALID
from dpipe.errors import DataError, TrainingError
from dpipe.placement import place_rows, spread_partitions, spread_train_valid
from dpipe.spec import TrainSpec
from dpipe.split import Splitter
from dpipe.train import (
    LABEL,
    Labeler,
    ModelInput,
    TrainConfig,
    check_label,
    predict_frame,
    train_booster,
)


def _placed_keys(client, before):
    """Worker -> keys that appeared since ``before`` (a ``has_what()`` snapshot)."""
    after = client.has_what()
    return {w: [k for k in keys if k not in before.get(w, ())] for w, keys in after.items()}


def test_every_worker_gets_data_even_from_a_single_partition(client):
    frame = dd.from_pandas(pd.DataFrame({"x": np.arange(1000.0)}), npartitions=1)
    before = client.has_what()
    placed = spread_partitions(client, frame)
    placement = _placed_keys(client, before)
    assert placed.npartitions == 2
    assert set(placement) == set(client.scheduler_info(n_workers=-1)["workers"])
    assert all(len(keys) == 1 for keys in placement.values())
    assert client.compute(placed["x"].sum()).result() == frame["x"].sum().compute()


def test_placement_balances_rows_largest_first(client):
    sizes = [700, 100, 100, 100, 300, 100]
    pdf = pd.DataFrame({"x": np.arange(float(sum(sizes)))})
    bounds = np.cumsum([0, *sizes])
    frame = dd.from_map(lambda i: pdf.iloc[bounds[i] : bounds[i + 1]], range(len(sizes)), meta=pdf.iloc[:0])
    placed = place_rows(client, frame, sizes)
    rows = client.gather(client.map(len, placed.futures))
    load: dict[str, list[int]] = {}
    for w, n in zip(placed.where, rows):
        load.setdefault(w, []).append(n)
    # 700 alone; 300 + 4 x 100 on the other worker, combined into one piece (small partitions).
    assert sorted(load.values()) == [[700], [700]]
    assert placed.sizes == rows
    got = pd.concat(client.gather(placed.futures))["x"].sort_values().to_numpy()
    np.testing.assert_array_equal(got, pdf["x"].to_numpy())


def test_a_piece_of_partitions_with_other_categories_loses_no_value():
    from dpipe.placement import _concat

    a = pd.DataFrame({"c": pd.Categorical(["x", "y"]), "n": [1, 2]})
    b = pd.DataFrame({"c": pd.Categorical(["z", None]), "n": [3, 4]})
    out = _concat(a, b)
    assert isinstance(out["c"].dtype, pd.CategoricalDtype)
    assert out["c"].tolist()[:3] == ["x", "y", "z"] and pd.isna(out["c"].iloc[3])
    same = _concat(a, a)
    assert same["c"].dtype == a["c"].dtype


def test_small_partitions_are_combined_into_pieces_of_one_worker():
    from dpipe.placement import _bundles

    where = ["a", "b", "a", "a", "b", "a", "a"]
    sizes = [10, 10, 50, 10, 10, 10, 200]
    # At most 60 rows a piece; the 200-row partition is a piece of its own.
    assert _bundles(where, sizes, 60) == [[0, 2], [1, 4], [3, 5], [6]]


def test_labeler_split_is_a_pure_function_of_the_key():
    pdf = pd.DataFrame({"id": np.arange(10_000), "delay": np.r_[np.arange(9_999.0), np.nan]})
    lab = Labeler(column=None, expr="delay > 15", splitter=Splitter(key=("id",), valid_fraction=0.3, seed=1))
    out = lab(pdf)
    assert len(out) == 9_999  # the unknown delay is not labelled 0: it is dropped
    assert out[LABEL].tolist()[:17] == [0.0] * 16 + [1.0]
    assert 0.28 < (out[SIDE] == VALID).mean() < 0.32
    shuffled = lab(pdf.sample(frac=1, random_state=0)).sort_index()
    pd.testing.assert_series_equal(shuffled[SIDE], out[SIDE])
    other_seed = Labeler(column=None, expr="delay > 15", splitter=Splitter(key=("id",), valid_fraction=0.3, seed=2))(
        pdf
    )
    assert not other_seed[SIDE].equals(out[SIDE])


def test_split_side_does_not_depend_on_the_dtype_a_key_gets():
    # pyarrow gives an int64 column float64 in a file where it has a missing value
    ids = np.arange(2000)
    lab = Labeler(column="y", expr=None, splitter=Splitter(key=("id",), valid_fraction=0.3, seed=5))
    as_int = lab(pd.DataFrame({"id": ids, "y": 1.0}))
    as_float = lab(pd.DataFrame({"id": ids.astype("float64"), "y": 1.0}))
    pd.testing.assert_series_equal(as_int[SIDE], as_float[SIDE])


@pytest.mark.parametrize(
    ("objective", "counts", "message"),
    [
        ("binary:logistic", {0.0: 10}, "one class"),
        ("binary:logistic", {0.0: 5, 2.0: 5}, r"needs labels 0 or 1; the training rows have \[0.0, 2.0\]"),
        ("multi:softprob", {3.0: 4}, "only one class"),
    ],
)
def test_label_checks(objective, counts, message):
    with pytest.raises(DataError, match=message):
        check_label(objective, pd.Series(counts))
    check_label("reg:squarederror", pd.Series(counts))  # regression takes any values


@pytest.mark.parametrize(
    ("objective", "params", "columns"),
    [
        ("binary:logistic", {}, ["prediction"]),
        ("multi:softmax", {"num_class": 3}, ["prediction"]),  # class index: one column
        ("multi:softprob", {"num_class": 3}, ["prediction_0", "prediction_1", "prediction_2"]),
        ("reg:quantileerror", {"quantile_alpha": [0.1, 0.9]}, ["prediction_0", "prediction_1"]),
    ],
)
def test_prediction_columns_are_the_same_in_meta_empty_and_full_partitions(objective, params, columns):
    import xgboost as xgb

    n = 300
    pdf = pd.DataFrame(
        {
            "id": np.arange(n),
            "a": np.linspace(0, 1, n).astype("float32"),
            "c": pd.Categorical(np.array(["x", "y", "z"])[np.arange(n) % 3]),
        }
    )
    y = (pdf["a"] * 3).astype(int).clip(0, 2)
    if objective.startswith("binary"):
        y = (y > 0).astype(int)
    model_input = ModelInput(features=["a", "c"], categorical=["c"])
    dtrain = xgb.DMatrix(model_input(pdf), y, enable_categorical=True)
    booster = xgb.train({"objective": objective, **params}, dtrain, 3)
    bounds = [0, 0, 100, n]  # the first partition is empty
    frame = dd.from_map(lambda i: pdf.iloc[bounds[i] : bounds[i + 1]], range(3), meta=pdf.iloc[:0])

    preds = predict_frame(booster, frame, model_input, ["id"])

    assert list(preds.columns) == ["id", *columns]
    parts = [p.compute(scheduler="sync") for p in preds.to_delayed()]
    assert [len(p) for p in parts] == [0, 100, 200]
    assert all(list(p.columns) == ["id", *columns] for p in parts)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"params": {"max_depth": "deep"}}, r"max_depth"),
        ({"objective": "multi:softprob"}, r"failed: value 0 for Parameter num_class should be greater equal to 1\n"),
        ({"eval_metric": ["foo"]}, r"XGBoost failed: Unknown metric function foo\n"),
    ],
)
def test_xgboost_failure_is_its_first_line_without_the_stack_trace(client, train, message):
    df = dd.from_pandas(pd.DataFrame({"x": np.arange(200.0), "y": np.arange(200) % 2}), npartitions=2)
    spec = TrainSpec(num_boost_round=2, **train)
    with client.as_current(), pytest.raises(TrainingError, match=message) as info:
        train_booster(client, TrainConfig.from_spec(spec), df[["x"]], df["y"], df[["x"]], df["y"])
    text = str(info.value)
    assert "[bt]" not in text and "Stack trace" not in text
    assert text.startswith("train: XGBoost failed: ") and "Hint:" in text


@pytest.mark.parametrize("sizes", [[400, 400, 400, 400], [800, 800]], ids=["one file of four", "one file of two"])
def test_every_worker_gets_training_and_validation_rows(client, sizes):
    # A split key on a partition column puts whole files on one side (here: the last file is the
    # validation set); with categorical features xgboost.dask fails when a worker holds no rows of
    # either matrix.
    n = sum(sizes)
    categories = pd.CategoricalDtype(pd.Index(["a", "b", "c"], dtype="str"))
    pdf = pd.DataFrame(
        {
            "x": np.arange(n, dtype="float32"),
            "c": pd.Categorical.from_codes(np.arange(n) % 3, dtype=categories),
            LABEL: (np.arange(n) % 2).astype("float32"),
            SIDE: np.where(np.arange(n) >= n - sizes[-1], VALID, TRAIN).astype("int8"),
        }
    )
    frame = dd.from_pandas(pdf, npartitions=len(sizes), sort=False)

    train, valid = spread_train_valid(client, frame, sizes)

    counts = client.compute(
        [train[SIDE].count(), valid[SIDE].count(), (train[SIDE] == VALID).any(), (valid[SIDE] == VALID).all()]
    )
    assert client.gather(counts) == [n - sizes[-1], sizes[-1], False, True]
    spec = TrainSpec(num_boost_round=2, early_stopping_rounds=None)
    with client.as_current():
        _, metrics = train_booster(
            client, TrainConfig.from_spec(spec), train[["x", "c"]], train[LABEL], valid[["x", "c"]], valid[LABEL]
        )
    assert metrics["rounds_trained"] == 2
