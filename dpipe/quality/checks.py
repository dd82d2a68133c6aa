"""One class per check kind, looked up by the ``check`` name of its spec entry.

A check is built from its spec model (:mod:`dpipe.spec.quality`) and its index in ``checks``, and:

* ``type_problem(meta)`` says why the source's column types do not suit it (planning, no data);
* row checks (``per_row``) give ``mask(pdf)``, the rows of one pandas partition that violate them,
  a pure function the gate runs on workers, and ``sample(pdf, bad)``, offending values as text;
* ``measure(frame)`` returns the lazy Dask values it needs beyond the row mask (duplicated keys,
  null counts), computed in the fit pass with everything else;
* ``evaluate(measured)`` turns the computed values into its manifest entry and, when it fails,
  the problem to report: a pure function of a :class:`Measured`.

The gate (:mod:`dpipe.quality.gate`) batches what row checks share (one pass adds every flag, one
sum counts them) and never switches on a check's kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from dpipe.errors import StateError

#: Offending values (or duplicated keys) shown per failed check.
SAMPLES = 3


@dataclass(frozen=True)
class Measured:
    """What the fit pass measured for one check: the input of :meth:`Check.evaluate`.

    ``values`` are the check's own :meth:`~Check.measure` results, computed; ``violations``,
    ``quarantined`` and ``samples`` come from the row mask the gate evaluates for ``per_row``
    checks (``samples``: ``(offending values, file)`` pairs, for failing checks only).
    """

    rows_read: int
    values: Mapping[str, Any] = field(default_factory=dict)
    violations: int = 0
    quarantined: int = 0
    samples: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class Outcome:
    """A check's manifest entry and, when it failed, the problem to report."""

    entry: dict[str, Any]
    problem: str | None = None


class Check:
    """Base class of check kinds. Subclasses set ``kind`` (the spec's ``check``) and override."""

    kind: ClassVar[str]

    def __init__(self, spec, index: int):
        self.spec = spec
        self.index = index

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where}, {self.name!r})"

    def __dask_tokenize__(self):
        # Equal checks give equal graph keys, so the same rows checked twice are computed once.
        return ("dpipe-check", self.kind, self.index, self.spec.model_dump_json())

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def action(self) -> str:
        return self.spec.action

    @property
    def where(self) -> str:
        return f"checks[{self.index}]"

    @property
    def columns(self) -> list[str]:
        """The source columns the check reads."""
        return self.spec.columns_read

    @property
    def per_row(self) -> bool:
        """Whether the gate evaluates it row by row (a violation flag per row)."""
        return False

    @property
    def needs_prepass(self) -> bool:
        """Whether its row mask needs values measured in a pass of their own first."""
        return False

    def prepass(self, frame) -> Any:
        """Lazy: what the row mask needs measured first, in a pass of its own (``needs_prepass``)."""
        raise StateError(f"{self.where} ({self.name}) needs no pre-pass")

    def type_problem(self, meta: pd.DataFrame) -> str | None:
        """Why the (empty) source frame's column types do not suit the check, if they do not."""
        return None

    def measure(self, frame) -> dict[str, Any]:
        """Lazy values over the Dask frame as read, beyond the row mask (none by default)."""
        return {}

    def evaluate(self, measured: Measured) -> Outcome:  # pragma: no cover - every kind overrides it
        raise NotImplementedError

    def _entry(self, **more: Any) -> dict[str, Any]:
        return {"name": self.name, "check": self.kind, "action": self.action, **more}

    def _problem(self, text: str) -> str:
        return f"{self.where} `{self.name}`: {text}"


class RowCheck(Check):
    """A check of each row on its own; missing values pass all but ``not_null``."""

    @property
    def per_row(self) -> bool:
        return True

    def mask(self, pdf: pd.DataFrame, duplicated: pd.Index | None = None) -> np.ndarray:
        """Which rows of ``pdf`` violate the check (``duplicated``: a ``unique`` check's keys)."""
        s = pdf[self.spec.column]
        return s.notna().to_numpy(dtype=bool) & self._bad(s)

    def _bad(self, s: pd.Series) -> np.ndarray:  # pragma: no cover - every column check overrides it
        raise NotImplementedError

    def sample(self, pdf: pd.DataFrame, bad: np.ndarray) -> list[str]:
        """The first few offending rows of one partition, as ``column=value`` text."""
        hits = pdf.loc[bad, self.columns].head(SAMPLES)
        return [", ".join(f"{c}={plain(v)!r}" for c, v in row.items()) for _, row in hits.iterrows()]

    def evaluate(self, measured: Measured) -> Outcome:
        n = measured.violations
        if self.action == "quarantine":
            return Outcome(self._entry(quarantined=measured.quarantined, violations=n))
        entry = self._entry(violations=n)
        if not n:
            return Outcome(entry)
        shown = measured.samples[:SAMPLES]
        detail = "; e.g. " + ", ".join(f"{v} ({f})" for v, f in shown) if shown else ""
        return Outcome(entry, self._problem(f"{n} of {measured.rows_read} rows violate it{detail}"))


class NotNull(RowCheck):
    """Every listed column has a value."""

    kind = "not_null"

    def mask(self, pdf: pd.DataFrame, duplicated: pd.Index | None = None) -> np.ndarray:
        return pdf[list(self.spec.columns)].isna().any(axis=1).to_numpy(dtype=bool)


class Range(RowCheck):
    """``min <= value <= max``, numbers against numbers, text or dates against text."""

    kind = "range"

    def type_problem(self, meta: pd.DataFrame) -> str | None:
        column = self.spec.column
        dtype = meta[column].dtype
        bounds = [b for b in (self.spec.min, self.spec.max) if b is not None]
        if isinstance(bounds[0], str):
            if not (pd.api.types.is_string_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)):
                return f"text bounds {bounds} need a text or date column; {column!r} is {dtype}"
        elif not (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
            return f"numeric bounds {bounds} need a numeric column; {column!r} is {dtype}"
        return None

    def _bad(self, s: pd.Series) -> np.ndarray:
        bad = np.zeros(len(s), dtype=bool)
        if self.spec.min is not None:
            bad |= _true(s < self.spec.min)
        if self.spec.max is not None:
            bad |= _true(s > self.spec.max)
        return bad


class AllowedValues(RowCheck):
    """The value is one of ``values``."""

    kind = "allowed_values"

    def _bad(self, s: pd.Series) -> np.ndarray:
        return ~_true(s.isin(self.spec.values))


class Regex(RowCheck):
    """The whole text value matches ``pattern``."""

    kind = "regex"

    def type_problem(self, meta: pd.DataFrame) -> str | None:
        dtype = meta[self.spec.column].dtype
        if not pd.api.types.is_string_dtype(dtype):
            return f"a regex needs a text column; {self.spec.column!r} is {dtype}"
        return None

    def _bad(self, s: pd.Series) -> np.ndarray:
        # Python's `re`, the syntax the spec validated (pyarrow's RE2 accepts less).
        return ~_true(s.astype("string[python]").str.fullmatch(self.spec.pattern))


class Unique(RowCheck):
    """No two rows share a key. Failing, it counts duplicates with a groupby (no row mask);
    quarantining, it flags every row of a key the pre-pass found duplicated."""

    kind = "unique"

    @property
    def per_row(self) -> bool:
        return self.action == "quarantine"

    @property
    def needs_prepass(self) -> bool:
        return self.per_row

    def duplicated(self, frame):
        """Lazy: each key value that more than one row has, with its row count (a tree reduction)."""
        key = list(self.spec.columns)
        sizes = frame[key].groupby(key).size()
        return sizes[sizes > 1]

    def prepass(self, frame):
        """Lazy: the duplicated keys, an index the row mask takes as ``duplicated``."""
        return self.duplicated(frame).index

    def mask(self, pdf: pd.DataFrame, duplicated: pd.Index | None = None) -> np.ndarray:
        if duplicated is None:
            raise StateError(f"{self.where} ({self.name}): the duplicated keys come from the pre-pass; none given")
        key = pdf[list(self.spec.columns)]
        present = key.notna().all(axis=1).to_numpy(dtype=bool)
        index = pd.MultiIndex.from_frame(key) if key.shape[1] > 1 else pd.Index(key.iloc[:, 0])
        return present & index.isin(duplicated).astype(bool)

    def measure(self, frame) -> dict[str, Any]:
        if self.per_row:
            return {}
        dups = self.duplicated(frame)
        return {"rows": dups.sum(), "keys": dups.size, "top": dups.nlargest(SAMPLES)}

    def evaluate(self, measured: Measured) -> Outcome:
        if self.per_row:
            return super().evaluate(measured)
        n = int(measured.values["rows"])
        entry = self._entry(violations=n)
        if not n:
            return Outcome(entry)
        keys = int(measured.values["keys"])
        shown = ", ".join(
            f"{_key_text(self.spec.columns, k)} ({int(v)} rows)" for k, v in measured.values["top"].items()
        )
        return Outcome(
            entry,
            self._problem(
                f"{n} of {measured.rows_read} rows share a duplicated key ({keys} duplicated key(s); e.g. {shown})"
            ),
        )


class RowCount(Check):
    """The number of rows read is within ``[min, max]``; reports 0 or 1 violation."""

    kind = "row_count"

    def evaluate(self, measured: Measured) -> Outcome:
        rows, lo, hi = measured.rows_read, self.spec.min, self.spec.max
        low, high = lo is not None and rows < lo, hi is not None and rows > hi
        entry = self._entry(value=rows, violations=int(low or high))
        if not (low or high):
            return Outcome(entry)
        expected = f"at least {lo}" if low else f"at most {hi}"
        return Outcome(entry, self._problem(f"{rows} rows read; expected {expected}"))


class NullFraction(Check):
    """At most a fraction ``max`` of the rows read lack ``column``; reports the missing values."""

    kind = "null_fraction"

    def measure(self, frame) -> dict[str, Any]:
        return {"nulls": frame[self.spec.column].isna().sum()}

    def evaluate(self, measured: Measured) -> Outcome:
        nulls, rows = int(measured.values["nulls"]), measured.rows_read
        fraction = nulls / rows if rows else 0.0
        entry = self._entry(value=round(fraction, 6), violations=nulls)
        if fraction <= self.spec.max:
            return Outcome(entry)
        return Outcome(
            entry,
            self._problem(
                f"{nulls} of {rows} rows ({fraction:.2%}) lack {self.spec.column!r}; at most {self.spec.max:.2%} allowed"
            ),
        )


_CHECKS = (NotNull, Range, AllowedValues, Regex, Unique, RowCount, NullFraction)

#: check name (the spec's ``check``) -> implementation.
REGISTRY: dict[str, type[Check]] = {cls.kind: cls for cls in _CHECKS}


def build_check(spec, index: int = 0) -> Check:
    """The check for one validated ``checks[index]`` spec entry."""
    return REGISTRY[spec.check](spec, index)


def _true(values) -> np.ndarray:
    """A boolean mask with missing results (comparisons with NA) as False."""
    return pd.Series(values).to_numpy(dtype=bool, na_value=False)


def plain(value: Any) -> Any:
    """A value as Python shows it in messages: ``None`` for missing, no NumPy scalar types."""
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _key_text(columns, key) -> str:
    values = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c}={plain(v)!r}" for c, v in zip(columns, values))
