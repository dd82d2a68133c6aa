"""The evaluation report: one self-contained HTML file of a bundle, or of two side by side.

The page has inline CSS and inline SVG drawn by :mod:`dpipe.report.svg`; it fetches nothing and
runs no script, so it reads the same offline, attached to a ticket or opened from S3. It shows
the metrics (XGBoost's per side at the best iteration, and ``evaluation.json``'s per side, the
test side apart), the ROC, precision-recall and calibration curves, the confusion matrix and
per-slice metrics (classification) or residuals and predicted against actual (regression), the
learning curve of every metric, feature importance (total gain and cover), the row accounting,
the data-quality summary, the fitted feature pipeline and the lineage. What a bundle lacks (an
older bundle has no ``evaluation.json``) is named at the top instead.

Examples
--------
>>> html = render_report("runs/quickstart")
>>> write_report("runs/quickstart", "report.html", compare="runs/quickstart-v2")
'report.html'

See ``docs/report.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dpipe.lazy import lazy_names

if TYPE_CHECKING:
    from dpipe.report.html import page
    from dpipe.report.view import BundleView, load_view, view_of

#: Imported when first used: `dpipe --help` and `dpipe validate` build the `report` command's
#: parser from this package, and the page's modules import the bundle, XGBoost and Dask.
_LAZY = {
    "page": "dpipe.report.html",
    "BundleView": "dpipe.report.view",
    "load_view": "dpipe.report.view",
    "view_of": "dpipe.report.view",
}


__getattr__ = lazy_names(__name__, _LAZY)


__all__ = ["REPORT", "BundleView", "load_view", "page", "render_report", "view_of", "write_report"]

#: The report's file name in a bundle, and ``dpipe report``'s default output.
REPORT = "report.html"


def render_report(
    bundle_uri: str,
    *,
    storage_options: dict | None = None,
    compare: str | None = None,
    compare_storage_options: dict | None = None,
) -> str:
    """The report of the bundle at ``bundle_uri`` as one HTML document.

    ``compare`` names a second bundle shown beside it: its curves overlaid in a second colour,
    its metrics in a second column with the difference. ``compare_storage_options`` default to
    ``storage_options``.
    """
    from dpipe.report.html import page
    from dpipe.report.view import load_view

    views = [load_view(bundle_uri, storage_options)]
    if compare is not None:
        options = storage_options if compare_storage_options is None else compare_storage_options
        views.append(load_view(compare, options))
    return page(views)


def write_report(
    bundle_uri: str,
    output: str = REPORT,
    *,
    storage_options: dict | None = None,
    compare: str | None = None,
    compare_storage_options: dict | None = None,
    output_storage_options: dict | None = None,
) -> str:
    """Render the report and write it to ``output`` (a path or any fsspec URL); returns ``output``."""
    from dpipe.io.fs import resolve, storage_errors

    html = render_report(
        bundle_uri,
        storage_options=storage_options,
        compare=compare,
        compare_storage_options=compare_storage_options,
    )
    fs, path = resolve(output, output_storage_options, where="report")
    with storage_errors("report", output):
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.pipe_file(path, html.encode("utf-8"))
    return output
