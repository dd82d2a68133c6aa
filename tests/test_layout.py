"""The training layout (``train.layout``): one worker with the host's threads, or every worker."""

from __future__ import annotations

import json

import pytest

import dpipe
from dpipe.errors import SpecError
from dpipe.layout import decide, target
from tests.conftest import job_dict


def training_task(key) -> bool:
    """Whether a task is one of XGBoost's training tasks (``xgboost.dask.train`` runs one per
    worker through ``map_worker_partitions``, whose tasks are named ``fn``)."""
    return str(key).startswith("fn-")


def workers(*hosts: str, threads: int = 1) -> dict[str, dict]:
    return {f"tcp://{host}:{4000 + i}": {"host": host, "nthreads": threads} for i, host in enumerate(hosts)}


def test_all_is_the_default_and_one_takes_the_threads_of_the_largest_host():
    info = {**workers("a", "a", threads=2), **workers("b", threads=8)}
    assert not decide("all", info).one
    one = decide("one", info)
    assert one.one and one.threads == 8 and "train.layout: one" in one.reason
    # One worker holds every row already: nothing to gather.
    assert not decide("one", workers("a")).one


def test_the_target_is_the_live_worker_holding_most_rows():
    where = ["w1", "w2", "w2", "gone"]
    assert target(["w1", "w2"], where, [100, 40, 40, 500]) == "w1"
    assert target(["w1", "w2"], where, None) == "w2"  # by pieces when sizes are unknown
    assert target(["w1", "w2"], ["gone"], [5]) == "w1"  # a tie: the first


def test_layout_is_a_spec_setting_that_does_not_change_the_content_key(demo_root, tmp_path):
    from dpipe.spec.load import spec_digest

    base = job_dict(demo_root, tmp_path / "out")
    one = dpipe.job_from_dict({**base, "train": {**base["train"], "layout": "one"}})
    assert dpipe.job_from_dict(base).train.layout == "all"
    assert spec_digest(one) == spec_digest(dpipe.job_from_dict(base))
    with pytest.raises(SpecError, match="layout"):
        dpipe.job_from_dict({**base, "train": {**base["train"], "layout": "some"}})


def _trained_on(client, demo_root, out, layout: str):
    """The run's result, and the workers XGBoost's training tasks ran on."""
    from distributed import get_task_stream

    base = job_dict(demo_root, out)
    job = dpipe.job_from_dict({**base, "train": {**base["train"], "layout": layout}})
    with get_task_stream(client) as stream:
        result = dpipe.run(job, client=client, progress=False)
    where = {t["worker"] for t in stream.data if training_task(t["key"])}
    return result, where


def test_one_worker_trains_with_both_threads_and_learns_what_every_worker_learns(client, demo_root, tmp_path):
    one, on_one = _trained_on(client, demo_root, tmp_path / "one", "one")
    every, on_every = _trained_on(client, demo_root, tmp_path / "all", "all")

    assert len(on_one) == 1 and len(on_every) == 2
    layout = json.loads((tmp_path / "one" / "manifest.json").read_text())["training"]["layout"]
    assert layout["workers"] == "one" and layout["threads"] == 2, layout
    every_layout = json.loads((tmp_path / "all" / "manifest.json").read_text())["training"]["layout"]
    assert every_layout["workers"] == "all"
    # The same rows and the same model up to the bins of the sketch (one worker's against two merged).
    assert one.rows == every.rows
    assert abs(one.metrics["valid"]["auc"] - every.metrics["valid"]["auc"]) <= 0.01


def test_folds_train_each_model_on_one_worker(client, demo_root, tmp_path):
    base = job_dict(demo_root, tmp_path / "cv")
    job = dpipe.job_from_dict(
        {
            **base,
            "split": {"folds": 3, "valid_fraction": None, "seed": 3, "key": ["event_id"]},
            "train": {**base["train"], "layout": "one", "num_boost_round": 10},
        }
    )
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        result = dpipe.run(job, client=client, progress=False)
    trainings = [t["worker"] for t in stream.data if training_task(t["key"])]
    assert len(trainings) == 4  # three folds and the final model, each one task on one worker
    assert result.metrics["cv"]["folds"] == 3 and result.metrics["valid"]["auc"] > 0.6
