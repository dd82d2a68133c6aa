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

import dask
import pandas as pd

from dpipe.collect import Collected, Collector, Compute
from dpipe.errors import BundleError, StateError
from dpipe.ops import Op, build_op, spec_dict
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
    def plan(self, extra_inputs: Collection[str] = frozenset()) -> tuple[list[int], int]:
        """Phase of each stateful op (-1 for stateless ones), and the phase of the extras.

        A column's *ready* phase is the first phase in which its final value can be computed.
        Extras (e.g. row counts of the final rows) need every row filter and ``extra_inputs``.
        """
        _, phases, extras_phase = self._schedule(extra_inputs)
        return phases, extras_phase

    def _schedule(self, extra_inputs: Collection[str]) -> tuple[list[int], list[int], int]:
        """:meth:`plan`, plus the first phase in which each op's input (and rows) are final."""
        ready: dict[str, int] = {}
        rows_ready = 0
        phases = []
        needs = []
        for op in self.ops:
            needed = max([ready.get(c, 0) for c in op.input_columns()] + [rows_ready])
            needs.append(needed)
            if op.stateful and not op.fitted:
                phases.append(needed)
                for c in op.output_columns():
                    ready[c] = needed + 1
            else:
                phases.append(-1)
                for c in op.output_columns():
                    ready[c] = needed
                if op.filters_rows:
                    rows_ready = needed
        extras_phase = max([ready.get(c, 0) for c in extra_inputs] + [rows_ready])
        return needs, phases, extras_phase

    # -- fitting -----------------------------------------------------------------------------
    def fit(
        self,
        df,
        *,
        fit_rows: Callable[[Any], Any] | None = None,
        extras: Extras | None = None,
        extra_inputs: Collection[str] = frozenset(),
        compute: Compute = dask.compute,
        partials: Mapping[str, Mapping[str, Any]] | None = None,
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
            The function that computes a phase (``dask.compute`` or ``client.compute``-based);
            injected so tests can count computations.
        partials
            Computed statistics of earlier rows (a previous :attr:`FitReport.stats`), by op
            location: each op is finalized with them merged into its statistics of ``df``
            (:meth:`~dpipe.ops.Op.merge`), which is a fit over both sets of rows without reading
            the earlier ones. Only ops of the first phase can be merged so (later phases read
            outputs of fitted ops, which change); see :meth:`not_incremental`.

        Examples
        --------
        >>> report = pipe.fit(ddf, extras=lambda f: {"rows": {"n": f.map_partitions(len).sum()}})
        >>> report.extras["rows"]["n"]
        """
        fit_rows = fit_rows or (lambda frame: frame)
        needs, op_phases, extras_phase = self._schedule(set(extra_inputs))
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
                    collector.register(op.where, op.fit(fit_rows(frame)))
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
        _, phases, _ = self._schedule(set(extra_inputs))
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


def rows_consumer(op: Op) -> str:
    """The collector name of an op's row measurements in the fit pass (``features[2].rows``)."""
    return f"{op.where}.rows"


@dataclass(frozen=True)
class _Chain:
    """Partition-wise ops applied one after the other to a pandas partition (one task each)."""

    ops: tuple[Op, ...]

    def describe(self, meta: pd.DataFrame) -> pd.DataFrame:
        for op in self.ops:
            meta = op.describe(meta)
        return meta

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        for op in self.ops:
            pdf = op.transform(pdf)
        return pdf
