"""Incremental features jobs: only new datums are transformed and each row is committed exactly
once, even when the run is killed between writing and committing, or just after committing.

Also watch mode: a real ``dpipe watch`` process picks up files written while it runs and stops
cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import deltalake
import pytest
import yaml

import dpipe
from dpipe.errors import SpecError
from tests.conftest import local_client
from tests.integration.conftest import arrive

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def own_client():
    """A cluster of this module's own for the tests whose other processes are killed or signalled
    while connected to it, so nothing they leave behind reaches the session's cluster."""
    with local_client() as c:
        yield c


def features_job(events: Path, lake: Path, **extra) -> dict:
    return {
        "kind": "features",
        "name": "events-features",
        "source": {"uri": str(events)},
        "features": [{"op": "standard_scale", "columns": ["income"]}],
        "columns": ["event_id", "date", "income"],
        "output": {"format": "delta", "uri": str(lake), "mode": "append"},
        "incremental": True,
        **extra,
    }


def ids(lake: Path) -> list[int]:
    return sorted(deltalake.DeltaTable(str(lake)).to_pandas()["event_id"].tolist())


def test_only_new_datums_are_transformed_with_the_first_runs_statistics(months, tmp_path, client, caplog):
    events, later = months
    lake = tmp_path / "lake"
    job = dpipe.job_from_dict(features_job(events, lake))
    first = dpipe.run(job, client, progress=False)
    assert first.rows["written"] == 10000
    scaled = deltalake.DeltaTable(str(lake)).history()
    arrive(later[0], events)
    second = dpipe.run(job, client, progress=False)
    assert second.rows == {"read": 5000, "quarantined": 0, "written": 5000}
    assert second.manifest["parent"]["run_id"] == first.manifest["run_id"]
    table = deltalake.DeltaTable(str(lake))
    assert len(ids(lake)) == len(set(ids(lake))) == 15000 and len(table.history()) == len(scaled) + 1
    # Every batch is transformed by the statistics fitted in the first run.
    history = [h for h in table.history() if "dpipe" in json.dumps(h, default=str)]
    pipelines = {json.dumps(_pipeline_of(h), sort_keys=True) for h in history}
    assert len(pipelines) == 1
    with caplog.at_level("INFO", logger="dpipe"):
        third = dpipe.run(job, client, progress=False)
    assert third.skipped and "no new data" in caplog.text and len(ids(lake)) == 15000


def _pipeline_of(commit: dict) -> dict:
    for value in commit.values():
        if isinstance(value, str) and '"pipeline"' in value:
            return json.loads(value)["pipeline"]
        if isinstance(value, dict) and "pipeline" in value:
            return value["pipeline"]
    raise AssertionError(f"no pipeline in {sorted(commit)}")


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_a_killed_run_leaves_every_row_exactly_once(months, tmp_path, own_client, point):
    client = own_client
    events, later = months
    lake = tmp_path / "lake"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(features_job(events, lake)))
    job = dpipe.load_job(str(spec))
    dpipe.run(job, client, progress=False)
    arrive(later[0], events)
    address = client.scheduler.address
    died = subprocess.run(
        [sys.executable, "-m", "tests.die_at", point, str(spec), address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == 9, died.stderr[-2000:]
    expected = 10000 if point == "before-commit" else 15000
    assert len(ids(lake)) == expected  # killed before its commit: nothing of the batch is visible
    arrive(later[1], events)  # more data arrives before the rerun
    again = dpipe.run(job, client, progress=False)
    assert len(ids(lake)) == len(set(ids(lake))) == 20000
    assert again.rows["written"] == 20000 - expected


def test_a_parquet_output_cannot_be_incremental(months, tmp_path, client):
    events, _ = months
    job = dpipe.job_from_dict(features_job(events, tmp_path / "out", output={"uri": str(tmp_path / "out")}))
    with pytest.raises(SpecError, match="parquet output folder is replaced whole"):
        dpipe.run(job, client, progress=False)


def test_watch_picks_up_new_files_and_stops_on_sigterm(months, tmp_path, own_client):
    client = own_client
    events, later = months
    lake = tmp_path / "lake"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(features_job(events, lake)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = ["dpipe", "watch", str(spec), "--every", "1s", "--scheduler", client.scheduler.address]
    with subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as proc:
        lines: list[str] = []
        try:
            _wait_for_line(proc, lines, "batch 1:")
            arrive(later[0], events)
            _wait_for_line(proc, lines, "batch 2:")
            arrive(later[1], events)
            _wait_for_line(proc, lines, "batch 3:")
            proc.send_signal(signal.SIGTERM)
            _, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    log = "".join(lines) + (rest or "")
    assert proc.returncode == 0, log
    assert "SIGTERM: stopping after the batch in flight" in log and "watch stopped (SIGTERM): 3 batch(es)" in log
    assert "batch 2: 1 new datum(s), 5000 rows read, 5000 written" in log, log
    assert len(ids(lake)) == len(set(ids(lake))) == 20000


def _wait_for_line(proc: subprocess.Popen, lines: list[str], text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"dpipe watch exited ({proc.returncode}):\n" + "".join(lines))
            continue
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} within {timeout}s:\n" + "".join(lines))


def test_force_reprocesses_every_datum_and_replaces_the_rows(months, tmp_path, client):
    events, later = months
    lake = tmp_path / "lake"
    job = dpipe.job_from_dict(features_job(events, lake))
    dpipe.run(job, client, progress=False)
    arrive(later[0], events)
    dpipe.run(job, client, progress=False)
    forced = dpipe.run(job, client, progress=False, force=True)
    assert forced.rows["written"] == 15000 and forced.manifest["incremental"]["action"] == "full"
    assert len(ids(lake)) == len(set(ids(lake))) == 15000  # replaced, not appended


def test_each_batch_keeps_its_quarantined_rows(months, tmp_path, client):
    events, later = months
    quarantine = tmp_path / "quarantine"
    extra = {
        "checks": [{"check": "range", "column": "income", "min": 0, "max": 50000, "action": "quarantine"}],
        "quarantine": {"uri": str(quarantine), "max_fraction": 1.0},
    }
    job = dpipe.job_from_dict(features_job(events, tmp_path / "lake", **extra))
    dpipe.run(job, client, progress=False)
    arrive(later[0], events)
    dpipe.run(job, client, progress=False)
    batches = sorted(p.name for p in quarantine.iterdir())
    assert len(batches) == 2 and all(b.startswith("batch=") for b in batches)
    assert all((quarantine / b / "manifest.json").exists() for b in batches)
