"""Job specs: models, YAML loading, overrides. Imports neither Dask nor pandas."""

from dpipe.spec.features import OP_MODELS, OP_NAMES, OpSpec
from dpipe.spec.load import apply_override, job_from_dict, load_job, redacted, spec_digest
from dpipe.spec.models import (
    AnyJob,
    ClusterSpec,
    FeaturesJobSpec,
    JobSpec,
    LabelSpec,
    OutputSpec,
    SourceSpec,
    SplitSpec,
    TrainSpec,
)
from dpipe.spec.quality import CHECK_MODELS, CHECK_NAMES, CheckSpec, QuarantineSpec

__all__ = [
    "CHECK_MODELS",
    "CHECK_NAMES",
    "OP_MODELS",
    "OP_NAMES",
    "AnyJob",
    "CheckSpec",
    "ClusterSpec",
    "FeaturesJobSpec",
    "JobSpec",
    "LabelSpec",
    "OpSpec",
    "OutputSpec",
    "QuarantineSpec",
    "SourceSpec",
    "SplitSpec",
    "TrainSpec",
    "apply_override",
    "job_from_dict",
    "load_job",
    "redacted",
    "spec_digest",
]
