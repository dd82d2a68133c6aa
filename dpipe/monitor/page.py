"""``drift.html``: the drift report as one self-contained page."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

_STYLE = (
    "body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
    "td.name{text-align:left}td.crossed{background:#f8d0d0;font-weight:bold}.ok{color:#186a18}.bad{color:#a01010}"
)


def render_html(report: Mapping[str, Any]) -> str:
    """``drift.html``: one self-contained page (no script, no fetch), every string escaped."""
    crossed = {(c["statistic"], c["name"]) for c in report["crossed"]}
    status = (
        f"<p class='bad'>DRIFT: {len(report['crossed'])} threshold(s) crossed</p>"
        if report["crossed"]
        else "<p class='ok'>no threshold crossed</p>"
    )
    facts = {
        "bundle": report["bundle"],
        "model job": report.get("model_job"),
        "batch": report["input"].get("uri"),
        "rows": f"{report['rows']} (reference: {report.get('reference_rows')})",
        "labels": report["labels"],
        "thresholds": ", ".join(f"{k}={v}" for k, v in report["thresholds"].items()),
        "finished at": report["finished_at"],
    }
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dpipe drift report</title>",
        f"<style>{_STYLE}</style></head><body><h1>Drift report</h1>",
        status,
        _table(["", ""], [[_cell(k, name=True), _cell(v, name=True)] for k, v in facts.items()]),
    ]
    if report["crossed"]:
        rows = [
            [_cell(c["statistic"], name=True), _cell(c["name"], name=True), _cell(c["value"]), _cell(c["threshold"])]
            for c in report["crossed"]
        ]
        parts += ["<h2>Crossed thresholds</h2>", _table(["statistic", "name", "value", "threshold"], rows)]
    parts += ["<h2>Features</h2>", _stats_table(report["features"], crossed, "")]
    prediction = report.get("prediction")
    if prediction:
        parts += ["<h2>Predictions</h2>", _stats_table(prediction["columns"], crossed, "prediction_")]
    if report.get("metrics"):
        rows = [
            [
                _cell(m, name=True),
                _cell(v["valid"]),
                _cell(v["current"]),
                _cell(v["drop"], ("metric_drop", m) in crossed),
            ]
            for m, v in report["metrics"].items()
        ]
        parts += ["<h2>Metrics</h2>", _table(["metric", "validation", "batch", "relative drop"], rows)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _stats_table(table: Mapping[str, Mapping[str, Any]], crossed: set[tuple[str, str]], prefix: str) -> str:
    def stat(name: str, key: str, field: str | None = None) -> str:
        return _cell(table[name].get(field or key), (prefix + key, name) in crossed)

    rows = []
    for name, s in table.items():
        examples = ", ".join(f"{e['value']} ({e['rows']})" for e in s.get("unseen_examples") or [])
        rows.append(
            [
                _cell(name, name=True),
                _cell(s["kind"], name=True),
                stat(name, "psi"),
                stat(name, "js"),
                stat(name, "ks"),
                _cell(s.get("reference_missing_rate")),
                stat(name, "missing_rate", "missing_rate"),
                stat(name, "unseen_rate"),
                _cell(examples, name=True),
            ]
        )
    head = ["name", "kind", "PSI", "JS", "KS", "missing (ref)", "missing", "unseen", "unseen values"]
    return _table(head, rows)


def _cell(value: Any, crossed: bool = False, *, name: bool = False) -> str:
    if isinstance(value, float):
        text = f"{value:.4f}"
    else:
        text = "" if value is None else str(value)
    cls = "crossed" if crossed else ("name" if name else "")
    return f"<td class='{cls}'>{html.escape(text)}</td>" if cls else f"<td>{html.escape(text)}</td>"


def _table(head: list[str], rows: list[list[str]]) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f"<table><tr>{header}</tr>{body}</table>"
