"""The evaluation report: real bundles trained on the cluster, rendered, and opened in Chromium."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

import dpipe
from dpipe.bundle import Bundle
from dpipe.cli import main
from dpipe.evaluation import EVALUATION, evaluation_document, finish, measures
from dpipe.report import page, render_report, view_of, write_report
from dpipe.report.svg import PALETTE
from dpipe.report.view import BundleView
from tests.conftest import job_dict

HOSTILE = '<img src="x" onerror="console.error(1)">'
SLICES = ["country", "plan"]


def make_hostile(bundle: Path) -> None:
    """Rename a slice value of the bundle's evaluation.json to markup, which the report must show
    as text (a column's values come from the data, whatever they hold)."""
    document = json.loads((bundle / EVALUATION).read_text())
    for side in document["sides"].values():
        for entry in side["slices"]["country"]:
            if entry["value"] == "GB":
                entry["value"] = HOSTILE
    (bundle / EVALUATION).write_text(json.dumps(document))


def _train(client, demo_root, out: Path, **sections) -> Path:
    """A bundle as a training run writes it, with a test side and slices: evaluation.json included."""
    sections = {"split": {"test_fraction": 0.2}, "report": {"slices": SLICES}, **sections}
    spec = job_dict(demo_root, out, output={"uri": str(out), "valid_predictions": True}, **sections)
    dpipe.run(dpipe.job_from_dict(spec), client=client, progress=False)
    return out


@pytest.fixture(scope="module")
def bundles(client, demo_root, tmp_path_factory) -> dict[str, Path]:
    """A binary bundle with evaluation.json, a second one for comparison, an older one without
    it (no evaluation.json), and a regression bundle."""
    root = tmp_path_factory.mktemp("report")
    binary = _train(client, demo_root, root / "binary", train={"num_boost_round": 12})
    make_hostile(binary)
    other = _train(
        client, demo_root, root / "other", train={"num_boost_round": 5, "params": {"max_depth": 2, "eta": 0.3}}
    )
    older = root / "older"
    shutil.copytree(other, older)
    (older / EVALUATION).unlink()
    regression = _train(
        client,
        demo_root,
        root / "regression",
        name="spend",
        label={"column": "income"},
        features=[{"op": "categorical", "columns": ["country", "device", "plan"]}],
        train={"objective": "reg:squarederror", "num_boost_round": 8, "exclude": ["date", "converted"]},
    )
    return {"binary": binary, "other": other, "older": older, "regression": regression}


class _Figures(HTMLParser):
    """The ``data-plot`` of every figure, and whether an ``<svg>`` with drawn marks is inside it."""

    def __init__(self):
        super().__init__()
        self.figures: list[dict] = []
        self.inside = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure" and "data-plot" in attrs:
            self.figures.append({"plot": attrs["data-plot"], "side": attrs.get("data-side"), "marks": 0, "svg": 0})
            self.inside = True
        elif self.inside and tag == "svg":
            self.figures[-1]["svg"] += 1
        elif self.inside and tag in ("path", "rect", "circle", "line"):
            self.figures[-1]["marks"] += 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self.inside = False


def figures(html: str) -> list[dict]:
    parser = _Figures()
    parser.feed(html)
    return parser.figures


def plots(html: str) -> dict[tuple[str, str | None], int]:
    found: dict[tuple[str, str | None], int] = {}
    for f in figures(html):
        assert f["svg"] == 1 and f["marks"] > 3, f
        found[f["plot"], f["side"]] = found.get((f["plot"], f["side"]), 0) + 1
    return found


class _Fetches(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self.style = False

    def handle_starttag(self, tag, attrs):
        if tag in ("link", "script", "iframe", "object", "embed", "img", "image", "use"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            linked = name in ("src", "srcset", "poster", "data", "xlink:href", "action", "formaction")
            if linked or (name == "href" and not (value or "").startswith("#")):
                self.found.append(f"{name}={value}")
        self.style = tag == "style"

    def handle_data(self, data):
        if self.style and ("url(" in data or "@import" in data):
            self.found.append("css url")


def _fetches(html: str) -> list[str]:
    """Whatever in the page could make a browser fetch something: sources, links, CSS urls."""
    parser = _Fetches()
    parser.feed(html)
    return parser.found


BINARY_PLOTS = {
    **{(p, side): 1 for p in ("roc", "pr", "calibration", "confusion") for side in ("valid", "test")},
    **{("slice", side): len(SLICES) for side in ("valid", "test")},
    ("learning", None): 2,  # logloss and auc
    ("importance", None): 2,  # total gain and total cover
}


# -- content -------------------------------------------------------------------------------------
def test_binary_report_has_every_plot_and_the_test_side_apart(bundles):
    html = render_report(str(bundles["binary"]))
    assert plots(html) == BINARY_PLOTS
    evaluation = json.loads((bundles["binary"] / EVALUATION).read_text())
    valid, test = (evaluation["sides"][s]["metrics"]["auc"] for s in ("valid", "test"))
    assert "Validation rows" in html and "Test rows (held out" in html
    assert f"ROC curve (AUC {valid:.4g})" in html and f"ROC curve (AUC {test:.4g})" in html
    for section in ("summary", "evaluation", "learning", "importance", "rows", "quality", "pipeline", "lineage"):
        assert f'<section id="{section}">' in html
    rows = json.loads((bundles["binary"] / "manifest.json").read_text())["rows"]
    assert f"<td>dropped by filters</td><td>{rows['dropped_by_filters']}</td>" in html
    assert "features[4]" in html and "categorical" in html  # the fitted pipeline's steps
    assert "source: parquet" in html  # the lineage tree
    assert "Not shown" not in html
    assert _fetches(html) == []
    assert "<script" not in html and HOSTILE not in html and "&lt;img src=&quot;x&quot;" in html


def test_regression_report_shows_residuals_and_predicted_against_actual(bundles):
    found = plots(render_report(str(bundles["regression"])))
    assert found == {
        ("residuals", "valid"): 1,
        ("residuals", "test"): 1,
        ("predicted-vs-actual", "valid"): 1,
        ("predicted-vs-actual", "test"): 1,
        ("slice", "valid"): 2,
        ("slice", "test"): 2,
        ("learning", None): 1,
        ("importance", None): 2,
    }


def test_a_bundle_without_evaluation_shows_what_it_has_and_says_what_is_missing(bundles):
    html = render_report(str(bundles["older"]))
    assert plots(html) == {("learning", None): 2, ("importance", None): 2}
    assert "Not shown" in html and "evaluation.json: not in this bundle" in html
    assert "train it again to get them" in html


def test_compare_overlays_both_bundles_and_shows_the_differences(bundles):
    html = render_report(str(bundles["binary"]), compare=str(bundles["other"]))
    found = plots(html)
    assert found[("roc", "valid")] == 1 and found[("confusion", "valid")] == 2  # one per bundle
    (roc,) = [m for m in re.finditer(r'<figure data-plot="roc" data-side="valid">.*?</figure>', html)]
    assert all(f'stroke="{c}"' in roc.group(0) for c in PALETTE[:2])
    assert "<th>difference</th>" in html and "binary vs other" not in html  # both are job 'test'
    assert "A: test" in html and "B: test" in html
    assert html.count('<div class="pair">') >= 4  # quality, pipeline, lineage, spec side by side


def test_every_string_from_a_bundle_is_escaped():
    evil = "<script>alert(1)</script>"
    view = BundleView(
        uri=f"runs/{evil}",
        manifest={"job": evil, "rows": {evil: 1}, "quality": {"checks": [{"name": evil, "check": "not_null"}]}},
        metrics={"valid": {evil: 0.5}, "history": {"valid": {evil: [0.1, 0.2]}}},
        pipeline={"ops": [{"where": evil, "spec": {"op": evil, "columns": [evil]}, "state": {evil: 1}}]},
        importance={"total_gain": {evil: 1.0}, "total_cover": {evil: 2.0}},
        missing=(evil,),
    )
    html = page([view])
    assert "<script" not in html
    assert html.count("&lt;script&gt;") >= 8


def test_a_report_of_a_bundle_still_being_written(bundles):
    """What a training run calls before its bundle is committed: the same page from its objects."""
    bundle = Bundle.load(str(bundles["binary"]))
    evaluation = json.loads((bundles["binary"] / EVALUATION).read_text())
    view = view_of(
        "runs/new",
        manifest=bundle.manifest,
        metrics=bundle.metrics,
        pipeline=bundle.pipeline_dict(),
        evaluation=evaluation,
        booster=bundle.booster,
    )
    assert plots(page([view])) == BINARY_PLOTS


# -- where it is written ---------------------------------------------------------------------------
def test_cli_writes_report_html_here_by_default(bundles, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(bundles["binary"])]) == 0
    assert capsys.readouterr().out.strip() == "report.html"
    assert plots((tmp_path / "report.html").read_text()) == BINARY_PLOTS

    out = tmp_path / "reports" / "both.html"
    assert main(["report", str(bundles["binary"]), "--compare", str(bundles["other"]), "-o", str(out)]) == 0
    assert "<th>difference</th>" in out.read_text()
    assert capsys.readouterr().out.strip() == str(out)

    assert main(["report", str(bundles["older"]), "--output", "-"]) == 0
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")

    assert main(["report", str(tmp_path / "nothing")]) == 1
    assert f"dpipe: error: bundle: '{tmp_path / 'nothing'}' does not exist" in capsys.readouterr().err


def test_report_of_a_bundle_on_s3_written_to_s3(bundles, s3):
    fs, bucket, options = s3["fs"], s3["bucket"], s3["storage_options"]
    fs.put(str(bundles["binary"]), f"{bucket}/bundle", recursive=True)
    written = write_report(
        f"s3://{bucket}/bundle",
        f"s3://{bucket}/reports/report.html",
        storage_options=options,
        output_storage_options=options,
    )
    assert written == f"s3://{bucket}/reports/report.html"
    assert plots(fs.cat_file(f"{bucket}/reports/report.html").decode()) == BINARY_PLOTS


# -- in a real browser -------------------------------------------------------------------------------
#: Every figure's plot, side, the drawn marks inside its <svg> and the svg's rendered size.
FIGURES_IN_PAGE = """(() => Array.from(document.querySelectorAll('figure[data-plot]')).map(f => {
  const svg = f.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const marks = svg ? Array.from(svg.querySelectorAll('path, rect, circle, line')) : [];
  const drawn = marks.filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; }).length;
  return {plot: f.dataset.plot, side: f.dataset.side || null, drawn, width: box.width, height: box.height};
}))()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from tests.browser import Browser

    with Browser.start(tmp_path_factory.mktemp("chromium-profile")) as b:
        yield b


def test_reports_load_in_chromium_without_errors_with_every_plot_drawn(bundles, browser, tmp_path):
    for name, compare in (("binary", None), ("compare", bundles["other"]), ("regression", None)):
        bundle = bundles["regression" if name == "regression" else "binary"]
        path = Path(write_report(str(bundle), str(tmp_path / f"{name}.html"), compare=compare and str(compare)))
        seen = browser.check_page(path, tmp_path / f"{name}.png", script=FIGURES_IN_PAGE)
        assert seen.errors == [], name
        assert seen.requests == [path.resolve().as_uri()], name  # nothing fetched but the page itself
        expected = plots(path.read_text())
        in_page: dict[tuple[str, str | None], int] = {}
        for f in seen.value:
            assert f["drawn"] > 3 and f["width"] > 100 and f["height"] > 80, (name, f)
            in_page[f["plot"], f["side"]] = in_page.get((f["plot"], f["side"]), 0) + 1
        assert in_page == expected, name
        assert seen.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and seen.screenshot.stat().st_size > 50_000


def test_the_browser_check_catches_console_errors_and_failed_loads(browser, tmp_path):
    """The check above is not vacuous: a page that errs is reported."""
    page_path = tmp_path / "bad.html"
    page_path.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("boom"); nope();</script></body></html>'
    )
    seen = browser.check_page(page_path, tmp_path / "bad.png")
    assert any("console.error: boom" in e for e in seen.errors)
    assert any("nope is not defined" in e for e in seen.errors)
    assert any("missing.png" in e for e in seen.errors)
    assert seen.requests[1].endswith("missing.png")


def test_multiclass_report_shows_the_confusion_matrix_and_per_class_scores():
    import numpy as np

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 900)
    prob = np.eye(3)[y] * 0.5 + rng.dirichlet(np.ones(3), 900) * 0.5
    frame = pd.DataFrame({"label": y.astype(float), **{f"prediction_{k}": prob[:, k] for k in range(3)}})
    values = measures(dd.from_pandas(frame, npartitions=2), "multiclass")
    (computed,) = dask.compute(values, scheduler="sync")
    evaluation = evaluation_document("multi:softprob", {"valid": finish(computed)})
    view = BundleView(uri="runs/m", manifest={"job": "species"}, evaluation=evaluation)
    html = page([view])
    assert plots(html) == {("confusion", "valid"): 1}
    assert "<h4>Per class</h4>" in html and "<td>mlogloss</td>" in html
