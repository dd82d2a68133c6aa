"""The model's sections: metrics per side, evaluation curves, learning curves, importance."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dpipe.report import svg
from dpipe.report.blocks import Html, bundle_labels, figure, section, table
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


# -- header and summary -------------------------------------------------------------------------
def header(views: Sequence[BundleView]) -> str:
    labels = bundle_labels(views)
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


def difference(name: str, a: Any, b: Any) -> Html:
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
            row.append(difference(name, values[0], values[1]))
        rows.append(row)
    return rows


def headers(first: str, views: Sequence[BundleView]) -> list[str]:
    labels = bundle_labels(views)
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
            parts.append(table(headers("metric", views), _metric_rows(names, per_view, diff=True)))
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
    labels = bundle_labels(views)
    body = []
    for side in sides:
        shown = [(labels[i], PALETTE[i], v, _side(v, side)) for i, v in enumerate(views) if _side(v, side)]
        kinds = {(v.evaluation or {}).get("kind") for _, _, v, _ in shown}
        figures: list[str] = []
        for kind in sorted(k for k in kinds if k):
            of_kind = [s for s in shown if (s[2].evaluation or {}).get("kind") == kind]
            figures += CURVES.get(kind, _no_curves)(of_kind, side)
            figures += _confusions(of_kind, side)
        body.append(f"<h3>{text(SIDES.get(side, side))}</h3>")
        body.append(f'<div class="plots">{"".join(figures)}</div>')
        body.append(_per_class(shown))
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


def _no_curves(shown: Sequence[Shown], side: str) -> list[str]:
    return []


#: Kind -> the curves of a side (each kind also gets its confusion matrix, when it has one).
CURVES: dict[str, Callable[[Sequence[Shown], str], list[str]]] = {
    "binary": _binary_curves,
    "regression": _regression_curves,
    "multiclass": _no_curves,
}


def _per_class(shown: Sequence[Shown]) -> str:
    """Precision, recall and F1 of each class (multiclass), a row per class and bundle."""
    rows = []
    for label, _, _, d in shown:
        for name, scores in ((d.get("metrics") or {}).get("per_class") or {}).items():
            keys = ("precision", "recall", "f1", "rows")
            rows.append([name, *([label] if len(shown) > 1 else []), *(scores.get(k) for k in keys)])
    if not rows:
        return ""
    head = ["class", *(["bundle"] if len(shown) > 1 else []), "precision", "recall", "f1", "rows"]
    return "<h4>Per class</h4>" + table(head, rows)


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
    labels = bundle_labels(views)
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
    labels = bundle_labels(views)
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
