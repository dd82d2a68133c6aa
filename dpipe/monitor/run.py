"""``monitor()``: the batch planned, measured in one computation, compared, judged, written."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dpipe import cluster as _cluster
from dpipe import drift
from dpipe.bundle import Bundle
from dpipe.errors import SpecError
from dpipe.io import StagedOutput
from dpipe.io.fs import full_uri, resolve, storage_errors
from dpipe.manifest import source_lineage
from dpipe.monitor.batch import Batch, plan_batch, read_profile
from dpipe.monitor.judge import crossings, monitor_spec
from dpipe.monitor.page import render_html
from dpipe.progress import Reporter
from dpipe.spec.base import redact, redact_url
from dpipe.spec.monitor import MonitorSpec
from dpipe.spec.source import BaseSourceSpec, source_of

DRIFT_JSON = "drift.json"
DRIFT_HTML = "drift.html"


@dataclass(frozen=True)
class MonitorResult:
    """What :func:`monitor` found. ``report`` is exactly what ``drift.json`` holds."""

    drifted: bool
    #: Every threshold crossed: ``{statistic, name, value, threshold}``, worst first.
    crossed: list[dict[str, Any]]
    #: One row per feature: ``name`` and its statistics.
    features: list[dict[str, Any]]
    rows: int
    report: dict[str, Any] = field(repr=False)
    #: Where ``drift.json`` and ``drift.html`` were committed (``None``: not written).
    output_uri: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: Why nothing was measured (``output`` holds this very report already), else ``None``.
    skipped: str | None = None

    @property
    def worst(self) -> dict[str, Any] | None:
        """The feature of the largest PSI: ``{name, psi}``."""
        return self.report.get("worst")

    def summary(self) -> str:
        worst = self.worst
        head = f"{self.rows} rows checked; " + (
            f"worst feature {worst['name']!r} (psi={worst['psi']:.3f})" if worst else "no feature measured"
        )
        if not self.crossed:
            return head + "\nno threshold crossed"
        lines = [f"  {c['statistic']} of {c['name']!r}: {c['value']:.4f} > {c['threshold']}" for c in self.crossed]
        return head + f"\nDRIFT: {len(self.crossed)} threshold(s) crossed:\n" + "\n".join(lines)


# -- monitor -----------------------------------------------------------------------------------
def monitor(
    bundle: str,
    source: str | Mapping[str, Any] | BaseSourceSpec,
    *,
    client=None,
    scheduler: str | None = None,
    thresholds: Any = None,
    output: str | None = None,
    labels: bool | None = None,
    progress: bool = True,
    format: str | None = None,
    storage_options: dict | None = None,
    force: bool = False,
) -> MonitorResult:
    """Compare a batch of new data with the reference profile of a model bundle.

    Parameters
    ----------
    bundle
        A model bundle holding ``profile.json``, or a registered one (``models:/churn@champion``,
        in the registry ``$DPIPE_REGISTRY`` names).
    source
        The batch: a path or URL (``format`` and ``storage_options`` apply) or a source entry.
        It must provide the columns the bundle's ops and model read; a missing one fails with
        one :class:`~dpipe.errors.ColumnError` naming all of them, before any cluster work.
    thresholds
        A :class:`~dpipe.spec.monitor.MonitorSpec` or a mapping (see :func:`monitor_spec`);
        default: the bundle's job's ``monitor:`` section, else the defaults.
    output
        A folder to commit ``drift.json`` and ``drift.html`` to (replaced whole).
    labels
        Compute the metrics against the training validation metrics from the job's label:
        ``None`` when the batch has the label's columns, ``True`` requires them.
    force
        Measure even when ``output`` holds the report of this bundle, batch (exactly what is
        read) and thresholds already; without it such a rerun reads no row and returns that report.

    Examples
    --------
    >>> result = dpipe.monitor("runs/churn", "lake/events/date=2024-06-01", output="runs/drift")
    >>> result.drifted, result.crossed[:1]
    """
    reporter = Reporter(progress=progress)
    started = dt.datetime.now(dt.UTC)
    from dpipe.registry import resolve_model_uri

    with reporter.stage("load bundle", bundle):
        bundle = resolve_model_uri(bundle, storage_options=storage_options)
        b = Bundle.load(bundle, storage_options)
        profile = read_profile(bundle, storage_options)
    saved = (b.manifest.get("spec") or {}).get("monitor")
    spec = monitor_spec(thresholds, saved if isinstance(saved, Mapping) else None)
    with (
        reporter.stage("plan", "checking the batch against the bundle"),
        _cluster.planning(None, client=client, address=scheduler),
    ):
        src_spec = source_of(source, format=format, storage_options=storage_options)
        batch = plan_batch(b, profile, src_spec, labels, storage_options)
    reporter.log(f"source: {len(batch.source.files)} partition(s) from {redact_url(src_spec.uri)}; {batch.labels}")
    if output is not None and not force:
        done = _unchanged(
            output, storage_options, b, spec, source_lineage(batch.source, uri=src_spec.uri, format=src_spec.format)
        )
        if done is not None:
            reporter.log(f"unchanged: {output} holds the report of this bundle, batch and thresholds")
            return _result(done, output, reporter, skipped="the output holds this report already")
    with (
        _cluster.connect(None, client=client, address=scheduler, log=reporter.log) as client,
        reporter.stage("measure", "reading the batch once: features, predictions and counts"),
    ):
        (counts,) = reporter.compute(client)(batch.measures["counts"])
    compared = drift.compare(profile, {"counts": counts})
    report = _report(b, bundle, spec, compared, batch, src_spec, started, storage_options)
    uri = _write(output, report, storage_options) if output is not None else None
    if uri is not None:
        reporter.log(f"drift report committed: {uri}")
    return _result(report, uri, reporter)


def _result(report: dict[str, Any], uri: str | None, reporter: Reporter, skipped: str | None = None) -> MonitorResult:
    return MonitorResult(
        drifted=bool(report["crossed"]),
        crossed=list(report["crossed"]),
        features=[{"name": name, **stats} for name, stats in report["features"].items()],
        rows=report["rows"],
        report=report,
        output_uri=uri,
        timings=dict(reporter.timings),
        skipped=skipped,
    )


def _unchanged(
    output: str, storage_options: dict | None, b: Bundle, spec: MonitorSpec, read: dict[str, Any]
) -> dict[str, Any] | None:
    """The report committed at ``output`` when it judged this bundle's run, exactly the data
    ``read`` and the same thresholds, else ``None``."""
    fs, path = resolve(output, storage_options, where="output")
    report = f"{path.rstrip('/')}/{DRIFT_JSON}"
    with storage_errors("output", output):
        if not fs.exists(report):
            return None
        raw = fs.cat_file(report)
    try:
        saved = json.loads(raw)
    except ValueError:
        return None
    same = (
        isinstance(saved, dict)
        and saved.get("bundle_run_id") == b.manifest.get("run_id")
        and saved.get("input") == redact(json.loads(json.dumps(read, default=str)))
        and saved.get("thresholds") == spec.thresholds.active()
        and saved.get("ignore") == list(spec.ignore)
    )
    return saved if same else None


def _metrics(b: Bundle, compared: Mapping[str, Any]) -> dict[str, Any] | None:
    """The batch's metrics against the bundle's validation metrics, with the relative ``drop``."""
    valid = {k: v for k, v in (b.metrics.get("valid") or {}).items() if v is not None}
    current = drift.metrics(compared, [m for m in valid if m in drift.METRICS])
    if not compared.get("labels"):
        return None
    out = {}
    for name, value in current.items():
        if value is None:
            continue
        reference = float(valid[name])
        worse = reference - value if drift.METRICS[name].higher_is_better else value - reference
        out[name] = {"valid": reference, "current": value, "drop": worse / max(abs(reference), 1e-12)}
    return out


def _report(
    b: Bundle,
    bundle: str,
    spec: MonitorSpec,
    compared: dict[str, Any],
    batch: Batch,
    src_spec: Any,
    started: dt.datetime,
    storage_options: dict | None,
) -> dict[str, Any]:
    fs, path = resolve(bundle, storage_options, where="bundle")
    report: dict[str, Any] = {
        "kind": "monitor",
        "bundle": redact_url(full_uri(fs, path.rstrip("/"))),
        "bundle_run_id": b.manifest.get("run_id"),
        "model_job": b.manifest.get("job"),
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "input": source_lineage(batch.source, uri=src_spec.uri, format=src_spec.format),
        "rows": compared["rows"],
        "reference_rows": compared["reference_rows"],
        "thresholds": spec.thresholds.active(),
        "ignore": list(spec.ignore),
        "retrain": spec.retrain,
        "labels": batch.labels,
        "worst": compared["worst"],
        "features": compared["features"],
        "prediction": compared["prediction"],
        "metrics": _metrics(b, compared),
    }
    report["crossed"] = crossings(report, spec)
    report["drifted"] = bool(report["crossed"])
    return redact(report)


def _write(output: str, report: dict[str, Any], storage_options: dict | None) -> str:
    with StagedOutput(output, storage_options, overwrite=True, marker=DRIFT_JSON, where="output") as out:
        out.write_bytes(DRIFT_HTML, render_html(report).encode())
        out.write_bytes(DRIFT_JSON, json.dumps(report, indent=2, allow_nan=False).encode())
        return out.commit()


# -- retraining --------------------------------------------------------------------------------
def retrain(job: Any, *, client=None, scheduler: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the training job ``job`` (a spec path or a :class:`~dpipe.spec.JobSpec`): what a
    crossed threshold asks for. With a ``registry:`` section the new bundle becomes a version of
    ``registry.name`` aliased ``challenger``, and is promoted to ``champion`` only through the
    registry's gate (scored with the champion on the gate's evaluation source); without a gate it
    stays the challenger. Returns what happened: the job, the bundle, its validation metrics,
    the version and the gate's decision."""
    from dpipe.runner import run
    from dpipe.spec import JobSpec, load_job

    spec = load_job(job) if isinstance(job, str) else job
    if not isinstance(spec, JobSpec):
        raise SpecError(
            f"monitor: the retraining job {spec.name!r} is a features job; it trains no model",
            hint="name a training job (`kind: train`) with `--retrain` or `monitor.retrain`",
        )
    result = run(spec, client, scheduler=scheduler, progress=progress)
    out: dict[str, Any] = {
        "job": result.job,
        "bundle_uri": result.bundle_uri,
        "valid": result.metrics.get("valid", {}),
        "version": None,
        "decision": None,
    }
    if spec.registry is None:
        return out
    from dpipe.registry import Registry
    from dpipe.scoring import score_bundle

    if spec.registry.name is None:
        raise SpecError(
            f"monitor: the retraining job {spec.name!r} has a `registry` without a `name` to register its model as",
            hint="add `registry.name`, e.g. `name: churn`",
        )
    registry = Registry(spec.registry.uri, spec.registry.storage_options)
    name = spec.registry.name
    number = result.registered["version"] if result.registered else None
    if number is None:
        number = registry.register(result.bundle_uri, name, storage_options=spec.output.storage_options).number
    registry.set_alias(name, "challenger", number)
    out["version"] = f"models:/{name}/{number}"
    gate = spec.registry.gate
    if gate is not None:
        if gate.source is None:
            raise SpecError(
                f"monitor: the gate of registry {name!r} names no evaluation `source` to score the models on",
                hint="add `registry.gate.source`: rows neither model was trained on",
            )
        options, rows = spec.registry.storage_options or None, gate.source

        def scores(uri: str) -> dict[str, Any]:
            return score_bundle(uri, rows, storage_options=options, client=client, scheduler=scheduler)

        out["decision"] = registry.promote(name, number, "champion", gate=gate, scores=scores).to_dict()
    return out
