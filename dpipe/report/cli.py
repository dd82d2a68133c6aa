"""``dpipe report BUNDLE [--compare OTHER] [--output FILE]``: render a bundle's report again.

The report goes to ``--output`` (a path or any fsspec URL; ``-`` for standard output), by default
``report.html`` in the current folder: a committed bundle is never modified. The path written is
printed. Imports stay inside the handler: every ``dpipe`` command loads this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def add_commands(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Callable]:
    """Add ``report`` to the ``dpipe`` subcommands; returns ``{"report": handler}``."""
    p = sub.add_parser("report", help="write a bundle's evaluation report: one self-contained HTML file")
    p.add_argument("bundle", help="model bundle (the `output.uri` of a run)")
    p.add_argument("--compare", metavar="OTHER", help="a second bundle, shown side by side (curves overlaid)")
    p.add_argument(
        "--output",
        "-o",
        default="report.html",
        metavar="FILE",
        help="where to write the HTML: a path or URL, `-` for stdout (default: report.html here)",
    )
    p.add_argument("--storage-options", metavar="JSON", help="fsspec options as JSON, for the bundles and the output")
    add_common(p)
    return {"report": _report}


def _report(args: argparse.Namespace) -> int:
    from dpipe.cli import _storage_options
    from dpipe.report import render_report, write_report

    options = _storage_options(args.storage_options)
    if args.output == "-":
        sys.stdout.write(render_report(args.bundle, storage_options=options, compare=args.compare))
        return 0
    written = write_report(
        args.bundle, args.output, storage_options=options, compare=args.compare, output_storage_options=options
    )
    print(written)
    return 0
