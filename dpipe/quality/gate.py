"""The gate: a job's checks over one source, as stages with explicit inputs and frozen results.

:class:`QualityGate` holds configuration only. :meth:`~QualityGate.prepass` returns a
:class:`Prepass`, :meth:`~QualityGate.apply` a :class:`Checked`, :meth:`~QualityGate.evaluate`
the manifest's ``quality`` section; nothing is stored between calls, so ``apply`` may run on any
number of frames in any order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dpipe.errors import ColumnError, DataError, StateError
from dpipe.io import BadFileLog
from dpipe.io.sinks import StagedOutput, parquet_task
from dpipe.quality.checks import Check, Measured, RowCheck, build_check

if TYPE_CHECKING:
    from dpipe.spec.quality import CheckSpec, QuarantineSpec

CHECK_COLUMN = "__check"
FILE_COLUMN = "__source_file"
QUARANTINE_DIR = "quarantine"
BAD_FILES_DIR = "_bad_files"
_CODE = "__dpipe_quarantine__"  # index in `checks` of the first quarantine check a row fails, -1 if none
_STRING = pd.StringDtype("pyarrow")
_logger = logging.getLogger(__name__)


def _flag(i: int) -> str:
    return f"__dpipe_violates_{i}__"


# -- planning ---------------------------------------------------------------------------------
def check_columns(job, meta: pd.DataFrame) -> None:
    """Check every column the checks name against the source's (empty) frame ``meta``."""
    available = list(meta.columns)
    for i, spec in enumerate(job.checks):
        check = build_check(spec, i)
        where = f"{check.where} ({check.name})"
        missing = [c for c in check.columns if c not in available]
        if missing:
            raise ColumnError(
                f"{where}: column(s) {missing} not found in the source; available: {available}",
                hint=f"fix `{check.where}`",
            )
        problem = check.type_problem(meta)
        if problem:
            raise ColumnError(f"{where}: {problem}", hint=f"fix `{check.where}` or the column's type in the data")
    if job.quarantine is not None:
        taken = [c for c in (CHECK_COLUMN, FILE_COLUMN) if c in available]
        if taken:
            raise ColumnError(
                f"source: column names {taken} are reserved for quarantined rows",
                hint="rename them in the data",
            )


def bad_file_log(job, out: StagedOutput) -> BadFileLog | None:
    """Where workers record skipped input files (``None``: unreadable files fail the run)."""
    if job.quarantine is None or job.quarantine.bad_files != "skip":
        return None
    return BadFileLog(out.staged_uri(BAD_FILES_DIR), out.storage_options)


# -- stage results ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepass:
    """What :meth:`QualityGate.prepass` found: the duplicated keys of each quarantining ``unique``
    check, by its index in ``checks``, and how many passes over the data that took (0 or 1)."""

    duplicated: dict[int, pd.Index] = field(default_factory=dict)
    passes: int = 0


NO_PREPASS = Prepass()


@dataclass(frozen=True)
class Checked:
    """What :meth:`QualityGate.apply` made of one frame.

    ``frame`` holds the rows to train on (quarantined rows removed, no internal columns);
    ``lazy`` the values :meth:`QualityGate.evaluate` needs, to compute in the fit pass (Dask
    collections, and the pre-pass count as a plain ``int``).
    """

    frame: Any
    lazy: dict[str, Any]


# -- the gate ---------------------------------------------------------------------------------
class QualityGate:
    """A job's checks over one source: configuration only, each stage a method with a result.

    Parameters
    ----------
    checks
        The job's validated check specs (``job.checks``).
    quarantine
        The job's quarantine policy (``job.quarantine``), if any: the limits on quarantined rows.
    files
        The source's files; partition ``i`` of every frame checked is read from ``files[i]``.

    Examples
    --------
    >>> gate = QualityGate(job.checks, job.quarantine, source.files)
    >>> pre = gate.prepass(source.frame, dask.compute)
    >>> checked = gate.apply(source.frame, pre, quarantine_to=out)
    >>> values = dict(zip(checked.lazy, dask.compute(*checked.lazy.values())))
    >>> section = gate.evaluate(values, rows_read=n_rows)
    """

    def __init__(
        self, checks: Sequence[CheckSpec], quarantine: QuarantineSpec | None = None, files: Sequence[str] = ()
    ):
        self.checks: tuple[Check, ...] = tuple(build_check(spec, i) for i, spec in enumerate(checks))
        self.quarantine = quarantine
        self.files = tuple(files)

    def __repr__(self) -> str:
        return f"QualityGate({list(self.checks)}, {len(self.files)} file(s))"

    @property
    def row_checks(self) -> tuple[RowCheck, ...]:
        """The checks evaluated row by row, each with a violation flag."""
        return tuple(c for c in self.checks if c.per_row)  # type: ignore[misc]

    @property
    def names_files(self) -> bool:
        """Whether rows are tagged with the file of their partition (``files``): quarantined rows
        and failing checks' samples are, so only a gate with row checks needs a frame whose
        partition ``i`` is ``files[i]``."""
        return bool(self.row_checks)

    @property
    def quarantines(self) -> bool:
        return any(c.action == "quarantine" for c in self.checks)

    @property
    def needs_prepass(self) -> bool:
        return any(c.needs_prepass for c in self.checks)

    def prepass(self, frame, compute: Callable[..., tuple]) -> Prepass:
        """Find the keys quarantining ``unique`` checks set aside: one ``compute`` over the key
        columns of ``frame`` when such a check exists, none otherwise."""
        wanted = [c for c in self.checks if c.needs_prepass]
        if not wanted:
            return NO_PREPASS
        found = compute(*(c.prepass(frame) for c in wanted))
        return Prepass({c.index: keys for c, keys in zip(wanted, found)}, passes=1)

    def apply(self, frame, pre: Prepass = NO_PREPASS, *, quarantine_to: StagedOutput | None = None) -> Checked:
        """Check the rows of ``frame`` (a Dask frame as read, any columns the checks read).

        Returns the rows to train on and the lazy values to evaluate; with ``quarantine_to``
        those include the write of the quarantined rows, whole (so ``frame`` needs every column),
        to its ``quarantine/`` folder. Nothing is computed.
        """
        missing = [c.where for c in self.checks if c.needs_prepass and c.index not in pre.duplicated]
        if missing:
            raise StateError(f"{missing} need the duplicated keys of `QualityGate.prepass`; pass its result as `pre`")
        # The pre-pass's cost travels with the values it made possible, for the manifest.
        lazy: dict[str, Any] = {"prepasses": pre.passes}
        for c in self.checks:
            lazy.update({f"{c.where}.{k}": v for k, v in c.measure(frame).items()})
        rows = self.row_checks
        if not rows:
            return Checked(frame, lazy)
        marker = _Marker(rows, dict(pre.duplicated))
        marked = frame.map_partitions(marker, meta=marker(frame._meta))
        lazy["violations"] = marked[[_flag(c.index) for c in rows]].sum()
        failing = tuple(c for c in rows if c.action == "fail")
        if failing:
            sampler = _Sampler(failing, self.files)
            lazy["samples"] = marked.map_partitions(
                sampler, partition_info=True, meta=_samples_frame([]), enforce_metadata=False
            )
        internal = [_flag(c.index) for c in rows] + [_CODE]
        if not self.quarantines:
            return Checked(marked.drop(columns=internal), lazy)
        lazy["quarantined"] = marked[_CODE].value_counts()
        if quarantine_to is not None:
            writer = _Quarantined(tuple(c.name for c in self.checks), self.files, tuple(internal))
            bad = marked[marked[_CODE] >= 0]
            bad = bad.map_partitions(writer, partition_info=True, meta=writer(bad._meta))
            lazy["write"] = parquet_task(bad, quarantine_to, QUARANTINE_DIR)
        return Checked(marked[marked[_CODE] < 0].drop(columns=internal), lazy)

    def evaluate(
        self,
        values: Mapping[str, Any],
        *,
        rows_read: int,
        bad_files: Sequence[Mapping[str, str]] = (),
        log: Callable[[str], None] = _logger.info,
    ) -> dict[str, Any]:
        """The manifest's ``quality`` section; raises :class:`DataError` naming every failed check.

        ``values`` are :attr:`Checked.lazy`, computed, of a frame with the rows ``rows_read``
        counts (the fit pass's projection will do); ``bad_files`` are the skipped input files
        (:meth:`BadFileLog.records`), each logged. Each check reports ``violations``: offending
        rows for row checks (every row of a duplicated key for ``unique``), missing values for
        ``null_fraction``, and 0 or 1 for ``row_count``.
        """
        codes = {int(k): int(v) for k, v in _need(values, "quarantined").items()} if self.quarantines else {}
        outcomes = [c.evaluate(self._measured(c, values, rows_read, codes)) for c in self.checks]
        results = [o.entry for o in outcomes]
        problems = [o.problem for o in outcomes if o.problem]
        quarantined = sum(v for k, v in codes.items() if k >= 0)
        limit = self._limit_problem(quarantined, rows_read, results)
        if limit:
            problems.append(limit)
        for record in bad_files:
            log(f"skipped unreadable file {record['file']}: {record['error']}")
        if problems:
            n = len(problems)
            raise DataError(
                f"data quality: {n} problem{'s' if n > 1 else ''}:\n" + "\n".join(f"  - {p}" for p in problems),
                hint="fix the data; or set `action: quarantine` on a row check to set offending rows aside"
                " (quarantined rows are written to `quarantine/` in the output)",
            )
        if self.checks:
            summary = f"quality: {len(self.checks)} check(s) passed"
            if self.quarantines:
                summary += f", {quarantined} row(s) quarantined"
            log(summary)
        return {
            "checks": results,
            "quarantined_rows": quarantined,
            "quarantine": QUARANTINE_DIR if self.quarantines else None,
            "bad_files": [dict(r) for r in bad_files],
            "prepasses": int(_need(values, "prepasses")),
        }

    def _measured(self, check: Check, values: Mapping[str, Any], rows_read: int, codes: dict[int, int]) -> Measured:
        prefix = f"{check.where}."
        own = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
        if not check.per_row:
            return Measured(rows_read, own)
        samples: tuple[tuple[str, str], ...] = ()
        found = values.get("samples")
        if found is not None:
            shown = found[found["check"] == check.index]
            samples = tuple(zip(shown["value"], shown["file"]))
        violations = int(_need(values, "violations")[_flag(check.index)])
        return Measured(rows_read, own, violations, codes.get(check.index, 0), samples)

    def _limit_problem(self, quarantined: int, rows_read: int, results: list[dict]) -> str | None:
        q = self.quarantine
        if q is None or not quarantined:
            return None
        over = []
        if q.max_rows is not None and quarantined > q.max_rows:
            over.append(f"`quarantine.max_rows` ({q.max_rows})")
        if q.max_fraction is not None and quarantined > q.max_fraction * rows_read:
            over.append(f"`quarantine.max_fraction` ({q.max_fraction:g}, {int(q.max_fraction * rows_read)} rows)")
        if not over:
            return None
        per_check = ", ".join(f"{r['name']}: {r['quarantined']}" for r in results if r.get("quarantined"))
        share = quarantined / rows_read if rows_read else 1.0
        return (
            f"quarantine: {quarantined} of {rows_read} rows ({share:.2%}) would be quarantined, more than"
            f" {' and '.join(over)}; per check: {per_check}"
        )


def _need(values: Mapping[str, Any], key: str) -> Any:
    try:
        return values[key]
    except KeyError as exc:
        raise StateError(f"`values` lack {key!r}: pass the computed `Checked.lazy` of `QualityGate.apply`") from exc


# -- per-partition functions (pure pandas, run on workers) -------------------------------------
# -- at prediction ----------------------------------------------------------------------------
#: The column of a prediction naming the quarantining check its source row failed (null: none).
QUARANTINED_BY = "quarantined_by"


@dataclass(frozen=True)
class PredictionChecks:
    """A training job's quarantining row checks applied to scoring rows (``quarantine.at_prediction``).

    ``unique`` checks are not applied (they compare rows across the whole training source), nor
    are checks reading a column the scoring data lacks (often the label's): ``skipped`` names them.
    """

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-check-predictions"

    checks: tuple[RowCheck, ...]
    mode: str
    skipped: tuple[str, ...] = ()

    @staticmethod
    def specs_of(spec: Mapping[str, Any]) -> list[Any]:
        """The check specs of a bundle manifest's ``spec`` (the training job's)."""
        from pydantic import TypeAdapter

        from dpipe.spec.quality import CheckSpec

        return TypeAdapter(list[CheckSpec]).validate_python(spec.get("checks") or [])

    @classmethod
    def columns_of(cls, spec: Mapping[str, Any]) -> set[str]:
        """The columns the training job's checks read."""
        return {c for check in cls.specs_of(spec) for c in check.columns_read}

    @classmethod
    def of(cls, spec: Mapping[str, Any], columns: Sequence[str]) -> PredictionChecks | None:
        """From a bundle manifest's ``spec`` (the training job's), for a source with ``columns``."""
        from dpipe.spec.quality import QuarantineSpec

        quarantine = spec.get("quarantine")
        if not quarantine:
            return None
        mode = QuarantineSpec.model_validate(quarantine).at_prediction
        checks = [build_check(c, i) for i, c in enumerate(cls.specs_of(spec))]
        wanted = [c for c in checks if c.per_row and c.action == "quarantine"]
        usable = tuple(c for c in wanted if not c.needs_prepass and set(c.columns) <= set(columns))
        skipped = tuple(f"{c.where} ({c.name})" for c in wanted if c not in usable)
        if mode == "ignore" or not usable:
            return None
        return cls(usable, mode, skipped)  # type: ignore[arg-type]

    @property
    def columns(self) -> list[str]:
        return sorted({c for check in self.checks for c in check.columns})

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        """``pdf`` with :data:`QUARANTINED_BY`: the name of the first check a row fails."""
        names = np.full(len(pdf), None, dtype=object)
        for check in self.checks:
            bad = np.asarray(check.mask(pdf, None), dtype=bool) & pd.isna(names)
            names[bad] = check.name
        return pdf.assign(**{QUARANTINED_BY: pd.array(names, dtype=_STRING)})


def _file(files: tuple[str, ...], partition_info: dict | None) -> str:
    return files[partition_info["number"]] if partition_info else ""


@dataclass(frozen=True)
class _Marker:
    """Adds a violation flag per row check and the code of the first quarantine check failed."""

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-check"

    checks: tuple[RowCheck, ...]
    duplicated: dict[int, pd.Index] = field(default_factory=dict)

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        code = np.full(len(pdf), -1, dtype="int16")
        flags = {}
        for check in self.checks:
            bad = check.mask(pdf, self.duplicated.get(check.index))
            flags[_flag(check.index)] = bad
            if check.action == "quarantine":
                code = np.where((code < 0) & bad, np.int16(check.index), code).astype("int16")
        return pdf.assign(**flags, **{_CODE: code})


@dataclass(frozen=True)
class _Sampler:
    """The first few offending values of each ``fail`` row check in one partition, with its file."""

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-sample-failures"

    checks: tuple[RowCheck, ...]
    files: tuple[str, ...]

    def __call__(self, pdf: pd.DataFrame, partition_info=None) -> pd.DataFrame:
        file = _file(self.files, partition_info)
        rows = [
            (c.index, text, file) for c in self.checks for text in c.sample(pdf, pdf[_flag(c.index)].to_numpy(bool))
        ]
        return _samples_frame(rows)


def _samples_frame(rows: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "check": pd.array([r[0] for r in rows], dtype="int16"),
            "value": pd.array([r[1] for r in rows], dtype=_STRING),
            "file": pd.array([r[2] for r in rows], dtype=_STRING),
        }
    )


@dataclass(frozen=True)
class _Quarantined:
    """Quarantined rows as written: the original columns, ``__check`` and ``__source_file``."""

    #: Dask's key prefix for its tasks (its repr would make keys too long to spill to disk).
    __name__ = "dpipe-quarantine"

    names: tuple[str, ...]  # every check's name, by index in `checks`
    files: tuple[str, ...]
    drop: tuple[str, ...]

    def __call__(self, pdf: pd.DataFrame, partition_info=None) -> pd.DataFrame:
        names = np.asarray(self.names, dtype=object)[pdf[_CODE].to_numpy(dtype="int64")]
        out = pdf.drop(columns=list(self.drop))
        out[CHECK_COLUMN] = pd.array(names, dtype=_STRING)
        out[FILE_COLUMN] = pd.array([_file(self.files, partition_info)] * len(out), dtype=_STRING)
        return out
