"""dpipe: machine-learning data pipelines on Dask.

Point it at partitioned data, describe features and training in a job spec, and get a
distributed XGBoost model bundle; the same job runs on a laptop or a Dask cluster.

Examples
--------
>>> import dpipe
>>> job = dpipe.load_job("jobs/quickstart.yaml")
>>> result = dpipe.run(job)                 # embedded LocalCluster
>>> result.metrics["valid"]
>>> dpipe.predict(result.bundle_uri, "data/demo/events", "runs/scores")
"""

from importlib.metadata import PackageNotFoundError, version

from dpipe.errors import (
    BundleError,
    ClusterError,
    ColumnError,
    DataError,
    DpipeError,
    ExpressionError,
    SpecError,
    StateError,
    StorageError,
    TrainingError,
)
from dpipe.spec import FeaturesJobSpec, JobSpec, job_from_dict, load_job

try:
    __version__ = version("dpipe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"


def run(job, client=None, **kwargs):
    """Run a job; see :func:`dpipe.runner.run`."""
    from dpipe.runner import run as _run

    return _run(job, client=client, **kwargs)


def predict(bundle, source, output, **kwargs):
    """Score data with a model bundle; see :func:`dpipe.runner.predict`."""
    from dpipe.runner import predict as _predict

    return _predict(bundle, source, output, **kwargs)


def watch(job, **kwargs):
    """Run a job incrementally whenever its source has new data; see :func:`dpipe.watcher.watch`."""
    from dpipe.watcher import watch as _watch

    return _watch(job, **kwargs)


__all__ = [
    "BundleError",
    "ClusterError",
    "ColumnError",
    "DataError",
    "DpipeError",
    "ExpressionError",
    "FeaturesJobSpec",
    "JobSpec",
    "SpecError",
    "StateError",
    "StorageError",
    "TrainingError",
    "job_from_dict",
    "load_job",
    "predict",
    "run",
    "watch",
]
