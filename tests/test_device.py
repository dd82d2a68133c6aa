"""`train.device: cuda`: every worker checked for a GPU and XGBoost's CUDA build before any work.

This machine has neither (xgboost-cpu, no NVIDIA driver): the tests check the clear error that a
GPU-less cluster gets, where XGBoost alone would warn and train on the CPU.
"""

from __future__ import annotations

import pytest

import dpipe
from dpipe.device import cuda_devices, probe, require_gpus
from dpipe.errors import ClusterError, SpecError
from dpipe.spec import spec_digest
from dpipe.train import xgb_params
from tests.conftest import job_dict


def test_the_device_reaches_xgboost_and_the_digest_only_when_it_is_not_the_default(demo_root, tmp_path):
    def job(**train):
        return dpipe.job_from_dict(job_dict(demo_root, tmp_path / "out", train=train))

    plain, cpu, cuda = job(), job(device="cpu"), job(device="cuda")
    assert "device" not in xgb_params(plain.train) and xgb_params(cuda.train)["device"] == "cuda"
    # A job written before `device` existed keeps its digest (its runs stay "unchanged").
    assert spec_digest(plain) == spec_digest(cpu) != spec_digest(cuda)
    with pytest.raises(SpecError, match=r"set `train.device` instead of `train.params.device`"):
        job(params={"device": "cuda"})
    with pytest.raises(SpecError, match=r"train.device: Input should be 'cpu' or 'cuda'"):
        job(device="gpu")


def test_a_machine_without_a_gpu_says_why():
    count, why = cuda_devices()
    assert count == 0 and why
    found = probe()
    assert found["ok"] is False and "built without CUDA" in found["why"]


def test_a_cluster_without_gpus_fails_before_reading_anything(client, demo_root, tmp_path):
    with pytest.raises(ClusterError, match=r"train.device: cuda, but 2 of 2 worker\(s\) cannot train on a GPU") as err:
        require_gpus(client)
    assert all(addr in str(err.value) for addr in client.scheduler_info()["workers"])
    assert "xgboost-cpu" in err.value.hint

    out = tmp_path / "model"
    job = dpipe.job_from_dict(job_dict(demo_root, out, train={"device": "cuda"}))
    with pytest.raises(ClusterError, match=r"cannot train on a GPU \(tcp://"):
        dpipe.run(job, client=client, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".model.dpipe-staging-*"))
