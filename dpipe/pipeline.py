"""The feature pipeline: plan fit phases, fit with one Dask computation per phase, transform.

Planning follows NVTabular: every op whose inputs do not depend on a not-yet-fitted op is fitted
in the same phase, and all statistics of a phase (plus any extra statistics the caller asks for,
such as row counts) are computed by a single ``dask.compute``. An op that reads the output of a
stateful op, directly or through derived columns or row filters, goes to the next phase.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import pandas as pd

from dpipe.errors import BundleError
from dpipe.ops import Op, build_op, spec_dict
from dpipe.spec import OP_MODELS
from dpipe.spec.features import CustomOp
from dpipe.versions import library_versions

FORMAT_VERSION = 1


@dataclass
class FitReport:
    """What fitting did: the planned phases and the extra statistics computed alongside."""

    phases: list[list[str]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    #: What each row-changing op did (rows in/out, unmatched join keys), by its location.
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    def plan(self, extra_inputs: set[str] = frozenset()) -> tuple[list[int], int]:
        """Phase of each stateful op (-1 for stateless ones), and the phase of the extras.

        A column's *ready* phase is the first phase in which its final value can be computed.
        Extras (e.g. row counts of the final rows) need every row filter and ``extra_inputs``.
        """
        _, phases, extras_phase = self._schedule(extra_inputs)
        return phases, extras_phase

    def _schedule(self, extra_inputs: set[str]) -> tuple[list[int], list[int], int]:
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
        extras: Callable[[Any], dict[str, Any]] | None = None,
        extra_inputs: set[str] = frozenset(),
        compute: Callable[..., tuple] = dask.compute,
    ) -> FitReport:
        """Learn every op's statistics in as few ``compute`` calls as the dependencies allow.

        Parameters
        ----------
        df
            The Dask DataFrame to fit on (before any op).
        fit_rows
            Selects the rows statistics are learned from (e.g. the training split) from the frame
            an op sees. Stateless row filters apply to all rows either way.
        extras
            Called with the fully transformed frame; returns further lazy values to compute in
            the same pass (row counts, label distribution, ...). Stateful ops never change the
            row set, so the extras' rows are exact even before later phases are fitted.
        extra_inputs
            Columns the extras read, so they wait for the ops that produce them.
        compute
            The function that computes a phase (``dask.compute`` or ``client.compute``-based);
            injected so tests can count computations.
        """
        fit_rows = fit_rows or (lambda frame: frame)
        report = FitReport()
        needs, op_phases, extras_phase = self._schedule(set(extra_inputs))
        measured = [i for i, op in enumerate(self.ops) if op.filters_rows]
        # Row changes are measured along with statistics, never by a pass of their own.
        n_phases = max([p + 1 for p in op_phases] + [extras_phase + 1 if extras else 0])
        for phase in range(n_phases):
            lazy: dict[tuple[int, str], Any] = {}
            frame = df
            for i, op in enumerate(self.ops):
                if needs[i] > phase:
                    # Ops whose input is not final yet are skipped: nothing fitted in this phase
                    # reads their output (that is what the plan guarantees), and applied to
                    # not-yet-encoded input a derive could even fail (`c * 2` on raw strings).
                    # After a skipped filter, every op is skipped too (rows are not final).
                    continue
                if op_phases[i] == phase:
                    for key, value in op.fit(fit_rows(frame)).items():
                        lazy[(i, key)] = value
                if op.fitted:
                    before, frame = frame, op.apply(frame)
                    if i in measured and needs[i] == phase:
                        # Measured once, in the first pass where the op's input is final.
                        for key, value in op.diagnose(before, frame).items():
                            lazy[(i, "diagnose:" + key)] = value
            if extras and phase == extras_phase:
                for key, value in extras(frame).items():
                    lazy[(-1, key)] = value
            keys = list(lazy)
            values = compute(*(lazy[k] for k in keys)) if keys else ()
            results = dict(zip(keys, values))
            names = []
            for i, op in enumerate(self.ops):
                mine = {key: v for (j, key), v in results.items() if j == i}
                diagnosed = {k.removeprefix("diagnose:"): v for k, v in mine.items() if k.startswith("diagnose:")}
                if diagnosed:
                    report.steps[op.where] = {"op": op.name, **op.check(diagnosed)}
                if op_phases[i] == phase:
                    op.finalize({k: v for k, v in mine.items() if not k.startswith("diagnose:")})
                    names.append(op.where)
            report.extras.update({key: v for (j, key), v in results.items() if j == -1})
            report.phases.append(names)
        return report

    # -- applying ----------------------------------------------------------------------------
    def transform_partition(self, pdf: pd.DataFrame) -> pd.DataFrame:
        """Apply every op to one pandas frame (only for pipelines of partition-wise ops)."""
        frame_ops = [op.where for op in self.ops if not _partition_wise(op)]
        if frame_ops:
            raise RuntimeError(f"ops {frame_ops} need the whole Dask DataFrame; use transform()")
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
            raise RuntimeError(f"pipeline is not fitted: {unfitted}")
        run: list[Op] = []
        for op in [*self.ops, None]:
            if op is not None and _partition_wise(op):
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


def _partition_wise(op: Op) -> bool:
    return getattr(op, "partition_wise", type(op).apply is Op.apply)


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
