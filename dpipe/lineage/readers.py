"""Reading one output's manifest, wherever its kind of storage keeps it.

A bundle keeps its ``manifest.json``, a Parquet folder its ``_dpipe_manifest.json``, a Delta table
the commit's metadata, an Iceberg table the snapshot summary, a PostgreSQL or DuckDB table its row
in ``_dpipe_commits``. :data:`READERS` has one reader per kind; :func:`find` picks the kind from
the URL or the folder and reads the commit wanted (:class:`Location`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dpipe.errors import BundleError, SpecError, StorageError
from dpipe.spec.base import redact_url

__all__ = ["MARKERS", "READERS", "Found", "Location", "display", "find", "read_output"]


@dataclass(frozen=True)
class Location:
    """Where an output is, and which of its commits is wanted (default: the latest with a manifest)."""

    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    table: str | None = None
    catalog: dict[str, Any] | None = None
    run_id: str | None = None
    #: The table version (Delta) or snapshot id (Iceberg) that was read: the commit at or before it.
    at: int | None = None


@dataclass(frozen=True)
class Found:
    """An output's manifest and the commit that carries it (``{"version": 3, "txn": ...}``)."""

    format: str
    uri: str
    manifest: dict[str, Any]
    commit: dict[str, Any] = field(default_factory=dict)
    #: Where it was read from (its table and catalog find the output's earlier commits).
    loc: Location | None = None


def _unwrap(document: Any) -> dict[str, Any] | None:
    """The manifest of stored commit metadata (``{"manifest": ..., "pipeline": ...}``), or ``None``."""
    if isinstance(document, (str, bytes)):
        try:
            document = json.loads(document)
        except ValueError:
            return None
    if isinstance(document, Mapping) and isinstance(document.get("manifest"), Mapping):
        return dict(document["manifest"])
    return None


def _folder(loc: Location) -> tuple[Any, str]:
    from dpipe.io.fs import resolve

    fs, path = resolve(loc.uri, loc.storage_options, where="lineage")
    return fs, path.rstrip("/")


def _read_json(loc: Location, name: str) -> Any:
    from dpipe.io.fs import storage_errors

    fs, path = _folder(loc)
    with storage_errors("lineage", redact_url(loc.uri)):
        if not fs.exists(f"{path}/{name}"):
            return None
        raw = fs.cat_file(f"{path}/{name}")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BundleError(
            f"lineage: {name} of {redact_url(loc.uri)!r} is not valid JSON ({exc})",
            hint="it was edited or cut short; write the output again",
        ) from exc


def _read_bundle(loc: Location) -> Found | None:
    manifest = _read_json(loc, "manifest.json")
    return None if not isinstance(manifest, dict) else Found("bundle", _full(loc), manifest, loc=loc)


def _read_parquet(loc: Location) -> Found | None:
    document = _read_json(loc, "_dpipe_manifest.json")
    manifest = _unwrap(document)
    if manifest is None:
        return None
    return Found("parquet", _full(loc), manifest, {"txn": document.get("txn")}, loc)


def display(uri: str) -> str:
    """A URI for nodes and messages: local paths absolute, passwords redacted."""
    return redact_url(uri) if "://" in uri else os.path.abspath(uri)


def _full(loc: Location) -> str:
    from dpipe.io.fs import full_uri

    fs, path = _folder(loc)
    return full_uri(fs, path)


def _read_delta(loc: Location) -> Found | None:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    from dpipe.io.delta.table import delta_storage_options

    try:
        table = DeltaTable(loc.uri, storage_options=delta_storage_options(loc.storage_options, loc.uri))
        history = table.history()
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        raise StorageError(f"lineage: cannot open the Delta table {redact_url(loc.uri)!r}: {_first_line(exc)}") from exc
    for entry in history:  # newest first
        manifest = _unwrap(entry.get("dpipe"))
        if manifest is None or (loc.at is not None and int(entry.get("version", -1)) > loc.at):
            continue
        if loc.run_id is not None and manifest.get("run_id") != loc.run_id:
            continue
        commit = {"version": entry.get("version"), "txn": entry.get("dpipe.txn"), "table_version": table.version()}
        return Found("delta", display(loc.uri), manifest, commit, loc)
    return None


def _read_iceberg(loc: Location) -> Found | None:
    from pydantic import ValidationError

    from dpipe.io.iceberg.catalog import load_table, open_catalog
    from dpipe.spec.iceberg import IcebergSourceSpec

    table, catalog = loc.table, dict(loc.catalog or {})
    if loc.uri.startswith("iceberg://"):
        name, _, path = loc.uri.removeprefix("iceberg://").partition("/")
        table, catalog = table or path, catalog or {"name": name}
    try:
        spec = IcebergSourceSpec.model_validate(
            {"table": table or "", "catalog": catalog, "storage_options": loc.storage_options}
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise SpecError(f"lineage: not an Iceberg table: {problems}", hint="give the table and its catalog") from None
    found = load_table(open_catalog(spec, "lineage"), spec.table, "lineage")
    snapshots = {s.snapshot_id: s for s in found.metadata.snapshots}
    if not snapshots:
        return None
    if loc.run_id is not None:
        order = sorted(snapshots.values(), key=lambda s: s.timestamp_ms, reverse=True)
    else:  # the snapshot read (or the current one) and its ancestors
        current = loc.at if loc.at is not None else max(snapshots.values(), key=lambda s: s.timestamp_ms).snapshot_id
        order, at = [], snapshots.get(current)
        while at is not None and len(order) <= len(snapshots):
            order.append(at)
            at = snapshots.get(at.parent_snapshot_id) if at.parent_snapshot_id is not None else None
    for snapshot in order:
        summary: Any = snapshot.summary or {}
        manifest = _unwrap(summary.get("dpipe.manifest"))
        if manifest is not None and (loc.run_id is None or manifest.get("run_id") == loc.run_id):
            commit = {"snapshot_id": snapshot.snapshot_id, "txn": summary.get("dpipe.txn")}
            return Found("iceberg", spec.uri, manifest, commit, loc)
    return None


def _sql_target(loc: Location) -> tuple[str, str]:
    """(database uri, table): ``table=``, or the last part of a sink's ``<database>/<table>`` uri."""
    if loc.table:
        return loc.uri, loc.table
    base, _, table = loc.uri.rstrip("/").rpartition("/")
    segments = urlsplit(loc.uri).path.strip("/").split("/")
    database = loc.uri.startswith("duckdb://") and os.path.isfile(loc.uri.removeprefix("duckdb://"))
    if not table or database or (loc.uri.startswith(("postgresql://", "postgres://")) and len(segments) < 2):
        raise SpecError(
            f"lineage: {redact_url(loc.uri)!r} names a database, not a table", hint="give the table (`--table`)"
        )
    return base, table


def _commit_rows(rows: list[tuple], loc: Location, kind: str, uri: str) -> Found | None:
    for txn, committed_at, count, document in rows:  # newest first
        manifest = _unwrap(document)
        if manifest is not None and (loc.run_id is None or manifest.get("run_id") == loc.run_id):
            return Found(kind, uri, manifest, {"txn": txn, "committed_at": str(committed_at), "rows": count}, loc)
    return None


def _read_postgresql(loc: Location) -> Found | None:
    import adbc_driver_postgresql.dbapi as pg

    from dpipe.io.sql.postgres import COMMITS, connect, conninfo, sqlstate
    from dpipe.io.sql.text import POSTGRES

    uri, table = _sql_target(loc)
    info = conninfo(uri, loc.storage_options, where="lineage")
    schema = table.rpartition(".")[0]
    commits = POSTGRES.table(f"{schema}.{COMMITS}" if schema else COMMITS)
    conn = connect(info, where="lineage")
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT txn, committed_at::text, rows, metadata::text FROM {commits}"
                f" WHERE target = {POSTGRES.literal(table)} AND metadata IS NOT NULL ORDER BY committed_at DESC"
            )
            rows = cur.fetchall()
    except pg.Error as exc:
        if sqlstate(exc) in ("42P01", "3F000"):  # no commits table (or schema): nothing dpipe wrote
            return None
        raise StorageError(f"lineage: cannot read {COMMITS} of {info.display}: {info.scrub(str(exc))[:300]}") from None
    finally:
        conn.close()
    return _commit_rows(rows, loc, "postgresql", f"{info.display}/{table}")


def _read_duckdb(loc: Location) -> Found | None:
    import duckdb

    from dpipe.io.sql.duckdb import COMMITS, database_path
    from dpipe.io.sql.text import DUCKDB

    uri, table = (loc.uri, loc.table) if loc.table else _sql_target(loc)
    path = database_path(uri.removeprefix("duckdb://"))
    if not path.is_file():
        raise StorageError(f"lineage: no DuckDB database file at {str(path)!r}")
    schema = table.rpartition(".")[0]
    try:
        conn = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise StorageError(f"lineage: cannot open DuckDB database {str(path)!r}: {_first_line(exc)}") from None
    try:
        rows = conn.execute(
            f"SELECT txn, committed_at, rows, metadata FROM {DUCKDB.table(f'{schema}.{COMMITS}' if schema else COMMITS)}"
            " WHERE target = ? AND metadata IS NOT NULL ORDER BY committed_at DESC",
            [table],
        ).fetchall()
    except duckdb.CatalogException:
        return None  # no commits table: nothing dpipe wrote
    finally:
        conn.close()
    return _commit_rows(rows, loc, "duckdb", f"duckdb://{path}/{table}")


#: How each kind of output stores its manifest (``format`` of :func:`read_output`).
READERS: dict[str, Callable[[Location], Found | None]] = {
    "bundle": _read_bundle,
    "parquet": _read_parquet,
    "delta": _read_delta,
    "iceberg": _read_iceberg,
    "postgresql": _read_postgresql,
    "duckdb": _read_duckdb,
}
#: What marks a folder as each kind, in the order they are looked for.
MARKERS = (("manifest.json", "bundle"), ("_delta_log", "delta"), ("_dpipe_manifest.json", "parquet"))
_SCHEMES = {"postgresql://": "postgresql", "postgres://": "postgresql", "duckdb://": "duckdb", "iceberg://": "iceberg"}


def _detect(loc: Location) -> str | None:
    """The kind of output at ``loc``, from its URL scheme or its folder's contents."""
    from dpipe.io.fs import storage_errors

    scheme = next((kind for prefix, kind in _SCHEMES.items() if loc.uri.startswith(prefix)), None)
    if scheme is not None:
        return scheme
    if loc.catalog is not None:
        return "iceberg"
    fs, path = _folder(loc)
    with storage_errors("lineage", redact_url(loc.uri)):
        if fs.isfile(path):
            return "duckdb" if loc.table else None
        if not fs.exists(path):
            raise StorageError(f"lineage: {redact_url(loc.uri)!r} does not exist", hint="check the path")
        return next((kind for name, kind in MARKERS if fs.exists(f"{path}/{name}")), None)


def find(loc: Location, format: str | None) -> Found | None:
    """The manifest at ``loc`` read as ``format`` (``None``: found from the URL or the folder), or
    ``None`` if nothing there is a dpipe output."""
    if format is not None and format not in READERS:
        raise SpecError(f"lineage: unknown output format {format!r}; known: {sorted(READERS)}")
    kind = format or _detect(loc)
    return None if kind is None else READERS[kind](loc)


def read_output(
    uri: str,
    *,
    format: str | None = None,
    storage_options: dict[str, Any] | None = None,
    table: str | None = None,
    catalog: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The manifest of the dpipe output at ``uri``: a bundle, a features or predictions output.

    ``format`` (``bundle``, ``parquet``, ``delta``, ``iceberg``, ``postgresql``, ``duckdb``) is found
    from the URL or the folder when ``None``. A table names ``table`` (SQL; or a sink's
    ``<database>/<table>`` uri) or ``table`` and ``catalog`` (Iceberg, as in a sink spec). Of a
    table written several times, the latest commit carrying a manifest is read, or the one of
    ``run_id``.

    Examples
    --------
    >>> read_output("runs/scores")["bundle"]
    'runs/m1'
    >>> read_output("lake/features", format="delta")["job"]
    """
    loc = Location(uri, dict(storage_options or {}), table, catalog, run_id)
    found = find(loc, format)
    if found is None:
        what = f"no commit of run {run_id!r}" if run_id else "no manifest.json, _dpipe_manifest.json or dpipe commit"
        raise StorageError(
            f"lineage: {redact_url(uri)!r} holds no dpipe output ({what})",
            hint="give the `output.uri` of a `dpipe run` (a bundle), of a features job or of `dpipe predict`;"
            " a table needs `format` and `table` (SQL) or `table` and `catalog` (Iceberg)",
        )
    return found.manifest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact_url(text.splitlines()[0][:300]) if text else type(exc).__name__
