"""A secure cluster: a `dask scheduler` and `dask worker` started with TLS flags and certificates
the test makes (Dask's ``Security.temporary``: a self-signed certificate that is its own CA)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import dpipe
from dpipe.errors import ClusterError, SpecError
from tests.conftest import ROOT, dask_processes, job_dict

FAST_TRAIN = {"num_boost_round": 5, "early_stopping_rounds": 2}


def pem_files(folder: Path) -> dict[str, str]:
    """A CA, certificate and key as PEM files (one self-signed certificate)."""
    from distributed.security import Security

    sec = Security.temporary()
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    files["ca"].write_text(sec.tls_ca_file)
    files["cert"].write_text(sec.tls_client_cert)
    files["key"].write_text(sec.tls_client_key)
    return {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    from distributed.security import Security

    tmp = tmp_path_factory.mktemp("tls")
    pem = pem_files(tmp / "pem")
    flags = ["--tls-ca-file", pem["ca"], "--tls-cert", pem["cert"], "--tls-key", pem["key"]]
    security = Security(
        tls_ca_file=pem["ca"], tls_client_cert=pem["cert"], tls_client_key=pem["key"], require_encryption=True
    )
    with dask_processes(
        tmp, workers=1, scheduler_args=["--protocol", "tls", *flags], worker_args=flags, security=security
    ) as (address, _):
        assert address.startswith("tls://")
        yield address, pem


def dpipe_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpipe.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=240
    )


def test_cli_runs_on_a_tls_scheduler_with_the_tls_flags(tls_cluster, demo_root, tmp_path):
    address, pem = tls_cluster
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(job_dict(demo_root, tmp_path / "model", train=FAST_TRAIN)))
    flags = ["--tls-ca-file", pem["ca"], "--tls-cert", pem["cert"], "--tls-key", pem["key"]]

    proc = dpipe_cli("run", str(spec), "--scheduler", address, *flags)

    assert proc.returncode == 0, proc.stderr
    assert f"connected to {address} (1 workers, 1 threads)" in proc.stderr
    assert (tmp_path / "model" / "manifest.json").exists()


def test_cluster_security_in_the_spec(tls_cluster, demo_root, tmp_path):
    address, pem = tls_cluster
    spec = job_dict(
        demo_root,
        tmp_path / "model",
        train=FAST_TRAIN,
        cluster={
            "address": address,
            "security": {"tls_ca_file": pem["ca"], "tls_cert": pem["cert"], "tls_key": pem["key"]},
        },
    )
    result = dpipe.run(dpipe.job_from_dict(spec), progress=False)
    assert result.metrics["valid"]["auc"] > 0.5


def test_plain_tcp_client_against_a_tls_scheduler_is_told_to_use_tls(tls_cluster, demo_root, tmp_path):
    address, _ = tls_cluster
    plain = "tcp://" + address.removeprefix("tls://")
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(job_dict(demo_root, tmp_path / "model", train=FAST_TRAIN)))

    proc = dpipe_cli("run", str(spec), "--scheduler", plain, "--set", "cluster.timeout=3")

    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "only accepts TLS connections" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert any(line.startswith("Hint:") and address in line for line in lines), proc.stderr
    assert not (tmp_path / "model").exists()


def test_certificates_of_another_ca_fail_the_handshake_clearly(tls_cluster, demo_root, tmp_path):
    address, _ = tls_cluster
    other = pem_files(tmp_path / "other")
    tls = {"tls_ca_file": other["ca"], "tls_cert": other["cert"], "tls_key": other["key"]}
    job = dpipe.job_from_dict(
        job_dict(
            demo_root, tmp_path / "model", train=FAST_TRAIN, cluster={"address": address, "security": tls, "timeout": 3}
        )
    )
    with pytest.raises(ClusterError, match="TLS handshake with the Dask scheduler") as info:
        dpipe.run(job, progress=False)
    assert "--tls-ca-file" in info.value.hint
    assert not (tmp_path / "model").exists()


def test_tls_address_without_certificates(tls_cluster, demo_root, tmp_path):
    address, _ = tls_cluster
    job = dpipe.job_from_dict(job_dict(demo_root, tmp_path / "model", train=FAST_TRAIN, cluster={"timeout": 3}))
    with pytest.raises(ClusterError, match="no certificates are given"):
        dpipe.run(job, scheduler=address, progress=False)


def test_security_spec_errors(tmp_path, demo_root):
    base = job_dict(demo_root, tmp_path / "model")
    with pytest.raises(SpecError, match="plain tcp://"):
        dpipe.job_from_dict(
            {**base, "cluster": {"address": "tcp://127.0.0.1:1", "security": {"tls_ca_file": "a", "tls_cert": "b"}}}
        )
    job = dpipe.job_from_dict(
        {
            **base,
            "cluster": {
                "address": "tls://127.0.0.1:1",
                "security": {"tls_ca_file": str(tmp_path / "no.pem"), "tls_cert": "b"},
            },
        }
    )
    with pytest.raises(ClusterError, match="tls_ca_file .*no.pem.* is not a file"):
        dpipe.run(job, progress=False)
    proc = dpipe_cli("predict", "models/none", "--source", "x", "--output", "y", "--tls-cert", "c.pem")
    assert proc.returncode == 2 and "TLS needs --tls-ca-file too" in proc.stderr, proc.stderr
