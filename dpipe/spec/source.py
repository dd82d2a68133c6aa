"""Where data comes from: the ``source`` of a job, and the tables that joins read.

A source entry is one of the kinds of :data:`dpipe.spec.connectors.KNOWN_SOURCES`, chosen by
``format`` (or, without one, by the ``uri`` suffix); each kind has a strict model here (or in its
connector's module). Parquet, CSV and JSON lines share their keys (:class:`FileSourceSpec`); later
kinds extend :class:`BaseSourceSpec` with their own (a table ``version``, a ``query``).
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, ValidationError, field_validator, model_serializer

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


def check_filters(filters: Any) -> Any:
    """``[column, op, value]`` triples (AND), or a list of such lists (OR of ANDs); never empty."""
    if filters is None:
        return None
    if not filters:
        raise ValueError("`filters` is empty; leave it out to read everything")
    for item in filters:
        for f in item if isinstance(item, list) else [item]:
            _check_filter(f)
    return filters


#: The ``filters`` key of every kind that takes one (files, tables, queries): one syntax everywhere.
Filters = Annotated[list[Filter] | list[list[Filter]] | None, AfterValidator(check_filters)]


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


#: Column type names a file source's ``schema:`` accepts (pyarrow's names). ``float`` and ``int``
#: are left out on purpose: pyarrow reads ``float`` as float32, where pandas and numpy mean float64.
SIMPLE_TYPES = (
    "null", "bool", "boolean",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "halffloat", "float32", "float64", "double",
    "string", "str", "utf8", "large_string", "large_utf8", "binary", "large_binary",
    "date32", "date64", "date32[day]", "date64[ms]",
)  # fmt: skip
#: Parameterised types: the name, the pattern of its parameters, and the units each accepts.
_UNIT = r"\s*(?P<unit>s|ms|us|ns)\s*"
PARAMETRIC_TYPES = {
    "timestamp": re.compile(rf"timestamp\[{_UNIT}(?:,\s*tz\s*=\s*(?P<tz>[^\]]+?)\s*)?\]"),
    "duration": re.compile(rf"duration\[{_UNIT}\]"),
    "time32": re.compile(r"time32\[\s*(?P<unit>s|ms)\s*\]"),
    "time64": re.compile(r"time64\[\s*(?P<unit>us|ns)\s*\]"),
    "decimal128": re.compile(r"decimal128\(\s*(?P<precision>\d+)\s*,\s*(?P<scale>-?\d+)\s*\)"),
    "decimal256": re.compile(r"decimal256\(\s*(?P<precision>\d+)\s*,\s*(?P<scale>-?\d+)\s*\)"),
}
#: Names of other libraries, and what they mean in pyarrow's.
_MEANT = {"int": "int64", "integer": "int64", "float": "float64", "date": "date32", "datetime": "timestamp[ns]"}
_EXAMPLES = "int64, float64, string, bool, date32, timestamp[ns], timestamp[us, tz=UTC], decimal128(12, 2)"
_SIZE = re.compile(r"^\s*(?P<n>\d+(?:\.\d*)?)\s*(?P<unit>[kmgt]i?)?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_type_name(name: str) -> tuple[str, dict[str, Any]]:
    """``"timestamp[us, tz=UTC]"`` -> ``("timestamp", {"unit": "us", "tz": "UTC"})``; ``"int64"`` -> ``("int64", {})``.

    Only names are checked here (the spec layer imports no pyarrow); :mod:`dpipe.io.schema` turns
    the result into an Arrow type. Raises ``ValueError`` with the accepted names.
    """
    text = name.strip()
    if text.lower() in SIMPLE_TYPES:
        return text.lower(), {}
    for kind, pattern in PARAMETRIC_TYPES.items():
        match = pattern.fullmatch(text)
        if match:
            params = {k: v for k, v in match.groupdict().items() if v is not None}
            if "tz" in params:
                _check_timezone(params["tz"])
            return kind, {k: int(v) if k in ("precision", "scale") else v for k, v in params.items()}
    close = _MEANT.get(text.lower()) or next(
        iter(difflib.get_close_matches(text.lower(), [*SIMPLE_TYPES, *PARAMETRIC_TYPES], n=1)), None
    )
    hint = f" (did you mean {close!r}?)" if close else ""
    raise ValueError(f"unknown column type {name!r}; use a pyarrow type name such as {_EXAMPLES}{hint}")


def _check_timezone(tz: str) -> None:
    if re.fullmatch(r"[+-]\d\d:\d\d", tz):
        return
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r}; use an IANA name (UTC, Europe/Paris) or an offset (+01:00)"
        ) from exc


def parse_size(value: int | str) -> int:
    """Bytes from ``"256MiB"`` (powers of 2), ``"64MB"`` (powers of 10) or a number of bytes.

    Examples
    --------
    >>> parse_size("128MiB"), parse_size("1.5kB"), parse_size(4096)
    (134217728, 1500, 4096)
    """
    if isinstance(value, bool):
        raise ValueError(f"a size is a number of bytes or a string such as '256MiB' (got {value!r})")
    if isinstance(value, int):
        n = value
    else:
        match = _SIZE.fullmatch(str(value))
        if match is None:
            raise ValueError(f"a size is a number of bytes or a string such as '256MiB' or '64MB' (got {value!r})")
        n = int(float(match["n"]) * _SIZE_UNITS[(match["unit"] or "").lower()])
    if n <= 0:
        raise ValueError(f"a size must be positive (got {value!r})")
    return n


def _check_type_name(name: str) -> str:
    parse_type_name(name)
    return name.strip()


TypeName = Annotated[str, AfterValidator(_check_type_name)]


class FileSourceSpec(BaseSourceSpec):
    """Files read through ``pyarrow.dataset``: a file, a folder (read recursively) or a glob.

    ``filters`` are ``[column, op, value]`` triples ANDed together, or a list of such lists ORed
    (pyarrow's disjunctive normal form). Filters on Hive partition columns prune whole files
    before anything is read; others skip row groups by their statistics and then filter rows.

    The files' schemas are unified: a column that only some files have is read as missing
    (null) in the others, and types widen (int32 and int64 to int64, int and float to float64).
    Columns of types that do not widen into one another (string in one file, int64 in another)
    are an error naming both files.

    ``schema`` (``{column: type}``, pyarrow type names: ``int64``, ``float64``, ``string``,
    ``bool``, ``date32``, ``timestamp[ns]``, ``timestamp[us, tz=UTC]``, ``decimal128(12, 2)``)
    gives the types of the columns it names, in every file, in place of what is inferred; the
    other columns are still inferred. A Hive partition column may be named too.

    ``partition_size`` (bytes, or ``"256MiB"``/``"64MB"``; ``null`` for one partition per file)
    splits larger files into several Dask partitions: a Parquet file by runs of whole row groups,
    an uncompressed CSV or JSON-lines file by byte ranges cut at line ends. Partition labels
    (``OpenedSource.files``) then name the part: ``<uri>#rg=0-3`` (row groups 0 to 3) or
    ``<uri>#bytes=0-268435456``. CSV values must not contain line breaks in a file that is split.
    Smaller files are combined: past the quality checks (which name each set-aside row's file),
    consecutive partitions are concatenated into pieces of up to ``partition_size`` bytes on
    storage, at least 32 of them (:mod:`dpipe.io.combine`); ``null`` neither splits nor combines.
    """

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    filters: Filters = None
    partitioning: Literal["hive", "none"] = "hive"
    schema_: dict[str, TypeName] | None = Field(default=None, alias="schema")
    partition_size: int | str | None = "256MiB"

    @field_validator("schema_")
    @classmethod
    def _check_schema(cls, schema):
        if schema is not None and not schema:
            raise ValueError("`schema` is empty; leave it out to infer every column's type")
        return schema

    @field_validator("partition_size")
    @classmethod
    def _check_partition_size(cls, size):
        if size is not None:
            parse_size(size)
        return size

    @property
    def partition_bytes(self) -> int | None:
        """``partition_size`` in bytes (``None``: one partition per file)."""
        return None if self.partition_size is None else parse_size(self.partition_size)


class ParquetSourceSpec(FileSourceSpec):
    """Parquet files, with Hive ``key=value`` folders as partition columns; see :class:`FileSourceSpec`
    for ``schema`` and ``partition_size`` (a file larger than it is split by row groups)."""

    format: Literal["parquet"] = "parquet"


class CSVSourceSpec(FileSourceSpec):
    """CSV files with a header row.

    Types are inferred from the first block (1 MiB) of every file and unified, and every file is
    read with the unified types, so a float column that starts as whole numbers in one file is
    read as float64 in all of them; ``schema`` fixes a column's type outright. A file larger than
    ``partition_size`` is read as several partitions of whole lines (the header names the
    columns of every part).
    """

    format: Literal["csv"] = "csv"


class JSONSourceSpec(FileSourceSpec):
    """JSON lines (one object per line): types inferred from the first block of every file and
    unified, as for CSV; ``schema`` and ``partition_size`` as in :class:`FileSourceSpec`."""

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


def source_of(
    source: str | Mapping[str, Any] | BaseSourceSpec,
    *,
    format: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    where: str = "source",
) -> BaseSourceSpec:
    """A source given as a path or URL (``format`` and ``storage_options`` apply to it), or as a
    source entry: what ``predict``, ``monitor`` and the promotion gate's scoring accept."""
    if isinstance(source, str):
        source = {"uri": source, "format": format, "storage_options": dict(storage_options or {})}
    return source_spec(source, where=where)


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
