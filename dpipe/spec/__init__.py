"""Job specs: models, YAML loading, overrides. Imports neither Dask nor pandas."""

from dpipe.spec.features import OP_MODELS, OP_NAMES, OpSpec
from dpipe.spec.load import apply_override, job_from_dict, load_job, redacted
from dpipe.spec.quality import CHECK_MODELS, CHECK_NAMES, CheckSpec, QuarantineSpec
from dpipe.spec.models import (
    ClusterSpec,
    JobSpec,
    LabelSpec,
    OutputSpec,
    SourceSpec,
    SplitSpec,
    TrainSpec,
)

__all__ = [
    "CHECK_MODELS",
    "CHECK_NAMES",
    "CheckSpec",
    "QuarantineSpec",
    "OP_MODELS",
    "OP_NAMES",
    "ClusterSpec",
    "JobSpec",
    "LabelSpec",
    "OpSpec",
    "OutputSpec",
    "SourceSpec",
    "SplitSpec",
    "TrainSpec",
    "apply_override",
    "job_from_dict",
    "load_job",
    "redacted",
]
