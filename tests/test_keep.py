"""One read per job: the rows read are kept in worker memory for the passes after the first."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pytest

import dpipe
from dpipe.io.connector import Datum, OpenedSource
from dpipe.keep import PARQUET_EXPANSION, SHARE, decide, estimate
from tests.conftest import job_dict
from tests.counting_fs import opened, register

GIB = 1024**3


class _Frame:
    def __init__(self, columns):
        self.columns = columns


def source(stored: int | None, *, read: int = 4, columns: int = 8, format: str = "parquet") -> OpenedSource:
    schema = pa.schema([(f"c{i}", pa.float64()) for i in range(columns)])
    datums = (Datum("a", size=stored),) if stored is not None else (Datum("a"),)
    return OpenedSource("mem://x", format, _Frame([f"c{i}" for i in range(read)]), schema, ["a"], datums)


def test_the_estimate_grows_the_stored_share_of_the_columns_read():
    assert estimate(source(1000, read=4, columns=8)) == int(500 * PARQUET_EXPANSION)
    assert estimate(source(1000, read=8, columns=8, format="csv")) == 1500
    assert estimate(source(None)) is None


def test_auto_keeps_rows_within_a_share_of_the_workers_memory():
    fits = int(SHARE * 4 * GIB / PARQUET_EXPANSION)  # read 8 of 8 columns
    assert decide("auto", source(fits, read=8), 4 * GIB).keep
    too_big = decide("auto", source(fits + 1024, read=8), 4 * GIB)
    assert not too_big.keep and "more than 25% of the workers' 4.0 GiB" in too_big.reason
    assert not decide("auto", source(None), 4 * GIB).keep
    assert not decide("auto", source(10), None).keep
    assert decide("always", source(None), None).keep
    assert not decide("never", source(10), 4 * GIB).keep


def test_persist_does_not_change_the_spec_digest(demo_root, tmp_path):
    from dpipe.spec import spec_digest

    digests = {
        how: spec_digest(dpipe.job_from_dict(job_dict(demo_root, tmp_path, cluster={"persist": how})))
        for how in ("auto", "always", "never")
    }
    assert len(set(digests.values())) == 1


def _run(demo_root: Path, tmp_path: Path, client, how: str, log: Path):
    register()
    out = tmp_path / how
    job = dpipe.job_from_dict(
        job_dict(
            demo_root,
            out,
            source={"uri": f"opencount://{demo_root / 'events'}", "storage_options": {"log": str(log)}},
            # A fill then a scaler of what it filled: one fit phase, then the load.
            features=[
                {"op": "fill_missing", "columns": ["age", "income"], "strategy": "median"},
                {"op": "standard_scale", "columns": ["age", "income", "pages_per_session"]},
                {"op": "categorical", "columns": ["country", "device", "plan"]},
            ],
            checks=[{"check": "unique", "columns": ["event_id"], "action": "quarantine"}],
            quarantine={"max_fraction": 0.5},
            cluster={"persist": how},
            train={"num_boost_round": 5},
            output={"uri": str(out), "valid_predictions": True},
        )
    )
    return dpipe.run(job, client=client, progress=False), out


def test_a_job_reads_each_file_once_when_its_rows_are_kept(demo_root, tmp_path, client, caplog):
    files = sorted(str(p) for p in (demo_root / "events").rglob("*.parquet"))
    opens = {}
    results = {}
    for how in ("never", "always"):
        log = tmp_path / f"{how}.log"
        with caplog.at_level("INFO", logger="dpipe"):
            results[how], _ = _run(demo_root, tmp_path, client, how, log)
        opens[how] = [p for p in opened(log) if p.endswith(".parquet")]
    # Planning reads the schema the same way in both; a pass over the rows opens every file.
    # Kept: the quality pre-pass reads the files, the fit and the load read memory.
    assert len(opens["never"]) - len(opens["always"]) == 2 * len(files)
    assert set(opens["always"]) == set(files)
    assert "rows read once and kept in worker memory until placed: cluster.persist is always" in caplog.text
    never, kept = results["never"], results["always"]
    assert (
        never.manifest["fit_phases"] == kept.manifest["fit_phases"] == [["features[0]", "features[1]", "features[2]"]]
    )
    assert kept.metrics == never.metrics
    pipelines = [json.loads((Path(r.bundle_uri) / "pipeline.json").read_text())["ops"] for r in (never, kept)]
    assert pipelines[0] == pipelines[1]


def test_kept_rows_are_released_before_training(demo_root, tmp_path, client, monkeypatch):
    from distributed import futures_of

    import dpipe.keep
    import dpipe.runner
    import dpipe.stages

    seen = {}
    keep, train = dpipe.keep.keep, dpipe.stages.train

    def keeping(*args, **kwargs):
        frame = keep(*args, **kwargs)
        seen["kept"] = {f.key for f in futures_of(frame)}
        return frame

    def training(client, *args, **kwargs):
        # Kept rows leave memory as training starts (a release is a message to the scheduler);
        # what the scheduler still knows of them is their graph.
        deadline = time.monotonic() + 5
        while True:
            seen["training"] = client.run_on_scheduler(
                lambda dask_scheduler: {k for k, ts in dask_scheduler.tasks.items() if ts.state == "memory"}
            )
            if not seen["kept"] & seen["training"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return train(client, *args, **kwargs)

    monkeypatch.setattr(dpipe.runner, "keep", keeping)
    monkeypatch.setattr(dpipe.stages, "train", training)
    _run(demo_root, tmp_path, client, "always", tmp_path / "opens.log")
    assert seen["kept"] and not seen["kept"] & seen["training"]


@pytest.mark.parametrize("how", ["auto", "always"])
def test_a_features_job_reads_its_rows_once(demo_root, tmp_path, client, how):
    register()
    log = tmp_path / "opens.log"
    spec = {
        "kind": "features",
        "name": "feat",
        "source": {"uri": f"opencount://{demo_root / 'events'}", "storage_options": {"log": str(log)}},
        "features": [
            {"op": "fill_missing", "columns": ["age"], "strategy": "mean"},
            {"op": "standard_scale", "columns": ["age"]},
        ],
        "cluster": {"persist": how},
        "output": {"uri": str(tmp_path / "out"), "format": "parquet"},
    }
    before = len(opened(log))
    dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    files = sorted(str(p) for p in (demo_root / "events").rglob("*.parquet"))
    during = [p for p in opened(log)[before:] if p.endswith(".parquet")]
    # One pass over the rows (fit), the write reads memory; planning opens what it opens.
    assert set(during) == set(files)


class _Workers:
    """A client whose scheduler reports these workers' memory limits and threads."""

    def __init__(self, *workers: tuple[int, int]):
        self.workers = {f"tcp://w{i}": {"memory_limit": m, "nthreads": t} for i, (m, t) in enumerate(workers)}

    def scheduler_info(self, n_workers=-1):
        return {"workers": self.workers}


def test_pieces_are_cut_to_what_a_worker_under_a_memory_limit_holds():
    """Pieces of 256 MiB of Parquet are a gigabyte in pandas: workers limited to 768 MiB were
    restarted by their nannies in a loop (40M rows, workers at a quarter of the data)."""
    import dataclasses

    from dpipe.keep import piece_cap, within_memory

    mib = 2**20
    # (768 - 300) / 2 halves / 3 copies / 4x Parquet's expansion = 19.5 MiB.
    assert piece_cap(_Workers((768 * mib, 1), (768 * mib, 1))) == int(468 * mib / 24)
    # The tightest worker decides; threads share a worker's memory.
    assert piece_cap(_Workers((12 * 2**30, 1), (768 * mib, 2))) == int(468 * mib / 48)
    assert piece_cap(_Workers((0, 1))) is None
    assert piece_cap(_Workers((200 * mib, 1))) == mib  # never below 1 MiB
    opened = _opened(combine_to=256 * mib)
    logged: list[str] = []
    capped = within_memory(opened, _Workers((768 * mib, 1)), logged.append)
    assert capped.combine_to == int(468 * mib / 24) and "the workers' memory limit" in logged[0]
    assert within_memory(opened, _Workers((64 * 2**30, 1)), logged.append) is opened
    never = dataclasses.replace(opened, combine_to=None)
    assert within_memory(never, _Workers((768 * mib, 1)), logged.append) is never


def _opened(**fields):
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    from dpipe.io.connector import OpenedSource

    frame = dd.from_pandas(pd.DataFrame({"a": [1]}), npartitions=1)
    return OpenedSource(
        uri="x", format="parquet", frame=frame, schema=pa.schema([("a", pa.int64())]), files=["f"], **fields
    )
