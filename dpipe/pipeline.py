"""The feature pipeline: plan fit phases, fit with one Dask computation per phase, transform.

Planning follows NVTabular: every op whose inputs do not depend on a not-yet-fitted op is fitted
in the same phase, and all statistics of a phase (plus what the caller measures on the same rows,
such as row counts) are computed by a single ``dask.compute``, through one
:class:`~dpipe.collect.Collector` per phase. An op that reads the output of a stateful op,
directly or through derived columns or row filters, goes to the next phase.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dpipe.collect import Collected, Collector, Compute
from dpipe.errors import BundleError, StateError
from dpipe.ops import Op, build_op, spec_dict
from dpipe.ops.stats import can_fill, filled, missing
from dpipe.spec import OP_MODELS
from dpipe.spec.features import CustomOp
from dpipe.versions import library_versions

FORMAT_VERSION = 1

#: ``extras(frame)``: lazy values to compute with the statistics, by consumer name.
Extras = Callable[[Any], Mapping[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class FitReport:
    """What fitting did: the planned phases, the caller's extras, and what row-changing ops did."""

    #: Locations of the ops fitted in each phase (one computation each).
    phases: list[list[str]] = field(default_factory=list)
    #: The computed ``extras``, by the consumer names the caller registered them under.
    extras: Collected = field(default_factory=Collected)
    #: What each row-changing op did (rows in/out, unmatched join keys), by its location.
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The computed statistics each stateful op was finalized with (merged with ``partials``), by
    #: location: what an incremental run saves and merges the next run's statistics into.
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)


class FeaturePipeline:
    """An ordered list of feature ops with fit/transform semantics.

    Examples
    --------
    >>> pipe = FeaturePipeline.from_specs(job.features)
    >>> report = pipe.fit(train_df)
    >>> features = pipe.transform(df)
    >>> FeaturePipeline.from_json(pipe.to_json()).transform(new_df)
    """

    def __init__(self, ops: list[Op]):
        self.ops = list(ops)

    @classmethod
    def from_specs(cls, specs: list) -> FeaturePipeline:
        return cls([build_op(spec, f"features[{i}]") for i, spec in enumerate(specs)])

    @property
    def fitted(self) -> bool:
        return all(op.fitted for op in self.ops)

    @property
    def needs_label(self) -> bool:
        """Whether an op (target encoding) reads the label columns of training frames."""
        return any(op.needs_label for op in self.ops)

    # -- other tables ------------------------------------------------------------------------
    def sources(self) -> dict[str, Any]:
        """Every table the ops read besides the main source, keyed ``features[i].<name>``."""
        return {f"{op.where}.{name}": spec for op in self.ops for name, spec in op.sources().items()}

    def bind(self, read: Callable[[Any, str], Any]) -> dict[str, Any]:
        """Open the ops' tables with ``read(spec, where)`` (the caller's I/O) and hand them over.

        Returns the opened tables by location, for lineage.
        """
        opened = {}
        for op in self.ops:
            tables = {name: read(spec, f"{op.where}.{name}") for name, spec in op.sources().items()}
            if tables:
                op.bind(tables)
                opened.update({f"{op.where}.{name}": t for name, t in tables.items()})
        return opened

    # -- schema ------------------------------------------------------------------------------
    def describe(self, meta: pd.DataFrame) -> pd.DataFrame:
        """Propagate an empty frame through every op, checking columns and types on the way."""
        for op in self.ops:
            meta = op.describe(meta)
        return meta

    def required_columns(self, outputs) -> set[str]:
        """The source columns needed to produce ``outputs``.

        Every op runs at prediction (a filter or a join changes rows, a ``select`` checks its
        columns), so every op's inputs that no earlier op produces must be read.
        """
        needed = set(outputs)
        for op in reversed(self.ops):
            needed = (needed - (op.output_columns() - op.input_columns())) | op.input_columns()
        return needed

    # -- planning ----------------------------------------------------------------------------
    def plan(self, extra_inputs: Collection[str] = frozenset(), *, derive: bool = True) -> tuple[list[int], int]:
        """Phase of each stateful op (-1 for stateless ones), and the phase of the extras.

        A column's *ready* phase is the first phase in which its final value can be computed.
        Extras (e.g. row counts of the final rows) need every row filter and ``extra_inputs``.
        With ``derive``, an op whose statistics follow from those of a fill before it (a scaler
        after ``fill_missing``) is fitted in the fill's phase (:meth:`fit`).
        """
        schedule = self._schedule(extra_inputs, derive=derive)
        return schedule.phases, schedule.extras_phase

    def _schedule(self, extra_inputs: Collection[str], *, derive: bool = True) -> _Schedule:
        ready: dict[str, int] = {}
        # The last op to write each column, and the last op to change the rows.
        writer: dict[str, int] = {}
        last_filter = -1
        rows_ready = 0
        schedule = _Schedule()
        for j, op in enumerate(self.ops):
            inputs = op.input_columns()
            needed = max([ready.get(c, 0) for c in inputs] + [rows_ready])
            schedule.needs.append(needed)
            if op.stateful and not op.fitted:
                i = self._fill_before(j, needed, ready, writer, last_filter, schedule) if derive else None
                phase = needed if i is None else schedule.phases[i]
                if i is not None:
                    schedule.through[j] = i
                schedule.phases.append(phase)
                for c in op.output_columns():
                    ready[c] = phase + 1
            else:
                schedule.phases.append(-1)
                for c in op.output_columns():
                    ready[c] = needed
                if op.filters_rows:
                    rows_ready = needed
            for c in op.output_columns():
                writer[c] = j
            if op.filters_rows:
                last_filter = j
        schedule.extras_phase = max([ready.get(c, 0) for c in extra_inputs] + [rows_ready])
        return schedule

    def _fill_before(
        self,
        j: int,
        needed: int,
        ready: Mapping[str, int],
        writer: Mapping[str, int],
        last_filter: int,
        schedule: _Schedule,
    ) -> int | None:
        """The fill whose output alone keeps op ``j`` from being fitted earlier, when ``j``'s
        statistics follow from those of the fill's input (:func:`dpipe.ops.stats.filled`): the
        fill's position, else ``None``.

        Nothing between the two may write ``j``'s input columns or change the rows, and ``j``'s
        other inputs must be final where the fill reads its own.
        """
        op = self.ops[j]
        if needed == 0 or not op.merges or not all(can_fill(m) for m in op.merges.values()):
            return None
        inputs = op.input_columns()
        blocking = {writer.get(c) for c in inputs if ready.get(c, 0) == needed}
        if len(blocking) != 1:
            return None
        (i,) = blocking
        if i is None or i in schedule.through or last_filter > i:
            return None
        fill = self.ops[i]
        if not (fill.stateful and not fill.fitted and fill.fills_missing):
            return None
        phase = schedule.phases[i]
        others = [c for c in inputs if writer.get(c) != i]
        if any(writer.get(c, -1) > i or ready.get(c, 0) > phase for c in others):
            return None
        return i

    # -- fitting -----------------------------------------------------------------------------
    def fit(
        self,
        df,
        *,
        fit_rows: Callable[[Any], Any] | None = None,
        extras: Extras | None = None,
        extra_inputs: Collection[str] = frozenset(),
        compute: Compute | None = None,
        partials: Mapping[str, Mapping[str, Any]] | None = None,
        derive: bool = True,
    ) -> FitReport:
        """Learn every op's statistics in as few ``compute`` calls as the dependencies allow.

        Each phase builds one :class:`~dpipe.collect.Collector`: every op fitted in it registers
        its statistics under its location (``features[2]``), every row-changing op its lazy
        measurements under ``features[2].rows`` (:func:`rows_consumer`), and ``extras`` its
        values under its own names; ``compute`` is called once for all of them.

        Parameters
        ----------
        df
            The Dask DataFrame to fit on (before any op).
        fit_rows
            Selects the rows statistics are learned from (e.g. the training split) from the frame
            an op sees. Stateless row filters apply to all rows either way.
        extras
            Called with the fully transformed frame; returns further lazy values to compute in
            the same pass, by consumer: ``{"rows": {"read": ..., "valid": ...}}``. Stateful ops
            never change the row set, so the extras' rows are exact even before later phases are
            fitted. Consumer names must differ from the ops' (``features[i]``, ``features[i].rows``).
        extra_inputs
            Columns the extras read, so they wait for the ops that produce them.
        compute
            The function that computes a phase (default ``dask.compute``; or ``client.compute``-based);
            injected so tests can count computations.
        partials
            Computed statistics of earlier rows (a previous :attr:`FitReport.stats`), by op
            location: each op is finalized with them merged into its statistics of ``df``
            (:meth:`~dpipe.ops.Op.merge`), which is a fit over both sets of rows without reading
            the earlier ones. Only ops of the first phase can be merged so (later phases read
            outputs of fitted ops, which change); see :meth:`not_incremental`.
        derive
            Fit an op whose statistics follow from those of a fill before it (a scaler after
            ``fill_missing``) in the fill's phase: its statistics are computed on the fill's
            input, with the number of values the fill replaces, and adjusted by the fitted
            constant (:func:`dpipe.ops.stats.filled`). The state equals a fit on the filled
            values up to float rounding (and, past 2048 values, the quantile sketch's rank
            error). ``False`` fits every op on its actual input, one phase later.

        Examples
        --------
        >>> report = pipe.fit(ddf, extras=lambda f: {"rows": {"n": f.map_partitions(len).sum()}})
        >>> report.extras["rows"]["n"]
        """
        if compute is None:
            import dask

            compute = dask.compute
        fit_rows = fit_rows or (lambda frame: frame)
        schedule = self._schedule(set(extra_inputs), derive=derive)
        needs, op_phases, extras_phase = schedule.needs, schedule.phases, schedule.extras_phase
        through = {i: [j for j, f in schedule.through.items() if f == i] for i in set(schedule.through.values())}
        # The frame each fill reads in its phase: its constants as that frame's dtypes store them.
        fill_meta: dict[int, pd.DataFrame] = {}
        if partials:
            blocked = self.not_incremental()
            if blocked:
                raise StateError(f"cannot merge statistics: {blocked[0]}", hint="fit without `partials`")
        stats: dict[str, dict[str, Any]] = {}
        # Row changes are measured along with statistics, never by a pass of their own.
        n_phases = max([p + 1 for p in op_phases] + [extras_phase + 1 if extras else 0])
        phases: list[list[str]] = []
        steps: dict[str, dict[str, Any]] = {}
        computed_extras = Collected()
        for phase in range(n_phases):
            collector = Collector()
            frame = df
            for i, op in enumerate(self.ops):
                if needs[i] > phase:
                    # Ops whose input is not final yet are skipped: nothing fitted in this phase
                    # reads their output (that is what the plan guarantees), and applied to
                    # not-yet-encoded input a derive could even fail (`c * 2` on raw strings).
                    # After a skipped filter, every op is skipped too (rows are not final).
                    continue
                if op_phases[i] == phase:
                    rows = fit_rows(frame)
                    collector.register(op.where, op.fit(rows))
                    for j in through.get(i, []):
                        # Fitted on the fill's input: what the fill will replace is counted too.
                        later = self.ops[j]
                        filled_columns = sorted(later.input_columns() & op.output_columns())
                        collector.register(later.where, {**later.fit(rows), _MISSING: missing(rows, filled_columns)})
                        fill_meta[i] = frame._meta
                if not op.fitted:
                    continue
                if needs[i] == phase:
                    # Measured once, in the first pass where the op's input is final.
                    frame, measured = op.apply_measured(frame)
                    if measured:
                        collector.register(rows_consumer(op), measured)
                else:
                    frame = op.apply(frame)
            consumers: list[str] = []
            if extras and phase == extras_phase:
                for consumer, values in extras(frame).items():
                    collector.register(consumer, values)
                    consumers.append(consumer)
            results = collector.compute(compute)
            names = []
            for i, op in enumerate(self.ops):
                if rows_consumer(op) in results:
                    steps[op.where] = {"op": op.name, **op.check(results[rows_consumer(op)])}
                if op_phases[i] == phase:
                    computed = dict(results.of(op.where))
                    if i in schedule.through:
                        fill = schedule.through[i]
                        computed = _through_fill(op, self.ops[fill], fill_meta[fill], computed)
                    if partials and op.where in partials:
                        computed = op.merge([partials[op.where], computed])
                    op.finalize(computed)
                    stats[op.where] = computed
                    names.append(op.where)
            if consumers:
                computed_extras = Collected({c: results[c] for c in consumers})
            phases.append(names)
        return FitReport(phases=phases, extras=computed_extras, steps=steps, stats=stats)

    def not_incremental(self, extra_inputs: Collection[str] = frozenset()) -> list[str]:
        """Why this pipeline cannot be fitted by merging saved statistics (empty when it can):
        ops that cannot merge or read other datums' rows, and stateful ops fitted after another
        (their input is the output of an op whose state the new rows change, so statistics saved
        from earlier rows would be stale)."""
        # Statistics derived through a fill depend on its constant, which new rows change.
        phases = self._schedule(set(extra_inputs), derive=False).phases
        problems = []
        for op, phase in zip(self.ops, phases):
            why = op.not_incremental()
            if why is None and phase > 0:
                why = "it reads the output of another fitted op, whose statistics change with new rows"
            if why is not None:
                problems.append(f"{op.where} ({op.name}): {why}")
        return problems

    # -- applying ----------------------------------------------------------------------------
    def transform_partition(self, pdf: pd.DataFrame) -> pd.DataFrame:
        """Apply every op to one pandas frame (only for pipelines of partition-wise ops)."""
        frame_ops = [op.where for op in self.ops if not op.partition_wise]
        if frame_ops:
            raise StateError(
                f"ops {frame_ops} need the whole Dask DataFrame",
                hint="use `pipeline.transform(df)` on a Dask DataFrame",
            )
        for op in self.ops:
            pdf = op.transform(pdf)
        return pdf

    def transform(self, df):
        """Apply every (fitted) op to a Dask DataFrame.

        Runs of partition-wise ops become one ``map_partitions`` each; joins and dedupes apply
        themselves between them.
        """
        unfitted = [op.where for op in self.ops if not op.fitted]
        if unfitted:
            raise StateError(
                f"pipeline is not fitted: {unfitted}",
                hint="call `pipeline.fit(df)` first, or load a fitted pipeline (`FeaturePipeline.from_json`)",
            )
        run: list[Op] = []
        for op in [*self.ops, None]:
            if op is not None and op.partition_wise:
                run.append(op)
                continue
            if run:
                chain = _Chain(tuple(run))
                df = df.map_partitions(chain, meta=chain.describe(df._meta))
                run = []
            if op is not None:
                df = op.apply(df)
        return df

    # -- state -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "ops": [{"spec": spec_dict(op), "where": op.where, "state": op.get_state()} for op in self.ops],
            # What fitted the state; informational only (`from_dict` ignores it).
            "versions": library_versions(("dpipe", "dask", "pandas", "pyarrow", "xgboost")),
        }

    def to_json(self) -> str:
        # default=str: timestamps (e.g. aggregate keys) are saved as ISO text and parsed back.
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, data: dict) -> FeaturePipeline:
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"fitted pipeline has format_version {data.get('format_version')!r}; this dpipe reads {FORMAT_VERSION}",
                hint="re-train the model with this dpipe version",
            )
        ops = []
        for entry in data["ops"]:
            name = entry["spec"]["op"]
            model = OP_MODELS.get(name, CustomOp)
            spec = model.model_validate(entry["spec"])
            op = build_op(spec, entry["where"])
            if entry["state"] is not None:
                op.set_state(entry["state"])
            ops.append(op)
        return cls(ops)

    @classmethod
    def from_json(cls, text: str) -> FeaturePipeline:
        return cls.from_dict(json.loads(text))


def _through_fill(op: Op, fill: Op, meta: pd.DataFrame, computed: dict[str, Any]) -> dict[str, Any]:
    """``op``'s statistics of the fill's input (and its missing counts) made into those of the
    filled values, with the fill's fitted constants."""
    counts = computed.pop(_MISSING)
    values = fill.fills(meta)
    fills = {c: (values[c], float(counts[c])) for c in counts.index if c in values}
    out = {}
    for key, stat in computed.items():
        merge = op.merges.get(key.split(":", 1)[0])
        adjusted = None if merge is None else filled(merge, key, stat, fills)
        if adjusted is None:
            raise StateError(
                f"{op.where} ({op.name}): its statistic {key!r} has no merge that a fill's constant can adjust",
                hint="declare the statistic in the op's `merges`, or fit with derive=False",
            )
        out[key] = adjusted
    return out


@dataclass
class _Schedule:
    """The fit plan: for each op, the first phase in which its input (and rows) are final
    (``needs``) and its fit phase (``phases``, -1 when stateless); the ops fitted through the
    fill before them (``through``: op position -> the fill's); the phase of the extras."""

    needs: list[int] = field(default_factory=list)
    phases: list[int] = field(default_factory=list)
    through: dict[int, int] = field(default_factory=dict)
    extras_phase: int = 0


#: The key under which an op fitted through a fill also counts the values the fill replaces.
_MISSING = "__dpipe_missing"


def rows_consumer(op: Op) -> str:
    """The collector name of an op's row measurements in the fit pass (``features[2].rows``)."""
    return f"{op.where}.rows"


@dataclass(frozen=True)
class _Chain:
    """Partition-wise ops applied one after the other to a pandas partition (one task each)."""

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-transform"

    ops: tuple[Op, ...]

    def describe(self, meta: pd.DataFrame) -> pd.DataFrame:
        for op in self.ops:
            meta = op.describe(meta)
        return meta

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        for op in self.ops:
            pdf = op.transform(pdf)
        return pdf
