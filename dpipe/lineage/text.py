"""The lineage tree as text for a person (``dpipe lineage OUTPUT``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_tree"]


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
    lines = [", ".join(bits)] if bits else []
    runs = node.get("runs") or []
    if len(runs) > 1:  # an incremental job: the runs its state records, the latest last
        shown = [f"{str(r.get('run_id'))[:8]} (+{r.get('datums')} datums)" for r in runs[-4:]]
        more = f"{len(runs) - 4} earlier, " if len(runs) > 4 else ""
        lines.append(f"runs: {more}{', '.join(shown)}")
    return lines


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
