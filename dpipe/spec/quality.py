"""Data-quality checks and the quarantine policy of a job spec.

Row checks look at one row at a time (``not_null``, ``range``, ``allowed_values``, ``regex``) or at
rows sharing a key (``unique``). Each either fails the run (``action: fail``, the default) or
moves the offending rows out of the training data into the run's ``quarantine/`` folder
(``action: quarantine``). Dataset checks (``row_count``, ``null_fraction``) can only fail.

``range``, ``allowed_values`` and ``regex`` ignore missing values: saying a value must be present
is ``not_null``'s job. ``unique`` ignores rows whose key has a missing part. A row that violates
several quarantine checks is quarantined once, under the first of them in spec order.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict

Action = Literal["fail", "quarantine"]
Bound = int | float | str | None


def _iso(value: Any) -> Any:
    # YAML reads 2024-03-01 as a date; the columns dpipe reads hold dates as text or timestamps.
    return value.isoformat() if isinstance(value, (_dt.date, _dt.datetime)) else value


class _Check(Strict):
    name: str | None = Field(default=None, min_length=1)

    @property
    def columns_read(self) -> list[str]:  # pragma: no cover - every check overrides it
        raise NotImplementedError

    def default_name(self) -> str:
        columns = self.columns_read
        kind = self.check  # type: ignore[attr-defined]  # every concrete check declares it
        return f"{kind}({','.join(columns)})" if columns else kind

    @model_validator(mode="after")
    def _name(self):
        if self.name is None:
            self.name = self.default_name()
        return self


class _RowCheck(_Check):
    action: Action = "fail"


class _DatasetCheck(_Check):
    action: Literal["fail"] = "fail"

    @field_validator("action", mode="before")
    @classmethod
    def _fail_only(cls, action):
        if action != "fail":
            raise ValueError(
                f"a dataset check can only `fail` (got {action!r}); only row checks {list(ROW_CHECKS)} quarantine rows"
            )
        return action


class NotNullCheck(_RowCheck):
    """Every listed column has a value."""

    check: Literal["not_null"]
    columns: list[str] = Field(min_length=1)

    @property
    def columns_read(self) -> list[str]:
        return list(self.columns)


class RangeCheck(_RowCheck):
    """``min <= value <= max`` (both inclusive, either optional); missing values pass."""

    check: Literal["range"]
    column: str = Field(min_length=1)
    min: Bound = None
    max: Bound = None

    @property
    def columns_read(self) -> list[str]:
        return [self.column]

    @field_validator("min", "max", mode="before")
    @classmethod
    def _dates(cls, value):
        return _iso(value)

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError("give `min`, `max` or both")
        if self.min is not None and self.max is not None:
            if isinstance(self.min, str) != isinstance(self.max, str):
                raise ValueError(
                    f"`min` and `max` must both be numbers or both be text (got {self.min!r}, {self.max!r})"
                )
            if self.min > self.max:  # type: ignore[operator]  # both numbers or both text, checked above
                raise ValueError(f"`min` ({self.min!r}) is greater than `max` ({self.max!r})")
        return self


class AllowedValuesCheck(_RowCheck):
    """The value is one of ``values``; missing values pass."""

    check: Literal["allowed_values"]
    column: str = Field(min_length=1)
    values: list[Any] = Field(min_length=1)

    @property
    def columns_read(self) -> list[str]:
        return [self.column]

    @field_validator("values")
    @classmethod
    def _dates(cls, values):
        return [_iso(v) for v in values]


class RegexCheck(_RowCheck):
    """The whole text value matches ``pattern`` (Python ``re`` syntax); missing values pass."""

    check: Literal["regex"]
    column: str = Field(min_length=1)
    pattern: str = Field(min_length=1)

    @property
    def columns_read(self) -> list[str]:
        return [self.column]

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return pattern


class UniqueCheck(_RowCheck):
    """No two rows share a value of ``columns`` (rows whose key has a missing part are ignored).

    With ``action: quarantine`` every row of a duplicated key is quarantined, which needs the
    duplicated keys before the main pass: one extra pass over the key columns.
    """

    check: Literal["unique"]
    columns: list[str] = Field(min_length=1)

    @property
    def columns_read(self) -> list[str]:
        return list(self.columns)


class RowCountCheck(_DatasetCheck):
    """The number of rows read (after ``source.filters``) is within ``[min, max]``."""

    check: Literal["row_count"]
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @property
    def columns_read(self) -> list[str]:
        return []

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError("give `min`, `max` or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"`min` ({self.min}) is greater than `max` ({self.max})")
        return self


class NullFractionCheck(_DatasetCheck):
    """At most a fraction ``max`` of the rows read lack a value in ``column``."""

    check: Literal["null_fraction"]
    column: str = Field(min_length=1)
    max: float = Field(ge=0.0, le=1.0)

    @property
    def columns_read(self) -> list[str]:
        return [self.column]


CHECK_MODELS = {
    m.model_fields["check"].annotation.__args__[0]: m  # type: ignore[union-attr]
    for m in (
        NotNullCheck,
        RangeCheck,
        AllowedValuesCheck,
        RegexCheck,
        UniqueCheck,
        RowCountCheck,
        NullFractionCheck,
    )
}
CHECK_NAMES = tuple(CHECK_MODELS)
ROW_CHECKS = ("not_null", "range", "allowed_values", "regex", "unique")

CheckSpec = Annotated[
    NotNullCheck | RangeCheck | AllowedValuesCheck | RegexCheck | UniqueCheck | RowCountCheck | NullFractionCheck,
    Field(discriminator="check"),
]


class QuarantineSpec(Strict):
    """What happens to rows and files that fail: limits, and whether unreadable files are skipped.

    The run fails when the quarantined rows exceed ``max_fraction`` of the rows read or
    ``max_rows`` (each limit applies when set). With ``bad_files: skip`` an input file that cannot
    be read (corrupt, malformed rows, a column of another type) is left out and listed in the
    manifest; with ``fail`` it fails the run, as it does without a ``quarantine`` section.
    """

    max_fraction: float | None = Field(default=0.01, ge=0.0, le=1.0)
    max_rows: int | None = Field(default=None, ge=0)
    bad_files: Literal["skip", "fail"] = "skip"
    #: Where quarantined rows and skipped-file records go: a training job keeps them in its bundle
    #: (leave it out); a features job, which has no bundle, needs it.
    uri: str | None = Field(default=None, min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    #: What ``dpipe predict`` does with scoring rows a quarantining row check would have set aside:
    #: ``flag`` scores them and names the check in a ``quarantined_by`` column, ``set_aside`` leaves
    #: them out of the predictions, ``ignore`` scores them as any other row.
    at_prediction: Literal["flag", "set_aside", "ignore"] = "flag"


def check_names_unique(checks: list) -> list:
    """Check names identify checks in messages, the manifest and the quarantined rows."""
    seen: dict[str, int] = {}
    for i, c in enumerate(checks):
        if c.name in seen:
            raise ValueError(
                f"checks[{i}] is named {c.name!r} like checks[{seen[c.name]}]; give one of them another `name`"
            )
        seen[c.name] = i
    return checks
