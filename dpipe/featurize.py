"""Features jobs: source -> quality checks -> feature ops -> a sink, committed once.

The delivery half of a pipeline: the rows a scoring or analytics consumer reads, transformed
exactly as a model's training rows were (``pipeline_from: runs/m1``), or by ops fitted on this
job's own data. The stages are the training run's (:mod:`dpipe.stages` and the quality gate);
statistics and the row accounting are computed in the fit pass, or, with a fitted pipeline, in
the same computation as the write. A check that fails aborts the write: nothing is committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from dpipe import cluster as _cluster
from dpipe.bundle import Bundle
from dpipe.errors import ColumnError
from dpipe.io import BadFileLog, StagedOutput, open_sink, open_source
from dpipe.manifest import cluster_info, features_manifest
from dpipe.ops.base import count_rows
from dpipe.pipeline import FeaturePipeline
from dpipe.plan import table_opener
from dpipe.progress import Reporter
from dpipe.quality import BAD_FILES_DIR, QualityGate, check_columns
from dpipe.spec import FeaturesJobSpec, redacted

__all__ = ["FeaturesResult", "run_features"]


@dataclass(frozen=True)
class FeaturesResult:
    """What a features job committed: where, how many rows, and its manifest (with the output's lineage)."""

    job: str
    output_uri: str
    rows: dict
    output: dict
    timings: dict
    manifest: dict = field(repr=False)

    def summary(self) -> str:
        written = self.output
        what = "already committed by an earlier run (nothing appended)" if written.get("duplicate") else "committed"
        pin = {k: written[k] for k in ("version", "snapshot_id") if written.get(k) is not None}
        return (
            f"job {self.job!r}: {self.rows['read']} rows read, {self.rows['written']} written\n"
            f"output: {self.output_uri} ({written.get('kind')}{', ' + str(pin) if pin else ''}) {what}"
        )


def run_features(
    job: FeaturesJobSpec, client=None, *, scheduler: str | None = None, progress: bool = True, force: bool = False
) -> FeaturesResult:
    """Run a features job: write its transformed rows to ``job.output`` in one commit.

    The commit carries a transaction id derived from the spec and exactly what was read, so
    rerunning a job on the same input (a retry after a crash past the commit) appends nothing.

    Examples
    --------
    >>> result = dpipe.run(dpipe.load_job("jobs/flights-features.yaml"))
    >>> result.output["version"]
    """
    reporter = Reporter(progress=progress)
    started = dt.datetime.now(dt.UTC)
    with (
        reporter.stage("plan", "checking the spec against the source schema"),
        _cluster.planning(job.cluster, client=client, address=scheduler),
    ):
        fp = plan_features(job)
    source, pipeline, sink, side, bad_files = fp.source, fp.pipeline, fp.sink, fp.side, fp.bad_files
    tables, bundle_uri = fp.tables, fp.bundle_uri
    txn = content_key(job, source)
    if force:
        txn = f"{txn}:forced:{uuid.uuid4().hex[:12]}"  # a commit of its own, even on the same input
    elif _already_committed(sink, txn):
        reporter.log(
            f"unchanged: {job.output.uri} already holds the commit of this spec and input (txn {txn});"
            " nothing to do (--force runs it again)"
        )
        skipped = {"uri": job.output.uri, "kind": job.output.format, "txn": txn, "duplicate": True, "skipped": True}
        rows = {"read": 0, "quarantined": 0, "written": 0}
        return FeaturesResult(job.name, job.output.uri, rows, skipped, dict(reporter.timings), {"skipped": skipped})
    reporter.log(f"source: {len(source.files)} partition(s) from {job.source.uri}")
    # The quarantine folder is staged like the output: a failed run leaves neither behind.
    staged = side if side is not None else nullcontext()
    with _cluster.connect(job.cluster, client=client, address=scheduler, log=reporter.log) as client, sink, staged:
        compute = reporter.compute(client)
        gate = QualityGate(list(job.checks), job.quarantine, source.files)
        pre = gate.prepass(source.frame, compute)
        checked = gate.apply(source.frame, pre, quarantine_to=side)
        lazy = {"quality": checked.lazy, "input": {"rows_read": count_rows(source.frame)}}
        steps: dict[str, Any] = {}
        phases: list[list[str]] = []
        values: dict[str, Any] = {}
        if not pipeline.fitted:
            with reporter.stage("fit", f"learning feature statistics ({len(pipeline.ops)} ops)"):
                report = pipeline.fit(checked.frame, extras=lambda f: lazy, compute=compute)
            values, steps, phases = dict(report.extras), dict(report.steps), list(report.phases)
        frame = _select(pipeline.transform(checked.frame), job)
        _check_sink(sink, frame._meta)
        with reporter.stage("write", f"{job.output.format} output to {job.output.uri}"):
            write_compute = compute if values else _with_extras(compute, lazy, values)
            sink.write(frame, compute=write_compute)
            rows_read = int(values["input"]["rows_read"])
            quality = gate.evaluate(
                values["quality"],
                rows_read=rows_read,
                bad_files=bad_files.records() if bad_files is not None else [],
                log=reporter.log,
            )
            manifest = features_manifest(
                job,
                source=source,
                tables=tables,
                pipeline_from=bundle_uri,
                steps=steps,
                fit_phases=phases,
                quality=quality,
                timings=reporter.timings,
                cluster=cluster_info(client),
                started=started,
            )
            if job.txn is None and not getattr(source, "versioned", True):
                reporter.log(
                    f"source: {job.source.format} rows carry no version, so a retry of this run cannot be"
                    " told from a new one; set `txn:` (e.g. from the scheduler's run date) to commit it once"
                )
            written = sink.commit(metadata={"manifest": manifest, "pipeline": pipeline.to_dict()}, txn=txn)
            if side is not None:
                side.write_json("manifest.json", manifest)
                side.commit()
    rows = {"read": rows_read, "quarantined": quality.get("quarantined_rows", 0), "written": written.rows}
    manifest = {**manifest, "rows": rows, "output": written.lineage(), "txn": txn}
    state = "already committed (nothing appended)" if written.duplicate else "committed"
    reporter.log(f"output {state}: {written.uri} ({written.rows} rows)")
    return FeaturesResult(job.name, written.uri, rows, written.lineage(), dict(reporter.timings), manifest)


@dataclass(frozen=True)
class FeaturesPlan:
    """A features job checked against its source's schema and its sink, before a cluster starts."""

    source: Any
    pipeline: FeaturePipeline
    sink: Any
    #: The transformed rows' schema (an empty frame); ``None`` until ops fitted here are fitted.
    output_meta: Any
    tables: dict[str, Any] = field(default_factory=dict)
    bundle_uri: str | None = None
    side: StagedOutput | None = None
    bad_files: BadFileLog | None = None


def plan_features(job: FeaturesJobSpec) -> FeaturesPlan:
    """Open the source, the pipeline (a bundle's, or the spec's ops) and the sink, and check the
    columns of each against the others; only listings, footers and table logs are read."""
    side = _quarantine_output(job)
    bad_files = (
        BadFileLog(side.staged_uri(BAD_FILES_DIR), side.storage_options)
        if side is not None and job.quarantine is not None and job.quarantine.bad_files == "skip"
        else None
    )
    source = open_source(job.source, where="source", bad_file_log=bad_files)
    meta = source.frame._meta
    check_columns(job, meta)
    pipeline, bundle_uri = _pipeline(job)
    tables = pipeline.bind(table_opener(job.pipeline_from.storage_options if job.pipeline_from else None))
    if pipeline.needs_label:
        where = next(op.where for op in pipeline.ops if op.needs_label)
        raise ColumnError(
            f"{where}: target encoding needs the label, and a features job has none",
            hint="fit it in a training job and apply it here with `pipeline_from: <bundle>`",
        )
    out_meta = None
    if pipeline.fitted:
        missing = sorted(pipeline.required_columns(set(meta.columns)) - set(meta.columns))
        if missing and bundle_uri is not None:
            raise ColumnError(
                f"source: the pipeline of {bundle_uri!r} needs column(s) {missing} that {job.source.uri!r}"
                f" does not provide; available: {list(meta.columns)}",
                hint="read the same columns the model was trained on",
            )
        out_meta = _select(pipeline.describe(meta), job)
    sink = open_sink(job.output, where="output")
    if out_meta is not None:
        _check_sink(sink, out_meta)
    return FeaturesPlan(source, pipeline, sink, out_meta, tables, bundle_uri, side, bad_files)


def check_features(job: FeaturesJobSpec) -> str:
    """What ``dpipe validate`` says of a features job: its source, ops and sink, all checked."""
    fp = plan_features(job)
    ops = f"the fitted pipeline of {fp.bundle_uri}" if fp.bundle_uri else f"{len(fp.pipeline.ops)} op(s)"
    columns = (
        f"{len(fp.output_meta.columns)} output column(s)" if fp.output_meta is not None else "columns known once fitted"
    )
    return f"source has {len(fp.source.files)} partition(s), {ops}, {columns}, to a {job.output.format} sink"


def _pipeline(job: FeaturesJobSpec) -> tuple[FeaturePipeline, str | None]:
    if job.pipeline_from is None:
        return FeaturePipeline.from_specs(job.features), None
    bundle = Bundle.load(job.pipeline_from.uri, job.pipeline_from.storage_options)
    return bundle.pipeline, job.pipeline_from.uri


def _select(meta_or_frame: Any, job: FeaturesJobSpec) -> Any:
    if not job.columns:
        return meta_or_frame
    missing = [c for c in job.columns if c not in meta_or_frame.columns]
    if missing:
        raise ColumnError(
            f"columns: {missing} are not in the transformed rows; available: {list(meta_or_frame.columns)}",
            hint="fix `columns` (the ops' output columns, or the source's)",
        )
    return meta_or_frame[list(job.columns)]


def _check_sink(sink: Any, meta: Any) -> None:
    check = getattr(sink, "check", None)
    if callable(check):
        check(meta)


def _with_extras(compute: Callable[..., tuple], lazy: dict[str, Any], into: dict[str, Any]) -> Callable[..., tuple]:
    """A ``compute`` that computes ``lazy`` along with what the sink writes: one pass, not two."""
    from dpipe.collect import Collector

    def both(*collections: Any) -> tuple:
        collector = Collector()
        for consumer, measures in lazy.items():
            collector.register(consumer, measures)
        tokens: list[Any] = []
        done = collector.compute(lambda *values: tuple(_capture(compute, collections, values, tokens)))
        into.update({consumer: done[consumer] for consumer in lazy})
        return tuple(tokens)

    return both


def _capture(compute: Callable[..., tuple], collections: tuple, values: tuple, out: list[Any]) -> tuple:
    results = compute(*collections, *values)
    out.extend(results[: len(collections)])
    return tuple(results[len(collections) :])


def _already_committed(sink: Any, txn: str) -> bool:
    """Whether the sink says a commit of ``txn`` is there (sinks that cannot tell: no)."""
    has_commit = getattr(sink, "has_commit", None)
    return bool(has_commit(txn)) if callable(has_commit) else False


def _quarantine_output(job: FeaturesJobSpec) -> StagedOutput | None:
    q = job.quarantine
    if q is None or q.uri is None:
        return None
    return StagedOutput(q.uri, q.storage_options, overwrite=True, marker="manifest.json", where="quarantine.uri")


def content_key(job: FeaturesJobSpec, source: Any) -> str:
    """The commit's transaction id: ``job.txn``, else the job's name and a hash of its spec and
    exactly what it read.

    Identical for a retried run of the same job on the same data when the source is versioned
    (:attr:`dpipe.io.OpenedSource.versioned`); a live database's lineage holds its snapshot, so
    each run gets its own id there unless the spec names one.
    """
    if job.txn is not None:
        return job.txn
    data = {"spec": redacted(job), "input": source.lineage()}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return f"dpipe:{job.name}:{digest}"
