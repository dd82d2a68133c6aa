"""The data's sections: row accounting, data quality, the fitted pipeline, lineage, the spec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dpipe.report.blocks import Html, pair, section, table
from dpipe.report.model import difference, headers
from dpipe.report.svg import number, text
from dpipe.report.view import BundleView


# -- rows, quality, pipeline, lineage -------------------------------------------------------------
def rows(views: Sequence[BundleView]) -> str:
    per_view = [dict(v.manifest.get("rows") or {}) for v in views]
    names = list(dict.fromkeys(k for r in per_view for k in r))
    out = []
    for name in names:
        values = [r.get(name) for r in per_view]
        shown = [", ".join(f"{k}: {number(n)}" for k, n in x.items()) if isinstance(x, Mapping) else x for x in values]
        out.append([name.replace("_", " "), *shown, *([difference(name, *values)] if len(views) == 2 else [])])
    if not out:
        return section("rows", "Row accounting", '<p class="note">The manifest has no row accounting.</p>')
    note = "<p>read = quarantined + dropped (no label) + dropped (filters) + train + valid (+ test)</p>"
    return section("rows", "Row accounting", note + table(headers("rows", views), out))


def quality(views: Sequence[BundleView]) -> str:
    def one(view: BundleView) -> str:
        q = view.manifest.get("quality") or {}
        checks = q.get("checks") or []
        parts = [
            f"<p>{number(q.get('quarantined_rows', 0))} row(s) quarantined"
            + (f", written to <code>{text(q['quarantine'])}/</code>" if q.get("quarantine") else "")
            + "</p>"
        ]
        if checks:
            keys = ["name", "check", "action", "violations", "quarantined", "value"]
            parts.append(table(keys, [[c.get(k) for k in keys] for c in checks]))
        else:
            parts.append('<p class="note">No quality checks in this job.</p>')
        bad = q.get("bad_files") or []
        if bad:
            parts.append("<h4>Skipped unreadable files</h4>")
            parts.append(table(("file", "error"), [[b.get("file"), b.get("error")] for b in bad]))
        return "".join(parts)

    return section("quality", "Data quality", pair(views, one))


def pipeline(views: Sequence[BundleView]) -> str:
    from dpipe.inspection import columns_text, state_lines, step_columns

    def one(view: BundleView) -> str:
        p = view.pipeline
        if p is None:
            return '<p class="note">No pipeline.json in this bundle.</p>'
        model_input = p.get("model_input") or view.manifest.get("features") or {}
        features = list(model_input.get("features") or [])
        categorical = set(model_input.get("categorical") or [])
        parts = [
            f"<p><strong>{len(features)} features</strong>: "
            + ", ".join(text(f) + (" <em>(categorical)</em>" if f in categorical else "") for f in features)
            + "</p>"
        ]
        phases = view.manifest.get("fit_phases")
        if phases is not None:
            parts.append(f"<p>Fitted in {len(phases)} pass(es) over the data.</p>")
        steps = []
        for entry in p.get("ops") or []:
            spec = entry.get("spec") or {}
            inputs, outputs = step_columns(entry)
            state = state_lines(entry.get("state"), list(dict.fromkeys(inputs + outputs)), 110)
            steps.append(
                [
                    entry.get("where", "?"),
                    spec.get("op", "?"),
                    columns_text(inputs, outputs),
                    Html("<br>".join(text(line) for line in state)),
                ]
            )
        if steps:
            parts.append(table(("step", "op", "columns", "fitted state"), steps, cls="state"))
        else:
            parts.append('<p class="note">No feature steps: the model reads the source columns as they are.</p>')
        return "".join(parts)

    return section("pipeline", "Fitted feature pipeline", pair(views, one))


def lineage(views: Sequence[BundleView]) -> str:
    def one(view: BundleView) -> str:
        if view.lineage is not None:
            from dpipe.lineage import format_tree

            return f"<pre>{text(format_tree(dict(view.lineage)))}</pre>"
        return _manifest_lineage(view.manifest)

    return section("lineage", "Lineage", pair(views, one))


def _manifest_lineage(m: Mapping[str, Any]) -> str:
    source = m.get("input") or {}
    record = dict(source.get("lineage") or {})
    datums = record.pop("datums", None) or []
    rows = [
        ["source", f"{source.get('format', '?')} {source.get('uri', '?')}"],
        ["datums", f"{len(datums)}" + (f" (first: {datums[0].get('id')})" if datums else "")],
        *[[k, v] for k, v in record.items() if not isinstance(v, (dict, list))],
        *[
            [f"table {name}", f"{t.get('format', '?')} {t.get('uri', '?')}"]
            for name, t in (m.get("tables") or {}).items()
        ],
        ["run", m.get("run_id")],
        ["spec hash", str(m.get("spec_hash") or "–")[:12]],
    ]
    if m.get("parent"):
        rows.append(["previous run", str((m["parent"] or {}).get("run_id", m["parent"]))])
    return table(("", ""), rows)


def spec(views: Sequence[BundleView]) -> str:
    import json

    def one(view: BundleView) -> str:
        resolved = view.manifest.get("spec")
        if not resolved:
            return '<p class="note">No spec in the manifest.</p>'
        return f"<details><summary>resolved spec (secrets removed)</summary><pre>{text(json.dumps(resolved, indent=2, default=str))}</pre></details>"

    return section("spec", "Job spec", pair(views, one))


# -- tuning ---------------------------------------------------------------------------------------
def tuning(views: Sequence[BundleView]) -> str:
    """The best trial's parameters and every trial of a tuned run (nothing for other bundles)."""
    if not any(v.tuning for v in views):
        return ""

    def one(view: BundleView) -> str:
        t = view.tuning
        if not t:
            return '<p class="note">This bundle was not tuned.</p>'
        best = t.get("best") or {}
        intro = (
            f"<p>Study {text(t.get('study'))}: {len(t.get('trials') or [])} trials, {text(t.get('metric'))}"
            f" ({text(t.get('direction'))}); best trial {text(best.get('trial'))} with"
            f" {text(number(best.get('value')))}.</p>"
        )
        params = table(["parameter", "best value"], sorted((k, v) for k, v in (best.get("params") or {}).items()))
        names = sorted({k for trial in t.get("trials") or [] for k in (trial.get("params") or {})})
        rows = [
            [
                trial.get("number"),
                trial.get("state"),
                number(trial.get("value")),
                trial.get("rounds"),
                number(trial.get("seconds")),
                *[(trial.get("params") or {}).get(n) for n in names],
            ]
            for trial in t.get("trials") or []
        ]
        trials = table(["trial", "state", str(t.get("metric")), "rounds", "seconds", *names], rows)
        return intro + params + trials

    return section("tuning", "Tuning", pair(views, one))
