"""Run a job end to end: read -> fit features -> place data -> train -> write the bundle.

Everything that can be checked from the spec and the data's schema is checked before a cluster
starts or any data is read, so a misspelt column fails in a second, not after an hour.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dpipe import cluster as _cluster
from dpipe import quality as _quality
from dpipe.bundle import Bundle, library_versions
from dpipe.errors import ColumnError, DataError, SpecError
from dpipe.expr import Expression
from dpipe.io import StagedOutput, read, write_parquet
from dpipe.io.sources import BadFileLog, Source
from dpipe.ops.tables import Join
from dpipe.pipeline import FeaturePipeline
from dpipe.spec import JobSpec, redacted
from dpipe.spec.features import Join as JoinSpec
from dpipe.spec.load import REDACTED
from dpipe.train import (
    INTERNAL,
    LABEL,
    VALID,
    Labeler,
    ModelInput,
    check_label,
    predict_frame,
    spread_train_valid,
    train_booster,
    xgb_params,
)


# -- progress ---------------------------------------------------------------------------------
class Reporter:
    """Per-stage progress lines on stderr, stage timings, and Dask progress bars on a terminal."""

    def __init__(self, *, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.timings: dict[str, float] = {}

    def log(self, message: str) -> None:
        if self.enabled:
            print(f"[dpipe] {message}", file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str, what: str = ""):
        self.log(f"{name}: {what}..." if what else f"{name}...")
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.timings[name] = round(self.timings.get(name, 0.0) + elapsed, 4)
        self.log(f"{name}: done in {elapsed:.1f}s")

    def compute(self, client) -> Callable[..., tuple]:
        """A ``dask.compute`` replacement that runs on ``client`` with a progress bar on a TTY."""

        def compute(*collections):
            futures = client.compute(list(collections))
            if self.enabled and getattr(self.stream, "isatty", lambda: False)():
                from distributed import progress

                progress(futures, notebook=False)
            return tuple(client.gather(futures))

        return compute


# -- results ----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a run produced. ``bundle_uri`` is where the model bundle was committed."""

    job: str
    bundle_uri: str
    metrics: dict
    rows: dict
    timings: dict
    manifest: dict = field(repr=False)

    def summary(self) -> str:
        valid = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.get("valid", {}).items() if v is not None)
        return (
            f"job {self.job!r}: {self.rows['train']} train / {self.rows['valid']} valid rows, "
            f"best iteration {self.metrics['best_iteration']}, valid {valid}\n"
            f"bundle: {self.bundle_uri}"
        )


@dataclass
class PredictResult:
    output_uri: str
    rows: int
    columns: list[str]
    timings: dict


# -- planning (no cluster, no data read) -------------------------------------------------------
@dataclass
class Plan:
    """A job checked against its source's schema: everything needed to start computing."""

    job: JobSpec
    source: Source
    labeler: Labeler
    pipeline: FeaturePipeline
    model_input: ModelInput
    label_inputs: set[str]
    tables: dict[str, Source] = field(default_factory=dict)
    exclude: set[str] = field(default_factory=set)
    label_join: Join | None = None
    #: Source columns the fit pass reads (``None``: all of them).
    fit_columns: list[str] | None = None


def plan(job: JobSpec, *, bad_file_log: BadFileLog | None = None) -> Plan:
    """Open the source lazily and check every column the job names against its schema.

    With a ``bad_file_log``, input files that cannot be read are skipped and recorded there.
    """
    src = job.source
    source = read(
        src.uri,
        format=src.format,
        columns=src.columns,
        filters=src.filters,
        partitioning=src.partitioning,
        storage_options=src.storage_options,
        on_bad_file="skip" if bad_file_log is not None else "raise",
        bad_file_log=bad_file_log,
    )
    meta = source.frame._meta
    _quality.check_columns(job, meta)
    _require(meta, job.id_columns, "id_columns")
    label_join = _label_join(job)
    tables = {}
    if label_join is not None:
        tables["label.join"] = table_reader()(job.label.join.source, "label.join.source")
        label_join.bind({"source": tables["label.join"]})
        meta = label_join.describe(meta)
    if job.label.column:
        _require(meta, [job.label.column], "label.column")
    # The default split key is every source column, never the label table's.
    split_key = job.split.key or list(source.frame._meta.columns)
    _require(meta, split_key, "split.key")
    reserved = sorted(set(meta.columns) & set(INTERNAL))
    if reserved:
        raise ColumnError(f"source: column names {reserved} are reserved by dpipe", hint="rename them")
    pipeline = FeaturePipeline.from_specs(job.features)
    tables.update(pipeline.bind(table_reader()))
    labeler = Labeler(
        column=job.label.column,
        expr=job.label.expr,
        split_key=tuple(split_key),
        valid_fraction=job.split.valid_fraction,
        seed=job.split.seed,
        folds=pipeline.needs_label,
    )
    _require(meta, sorted(labeler.label_inputs), "label.expr")
    labeled_meta = labeler(meta)
    for op in pipeline.ops:
        leaked = sorted(op.input_columns() & labeler.label_inputs)
        if leaked:
            raise ColumnError(
                f"{op.where} ({op.name}): reads the label column(s) {leaked}; feature ops also run at"
                " prediction, where the label is unknown",
                hint="rows without a label are dropped automatically; filter on the label with `source.filters`",
            )
    if pipeline.needs_label and not job.train.objective.startswith(("binary:", "reg:")):
        where = next(op.where for op in pipeline.ops if op.needs_label)
        raise ColumnError(
            f"{where}: target encoding needs a binary or regression label; the objective is {job.train.objective!r}",
            hint="use `categorical` or `one_hot` for multi-class problems",
        )
    final_meta = pipeline.describe(labeled_meta)
    for c in job.id_columns:
        if c not in final_meta.columns:
            raise ColumnError(
                f"id_columns: {c!r} is dropped or renamed by the feature ops",
                hint="keep id columns out of the feature ops",
            )
    _require(final_meta, job.train.exclude, "train.exclude")
    exclude = set(job.id_columns) | set(job.train.exclude) | labeler.label_inputs
    # Ops such as one_hot name their output columns only once fitted: the strict check of
    # `train.features` against them happens again after the fit.
    model_input = ModelInput.infer(
        final_meta, features=job.train.features, exclude=exclude, allow_missing=not pipeline.fitted
    )
    plan_ = Plan(job, source, labeler, pipeline, model_input, labeler.label_inputs, tables, exclude, label_join)
    plan_.fit_columns = _fit_columns(plan_)
    return plan_


def _fit_columns(p: Plan) -> list[str] | None:
    """The source columns the fit pass needs, or ``None`` when that is all of them.

    With quarantine on, every column is read: quarantined rows are written whole, and a file
    that cannot be read must be found (and skipped) in the fit pass, not later by the load.
    """
    job = p.job
    if job.quarantine is not None:
        return None
    needed = p.pipeline.required_columns(set()) | set(p.labeler.split_key)
    needed |= set(p.label_join.spec.left_keys) if p.label_join else p.label_inputs
    for check in job.checks:
        needed |= set(getattr(check, "columns", None) or []) | {getattr(check, "column", None)}
    columns = [c for c in p.source.frame.columns if c in needed]
    return None if len(columns) == len(p.source.frame.columns) else columns


def _label_join(job: JobSpec) -> Join | None:
    """The label's table as a left join bringing in only the columns the label reads."""
    spec = job.label.join
    if spec is None:
        return None
    columns = [job.label.column] if job.label.column else sorted(Expression(job.label.expr, where="label.expr").columns)
    right_keys = spec.on or spec.right_on
    join = JoinSpec(
        op="join",
        source=spec.source,
        on=spec.on,
        left_on=spec.left_on,
        right_on=spec.right_on,
        columns=[c for c in columns if c not in right_keys],
        max_unmatched_fraction=spec.max_unmatched_fraction,
    )
    return Join(join, "label.join")


def table_reader(storage_options: dict | None = None) -> Callable[[Any, str], Source]:
    """How ops' tables (joins) are opened: ``read`` with the table's own source spec.

    ``storage_options`` replace saved ones that were redacted (a bundle never stores secrets).
    """

    def open_table(spec, where: str) -> Source:
        options = spec.storage_options
        if any(v == REDACTED for v in options.values()):
            if storage_options is None:
                raise SpecError(
                    f"{where}: the bundle does not store this table's storage_options (they may hold secrets)",
                    hint="pass them to predict (`--storage-options JSON`); they are used for the joined tables too",
                )
            options = storage_options
        return read(
            spec.uri,
            format=spec.format,
            columns=spec.columns,
            filters=spec.filters,
            partitioning=spec.partitioning,
            storage_options=options,
            where=where,
        )

    return open_table


def _require(meta: pd.DataFrame, columns, where: str) -> None:
    missing = [c for c in columns if c not in meta.columns]
    if missing:
        raise ColumnError(
            f"{where}: column(s) {missing} not found in the source; available: {list(meta.columns)}",
            hint=f"fix `{where}`",
        )


# -- run --------------------------------------------------------------------------------------
def run(job: JobSpec, client=None, *, scheduler: str | None = None, progress: bool = True) -> RunResult:
    """Run a job and commit its model bundle to ``job.output.uri``.

    Parameters
    ----------
    job
        A validated spec (:func:`dpipe.load_job` or :class:`dpipe.JobSpec`).
    client
        A ``distributed.Client`` to run on. Without one, dpipe connects to ``scheduler`` /
        ``job.cluster.address`` / ``DASK_SCHEDULER_ADDRESS``, or starts (and closes) its own
        ``LocalCluster``.
    progress
        Print per-stage progress lines (and a progress bar on a terminal) to stderr.

    Examples
    --------
    >>> result = dpipe.run(dpipe.load_job("jobs/quickstart.yaml"))
    >>> result.metrics["valid"]["auc"]
    """
    reporter = Reporter(enabled=progress)
    started = dt.datetime.now(dt.UTC)
    with reporter.stage("plan", "checking the spec against the source schema"):
        out = StagedOutput(
            job.output.uri, job.output.storage_options, overwrite=job.output.overwrite, marker="manifest.json"
        )
        bad_files = _quality.bad_file_log(job, out)
        p = plan(job, bad_file_log=bad_files)
    reporter.log(f"source: {len(p.source.files)} file(s) from {job.source.uri}")
    with _cluster.connect(job.cluster, client=client, address=scheduler, log=reporter.log) as client, out:
        compute = reporter.compute(client)
        # -- data quality: an optional pre-pass, then the checked rows feed everything below --
        gate = _quality.QualityGate(job, p.source, out, bad_files)
        if gate.needs_prepass:
            with reporter.stage("checks", "finding duplicated keys to quarantine"):
                gate.prepass(compute)

        def prepare(frame):
            checked = gate.apply(frame)
            with_label = p.label_join.apply(checked) if p.label_join else checked
            return checked, with_label, with_label.map_partitions(p.labeler, meta=p.labeler(with_label._meta))

        # Every column, for the model. Then the fit pass's frame: only the columns the statistics,
        # checks, label and split read, so Dask reads just those from the files (a `map_partitions`
        # hides the projection from Dask otherwise). Prepared last, so the gate and the label join
        # measure this frame, in the fit pass's single computation.
        labeled = prepare(p.source.frame)[2]
        raw = p.source.frame if p.fit_columns is None else p.source.frame[p.fit_columns]
        checked, with_label, fit_labeled = prepare(raw)
        classify = job.train.objective.startswith(("binary:", "multi:"))

        def extras(frame) -> dict[str, Any]:
            train_labels = frame[~frame[VALID]][LABEL]
            return {
                "rows_read": raw.map_partitions(len, meta=("rows", "int64")).sum(),
                "rows_labeled": fit_labeled.map_partitions(len, meta=("rows", "int64")).sum(),
                "rows_per_partition": frame.map_partitions(len, meta=("rows", "int64")),
                "valid_rows": frame[VALID].sum(),
                "train_labels": train_labels.value_counts(split_out=1) if classify else train_labels.count(),
                **gate.lazy_values(),
                **(
                    {f"label.join:{k}": v for k, v in p.label_join.diagnose(checked, with_label).items()}
                    if p.label_join
                    else {}
                ),
            }

        with reporter.stage("fit", f"learning feature statistics ({len(p.pipeline.ops)} ops)"):
            report = p.pipeline.fit(
                fit_labeled,
                fit_rows=lambda frame: frame[~frame[VALID]],
                extras=extras,
                extra_inputs={LABEL, VALID},
                compute=compute,
            )
        if p.label_join:
            measured = {k.split(":", 1)[1]: v for k, v in report.extras.items() if k.startswith("label.join:")}
            report.steps = {"label.join": {"op": "join", **p.label_join.check(measured)}, **report.steps}
        quality = gate.finish(report.extras, rows_read=int(report.extras["rows_read"]), log=reporter.log)
        rows = _check_rows(job, report.extras, classify, quarantined=quality["quarantined_rows"])
        passes = len(report.phases) + gate.prepasses
        reporter.log(
            f"rows: {rows['read']} read, {rows['train']} train, {rows['valid']} valid"
            f" ({passes} pass{'es' if passes != 1 else ''} over the data)"
        )
        for where, step in report.steps.items():
            reporter.log(f"{where} ({step['op']}): " + ", ".join(f"{k}={v}" for k, v in step.items() if k != "op"))

        fitted_meta = p.pipeline.describe(labeled._meta)
        p.model_input = ModelInput.infer(fitted_meta, features=job.train.features, exclude=p.exclude)
        p.model_input.require_categories(fitted_meta)
        keep = [*job.id_columns, LABEL, VALID]
        model_frame = p.pipeline.transform(labeled).map_partitions(
            p.model_input.with_passthrough(keep),
            meta=p.model_input.with_passthrough(keep)(fitted_meta),
        )
        with reporter.stage("load", "transforming and placing data on every worker"):
            # The placed partitions live as long as these frames reference their futures.
            train_part, valid_part = spread_train_valid(client, model_frame, list(report.extras["rows_per_partition"]))
        features = p.model_input.features
        with reporter.stage("train", f"xgboost.dask, up to {job.train.num_boost_round} rounds"):
            booster, metrics = train_booster(
                client,
                xgb_params(job.train),
                job.train,
                train_part[features],
                train_part[LABEL],
                valid_part[features],
                valid_part[LABEL],
            )
        reporter.log(
            "best iteration {}: {}".format(
                metrics["best_iteration"],
                ", ".join(f"valid {k}={v:.4f}" for k, v in metrics["valid"].items() if v is not None),
            )
        )
        with reporter.stage("write", f"model bundle to {job.output.uri}"):
            if job.output.valid_predictions:
                preds = predict_frame(booster, valid_part, p.model_input, [*job.id_columns, LABEL])
                preds = preds.rename(columns={LABEL: "label"})
                write_parquet(preds, out, "valid_predictions", compute=lambda t: compute(t))
            manifest = {
                "dpipe_version": library_versions().get("dpipe"),
                "job": job.name,
                "started_at": started.isoformat(),
                "finished_at": dt.datetime.now(dt.UTC).isoformat(),
                "spec": redacted(job),
                "input": {"uri": job.source.uri, "format": job.source.format, "files": p.source.files},
                "tables": {where: {"uri": t.uri, "files": t.files} for where, t in p.tables.items()},
                "rows": rows,
                "steps": report.steps,
                "features": p.model_input.to_dict(),
                "fit_phases": report.phases,
                "quality": quality,
                "timings": dict(reporter.timings),
                "cluster": _cluster_info(client),
                "versions": library_versions(),
            }
            bundle = Bundle(booster, p.pipeline, p.model_input, list(job.id_columns), metrics, manifest)
            bundle.write(out)
            uri = out.commit()
    reporter.log(f"bundle committed: {uri}")
    manifest["timings"] = dict(reporter.timings)
    return RunResult(
        job=job.name, bundle_uri=uri, metrics=metrics, rows=rows, timings=dict(reporter.timings), manifest=manifest
    )


def _check_rows(job: JobSpec, extras: dict, classify: bool, quarantined: int = 0) -> dict:
    """Row accounting: ``read = quarantined + dropped_missing_label + dropped_by_filters + train + valid``."""
    per_partition = [int(x) for x in extras["rows_per_partition"]]
    total = sum(per_partition)
    valid = int(extras["valid_rows"])
    rows = {
        "read": int(extras["rows_read"]),
        "quarantined": quarantined,
        "dropped_missing_label": int(extras["rows_read"]) - quarantined - int(extras["rows_labeled"]),
        "dropped_by_filters": int(extras["rows_labeled"]) - total,
        "train": total - valid,
        "valid": valid,
    }
    if total == 0:
        why = "the source filters and the `filter` ops" if job.features else "the source filters"
        raise DataError(
            f"no rows left to train on: {rows['read']} read, {rows['dropped_missing_label']} without a label,"
            f" {rows['dropped_by_filters']} removed by {why}",
            hint="loosen `source.filters` or the `filter` ops, or check `label`",
        )
    if rows["train"] == 0 or valid == 0:
        raise DataError(
            f"split: {rows['train']} train and {valid} validation rows; both need rows",
            hint="adjust `split.valid_fraction` or provide more data",
        )
    if classify:
        check_label(job.train.objective, extras["train_labels"])
        rows["train_label_counts"] = {str(k): int(v) for k, v in extras["train_labels"].items()}
    return rows


def _cluster_info(client) -> dict:
    info = client.scheduler_info(n_workers=-1)
    workers = info["workers"].values()
    return {
        "scheduler": info.get("address"),
        "workers": len(workers),
        "threads": sum(w["nthreads"] for w in workers),
    }


# -- predict ----------------------------------------------------------------------------------
def predict(
    bundle: str,
    source: str,
    output: str,
    *,
    client=None,
    scheduler: str | None = None,
    format: str | None = None,
    id_columns: list[str] | None = None,
    storage_options: dict | None = None,
    overwrite: bool = True,
    progress: bool = True,
) -> PredictResult:
    """Score ``source`` with a bundle and write Parquet predictions to ``output`` atomically.

    Exactly the fitted transforms saved in the bundle are applied; nothing is re-fitted.
    ``id_columns`` default to the job's ``id_columns``.

    Examples
    --------
    >>> dpipe.predict("runs/quickstart", "data/demo/events", "runs/quickstart-scores")
    """
    from dpipe.spec.models import SourceSpec

    reporter = Reporter(enabled=progress)
    with reporter.stage("load bundle", bundle):
        b = Bundle.load(bundle, storage_options)
    ids = b.id_columns if id_columns is None else list(id_columns)
    src_spec = SourceSpec(uri=source, format=format, storage_options=storage_options or {})
    with reporter.stage("plan", "checking the source against the bundle"):
        b.pipeline.bind(table_reader(storage_options))
        src = read(src_spec.uri, format=src_spec.format, storage_options=storage_options, where="source")
        _require(src.frame._meta, ids, "id_columns")
        # Read only what the saved ops and the model need (the source may be much wider).
        needed = b.pipeline.required_columns([*b.model_input.features, *ids])
        columns = [c for c in src.frame.columns if c in needed]
        if len(columns) < len(src.frame.columns):
            src = read(
                src_spec.uri, format=src_spec.format, columns=columns, storage_options=storage_options, where="source"
            )
        meta = b.pipeline.describe(src.frame._meta)
        missing = [c for c in b.model_input.features if c not in meta.columns]
        if missing:
            raise ColumnError(
                f"source: the model needs feature column(s) {missing} that {source!r} does not provide",
                hint="score data with the same columns the model was trained on",
            )
        # Checked here, not when a worker fails to turn the text into float32 for XGBoost.
        numbers = [c for c in b.model_input.features if c not in b.model_input.categorical]
        bad = {c: str(meta[c].dtype) for c in numbers if not pd.api.types.is_numeric_dtype(meta[c].dtype)}
        if bad:
            raise ColumnError(
                f"source: feature column(s) {bad} of {source!r} are not numeric; the model was trained on numbers",
                hint="score data with the same column types the model was trained on",
            )
        out = StagedOutput(output, storage_options, overwrite=overwrite, where="output")
    reporter.log(f"source: {len(src.files)} file(s) from {source}")
    with _cluster.connect(None, client=client, address=scheduler, log=reporter.log) as client, out:
        frame = b.pipeline.transform(src.frame)
        preds = predict_frame(b.booster, frame, b.model_input, ids)
        with reporter.stage("predict", f"writing predictions to {output}"):
            compute = reporter.compute(client)
            write_parquet(preds, out, "", compute=lambda t: compute(t))
            uri = out.commit()
    rows = _count_rows(out)
    reporter.log(f"predictions committed: {uri} ({rows} rows)")
    return PredictResult(output_uri=uri, rows=rows, columns=list(preds.columns), timings=dict(reporter.timings))


def _count_rows(out: StagedOutput) -> int:
    """Rows written, from the Parquet footers (no second pass over the data)."""
    import pyarrow.parquet as pq

    total = 0
    for path in sorted(out.fs.glob(f"{out.path}/*.parquet")):
        with out.fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total
