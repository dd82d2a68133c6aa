"""Job kinds that use a trained model: ``predict``, ``register`` and ``monitor``.

They make each step of a model's life a spec, so that ``dpipe run`` runs it and a flow
(:mod:`dpipe.spec.flow`) can chain it after the training job that made the bundle::

    kind: predict                     # score a source with a bundle, commit the scores once
    bundle: models:/flights@champion  # a bundle's URI, or a registered version
    registry: runs/registry           # where models:/ names are found (default $DPIPE_REGISTRY)
    source: {uri: data/flights/flights, filters: [[month, ">=", 11]]}
    output: {format: sql, uri: "duckdb:///runs/scores.duckdb", table: scores}

    kind: register                    # copy a bundle into the registry; move an alias through the gate
    bundle: runs/flights
    registry: {uri: runs/registry, name: flights, aliases: [challenger], gate: {metric: auc, source: ...}}
    promote: champion

    kind: monitor                     # drift of a batch against the bundle's training profile
    bundle: models:/flights@champion
    source: {uri: data/flights/flights, filters: [[month, ">=", 11]]}
    output: runs/flights-drift        # drift.json and drift.html
    thresholds: {psi: 0.25}

Imports neither Dask nor pandas.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict
from dpipe.spec.connectors import SinkSpec
from dpipe.spec.lineage import LineageSpec
from dpipe.spec.models import ClusterSpec
from dpipe.spec.monitor import ThresholdsSpec
from dpipe.spec.registry import RegistrySpec
from dpipe.spec.source import SourceSpec

_NAME = Field(default="job", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")


class _ReadsWithBundle(Strict):
    """The keys of a job that reads a source with a trained bundle (``predict``, ``monitor``)."""

    name: str = _NAME
    #: A bundle's URI, or ``models:/NAME@ALIAS`` / ``models:/NAME/N`` in ``registry``.
    bundle: str = Field(min_length=1)
    #: The registry ``models:/`` URIs are found in (default: ``$DPIPE_REGISTRY``).
    registry: str | None = Field(default=None, min_length=1)
    #: fsspec options of the bundle (and of a ``registry`` URL).
    storage_options: dict[str, Any] = Field(default_factory=dict)
    source: SourceSpec
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)


class PredictJobSpec(_ReadsWithBundle):
    """Score ``source`` with ``bundle`` and commit the predictions to ``output`` exactly once.

    A rerun with the same bundle, the same input and the same output commits nothing and
    computes nothing (``dpipe run --force`` scores again).
    """

    kind: Literal["predict"]
    output: SinkSpec
    #: Columns written beside the prediction (default: the training job's ``id_columns``).
    id_columns: list[str] | None = None
    lineage: LineageSpec | None = None


class RegisterJobSpec(Strict):
    """Register ``bundle`` as a new version of ``registry.name``; with ``promote``, move that alias
    to it through ``registry.gate`` (unconditionally without a gate).

    A rerun whose bundle is already the newest version (the same training run) registers nothing.
    """

    kind: Literal["register"]
    name: str = _NAME
    bundle: str = Field(min_length=1)
    #: fsspec options of the bundle (the registry's are ``registry.storage_options``).
    storage_options: dict[str, Any] = Field(default_factory=dict)
    registry: RegistrySpec
    #: The alias to move to the new version when it passes the gate, e.g. ``champion``.
    promote: str | None = Field(default=None, min_length=1)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @model_validator(mode="after")
    def _named(self):
        if self.registry.name is None:
            raise ValueError("`registry.name` is required: the model the bundle becomes a version of")
        gate = self.registry.gate
        if self.promote is not None and gate is not None and gate.source is None:
            raise ValueError(
                "`registry.gate.source` is required to promote through the gate: the rows both models are"
                " scored on (or drop `registry.gate` to move the alias unconditionally)"
            )
        return self


class MonitorJobSpec(_ReadsWithBundle):
    """Compare ``source`` with ``bundle``'s training profile; commit the report to ``output``.

    The run succeeds whether or not a threshold is crossed: its result says which were (``dpipe
    run`` exits 3 when one is, as ``dpipe monitor`` does, and a flow raises its ``drift`` alerts).
    """

    kind: Literal["monitor"]
    #: A folder for ``drift.json`` and ``drift.html`` (replaced whole); none: the result only.
    output: str | None = Field(default=None, min_length=1)
    #: Limits by statistic (``psi: 0.25``, ``ks: null``); default: the training job's ``monitor:``.
    thresholds: dict[str, float | None] | None = None
    #: Judge the metrics against the validation metrics (default: when the batch has the label).
    labels: bool | None = None

    @field_validator("thresholds")
    @classmethod
    def _known_statistics(cls, value: dict[str, float | None] | None) -> dict[str, float | None] | None:
        if value is not None:
            ThresholdsSpec.model_validate(value)  # unknown statistics and out-of-range limits fail here
        return value


#: The job kinds of this module, by ``kind``.
TASK_KINDS: dict[str, type[Strict]] = {
    "predict": PredictJobSpec,
    "register": RegisterJobSpec,
    "monitor": MonitorJobSpec,
}

#: Any of them.
TaskJob = PredictJobSpec | RegisterJobSpec | MonitorJobSpec
