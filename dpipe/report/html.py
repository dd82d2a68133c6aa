"""The report page: one HTML file with inline CSS and inline SVG, of one bundle or two side by side.

Every section takes the list of bundles shown (one, or two with ``--compare``): curves of two
bundles are drawn in one chart in two colours, tables get a column per bundle and the difference,
and what cannot be overlaid (a confusion matrix, the fitted pipeline) is shown side by side.
Each chart is an ``<svg>`` inside ``<figure data-plot="NAME">`` (``data-side`` names the rows it
was measured on), so a test can count them. Every string read from a bundle is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dpipe.report import svg
from dpipe.report.svg import PALETTE, Series, number, text
from dpipe.report.view import BundleView

#: Side of the rows -> its heading; the order sections appear in.
SIDES = {
    "valid": "Validation rows",
    "test": "Test rows (held out: never seen by training, early stopping or any fitted statistic)",
}
#: Column headings of the sides.
SIDE_NAMES = {"train": "train", "valid": "valid", "test": "test (held out)"}
#: The metrics of each slice value shown in its table, by kind (the first one is drawn).
SLICE_METRICS = {
    "binary": ("auc", "logloss", "accuracy", "precision", "recall", "positive_rate"),
    "regression": ("rmse", "mae", "r2", "bias", "label_mean"),
    "multiclass": ("accuracy", "mlogloss", "macro_f1"),
}
#: The metric drawn per slice value, by kind.
SLICE_METRIC = {kind: names[0] for kind, names in SLICE_METRICS.items()}
#: Metrics where a lower value is better (the difference column is coloured by it).
LOWER_IS_BETTER = {"logloss", "mlogloss", "brier", "rmse", "mae", "error", "merror", "median_abs_error"}
TOP_FEATURES = 25


class Html(str):
    """A fragment already escaped: table cells built from it are not escaped again."""


def _cell(value: Any) -> str:
    if isinstance(value, Html):
        return value
    if isinstance(value, bool) or value is None:
        return text("–" if value is None else str(value).lower())
    if isinstance(value, (int, float)):
        return number(value)
    return text(value)


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], *, cls: str = "") -> str:
    head = "".join(f"<th>{_cell(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure(plot: str, chart: str, caption: str, **data: Any) -> str:
    attrs = "".join(f' data-{k}="{text(v)}"' for k, v in data.items() if v is not None)
    return f'<figure data-plot="{text(plot)}"{attrs}><figcaption>{text(caption)}</figcaption>{chart}</figure>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{text(title)}</h2>{body}</section>'


def _labels(views: Sequence[BundleView]) -> list[str]:
    if len(views) == 1:
        return [views[0].name]
    names = [v.name for v in views]
    return [f"{'AB'[i]}: {n}" for i, n in enumerate(names)] if len(set(names)) < len(names) else names


def _pair(views: Sequence[BundleView], render: Callable[[BundleView], str]) -> str:
    if len(views) == 1:
        return render(views[0])
    labels = _labels(views)
    cells = "".join(f'<div><h3 class="bundle">{text(labels[i])}</h3>{render(v)}</div>' for i, v in enumerate(views))
    return f'<div class="pair">{cells}</div>'


# -- header and summary -------------------------------------------------------------------------
def header(views: Sequence[BundleView]) -> str:
    labels = _labels(views)
    title = " vs ".join(labels)
    rows = []
    for label, v in zip(labels, views):
        m, metrics = v.manifest, v.metrics or {}
        versions = m.get("versions") or {}
        shown = ", ".join(f"{k} {versions[k]}" for k in ("dpipe", "xgboost", "dask") if k in versions)
        rows.append(
            (
                label,
                v.uri,
                str(m.get("run_id") or "–")[:12],
                m.get("finished_at") or "–",
                v.objective or "–",
                metrics.get("best_iteration"),
                shown or m.get("dpipe_version") or "–",
            )
        )
    info = table(("bundle", "uri", "run", "finished", "objective", "best iteration", "versions"), rows)
    notes = [f"{labels[i]}: {note}" if len(views) > 1 else note for i, v in enumerate(views) for note in v.missing]
    missing = (
        '<div class="note"><strong>Not shown:</strong><ul>'
        + "".join(f"<li>{text(n)}</li>" for n in notes)
        + "</ul></div>"
        if notes
        else ""
    )
    return f"<header><h1>dpipe report: {text(title)}</h1>{info}{missing}</header>"


def _diff(name: str, a: Any, b: Any) -> Html:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or isinstance(a, bool):
        return Html("–")
    delta = b - a
    better = (delta < 0) if name in LOWER_IS_BETTER else (delta > 0)
    tone = "same" if delta == 0 else ("better" if better else "worse")
    return Html(f'<span class="{tone}">{"+" if delta > 0 else ""}{number(delta)}</span>')


def _metric_rows(names: Iterable[str], per_view: Sequence[Mapping[str, Any]], *, diff: bool) -> list[list[Any]]:
    rows = []
    for name in names:
        values = [m.get(name) for m in per_view]
        if all(not isinstance(v, (int, float)) for v in values):
            continue
        row: list[Any] = [name, *values]
        if diff:
            row.append(_diff(name, values[0], values[1]))
        rows.append(row)
    return rows


def _headers(first: str, views: Sequence[BundleView]) -> list[str]:
    labels = _labels(views)
    return [first, *labels, *(["difference"] if len(views) == 2 else [])]


def summary(views: Sequence[BundleView]) -> str:
    """XGBoost's metrics at the best iteration, then evaluation.json's, each side apart.

    One bundle: a column per side. Two: a table per side, a column per bundle and the difference.
    """
    trained = [s for s in ("train", "valid", "test") if any((v.metrics or {}).get(s) for v in views)]
    evaluated = _sides(views)
    groups = [
        ("XGBoost's metrics at the best iteration", trained, lambda v, s: (v.metrics or {}).get(s) or {}),
        (
            "Evaluation (evaluation.json)",
            evaluated,
            lambda v, s: {"rows": _side(v, s).get("rows"), **(_side(v, s).get("metrics") or {})},
        ),
    ]
    parts = []
    for title, sides, of in groups:
        if not sides:
            continue
        if len(views) == 1:
            per_side = [dict(of(views[0], s)) for s in sides]
            names = list(dict.fromkeys(k for m in per_side for k in m if k != "per_class"))
            parts.append(f"<h3>{text(title)}</h3>")
            parts.append(
                table(["metric", *[SIDE_NAMES.get(s, s) for s in sides]], _metric_rows(names, per_side, diff=False))
            )
            continue
        for side in sides:
            per_view = [dict(of(v, side)) for v in views]
            names = list(dict.fromkeys(k for m in per_view for k in m if k != "per_class"))
            parts.append(f"<h3>{text(title)}: {text(SIDE_NAMES.get(side, side))}</h3>")
            parts.append(table(_headers("metric", views), _metric_rows(names, per_view, diff=True)))
    if not parts:
        parts.append('<p class="note">No metrics in this bundle.</p>')
    return section("summary", "Metrics", "".join(parts))


def _sides(views: Sequence[BundleView]) -> list[str]:
    found = [s for v in views for s in ((v.evaluation or {}).get("sides") or {})]
    ordered = [s for s in SIDES if s in found]
    return ordered + [s for s in dict.fromkeys(found) if s not in SIDES]


def _side(view: BundleView, side: str) -> Mapping[str, Any]:
    return ((view.evaluation or {}).get("sides") or {}).get(side) or {}


# -- evaluation ---------------------------------------------------------------------------------
def evaluation(views: Sequence[BundleView]) -> str:
    sides = _sides(views)
    if not sides:
        return section(
            "evaluation",
            "Evaluation",
            '<p class="note">No evaluation.json: ROC, precision-recall and calibration curves, the'
            " confusion matrix and per-slice metrics are not available for this bundle.</p>",
        )
    labels = _labels(views)
    body = []
    for side in sides:
        shown = [(labels[i], PALETTE[i], v, _side(v, side)) for i, v in enumerate(views) if _side(v, side)]
        kinds = {(v.evaluation or {}).get("kind") for _, _, v, _ in shown}
        figures: list[str] = []
        for kind in sorted(k for k in kinds if k):
            of_kind = [s for s in shown if (s[2].evaluation or {}).get("kind") == kind]
            figures += CURVES[kind](of_kind, side)
            figures += _confusions(of_kind, side)
        body.append(f"<h3>{text(SIDES.get(side, side))}</h3>")
        body.append(f'<div class="plots">{"".join(figures)}</div>')
        body.append(_slices(shown, side))
    return section("evaluation", "Evaluation", "".join(body))


Shown = tuple[str, str, BundleView, Mapping[str, Any]]


def _binary_curves(shown: Sequence[Shown], side: str) -> list[str]:
    def series(key: str, x: str, y: str) -> list[Series]:
        out = []
        for label, color, _, data in shown:
            curve = (data.get("curves") or {}).get(key) or {}
            if curve.get(x):
                out.append(Series(label, curve[x], curve[y], color, markers=key == "calibration"))
        return out

    figures = []
    unit = ((0.0, 1.0), (0.0, 1.0))
    roc = series("roc", "fpr", "tpr")
    if roc:
        aucs = _each(shown, "auc")
        chart = svg.lines(
            roc,
            x_label="false positive rate",
            y_label="true positive rate",
            x_range=unit[0],
            y_range=unit[1],
            diagonal=True,
        )
        figures.append(figure("roc", chart, f"ROC curve (AUC {aucs})", side=side))
    pr = series("pr", "recall", "precision")
    if pr:
        chart = svg.lines(pr, x_label="recall", y_label="precision", x_range=unit[0], y_range=unit[1])
        aps = _each(shown, "aucpr")
        figures.append(figure("pr", chart, f"Precision-recall (average precision {aps})", side=side))
    calibration = series("calibration", "predicted", "observed")
    if calibration:
        chart = svg.lines(
            calibration,
            x_label="mean prediction",
            y_label="fraction positive",
            x_range=unit[0],
            y_range=unit[1],
            diagonal=True,
        )
        figures.append(figure("calibration", chart, "Calibration (perfect on the dotted line)", side=side))
    return figures


def _each(shown: Sequence[Shown], metric: str) -> str:
    """``0.7625``, or ``A 0.7625, B 0.7711`` for two bundles."""
    values = [(label, number((d.get("metrics") or {}).get(metric))) for label, _, _, d in shown]
    return values[0][1] if len(values) == 1 else ", ".join(f"{label} {v}" for label, v in values)


def _regression_curves(shown: Sequence[Shown], side: str) -> list[str]:
    figures = []
    hists: list[tuple[str, str, Mapping[str, Any]]] = []
    for label, color, _, d in shown:
        found = (d.get("curves") or {}).get("residuals")
        if found and found.get("counts"):
            hists.append((label, color, found))
    if hists:
        # Two bundles' histograms have their own bins: draw each on the first one's edges.
        edges = hists[0][2]["edges"]
        series = [(label, _rebin(h["edges"], h["counts"], edges), color) for label, color, h in hists]
        chart = svg.histogram(edges, series, x_label="prediction − label")
        figures.append(figure("residuals", chart, "Residuals (to the 99th percentile of |error|)", side=side))
    for label, _, _, d in shown:
        grid = (d.get("curves") or {}).get("predicted_vs_actual")
        if grid and grid.get("cells"):
            chart = svg.density(grid["cells"], grid["grid"], grid["range"], x_label="label", y_label="prediction")
            caption = f"Predicted against actual{f' ({label})' if len(shown) > 1 else ''}"
            figures.append(figure("predicted-vs-actual", chart, caption, side=side))
    return figures


def _rebin(edges: Sequence[float], counts: Sequence[float], target: Sequence[float]) -> list[float]:
    out = [0.0] * (len(target) - 1)
    width = (target[-1] - target[0]) or 1.0
    for i, c in enumerate(counts):
        middle = (edges[i] + edges[i + 1]) / 2
        j = int((middle - target[0]) / width * len(out))
        if 0 <= j < len(out):
            out[j] += c
    return out


CURVES: dict[str, Callable[[Sequence[Shown], str], list[str]]] = {
    "binary": _binary_curves,
    "regression": _regression_curves,
    "multiclass": lambda shown, side: [],
}


def _confusions(shown: Sequence[Shown], side: str) -> list[str]:
    figures = []
    for label, _, _, d in shown:
        confusion = d.get("confusion")
        if not confusion or not confusion.get("matrix"):
            continue
        chart = svg.matrix(confusion["matrix"], confusion["labels"], x_label="predicted", y_label="actual")
        at = f" at threshold {number(confusion['threshold'])}" if confusion.get("threshold") is not None else ""
        caption = f"Confusion matrix{at}{f' ({label})' if len(shown) > 1 else ''}"
        figures.append(figure("confusion", chart, caption, side=side))
    return figures


def _slices(shown: Sequence[Shown], side: str) -> str:
    columns = list(dict.fromkeys(c for _, _, _, d in shown for c in (d.get("slices") or {})))
    out = []
    for column in columns:
        kind = next(
            ((v.evaluation or {}).get("kind") for _, _, v, d in shown if column in (d.get("slices") or {})), None
        )
        names = list(SLICE_METRICS.get(str(kind), ()))
        metric = names[0] if names else "rows"
        values: dict[str, list[Any]] = {}
        for i, (_, _, _, d) in enumerate(shown):
            for entry in (d.get("slices") or {}).get(column) or []:
                values.setdefault(str(entry["value"]), [None] * len(shown))[i] = entry
        rows = []
        for value, entries in values.items():
            for (label, _, _, _), entry in zip(shown, entries):
                if entry is not None:
                    m = entry.get("metrics") or {}
                    rows.append(
                        [value, *([label] if len(shown) > 1 else []), entry.get("rows"), *[m.get(n) for n in names]]
                    )
        head = ["value", *(["bundle"] if len(shown) > 1 else []), "rows", *names]
        categories = list(values)
        series = [
            (label, [((e or {}).get("metrics") or {}).get(metric) for e in (values[c][i] for c in categories)], color)
            for i, (label, color, _, _) in enumerate(shown)
        ]
        chart = svg.bars(categories, series, x_label=metric)
        out.append(f"<h4>Per value of {text(column)}</h4>")
        out.append(
            '<div class="plots">' + figure("slice", chart, f"{metric} by {column}", side=side, column=column) + "</div>"
        )
        out.append(table(head, rows))
    return "".join(out)


# -- learning curves, importance ------------------------------------------------------------------
def learning(views: Sequence[BundleView]) -> str:
    labels = _labels(views)
    histories = [((v.metrics or {}).get("history") or {}) for v in views]
    metrics = list(dict.fromkeys(m for h in histories for s in h.values() for m in s))
    figures = []
    for metric in metrics:
        series = []
        for i, history in enumerate(histories):
            for j, (side, values) in enumerate(history.items()):
                ys = values.get(metric) or []
                if not ys:
                    continue
                name = side if len(views) == 1 else f"{labels[i]} {side}"
                color = PALETTE[i] if len(views) > 1 else PALETTE[j % len(PALETTE)]
                series.append(Series(name, list(range(1, len(ys) + 1)), ys, color, dashed=side == "train"))
        if series:
            best = [((v.metrics or {}).get("best_iteration")) for v in views]
            shown = ", ".join(number(b + 1) for b in best if isinstance(b, int))
            chart = svg.lines(series, x_label="boosting round", y_label=metric)
            figures.append(figure("learning", chart, f"{metric} per round (best round {shown or '–'})", metric=metric))
    if not figures:
        return section("learning", "Learning curves", '<p class="note">No per-round history in metrics.json.</p>')
    return section("learning", "Learning curves", f'<div class="plots">{"".join(figures)}</div>')


def importance(views: Sequence[BundleView]) -> str:
    labels = _labels(views)
    found = [v.importance for v in views]
    if not any(found):
        return section("importance", "Feature importance", '<p class="note">No model to read importance from.</p>')
    figures = []
    for kind, title in (("total_gain", "total gain"), ("total_cover", "total cover")):
        shares = []
        for imp in found:
            scores = dict((imp or {}).get(kind) or {})
            total = sum(scores.values()) or 1.0
            shares.append({k: 100 * s / total for k, s in scores.items()})
        ranked = sorted({f for s in shares for f in s}, key=lambda f: tuple(-s.get(f, 0.0) for s in shares))
        top = ranked[:TOP_FEATURES]
        series = [(labels[i], [s.get(f, 0.0) for f in top], PALETTE[i]) for i, s in enumerate(shares)]
        chart = svg.bars(top, series, x_label=f"% of {title}")
        caption = f"Feature importance: share of {title}" + (
            f" (top {TOP_FEATURES})" if len(ranked) > TOP_FEATURES else ""
        )
        figures.append(figure("importance", chart, caption, kind=kind))
    return section("importance", "Feature importance", f'<div class="plots">{"".join(figures)}</div>')


# -- rows, quality, pipeline, lineage -------------------------------------------------------------
def rows(views: Sequence[BundleView]) -> str:
    per_view = [dict(v.manifest.get("rows") or {}) for v in views]
    names = list(dict.fromkeys(k for r in per_view for k in r))
    out = []
    for name in names:
        values = [r.get(name) for r in per_view]
        shown = [", ".join(f"{k}: {number(n)}" for k, n in x.items()) if isinstance(x, Mapping) else x for x in values]
        out.append([name.replace("_", " "), *shown, *([_diff(name, *values)] if len(views) == 2 else [])])
    if not out:
        return section("rows", "Row accounting", '<p class="note">The manifest has no row accounting.</p>')
    note = "<p>read = quarantined + dropped (no label) + dropped (filters) + train + valid (+ test)</p>"
    return section("rows", "Row accounting", note + table(_headers("rows", views), out))


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

    return section("quality", "Data quality", _pair(views, one))


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

    return section("pipeline", "Fitted feature pipeline", _pair(views, one))


def lineage(views: Sequence[BundleView]) -> str:
    def one(view: BundleView) -> str:
        if view.lineage is not None:
            from dpipe.lineage import format_tree

            return f"<pre>{text(format_tree(dict(view.lineage)))}</pre>"
        return _manifest_lineage(view.manifest)

    return section("lineage", "Lineage", _pair(views, one))


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

    return section("spec", "Job spec", _pair(views, one))


#: The page's sections, in order: (anchor, navigation title, renderer).
SECTIONS: tuple[tuple[str, str, Callable[[Sequence[BundleView]], str]], ...] = (
    ("summary", "Metrics", summary),
    ("evaluation", "Evaluation", evaluation),
    ("learning", "Learning curves", learning),
    ("importance", "Importance", importance),
    ("rows", "Rows", rows),
    ("quality", "Data quality", quality),
    ("pipeline", "Pipeline", pipeline),
    ("lineage", "Lineage", lineage),
    ("spec", "Spec", spec),
)

CSS = """
:root { --ink: #1d2733; --muted: #5b6876; --line: #d9dee4; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; background: #fff; }
header, main, nav { max-width: 1280px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 18px; }
h1 { font-size: 22px; margin: 0 0 12px; }
h2 { font-size: 18px; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 15px; margin: 20px 0 8px; }
h4 { font-size: 14px; margin: 14px 0 6px; color: var(--muted); }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: 8px 24px;
      z-index: 1; }
nav a { margin-right: 14px; color: var(--ink); text-decoration: none; font-weight: 600; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
table.state td:last-child { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
figcaption { font-weight: 600; margin-bottom: 4px; max-width: 440px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
.pair > div { min-width: 0; overflow-x: auto; }
.note { background: #fff8e6; border: 1px solid #f0d58c; border-radius: 6px; padding: 6px 12px; }
.better { color: #1e7b34; font-weight: 600; } .worse { color: #b03a2e; font-weight: 600; } .same { color: var(--muted); }
pre { background: var(--bg); padding: 10px; border-radius: 6px; overflow-x: auto; font-size: 12px; }
svg { display: block; }
svg .grid { stroke: #eceff2; stroke-width: 1; }
svg .axis { fill: none; stroke: #8a96a3; stroke-width: 1; }
svg .tick { fill: var(--muted); font-size: 11px; }
svg .label { fill: var(--ink); font-size: 12px; }
svg .legend { fill: var(--ink); font-size: 11px; }
svg .series { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg .area { fill-opacity: 0.25; stroke-width: 1.5; }
svg .cell { font-size: 12px; font-weight: 600; } svg .cell.light { fill: #fff; } svg .cell.dark { fill: var(--ink); }
"""


def page(views: Sequence[BundleView]) -> str:
    """The whole HTML document for one bundle or two."""
    nav = "".join(f'<a href="#{anchor}">{text(title)}</a>' for anchor, title, _ in SECTIONS)
    body = "".join(render(views) for _, _, render in SECTIONS)
    title = " vs ".join(_labels(views))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dpipe report: {text(title)}</title><style>{CSS}</style></head>"
        f"<body>{header(views)}<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
