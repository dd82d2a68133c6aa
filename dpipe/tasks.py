"""Run the job kinds that use a trained model: ``predict``, ``register`` and ``monitor``.

Each is a thin spec-shaped front to what ``dpipe predict``, ``dpipe register`` / ``dpipe
registry promote`` and ``dpipe monitor`` do, returning one :class:`TaskResult`; a rerun on the
same bundle and data does nothing and says so (:attr:`TaskResult.skipped`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpipe.spec.tasks import MonitorJobSpec, PredictJobSpec, RegisterJobSpec, TaskJob


@dataclass(frozen=True)
class TaskResult:
    """What a ``predict``, ``register`` or ``monitor`` job did.

    ``output`` is what a later job reads: the predictions' URI, the ``models:/NAME/N`` version
    registered, or the drift report's folder.
    """

    job: str
    kind: str
    output: str | None
    #: Why nothing was done (the same bundle and data as a committed run), else ``None``.
    skipped: str | None = None
    #: ``monitor``: whether a threshold was crossed.
    drifted: bool = False
    #: The kind's own result, JSON-able (rows written, the version record, the crossings...).
    details: dict[str, Any] = field(default_factory=dict, repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        head = f"job {self.job!r} ({self.kind}): "
        if self.skipped:
            return head + f"nothing to do ({self.skipped}); output: {self.output}"
        if self.kind == "predict":
            return head + f"{self.details.get('rows')} predictions committed to {self.output}"
        if self.kind == "register":
            decision = self.details.get("decision")
            promoted = f"; {decision['reason']}" if decision else ""
            return head + f"registered {self.output}{promoted}"
        crossed = self.details.get("crossed") or []
        state = f"DRIFT: {len(crossed)} threshold(s) crossed" if crossed else "no threshold crossed"
        return head + f"{self.details.get('rows')} rows checked; {state}; report: {self.output}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "kind": self.kind,
            "output": self.output,
            "skipped": self.skipped,
            "drifted": self.drifted,
            "details": self.details,
            "timings": self.timings,
        }


def run_task(
    job: TaskJob, client=None, *, scheduler: str | None = None, progress: bool = True, force: bool = False
) -> TaskResult:
    """Run a ``predict``, ``register`` or ``monitor`` job (see :mod:`dpipe.spec.tasks`)."""
    runners: dict[type, Callable[..., TaskResult]] = {
        PredictJobSpec: _predict,
        RegisterJobSpec: _register,
        MonitorJobSpec: _monitor,
    }
    return runners[type(job)](job, client=client, scheduler=scheduler, progress=progress, force=force)


def _predict(job: PredictJobSpec, **how: Any) -> TaskResult:
    from dpipe.runner import predict

    result = predict(
        job.bundle,
        job.source,
        job.output,
        id_columns=job.id_columns,
        storage_options=job.storage_options or None,
        lineage=job.lineage,
        registry=job.registry,
        **how,
    )
    details = {"rows": result.rows, "columns": result.columns, "commit": result.output}
    return TaskResult(job.name, "predict", result.output_uri, result.skipped, False, details, result.timings)


def _register(job: RegisterJobSpec, *, client=None, scheduler=None, progress=True, force=False) -> TaskResult:
    from dpipe.registry import Registry
    from dpipe.registry.bundles import read_bundle

    spec = job.registry
    name = spec.name
    assert name is not None  # the spec requires it
    registry = Registry(spec.uri, spec.storage_options)
    options = job.storage_options or None
    run_id = read_bundle(job.bundle, options).manifest.get("run_id")
    known = [] if force else [v for v in _versions(registry, name) if v.record.get("run_id") == run_id]
    skipped = None
    if known:
        version = known[-1]
        skipped = f"the bundle of run {run_id} is {version.ref} already"
        for alias in spec.aliases:
            if registry.aliases(name).get(alias) != version.number:
                registry.set_alias(name, alias, version.number, reason="register")
    else:
        version = registry.register(job.bundle, name, storage_options=options, aliases=spec.aliases)
    details: dict[str, Any] = {"version": version.number, "uri": version.uri, "decision": None}
    if job.promote is not None:
        if registry.aliases(name).get(job.promote) == version.number:
            details["decision"] = {"promoted": True, "reason": f"{job.promote!r} is {version.ref} already"}
        else:
            skipped = None
            details["decision"] = _promote(job, registry, version.number, client, scheduler).to_dict()
    return TaskResult(job.name, "register", version.ref, skipped, False, details)


def _versions(registry: Any, name: str) -> list[Any]:
    """The versions of ``name``; none while the registry or the model does not exist yet (the
    first registration creates them)."""
    from dpipe.errors import SpecError, StorageError

    try:
        return registry.versions(name)
    except (SpecError, StorageError):
        return []


def _promote(job: RegisterJobSpec, registry: Any, number: int, client: Any, scheduler: str | None) -> Any:
    from dpipe.registry.gate import promote

    spec = job.registry
    assert spec.name is not None and job.promote is not None
    gate = spec.gate
    if gate is None:
        return promote(registry, spec.name, number, job.promote)
    from dpipe.scoring import score_bundle

    rows, options = gate.source, spec.storage_options or None
    assert rows is not None  # the spec requires a gate's source to promote

    def scores(uri: str) -> dict[str, Any]:
        return score_bundle(uri, rows, storage_options=options, client=client, scheduler=scheduler)

    return promote(registry, spec.name, number, job.promote, gate=gate, scores=scores)


def _monitor(job: MonitorJobSpec, **how: Any) -> TaskResult:
    from dpipe.monitor import monitor
    from dpipe.registry import resolve_model_uri

    bundle = resolve_model_uri(job.bundle, job.registry, storage_options=job.storage_options or None)
    result = monitor(
        bundle,
        job.source,
        thresholds=job.thresholds,
        output=job.output,
        labels=job.labels,
        storage_options=job.storage_options or None,
        **how,
    )
    details = {
        "rows": result.rows,
        "crossed": json.loads(json.dumps(result.crossed, default=str)),
        "worst": result.worst,
        "bundle": bundle,
    }
    return TaskResult(job.name, "monitor", result.output_uri, result.skipped, result.drifted, details, result.timings)
