"""Data-quality checks and quarantine, evaluated in the same Dask pass as the feature statistics.

The runner calls, in order:

1. :func:`check_columns` while planning (no cluster yet): every column a check names exists in
   the source schema and has a type the check can compare.
2. :func:`bad_file_log` to learn where workers record the input files they skip
   (``quarantine.bad_files: skip``); it is handed to :func:`dpipe.io.read`.
3. :class:`QualityGate` ``.prepass(compute)`` when a ``unique`` check quarantines rows: the
   duplicated keys must be known before rows can be set aside, so that costs one pass over the
   key columns (counted in the manifest's ``quality.prepasses``). No other check needs it.
4. ``.apply(frame)``: the rows the job trains on, i.e. the source minus quarantined rows.
5. ``.lazy_values()``: check counts, sample offending values, dataset statistics and the lazy
   write of the quarantined rows, all computed by the fit pass's single ``compute``.
6. ``.finish(values, rows_read=...)``: turns those values into the manifest's ``quality`` section,
   or raises one :class:`DataError` listing every failed check and an exceeded quarantine limit.

Rows are checked as read from the source, before the label and any feature op. A row that
violates several quarantine checks is quarantined once, under the first of them in spec order.
Quarantined rows are written, with all their columns plus ``__check`` (the check's name) and
``__source_file`` (the input file), as Parquet under ``quarantine/`` in the run's output, which is
committed atomically with the bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dpipe.errors import ColumnError, DataError
from dpipe.io.sinks import StagedOutput, parquet_task
from dpipe.io.sources import BadFileLog

CHECK_COLUMN = "__check"
FILE_COLUMN = "__source_file"
QUARANTINE_DIR = "quarantine"
BAD_FILES_DIR = "_bad_files"
_CODE = "__dpipe_quarantine__"  # index in `checks` of the first quarantine check a row fails, -1 if none
_MASKED = ("not_null", "range", "allowed_values", "regex")
_SAMPLES = 3
_STRING = pd.StringDtype("pyarrow")


def _flag(i: int) -> str:
    return f"__dpipe_violates_{i}__"


# -- planning ---------------------------------------------------------------------------------
def check_columns(job, meta: pd.DataFrame) -> None:
    """Check every column the checks name against the source's (empty) frame ``meta``."""
    available = list(meta.columns)
    for i, check in enumerate(job.checks):
        where = f"checks[{i}] ({check.name})"
        missing = [c for c in check.columns_read if c not in available]
        if missing:
            raise ColumnError(
                f"{where}: column(s) {missing} not found in the source; available: {available}",
                hint=f"fix `checks[{i}]`",
            )
        problem = _type_problem(check, meta)
        if problem:
            raise ColumnError(f"{where}: {problem}", hint=f"fix `checks[{i}]` or the column's type in the data")
    if job.quarantine is not None:
        taken = [c for c in (CHECK_COLUMN, FILE_COLUMN) if c in available]
        if taken:
            raise ColumnError(
                f"source: column names {taken} are reserved for quarantined rows",
                hint="rename them in the data",
            )


def _type_problem(check, meta: pd.DataFrame) -> str | None:
    if check.check == "range":
        dtype = meta[check.column].dtype
        bounds = [b for b in (check.min, check.max) if b is not None]
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        if isinstance(bounds[0], str):
            if not (pd.api.types.is_string_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)):
                return f"text bounds {bounds} need a text or date column; {check.column!r} is {dtype}"
        elif not numeric:
            return f"numeric bounds {bounds} need a numeric column; {check.column!r} is {dtype}"
    if check.check == "regex" and not pd.api.types.is_string_dtype(meta[check.column].dtype):
        return f"a regex needs a text column; {check.column!r} is {meta[check.column].dtype}"
    return None


def bad_file_log(job, out: StagedOutput) -> BadFileLog | None:
    """Where workers record skipped input files (``None``: unreadable files fail the run)."""
    if job.quarantine is None or job.quarantine.bad_files != "skip":
        return None
    return BadFileLog(out.staged_uri(BAD_FILES_DIR), out.storage_options)


# -- per-partition evaluation (pure pandas, runs on workers) ----------------------------------
def _true(values) -> np.ndarray:
    """A boolean mask with missing results (comparisons with NA) as False."""
    return pd.Series(values).to_numpy(dtype=bool, na_value=False)


def violations(check, pdf: pd.DataFrame, duplicated: pd.Index | None = None) -> np.ndarray:
    """Which rows of ``pdf`` violate a row check; ``duplicated`` are a ``unique`` check's keys."""
    if check.check == "not_null":
        return pdf[list(check.columns)].isna().any(axis=1).to_numpy(dtype=bool)
    if check.check == "unique":
        key = pdf[list(check.columns)]
        present = key.notna().all(axis=1).to_numpy(dtype=bool)
        index = pd.MultiIndex.from_frame(key) if key.shape[1] > 1 else pd.Index(key.iloc[:, 0])
        return present & index.isin(duplicated if duplicated is not None else []).astype(bool)
    s = pdf[check.column]
    present = s.notna().to_numpy(dtype=bool)
    if check.check == "range":
        bad = np.zeros(len(s), dtype=bool)
        if check.min is not None:
            bad |= _true(s < check.min)
        if check.max is not None:
            bad |= _true(s > check.max)
    elif check.check == "allowed_values":
        bad = ~_true(s.isin(check.values))
    elif check.check == "regex":
        # Python's `re`, the syntax the spec validated (pyarrow's RE2 accepts less).
        bad = ~_true(s.astype("string[python]").str.fullmatch(check.pattern))
    else:  # pragma: no cover - dataset checks are not evaluated per row
        raise ValueError(f"{check.check} is not a row check")
    return present & bad


def _file(files: list[str], partition_info: dict | None) -> str:
    return files[partition_info["number"]] if partition_info else ""


def _plain(value: Any) -> Any:
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class _Marker:
    """Adds a violation flag per row check and the code of the first quarantine check failed."""

    checks: tuple  # ((index in job.checks, CheckSpec), ...)
    duplicated: dict = field(default_factory=dict)

    def __call__(self, pdf: pd.DataFrame) -> pd.DataFrame:
        code = np.full(len(pdf), -1, dtype="int16")
        flags = {}
        for i, check in self.checks:
            bad = violations(check, pdf, self.duplicated.get(i))
            flags[_flag(i)] = bad
            if check.action == "quarantine":
                code = np.where((code < 0) & bad, np.int16(i), code).astype("int16")
        return pdf.assign(**flags, **{_CODE: code})


@dataclass(frozen=True)
class _Sampler:
    """The first few offending values of each ``fail`` row check in one partition, with its file."""

    checks: tuple
    files: tuple

    def __call__(self, pdf: pd.DataFrame, partition_info=None) -> pd.DataFrame:
        rows = []
        for i, check in self.checks:
            hits = pdf.loc[pdf[_flag(i)].to_numpy(dtype=bool), check.columns_read].head(_SAMPLES)
            for _, row in hits.iterrows():
                text = ", ".join(f"{c}={_plain(v)!r}" for c, v in row.items())
                rows.append((i, text, _file(self.files, partition_info)))
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

    names: tuple  # every check's name, by index in job.checks
    files: tuple
    drop: tuple

    def __call__(self, pdf: pd.DataFrame, partition_info=None) -> pd.DataFrame:
        names = np.asarray(self.names, dtype=object)[pdf[_CODE].to_numpy(dtype="int64")]
        out = pdf.drop(columns=list(self.drop))
        out[CHECK_COLUMN] = pd.array(names, dtype=_STRING)
        out[FILE_COLUMN] = pd.array([_file(self.files, partition_info)] * len(out), dtype=_STRING)
        return out


def _duplicated(frame, columns: list[str]):
    """Lazy: each key value that more than one row has, with its row count (a tree reduction)."""
    sizes = frame[list(columns)].groupby(list(columns)).size()
    return sizes[sizes > 1]


# -- the gate the runner drives ---------------------------------------------------------------
class QualityGate:
    """The job's checks over one source: see the module docstring for the order of calls.

    Parameters
    ----------
    job
        The validated :class:`~dpipe.spec.JobSpec`.
    source
        The planned :class:`~dpipe.io.sources.Source`; partition ``i`` is ``source.files[i]``.
    out
        The run's staged output; quarantined rows go to its ``quarantine/`` folder.
    bad_files
        The log workers record skipped files in (from :func:`bad_file_log`), if any.
    """

    def __init__(self, job, source, out: StagedOutput, bad_files: BadFileLog | None = None):
        self.job = job
        self.checks = list(job.checks)
        self.source = source
        self.out = out
        self.bad_files = bad_files
        self.files = tuple(source.files)
        self.duplicated: dict[int, pd.Index] = {}
        self.prepasses = 0
        self._marked = None
        # Checks evaluated row by row; a failing `unique` check counts duplicates with a groupby.
        self.masked = [
            (i, c)
            for i, c in enumerate(self.checks)
            if c.check in _MASKED or (c.check == "unique" and c.action == "quarantine")
        ]
        self.unique_fail = [(i, c) for i, c in enumerate(self.checks) if c.check == "unique" and c.action == "fail"]
        self.quarantines = any(c.action == "quarantine" for c in self.checks)

    @property
    def needs_prepass(self) -> bool:
        return any(c.check == "unique" and c.action == "quarantine" for c in self.checks)

    def prepass(self, compute: Callable[..., tuple]) -> None:
        """Find the keys of quarantining ``unique`` checks (one computation; nothing else needs it)."""
        wanted = [(i, c) for i, c in self.masked if c.check == "unique"]
        if not wanted:
            return
        found = compute(*(_duplicated(self.source.frame, c.columns) for _, c in wanted))
        self.duplicated = {i: dups.index for (i, _), dups in zip(wanted, found)}
        self.prepasses = 1

    def apply(self, frame):
        """The rows to train on: ``frame`` without quarantined rows (``frame`` itself without checks)."""
        if not self.masked:
            return frame
        marker = _Marker(tuple(self.masked), dict(self.duplicated))
        self._marked = frame.map_partitions(marker, meta=marker(frame._meta))
        clean = self._marked[self._marked[_CODE] < 0] if self.quarantines else self._marked
        return clean.drop(columns=self._internal_columns())

    def _internal_columns(self) -> list[str]:
        return [_flag(i) for i, _ in self.masked] + [_CODE]

    def lazy_values(self) -> dict[str, Any]:
        """Everything the checks need, lazily, to compute in the fit pass's single ``compute``."""
        values: dict[str, Any] = {}
        raw = self.source.frame
        if self._marked is not None:
            marked = self._marked
            values["quality.violations"] = marked[[_flag(i) for i, _ in self.masked]].sum()
            failing = tuple((i, c) for i, c in self.masked if c.action == "fail")
            if failing:
                sampler = _Sampler(failing, self.files)
                values["quality.samples"] = marked.map_partitions(
                    sampler, partition_info=True, meta=_samples_frame([]), enforce_metadata=False
                )
            if self.quarantines:
                values["quality.quarantined"] = marked[_CODE].value_counts()
                writer = _Quarantined(tuple(c.name for c in self.checks), self.files, tuple(self._internal_columns()))
                bad = marked[marked[_CODE] >= 0]
                bad = bad.map_partitions(writer, partition_info=True, meta=writer(bad._meta))
                values["quality.write"] = parquet_task(bad, self.out, QUARANTINE_DIR)
        for i, c in self.unique_fail:
            dups = _duplicated(raw, c.columns)
            values[f"quality.{i}.rows"] = dups.sum()
            values[f"quality.{i}.keys"] = dups.size
            values[f"quality.{i}.top"] = dups.nlargest(_SAMPLES)
        for i, c in enumerate(self.checks):
            if c.check == "null_fraction":
                values[f"quality.{i}.nulls"] = raw[c.column].isna().sum()
        return values

    def finish(self, values: dict[str, Any], *, rows_read: int, log: Callable[[str], None] = lambda m: None) -> dict:
        """The manifest's ``quality`` section; raises :class:`DataError` naming every failed check.

        Each check reports ``violations``: offending rows for row checks (every row of a
        duplicated key for ``unique``), missing values for ``null_fraction``, and 0 or 1 for
        ``row_count``.
        """
        violated = values.get("quality.violations")
        codes = values.get("quality.quarantined")
        codes = {int(k): int(v) for k, v in codes.items()} if codes is not None else {}
        samples = values.get("quality.samples")
        results, problems = [], []
        for i, c in enumerate(self.checks):
            entry: dict[str, Any] = {"name": c.name, "check": c.check, "action": c.action}
            detail = ""
            if c.check in _MASKED or (c.check == "unique" and c.action == "quarantine"):
                n = int(violated[_flag(i)])
                if c.action == "quarantine":
                    entry["quarantined"] = codes.get(i, 0)
                elif n and samples is not None:
                    shown = samples[samples["check"] == i].head(_SAMPLES)
                    detail = "; e.g. " + ", ".join(f"{v} ({f})" for v, f in zip(shown["value"], shown["file"]))
            elif c.check == "unique":
                n = int(values[f"quality.{i}.rows"])
                keys = int(values[f"quality.{i}.keys"])
                top = values[f"quality.{i}.top"]
                if n:
                    shown = ", ".join(f"{_key_text(c.columns, k)} ({int(v)} rows)" for k, v in top.items())
                    detail = f" ({keys} duplicated key(s); e.g. {shown})"
            elif c.check == "null_fraction":
                nulls = int(values[f"quality.{i}.nulls"])
                fraction = nulls / rows_read if rows_read else 0.0
                entry["value"] = round(fraction, 6)
                n = nulls
                if fraction > c.max:
                    problems.append(
                        f"checks[{i}] `{c.name}`: {nulls} of {rows_read} rows ({fraction:.2%}) lack {c.column!r};"
                        f" at most {c.max:.2%} allowed"
                    )
                entry["violations"] = n
                results.append(entry)
                continue
            else:  # row_count
                entry["value"] = rows_read
                low = c.min is not None and rows_read < c.min
                high = c.max is not None and rows_read > c.max
                n = int(low or high)
                if n:
                    expected = f"at least {c.min}" if low else f"at most {c.max}"
                    problems.append(f"checks[{i}] `{c.name}`: {rows_read} rows read; expected {expected}")
                entry["violations"] = n
                results.append(entry)
                continue
            entry["violations"] = n
            results.append(entry)
            if n and c.action == "fail":
                what = "share a duplicated key" if c.check == "unique" else "violate it"
                problems.append(f"checks[{i}] `{c.name}`: {n} of {rows_read} rows {what}{detail}")
        quarantined = sum(v for k, v in codes.items() if k >= 0)
        limit = self._limit_problem(quarantined, rows_read, results)
        if limit:
            problems.append(limit)
        bad_files = self.bad_files.records() if self.bad_files is not None else []
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
            "bad_files": bad_files,
            "prepasses": self.prepasses,
        }

    def _limit_problem(self, quarantined: int, rows_read: int, results: list[dict]) -> str | None:
        q = self.job.quarantine
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


def _key_text(columns, key) -> str:
    values = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c}={_plain(v)!r}" for c, v in zip(columns, values))
