"""Training on GPUs (``train.device: cuda``): every worker checked before any work.

XGBoost given ``device: cuda`` where it cannot use one does not fail: it warns and trains on the
CPU ("Device is changed from GPU to CPU as we couldn't find any available GPU"), and the CPU-only
build (``xgboost-cpu``) does the same. A run asked to train on GPUs and silently training on CPUs
would be slow without saying why, so :func:`require_gpus` asks every worker, before the job
reads anything, whether its XGBoost is built with CUDA and whether the CUDA driver sees a
device, and fails with one message naming the workers that cannot.

With ``device: cuda`` each worker's quantile matrix is built from its placed partitions and
copied to its GPU once (XGBoost keeps the binned matrix on the device for every round); the
saved model is set back to ``device: cpu`` so that prediction and monitoring run anywhere.
"""

from __future__ import annotations

import ctypes
from typing import Any

from dpipe.errors import ClusterError

#: The CUDA driver's library, as the NVIDIA driver installs it.
_LIBCUDA = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def cuda_devices() -> tuple[int, str]:
    """The number of CUDA devices the driver sees here, and why none when it is 0."""
    for name in _LIBCUDA:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) != 0:
            return 0, f"the CUDA driver ({name}) failed to initialise"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0, f"the CUDA driver ({name}) cannot count its devices"
        return count.value, "" if count.value else "the CUDA driver sees no device"
    return 0, "no CUDA driver (libcuda) is installed"


def probe() -> dict[str, Any]:
    """(On a worker.) Whether this process can train XGBoost on a GPU, and if not, why."""
    import xgboost as xgb

    built = bool(xgb.build_info().get("USE_CUDA"))
    count, why = cuda_devices()
    if not built:
        why = f"its xgboost {xgb.__version__} is built without CUDA (xgboost-cpu)"
    return {"ok": built and count > 0, "devices": count, "why": why}


def require_gpus(client: Any) -> dict[str, int]:
    """Every worker's CUDA device count; :class:`ClusterError` naming the workers that cannot
    train on a GPU, and why."""
    found = client.run(probe)
    missing = {addr: p["why"] for addr, p in sorted(found.items()) if not p["ok"]}
    if missing:
        reasons = "; ".join(f"{addr}: {why}" for addr, why in missing.items())
        raise ClusterError(
            f"train.device: cuda, but {len(missing)} of {len(found)} worker(s) cannot train on a GPU ({reasons})",
            hint="run the workers on machines with an NVIDIA GPU and driver, with `xgboost` (the CUDA build,"
            " not `xgboost-cpu`) installed; or set `train.device: cpu`",
        )
    return {addr: int(p["devices"]) for addr, p in found.items()}
