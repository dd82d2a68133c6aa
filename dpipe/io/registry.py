"""Find a connector by ``format`` and open it: the one place specs become sources and sinks.

The tables of kinds live with the spec models (:mod:`dpipe.spec.connectors`), so validating a job
needs no I/O library; this module imports a kind's implementation when it is first opened, with
the kind's install hint if its package is missing. Adding a connector is one module plus one
:func:`register_source` (or naming its class by import path in ``format``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Literal

from dpipe.errors import SpecError
from dpipe.io.connector import BadFileLog, Datum, Increment, OpenedSource, Sink, Source, increment
from dpipe.spec.base import REDACTED
from dpipe.spec.connectors import BaseSinkSpec, Role, connector_kind, import_object, register_sink, register_source
from dpipe.spec.source import BaseSourceSpec, sink_spec, source_spec

__all__ = [
    "open_sink",
    "open_source",
    "read",
    "register_sink",
    "register_source",
    "sink_class",
    "sink_spec",
    "source_class",
    "source_spec",
]


def source_class(format: str, *, where: str = "source") -> type[Source]:
    """The class that reads ``format`` (a registered name or a ``module:Class`` path)."""
    return _implementation("source", format, where)


def sink_class(format: str, *, where: str = "output") -> type[Sink]:
    """The class that writes ``format``; see :func:`source_class`."""
    return _implementation("sink", format, where)


def _implementation(role: Role, format: str, where: str) -> Any:
    try:
        kind = connector_kind(role, format)
    except ValueError as exc:
        raise SpecError(f"{where}.format: {exc}") from exc
    try:
        return import_object(kind.implementation)
    except ImportError as exc:
        raise SpecError(
            f"{where}.format: cannot import the {role} for {format!r} ({kind.implementation}): {exc}",
            hint=kind.hint or "install the connector's package on the client and on every worker",
        ) from exc
    except ValueError as exc:
        raise SpecError(f"{where}.format: {exc}") from exc


def open_source(
    spec: BaseSourceSpec | Mapping[str, Any],
    *,
    where: str = "source",
    columns: list[str] | None = None,
    bad_file_log: BadFileLog | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> OpenedSource:
    """Open a source spec (or a dict that validates as one) with the connector its ``format`` names.

    Parameters
    ----------
    spec
        A validated source spec (``job.source``, a join's ``source``) or a plain dict.
    where
        The spec's location, for messages (``source``, ``features[3].source``).
    columns
        Read only these columns instead of ``spec.columns``.
    bad_file_log
        Skip data that cannot be read and record it here (``quarantine.bad_files: skip``);
        without it, unreadable data fails the computation naming the file.
    storage_options
        Used in place of saved ``storage_options`` whose values were redacted (a bundle never
        stores secrets); a spec with redacted options and none given here is an error.

    Examples
    --------
    >>> src = open_source({"uri": "data/demo/events", "columns": ["f0", "country"]})
    >>> src.frame.npartitions == len(src.files) == len(src.datums)
    True
    """
    if not isinstance(spec, BaseSourceSpec):
        spec = source_spec(spec, where=where)
    spec = _unredacted(spec, storage_options, where)
    if columns is not None:
        spec = spec.model_copy(update={"columns": list(columns)})
    source = source_class(spec.format, where=where)(spec, where=where)
    return source.open(bad_file_log=bad_file_log)


def open_increment(
    spec: BaseSourceSpec | Mapping[str, Any],
    seen: Collection[Datum],
    *,
    where: str = "source",
    columns: list[str] | None = None,
    bad_file_log: BadFileLog | None = None,
) -> Increment:
    """Open only what is new in a source since the ``seen`` datums (an earlier run's).

    The connector's ``open_new`` when it has one (a database reads above its watermark), else the
    source opened whole (listings and footers only) and its datums diffed against ``seen``.

    Examples
    --------
    >>> inc = open_increment({"uri": "data/events"}, previous_state.datums)
    >>> [d.id for d in inc.new], inc.source.frame.npartitions
    """
    if not isinstance(spec, BaseSourceSpec):
        spec = source_spec(spec, where=where)
    if columns is not None:
        spec = spec.model_copy(update={"columns": list(columns)})
    source = source_class(spec.format, where=where)(spec, where=where)
    open_new = getattr(source, "open_new", None)
    if callable(open_new):
        return open_new(seen, bad_file_log=bad_file_log)
    return increment(source.open(bad_file_log=bad_file_log), seen)


def open_sink(spec: BaseSinkSpec | Mapping[str, Any], *, where: str = "output") -> Sink:
    """The staged write of a sink spec (or dict; ``format`` defaults to ``parquet``).

    Use it as a context manager and call ``commit()`` last; see :class:`dpipe.io.Sink`.

    Examples
    --------
    >>> with open_sink({"uri": "runs/scores"}) as sink:
    ...     sink.write(frame)
    ...     written = sink.commit()
    """
    if not isinstance(spec, BaseSinkSpec):
        spec = sink_spec(spec, where=where)
    return sink_class(spec.format, where=where).from_spec(spec, where=where)


def _unredacted(spec: BaseSourceSpec, storage_options: Mapping[str, Any] | None, where: str) -> BaseSourceSpec:
    if not any(v == REDACTED for v in spec.storage_options.values()):
        return spec
    if storage_options is None:
        raise SpecError(
            f"{where}: the bundle does not store this table's storage_options (they may hold secrets)",
            hint="pass them to predict (`--storage-options JSON`); they are used for the joined tables too",
        )
    return spec.model_copy(update={"storage_options": dict(storage_options)})


def read(
    uri: str,
    *,
    format: str = "parquet",
    columns: list[str] | None = None,
    filters: list | None = None,
    partitioning: Literal["hive", "none"] = "hive",
    storage_options: dict[str, Any] | None = None,
    on_bad_file: Literal["raise", "skip"] = "raise",
    bad_file_log: BadFileLog | None = None,
    where: str = "source",
) -> OpenedSource:
    """Open files lazily: :func:`open_source` with the keys of a file source as arguments.

    Parameters
    ----------
    uri
        A file, a directory (read recursively) or a glob, local or any fsspec URL.
    format
        ``parquet``, ``csv`` or ``json`` (JSON lines), or another file kind's name.
    columns
        Columns to read (projection); all when ``None``.
    filters
        ``[column, op, value]`` triples (AND), or a list of such lists (OR of ANDs).
    partitioning
        ``hive`` to parse ``key=value`` directories into columns, ``none`` to ignore them.
    storage_options
        Passed to the fsspec filesystem (credentials, endpoint).
    on_bad_file
        ``raise``: a file that cannot be read (corrupt, malformed rows, a column of another type)
        fails the computation with a :class:`DataError` naming it. ``skip``: that file's
        partition is empty and the file and its error are recorded in ``bad_file_log``. Every
        file's footer (or first block) is read on the client to unify the schemas, so an
        unreadable file fails when the source is opened, unless it is skipped (and at least one
        file must be readable either way).
    bad_file_log
        Where workers record skipped files; required with ``on_bad_file="skip"``.

    Examples
    --------
    >>> src = read("data/demo/events", columns=["f0", "country"], filters=[["date", ">=", "2024-06-01"]])
    >>> src.frame.npartitions, len(src.files)
    """
    if on_bad_file not in ("raise", "skip"):
        raise ValueError(f"`on_bad_file` must be 'raise' or 'skip'. Instead got {on_bad_file!r}")
    if on_bad_file == "skip" and bad_file_log is None:
        raise ValueError("`on_bad_file='skip'` needs a `bad_file_log` to record the skipped files in")
    fields = {"uri": uri, "format": format, "columns": columns, "filters": filters, "partitioning": partitioning}
    spec = source_spec({**fields, "storage_options": dict(storage_options or {})}, where=where)
    return open_source(spec, where=where, bad_file_log=bad_file_log if on_bad_file == "skip" else None)
