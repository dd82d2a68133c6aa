"""Training beyond memory (`train.memory: external`): shards on disk, XGBoost's external-memory
matrices, one training task per worker."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

import dpipe
from dpipe import external
from dpipe.bundle import Bundle
from dpipe.columns import LABEL, SIDE, TRAIN, VALID
from dpipe.errors import SpecError, TrainingError
from dpipe.external import training
from dpipe.spec import spec_digest
from dpipe.train import ModelInput
from tests.conftest import job_dict


def shards(*rows: int) -> list[external.Shard]:
    return [external.Shard(f"s{i}", n) for i, n in enumerate(rows)]


@pytest.mark.parametrize("rows", [(10, 10, 10), (7, 0, 3, 25), (1, 1, 1, 1, 1), (100,), (3,)])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_dealing_cuts_every_row_once_into_equal_contiguous_shares(rows, n):
    shares = external.deal(shards(*rows), n)
    assert len(shares) == n
    # Every row once, in order.
    dealt = [(r.path, i) for share in shares for r in share for i in range(r.start, r.stop)]
    assert dealt == [(f"s{k}", i) for k, m in enumerate(rows) for i in range(m)]
    sizes = [sum(r.stop - r.start for r in share) for share in shares]
    assert max(sizes) - min(sizes) <= 1
    assert all(r.start < r.stop for share in shares for r in share)


def test_auto_goes_to_disk_when_training_in_memory_would_not_fit_the_workers_memory():
    width = external.row_width(ModelInput(features=[f"f{i}" for i in range(35)], categorical=[]))
    assert width == 4 * 35 + 16
    rows = 10_000_000  # 1.56 GB of rows, 3.1 GB to train in memory
    gib = 2**30
    assert external.decide("auto", rows, width, memory_limit=4 * gib, workers=2).external
    assert not external.decide("auto", rows, width, memory_limit=8 * gib, workers=2).external
    # What the workers hold idle does not count: 16 of them at 8 GiB have 3.3 GiB for the rows.
    assert external.decide("auto", rows, width, memory_limit=8 * gib, workers=16).external
    assert not external.decide("auto", rows, width, memory_limit=None, workers=2).external
    assert external.decide("external", 10, width, memory_limit=None).external
    assert not external.decide("memory", rows, width, memory_limit=2**20).external
    # XGBoost's ~30 bytes a row stay in memory on disk too: 2 workers of 768 MiB cannot hold 40M rows.
    assert external.decide("external", 40_000_000, width, 1536 * 2**20, workers=2).warning
    assert "over 95% of its 768.0 MiB limit" in external.decide("auto", 40_000_000, width, 1536 * 2**20, 2).warning
    assert external.decide("external", 2_000_000, width, 1536 * 2**20, workers=2).warning is None
    reason = external.decide("auto", rows, width, 4 * gib, workers=2).reason
    assert "needs about 2.9 GiB, more than 60% of the workers' 4.0 GiB past what they hold idle" in reason


def test_the_spec_refuses_external_memory_with_folds_or_tuning(demo_root, tmp_path):
    def job(**sections):
        return dpipe.job_from_dict(job_dict(demo_root, tmp_path / "out", **sections))

    with pytest.raises(SpecError, match=r"`split.folds` is not supported with it"):
        job(train={"memory": "external"}, split={"folds": 3, "valid_fraction": None})
    with pytest.raises(SpecError, match=r"train.memory: external is not supported with `tune`"):
        job(
            train={"memory": "external"},
            tune={"n_trials": 2, "space": {"max_depth": {"type": "int", "low": 2, "high": 4}}},
        )
    with pytest.raises(SpecError, match=r"train.memory: Input should be 'auto', 'memory' or 'external'"):
        job(train={"memory": "disk"})
    # Where the rows are held changes how a job runs, not what it computes.
    assert spec_digest(job()) == spec_digest(job(train={"memory": "external", "scratch": str(tmp_path)}))


def test_shards_keep_every_row_and_the_fitted_categories(client, tmp_path):
    import dask.dataframe as dd

    cats = pd.CategoricalDtype(["a", "b", "c", "unseen"])
    pdf = pd.DataFrame(
        {
            "x": np.arange(40, dtype="float32"),
            "c": pd.Categorical.from_codes(np.arange(40) % 3, dtype=cats),
            LABEL: (np.arange(40) % 2).astype("float32"),
            SIDE: np.where(np.arange(40) % 4 == 0, VALID, TRAIN).astype("int8"),
        }
    )
    frame = dd.from_pandas(pdf, npartitions=3)

    def compute(*things):
        return client.compute(list(things), sync=True)

    written = external.write_shards(frame, str(tmp_path), compute)
    assert written.rows(TRAIN) == 30 and written.rows(VALID) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"part-{i:06d}.side-{side}.parquet" for i in range(3) for side in (TRAIN, VALID)
    )
    back = written.frame(TRAIN).compute()
    assert back["c"].dtype == cats  # every fitted category, not only those in the file
    expected = pdf[pdf[SIDE] == TRAIN]
    pd.testing.assert_frame_equal(back.reset_index(drop=True), expected.reset_index(drop=True))


def test_a_batch_is_a_row_group_cut_to_its_range(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "s.parquet")
    pq.write_table(
        pa.table({"x": np.arange(10, dtype="float32"), LABEL: np.ones(10, "float32")}), path, row_group_size=4
    )
    columns = training._Columns(
        ("x",), (), LABEL, pd.DataFrame({"x": pd.Series([], dtype="float32"), LABEL: pd.Series([], dtype="float32")})
    )
    batches = list(training._batches([external.Range(path, 3, 9)]))
    assert [(b.group, b.start, b.stop) for b in batches] == [(0, 3, 4), (1, 0, 4), (2, 0, 1)]
    read = np.concatenate([training._read_batch(b, columns)[0]["x"].to_numpy() for b in batches])
    assert read.tolist() == list(range(3, 9))


def test_a_scratch_directory_the_workers_cannot_see_is_a_clear_error(client, tmp_path):
    with pytest.raises(TrainingError, match=r"cannot see the scratch directory") as err:
        external.require_shared(client, str(tmp_path / "nowhere"))
    assert "train.scratch" in err.value.hint


def test_external_memory_trains_the_model_in_memory_training_does(client, demo_root, tmp_path, caplog):
    def run(name, **train):
        out = tmp_path / name
        spec = job_dict(demo_root, out, train=train, output={"uri": str(out), "valid_predictions": True})
        return dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with caplog.at_level(logging.INFO, logger="dpipe"):
        on_disk = run("external", memory="external", scratch=str(scratch))
    in_memory = run("memory", memory="memory")
    assert "training rows: on disk (train.memory is external)" in caplog.text
    assert "XGBoost's external memory, a task per worker" in caplog.text
    # Same rows, same bins, same trees within the sketch's rounding: the same quality.
    assert abs(on_disk.metrics["valid"]["auc"] - in_memory.metrics["valid"]["auc"]) <= 0.005
    assert on_disk.metrics["history"]["valid"]["auc"] and on_disk.metrics["train"]["auc"] is not None
    assert on_disk.rows == in_memory.rows
    # The shards are gone with the run.
    assert list(scratch.iterdir()) == []
    # The bundle is a whole one: predictions of every validation row, the evaluation, a model
    # that scores like the one evaluated.
    out = tmp_path / "external"
    preds = pd.read_parquet(out / "valid_predictions")
    assert len(preds) == on_disk.rows["valid"]
    assert json.loads((out / "evaluation.json").read_text())["sides"]["valid"]
    bundle = Bundle.load(str(out))
    assert bundle.booster.num_boosted_rounds() == on_disk.metrics["num_boosted_rounds"]
