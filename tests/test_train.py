import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dpipe.errors import DataError
from dpipe.train import LABEL, VALID, Labeler, check_label, spread_partitions


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
    before = client.has_what()
    placed = spread_partitions(client, frame, sizes)
    load = {w: sum(sizes[k[1]] for k in keys) for w, keys in _placed_keys(client, before).items()}
    assert sorted(load.values()) == [700, 700]  # 700 alone; 300 + 4 x 100 together
    assert client.compute(placed["x"].count()).result() == sum(sizes)


def test_labeler_split_is_a_pure_function_of_the_key():
    pdf = pd.DataFrame({"id": np.arange(10_000), "delay": np.r_[np.arange(9_999.0), np.nan]})
    lab = Labeler(column=None, expr="delay > 15", split_key=("id",), valid_fraction=0.3, seed=1)
    out = lab(pdf)
    assert len(out) == 9_999  # the unknown delay is not labelled 0: it is dropped
    assert out[LABEL].tolist()[:17] == [0.0] * 16 + [1.0]
    assert 0.28 < out[VALID].mean() < 0.32
    shuffled = lab(pdf.sample(frac=1, random_state=0)).sort_index()
    pd.testing.assert_series_equal(shuffled[VALID], out[VALID])
    other_seed = Labeler(column=None, expr="delay > 15", split_key=("id",), valid_fraction=0.3, seed=2)(pdf)
    assert not other_seed[VALID].equals(out[VALID])


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
