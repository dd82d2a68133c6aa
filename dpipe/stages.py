"""The stages of a training run after planning: quality pre-pass, fit, place, train, assess, write.

Each stage is a function of explicit inputs that returns a frozen result, so a stage can be reused
alone: tuning trains many models on placed data (:mod:`dpipe.tune`), a
features job stops after :func:`fit`, an incremental run hands :func:`fit` other input rows.
:func:`dpipe.runner.run` chains them::

    p = plan(job)                                  # dpipe.plan: no cluster, no data read
    gate = quality_gate(p)
    pre = prepass(p, gate, compute)                # only for quarantining `unique` checks
    fitted = fit(p, gate, pre, compute, quarantine_to=out)   # ONE computation per fit phase
    placed = place(client, p, fitted, gate, pre)   # transformed rows in worker memory
    # (or spill(p, fitted, gate, pre, compute, scratch): on disk, to train beyond memory)
    trained = train(client, placed, TrainConfig.from_spec(job.train), p.labeler.splitter)  # folds too
    assessed = assess(p, fitted, placed, trained, compute)  # test metrics, evaluation, profile
    write(out, p, fitted, placed, trained, compute, manifest, assessed)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd

from dpipe import drift, evaluation, external, metrics, split
from dpipe import layout as _layout
from dpipe.bundle import Bundle
from dpipe.columns import CV_FOLD, LABEL, SIDE, TEST, TRAIN, VALID
from dpipe.errors import DataError, SpecError, StateError
from dpipe.io import write_parquet
from dpipe.ops.base import count_rows
from dpipe.pipeline import FeaturePipeline
from dpipe.placement import PlacedRows, Rows, lost_pieces, place_rows, restore, side
from dpipe.plan import Plan
from dpipe.quality import Prepass, QualityGate
from dpipe.report.view import TUNING
from dpipe.resume import Resilience, train_surviving
from dpipe.spec.base import redact_url
from dpipe.split import NO_SIDE, SIDE_NAMES
from dpipe.train import ModelInput, TrainConfig, check_label, predict_frame, xgb_params

Compute = Callable[..., tuple[Any, ...]]
Log = Callable[[str], None]


def _quiet(message: str) -> None:
    """A ``log`` that drops the message."""


# -- quality pre-pass -------------------------------------------------------------------------
def quality_gate(plan: Plan) -> QualityGate:
    """The job's checks over the plan's source (partition ``i`` is ``source.files[i]``)."""
    return QualityGate(list(plan.job.checks), plan.job.quarantine, plan.source.files)


def source_rows(plan: Plan, gate: QualityGate) -> dd.DataFrame:
    """The source's rows as the checks take them: a partition per file when the checks tag rows
    with their file, else small files already combined into pieces (:meth:`OpenedSource.combined`)."""
    return plan.source.frame if gate.names_files else plan.source.combined()


def prepass(plan: Plan, gate: QualityGate, compute: Compute, *, frame: dd.DataFrame | None = None) -> Prepass:
    """The keys of quarantining ``unique`` checks: one pass over the key columns, when needed.
    ``frame``: the source's rows kept in memory (:mod:`dpipe.keep`), else they are read."""
    return gate.prepass(source_rows(plan, gate) if frame is None else frame, compute)


# -- the rows before the feature ops -----------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """Checked, label-joined and labeled rows, and what measuring them costs in the fit pass."""

    frame: dd.DataFrame
    #: Lazy measurements by consumer (``rows``, ``quality``, ``label.join``), for the fit pass.
    lazy: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def prepare(plan: Plan, frame: dd.DataFrame, gate: QualityGate, pre: Prepass, *, quarantine_to: Any = None) -> Prepared:
    """Source rows -> rows to train on: checks, the label's table, then the label and split flag.

    Small files' partitions become pieces (:meth:`OpenedSource.combined`) once no row needs its
    file: before the checks when they tag none, else past them (``frame`` may be pieces already:
    :func:`source_rows`)."""
    if not gate.names_files:
        frame = plan.source.combined(frame)
    checked = gate.apply(frame, pre, quarantine_to=quarantine_to)
    lazy: dict[str, Mapping[str, Any]] = {"quality": checked.lazy}
    joined = plan.source.combined(checked.frame) if gate.names_files else checked.frame
    if plan.label_join is not None:
        joined, measured = plan.label_join.apply_measured(joined)
        lazy["label.join"] = measured
    labeled = joined.map_partitions(plan.labeler, meta=plan.labeler(joined._meta))
    counts: dict[str, Any] = {"rows_read": count_rows(frame), "rows_labeled": count_rows(labeled)}
    lazy["input"] = counts
    if plan.labeler.splitter.by == "time":
        # A row without a time has no side: dropped, and counted apart from the filters' drops.
        counts["rows_without_time"] = (labeled[SIDE] == NO_SIDE).sum()
        labeled = labeled[labeled[SIDE] != NO_SIDE]
        t = labeled[plan.labeler.splitter.column]
        lazy["split"] = {"min": t.min(), "max": t.max()}
    return Prepared(labeled, lazy)


# -- the split's time range -------------------------------------------------------------------
def resolve_split(plan: Plan, compute: Compute, *, frame: dd.DataFrame | None = None) -> Plan:
    """The plan with its split's fractions of the time range turned into timestamps (one pass
    over the time column of ``frame``, default the source's; nothing to do for other splits)."""
    splitter = plan.labeler.splitter
    if not splitter.needs_range:
        return plan
    rows = plan.source.frame if frame is None else frame
    (values,) = compute(split.range_measures(splitter, rows[[splitter.column]]))
    labeler = dataclasses.replace(plan.labeler, splitter=split.resolve(splitter, values))
    return dataclasses.replace(plan, labeler=labeler)


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
    #: The training labels' minimum and maximum (regression: the evaluation's fixed grid).
    label_range: tuple[float, float] | None = None

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

    ``frame`` replaces the source's rows (default: the source's, :func:`source_rows`); the fit pass reads only
    :attr:`Plan.fit_columns` of it. ``gate`` names the file of each of its partitions (build it
    with ``QualityGate(checks, quarantine, files)`` for other rows), and :func:`place` must be
    given the same frame. ``partials`` are saved statistics of earlier rows to merge into this
    fit's (an incremental run: :meth:`dpipe.pipeline.FeaturePipeline.fit`).
    """
    raw = source_rows(plan, gate) if frame is None else frame
    _check_files(gate, raw)
    if plan.fit_columns is not None:
        raw = raw[plan.fit_columns]
    prepared = prepare(plan, raw, gate, pre, quarantine_to=quarantine_to)
    pipeline = plan.new_pipeline()
    report = pipeline.fit(
        prepared.frame,
        fit_rows=lambda f: f[f[SIDE] == TRAIN],
        extras=lambda f: {**prepared.lazy, "rows": _row_measures(f, plan)},
        extra_inputs={LABEL, SIDE, CV_FOLD},
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
    measured = report.extras["rows"]
    per_partition = tuple(int(n) for n in measured["per_partition"])
    label_range = None
    if "label_min" in measured and pd.notna(measured["label_min"]):
        label_range = (float(measured["label_min"]), float(measured["label_max"]))
    return Fitted(
        pipeline,
        model_input,
        rows,
        per_partition,
        steps,
        list(report.phases),
        quality,
        dict(report.stats),
        label_range,
    )


def _check_files(gate: QualityGate, frame: dd.DataFrame) -> None:
    """Quarantined rows and samples are tagged with ``gate.files[partition]``: they must match."""
    if gate.names_files and len(gate.files) != frame.npartitions:
        raise StateError(
            f"the quality gate names {len(gate.files)} file(s) for a frame of {frame.npartitions} partition(s)",
            hint="build the gate for these rows: QualityGate(job.checks, job.quarantine, files_of_the_frame)",
        )


def _row_measures(frame: dd.DataFrame, plan: Plan) -> dict[str, Any]:
    splitter = plan.labeler.splitter
    out: dict[str, Any] = {
        "per_partition": frame.map_partitions(len, meta=("rows", "int64")),
        "sides": frame[SIDE].value_counts(split_out=1),
    }
    if plan.classify:
        out["labels"] = frame.groupby([SIDE, LABEL]).size(split_out=1)
    else:
        labels = frame[frame[SIDE] == TRAIN][LABEL]
        out.update(label_min=labels.min(), label_max=labels.max())
    if splitter.folds:
        train = frame[frame[SIDE] == TRAIN]
        out["folds"] = train[CV_FOLD].value_counts(split_out=1)
        if plan.classify:
            out["fold_labels"] = train.groupby([CV_FOLD, LABEL]).size(split_out=1)
    return out


def _full_meta(plan: Plan, gate: QualityGate, pre: Prepass) -> Any:
    """The schema of the rows the model is trained on (every source column, labeled)."""
    return prepare(plan, plan.source.frame, gate, pre).frame._meta


def account_rows(plan: Plan, values: Mapping[str, Mapping[str, Any]], *, quarantined: int = 0) -> dict[str, Any]:
    """Row accounting: ``read = quarantined + dropped_missing_label [+ dropped_missing_time] +
    dropped_by_filters + train + valid + test``.

    Raises :class:`DataError` when no rows are left, a side of the split (or a fold) is empty,
    or the labels of a side cannot be learned from or evaluated.
    """
    read, labeled = int(values["input"]["rows_read"]), int(values["input"]["rows_labeled"])
    timeless = int(values["input"].get("rows_without_time", 0))
    measured = values["rows"]
    total = sum(int(x) for x in measured["per_partition"])
    sides = {int(k): int(v) for k, v in measured["sides"].items()}
    rows: dict[str, Any] = {
        "read": read,
        "quarantined": quarantined,
        "dropped_missing_label": read - quarantined - labeled,
    }
    if plan.labeler.splitter.by == "time":
        rows["dropped_missing_time"] = timeless
    rows.update(
        dropped_by_filters=labeled - timeless - total,
        train=sides.get(TRAIN, 0),
        valid=sides.get(VALID, 0),
        test=sides.get(TEST, 0),
    )
    if total == 0:
        why = "the source filters and the `filter` ops" if plan.job.features else "the source filters"
        raise DataError(
            f"no rows left to train on: {read} read, {rows['dropped_missing_label']} without a label,"
            f" {rows['dropped_by_filters']} removed by {why}",
            hint="loosen `source.filters` or the `filter` ops, or check `label`",
        )
    _check_sides(plan, rows, measured, values.get("split", {}))
    if plan.classify:
        labels = _label_counts(measured["labels"])
        check_label(plan.job.train.objective, pd.Series(labels.get(TRAIN, {})))
        rows["train_label_counts"] = labels.get(TRAIN, {})
        for side, counts in labels.items():
            if side != TRAIN:
                _evaluable(plan, counts, f"the {SIDE_NAMES[side]} rows")
        for fold, counts in _label_counts(measured.get("fold_labels", pd.Series(dtype="int64"))).items():
            if _validates(plan.labeler.splitter, fold):
                _evaluable(plan, counts, f"the validation rows of fold {_fold_of(plan.labeler.splitter, fold)}")
    if plan.labeler.splitter.folds:
        rows["folds"] = {str(k): int(v) for k, v in sorted(measured["folds"].items())}
    return rows


def _label_counts(table: pd.Series) -> dict[int, dict[str, int]]:
    """``{side or fold: {label: rows}}`` from a count per (side, label)."""
    out: dict[int, dict[str, int]] = {}
    for (group, label), n in table.items():
        if int(n):
            out.setdefault(int(group), {})[str(label)] = int(n)
    return out


def _evaluable(plan: Plan, counts: Mapping[str, int], what: str) -> None:
    """A binary objective's AUC and early stopping need both classes on every evaluated side."""
    if plan.job.train.objective.startswith("binary:") and len(counts) < 2:
        only = next(iter(counts), None)
        raise DataError(
            f"split: {what} all have label {only}: one class, so they cannot be evaluated",
            hint="move the split (`valid_from`, `test_from`, the fractions or `seed`), or provide more data",
        )


def _validates(splitter: split.Splitter, fold: int) -> bool:
    """Whether the ``CV_FOLD`` value ``fold`` is some fold's validation rows."""
    return fold >= 1 if splitter.by == "time" else True


def _fold_of(splitter: split.Splitter, value: int) -> int:
    return value - 1 if splitter.by == "time" else value


def _check_sides(plan: Plan, rows: Mapping[str, Any], measured: Mapping[str, Any], time: Mapping[str, Any]) -> None:
    """One clear message for an empty side or fold, saying where the split put the rows."""
    splitter = plan.labeler.splitter

    def empty(side: str, why: str, hint: str) -> None:
        counts = f"{rows['train']} train, {rows['valid']} validation and {rows['test']} test rows"
        raise DataError(f"split: no {side} rows ({counts}): {why}", hint=hint)

    if splitter.by == "time":
        span = f"{splitter.column!r} runs from {time.get('min')} to {time.get('max')}"
        hint = "move `valid_from` / `test_from` (or the fractions) inside the data's time range"
        if rows["train"] == 0:
            empty("training", f"no row is before {_cut(splitter)}; {span}", hint)
        if not splitter.folds and rows["valid"] == 0:
            empty(
                "validation",
                f"no row is at or after valid_from {splitter.valid_from}, before the test side; {span}",
                hint,
            )
        if splitter.has_test and rows["test"] == 0:
            empty("test", f"no row is at or after test_from {splitter.test_from}; {span}", hint)
    else:
        hint = "adjust `split.valid_fraction` / `split.test_fraction` or provide more data"
        if rows["train"] == 0 or (not splitter.folds and rows["valid"] == 0):
            empty("training" if rows["train"] == 0 else "validation", "both sides need rows", hint)
        if splitter.has_test and rows["test"] == 0:
            empty("test", f"test_fraction {splitter.test_fraction} selected none", hint)
    if splitter.folds:
        counts = {int(k): int(v) for k, v in measured["folds"].items()}
        wanted = range(splitter.folds + 1) if splitter.by == "time" else range(splitter.folds)
        missing = [k for k in wanted if counts.get(k, 0) == 0]
        if missing:
            if splitter.by == "group":
                why = f"fewer groups of {list(splitter.key)} than folds ({splitter.folds})"
            elif splitter.by == "time":
                why = f"the time periods {missing} of the expanding window have no rows"
            else:
                why = "fewer training rows than folds"
            raise DataError(
                f"split: {len(missing)} of {splitter.folds} folds have no rows: {why}",
                hint="lower `split.folds`, or provide more data",
            )


def _cut(splitter: split.Splitter) -> str:
    first = splitter.fold_edges[0] if splitter.fold_edges else splitter.valid_from or splitter.test_from
    return f"{first}"


# -- place -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placed:
    """The transformed rows of every side in worker memory, ready for XGBoost.

    ``valid`` is ``None`` with folds (each fold validates on part of ``train``), ``test`` without
    a test side. The placed partitions live as long as these frames (and ``rows``) reference them.
    """

    train: dd.DataFrame
    valid: dd.DataFrame | None
    model_input: ModelInput
    test: dd.DataFrame | None = None
    #: Every placed row (all sides), to cut other selections from (the folds) without moving data.
    rows: PlacedRows | None = None
    #: The rows on disk instead (training beyond memory): the sides are lazy reads of them.
    shards: external.Shards | None = None

    @property
    def features(self) -> list[str]:
        return self.model_input.features

    def fold(self, client: Any, splitter: split.Splitter, i: int) -> tuple[dd.DataFrame, dd.DataFrame]:
        """Fold ``i``'s training and validation rows, cut where the placed rows lie."""
        assert self.rows is not None and splitter.folds
        training = Rows(((SIDE, "==", TRAIN),))
        if splitter.by == "time":
            fit, check = training.where(CV_FOLD, "<=", i), training.where(CV_FOLD, "==", i + 1)
        else:
            fit, check = training.where(CV_FOLD, "!=", i), training.where(CV_FOLD, "==", i)
        return side(client, self.rows, fit), side(client, self.rows, check)

    def again(self, client: Any) -> Placed:
        """These rows after workers were lost: the partitions no live worker holds computed again
        (:func:`dpipe.placement.restore`), every side cut again where its rows lie. Shards on
        disk outlive their writers: nothing to do."""
        if self.shards is not None:
            return self
        assert self.rows is not None
        rows = restore(client, self.rows)
        return cut_sides(client, rows, self.model_input, valid=self.valid is not None, test=self.test is not None)


def cut_sides(client: Any, rows: PlacedRows, model_input: ModelInput, *, valid: bool, test: bool) -> Placed:
    """The training side of placed rows, and the validation and test sides when asked, each cut
    where its rows lie (:func:`dpipe.placement.side`)."""

    def of(side_: int) -> dd.DataFrame:
        return side(client, rows, Rows(((SIDE, "==", side_),)))

    return Placed(of(TRAIN), of(VALID) if valid else None, model_input, of(TEST) if test else None, rows)


def place(
    client: Any,
    plan: Plan,
    fitted: Fitted,
    gate: QualityGate,
    pre: Prepass,
    *,
    frame: dd.DataFrame | None = None,
    kept: dd.DataFrame | None = None,
    balanced: bool = True,
) -> Placed:
    """Transform every column of the rows to train on and place them on the workers, each
    worker holding a fair share of every side (:func:`dpipe.placement.side`).

    The fit pass's row counts per partition balance the workers; with ``balanced=False`` (other
    rows than the fit's: an incremental run training on all datums) partitions are spread by number.
    ``frame`` replaces the source's rows, as for :func:`fit`. ``kept`` is the source's rows kept
    in memory (:mod:`dpipe.keep`): transformed from memory, while a piece a lost worker held is
    computed again from the source's frame.
    """
    source = source_rows(plan, gate) if frame is None else frame
    frame = source if kept is None else kept
    model_frame = model_rows(plan, fitted, gate, pre, frame)
    rebuild = None if kept is None else model_rows(plan, fitted, gate, pre, source)
    sizes = list(fitted.rows_per_partition) if balanced else None
    rows = place_rows(client, model_frame, sizes, rebuild=rebuild)
    splitter = plan.labeler.splitter
    return cut_sides(client, rows, fitted.model_input, valid=not splitter.folds, test=splitter.has_test)


def model_rows(plan: Plan, fitted: Fitted, gate: QualityGate, pre: Prepass, frame: dd.DataFrame) -> dd.DataFrame:
    """The rows to train on, transformed: the model's inputs, with the ids, label, side, fold and
    slice columns the later stages read."""
    _check_files(gate, frame)
    prepared = prepare(plan, frame, gate, pre)
    keep = [*plan.job.id_columns, LABEL, SIDE, *([CV_FOLD] if plan.labeler.splitter.folds else [])]
    keep += [c for c in _slices(plan, fitted) if c not in keep]
    select = fitted.model_input.with_passthrough(keep)
    transformed = fitted.pipeline.transform(prepared.frame)
    return transformed.map_partitions(select, meta=select(transformed._meta))


def spill(
    plan: Plan,
    fitted: Fitted,
    gate: QualityGate,
    pre: Prepass,
    compute: Compute,
    scratch: str,
    *,
    frame: dd.DataFrame | None = None,
) -> Placed:
    """Transform the rows to train on and write them to ``scratch`` as shards, one pass, nothing
    held in memory (training beyond memory: :mod:`dpipe.external`). The sides of the returned
    :class:`Placed` are lazy reads of the shards."""
    source = source_rows(plan, gate) if frame is None else frame
    shards = external.write_shards(model_rows(plan, fitted, gate, pre, source), scratch, compute)
    splitter = plan.labeler.splitter
    assert not splitter.folds  # refused by the spec (`train.memory: external`) and never chosen by `auto`
    test = shards.frame(TEST) if splitter.has_test else None
    return Placed(shards.frame(TRAIN), shards.frame(VALID), fitted.model_input, test, shards=shards)


# -- train -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    """A booster cut at its best iteration, and its metrics (best values and full history).

    With folds, ``metrics["cv"]`` holds each fold's best iteration and metrics with their mean and
    spread, ``metrics["valid"]`` the means, and ``fold_boosters`` the fold models. ``restarts``
    records each time training went on after a lost worker; ``placed`` is then where the rows lie
    now (the later stages use it).
    """

    booster: Any
    metrics: Mapping[str, Any]
    fold_boosters: tuple[Any, ...] = ()
    #: Each fold's validation rows (placed), for its out-of-fold predictions.
    fold_valid: tuple[dd.DataFrame, ...] = ()
    restarts: tuple[Mapping[str, Any], ...] = ()
    placed: Placed | None = None
    #: Which workers trained (``train.layout``); ``None`` on disk (a task per worker).
    layout: _layout.Layout | None = None


def train(
    client: Any,
    placed: Placed,
    config: TrainConfig,
    splitter: split.Splitter | None = None,
    resilience: Resilience | None = None,
) -> Trained:
    """Train on placed data; call it again with another ``config`` to re-train on the same data.

    With folds (``splitter.folds``), one model per fold on the placed rows (no data moves but the
    cuts), then the model of all training rows with the folds' mean number of rounds. With
    ``resilience``, each model's training goes on after a lost worker (:mod:`dpipe.resume`).
    """
    f = placed.features
    restarts: list[Mapping[str, Any]] = []

    def again(p: Placed) -> Placed:
        return p.again(client)

    layout = training_layout(client, config) if placed.shards is None else None
    config = _with_threads(config, layout)

    def surviving(p: Placed, cfg: TrainConfig, frames, name: str):
        one = layout is not None and layout.one
        fit = None
        if one:
            gathered = _layout.OneWorker(client, frames)
            frames, fit = gathered.frames, gathered.fit
        booster, metrics, p, more = train_surviving(client, cfg, p, frames, again, resilience, name=name, fit=fit)
        restarts.extend(more)
        lost = lost_pieces(client, p.rows) if one and p.rows is not None else set()
        if lost:
            # Training on one worker went on without the others, but the stages after it read
            # the rows they held.
            if resilience is not None:
                resilience.log(f"train: {len(lost)} piece(s) of placed rows lost with their worker; placing them again")
            p = again(p)
        return _own_threads(client, booster, layout), metrics, p

    if placed.shards is not None:
        shards, model_input = placed.shards, placed.model_input

        def on_disk(p: Placed):
            return shards.sides.get(TRAIN, ()), shards.sides.get(VALID, ())

        def fit_external(client_: Any, cfg: TrainConfig, train_shards, valid_shards):
            return external.train_external(
                client_,
                cfg,
                train_shards,
                valid_shards,
                features=model_input.features,
                categorical=model_input.categorical,
                label=LABEL,
                meta=shards.meta,
            )

        booster, metrics, placed, more = train_surviving(
            client, config, placed, on_disk, again, resilience, name="model", fit=fit_external
        )
        return Trained(booster, metrics, restarts=tuple(more), placed=placed)
    if splitter is None or not splitter.folds:
        assert placed.valid is not None

        def sides(p: Placed):
            assert p.valid is not None
            return p.train[f], p.train[LABEL], p.valid[f], p.valid[LABEL]

        booster, metrics, placed = surviving(placed, config, sides, "model")
        return Trained(booster, metrics, restarts=tuple(restarts), placed=placed, layout=layout)
    folds, cut = [], {}
    for i in range(splitter.folds):

        def fold(p: Placed, i: int = i):
            fit_rows, cut[i] = p.fold(client, splitter, i)
            return fit_rows[f], fit_rows[LABEL], cut[i][f], cut[i][LABEL]

        booster, metrics, placed = surviving(placed, config, fold, f"fold-{i}")
        folds.append((booster, metrics))
    checked = [cut[i] for i in range(splitter.folds)]
    rounds = max(1, round(float(np.mean([m["num_boosted_rounds"] for _, m in folds]))))
    final = config.replace(num_boost_round=rounds, early_stopping_rounds=None)

    def everything(p: Placed):
        return p.train[f], p.train[LABEL], None, None

    booster, metrics, placed = surviving(placed, final, everything, "final")
    if restarts:
        # Rows placed again: cut each fold's validation rows where they lie now.
        checked = [placed.fold(client, splitter, i)[1] for i in range(splitter.folds)]
    cv = cross_validation([m for _, m in folds])
    metrics = {**metrics, "valid": {m: v["mean"] for m, v in cv["metrics"].items()}, "cv": cv}
    return Trained(booster, metrics, tuple(b for b, _ in folds), tuple(checked), tuple(restarts), placed, layout)


def training_layout(client: Any, config: TrainConfig) -> _layout.Layout:
    """``config.layout`` on this cluster (:mod:`dpipe.layout`)."""
    return _layout.decide(config.layout, client.scheduler_info(n_workers=-1)["workers"])


def _with_threads(config: TrainConfig, layout: _layout.Layout | None) -> TrainConfig:
    """One worker trains with its host's threads, unless ``train.params`` sets them."""
    if layout is None or not layout.one or {"nthread", "n_jobs"} & set(config.params):
        return config
    return config.replace(params={**config.params, "nthread": layout.threads})


def _own_threads(client: Any, booster: Any, layout: _layout.Layout | None) -> Any:
    """A booster trained with a host's threads predicts, in the stages after it, with a
    worker's own (as ``xgboost.dask`` leaves it)."""
    if layout is not None and layout.one and layout.threads:
        threads = min(int(n) for n in client.nthreads().values())
        booster.set_param({"nthread": threads})
    return booster


def cross_validation(fold_metrics: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The folds' validation metrics at their best iterations, with mean and standard deviation."""
    names = list(fold_metrics[0]["valid"])
    out: dict[str, Any] = {
        "folds": len(fold_metrics),
        "best_iterations": [int(m["best_iteration"]) for m in fold_metrics],
        "metrics": {},
    }
    for name in names:
        values = [m["valid"].get(name) for m in fold_metrics]
        known = [v for v in values if v is not None]
        out["metrics"][name] = {
            "mean": float(np.mean(known)) if known else None,
            "std": float(np.std(known, ddof=1)) if len(known) > 1 else None,
            "per_fold": values,
        }
    return out


# -- assess ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assessed:
    """What a trained model is judged by: the test side's exact metrics, the evaluation of every
    side (``evaluation.json``) and the reference profile monitoring compares new data with
    (``profile.json``)."""

    test: Mapping[str, float | None]
    evaluation: Mapping[str, Any] | None
    profile: Mapping[str, Any]
    #: The validation rows' predictions (ids, label, prediction) held on the workers, for the
    #: bundle's ``valid_predictions`` (:func:`write`): scored once, not again to write them.
    valid_predictions: dd.DataFrame | None = None


def assess(
    plan: Plan, fitted: Fitted, placed: Placed, trained: Trained, compute: Compute, *, client: Any = None
) -> Assessed:
    """Score the placed validation and test rows and measure everything in ONE pass over rows
    already in worker memory: the test side's exact metrics (:mod:`dpipe.metrics`), the curves,
    confusion and slices of each side (:mod:`dpipe.evaluation`), and the training rows' reference
    profile with the validation predictions' (:mod:`dpipe.drift`). With folds, the validation
    predictions are each fold model's on the rows it validated on (out of fold).

    With a ``client`` and a bundle that keeps the validation predictions, they are kept on the
    workers (:attr:`Assessed.valid_predictions`) for :func:`write`."""
    job = plan.job
    # The placed rows hold the model's inputs and the other slice columns (:func:`place`).
    keep = [LABEL, *job.report.slices]
    kept = None
    if client is not None and job.output.valid_predictions:
        ids = [c for c in job.id_columns if c not in keep]
        kept = client.persist(valid_predictions(placed, trained, fitted.model_input, [*ids, *keep]))
        valid = kept.drop(columns=ids)
    else:
        valid = valid_predictions(placed, trained, fitted.model_input, keep)
    sides = {"valid": valid.rename(columns={LABEL: "label"})}
    if placed.test is not None:
        test = predict_frame(trained.booster, placed.test, fitted.model_input, keep)
        sides["test"] = test.rename(columns={LABEL: "label"})
    kind = _kind(job.train.objective)
    names = _metric_names(plan)
    predicted = [c for c in valid.columns if c not in keep]
    lazy: dict[str, Any] = {
        "profile": drift.reference_measures(
            placed.train, fitted.model_input, prediction=valid[predicted], prepared=True
        )
    }
    if "test" in sides:
        lazy["test"] = metrics.measures(sides["test"], names, objective=job.train.objective)
    if kind is not None:
        classes = job.train.params.get("num_class")
        lazy["evaluation"] = {
            side: evaluation.measures(
                frame,
                kind,
                slices=list(job.report.slices),
                threshold=job.report.threshold,
                label_range=fitted.label_range,
                classes=None if classes is None else int(classes),
            )
            for side, frame in sides.items()
        }
    (values,) = compute(lazy)
    document = None
    if kind is not None:
        finished = {side: evaluation.finish(v) for side, v in values["evaluation"].items()}
        document = evaluation.evaluation_document(
            job.train.objective, finished, threshold=job.report.threshold, slices=list(job.report.slices)
        )
    test_metrics = metrics.finish(values["test"], names) if "test" in values else {}
    profile = drift.reference_profile(values["profile"], fitted.model_input)
    if kept is not None:
        kept = kept[[*job.id_columns, LABEL, *predicted]]
    return Assessed(test_metrics, document, profile, kept)


def _kind(objective: str) -> Any:
    """The evaluation's kind of an objective, or ``None`` for those it does not evaluate (ranking)."""
    try:
        return evaluation.kind_of(objective)
    except SpecError:
        return None


def _slices(plan: Plan, fitted: Fitted) -> list[str]:
    """Slice columns to carry with the predictions (the model's own inputs are there already)."""
    return [c for c in plan.job.report.slices if c not in fitted.model_input.features]


def _metric_names(plan: Plan) -> list[str]:
    return list(xgb_params(plan.job.train).get("eval_metric", []))


# -- write -------------------------------------------------------------------------------------
def write(
    out: Any,
    plan: Plan,
    fitted: Fitted,
    placed: Placed,
    trained: Trained,
    compute: Compute,
    manifest: dict,
    assessed: Assessed | None = None,
    tuning: Mapping[str, Any] | None = None,
) -> None:
    """Write the bundle into the staged output ``out`` (the caller commits it); the manifest last.

    ``tuning`` is a tuned run's record (:meth:`dpipe.tune.TuneResult.to_dict`): ``tuning.json``.
    """
    job = plan.job
    keep = [*job.id_columns, LABEL]
    if job.output.valid_predictions:
        preds = (
            assessed.valid_predictions
            if assessed is not None and assessed.valid_predictions is not None
            else valid_predictions(placed, trained, fitted.model_input, keep)
        )
        write_parquet(preds.rename(columns={LABEL: "label"}), out, "valid_predictions", compute=compute)
    if job.output.test_predictions and placed.test is not None:
        preds = predict_frame(trained.booster, placed.test, fitted.model_input, keep)
        write_parquet(preds.rename(columns={LABEL: "label"}), out, "test_predictions", compute=compute)
    if job.split.fold_models:
        for i, booster in enumerate(trained.fold_boosters):
            out.write_bytes(f"folds/fold_{i}.ubj", bytes(booster.save_raw(raw_format="ubj")))
    bundle = Bundle(
        trained.booster, fitted.pipeline, fitted.model_input, list(job.id_columns), dict(trained.metrics), manifest
    )
    if tuning is not None:
        out.write_json(TUNING, {**tuning, "storage": redact_url(str(tuning.get("storage")))})
    if assessed is not None:
        out.write_json(drift.PROFILE, dict(assessed.profile))
        if assessed.evaluation is not None:
            out.write_json(evaluation.EVALUATION, dict(assessed.evaluation))
        if job.report.html:
            from dpipe.report import REPORT, page, view_of

            view = view_of(
                out.uri,
                manifest=manifest,
                metrics=bundle.metrics,
                pipeline=bundle.pipeline_dict(),
                evaluation=assessed.evaluation,
                booster=trained.booster,
                tuning=tuning,
            )
            out.write_bytes(REPORT, page([view]).encode())
    bundle.write(out)


def valid_predictions(placed: Placed, trained: Trained, model_input: ModelInput, keep: list[str]) -> dd.DataFrame:
    """Predictions of the validation rows; with folds, each fold model's on the rows it validated
    on (out of fold)."""
    if trained.fold_boosters:
        parts = [
            predict_frame(b, rows, model_input, keep) for b, rows in zip(trained.fold_boosters, trained.fold_valid)
        ]
        return dd.concat(parts)
    assert placed.valid is not None
    return predict_frame(trained.booster, placed.valid, model_input, keep)
