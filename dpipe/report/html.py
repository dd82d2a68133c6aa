"""The report page: one HTML file with inline CSS and inline SVG, of one bundle or two side by side.

Every section takes the list of bundles shown (one, or two with ``--compare``): curves of two
bundles are drawn in one chart in two colours, tables get a column per bundle and the difference,
and what cannot be overlaid (a confusion matrix, the fitted pipeline) is shown side by side.
Each chart is an ``<svg>`` inside ``<figure data-plot="NAME">`` (``data-side`` names the rows it
was measured on), so a test can count them. Every string read from a bundle is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dpipe.report.blocks import bundle_labels
from dpipe.report.data import lineage, pipeline, quality, rows, spec, tuning
from dpipe.report.model import evaluation, header, importance, learning, summary
from dpipe.report.svg import text
from dpipe.report.view import BundleView

#: The page's sections, in order: (anchor, navigation title, renderer).
SECTIONS: tuple[tuple[str, str, Callable[[Sequence[BundleView]], str]], ...] = (
    ("summary", "Metrics", summary),
    ("evaluation", "Evaluation", evaluation),
    ("learning", "Learning curves", learning),
    ("importance", "Importance", importance),
    ("tuning", "Tuning", tuning),
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
    rendered = [(anchor, title, render(views)) for anchor, title, render in SECTIONS]
    shown = [(anchor, title, html) for anchor, title, html in rendered if html]  # a section may not apply
    nav = "".join(f'<a href="#{anchor}">{text(title)}</a>' for anchor, title, _ in shown)
    body = "".join(html for _, _, html in shown)
    title = " vs ".join(bundle_labels(views))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dpipe report: {text(title)}</title><style>{CSS}</style></head>"
        f"<body>{header(views)}<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
