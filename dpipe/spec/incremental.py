"""The ``incremental:`` section: process only the datums that are new since the last committed run.

``incremental: true`` is ``{enabled: true}``. A training job keeps its run state in its bundle
(``state.json``); a features job beside its output, or at ``state.uri``.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str, where: str) -> dt.timedelta:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` as a timedelta."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"{where}: {text!r} is not a duration; write a positive number and a unit, e.g. 90d, 12h, 30m")
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class StateSpec(Strict):
    """Where a features job keeps its run state (a folder, local or any fsspec URL)."""

    uri: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class IncrementalSpec(Strict):
    """New-data-only runs of a features job.

    ``on_change`` says what a datum that changed or disappeared since it was processed does:
    ``refit`` (start over from all the data, replacing the output) or ``fail`` (stop, naming it).
    """

    enabled: bool = True
    on_change: Literal["refit", "fail"] = "refit"
    state: StateSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("state", mode="before")
    @classmethod
    def _uri_alone(cls, value: Any) -> Any:
        return {"uri": value} if isinstance(value, str) else value


class TrainIncrementalSpec(IncrementalSpec):
    """New-data-only runs of a training job: statistics are refitted by merging the saved partial
    statistics with the new datums' (old data is not read for them), then the model is retrained:

    - ``retrain: all`` (default): on every datum's rows;
    - ``retrain: window`` with ``last: 90d`` (datums first processed in the last 90 days) or
      ``last: 3`` (the last 3 datums, by when they were first processed);
    - ``retrain: continue``: the previous booster grows ``train.num_boost_round`` more rounds on
      the new rows only (XGBoost's ``xgb_model``).
    """

    retrain: Literal["all", "window", "continue"] = "all"
    last: str | int | None = None

    @field_validator("last")
    @classmethod
    def _last(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, bool):
            raise ValueError("`last` is a number of datums or a duration such as 90d")
        if isinstance(value, int) and value < 1:
            raise ValueError("`last` must be at least 1 datum")
        if isinstance(value, str):
            parse_duration(value, "last")
        return value

    @model_validator(mode="after")
    def _window(self) -> TrainIncrementalSpec:
        if self.retrain == "window" and self.last is None:
            raise ValueError("`retrain: window` needs `last`: a number of datums (3) or a duration (90d)")
        if self.retrain != "window" and self.last is not None:
            raise ValueError(f"`last` is for `retrain: window`; this job retrains on {self.retrain!r}")
        if self.state is not None:
            raise ValueError("a training job keeps its run state in its bundle: leave `state` out")
        return self

    def window(self) -> dt.timedelta | int | None:
        """``last`` as a timedelta or a number of datums."""
        if isinstance(self.last, str):
            return parse_duration(self.last, "incremental.last")
        return self.last
