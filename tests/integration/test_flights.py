"""jobs/flights.yaml on a 5% sample of the real NYC flights 2013 data: joins, aggregates, encoders,
quality checks, training and prediction with the saved transforms."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import dpipe
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def flights_root(tmp_path_factory):
    from dpipe.demo import write_flights_data

    root = tmp_path_factory.mktemp("flights")
    write_flights_data(str(root), sample=0.05, seed=1)
    return root


def flights_job(root, out, *more):
    overrides = [
        f"source.uri={root}/flights",
        f"features[1].source.uri={root}/weather",
        f"features[2].source.uri={root}/planes",
        f"output.uri={out}",
        "output.valid_predictions=true",
        "output.test_predictions=true",
        "train.num_boost_round=60",
        "train.params.nthread=1",
        *more,
    ]
    return dpipe.load_job(ROOT / "jobs" / "flights.yaml", overrides=overrides)


def test_flights_job_trains_and_predicts_with_the_saved_transforms(client, flights_root, tmp_path):
    result = dpipe.run(flights_job(flights_root, tmp_path / "bundle"), client=client, progress=False)
    manifest = result.manifest
    rows = result.rows
    assert rows["read"] == round(336_776 * 0.05)
    parts = ("quarantined", "dropped_missing_label", "dropped_missing_time", "dropped_by_filters", "train", "valid")
    assert rows["read"] == sum(rows[k] for k in parts) + rows["test"]
    assert rows["dropped_missing_label"] > 0  # cancelled flights have no arrival delay
    weather, planes = manifest["steps"]["features[1]"], manifest["steps"]["features[2]"]
    assert weather["strategy"] == planes["strategy"] == "broadcast"
    assert weather["unmatched_fraction"] < 0.02 and 0.05 < planes["unmatched_fraction"] < 0.25
    assert weather["rows_in"] == weather["rows_out"]
    # Everything the ops learn is independent of the other ops' outputs: one pass over the data.
    assert len(manifest["fit_phases"]) == 1
    features = manifest["features"]["features"]
    assert {"origin_EWR", "origin_JFK", "origin_LGA", "plane_age", "tailnum_count", "time_hour_hour"} <= set(features)
    assert not {"arr_delay", "dep_delay", "arr_time", "flight_id"} & set(features)
    assert result.metrics["valid"]["auc"] > 0.6 and result.metrics["test"]["auc"] > 0.6
    # Trained on January-September, validated on October, tested on November-December.
    assert manifest["split"]["by"] == "time" and manifest["split"]["test_from"].startswith("2013-11-01")

    scores = tmp_path / "scores"
    dpipe.predict(result.bundle_uri, str(flights_root / "flights"), str(scores), client=client, progress=False)
    predicted = pd.read_parquet(scores).set_index("flight_id")["prediction"]
    for side in ("valid", "test"):
        saved = pd.read_parquet(tmp_path / "bundle" / f"{side}_predictions").set_index("flight_id")
        joined = saved.join(predicted.rename("again"))
        # Same joins, same fitted vocabularies and encodings at prediction: the same scores.
        assert (joined["prediction"] - joined["again"]).abs().max() < 1e-6
    # Scoring the test flights with the bundle reproduces the reported test metrics.
    flights = pd.read_parquet(flights_root / "flights", columns=["flight_id", "time_hour", "arr_delay"])
    future = flights[(flights["time_hour"] >= "2013-11-01") & flights["arr_delay"].notna()].set_index("flight_id")
    test_ids = saved.index
    assert future.index.isin(test_ids).sum() == len(test_ids) >= len(future) - rows["quarantined"]
    y = (future.loc[test_ids, "arr_delay"] > 15).astype("float64")
    assert roc_auc_score(y, predicted.loc[test_ids]) == pytest.approx(result.metrics["test"]["auc"], abs=1e-12)


def test_a_join_with_the_wrong_key_fails_before_training(client, flights_root, tmp_path):
    job = flights_job(flights_root, tmp_path / "bundle", "features[2].on=[model]")
    with pytest.raises(dpipe.errors.ColumnError, match=r"features\[2\] \(join\): column\(s\) \['model'\] not found"):
        dpipe.run(job, client=client, progress=False)
    assert not (tmp_path / "bundle").exists()
