"""Where data comes from: the ``source`` of a job, and the tables that joins read."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.base import Strict

FILTER_OPS = ("==", "=", "!=", "<", "<=", ">", ">=", "in", "not in")

Filter = tuple[str, str, Any]


def _check_filter(f: Filter) -> Filter:
    column, op, value = f
    if op not in FILTER_OPS:
        raise ValueError(f"filter on {column!r}: operator {op!r} is not one of {list(FILTER_OPS)}")
    if op in ("in", "not in") and not isinstance(value, (list, tuple)):
        raise ValueError(f"filter on {column!r}: operator {op!r} needs a list value")
    return f


class SourceSpec(Strict):
    """Where the data is and how to read it.

    ``filters`` are ``[column, op, value]`` triples ANDed together, or a list of such lists ORed
    (pyarrow's disjunctive normal form). Filters on Hive partition columns prune whole files
    before anything is read; others skip row groups by their statistics and then filter rows.
    """

    uri: str = Field(min_length=1)
    format: Literal["parquet", "csv", "json"] | None = None
    columns: list[str] | None = None
    filters: list[Filter] | list[list[Filter]] | None = None
    partitioning: Literal["hive", "none"] = "hive"
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, filters):
        if filters is None:
            return None
        if not filters:
            raise ValueError("`filters` is empty; leave it out to read everything")
        for item in filters:
            for f in item if isinstance(item, list) else [item]:
                _check_filter(f)
        return filters

    @model_validator(mode="after")
    def _infer_format(self):
        if self.format is None:
            path = self.uri.rstrip("/").lower()
            for suffix, fmt in ((".csv", "csv"), (".jsonl", "json"), (".json", "json")):
                if path.endswith(suffix) or path.endswith(suffix + ".gz"):
                    self.format = fmt
                    break
            else:
                self.format = "parquet"
        return self
