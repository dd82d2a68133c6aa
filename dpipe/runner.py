"""Run a job end to end, and score data with a bundle: the stages chained, with progress and timings.

A training run is plan -> quality pre-pass -> fit -> place -> train -> write (:mod:`dpipe.plan`,
:mod:`dpipe.stages`); prediction is load -> plan -> predict. Each stage is a function with a
frozen result; this module only orders them, reports progress on the ``dpipe`` logger and commits
the output atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dpipe import cluster as _cluster
from dpipe import external, stages
from dpipe import quality as _quality
from dpipe.bundle import Bundle
from dpipe.columns import TRAIN, VALID
from dpipe.device import require_gpus
from dpipe.errors import ColumnError, SpecError
from dpipe.incremental import bundle_state, check_job, decide
from dpipe.io import StagedOutput, already_committed, open_increment, open_sink, open_source
from dpipe.io.fs import full_uri, resolve
from dpipe.keep import keep, release, within_memory, workers_memory
from dpipe.manifest import cluster_info, run_manifest, source_lineage
from dpipe.openlineage import run_events
from dpipe.plan import Plan, plan, require, table_opener
from dpipe.progress import Reporter
from dpipe.quality.gate import QUARANTINED_BY, PredictionChecks
from dpipe.resume import Resilience
from dpipe.spec import FeaturesJobSpec, JobSpec, spec_digest
from dpipe.spec.base import REDACTED, redact, redact_url
from dpipe.spec.connectors import BaseSinkSpec
from dpipe.spec.lineage import LineageSpec
from dpipe.spec.source import BaseSourceSpec, source_of
from dpipe.spec.tasks import MonitorJobSpec, PredictJobSpec, RegisterJobSpec, TaskJob
from dpipe.state import STATE, RunState, fit_key, new_run_id
from dpipe.train import TrainConfig, predict_frame

__all__ = ["PredictResult", "RunResult", "plan", "predict", "run"]


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunResult:
    """What a run produced. ``bundle_uri`` is where the model bundle was committed, and
    ``manifest`` is exactly what its ``manifest.json`` holds."""

    job: str
    bundle_uri: str
    metrics: dict
    rows: dict
    timings: dict
    manifest: dict = field(repr=False)
    #: Why nothing was computed (an unchanged rerun, no new data), else ``None``.
    skipped: str | None = None
    #: The registry version the bundle became (``registry.name``), else ``None``.
    registered: dict | None = None

    def summary(self) -> str:
        valid = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.get("valid", {}).items() if v is not None)
        test = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.get("test", {}).items() if v is not None)
        skipped = f"nothing to do ({self.skipped}); the committed bundle:\n" if self.skipped else ""
        side = "cross-validated" if "cv" in self.metrics else "valid"
        tested = f" / {self.rows['test']} test" if self.rows.get("test") else ""
        return skipped + (
            f"job {self.job!r}: {self.rows['train']} train / {self.rows['valid']} valid{tested} rows, "
            f"best iteration {self.metrics['best_iteration']}, {side} {valid}"
            + (f", test {test}" if test else "")
            + f"\nbundle: {self.bundle_uri}"
            + (
                f"\nregistered: models:/{self.registered['name']}/{self.registered['version']}"
                if self.registered
                else ""
            )
        )


@dataclass(frozen=True)
class PredictResult:
    output_uri: str
    #: Rows written (``None`` when the sink cannot tell).
    rows: int | None
    columns: list[str]
    timings: dict
    #: What the commit created (a table version, a snapshot), and ``duplicate`` for a retried run.
    output: dict = field(default_factory=dict)
    #: Why nothing was computed (the output holds this commit already), else ``None``.
    skipped: str | None = None


# -- run --------------------------------------------------------------------------------------
def run(
    job: JobSpec | FeaturesJobSpec | TaskJob,
    client=None,
    *,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
    incremental: bool | None = None,
    max_datums: int | None = None,
) -> Any:
    """Run a job: train and commit its model bundle to ``job.output.uri`` (a :class:`RunResult`);
    for ``kind: features``, write its rows to the sink ``job.output`` (a
    :class:`~dpipe.featurize.FeaturesResult`); for ``predict``, ``register`` and ``monitor``, see
    :func:`dpipe.tasks.run_task` (a :class:`~dpipe.tasks.TaskResult`).

    Parameters
    ----------
    job
        A validated spec (:func:`dpipe.load_job` or :class:`dpipe.JobSpec`).
    client
        A ``distributed.Client`` to run on. Without one, dpipe connects to ``scheduler`` /
        ``job.cluster.address`` / ``DASK_SCHEDULER_ADDRESS``, or starts (and closes) its own
        ``LocalCluster``.
    progress
        Show Dask's progress bar on a terminal. Progress lines go to the ``dpipe`` logger.
    force
        Run even when the output already holds this job's result: a bundle whose manifest has the
        same ``content_key`` (spec and exactly what was read), or a sink holding the commit of the
        same transaction id. Without it such a rerun does no computation and says so.
    incremental
        Process only the datums that are new since the last committed run (``True``), or every
        datum (``False``); ``None`` follows the spec's ``incremental`` section. See
        :mod:`dpipe.incremental`.
    max_datums
        With ``incremental``, process at most this many new datums (the rest are left for the
        next run): bounded work per run, as ``dpipe watch --max-datums`` does.

    Examples
    --------
    >>> result = dpipe.run(dpipe.load_job("jobs/quickstart.yaml"))
    >>> result.metrics["valid"]["auc"]
    """
    if isinstance(job, (PredictJobSpec, RegisterJobSpec, MonitorJobSpec)):
        if incremental or max_datums is not None:
            raise SpecError(f"job {job.name!r}: a {job.kind} job has no new-data-only runs; drop --incremental")
        from dpipe.tasks import run_task

        return run_task(job, client, scheduler=scheduler, progress=progress, force=force)
    if incremental is not None:
        job = job.model_copy(update={"incremental": job.incremental.model_copy(update={"enabled": incremental})})
    if isinstance(job, FeaturesJobSpec):
        from dpipe.featurize import run_features

        return run_features(job, client, scheduler=scheduler, progress=progress, force=force, max_datums=max_datums)
    reporter = Reporter(progress=progress)
    started = dt.datetime.now(dt.UTC)
    run_id = new_run_id()
    decision = None
    with (
        reporter.stage("plan", "checking the spec against the source schema"),
        _cluster.planning(job.cluster, client=client, address=scheduler),
    ):
        state = None
        if job.incremental.enabled:
            check_job(job)
            state = bundle_state(job.output.uri, job.output.storage_options)
        # An incremental run replaces its own bundle.
        overwrite = job.output.overwrite or state is not None
        out = StagedOutput(job.output.uri, job.output.storage_options, overwrite=overwrite, marker="manifest.json")
        bad_files = _quality.bad_file_log(job, out)
        if job.incremental.enabled:
            decision = decide(job, state, bad_file_log=bad_files, max_datums=max_datums, force=force)
            reporter.log(f"incremental: {decision.reason}")
            if decision.action == "nothing":
                previous = _committed_bundle(job)
                if previous is not None:
                    return dataclasses.replace(previous, skipped=decision.reason)
        increment, partials = None, None
        if decision is not None and decision.action == "increment" and decision.state is not None:
            increment, partials = decision.increment, decision.state.partials
        p = plan(job, bad_file_log=bad_files, source=increment.source if increment is not None else None)
        key = content_key(p)
        previous = None if force or increment is not None else _unchanged_bundle(job, key)
    if previous is not None:
        reporter.log(
            f"unchanged: {job.output.uri} already holds the bundle of this spec and input"
            f" (content key {key[:16]}); nothing to do (--force trains again)"
        )
        return dataclasses.replace(previous, skipped="unchanged")
    reporter.log(f"source: {len(p.source.files)} file(s) from {job.source.uri}")
    bundle = {"uri": job.output.uri, "format": "bundle", "storage_options": job.output.storage_options}
    with run_events(job.lineage, job=job.name, run_id=run_id, kind="train") as events:
        events.start([p.source, *p.tables.values()], [bundle])
        connected = _cluster.connect(job.cluster, client=client, address=scheduler, log=reporter.log)
        with connected as client, out, ExitStack() as cleanup:
            compute = reporter.compute(client)
            if job.train.device == "cuda":
                # Checked before anything is read: XGBoost would train on the CPU without a word.
                gpus = require_gpus(client)
                reporter.log(f"train.device: cuda, {sum(gpus.values())} GPU(s) on {len(gpus)} worker(s)")
            p = dataclasses.replace(p, source=within_memory(p.source, client, reporter.log))
            gate = stages.quality_gate(p)
            # Read once: every pass until the placement reads the rows kept in memory.
            kept = keep(client, p.source, job.cluster.persist, reporter.log, frame=stages.source_rows(p, gate))
            checks = (
                reporter.stage("checks", "finding duplicated keys to quarantine")
                if gate.needs_prepass
                else nullcontext()
            )
            with checks:
                pre = stages.prepass(p, gate, compute, frame=kept)
            if p.labeler.splitter.needs_range:
                with reporter.stage("split", f"measuring the time range of {job.split.column!r}"):
                    p = stages.resolve_split(p, compute, frame=kept)
            what = (
                "merging saved statistics with the new datums'"
                if increment is not None
                else "learning feature statistics"
            )
            with reporter.stage("fit", f"{what} ({len(job.features)} ops)"):
                fitted = stages.fit(
                    p, gate, pre, compute, quarantine_to=out, frame=kept, log=reporter.log, partials=partials
                )
            _log_fit(reporter, fitted)
            retrain = Retrain.of(job, decision, p, fitted)
            where = _training_memory(job, retrain.fitted, client)
            reporter.log(f"training rows: {where.reason}")
            if where.warning:
                reporter.warn(f"train.memory: {where.warning}")
            if where.external:
                scratch = external.scratch_dir(job.train.scratch)
                cleanup.callback(shutil.rmtree, scratch, True)
                external.require_shared(client, scratch)
                with reporter.stage("load", f"transforming {retrain.what} and writing them to disk ({scratch})"):
                    placed = stages.spill(
                        retrain.plan,
                        retrain.fitted,
                        retrain.gate or gate,
                        pre,
                        compute,
                        scratch,
                        frame=kept if retrain.plan.source is p.source else None,
                    )
            else:
                with reporter.stage("load", f"transforming and placing {retrain.what} on every worker"):
                    placed = stages.place(
                        client,
                        retrain.plan,
                        retrain.fitted,
                        retrain.gate or gate,
                        pre,
                        kept=kept if retrain.plan.source is p.source else None,
                        balanced=retrain.gate is None,
                    )
            # Placed: the kept rows are released (training holds the transformed ones).
            release(kept)
            del kept
            config = TrainConfig.from_spec(job.train).replace(xgb_model=retrain.booster)
            tuned = None
            if job.tune is not None:
                from dpipe.tune import tune_job

                # A lost worker: the matrices are built again and the interrupted trial runs again.
                resilience = Resilience.from_spec(job.train, None, log=reporter.log)
                with reporter.stage("tune", f"up to {job.tune.n_trials} trials on the placed rows"):
                    tuned = tune_job(client, placed, config, job, log=reporter.log, resilience=resilience)
                trained = tuned.trained
                placed = trained.placed or placed
            else:
                rounds = f"up to {job.train.num_boost_round} rounds{retrain.rounds}"
                resilience = Resilience.from_spec(
                    job.train, out.staged_uri(CHECKPOINTS), job.output.storage_options, log=reporter.log
                )
                how = "XGBoost's external memory, a task per worker" if where.external else "xgboost.dask"
                with reporter.stage("train", f"{how}, {rounds}"):
                    trained = stages.train(client, placed, config, p.labeler.splitter, resilience)
                if trained.layout is not None:
                    reporter.log(f"trained on {trained.layout.reason}")
                # After a restart the rows lie where they were placed again.
                placed = trained.placed or placed
                out.remove(CHECKPOINTS)
            sides = "validation and test rows" if placed.test is not None else "validation rows"
            with reporter.stage("assess", f"scoring the {sides}, profiling the training rows"):
                assessed = stages.assess(retrain.plan, retrain.fitted, placed, trained, compute, client=client)
            if placed.test is not None:
                trained = dataclasses.replace(trained, metrics={**trained.metrics, "test": dict(assessed.test)})
            _log_training(reporter, trained)
            if job.train.device != "cpu":
                # The saved model predicts wherever it is loaded (a GPU-less scorer included).
                trained.booster.set_param({"device": "cpu"})
            with reporter.stage("write", f"model bundle to {job.output.uri}"):
                manifest = {
                    **_manifest(p, fitted, reporter, cluster_info(client), started),
                    "run_id": run_id,
                    "content_key": key,
                    "split": p.labeler.splitter.describe(),
                }
                manifest["training"] = {
                    "checkpoint_every": job.train.checkpoint_every,
                    "restarts": [dict(r) for r in trained.restarts],
                    "memory": "external" if where.external else "memory",
                    "memory_reason": where.reason,
                    "layout": None if trained.layout is None else trained.layout.to_dict(),
                }
                if decision is not None:
                    manifest["incremental"] = _increment_record(decision, retrain, placed)
                if tuned is not None:
                    manifest["tuning"] = {
                        "study": tuned.study,
                        "best_trial": tuned.best_trial,
                        "params": dict(tuned.params),
                    }
                if state is not None:
                    manifest["parent"] = {"run_id": state.run_id, "uri": redact_url(job.output.uri)}
                new_state = _next_state(job, decision, p, fitted, run_id, manifest)
                out.write_json(STATE, new_state.to_dict())
                record = tuned.to_dict() if tuned is not None else None
                stages.write(out, retrain.plan, retrain.fitted, placed, trained, compute, manifest, assessed, record)
                uri = out.commit()
        events.complete(outputs=[{**bundle, "uri": uri}], facets={"dpipe": {"spec_hash": manifest["spec_hash"]}})
    reporter.log(f"bundle committed: {uri}")
    registered = _register(job, uri, reporter.log)
    metrics, rows = dict(trained.metrics), dict(manifest["rows"])
    return RunResult(
        job.name, uri, metrics, rows, timings=dict(reporter.timings), manifest=manifest, registered=registered
    )


#: The staged folder training checkpoints go to (removed before the bundle is committed).
CHECKPOINTS = "checkpoints"


def _register(job: JobSpec, uri: str, log: Any) -> dict[str, Any] | None:
    """Register the committed bundle as a new version of ``registry.name`` (when named)."""
    if job.registry is None or job.registry.name is None:
        return None
    from dpipe.errors import DpipeError
    from dpipe.registry import Registry

    registry = Registry(job.registry.uri, job.registry.storage_options)
    try:
        version = registry.register(
            uri, job.registry.name, storage_options=job.output.storage_options, aliases=job.registry.aliases
        )
    except DpipeError as exc:
        raise type(exc)(
            f"the bundle is committed at {uri}, but registering it failed: {exc}",
            hint=f"fix the registry and run `dpipe register {uri} --name {job.registry.name}`",
        ) from exc
    aliases = f" ({', '.join(version.aliases)})" if version.aliases else ""
    log(f"registered as {version.ref}{aliases}: {version.uri}")
    return version.to_dict()


@dataclass(frozen=True)
class Retrain:
    """What an incremental run trains on: the new rows with the previous booster (``continue``:
    the bundle's transforms too, so the old trees keep their meaning), or the rows of every datum
    or of a window, transformed by the refitted pipeline. A full run trains on what it fitted."""

    plan: Plan
    fitted: stages.Fitted
    #: ``fit`` (the fitted rows: a full run), ``continue``, ``all`` or ``window``.
    how: str = "fit"
    what: str = "data"
    #: The quality gate of other rows than the fit's (``None``: the fit's rows).
    gate: Any = None
    booster: Any = None
    rounds: str = ""
    datums: int | None = None

    @classmethod
    def of(cls, job: JobSpec, decision: Any, p: Plan, fitted: stages.Fitted) -> Retrain:
        if decision is None or decision.action != "increment":
            return cls(p, fitted)
        how = job.incremental.retrain
        if how == "continue":
            previous = Bundle.load(job.output.uri, job.output.storage_options)
            kept = dataclasses.replace(fitted, pipeline=previous.pipeline, model_input=previous.model_input)
            rounds = f" more, after the previous model's {previous.booster.num_boosted_rounds()}"
            datums = len(p.source.datums)
            return cls(p, kept, how, "the new data", booster=previous.booster, rounds=rounds, datums=datums)
        inc = decision.increment
        if how == "window":
            window = set(decision.state.after_run("", inc.new).window(job.incremental.window()))
            ids = [d.id for d in inc.current if d.id in window]
            # Only the window's datums are opened: the others count as seen.
            seen = [d for d in inc.current if d.id not in window]
            opened = open_increment(job.source, seen, where="source", bad_file_log=p.bad_files).source
            assert opened is not None
        else:
            ids = [d.id for d in inc.current]
            opened = open_source(job.source, where="source", bad_file_log=p.bad_files)
        present = set(opened.datum_of_partitions())
        # A source whose datums accumulate (rows below a SQL watermark) is one datum read whole.
        source = opened if present.isdisjoint(ids) else opened.select([i for i in ids if i in present])
        trained_on = dataclasses.replace(p, source=source)
        what = f"{len(source.datums)} datum(s)" + (" (the window)" if how == "window" else " (all)")
        return cls(trained_on, fitted, how, what, gate=stages.quality_gate(trained_on), datums=len(source.datums))


def _training_memory(job: JobSpec, fitted: stages.Fitted, client: Any) -> external.Decision:
    """Whether the rows to train on go to disk (``train.memory``; ``auto`` never with folds or
    tuning, which need them in memory)."""
    if job.train.memory == "auto" and (job.split.folds is not None or job.tune is not None):
        return external.Decision(False, "in memory (folds and tuning train on placed rows)")
    rows, width = sum(fitted.rows_per_partition), external.row_width(fitted.model_input)
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    return external.decide(job.train.memory, rows, width, workers_memory(client), workers)


def _increment_record(decision: Any, retrain: Retrain, placed: stages.Placed) -> dict[str, Any]:
    """What the manifest says of an incremental run: what it decided and what it trained on."""
    record: dict[str, Any] = {"action": decision.action, "reason": decision.reason}
    if decision.action == "increment":
        record.update(
            new_datums=len(decision.increment.new),
            retrain=retrain.how,
            trained_on={
                "datums": retrain.datums,
                "train": _rows(placed, TRAIN),
                "valid": None if placed.valid is None else _rows(placed, VALID),
            },
        )
    return record


def _rows(placed: stages.Placed, side: int) -> int:
    if placed.shards is not None:
        return placed.shards.rows(side)
    frame = placed.train if side == TRAIN else placed.valid
    assert frame is not None
    return len(frame)


def _next_state(job: JobSpec, decision: Any, p: Plan, fitted: stages.Fitted, run_id: str, manifest: dict) -> RunState:
    """The run state this bundle carries: the datums processed so far and the merged statistics."""
    incremental = decision is not None and decision.action == "increment"
    base = decision.state if incremental else RunState(job.name, fit_key(job))
    mergeable = not p.pipeline.not_incremental()
    info = {"rows": {k: v for k, v in manifest["rows"].items() if isinstance(v, int)}}
    return base.after_run(run_id, p.source.datums, partials=dict(fitted.stats) if mergeable else {}, info=info)


def content_key(p: Plan) -> str:
    """A training run's identity: its spec and exactly what it read (every table's lineage).

    Equal keys mean the run would train the same model on the same rows (for versioned sources).
    """
    data = {
        "spec": spec_digest(p.job),
        "input": p.source.lineage(),
        "tables": {where: t.lineage() for where, t in p.tables.items() if hasattr(t, "lineage")},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _unchanged_bundle(job: JobSpec, key: str) -> RunResult | None:
    """The committed bundle at ``job.output.uri`` if its manifest has this content key."""
    result = _committed_bundle(job)
    return result if result is not None and result.manifest.get("content_key") == key else None


def _committed_bundle(job: JobSpec) -> RunResult | None:
    """The bundle committed at ``job.output.uri``, as the result of the run that wrote it."""
    from dpipe.bundle import MANIFEST, METRICS, read_files
    from dpipe.errors import BundleError

    try:
        raw = read_files(job.output.uri, job.output.storage_options, (MANIFEST, METRICS))
    except BundleError:
        return None
    try:
        manifest, metrics = json.loads(raw[MANIFEST]), json.loads(raw[METRICS])
    except ValueError:
        return None
    fs, path = resolve(job.output.uri, job.output.storage_options, where="output.uri")
    uri = full_uri(fs, path.rstrip("/"))
    return RunResult(job.name, uri, metrics, dict(manifest.get("rows", {})), timings={}, manifest=manifest)


def _manifest(p: Plan, fitted: stages.Fitted, reporter: Reporter, cluster: dict, started: dt.datetime) -> dict:
    # Timings up to the write stage: the manifest cannot time the write that produces it.
    return run_manifest(
        p.job,
        source=p.source,
        tables=p.tables,
        rows=fitted.rows,
        steps=fitted.steps,
        features=fitted.model_input.to_dict(),
        fit_phases=fitted.phases,
        quality=fitted.quality,
        timings=reporter.timings,
        cluster=cluster,
        started=started,
    )


def _log_fit(reporter: Reporter, fitted: stages.Fitted) -> None:
    rows, passes = fitted.rows, fitted.passes
    test = f", {rows['test']} test" if rows.get("test") else ""
    reporter.log(
        f"rows: {rows['read']} read, {rows['train']} train, {rows['valid']} valid{test}"
        f" ({passes} pass{'es' if passes != 1 else ''} over the data)"
    )
    for where, step in fitted.steps.items():
        reporter.log(f"{where} ({step['op']}): " + ", ".join(f"{k}={v}" for k, v in step.items() if k != "op"))


def _log_training(reporter: Reporter, trained: stages.Trained) -> None:
    metrics = trained.metrics
    side = "cross-validated" if "cv" in metrics else "valid"
    shown = [f"{side} {k}={v:.4f}" for k, v in metrics["valid"].items() if v is not None]
    shown += [f"test {k}={v:.4f}" for k, v in metrics.get("test", {}).items() if v is not None]
    reporter.log(f"best iteration {metrics['best_iteration']}: {', '.join(shown)}")


# -- predict ----------------------------------------------------------------------------------
def predict(
    bundle: str,
    source: str | Mapping[str, Any] | BaseSourceSpec,
    output: str | Mapping[str, Any] | BaseSinkSpec,
    *,
    client=None,
    scheduler: str | None = None,
    format: str | None = None,
    id_columns: list[str] | None = None,
    storage_options: dict | None = None,
    overwrite: bool = True,
    progress: bool = True,
    lineage: LineageSpec | Mapping[str, Any] | None = None,
    registry: str | None = None,
    force: bool = False,
) -> PredictResult:
    """Score ``source`` with a bundle and commit the predictions to ``output`` once.

    ``source`` is a path or URL (``format`` and ``storage_options`` apply to it) or a source
    entry (``{"format": "delta", "uri": ..., "version": 3}``); ``output`` is a folder for Parquet
    files (``overwrite`` applies) or a sink entry (``{"format": "delta", "uri": ..., "mode":
    "append"}``). Exactly the fitted transforms saved in the bundle are applied; nothing is
    re-fitted. ``id_columns`` default to the job's ``id_columns``. The commit carries the bundle
    and exactly what was read (a table's commit metadata, or ``_dpipe_manifest.json``).
    ``lineage`` says where the OpenLineage events go (a job's ``lineage:`` section; default: the
    bundle's job's, else JSON files in ``$DPIPE_HOME/openlineage``). When ``output`` holds the
    commit of this bundle, input and output already (a sink that tracks its commits: Delta,
    Iceberg, SQL), nothing is computed unless ``force``.

    Examples
    --------
    >>> dpipe.predict("runs/quickstart", "data/demo/events", "runs/quickstart-scores")
    >>> dpipe.predict("runs/m1", {"format": "delta", "uri": "lake/events"}, {"format": "delta", "uri": "lake/scores"})
    """
    from dpipe.registry import is_model_uri, resolve_model_uri

    reporter = Reporter(progress=progress)
    started = dt.datetime.now(dt.UTC)
    model = bundle if is_model_uri(bundle) else None
    with reporter.stage("load bundle", bundle):
        bundle = resolve_model_uri(bundle, registry, storage_options=storage_options)
        b = Bundle.load(bundle, storage_options)
    ids = b.id_columns if id_columns is None else list(id_columns)
    with (
        reporter.stage("plan", "checking the source against the bundle"),
        _cluster.planning(None, client=client, address=scheduler),
    ):
        spec = source_of(source, format=format, storage_options=storage_options)
        trained_spec = b.manifest.get("spec") or {}
        src = prediction_source(b, spec, ids, storage_options, optional=PredictionChecks.columns_of(trained_spec))
        if isinstance(output, str):
            output = {"uri": output, "storage_options": storage_options or {}, "overwrite": overwrite}
        sink = open_sink(output)
        checks = PredictionChecks.of(trained_spec, list(src.frame.columns))
        preds = _scored(b, src.combined(), ids, checks)
        check = getattr(sink, "check", None)
        if callable(check):
            check(preds._meta)
    reporter.log(f"source: {len(src.files)} partition(s) from {spec.uri}")
    txn = _predict_txn(bundle, b, src, sink)
    if not force and already_committed(sink, txn):
        reporter.log(f"unchanged: {sink.uri} already holds the predictions of this bundle and input (txn {txn})")
        return PredictResult(
            sink.uri,
            None,
            columns=list(preds.columns),
            timings=dict(reporter.timings),
            output={"uri": sink.uri, "txn": txn, "duplicate": True, "skipped": True},
            skipped="the output holds these predictions already",
        )
    if force:
        txn = f"{txn}:forced:{new_run_id()}"
    run_id = new_run_id()
    events_spec = _predict_lineage(lineage, b)
    connected = _cluster.connect(None, client=client, address=scheduler, log=reporter.log)
    with run_events(
        events_spec, job=f"{b.manifest.get('job') or 'model'}.predict", run_id=run_id, kind="predict"
    ) as events:
        events.start([src], [sink.uri])
        with connected as client, sink, reporter.stage("predict", f"writing predictions to {sink.uri}"):
            sink.write(preds, compute=reporter.compute(client))
            manifest = {
                "kind": "predict",
                "run_id": run_id,
                "bundle": _absolute(bundle, storage_options),
                "bundle_run_id": b.manifest.get("run_id"),
                **({"model": model} if model else {}),
                "model_job": b.manifest.get("job"),
                "started_at": started.isoformat(),
                "input": source_lineage(src, uri=spec.uri, format=spec.format),
                "id_columns": ids,
            }
            if checks is not None:
                manifest["quality"] = {
                    "at_prediction": checks.mode,
                    "checks": [c.name for c in checks.checks],
                    "skipped": list(checks.skipped),
                }
            written = sink.commit(metadata={"manifest": redact(manifest)}, txn=txn)
        events.complete(outputs=[{**written.lineage(), "schema": preds._meta}])
    state = "already committed (nothing appended)" if written.duplicate else "committed"
    reporter.log(f"predictions {state}: {written.uri} ({written.rows} rows)")
    return PredictResult(
        written.uri, written.rows, columns=list(preds.columns), timings=dict(reporter.timings), output=written.lineage()
    )


def _scored(b: Bundle, frame: Any, ids: list[str], checks: PredictionChecks | None) -> Any:
    """Lazy predictions of ``frame``'s rows; with ``checks``, the rows a quarantining check would
    have set aside are flagged (``quarantined_by``) or left out (``set_aside``)."""
    if checks is None:
        return predict_frame(b.booster, b.pipeline.transform(frame), b.model_input, ids)
    flagged = frame.map_partitions(checks, meta=checks(frame._meta))
    transformed = b.pipeline.transform(flagged)
    if QUARANTINED_BY not in transformed.columns:
        raise ColumnError(
            f"predict: the bundle's ops drop the {QUARANTINED_BY!r} column the quality checks add",
            hint="set `quarantine.at_prediction: ignore` in the training job, or keep the column in its ops",
        )
    preds = predict_frame(b.booster, transformed, b.model_input, [*ids, QUARANTINED_BY])
    if checks.mode == "set_aside":
        preds = preds[preds[QUARANTINED_BY].isna()].drop(columns=[QUARANTINED_BY])
    return preds


def _predict_lineage(given: LineageSpec | Mapping[str, Any] | None, b: Bundle) -> LineageSpec:
    """Where a prediction's events go: as given, else as the bundle's job said, else the default."""
    if isinstance(given, LineageSpec):
        return given
    saved = (b.manifest.get("spec") or {}).get("lineage")
    if given is None and isinstance(saved, Mapping) and REDACTED not in json.dumps(saved, default=str):
        given = saved
    return LineageSpec.model_validate(dict(given or {}))


def _absolute(uri: str, storage_options: dict | None) -> str:
    """A bundle's URI as the lineage of its predictions records it: absolute, without secrets."""
    fs, path = resolve(uri, storage_options, where="bundle")
    return redact_url(full_uri(fs, path.rstrip("/")))


def _predict_txn(bundle: str, b: Bundle, src: Any, sink: Any) -> str:
    """Scoring the same data with the same model into the same place commits once (a retried run
    appends nothing); see :func:`dpipe.featurize.content_key` for sources without versions."""
    table = getattr(sink, "table", None)  # a SQL sink's table name (a Delta sink's is a DeltaTable)
    target = [type(sink).__name__, redact_url(sink.uri), table if isinstance(table, str) else None]
    data = {"bundle": bundle, "model": b.manifest.get("finished_at"), "input": src.lineage(), "output": target}
    return "dpipe-predict:" + hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


def prediction_source(
    b: Bundle,
    spec: Any,
    ids: list[str],
    storage_options: dict | None,
    *,
    also: Sequence[str] = (),
    where: str = "",
    optional: Collection[str] = (),
) -> Any:
    """Open the data to score, reading only what the saved ops, the model, the ids and ``also``
    (columns ``where`` needs: the label) need, and ``optional`` columns where the data has them
    (the quality checks'), and check its columns and types against the bundle before a cluster
    starts."""
    b.pipeline.bind(table_opener(storage_options))
    src = open_source(spec, where="source")
    require(src.meta, ids, "id_columns")
    missing = [c for c in also if c not in src.frame.columns]
    if missing:
        raise ColumnError(
            f"source: {where} needs column(s) {missing} that {spec.uri!r} does not provide",
            hint="score on data with the columns the model's label was computed from",
        )
    needed = b.pipeline.required_columns([*b.model_input.features, *ids]) | set(also) | set(optional)
    columns = [c for c in src.frame.columns if c in needed]
    if len(columns) < len(src.frame.columns):
        src = open_source(spec, where="source", columns=columns)
    meta = b.pipeline.describe(src.meta)
    missing = [c for c in b.model_input.features if c not in meta.columns]
    if missing:
        raise ColumnError(
            f"source: the model needs feature column(s) {missing} that {spec.uri!r} does not provide",
            hint="score data with the same columns the model was trained on",
        )
    # Checked here, not when a worker fails to turn the text into float32 for XGBoost.
    numbers = [c for c in b.model_input.features if c not in b.model_input.categorical]
    bad = {c: str(meta[c].dtype) for c in numbers if not pd.api.types.is_numeric_dtype(meta[c].dtype)}
    if bad:
        raise ColumnError(
            f"source: feature column(s) {bad} of {spec.uri!r} are not numeric; the model was trained on numbers",
            hint="score data with the same column types the model was trained on",
        )
    return src
