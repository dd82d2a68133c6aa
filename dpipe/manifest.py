"""The run's manifest (its lineage): built in one place from the stages' results.

``manifest.json`` is what a bundle's reader, a later incremental run and ``dpipe show`` rely on:
the resolved spec (``storage_options`` values redacted), exactly what was read (files with their
size and version, every table's lineage), the row accounting, what each op did to the rows, the
fit passes, data quality, stage timings, the cluster and library versions.
:attr:`dpipe.runner.RunResult.manifest` is this same dictionary, as written.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

from dpipe.lineage import code_lineage
from dpipe.spec import JobSpec, redacted, spec_digest
from dpipe.spec.base import redact, redact_url
from dpipe.versions import library_versions


def source_lineage(source: Any, *, uri: str, format: str | None = None) -> dict[str, Any]:
    """What exactly was read from one source: its uri, kind, files and its connector's record."""
    entry: dict[str, Any] = {"uri": redact_url(uri)}
    if format is not None:
        entry["format"] = format
    entry["files"] = [redact_url(f) for f in source.files]
    lineage = getattr(source, "lineage", None)
    if callable(lineage):
        # A database URL's password never reaches a manifest (nor a table's commit metadata).
        entry["lineage"] = redact(copy.deepcopy(lineage()))
    return entry


def run_manifest(
    job: JobSpec,
    *,
    source: Any,
    tables: Mapping[str, Any],
    rows: Mapping[str, Any],
    steps: Mapping[str, Any],
    features: Mapping[str, Any],
    fit_phases: list[list[str]],
    quality: Mapping[str, Any],
    timings: Mapping[str, float],
    cluster: Mapping[str, Any],
    started: dt.datetime,
) -> dict[str, Any]:
    """The manifest of a training run, from the plan's, fit's and training's results."""
    return {
        **_read(job, source, tables, started),
        "rows": dict(rows),
        "steps": dict(steps),
        "features": dict(features),
        **_how(fit_phases, quality, timings, cluster),
    }


def features_manifest(
    job: Any,
    *,
    source: Any,
    tables: Mapping[str, Any],
    pipeline_from: str | None,
    steps: Mapping[str, Any],
    fit_phases: list[list[str]],
    quality: Mapping[str, Any],
    timings: Mapping[str, float],
    cluster: Mapping[str, Any],
    started: dt.datetime,
) -> dict[str, Any]:
    """The manifest of a features job, stored with its output's commit (what was read, how)."""
    return {
        "kind": "features",
        **_read(job, source, tables, started),
        "pipeline_from": pipeline_from,
        "steps": dict(steps),
        **_how(fit_phases, quality, timings, cluster),
    }


def _read(job: Any, source: Any, tables: Mapping[str, Any], started: dt.datetime) -> dict[str, Any]:
    """What every manifest opens with: the job, when, its spec, and exactly what it read."""
    return {
        "dpipe_version": library_versions().get("dpipe"),
        "job": job.name,
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "spec": redacted(job),
        "spec_hash": spec_digest(job),
        "code": code_lineage(getattr(job, "features", [])),
        "input": source_lineage(source, uri=job.source.uri, format=job.source.format),
        "tables": {where: source_lineage(t, uri=t.uri) for where, t in tables.items()},
    }


def _how(
    fit_phases: list[list[str]], quality: Mapping[str, Any], timings: Mapping[str, float], cluster: Mapping[str, Any]
) -> dict[str, Any]:
    """What every manifest closes with: the fit passes, data quality, timings, cluster, versions."""
    return {
        "fit_phases": [list(p) for p in fit_phases],
        "quality": dict(quality),
        "timings": dict(timings),
        "cluster": dict(cluster),
        "versions": library_versions(),
    }


def cluster_info(client: Any) -> dict[str, Any]:
    """The scheduler's address and the workers and threads the run had."""
    info = client.scheduler_info(n_workers=-1)
    workers = info["workers"].values()
    return {
        "scheduler": info.get("address"),
        "workers": len(workers),
        "threads": sum(w["nthreads"] for w in workers),
    }
