"""Which kinds of source and sink exist: one table per role, keyed by a spec's ``format``.

Each kind names its spec model and its implementation by import path, imported only when needed
(as fsspec's ``known_implementations`` names filesystem classes): validating a job imports the
spec model only, so ``dpipe validate`` needs neither Dask nor the connector's package, and
:mod:`dpipe.io.registry` imports the implementation when the data is opened. Outsiders add a kind
with :func:`register_source` / :func:`register_sink`, with an entry point of their package (groups
``dpipe.sources`` and ``dpipe.sinks``, read the first time a spec names a format not found here),
or by naming their class by import path in ``format`` (``format: "mypkg.connectors:Lines"``), as
custom ops are named.

:class:`ConnectorSpec` is how a ``source:`` (or sink) entry validates: the callable discriminator
:func:`entry_format` picks the kind (the entry's ``format``, or the one its ``uri`` suffix implies)
and that kind's strict model validates the entry, with errors at the entry's own locations.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import PydanticCustomError, core_schema

from dpipe.spec.base import Strict, redact

Role = Literal["source", "sink"]

#: ``module:Class`` or ``module.Class``, the form custom ops are named by.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")


class ConnectorKind(NamedTuple):
    """A kind of source or sink: its spec model, its implementation, and how to get its package."""

    #: ``module:Class`` of the implementation (a :class:`dpipe.io.Source` or :class:`dpipe.io.Sink`).
    implementation: str
    #: The spec model (or its ``module:Class``); ``None``: the implementation's ``Spec`` attribute.
    spec: type[BaseModel] | str | None = None
    #: Shown when the implementation's package is missing, e.g. ``pip install deltalake``.
    hint: str | None = None
    #: URI endings that imply this kind when a source entry has no ``format`` (sources only).
    suffixes: tuple[str, ...] = ()


#: How to install the package of each optional kind (shown when it is missing).
_HINTS = {
    "delta": "pip install 'dpipe[delta]' (the `deltalake` package) on the client and every worker",
    "iceberg": "pip install 'dpipe[iceberg]' (the `pyiceberg` package) on the client and every worker",
    "postgresql": "pip install 'dpipe[postgresql]' (`adbc-driver-postgresql`) on the client and every worker",
    "duckdb": "pip install 'dpipe[duckdb]' (the `duckdb` package) on the client and every worker",
}

#: Source kinds by ``format``; the first whose suffix a ``uri`` ends with is its default format.
KNOWN_SOURCES: dict[str, ConnectorKind] = {
    "parquet": ConnectorKind(
        "dpipe.io.sources:ParquetSource", "dpipe.spec.source:ParquetSourceSpec", suffixes=(".parquet", ".pq")
    ),
    "csv": ConnectorKind("dpipe.io.sources:CSVSource", "dpipe.spec.source:CSVSourceSpec", suffixes=(".csv", ".csv.gz")),
    "json": ConnectorKind(
        "dpipe.io.sources:JSONSource",
        "dpipe.spec.source:JSONSourceSpec",
        suffixes=(".jsonl", ".jsonl.gz", ".json", ".json.gz"),
    ),
    # Lakes and warehouses: their packages are optional extras, imported when a spec names them.
    "delta": ConnectorKind("dpipe.io.delta:DeltaSource", "dpipe.spec.delta:DeltaSourceSpec", _HINTS["delta"]),
    "iceberg": ConnectorKind(
        "dpipe.io.iceberg:IcebergSource", "dpipe.spec.iceberg:IcebergSourceSpec", _HINTS["iceberg"]
    ),
    "postgresql": ConnectorKind(
        "dpipe.io.sql:PostgresSource", "dpipe.spec.sql:PostgresSourceSpec", _HINTS["postgresql"]
    ),
    "duckdb": ConnectorKind("dpipe.io.sql:DuckDBSource", "dpipe.spec.sql:DuckDBSourceSpec", _HINTS["duckdb"]),
}
#: Sink kinds by ``format``.
KNOWN_SINKS: dict[str, ConnectorKind] = {
    "parquet": ConnectorKind("dpipe.io.sinks:ParquetFolderSink", "dpipe.spec.connectors:ParquetSinkSpec"),
    "delta": ConnectorKind("dpipe.io.delta:DeltaSink", "dpipe.spec.delta:DeltaSinkSpec", _HINTS["delta"]),
    "iceberg": ConnectorKind("dpipe.io.iceberg:IcebergSink", "dpipe.spec.iceberg:IcebergSinkSpec", _HINTS["iceberg"]),
    "postgresql": ConnectorKind("dpipe.io.sql:PostgresSink", "dpipe.spec.sql:PostgresSinkSpec", _HINTS["postgresql"]),
    "duckdb": ConnectorKind("dpipe.io.sql:DuckDBSink", "dpipe.spec.sql:DuckDBSinkSpec", _HINTS["duckdb"]),
}
#: The format of a source whose ``uri`` has no known suffix, and of a sink entry without one.
DEFAULT_FORMAT = "parquet"
_TABLES: dict[str, dict[str, ConnectorKind]] = {"source": KNOWN_SOURCES, "sink": KNOWN_SINKS}
_ENTRY_POINTS_LOADED: set[str] = set()


def register_source(
    format: str,
    implementation: str,
    *,
    spec: type[BaseModel] | str | None = None,
    hint: str | None = None,
    suffixes: tuple[str, ...] = (),
    clobber: bool = False,
) -> None:
    """Make ``format: <format>`` name the source class at ``implementation`` (``"pkg.mod:Class"``).

    Nothing is imported until a spec names the format. ``spec`` defaults to the class's ``Spec``
    attribute (a subclass of :class:`dpipe.spec.source.BaseSourceSpec`); give it (or its import
    path) to keep validation from importing the implementation. ``suffixes`` let a source entry
    without ``format`` be recognised by its ``uri``.

    Examples
    --------
    >>> register_source("feather", "feather_source:FeatherSource", suffixes=(".feather",))
    """
    _register("source", format, ConnectorKind(implementation, spec, hint, tuple(suffixes)), clobber)


def register_sink(
    format: str,
    implementation: str,
    *,
    spec: type[BaseModel] | str | None = None,
    hint: str | None = None,
    clobber: bool = False,
) -> None:
    """Make ``format: <format>`` name the sink class at ``implementation``; see :func:`register_source`."""
    _register("sink", format, ConnectorKind(implementation, spec, hint), clobber)


def _register(role: Role, format: str, kind: ConnectorKind, clobber: bool) -> None:
    if not isinstance(format, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", format):
        raise ValueError(f"`format` must be a lower-case name such as 'delta'. Instead got {format!r}")
    if not IMPORT_PATH.match(kind.implementation):
        raise ValueError(f"`implementation` must be an import path 'module:Class'. Instead got {kind.implementation!r}")
    table = _TABLES[role]
    if format in table and table[format] != kind and not clobber:
        raise ValueError(
            f"{role} format {format!r} is already registered to {table[format].implementation!r};"
            " pass clobber=True to replace it"
        )
    table[format] = kind


def connector_kind(role: Role, format: Any) -> ConnectorKind:
    """The registered kind of ``format``, or the class it names by import path.

    Raises ``ValueError`` with a message for users (the known formats, a close match).
    """
    table = _TABLES[role]
    if isinstance(format, str) and format not in table and role not in _ENTRY_POINTS_LOADED:
        _load_entry_points(role)
    if isinstance(format, str) and format in table:
        return table[format]
    if isinstance(format, str) and IMPORT_PATH.match(format):
        return ConnectorKind(format)
    names = list(table)
    msg = f"unknown format {format!r}; expected one of {names} or a connector's import path such as 'mypkg.connectors:Lines'"
    close = difflib.get_close_matches(str(format), names, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    raise ValueError(msg)


def _load_entry_points(role: Role) -> None:
    """Kinds that installed packages declare (``[project.entry-points."dpipe.sources"]``)."""
    _ENTRY_POINTS_LOADED.add(role)
    for ep in entry_points(group=f"dpipe.{role}s"):
        _TABLES[role].setdefault(ep.name, ConnectorKind(ep.value))


def import_object(path: str) -> Any:
    """Import ``module:Name`` (or ``module.Name``); ``ImportError`` if the module (or a package it needs) is missing."""
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError as exc:
        raise ValueError(f"module {module_name!r} has no {name!r}") from exc


def spec_model(role: Role, format: Any) -> type[BaseModel]:
    """The strict model that validates an entry of ``format`` (imports user code for import paths).

    Raises ``ValueError`` with a message for users.
    """
    base = _base_model(role)
    kind = connector_kind(role, format)
    where = kind.spec if isinstance(kind.spec, str) else kind.implementation
    try:
        if kind.spec is None:
            model = getattr(import_object(kind.implementation), "Spec", None)
        elif isinstance(kind.spec, str):
            model = import_object(kind.spec)
        else:
            model = kind.spec
    except ImportError as exc:
        named = "" if where == format else f" ({where})"
        hint = f"; {kind.hint}" if kind.hint else ""
        raise ValueError(
            f"cannot import {role} {format!r}{named}: {exc}{hint}; the module must be importable on the client"
            " and on every worker (install it, or add its folder to PYTHONPATH)"
        ) from exc
    except ValueError as exc:
        raise ValueError(f"{exc} ({role} {format!r})") from exc
    if not (isinstance(model, type) and issubclass(model, base)):
        raise ValueError(
            f"{role} {format!r} ({kind.implementation}) declares no `Spec` model subclassing"
            f" {base.__module__}.{base.__name__}"
        )
    return model


def _base_model(role: Role) -> type[BaseModel]:
    from dpipe.spec.source import BaseSourceSpec  # it imports this module

    return BaseSourceSpec if role == "source" else BaseSinkSpec


def entry_format(role: Role, value: Any) -> Any:
    """The callable discriminator: the entry's ``format``, else the kind its ``uri`` suffix implies."""
    fmt = value.get("format") if isinstance(value, Mapping) else getattr(value, "format", None)
    if fmt is not None:
        return fmt
    uri = value.get("uri") if isinstance(value, Mapping) else None
    if role == "source" and isinstance(uri, str):
        return infer_format(uri)
    return DEFAULT_FORMAT


def infer_format(uri: str) -> str:
    """``.csv``/``.csv.gz`` -> ``csv``, ``.jsonl``/``.json`` (``.gz``) -> ``json``, else ``parquet``."""
    path = uri.rstrip("/").lower()
    for fmt, kind in KNOWN_SOURCES.items():
        if any(path.endswith(suffix) for suffix in kind.suffixes):
            return fmt
    return DEFAULT_FORMAT


def validate_entry(role: Role, value: Any) -> BaseModel:
    """Validate one source or sink entry with the model of its kind.

    Errors are raised as a ``ValidationError`` located within the entry (``source.colums``, not
    ``source.parquet.colums``), and an unknown key lists the keys of that kind.
    """
    if isinstance(value, _base_model(role)):
        try:
            if isinstance(value, spec_model(role, getattr(value, "format", None))):
                return value
        except ValueError:
            pass  # an unknown format: reported below, as for a mapping
        # A model of another kind (or the bare base model): validate what it holds as that kind's.
        value = value.model_dump(exclude_unset=True)
    if not isinstance(value, Mapping):
        raise _error([((), f"{role}_type", f"a {role} is a mapping such as {{uri: data/events}}", value)])
    fmt = entry_format(role, value)
    try:
        model = spec_model(role, fmt)
    except ValueError as exc:
        raise _error([(("format",), "format_invalid", str(exc), _shown(value))]) from exc
    try:
        return model.model_validate({**value, "format": fmt})
    except ValidationError as exc:
        raise _located(exc, model, _shown(value)) from exc


def _shown(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as an error may echo it: secrets (``storage_options``, passwords) redacted."""
    return redact(copy.deepcopy(dict(entry)))


def _located(exc: ValidationError, model: type[BaseModel], entry: dict) -> ValidationError:
    problems = []
    for err in exc.errors(include_url=False):
        loc, etype, msg, shown = err["loc"], err["type"], err["msg"], err.get("input")
        if etype == "extra_forbidden" and len(loc) == 1:
            allowed = sorted(f.alias or name for name, f in model.model_fields.items())
            etype, msg, shown = "unknown_key", f"unknown key; allowed keys: {allowed}", entry
            close = difflib.get_close_matches(str(loc[0]), allowed, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        problems.append((loc, etype, msg, shown))
    return _error(problems)


def _error(problems: list[tuple[tuple, str, str, Any]]) -> ValidationError:
    # A ValidationError raised inside a validator becomes that field's line errors, with their locations.
    return ValidationError.from_exception_data(
        "connector",
        [
            {"type": PydanticCustomError(etype, msg), "loc": tuple(loc), "input": shown}
            for loc, etype, msg, shown in problems
        ],
    )


class ConnectorSpec:
    """``Annotated[BaseSourceSpec, ConnectorSpec("source")]``: validate with the kind's own model.

    Dumps use the value's own model, so every field of the kind is serialised.
    """

    def __init__(self, role: Role):
        self.role: Role = role

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        role = self.role
        return core_schema.no_info_plain_validator_function(
            lambda value: validate_entry(role, value),
            json_schema_input_schema=handler(source),
            serialization=core_schema.wrap_serializer_function_ser_schema(
                lambda value, serialize: serialize(value), schema=core_schema.any_schema()
            ),
        )


# -- sinks --------------------------------------------------------------------------------------
class BaseSinkSpec(Strict):
    """The keys every sink kind has: where the output goes and how to reach its storage."""

    format: str = DEFAULT_FORMAT
    uri: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class ParquetSinkSpec(BaseSinkSpec):
    """A folder of Parquet files (``part-NNNNN.parquet``), replaced whole on commit.

    ``partition_by`` writes Hive ``key=value`` folders (``date=2024-06-01/part-00000.parquet``).
    """

    format: Literal["parquet"] = "parquet"
    overwrite: bool = True
    partition_by: list[str] | None = Field(default=None, min_length=1)


#: A sink entry: the model of the kind its ``format`` names.
SinkSpec = Annotated[BaseSinkSpec, ConnectorSpec("sink")]
