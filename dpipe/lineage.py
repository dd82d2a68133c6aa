"""Where every output came from: the manifest stored with an output, and the tree upstream of it.

Every dpipe output carries its manifest: a bundle its ``manifest.json``, a Parquet folder its
``_dpipe_manifest.json``, a Delta table the commit's metadata (``DeltaTable(uri).history()``), an
Iceberg table the snapshot summary (``dpipe.manifest``), a PostgreSQL or DuckDB table its row in
``_dpipe_commits``. :func:`read_output` finds it; :func:`lineage_tree` follows the parents it
names (the bundle scores were made with, the data each run read, with their versions, and the
previous run of an incremental job), reading the outputs among them again; :func:`format_tree`
prints the tree for a person (``dpipe lineage OUTPUT``).

Examples
--------
>>> print(format_tree(lineage_tree("runs/scores")))
predictions /work/runs/scores (parquet, run 3f2a1b2c, 2026-12-01T10:00:00)
├─ model: bundle /work/runs/m1 (job quickstart, run 9d8e7f6a, 2026-12-01T09:58:12)
│  │  dpipe 0.1.0, xgboost 3.2.0, dask 2026.8.0
│  └─ source: parquet /work/data/events (4 datums: date=2024-01-01/part-0.parquet, …)
└─ source: parquet /work/data/events (1 datum: date=2024-02-01/part-0.parquet)

See ``docs/lineage.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from dpipe.errors import BundleError, DpipeError, SpecError, StorageError
from dpipe.spec.base import redact_url

__all__ = ["code_lineage", "format_tree", "lineage_tree", "read_output"]

#: How many datums an input node shows.
FIRST_DATUMS = 3


# -- code ---------------------------------------------------------------------------------------
def code_lineage(ops: Iterable[Any]) -> dict[str, Any]:
    """The custom ops of a pipeline by import path, with the distribution and version they come from.

    ``ops`` are :class:`~dpipe.ops.Op` objects or spec entries (``{op: "mypkg.features:Winsorize"}``);
    built-in ops are not listed. An op whose module is not part of an installed distribution
    (a folder on ``PYTHONPATH``) has ``package`` and ``version`` ``None``.

    Examples
    --------
    >>> code_lineage(pipeline.ops)
    {'custom_ops': [{'op': 'mypkg.features:Winsorize', 'package': 'mypkg', 'version': '1.2.0'}]}
    """
    found: dict[str, dict[str, Any]] = {}
    distributions: Mapping[str, list[str]] | None = None
    for op in ops:
        path = _import_path(op)
        if path is None or path in found:
            continue
        if distributions is None:
            distributions = metadata.packages_distributions()
        top = path.replace(":", ".").split(".")[0]
        package = next(iter(distributions.get(top) or []), None)
        version = None
        if package is not None:
            try:
                version = metadata.version(package)
            except metadata.PackageNotFoundError:
                version = None
        found[path] = {"op": path, "package": package, "version": version}
    return {"custom_ops": list(found.values())}


def _import_path(op: Any) -> str | None:
    """``module:Class`` of a custom op (an Op object or a spec entry); ``None`` for a built-in one."""
    named = op.get("op") if isinstance(op, Mapping) else getattr(op, "op", None)
    if isinstance(named, str):  # a spec entry: built-in ops are plain names
        return named if (":" in named or "." in named) else None
    cls = type(op)
    if cls.__module__ == "dpipe" or cls.__module__.startswith("dpipe."):
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


# -- reading one output -------------------------------------------------------------------------
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


def _display(uri: str) -> str:
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
        return Found("delta", _display(loc.uri), manifest, commit, loc)
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


def _find(loc: Location, format: str | None) -> Found | None:
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
    found = _find(loc, format)
    if found is None:
        what = f"no commit of run {run_id!r}" if run_id else "no manifest.json, _dpipe_manifest.json or dpipe commit"
        raise StorageError(
            f"lineage: {redact_url(uri)!r} holds no dpipe output ({what})",
            hint="give the `output.uri` of a `dpipe run` (a bundle), of a features job or of `dpipe predict`;"
            " a table needs `format` and `table` (SQL) or `table` and `catalog` (Iceberg)",
        )
    return found.manifest


# -- the tree -----------------------------------------------------------------------------------
#: A manifest's ``kind`` -> the node's kind (a training manifest has none).
OUTPUT_KINDS = {"predict": "predictions", "features": "features", "train": "bundle", None: "bundle"}
#: Which outputs share credentials: ``storage_options`` given for one are passed to the others.
_FAMILY = {"postgresql": "postgresql", "duckdb": "duckdb"}


def lineage_tree(
    uri: str,
    *,
    storage_options: dict[str, Any] | None = None,
    format: str | None = None,
    depth: int = 10,
    table: str | None = None,
    catalog: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The output at ``uri`` and everything upstream of it, as a JSON-able tree.

    Each output node has ``kind`` (``bundle``, ``features``, ``predictions``), ``uri``, ``format``,
    ``job``, ``run_id``, ``started_at``, ``finished_at``, ``spec_hash``, ``versions`` (dpipe, xgboost,
    dask), ``code`` (custom ops), ``commit`` (the table version or snapshot carrying the
    manifest) and ``parents``: the bundle it was made with (``role: model`` or ``pipeline_from``),
    every input read (``kind: input``: its uri, format, connector ``record`` such as a Delta
    version, an Iceberg snapshot or a SQL watermark, the datum count and the first datums), and
    the previous run of an incremental job (``role: previous run``). An input that is itself a
    dpipe output has that output's tree as its parent. A parent that cannot be read is a node
    with ``error``; the tree stops at ``depth`` (``truncated``) and at a cycle (``cycle``).
    ``storage_options`` are used for every output of the same kind of storage on the way up.
    """
    options = dict(storage_options or {})
    loc = Location(uri, options, table, catalog)
    found = _find(loc, format)
    if found is None:
        read_output(uri, format=format, storage_options=options, table=table, catalog=catalog)  # raises
        raise AssertionError("unreachable")
    return _Walk(options, _FAMILY.get(found.format, "files")).output(found, depth, frozenset(), None)


class _Walk:
    def __init__(self, storage_options: dict[str, Any], family: str):
        self.storage_options, self.family = storage_options, family

    def options(self, format: str) -> dict[str, Any]:
        return self.storage_options if _FAMILY.get(format, "files") == self.family else {}

    def output(self, found: Found, depth: int, above: frozenset, role: str | None) -> dict[str, Any]:
        m = found.manifest
        versions = m.get("versions") or {}
        node: dict[str, Any] = {
            "kind": OUTPUT_KINDS.get(m.get("kind"), "bundle"),
            **({"role": role} if role else {}),
            "uri": _display(found.uri),
            "format": found.format,
            "job": m.get("job"),
            "run_id": m.get("run_id"),
            "started_at": m.get("started_at"),
            "finished_at": m.get("finished_at"),
            "spec_hash": m.get("spec_hash"),
            "versions": {k: versions[k] for k in ("dpipe", "xgboost", "dask") if k in versions}
            or ({"dpipe": m["dpipe_version"]} if m.get("dpipe_version") else {}),
            "code": m.get("code"),
            "commit": dict(found.commit),
            "parents": [],
        }
        key = (found.format, found.uri, m.get("run_id") or json.dumps(found.commit, sort_keys=True, default=str))
        if key in above:
            return {**node, "cycle": True}
        if depth <= 0:
            return {**node, "truncated": True}
        above, depth = above | {key}, depth - 1
        bundle = m.get("bundle") or m.get("pipeline_from")
        if isinstance(bundle, str):
            wanted = m.get("bundle_run_id")
            node["parents"].append(
                self.read(
                    Location(bundle, self.options("bundle"), run_id=wanted),
                    "bundle",
                    depth,
                    above,
                    _role(m),
                    missing_ok=False,
                )
            )
        entries = [("source", m.get("input"))] + [(f"table {w}", t) for w, t in (m.get("tables") or {}).items()]
        node["parents"] += [self.input(e, role, m, depth, above) for role, e in entries if isinstance(e, Mapping)]
        parent = m.get("parent")
        if isinstance(parent, Mapping) and parent.get("run_id"):
            # An earlier commit of the same output (its table and catalog), unless it names another.
            same = found.loc if found.loc is not None else Location(found.uri)
            loc = replace(same, uri=str(parent.get("uri") or same.uri), run_id=str(parent["run_id"]), at=None)
            node["parents"].append(self.read(loc, found.format, depth, above, "previous run", missing_ok=False))
        return node

    def read(
        self, loc: Location, format: str | None, depth: int, above: frozenset, role: str, *, missing_ok: bool
    ) -> dict[str, Any] | None:
        """The tree of a parent output, or a node saying why it cannot be read (``None``: it is no
        dpipe output, and ``missing_ok``)."""
        try:
            found = _find(loc, format)
        except Exception as exc:  # noqa: BLE001 - one unreadable parent must not hide the rest of the tree
            return {"kind": format or "output", "role": role, "uri": _display(loc.uri), "error": _short(exc)}
        if found is None and (missing_ok and loc.run_id is None):
            return None
        if found is None:
            what = f"run {loc.run_id} is not there" if loc.run_id else "no dpipe output there"
            return {"kind": format or "output", "role": role, "uri": _display(loc.uri), "error": what}
        now = found.manifest.get("run_id")
        if loc.run_id and now and now != loc.run_id:  # a folder keeps its latest run only
            kind = OUTPUT_KINDS.get(found.manifest.get("kind"), "bundle")
            return {"kind": kind, "role": role, "uri": _display(found.uri), "format": found.format,
                    "run_id": loc.run_id, "replaced_by": now, "parents": []}  # fmt: skip
        return self.output(found, depth, above, role)

    def input(self, entry: Mapping[str, Any], role: str, m: Mapping, depth: int, above: frozenset) -> dict[str, Any]:
        nested = entry.get("lineage")
        lineage: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
        datums = [d for d in lineage.get("datums") or [] if isinstance(d, Mapping)]
        node: dict[str, Any] = {
            "kind": "input",
            "role": role,
            "uri": _display(str(entry.get("uri") or lineage.get("table_uri") or lineage.get("uri") or "")),
            "format": entry.get("format") or lineage.get("kind"),
            "record": {k: v for k, v in lineage.items() if k != "datums" and not isinstance(v, (list, dict))},
            "files": len(entry.get("files") or []),
            "datums": len(datums),
            "first_datums": [{"id": d.get("id"), "version": d.get("version")} for d in datums[:FIRST_DATUMS]],
            "parents": [],
        }
        upstream = self.upstream(entry, lineage, role, m)
        if upstream is not None:
            parent = self.read(*upstream, depth, above, "written by", missing_ok=True)
            if parent is not None:
                node["parents"].append(parent)
        return node

    def upstream(
        self, entry: Mapping[str, Any], lineage: Mapping[str, Any], role: str, m: Mapping
    ) -> tuple[Location, str | None] | None:
        """Where to look for the dpipe output an input may be, and its format (``None``: look at the folder)."""
        kind, uri = lineage.get("kind"), str(entry.get("uri") or "")
        if kind == "delta":
            where = str(lineage.get("table_uri") or uri)
            return Location(where, self.options("delta"), at=_int(lineage.get("version"))), "delta"
        if kind == "iceberg":
            spec = (m.get("spec") or {}).get("source") or {} if role == "source" else {}
            if not isinstance(spec.get("catalog"), Mapping) or spec.get("table") != lineage.get("table"):
                return None  # which catalog it is was not recorded (a prediction's input)
            loc = Location(uri, self.options("iceberg"), lineage.get("table"), dict(spec["catalog"]))
            return replace(loc, at=_int(lineage.get("snapshot_id"))), "iceberg"
        if kind in ("postgresql", "duckdb"):
            if not lineage.get("table"):
                return None  # a query's rows
            return Location(uri, self.options(kind), lineage.get("table")), kind
        if kind == "files" and uri and not any(ch in uri for ch in "*?["):
            return Location(uri, self.options("parquet")), None  # a folder: a features output if it says so
        return None


def _role(m: Mapping) -> str:
    return "model" if m.get("kind") == "predict" else "pipeline_from"


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, str)) and str(value).lstrip("-").isdigit() else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact_url(text.splitlines()[0][:300]) if text else type(exc).__name__


def _short(exc: BaseException) -> str:
    """The first line of an error's message (a dpipe error's without its hint)."""
    text = (exc.message if isinstance(exc, DpipeError) else str(exc)).strip()
    return redact_url(text.splitlines()[0][:300]) if text else type(exc).__name__


# -- text ---------------------------------------------------------------------------------------
def format_tree(tree: Mapping[str, Any]) -> str:
    """The tree of :func:`lineage_tree` as indented text, one line per node (and one of versions).

    Examples
    --------
    >>> print(format_tree(lineage_tree("runs/scores")))
    """
    lines = [_label(tree)]
    lines += [("│  " if tree.get("parents") else "   ") + d for d in _details(tree)]
    _children(tree, "", lines)
    return "\n".join(lines)


def _children(node: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    kids = node.get("parents") or []
    for i, kid in enumerate(kids):
        last = i == len(kids) - 1
        lines.append(prefix + ("└─ " if last else "├─ ") + _label(kid))
        inner = prefix + ("   " if last else "│  ")
        lines += [inner + ("│  " if kid.get("parents") else "   ") + d for d in _details(kid)]
        _children(kid, inner, lines)


def _label(node: Mapping[str, Any]) -> str:
    role = f"{node['role']}: " if node.get("role") else ""
    if node.get("error"):
        return f"{role}{node.get('kind')} {node.get('uri')} (cannot read: {node['error']})"
    if node.get("kind") == "input":
        return f"{role}{node.get('format') or 'data'} {node.get('uri')} ({_input_bits(node)})"
    bits = [b for b in (_pin(node), _job(node), _when(node)) if b]
    replaced = f"replaced by run {str(node['replaced_by'])[:8]}" if node.get("replaced_by") else None
    notes = [n for n in (replaced, "cycle" if node.get("cycle") else None) if n]
    notes += ["depth limit: not followed further"] if node.get("truncated") else []
    return f"{role}{node.get('kind')} {node.get('uri')} ({'; '.join([', '.join(bits), *notes])})"


def _pin(node: Mapping[str, Any]) -> str:
    commit, format = node.get("commit") or {}, node.get("format")
    if commit.get("version") is not None:
        return f"{format} v{commit['version']}"
    if commit.get("snapshot_id") is not None:
        return f"{format} snapshot {commit['snapshot_id']}"
    return "" if format == "bundle" else str(format)


def _job(node: Mapping[str, Any]) -> str:
    bits = [f"job {node['job']}" if node.get("job") else "", f"run {node['run_id'][:8]}" if node.get("run_id") else ""]
    return ", ".join(b for b in bits if b)


def _when(node: Mapping[str, Any]) -> str:
    when = node.get("finished_at") or node.get("started_at")
    return str(when)[:19] if when else ""


def _details(node: Mapping[str, Any]) -> list[str]:
    if node.get("kind") == "input" or node.get("error"):
        return []
    bits = [f"spec {node['spec_hash'][:12]}"] if node.get("spec_hash") else []
    bits += [f"{k} {v}" for k, v in (node.get("versions") or {}).items()]
    ops = ((node.get("code") or {}).get("custom_ops")) or []
    bits += [
        f"op {o['op']} ({o.get('package') or 'no package'} {o.get('version') or ''})".replace(" )", ")") for o in ops
    ]
    return [", ".join(bits)] if bits else []


def _input_bits(node: Mapping[str, Any]) -> str:
    record = node.get("record") or {}
    pins = [f"{k} {record[k]}" for k in ("version", "snapshot_id", "as_of", "watermark") if record.get(k) is not None]
    if record.get("table") and node.get("format") in ("postgresql", "duckdb", "iceberg"):
        pins.insert(0, f"table {record['table']}")
    n, first = node.get("datums") or 0, node.get("first_datums") or []
    shown = [_relative(str(d.get("id")), str(node.get("uri") or "")) for d in first[:2]]
    datums = f"{n} datum{'s' if n != 1 else ''}"
    if shown:
        datums += ": " + ", ".join(shown) + (", …" if n > len(shown) else "")
    return ", ".join([*pins, datums])


def _relative(datum: str, base: str) -> str:
    """A datum's id as a person reads it: relative to its input's folder (``date=2024-01-01/part-0.parquet``)."""
    prefix = base.rstrip("/") + "/"
    return datum[len(prefix) :] if base and datum.startswith(prefix) else datum.rsplit("/", 1)[-1] or datum
