"""The stages of a training run after planning: quality pre-pass, fit, place, train, write.

Each stage is a function of explicit inputs that returns a frozen result, so a stage can be reused
alone: tuning re-trains on placed data (:func:`train` with another :class:`TrainConfig`), a
features job stops after :func:`fit`, an incremental run hands :func:`fit` other input rows.
:func:`dpipe.runner.run` chains them::

    p = plan(job)                                  # dpipe.plan: no cluster, no data read
    gate = quality_gate(p)
    pre = prepass(p, gate, compute)                # only for quarantining `unique` checks
    fitted = fit(p, gate, pre, compute, quarantine_to=out)   # ONE computation per fit phase
    placed = place(client, p, fitted, gate, pre)   # transformed rows in worker memory
    trained = train(client, placed, TrainConfig.from_spec(job.train))
    write(out, p, fitted, placed, trained, compute, manifest)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.dataframe as dd

from dpipe.bundle import Bundle
from dpipe.columns import LABEL, VALID
from dpipe.errors import DataError, StateError
from dpipe.io import write_parquet
from dpipe.ops.base import count_rows
from dpipe.pipeline import FeaturePipeline
from dpipe.placement import spread_train_valid
from dpipe.plan import Plan
from dpipe.quality import Prepass, QualityGate
from dpipe.train import ModelInput, TrainConfig, check_label, predict_frame, train_booster

Compute = Callable[..., tuple[Any, ...]]
Log = Callable[[str], None]


def _quiet(message: str) -> None:
    """A ``log`` that drops the message."""


# -- quality pre-pass -------------------------------------------------------------------------
def quality_gate(plan: Plan) -> QualityGate:
    """The job's checks over the plan's source (partition ``i`` is ``source.files[i]``)."""
    return QualityGate(list(plan.job.checks), plan.job.quarantine, plan.source.files)


def prepass(plan: Plan, gate: QualityGate, compute: Compute) -> Prepass:
    """The keys of quarantining ``unique`` checks: one pass over the key columns, when needed."""
    return gate.prepass(plan.source.frame, compute)


# -- the rows before the feature ops -----------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """Checked, label-joined and labeled rows, and what measuring them costs in the fit pass."""

    frame: dd.DataFrame
    #: Lazy measurements by consumer (``rows``, ``quality``, ``label.join``), for the fit pass.
    lazy: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def prepare(plan: Plan, frame: dd.DataFrame, gate: QualityGate, pre: Prepass, *, quarantine_to: Any = None) -> Prepared:
    """Source rows -> rows to train on: checks, the label's table, then the label and split flag."""
    checked = gate.apply(frame, pre, quarantine_to=quarantine_to)
    lazy: dict[str, Mapping[str, Any]] = {"quality": checked.lazy}
    joined = checked.frame
    if plan.label_join is not None:
        joined, measured = plan.label_join.apply_measured(checked.frame)
        lazy["label.join"] = measured
    labeled = joined.map_partitions(plan.labeler, meta=plan.labeler(joined._meta))
    lazy["input"] = {"rows_read": count_rows(frame), "rows_labeled": count_rows(labeled)}
    return Prepared(labeled, lazy)


# -- fit ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fitted:
    """A fitted pipeline, the model's inputs, and what the fit pass measured."""

    pipeline: FeaturePipeline
    model_input: ModelInput
    rows: Mapping[str, Any]
    rows_per_partition: tuple[int, ...]
    steps: Mapping[str, Any]
    phases: list[list[str]]
    quality: Mapping[str, Any]
    #: The computed statistics of every stateful op (merged with the partials it was given), by
    #: location: what the run state saves for the next incremental run.
    stats: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def passes(self) -> int:
        """Passes over the data: the fit phases plus the quality pre-pass."""
        return len(self.phases) + int(self.quality.get("prepasses", 0))


def fit(
    plan: Plan,
    gate: QualityGate,
    pre: Prepass,
    compute: Compute,
    *,
    quarantine_to: Any = None,
    frame: dd.DataFrame | None = None,
    log: Log = _quiet,
    partials: Mapping[str, Mapping[str, Any]] | None = None,
) -> Fitted:
    """Learn every statistic, with the checks, row counts, label distribution and the label
    join's measurements computed in the same pass (one ``compute`` per fit phase).

    ``frame`` replaces the source's rows (default: ``plan.source.frame``); the fit pass reads only
    :attr:`Plan.fit_columns` of it. ``gate`` names the file of each of its partitions (build it
    with ``QualityGate(checks, quarantine, files)`` for other rows), and :func:`place` must be
    given the same frame. ``partials`` are saved statistics of earlier rows to merge into this
    fit's (an incremental run: :meth:`dpipe.pipeline.FeaturePipeline.fit`).
    """
    raw = plan.source.frame if frame is None else frame
    _check_files(gate, raw)
    if plan.fit_columns is not None:
        raw = raw[plan.fit_columns]
    prepared = prepare(plan, raw, gate, pre, quarantine_to=quarantine_to)
    pipeline = plan.new_pipeline()
    report = pipeline.fit(
        prepared.frame,
        fit_rows=lambda f: f[~f[VALID]],
        extras=lambda f: {**prepared.lazy, "rows": _row_measures(f, plan.classify)},
        extra_inputs={LABEL, VALID},
        compute=compute,
        partials=partials,
    )
    steps = dict(report.steps)
    if plan.label_join is not None:
        steps = {"label.join": {"op": "join", **plan.label_join.check(dict(report.extras["label.join"]))}, **steps}
    rows_read = int(report.extras["input"]["rows_read"])
    bad_files = plan.bad_files.records() if plan.bad_files is not None else []
    quality = gate.evaluate(report.extras["quality"], rows_read=rows_read, bad_files=bad_files, log=log)
    rows = account_rows(plan, report.extras, quarantined=quality["quarantined_rows"])
    fitted_meta = pipeline.describe(_full_meta(plan, gate, pre))
    model_input = ModelInput.infer(fitted_meta, features=plan.job.train.features, exclude=set(plan.exclude))
    model_input.require_categories(fitted_meta)
    per_partition = tuple(int(n) for n in report.extras["rows"]["per_partition"])
    return Fitted(pipeline, model_input, rows, per_partition, steps, list(report.phases), quality, dict(report.stats))


def _check_files(gate: QualityGate, frame: dd.DataFrame) -> None:
    """Quarantined rows and samples are tagged with ``gate.files[partition]``: they must match."""
    if len(gate.files) != frame.npartitions:
        raise StateError(
            f"the quality gate names {len(gate.files)} file(s) for a frame of {frame.npartitions} partition(s)",
            hint="build the gate for these rows: QualityGate(job.checks, job.quarantine, files_of_the_frame)",
        )


def _row_measures(frame: dd.DataFrame, classify: bool) -> dict[str, Any]:
    train_labels = frame[~frame[VALID]][LABEL]
    return {
        "per_partition": frame.map_partitions(len, meta=("rows", "int64")),
        "valid": frame[VALID].sum(),
        "train_labels": train_labels.value_counts(split_out=1) if classify else train_labels.count(),
    }


def _full_meta(plan: Plan, gate: QualityGate, pre: Prepass) -> Any:
    """The schema of the rows the model is trained on (every source column, labeled)."""
    return prepare(plan, plan.source.frame, gate, pre).frame._meta


def account_rows(plan: Plan, values: Mapping[str, Mapping[str, Any]], *, quarantined: int = 0) -> dict[str, Any]:
    """Row accounting: ``read = quarantined + dropped_missing_label + dropped_by_filters + train + valid``.

    Raises :class:`DataError` when no rows are left, a side of the split is empty, or the
    training labels cannot be learned from.
    """
    read, labeled = int(values["input"]["rows_read"]), int(values["input"]["rows_labeled"])
    total = sum(int(x) for x in values["rows"]["per_partition"])
    valid = int(values["rows"]["valid"])
    rows: dict[str, Any] = {
        "read": read,
        "quarantined": quarantined,
        "dropped_missing_label": read - quarantined - labeled,
        "dropped_by_filters": labeled - total,
        "train": total - valid,
        "valid": valid,
    }
    if total == 0:
        why = "the source filters and the `filter` ops" if plan.job.features else "the source filters"
        raise DataError(
            f"no rows left to train on: {read} read, {rows['dropped_missing_label']} without a label,"
            f" {rows['dropped_by_filters']} removed by {why}",
            hint="loosen `source.filters` or the `filter` ops, or check `label`",
        )
    if rows["train"] == 0 or valid == 0:
        raise DataError(
            f"split: {rows['train']} train and {valid} validation rows; both need rows",
            hint="adjust `split.valid_fraction` or provide more data",
        )
    if plan.classify:
        labels = values["rows"]["train_labels"]
        check_label(plan.job.train.objective, labels)
        rows["train_label_counts"] = {str(k): int(v) for k, v in labels.items()}
    return rows


# -- place -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placed:
    """The transformed training and validation rows in worker memory, ready for XGBoost.

    The placed partitions live as long as these frames reference their futures.
    """

    train: dd.DataFrame
    valid: dd.DataFrame
    model_input: ModelInput

    @property
    def features(self) -> list[str]:
        return self.model_input.features


def place(
    client: Any,
    plan: Plan,
    fitted: Fitted,
    gate: QualityGate,
    pre: Prepass,
    *,
    frame: dd.DataFrame | None = None,
    balanced: bool = True,
) -> Placed:
    """Transform every column of the rows to train on and place them on the workers, each
    worker holding a fair share of both sides (:func:`dpipe.placement.spread_train_valid`).

    The fit pass's row counts per partition balance the workers; with ``balanced=False`` (other
    rows than the fit's: an incremental run training on all datums) partitions are spread by number.
    """
    frame = plan.source.frame if frame is None else frame
    _check_files(gate, frame)
    prepared = prepare(plan, frame, gate, pre)
    keep = [*plan.job.id_columns, LABEL, VALID]
    select = fitted.model_input.with_passthrough(keep)
    transformed = fitted.pipeline.transform(prepared.frame)
    model_frame = transformed.map_partitions(select, meta=select(transformed._meta))
    sizes = list(fitted.rows_per_partition) if balanced else None
    train_part, valid_part = spread_train_valid(client, model_frame, sizes)
    return Placed(train_part, valid_part, fitted.model_input)


# -- train -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    """A booster cut at its best iteration, and its metrics (best values and full history)."""

    booster: Any
    metrics: Mapping[str, Any]


def train(client: Any, placed: Placed, config: TrainConfig) -> Trained:
    """Train on placed data; call it again with another ``config`` to re-train on the same data."""
    f = placed.features
    booster, metrics = train_booster(
        client, config, placed.train[f], placed.train[LABEL], placed.valid[f], placed.valid[LABEL]
    )
    return Trained(booster, metrics)


# -- write -------------------------------------------------------------------------------------
def write(
    out: Any, plan: Plan, fitted: Fitted, placed: Placed, trained: Trained, compute: Compute, manifest: dict
) -> None:
    """Write the bundle into the staged output ``out`` (the caller commits it); the manifest last."""
    job = plan.job
    if job.output.valid_predictions:
        preds = predict_frame(trained.booster, placed.valid, fitted.model_input, [*job.id_columns, LABEL])
        write_parquet(preds.rename(columns={LABEL: "label"}), out, "valid_predictions", compute=compute)
    bundle = Bundle(
        trained.booster, fitted.pipeline, fitted.model_input, list(job.id_columns), dict(trained.metrics), manifest
    )
    bundle.write(out)
