"""What differs between two versions of a model: metrics, training parameters, features, rows, spec."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dpipe.registry.store import Registry, Version

#: Spec sections that say where and how a job ran, not what it learnt: left out of ``spec``.
NOT_COMPARED = ("output", "cluster", "lineage")


def diff(registry: Registry, name: str, a: int | str, b: int | str) -> dict[str, Any]:
    """The differences between versions ``a`` and ``b`` of ``name`` (numbers or aliases).

    Returns ``{"name", "a", "b", "metrics", "params", "features", "rows", "spec"}``: ``metrics``
    per split and metric ``{"a", "b", "delta"}``; ``params`` the ``train`` settings that differ
    (``params.max_depth``...); ``features`` the model inputs ``added`` and ``removed`` in ``b``;
    ``rows`` the row counts that differ; ``spec`` every other spec key that differs (dotted paths
    such as ``features[2].columns``; ``output``, ``cluster`` and ``lineage`` are not compared).
    Each changed key maps to ``{"a": value, "b": value}`` (``None``: not set in that version).
    """
    va, vb = registry.show(name, a), registry.show(name, b)
    ma, mb = _manifest(registry, va), _manifest(registry, vb)
    spec_a, spec_b = dict(ma.get("spec") or {}), dict(mb.get("spec") or {})
    features_a = list((ma.get("features") or {}).get("features") or va.record.get("features") or [])
    features_b = list((mb.get("features") or {}).get("features") or vb.record.get("features") or [])
    return {
        "name": name,
        "a": _summary(va),
        "b": _summary(vb),
        "metrics": _metrics(va.metrics, vb.metrics),
        "params": changed(flatten(spec_a.get("train") or {}), flatten(spec_b.get("train") or {})),
        "features": {
            "added": [f for f in features_b if f not in features_a],
            "removed": [f for f in features_a if f not in features_b],
        },
        "rows": changed(flatten(ma.get("rows") or {}), flatten(mb.get("rows") or {})),
        "spec": changed(
            flatten({k: v for k, v in spec_a.items() if k not in (*NOT_COMPARED, "train")}),
            flatten({k: v for k, v in spec_b.items() if k not in (*NOT_COMPARED, "train")}),
        ),
    }


def _manifest(registry: Registry, version: Version) -> dict:
    data = json.loads(registry.read(version, "manifest.json"))
    return data if isinstance(data, dict) else {}


def _summary(version: Version) -> dict[str, Any]:
    r = version.record
    return {
        "version": version.number,
        "aliases": list(version.aliases),
        "run_id": r.get("run_id"),
        "job": r.get("job"),
        "registered_at": r.get("registered_at"),
    }


def _metrics(a: dict, b: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in sorted({k for k, v in {**a, **b}.items() if isinstance(v, dict)}):
        xa, xb = a.get(split) or {}, b.get(split) or {}
        out[split] = {
            m: {"a": xa.get(m), "b": xb.get(m), "delta": _delta(xa.get(m), xb.get(m))} for m in sorted({*xa, *xb})
        }
    for key in ("best_iteration", "num_boosted_rounds"):
        if a.get(key) != b.get(key):
            out[key] = {"a": a.get(key), "b": b.get(key)}
    return out


def _delta(x: Any, y: Any) -> float | None:
    numbers = (int, float)
    return y - x if isinstance(x, numbers) and isinstance(y, numbers) else None


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, {"c": 2}]}}`` -> ``{"a.b[0]": 1, "a.b[1].c": 2}``."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list) and data:
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: data} if prefix else {}


def changed(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The keys whose values differ, each ``{"a": ..., "b": ...}``."""
    return {k: {"a": a.get(k), "b": b.get(k)} for k in sorted({*a, *b}) if a.get(k) != b.get(k)}


def format_diff(d: dict[str, Any]) -> str:
    """The text ``dpipe registry diff`` prints."""
    a, b = d["a"]["version"], d["b"]["version"]
    lines = [f"{d['name']}: version {a} -> version {b}"]
    lines.append("metrics:")
    for split, values in d["metrics"].items():
        if "a" in values and "delta" not in values:  # best_iteration and the like
            lines.append(f"  {split}: {values['a']} -> {values['b']}")
            continue
        for metric, v in values.items():
            delta = f" ({v['delta']:+.6g})" if v["delta"] is not None else ""
            lines.append(f"  {split}.{metric}: {_text(v['a'])} -> {_text(v['b'])}{delta}")
    for section in ("params", "rows", "spec"):
        lines.append(f"{section}:" + ("" if d[section] else " no difference"))
        lines.extend(f"  {k}: {_text(v['a'])} -> {_text(v['b'])}" for k, v in d[section].items())
    f = d["features"]
    if f["added"] or f["removed"]:
        lines.append(f"features: added {f['added'] or 'none'}, removed {f['removed'] or 'none'}")
    else:
        lines.append("features: no difference")
    return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, default=str) if not isinstance(value, str) else value
