"""Features jobs: source -> quality checks -> feature ops -> a sink, committed once.

The delivery half of a pipeline: the rows a scoring or analytics consumer reads, transformed
exactly as a model's training rows were (``pipeline_from: runs/m1``), or by ops fitted on this
job's own data. The stages are the training run's (:mod:`dpipe.stages` and the quality gate);
statistics and the row accounting are computed in the fit pass, or, with a fitted pipeline, in
the same computation as the write. A check that fails aborts the write: nothing is committed.
"""

from __future__ import annotations

import dataclasses
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
from dpipe.errors import ColumnError, SpecError
from dpipe.incremental import Decision, check_job, decide
from dpipe.io import BadFileLog, Datum, Increment, StagedOutput, already_committed, open_sink, open_source
from dpipe.keep import keep, within_memory
from dpipe.manifest import cluster_info, features_manifest
from dpipe.openlineage import run_events
from dpipe.ops.base import count_rows
from dpipe.pipeline import FeaturePipeline
from dpipe.plan import table_opener
from dpipe.progress import Reporter
from dpipe.quality import BAD_FILES_DIR, QualityGate, check_columns
from dpipe.spec import FeaturesJobSpec, spec_digest
from dpipe.spec.base import redact_url
from dpipe.state import RunState, StateFolder, fit_key, new_run_id

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
    #: Why nothing was computed (an unchanged rerun, no new data), else ``None``.
    skipped: str | None = None

    def summary(self) -> str:
        written = self.output
        what = "already committed by an earlier run (nothing appended)" if written.get("duplicate") else "committed"
        pin = {k: written[k] for k in ("version", "snapshot_id") if written.get(k) is not None}
        if self.skipped and written.get("skipped"):
            return f"job {self.job!r}: nothing to do ({self.skipped}); output: {self.output_uri}"
        return (
            f"job {self.job!r}: {self.rows['read']} rows read, {self.rows['written']} written\n"
            f"output: {self.output_uri} ({written.get('kind')}{', ' + str(pin) if pin else ''}) {what}"
        )


def run_features(
    job: FeaturesJobSpec,
    client=None,
    *,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
    max_datums: int | None = None,
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
    run_id = new_run_id()
    with (
        reporter.stage("plan", "checking the spec against the source schema"),
        _cluster.planning(job.cluster, client=client, address=scheduler),
    ):
        batch = Batch.plan(job, reporter.log, max_datums, force=force) if job.incremental.enabled else None
        if batch is not None and batch.decision.action == "nothing":
            return _nothing_new(job, batch, reporter)
        fp = plan_features(job, batch)
    source, pipeline, sink, side, bad_files = fp.source, fp.pipeline, fp.sink, fp.side, fp.bad_files
    tables, bundle_uri = fp.tables, fp.bundle_uri
    txn = content_key(job, source)
    if force:
        txn = f"{txn}:forced:{uuid.uuid4().hex[:12]}"  # a commit of its own, even on the same input
    elif already_committed(sink, txn):
        reporter.log(
            f"unchanged: {job.output.uri} already holds the commit of this spec and input (txn {txn});"
            " nothing to do (--force runs it again)"
        )
        if batch is not None:  # committed by a run whose state was lost: the state catches up
            done = batch.base.after_run(run_id, source.datums, info={"txn": txn, "recovered": True})
            batch.folder.save(dataclasses.replace(done, pipeline=pipeline.to_dict() if pipeline.fitted else None))
        skipped = {"uri": job.output.uri, "kind": job.output.format, "txn": txn, "duplicate": True, "skipped": True}
        rows = {"read": 0, "quarantined": 0, "written": 0}
        record: dict[str, Any] = {"skipped": skipped}
        return FeaturesResult(job.name, job.output.uri, rows, skipped, dict(reporter.timings), record, "unchanged")
    reporter.log(f"source: {len(source.files)} partition(s) from {job.source.uri}")
    # The quarantine folder is staged like the output: a failed run leaves neither behind.
    staged = side if side is not None else nullcontext()
    with run_events(job.lineage, job=job.name, run_id=run_id, kind="features") as events:
        events.start([source, *tables.values()], [job.output])
        with _cluster.connect(job.cluster, client=client, address=scheduler, log=reporter.log) as client, sink, staged:
            compute = reporter.compute(client)
            source = within_memory(source, client, reporter.log)
            gate = QualityGate(list(job.checks), job.quarantine, source.files)
            # More than one pass (a pre-pass, a fit, then the write): read once, keep the rows.
            passes = 1 + int(gate.needs_prepass) + int(not pipeline.fitted)
            # Small files become pieces before the checks when these tag no row with its file.
            rows = source.frame if gate.names_files else source.combined()
            kept = keep(client, source, job.cluster.persist, reporter.log, frame=rows) if passes > 1 else None
            read = rows if kept is None else kept
            pre = gate.prepass(read, compute)
            checked = gate.apply(read, pre, quarantine_to=side)
            # Past the checks no row needs its file: small files' partitions become pieces.
            rows = source.combined(checked.frame) if gate.names_files else checked.frame
            lazy = {"quality": checked.lazy, "input": {"rows_read": count_rows(read)}}
            steps: dict[str, Any] = {}
            phases: list[list[str]] = []
            values: dict[str, Any] = {}
            if not pipeline.fitted:
                with reporter.stage("fit", f"learning feature statistics ({len(pipeline.ops)} ops)"):
                    report = pipeline.fit(rows, extras=lambda f: lazy, compute=compute)
                values, steps, phases = dict(report.extras), dict(report.steps), list(report.phases)
            frame = _select(pipeline.transform(rows), job)
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
                if job.txn is None and not getattr(source, "versioned", True) and batch is None:
                    reporter.log(
                        f"source: {job.source.format} rows carry no version, so a retry of this run cannot be"
                        " told from a new one; set `txn:` (e.g. from the scheduler's run date) to commit it once"
                    )
                manifest["run_id"] = run_id
                if batch is not None:
                    manifest["incremental"] = {
                        "action": batch.decision.action,
                        "reason": batch.decision.reason,
                        "new_datums": len(source.datums),
                    }
                    if batch.base.run_id is not None:
                        manifest["parent"] = {"run_id": batch.base.run_id, "state": redact_url(batch.folder.uri)}
                    # Written ahead: a run killed past this point is finished by the next one.
                    pending = batch.base.pending_batch(run_id, txn, source.datums)
                    batch.folder.save(dataclasses.replace(pending, pipeline=pipeline.to_dict()))
                written = sink.commit(metadata={"manifest": manifest, "pipeline": pipeline.to_dict()}, txn=txn)
                if batch is not None:
                    info = {
                        "txn": txn,
                        "rows": rows_read,
                        "output": {k: v for k, v in written.record.items() if k != "rows"},
                    }
                    done = batch.base.after_run(run_id, source.datums, info=info)
                    batch.folder.save(dataclasses.replace(done, pipeline=pipeline.to_dict()))
                if side is not None:
                    side.write_json("manifest.json", manifest)
                    side.commit()
        output = {**written.lineage(), "schema": frame._meta}
        events.complete(outputs=[output], facets={"dpipe": {"spec_hash": manifest["spec_hash"]}})
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


def plan_features(job: FeaturesJobSpec, batch: Batch | None = None) -> FeaturesPlan:
    """Open the source, the pipeline (a bundle's, or the spec's ops) and the sink, and check the
    columns of each against the others; only listings, footers and table logs are read.

    ``batch`` is an incremental run's: its new datums are the source, the pipeline fitted by the
    state's first run is reused, and a refit replaces the output."""
    side = _quarantine_output(job, batch)
    bad_files = (
        BadFileLog(side.staged_uri(BAD_FILES_DIR), side.storage_options)
        if side is not None and job.quarantine is not None and job.quarantine.bad_files == "skip"
        else None
    )
    if batch is not None and batch.increment is not None and batch.increment.source is not None:
        source = batch.increment.source
    else:
        source = open_source(job.source, where="source", bad_file_log=bad_files)
    meta = source.meta
    check_columns(job, meta)
    pipeline, bundle_uri = _pipeline(job)
    if job.incremental.enabled:
        check_job(job, pipeline if bundle_uri else None)
    if batch is not None and batch.base.pipeline is not None and not pipeline.fitted:
        # Every batch is transformed as the first one was: one fit for all of the output's rows.
        pipeline = FeaturePipeline.from_dict(dict(batch.base.pipeline))
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
    sink = open_sink(batch.sink_spec if batch is not None else job.output, where="output")
    if out_meta is not None:
        _check_sink(sink, out_meta)
    return FeaturesPlan(source, pipeline, sink, out_meta, tables, bundle_uri, side, bad_files)


def check_features(job: FeaturesJobSpec) -> str:
    """What ``dpipe validate`` says of a features job: its source, ops and sink, all checked
    (and, with ``incremental``, that its ops can run on new data alone and where its state goes)."""
    fp = plan_features(job)
    if job.incremental.enabled:
        state_folder(job)
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


def _quarantine_output(job: FeaturesJobSpec, batch: Batch | None = None) -> StagedOutput | None:
    """Where quarantined rows go: ``quarantine.uri``, replaced by each run; an incremental run's
    batches each get a folder of their own under it (``batch=<UTC time>-<id>``), so none is lost."""
    q = job.quarantine
    if q is None or q.uri is None:
        return None
    uri = q.uri if batch is None else f"{q.uri.rstrip('/')}/batch={batch.label}"
    return StagedOutput(uri, q.storage_options, overwrite=True, marker="manifest.json", where="quarantine.uri")


def content_key(job: FeaturesJobSpec, source: Any) -> str:
    """The commit's transaction id: ``job.txn``, else the job's name and a hash of its spec and
    exactly what it read.

    Identical for a retried run of the same job on the same data when the source is versioned
    (:attr:`dpipe.io.OpenedSource.versioned`); a live database's lineage holds its snapshot, so
    each run gets its own id there unless the spec names one.
    """
    if job.txn is not None:
        return job.txn
    data = {"spec": spec_digest(job), "input": source.lineage()}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return f"dpipe:{job.name}:{digest}"


# -- incremental runs ------------------------------------------------------------------------
#: The mode that replaces a table's rows, for a refit (a datum changed): by sink format.
REPLACE_MODES = {"delta": "overwrite", "iceberg": "overwrite", "postgresql": "replace", "duckdb": "replace"}


@dataclass(frozen=True)
class Batch:
    """An incremental features run: the state it starts from, what it decided, where it writes."""

    folder: StateFolder
    #: The state this run builds on (a fresh one when it starts over).
    base: RunState
    decision: Decision
    sink_spec: Any
    #: Names this batch's folders (its quarantine): sortable by time, unique.
    label: str = ""

    @property
    def increment(self) -> Increment | None:
        return self.decision.increment if self.decision.action == "increment" else None

    @classmethod
    def plan(
        cls, job: FeaturesJobSpec, log: Callable[[str], None], max_datums: int | None = None, *, force: bool = False
    ) -> Batch:
        """Finish a batch an earlier run left pending, and diff the datums (the ops are checked
        by :func:`plan_features`, which has the pipeline)."""
        folder = state_folder(job)
        state = folder.load()
        sink = open_sink(job.output, where="output")
        if not callable(getattr(sink, "has_commit", None)):
            raise SpecError(
                f"incremental: a {job.output.format} output cannot tell whether a batch committed",
                hint="write to a sink with transaction ids (delta, iceberg, postgresql, duckdb)",
            )
        if state is not None and state.pending is not None:
            state = _settle(state, sink, log)
            folder.save(state)
        decision = decide(job, state, max_datums=max_datums, force=force)
        log(f"incremental: {decision.reason}")
        spec = job.output
        if decision.action == "full" and state is not None:
            # Starting over (a changed datum, another spec): the output is replaced, not appended to.
            spec = spec.model_copy(update={"mode": REPLACE_MODES.get(spec.format, getattr(spec, "mode", None))})
        base = state if decision.action != "full" and state is not None else RunState(job.name, fit_key(job))
        if decision.action == "full" and state is not None:
            base = dataclasses.replace(base, runs=state.runs[-1:])  # the parent run, for the lineage
        label = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
        return cls(folder, base, decision, spec, label)


def _settle(state: RunState, sink: Any, log: Callable[[str], None]) -> RunState:
    """A pending batch is done if its commit is in the sink, else it never happened."""
    pending = dict(state.pending or {})
    if sink.has_commit(pending["txn"]):
        log(
            f"incremental: run {pending['run_id'][:12]} committed its batch but stopped before saving the state; saved now"
        )
        datums = [Datum(d["id"], d.get("size"), d.get("version")) for d in pending["datums"]]
        return state.after_run(pending["run_id"], datums, info={"txn": pending["txn"], "recovered": True})
    log(f"incremental: run {pending['run_id'][:12]} stopped before its commit; its datums are processed again")
    return dataclasses.replace(state, pending=None)


def state_folder(job: FeaturesJobSpec) -> StateFolder:
    """Where a features job keeps its run state: ``incremental.state``, else beside its output."""
    spec = job.incremental.state
    if spec is not None:
        return StateFolder(spec.uri, spec.storage_options)
    output = job.output
    if output.format == "delta":
        return StateFolder(f"{output.uri.rstrip('/')}/_dpipe_state/{job.name}", output.storage_options)
    if output.format == "duckdb":
        return StateFolder(f"{output.uri}.dpipe-state/{job.name}", {})
    if output.format == "parquet":
        raise SpecError(
            "incremental: a parquet output folder is replaced whole by each commit; new data is appended",
            hint="write to a table (format: delta, iceberg, postgresql or duckdb) with `mode: append`",
        )
    raise SpecError(
        f"incremental: where should the run state of a {output.format} output live?",
        hint=f"set `incremental.state: <folder>` (e.g. runs/{job.name}-state), local or any fsspec URL",
    )


def _nothing_new(job: FeaturesJobSpec, batch: Batch, reporter: Reporter) -> FeaturesResult:
    skipped = {"uri": job.output.uri, "kind": job.output.format, "duplicate": True, "skipped": True}
    rows = {"read": 0, "quarantined": 0, "written": 0}
    manifest = {"skipped": skipped, "incremental": {"action": "nothing", "reason": batch.decision.reason}}
    reason = batch.decision.reason
    return FeaturesResult(job.name, job.output.uri, rows, skipped, dict(reporter.timings), manifest, reason)
