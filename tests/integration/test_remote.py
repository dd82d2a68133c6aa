"""Jobs on an existing cluster: a real `dask scheduler` and two `dask worker` processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

import dpipe
from tests.conftest import ROOT, free_port, job_dict

# Small enough to keep each training run to a few seconds on two cores.
FAST_TRAIN = {"num_boost_round": 8, "early_stopping_rounds": 3}


def dpipe_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpipe.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=240
    )


def read_manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, demo_root, client):
    """A bundle trained on the session LocalCluster, for the predict tests."""
    out = tmp_path_factory.mktemp("remote-bundle") / "model"
    job = dpipe.job_from_dict(job_dict(demo_root, out, train=FAST_TRAIN))
    return dpipe.run(job, client=client, progress=False).bundle_uri


# -- run ---------------------------------------------------------------------------------------
def test_cli_run_on_remote_scheduler(remote_scheduler, demo_root, tmp_path):
    # The file's own uris point nowhere: the run only works if the --set overrides are applied.
    spec = tmp_path / "job.yaml"
    spec.write_text(
        yaml.safe_dump(job_dict(demo_root, tmp_path / "unused", source={"uri": "missing/events"}, train=FAST_TRAIN))
    )
    out = tmp_path / "runs" / "m1"

    proc = dpipe_cli(
        "run",
        str(spec),
        "--scheduler",
        remote_scheduler,
        "--set",
        f"source.uri={demo_root / 'events'}",
        "--set",
        f"output.uri={out}",
    )

    assert proc.returncode == 0, proc.stderr
    assert f"connected to {remote_scheduler} (2 workers, 2 threads)" in proc.stderr
    assert f"bundle: {out}" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "evaluation.json",
        "manifest.json",
        "metrics.json",
        "model.ubj",
        "pipeline.json",
        "profile.json",
        "report.html",
        "state.json",
    ]
    manifest = read_manifest(out)
    assert manifest["cluster"] == {"scheduler": remote_scheduler, "workers": 2, "threads": 2}
    assert manifest["spec"]["output"]["uri"] == str(out)
    assert manifest["rows"]["read"] == 20_000
    assert not (tmp_path / "unused").exists()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["m1"]  # no staging folder left


@pytest.mark.parametrize("how", ["argument", "spec", "environment"])
def test_api_run_on_remote_scheduler(how, remote_scheduler, demo_root, tmp_path, monkeypatch):
    out = tmp_path / "m1"
    sections = {"cluster": {"address": remote_scheduler}} if how == "spec" else {}
    job = dpipe.job_from_dict(job_dict(demo_root, out, train=FAST_TRAIN, **sections))
    if how == "environment":
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", remote_scheduler)

    result = dpipe.run(job, scheduler=remote_scheduler if how == "argument" else None, progress=False)

    assert result.bundle_uri == str(out)
    assert result.manifest["cluster"] == {"scheduler": remote_scheduler, "workers": 2, "threads": 2}
    assert read_manifest(out)["cluster"]["scheduler"] == remote_scheduler
    assert result.rows["train"] + result.rows["valid"] == 20_000
    assert 0.5 < result.metrics["valid"]["auc"] <= 1.0


def test_scheduler_argument_wins_over_environment(remote_scheduler, demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", f"tcp://127.0.0.1:{free_port()}")
    job = dpipe.job_from_dict(job_dict(demo_root, tmp_path / "m1", train=FAST_TRAIN))

    result = dpipe.run(job, scheduler=remote_scheduler, progress=False)

    assert result.manifest["cluster"]["scheduler"] == remote_scheduler


# -- unreachable scheduler ---------------------------------------------------------------------
def test_unreachable_scheduler_is_a_cluster_error(demo_root, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "m1"
    job = dpipe.job_from_dict(job_dict(demo_root, out, train=FAST_TRAIN, cluster={"timeout": 2}))

    with pytest.raises(
        dpipe.ClusterError, match=rf"(?s)cannot reach the Dask scheduler at '{re.escape(address)}'.*Hint:"
    ):
        dpipe.run(job, scheduler=address, progress=False)

    assert list(tmp_path.iterdir()) == []


def test_malformed_scheduler_address_is_a_cluster_error(demo_root, tmp_path):
    job = dpipe.job_from_dict(job_dict(demo_root, tmp_path / "m1", train=FAST_TRAIN))
    with pytest.raises(dpipe.ClusterError, match=r"'tcp://127.0.0.1:notaport' is not a valid scheduler address"):
        dpipe.run(job, scheduler="tcp://127.0.0.1:notaport", progress=False)


def test_cli_unreachable_scheduler_prints_one_error_line(demo_root, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(job_dict(demo_root, tmp_path / "m1", train=FAST_TRAIN, cluster={"timeout": 2})))

    proc = dpipe_cli("run", str(spec), "--scheduler", address, "-q")

    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dpipe: error:")]
    assert len(errors) == 1
    assert re.fullmatch(
        rf"dpipe: error: cluster\.address: cannot reach the Dask scheduler at '{re.escape(address)}' \(\w+Error(: [^)]*)?\)",
        errors[0],
    )
    assert "Hint: start it with `dask scheduler`" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "m1").exists()


# -- predict -----------------------------------------------------------------------------------
def test_cli_predict_on_remote_scheduler(bundle, remote_scheduler, demo_root, tmp_path):
    out = tmp_path / "scores"

    proc = dpipe_cli(
        "predict", bundle, "--source", str(demo_root / "events"), "--output", str(out), "--scheduler", remote_scheduler
    )

    assert proc.returncode == 0, proc.stderr
    assert f"connected to {remote_scheduler}" in proc.stderr
    assert proc.stdout.strip() == f"20000 predictions written to {out}"
    assert (out / "_SUCCESS").exists()
    table = pq.read_table(out)
    assert table.num_rows == 20_000
    assert {"event_id", "prediction"} <= set(table.column_names)
    assert len(table.column("event_id").unique()) == 20_000


def test_cli_predict_on_s3_with_the_clients_credentials_only(bundle, remote_scheduler, s3, demo_root, tmp_path):
    """The workers were started without AWS variables: the client's travel with the tasks, and
    no output, log line or manifest shows the secret."""
    import os

    fs, bucket = s3["fs"], s3["bucket"]
    fs.put(str(demo_root / "events"), f"{bucket}/events", recursive=True)
    secret = "sentinel-secret-7f3a9c"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": s3["endpoint"],
    }
    out = f"s3://{bucket}/scores"

    proc = subprocess.run(
        [sys.executable, "-m", "dpipe.cli", "predict", bundle, "--source", f"s3://{bucket}/events", "--output", out]
        + ["--scheduler", remote_scheduler],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        env=env,
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"20000 predictions written to {out}"
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/scores/_SUCCESS")
    assert secret not in proc.stderr + proc.stdout
    for path in fs.find(f"{bucket}/scores"):
        if path.endswith(".json"):
            assert secret not in fs.cat_file(path).decode(), path
