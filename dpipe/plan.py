"""The plan stage: a job checked against its source's schema, before a cluster starts.

Everything that can be checked from the spec and the data's schema is checked here, so a misspelt
column fails in a second, not after an hour. Only listings and file footers are read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dpipe import metrics as _metrics
from dpipe import quality as _quality
from dpipe.columns import INTERNAL
from dpipe.errors import ColumnError
from dpipe.expr import Expression
from dpipe.io import BadFileLog, OpenedSource, open_source
from dpipe.ops.tables import Join
from dpipe.pipeline import FeaturePipeline
from dpipe.spec import JobSpec
from dpipe.spec.features import Join as JoinSpec
from dpipe.split import Splitter
from dpipe.train import Labeler, ModelInput, xgb_params

#: How a table named in the spec is opened: ``open(spec, where)``.
TableOpener = Callable[[Any, str], Any]


@dataclass(frozen=True)
class Plan:
    """A job checked against its source's schema: everything needed to start computing.

    Immutable: stages read it and return results of their own. ``pipeline`` is the unfitted
    template the fit stage copies (:meth:`new_pipeline`), so one plan can be fitted again.
    """

    job: JobSpec
    source: Any
    labeler: Labeler
    model_input: ModelInput
    #: Every table read besides the source, by location (``features[3].source``, ``label.join``).
    tables: Mapping[str, Any] = field(default_factory=dict)
    #: Columns that are never features: id columns, ``train.exclude`` and the label's inputs.
    exclude: frozenset[str] = frozenset()
    label_join: Join | None = None
    bad_files: BadFileLog | None = None

    @property
    def label_inputs(self) -> set[str]:
        return self.labeler.label_inputs

    @property
    def classify(self) -> bool:
        return self.job.train.objective.startswith(("binary:", "multi:"))

    def new_pipeline(self) -> FeaturePipeline:
        """A fresh, unfitted pipeline of the job's ops, bound to the tables this plan opened."""
        pipeline = FeaturePipeline.from_specs(self.job.features)
        pipeline.bind(lambda spec, where: self.tables[where])
        return pipeline

    @functools.cached_property
    def pipeline(self) -> FeaturePipeline:
        """The unfitted pipeline the plan was checked with (do not fit it: use :meth:`new_pipeline`)."""
        return self.new_pipeline()

    @functools.cached_property
    def fit_columns(self) -> list[str] | None:
        """The source columns the fit pass needs, or ``None`` when that is all of them.

        With quarantine on, every column is read: quarantined rows are written whole, and a file
        that cannot be read must be found (and skipped) in the fit pass, not later by the load.
        """
        job = self.job
        if job.quarantine is not None:
            return None
        needed = self.pipeline.required_columns(set()) | self.labeler.split_inputs
        needed |= set(self.label_join.spec.left_keys) if self.label_join else self.label_inputs
        for check in job.checks:
            needed |= set(check.columns_read)
        columns = [c for c in self.source.columns if c in needed]
        return None if len(columns) == len(self.source.columns) else columns


def plan(
    job: JobSpec,
    *,
    bad_file_log: BadFileLog | None = None,
    open_table: TableOpener | None = None,
    source: OpenedSource | None = None,
) -> Plan:
    """Open the source lazily and check every column the job names against its schema.

    With a ``bad_file_log``, input files that cannot be read are skipped and recorded there.
    ``open_table`` opens the other tables (joins, the label's table); default :func:`table_opener`.
    ``source`` is the source already opened (an incremental run's new datums).
    """
    open_table = open_table or table_opener()
    if source is None:
        source = open_source(job.source, where="source", bad_file_log=bad_file_log)
    meta = source.meta
    _quality.check_columns(job, meta)
    require(meta, job.id_columns, "id_columns")
    tables: dict[str, Any] = {}
    label_join = _label_join(job)
    if label_join is not None:
        tables["label.join"] = open_table(label_join.spec.source, "label.join.source")
        label_join.bind({"source": tables["label.join"]})
        meta = label_join.describe(meta)
    if job.label.column:
        require(meta, [job.label.column], "label.column")
    # The default split key is every source column, never the label table's.
    split_key = job.split.key or list(source.meta.columns)
    require(meta, split_key, "split.key")
    reserved = sorted(set(meta.columns) & set(INTERNAL))
    if reserved:
        raise ColumnError(f"source: column names {reserved} are reserved by dpipe", hint="rename them")
    pipeline = FeaturePipeline.from_specs(job.features)
    tables.update(pipeline.bind(open_table))
    splitter = Splitter.from_spec(job.split, split_key)
    splitter.check_column(meta)
    if splitter.has_test:
        _metrics.check(xgb_params(job.train).get("eval_metric", []), job.train.objective, where="train.eval_metric")
    labeler = Labeler(column=job.label.column, expr=job.label.expr, splitter=splitter, folds=pipeline.needs_label)
    require(meta, sorted(labeler.label_inputs), "label.expr")
    _check_label_use(job, pipeline, labeler)
    final_meta = pipeline.describe(labeler(meta))
    for c in job.id_columns:
        if c not in final_meta.columns:
            raise ColumnError(
                f"id_columns: {c!r} is dropped or renamed by the feature ops",
                hint="keep id columns out of the feature ops",
            )
    require(final_meta, job.train.exclude, "train.exclude")
    exclude = frozenset(set(job.id_columns) | set(job.train.exclude) | labeler.label_inputs)
    # Ops such as one_hot name their output columns only once fitted: the strict check of
    # `train.features` against them happens again after the fit.
    model_input = ModelInput.infer(
        final_meta, features=job.train.features, exclude=set(exclude), allow_missing=not pipeline.fitted
    )
    return Plan(job, source, labeler, model_input, tables, exclude, label_join, bad_file_log)


def _check_label_use(job: JobSpec, pipeline: FeaturePipeline, labeler: Labeler) -> None:
    """Feature ops run again at prediction, where the label is unknown: they may not read it."""
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


def _label_join(job: JobSpec) -> Join | None:
    """The label's table as a left join bringing in only the columns the label reads."""
    spec = job.label.join
    if spec is None:
        return None
    if job.label.column:
        columns = [job.label.column]
    else:
        columns = sorted(Expression(job.label.expr or "", where="label.expr").columns)
    right_keys = spec.on or spec.right_on or []
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


def table_opener(storage_options: dict | None = None) -> TableOpener:
    """How the tables of joins are opened: :func:`dpipe.io.open_source` with the table's own spec.

    ``storage_options`` replace saved ones that were redacted (a bundle never stores secrets).
    """

    def open_table(spec: Any, where: str) -> Any:
        return open_source(spec, where=where, storage_options=storage_options)

    return open_table


def require(meta: pd.DataFrame, columns: Any, where: str) -> None:
    """Fail with a :class:`ColumnError` naming ``where`` if ``meta`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in meta.columns]
    if missing:
        raise ColumnError(
            f"{where}: column(s) {missing} not found in the source; available: {list(meta.columns)}",
            hint=f"fix `{where}`",
        )
