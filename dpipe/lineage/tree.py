"""The tree upstream of an output: the bundle it was made with, its inputs, its previous run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dpipe.errors import DpipeError
from dpipe.lineage.readers import Found, Location, _read_json, display, find, read_output
from dpipe.spec.base import redact_url

__all__ = ["FIRST_DATUMS", "OUTPUT_KINDS", "lineage_tree"]

#: How many datums an input node shows.
FIRST_DATUMS = 3

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
    found = find(loc, format)
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
            "uri": display(found.uri),
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
        runs = _runs(found)
        if runs:
            node["runs"] = runs
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
            found = find(loc, format)
        except Exception as exc:  # noqa: BLE001 - one unreadable parent must not hide the rest of the tree
            return {"kind": format or "output", "role": role, "uri": display(loc.uri), "error": _short(exc)}
        if found is None and (missing_ok and loc.run_id is None):
            return None
        if found is None:
            what = f"run {loc.run_id} is not there" if loc.run_id else "no dpipe output there"
            return {"kind": format or "output", "role": role, "uri": display(loc.uri), "error": what}
        now = found.manifest.get("run_id")
        if loc.run_id and now and now != loc.run_id:  # a folder keeps its latest run only
            kind = OUTPUT_KINDS.get(found.manifest.get("kind"), "bundle")
            return {"kind": kind, "role": role, "uri": display(found.uri), "format": found.format,
                    "run_id": loc.run_id, "replaced_by": now, "parents": []}  # fmt: skip
        return self.output(found, depth, above, role)

    def input(self, entry: Mapping[str, Any], role: str, m: Mapping, depth: int, above: frozenset) -> dict[str, Any]:
        nested = entry.get("lineage")
        lineage: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
        datums = [d for d in lineage.get("datums") or [] if isinstance(d, Mapping)]
        node: dict[str, Any] = {
            "kind": "input",
            "role": role,
            "uri": display(str(entry.get("uri") or lineage.get("table_uri") or lineage.get("uri") or "")),
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


def _short(exc: BaseException) -> str:
    """The first line of an error's message (a dpipe error's without its hint)."""
    text = (exc.message if isinstance(exc, DpipeError) else str(exc)).strip()
    return redact_url(text.splitlines()[0][:300]) if text else type(exc).__name__


def _runs(found: Found) -> list[dict[str, Any]]:
    """The committed runs a bundle's run state lists (an incremental job's history, oldest first):
    the earlier runs' bundles were replaced, their record is here."""
    if found.format != "bundle" or found.loc is None:
        return []
    try:
        state = _read_json(found.loc, "state.json")
    except Exception:  # noqa: BLE001 - a state that cannot be read leaves the tree without the history
        return []
    runs = state.get("runs") if isinstance(state, Mapping) else None
    keys = ("run_id", "finished_at", "datums")
    return [{k: r.get(k) for k in keys} for r in runs or [] if isinstance(r, Mapping)]
