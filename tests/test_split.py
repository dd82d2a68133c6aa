"""Splits: a test side, by time and by group, cross-validation (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dpipe
from dpipe.bundle import Bundle
from dpipe.columns import CV_FOLD, SIDE, TEST, TRAIN, VALID
from dpipe.errors import ColumnError, DataError, SpecError
from dpipe.spec import JobSpec
from dpipe.spec.models import SplitSpec
from dpipe.split import NO_SIDE, Splitter, mix, resolve
from dpipe.train import Labeler

ZONE = "America/New_York"


# -- the rule, row by row ------------------------------------------------------------------------
def _sides(splitter: Splitter, pdf: pd.DataFrame) -> pd.DataFrame:
    return Labeler(column="y", expr=None, splitter=splitter)(pdf)


def test_random_split_without_a_test_side_is_the_split_dpipe_always_made():
    pdf = pd.DataFrame({"id": np.arange(20_000), "y": 1.0})
    out = _sides(Splitter(key=("id",), valid_fraction=0.2, seed=7), pdf)
    mixed = mix(pd.util.hash_pandas_object(pdf[["id"]].astype("float64"), index=False).to_numpy(), 7)
    before = (mixed >> np.uint64(11)).astype("float64") / float(1 << 53) < 0.2  # the rule of dpipe <= 0.10
    np.testing.assert_array_equal(out[SIDE].to_numpy() == VALID, before)
    assert set(out[SIDE].unique()) == {TRAIN, VALID}


def test_three_sides_are_deterministic_whatever_the_row_order():
    pdf = pd.DataFrame({"id": np.arange(30_000), "y": 1.0})
    splitter = Splitter(key=("id",), valid_fraction=0.2, test_fraction=0.1, seed=1)
    out = _sides(splitter, pdf)
    shares = out[SIDE].value_counts(normalize=True)
    assert abs(shares[VALID] - 0.2) < 0.01 and abs(shares[TEST] - 0.1) < 0.01
    shuffled = _sides(splitter, pdf.sample(frac=1, random_state=0)).sort_index()
    pd.testing.assert_series_equal(shuffled[SIDE], out[SIDE])
    # A larger test side takes rows from the others; the test rows stay test rows.
    more = _sides(Splitter(key=("id",), valid_fraction=0.2, test_fraction=0.15, seed=1), pdf)
    assert (more.loc[out[SIDE] == TEST, SIDE] == TEST).all()


def test_group_split_keeps_every_group_on_one_side_and_in_one_fold():
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"tail": rng.integers(0, 300, 20_000), "other": rng.random(20_000), "y": 1.0})
    splitter = Splitter(by="group", key=("tail",), valid_fraction=0.2, test_fraction=0.2, folds=4)
    out = _sides(splitter, pdf)
    assert (out.groupby("tail")[SIDE].nunique() == 1).all()
    assert (out.groupby("tail")[CV_FOLD].nunique() == 1).all()
    assert set(out[CV_FOLD].unique()) == {0, 1, 2, 3}


def test_time_split_cuts_at_the_given_times_in_the_columns_zone():
    t = pd.date_range("2013-01-01", "2013-12-31 23:00", freq="h", tz=ZONE)
    pdf = pd.DataFrame({"t": t, "y": 1.0})
    pdf.loc[5, "t"] = pd.NaT
    splitter = Splitter.from_spec(
        SplitSpec(by="time", column="t", valid_from="2013-10-01", test_from="2013-11-15"), ["t"]
    )
    out = _sides(splitter, pdf)
    side = out[SIDE]
    assert side[5] == NO_SIDE
    # A cut without a zone means the column's clock: midnight in New York, not in UTC.
    first_valid = out.loc[side == VALID, "t"].min()
    assert first_valid == pd.Timestamp("2013-10-01", tz=ZONE)
    assert out.loc[side == TRAIN, "t"].max() < first_valid <= out.loc[side == VALID, "t"].max()
    assert out.loc[side == TEST, "t"].min() == pd.Timestamp("2013-11-15", tz=ZONE)
    # The same cut written in UTC is a different instant.
    utc = Splitter.from_spec(
        SplitSpec(by="time", column="t", valid_from="2013-10-01T00:00:00+00:00", test_from="2013-11-15"), ["t"]
    )
    assert _sides(utc, pdf).loc[lambda f: f[SIDE] == VALID, "t"].min() == pd.Timestamp("2013-10-01", tz="UTC")


def test_time_fractions_and_folds_resolve_from_the_time_range():
    spec = SplitSpec(by="time", column="t", test_fraction=0.25, folds=3)
    splitter = Splitter.from_spec(spec, ["t"])
    assert splitter.needs_range
    lo, hi = pd.Timestamp("2013-01-01"), pd.Timestamp("2013-01-09")
    resolved = resolve(splitter, {"min": lo, "max": hi})
    assert resolved.test_from == pd.Timestamp("2013-01-07")
    # Three folds of an expanding window: four equal periods before the test side.
    assert [e.isoformat() for e in resolved.fold_edges] == [
        "2013-01-02T12:00:00",
        "2013-01-04T00:00:00",
        "2013-01-05T12:00:00",
    ]
    t = pd.Series(pd.date_range(lo, hi, freq="6h"))
    out = _sides(resolved, pd.DataFrame({"t": t, "y": 1.0}))
    train = out[out[SIDE] == TRAIN]
    assert list(train.groupby(CV_FOLD)["t"].min()) == [lo, *resolved.fold_edges]
    with pytest.raises(DataError, match=r"no time range to split"):
        resolve(splitter, {"min": lo, "max": lo})


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"valid_fraction": 0.6, "test_fraction": 0.4}, r"add up to 1 or more"),
        ({"by": "time"}, r"needs the date-time `column`"),
        ({"by": "group"}, r"needs the group columns"),
        ({"by": "time", "column": "t", "valid_from": "2013-11-15", "test_from": "2013-10-01"}, r"must be before"),
        ({"by": "time", "column": "t", "valid_from": "October"}, r"not a date or date-time"),
        ({"folds": 3, "valid_fraction": 0.2}, r"the folds are the validation rows"),
        ({"fold_models": True}, r"`fold_models` needs `folds`"),
        ({"column": "t"}, r"only apply to `by: time`"),
    ],
)
def test_split_spec_errors(split, message):
    with pytest.raises(ValueError, match=message):
        SplitSpec(**split)


# -- jobs on the cluster -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    """A year of hourly-stamped events by month, with customers and a learnable label."""
    root = tmp_path_factory.mktemp("split") / "events"
    rng = np.random.default_rng(5)
    n = 12_000
    t = pd.Timestamp("2013-01-01", tz=ZONE) + pd.to_timedelta(np.sort(rng.integers(0, 365 * 24, n)), unit="h")
    x = rng.normal(size=n)
    season = np.sin(2 * np.pi * t.dayofyear.to_numpy() / 365)
    frame = pd.DataFrame(
        {
            "event_id": np.arange(n),
            "customer": rng.integers(0, 400, n),
            "t": t,
            "x": x,
            "z": rng.normal(size=n) + season,
            "kind": pd.array(rng.choice(["a", "b", "c"], n), dtype="string"),
            "y": (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x + season)))).astype("int8"),
        }
    )
    for month, part in frame.groupby(frame["t"].dt.month):
        (root / f"m={month:02d}").mkdir(parents=True)
        part.to_parquet(root / f"m={month:02d}" / "part-0.parquet", index=False)
    return root


def _job(events: Path, out: Path, split: dict, **sections) -> JobSpec:
    spec = {
        "name": "split",
        "source": {"uri": str(events)},
        "id_columns": ["event_id", "customer"],
        "features": [
            {"op": "standard_scale", "columns": ["z"]},
            {"op": "categorical", "columns": ["kind"]},
        ],
        "label": {"column": "y"},
        "split": split,
        "train": {
            "num_boost_round": 20,
            "early_stopping_rounds": 5,
            "params": {"max_depth": 3, "eta": 0.3},
            "exclude": ["t", "m"],
        },
        "output": {"uri": str(out), "valid_predictions": True, "test_predictions": True},
        **sections,
    }
    return JobSpec.model_validate(spec)


TIME = {"by": "time", "column": "t", "valid_from": "2013-09-01", "test_from": "2013-11-01"}


def test_time_split_job_tests_on_the_future_and_predict_reproduces_the_test_metrics(events, client, tmp_path):
    from sklearn.metrics import log_loss, roc_auc_score

    job = _job(events, tmp_path / "bundle", TIME)
    result = dpipe.run(job, client, progress=False)
    rows, manifest = result.rows, result.manifest
    read = pd.read_parquet(events)
    cut_valid, cut_test = pd.Timestamp("2013-09-01", tz=ZONE), pd.Timestamp("2013-11-01", tz=ZONE)
    assert rows["read"] == len(read)
    assert rows["train"] == (read["t"] < cut_valid).sum()
    assert rows["valid"] == ((read["t"] >= cut_valid) & (read["t"] < cut_test)).sum()
    assert rows["test"] == (read["t"] >= cut_test).sum()
    parts = (
        "quarantined",
        "dropped_missing_label",
        "dropped_missing_time",
        "dropped_by_filters",
        "train",
        "valid",
        "test",
    )
    assert sum(rows[k] for k in parts) == rows["read"]
    assert manifest["split"]["valid_from"].startswith("2013-09-01")
    # Statistics come from the training period only.
    scale = next(op for op in Bundle.load(result.bundle_uri).pipeline.ops if op.name == "standard_scale")
    train_z = read.loc[read["t"] < cut_valid, "z"]
    assert scale.get_state()["mean"]["z"] == pytest.approx(train_z.mean(), rel=1e-9)
    # Scoring the test period with the bundle gives exactly the reported test metrics.
    test = read[read["t"] >= cut_test]
    (tmp_path / "future").mkdir()
    test.to_parquet(tmp_path / "future" / "part-0.parquet", index=False)
    dpipe.predict(result.bundle_uri, str(tmp_path / "future"), str(tmp_path / "scores"), client=client, progress=False)
    scored = pd.read_parquet(tmp_path / "scores").merge(test[["event_id", "y"]], on="event_id")
    assert len(scored) == rows["test"]
    metrics = result.metrics["test"]
    assert roc_auc_score(scored["y"], scored["prediction"]) == pytest.approx(metrics["auc"], abs=1e-12)
    assert log_loss(scored["y"], scored["prediction"].astype("float64")) == pytest.approx(metrics["logloss"], rel=1e-9)
    saved = json.loads((Path(result.bundle_uri) / "metrics.json").read_text())
    assert saved["test"] == metrics and set(saved["valid"]) == {"logloss", "auc"}
    written = pd.read_parquet(Path(result.bundle_uri) / "test_predictions")
    assert sorted(written["event_id"]) == sorted(scored["event_id"])


def test_group_split_puts_no_customer_on_two_sides(events, client, tmp_path):
    split = {"by": "group", "key": ["customer"], "valid_fraction": 0.2, "test_fraction": 0.2}
    result = dpipe.run(_job(events, tmp_path / "bundle", split), client, progress=False)
    valid = pd.read_parquet(Path(result.bundle_uri) / "valid_predictions")
    test = pd.read_parquet(Path(result.bundle_uri) / "test_predictions")
    assert len(valid) == result.rows["valid"] and len(test) == result.rows["test"]
    assert not set(valid["customer"]) & set(test["customer"])
    assert result.manifest["split"] == {
        "by": "group",
        "key": ["customer"],
        "valid_fraction": 0.2,
        "test_fraction": 0.2,
    }


@pytest.mark.parametrize(
    "split",
    [
        {"folds": 3, "test_fraction": 0.2, "fold_models": True},
        {"by": "time", "column": "t", "folds": 3, "test_from": "2013-11-01"},
    ],
    ids=["random", "time"],
)
def test_cross_validation_trains_a_model_per_fold_and_keeps_the_model_of_all_rows(events, client, tmp_path, split):
    train = {"num_boost_round": 8, "early_stopping_rounds": 3, "params": {"max_depth": 3}, "exclude": ["t", "m"]}
    result = dpipe.run(_job(events, tmp_path / "bundle", split, train=train), client, progress=False)
    cv = result.metrics["cv"]
    assert cv["folds"] == 3 and len(cv["best_iterations"]) == 3
    for name, value in cv["metrics"].items():
        assert len(value["per_fold"]) == 3
        assert value["mean"] == pytest.approx(np.mean(value["per_fold"]))
        assert value["std"] is not None and value["std"] >= 0
        assert result.metrics["valid"][name] == value["mean"]
    assert result.rows["valid"] == 0 and result.rows["test"] > 0
    assert sum(result.rows["folds"].values()) == result.rows["train"]
    # The model of all training rows, with the folds' mean number of rounds.
    booster = Bundle.load(result.bundle_uri).booster
    assert booster.num_boosted_rounds() == round(np.mean([b + 1 for b in cv["best_iterations"]]))
    oof = pd.read_parquet(Path(result.bundle_uri) / "valid_predictions")
    if split.get("by") == "time":
        # An expanding window: the first period only trains, the others validate once each.
        assert len(oof) == result.rows["train"] - result.rows["folds"]["0"]
        assert not (Path(result.bundle_uri) / "folds").exists()
    else:
        assert len(oof) == result.rows["train"] and oof["event_id"].is_unique
        assert sorted(p.name for p in (Path(result.bundle_uri) / "folds").iterdir()) == [
            f"fold_{i}.ubj" for i in range(3)
        ]


@pytest.mark.parametrize(
    ("split", "sections", "error", "message"),
    [
        ({"by": "time", "column": "x"}, {}, ColumnError, r"split.column: 'x' is float64, not a date-time"),
        ({"by": "time", "column": "when"}, {}, ColumnError, r"split.column: 'when' not found"),
        (
            {"by": "time", "column": "t", "valid_from": "2013-06-01", "test_from": "2014-03-01"},
            {},
            DataError,
            r"no test rows .*: no row is at or after test_from 2014-03-01.*runs from 2013-01-01",
        ),
        ({"by": "group", "key": ["tail"]}, {}, ColumnError, r"split.key: .*tail"),
        ({"by": "group", "key": ["kind"], "folds": 5}, {}, DataError, r"fewer groups of \['kind'\] than folds \(5\)"),
        (
            # Event ids follow time: from December on, every label is 1.
            {"by": "time", "column": "t", "valid_from": "2013-12-10"},
            {"label": {"expr": "y == 1 or event_id >= 11000"}},
            DataError,
            r"the valid rows all have label 1",
        ),
        (
            {"test_fraction": 0.2},
            {"train": {"eval_metric": ["auc", "pre@5"], "exclude": ["t", "m"]}},
            SpecError,
            r"train.eval_metric: metric\(s\) \['pre@5'\] cannot be computed",
        ),
    ],
    ids=[
        "not-a-time",
        "no-such-column",
        "no-test-rows",
        "no-group-key",
        "more-folds-than-groups",
        "one-class",
        "metric",
    ],
)
def test_bad_splits_get_one_clear_message(events, client, tmp_path, split, sections, error, message):
    job = _job(events, tmp_path / "bundle", split, **sections)
    with pytest.raises(error, match=message):
        dpipe.run(job, client, progress=False)
    assert not (tmp_path / "bundle").exists()


def test_incremental_runs_refuse_cuts_that_move_with_the_data(events, tmp_path):
    from dpipe.incremental import check_job

    moving = _job(events, tmp_path / "b", {"by": "time", "column": "t", "valid_fraction": 0.2})
    with pytest.raises(SpecError, match=r"split: cuts at fractions of the time range"):
        check_job(moving)
    check_job(_job(events, tmp_path / "b", TIME))  # fixed dates: fine
