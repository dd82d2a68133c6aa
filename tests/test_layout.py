"""The training layout (``train.layout``): one worker with the host's threads, or every worker."""

from __future__ import annotations

import json

import pytest

import dpipe
from dpipe.errors import SpecError
from dpipe.layout import decide, target
from tests.conftest import job_dict

GiB = 2**30


def training_task(key) -> bool:
    """Whether a task is one of XGBoost's training tasks (``xgboost.dask.train`` runs one per
    worker through ``map_worker_partitions``, whose tasks are named ``fn``)."""
    return str(key).startswith("fn-")


def workers(*hosts: str, threads: int = 1, memory: int = 12 * GiB) -> dict[str, dict]:
    return {
        f"tcp://{host}:{4000 + i}": {"host": host, "nthreads": threads, "memory_limit": memory}
        for i, host in enumerate(hosts)
    }


def test_auto_trains_on_one_worker_with_every_thread_of_one_host():
    layout = decide("auto", workers("127.0.0.1", "127.0.0.1", "127.0.0.1", threads=2), rows=2_000_000, width=156)
    assert layout.one and layout.threads == 6
    assert "share one host" in layout.reason


@pytest.mark.parametrize(
    "how, info, rows, device, why",
    [
        ("all", workers("a", "a"), 1000, "cpu", "train.layout is all"),
        ("auto", workers("a"), 1000, "cpu", "one worker: it holds every row"),
        ("auto", workers("a", "b"), 1000, "cpu", "run on 2 hosts"),
        ("auto", workers("a", "a"), 1000, "cuda", "each worker's GPU"),
        # 40M rows of 156 bytes with XGBoost's matrix: more than 60% of a 12 GiB worker.
        ("auto", workers("a", "a"), 40_000_000, "cpu", "more than 60% of its 12.0 GiB limit"),
    ],
)
def test_auto_keeps_every_worker_where_one_would_not_do(how, info, rows, device, why):
    layout = decide(how, info, rows=rows, width=156, device=device)
    assert not layout.one and layout.threads is None
    assert why in layout.reason


def test_unlimited_workers_train_on_one_whatever_the_size():
    assert decide("auto", workers("a", "a", memory=0), rows=10**9, width=156).one


def test_one_is_obeyed_across_hosts_with_the_largest_hosts_threads():
    info = {**workers("a", "a"), **workers("b", threads=8)}
    layout = decide("one", info, rows=10**9, width=156)
    assert layout.one and layout.threads == 8


def test_the_target_is_the_live_worker_holding_most_rows():
    where = ["w1", "w2", "w2", "gone"]
    assert target(["w1", "w2"], where, [100, 40, 40, 500]) == "w1"
    assert target(["w1", "w2"], where, None) == "w2"  # by pieces when sizes are unknown
    assert target(["w1", "w2"], ["gone"], [5]) == "w1"  # a tie: the first


def test_layout_is_a_spec_setting_that_does_not_change_the_content_key(demo_root, tmp_path):
    from dpipe.spec.load import spec_digest

    base = job_dict(demo_root, tmp_path / "out")
    one = dpipe.job_from_dict({**base, "train": {**base["train"], "layout": "one"}})
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
    one, on_one = _trained_on(client, demo_root, tmp_path / "one", "auto")
    every, on_every = _trained_on(client, demo_root, tmp_path / "all", "all")

    assert len(on_one) == 1 and len(on_every) == 2
    layout = json.loads((tmp_path / "one" / "manifest.json").read_text())["training"]["layout"]
    assert layout["workers"] == "one" and layout["threads"] == 2, layout
    every_layout = json.loads((tmp_path / "all" / "manifest.json").read_text())["training"]["layout"]
    assert every_layout["workers"] == "all"
    # The same rows and the same model up to the bins of the sketch (one worker's against two merged).
    assert one.rows == every.rows
    assert abs(one.metrics["valid"]["auc"] - every.metrics["valid"]["auc"]) <= 0.01
