"""Where data comes from: the ``source`` of a job, and the tables that joins read.

A source entry is one of the kinds of :data:`dpipe.spec.connectors.KNOWN_SOURCES`, chosen by
``format`` (or, without one, by the ``uri`` suffix); each kind has a strict model here (or in its
connector's module). Parquet, CSV and JSON lines share their keys (:class:`FileSourceSpec`); later
kinds extend :class:`BaseSourceSpec` with their own (a table ``version``, a ``query``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_serializer

from dpipe.spec.base import Strict
from dpipe.spec.connectors import BaseSinkSpec, ConnectorSpec, Role, validate_entry

FILTER_OPS = ("==", "=", "!=", "<", "<=", ">", ">=", "in", "not in")

Filter = tuple[str, str, Any]


def _check_filter(f: Filter) -> Filter:
    column, op, value = f
    if op not in FILTER_OPS:
        raise ValueError(f"filter on {column!r}: operator {op!r} is not one of {list(FILTER_OPS)}")
    if op in ("in", "not in") and not isinstance(value, (list, tuple)):
        raise ValueError(f"filter on {column!r}: operator {op!r} needs a list value")
    return f


class BaseSourceSpec(Strict):
    """The keys every source kind has. A connector's own spec model subclasses it.

    ``format`` is set to the kind's name (or import path) when the entry is validated; a
    connector's model leaves it as it is here.
    """

    uri: str = Field(min_length=1)
    format: str
    columns: list[str] | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _storage_options_last(self, handler: Any) -> Any:
        # Saved specs (pipeline.json, the manifest) keep the key order of dpipe 0.1, whatever
        # keys a kind adds: its own keys, then storage_options.
        data = handler(self)
        if isinstance(data, dict) and "storage_options" in data:
            data["storage_options"] = data.pop("storage_options")
        return data


class FileSourceSpec(BaseSourceSpec):
    """Files read through ``pyarrow.dataset``: a file, a folder (read recursively) or a glob.

    ``filters`` are ``[column, op, value]`` triples ANDed together, or a list of such lists ORed
    (pyarrow's disjunctive normal form). Filters on Hive partition columns prune whole files
    before anything is read; others skip row groups by their statistics and then filter rows.
    """

    filters: list[Filter] | list[list[Filter]] | None = None
    partitioning: Literal["hive", "none"] = "hive"

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


class ParquetSourceSpec(FileSourceSpec):
    """Parquet files, with Hive ``key=value`` folders as partition columns."""

    format: Literal["parquet"] = "parquet"


class CSVSourceSpec(FileSourceSpec):
    """CSV files with a header row; every file is read with the types inferred from the first."""

    format: Literal["csv"] = "csv"


class JSONSourceSpec(FileSourceSpec):
    """JSON lines (one object per line); every file is read with the types inferred from the first."""

    format: Literal["json"] = "json"


#: A ``source:`` entry: the model of the kind its ``format`` (or its ``uri`` suffix) names.
SourceSpec = Annotated[BaseSourceSpec, ConnectorSpec("source")]


def source_spec(data: Mapping[str, Any] | BaseSourceSpec, *, where: str = "source") -> BaseSourceSpec:
    """Validate one source entry given as a dict (``format`` may be left out).

    Raises :class:`SpecError` listing every problem, located under ``where``.

    Examples
    --------
    >>> source_spec({"uri": "data/scores.csv"}).format
    'csv'
    """
    return _validated("source", data, where)


def sink_spec(data: Mapping[str, Any] | BaseSinkSpec, *, where: str = "output") -> BaseSinkSpec:
    """Validate one sink entry given as a dict (``format`` defaults to ``parquet``); see :func:`source_spec`."""
    return _validated("sink", data, where)


def _validated(role: Role, data: Any, where: str):
    from dpipe.spec.load import format_loc, problems_error  # load imports the models, which import this module

    try:
        return validate_entry(role, data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = format_loc(tuple(err["loc"]))
            msg = "required but missing" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
            problems.append((where if loc == "<root>" else f"{where}.{loc}", msg))
        # Never chained: the ValidationError echoes the entry's values (storage_options).
        raise problems_error(f"{where}: invalid {role}", problems, hint="fix the fields named above") from None
