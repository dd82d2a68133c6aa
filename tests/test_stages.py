"""The run's stages one at a time: plan, fit, place, train, write, each with a frozen result."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

import dpipe
from dpipe import stages
from dpipe.columns import LABEL, SIDE, VALID
from dpipe.errors import StateError
from dpipe.io import StagedOutput
from dpipe.plan import plan
from dpipe.quality import NO_PREPASS, QualityGate
from dpipe.spec import job_from_dict
from dpipe.train import TrainConfig
from tests.conftest import job_dict


class CountingCompute:
    """``dask.compute`` on the session cluster that counts its calls."""

    def __init__(self, client):
        self.client, self.calls = client, 0

    def __call__(self, *collections):
        self.calls += 1
        return tuple(self.client.gather(self.client.compute(list(collections))))


@pytest.fixture(scope="module")
def job(demo_root, tmp_path_factory):
    return job_from_dict(job_dict(demo_root, tmp_path_factory.mktemp("stages") / "bundle"))


@pytest.fixture(scope="module")
def planned(job):
    return plan(job)


@pytest.fixture(scope="module")
def fitted(planned, client):
    gate = stages.quality_gate(planned)
    pre = stages.prepass(planned, gate, CountingCompute(client))
    return gate, pre, stages.fit(planned, gate, pre, CountingCompute(client))


@pytest.fixture(scope="module")
def placed(planned, fitted, client):
    gate, pre, fit = fitted
    return stages.place(client, planned, fit, gate, pre)


def test_a_plan_is_immutable_and_derives_what_it_can(planned):
    with pytest.raises(dataclasses.FrozenInstanceError):
        planned.job = None
    # Derived once and kept (tests/integration/test_jobs.py pins the exact columns).
    assert planned.fit_columns is planned.fit_columns
    assert {"event_id", "converted"} <= set(planned.fit_columns) and not {"sessions", "date"} & set(planned.fit_columns)
    assert planned.label_inputs == {"converted"} and planned.classify
    assert not planned.new_pipeline().fitted
    assert planned.new_pipeline() is not planned.new_pipeline()


def test_fit_is_one_computation_per_phase_and_leaves_the_plan_unfitted(planned, client, demo_root):
    gate = stages.quality_gate(planned)
    compute = CountingCompute(client)
    pre = stages.prepass(planned, gate, compute)
    assert compute.calls == 0  # no check needs a pre-pass
    fitted = stages.fit(planned, gate, pre, compute)
    assert compute.calls == len(fitted.phases) == 1  # every op reads source columns: one pass
    assert fitted.pipeline.fitted and not planned.pipeline.fitted
    rows = fitted.rows
    assert rows["read"] == 20_000 == rows["train"] + rows["valid"] + rows["dropped_by_filters"]
    assert sum(fitted.rows_per_partition) == rows["train"] + rows["valid"]
    assert fitted.passes == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        fitted.rows = {}
    # Fitting the same plan again learns the same statistics: nothing was kept between the calls.
    again = stages.fit(planned, gate, pre, CountingCompute(client))
    assert [op.get_state() for op in again.pipeline.ops] == [op.get_state() for op in fitted.pipeline.ops]


def test_fit_takes_other_input_rows(planned, client):
    """What an incremental run does: the same plan fitted on some of the rows."""
    first_two = planned.source.frame.partitions[:2]
    # A gate that tags rows with their file must be given the files of the frame's partitions.
    checks = dpipe.job_from_dict(
        {
            **planned.job.model_dump(by_alias=True),
            "checks": [{"check": "not_null", "columns": ["age"], "action": "fail"}],
        }
    ).checks
    with pytest.raises(StateError, match=r"the quality gate names 4 file\(s\) for a frame of 2 partition\(s\)"):
        stages.fit(
            planned,
            QualityGate(checks, None, planned.source.files),
            NO_PREPASS,
            CountingCompute(client),
            frame=first_two,
        )
    gate = QualityGate(list(planned.job.checks), planned.job.quarantine, planned.source.files[:2])
    pre = stages.prepass(planned, gate, CountingCompute(client))
    fitted = stages.fit(planned, gate, pre, CountingCompute(client), frame=first_two)
    expected = int(first_two.map_partitions(len).sum().compute(scheduler="sync"))
    assert fitted.rows["read"] == expected < 20_000
    assert len(fitted.rows_per_partition) == 2


def test_place_computes_both_sides_into_worker_memory(placed, fitted, client):
    _, _, fit = fitted
    # Placement's balance across workers is tested in tests/test_train.py; here: the stage's result.
    counts = client.gather(client.compute([placed.train.shape[0], placed.valid.shape[0]]))
    assert counts == [fit.rows["train"], fit.rows["valid"]]
    checks = client.compute(
        [placed.train[LABEL].isna().any(), (placed.valid[SIDE] == VALID).all(), (placed.train[SIDE] == VALID).any()]
    )
    assert client.gather(checks) == [False, True, False]
    assert placed.features == fit.model_input.features


class StopAfter(xgb.callback.TrainingCallback):
    """Stops training after ``rounds`` rounds (returning True from after_iteration)."""

    def __init__(self, rounds: int):
        self.rounds = rounds

    def after_iteration(self, model, epoch, evals_log):
        return epoch + 1 >= self.rounds


def test_train_reuses_placed_data_with_callbacks_and_a_previous_model(placed, job, client):
    config = TrainConfig.from_spec(job.train).replace(num_boost_round=8, early_stopping_rounds=None)
    first = stages.train(client, placed, config)
    assert first.metrics["rounds_trained"] == 8
    stopped = stages.train(client, placed, config.replace(callbacks=(StopAfter(3),)))
    assert stopped.metrics["rounds_trained"] == 3
    more = stages.train(client, placed, config.replace(num_boost_round=4, xgb_model=first.booster))
    assert more.booster.num_boosted_rounds() == 12  # continued from the first booster's 8 rounds
    assert more.metrics["rounds_trained"] == 12 and len(more.metrics["history"]["valid"]["auc"]) == 4
    assert more.metrics["valid"]["auc"] == more.metrics["history"]["valid"]["auc"][-1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.metrics = {}


def test_write_stages_a_bundle_that_loads(planned, fitted, placed, job, client, tmp_path):
    _, _, fit = fitted
    trained = stages.train(client, placed, TrainConfig.from_spec(job.train).replace(num_boost_round=5))
    with StagedOutput(str(tmp_path / "bundle"), marker="manifest.json") as out:
        stages.write(out, planned, fit, placed, trained, CountingCompute(client), {"job": "stage-test"})
        uri = out.commit()
    bundle = dpipe.bundle.Bundle.load(uri)
    assert bundle.manifest == {"job": "stage-test"}
    assert bundle.model_input.features == fit.model_input.features


def test_assess_scores_the_validation_rows_once_for_itself_and_the_bundle(
    planned, fitted, placed, job, client, tmp_path
):
    from distributed import futures_of

    from dpipe.progress import Reporter

    _, _, fit = fitted
    output = planned.job.output.model_copy(update={"valid_predictions": True})
    planned = dataclasses.replace(planned, job=planned.job.model_copy(update={"output": output}))
    trained = stages.train(client, placed, TrainConfig.from_spec(job.train).replace(num_boost_round=5))
    compute = Reporter(progress=False).compute(client)
    assessed = stages.assess(planned, fit, placed, trained, compute, client=client)
    # Scored into worker memory once; the bundle's file is written from there.
    assert len(futures_of(assessed.valid_predictions)) == placed.valid.npartitions
    with StagedOutput(str(tmp_path / "bundle"), marker="manifest.json") as out:
        stages.write(out, planned, fit, placed, trained, compute, {"job": "stage-test"}, assessed)
        out.commit()
    written = pd.read_parquet(tmp_path / "bundle" / "valid_predictions").sort_values("event_id")
    again = client.compute(stages.valid_predictions(placed, trained, fit.model_input, ["event_id", LABEL])).result()
    again = again.rename(columns={LABEL: "label"}).sort_values("event_id")
    assert list(written.columns) == list(again.columns) == ["event_id", "label", "prediction"]
    np.testing.assert_array_equal(written.to_numpy(), again.to_numpy())
    assert assessed.evaluation["sides"]["valid"]["rows"] == len(again)


def test_run_result_manifest_is_what_manifest_json_holds(demo_root, client, tmp_path):
    job = job_from_dict(job_dict(demo_root, tmp_path / "bundle", train={"num_boost_round": 5}))
    result = dpipe.run(job, client=client, progress=False)
    written = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert json.loads(json.dumps(result.manifest, default=str)) == written
    assert set(result.timings) == {"plan", "fit", "load", "train", "assess", "write"}
    assert "write" not in written["timings"]  # the manifest cannot time the write that produces it
    assert written["input"]["lineage"]["datums"]  # what exactly was read, for new-data-only runs


def test_progress_goes_to_the_dpipe_logger_not_to_the_terminal(demo_root, client, tmp_path, caplog, capsys):
    job = job_from_dict(job_dict(demo_root, tmp_path / "bundle", train={"num_boost_round": 3}))
    with caplog.at_level(logging.INFO, logger="dpipe"):
        dpipe.run(job, client=client)
    messages = [r.getMessage() for r in caplog.records if r.name == "dpipe"]
    assert any(m.startswith("rows: 20000 read") for m in messages)
    assert any(m.startswith("bundle committed: ") for m in messages)
    out, err = capsys.readouterr()
    assert "[dpipe]" not in out + err  # a library prints nothing; the CLI adds the handler


def test_task_keys_are_short_enough_to_spill_to_disk(planned, fitted):
    """A worker over its memory target spills results to files named after their keys (quoted):
    keys naming dpipe's partition functions by their reprs were longer than a file name may be."""
    from urllib.parse import quote

    gate, pre, fit = fitted
    frame = stages.model_rows(planned, fit, gate, pre, stages.source_rows(planned, gate))
    keys = [str(k) for part in frame.to_delayed(optimize_graph=True) for k in part.__dask_graph__()]
    assert max(len(quote(k, safe="")) for k in keys) < 200, max(keys, key=len)


def test_a_run_leaves_no_rows_on_the_cluster(demo_root, client, tmp_path):
    """Whatever reference cycles keep alive until a garbage collection (switched off here: XGBoost's
    ``DaskDMatrix`` is in one, with its futures of every partition), no rows stay on the workers
    once the run returns."""
    import gc

    job = job_from_dict(
        job_dict(
            demo_root,
            tmp_path / "bundle",
            train={"num_boost_round": 5},
            output={"uri": str(tmp_path / "bundle"), "valid_predictions": True},
        )
    )

    def held() -> set:
        return {k for keys in client.has_what().values() for k in keys}

    gc.collect()
    before = held()  # what the session's other tests still hold on this cluster
    gc.disable()
    try:
        dpipe.run(job, client=client, progress=False)
        deadline = time.monotonic() + 10
        while held() - before and time.monotonic() < deadline:
            time.sleep(0.1)
        left = held() - before
    finally:
        gc.enable()
    assert not left
