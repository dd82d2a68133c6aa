"""The report's building blocks: escaped table cells, figures, sections, side-by-side pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dpipe.report.svg import number, text
from dpipe.report.view import BundleView


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


def bundle_labels(views: Sequence[BundleView]) -> list[str]:
    if len(views) == 1:
        return [views[0].name]
    names = [v.name for v in views]
    return [f"{'AB'[i]}: {n}" for i, n in enumerate(names)] if len(set(names)) < len(names) else names


def pair(views: Sequence[BundleView], render: Callable[[BundleView], str]) -> str:
    if len(views) == 1:
        return render(views[0])
    names = bundle_labels(views)
    cells = "".join(f'<div><h3 class="bundle">{text(names[i])}</h3>{render(v)}</div>' for i, v in enumerate(views))
    return f'<div class="pair">{cells}</div>'
