"""``dpipe monitor``: drift of a batch against a bundle's reference profile (:mod:`dpipe.monitor`).

Exit status: 0 when no threshold is crossed, :data:`DRIFT_EXIT` (3) when one is (so a scheduler
can act on it), 2 for usage, spec and input errors (a batch without the model's columns), 1 for
runtime failures. Only light imports at the top: every ``dpipe`` command loads this module.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from dpipe.errors import SpecError

#: The exit status of ``dpipe monitor`` when a threshold is crossed.
DRIFT_EXIT = 3
#: Values of ``--threshold NAME=VALUE`` that turn a statistic off.
_OFF = ("none", "null", "off")


def add_commands(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Callable[..., int]]:
    from dpipe.cli import add_scheduler

    p = sub.add_parser(
        "monitor",
        help="compare a batch of new data with a bundle's reference profile; exit 3 when a threshold is crossed",
    )
    p.add_argument("bundle", help="model bundle (the `output.uri` of a run), holding profile.json")
    p.add_argument("--source", help="the batch: path or URL (glob allowed)")
    p.add_argument("--source-spec", metavar="YAML", help="the batch as a source entry (a Delta table, a SQL query...)")
    p.add_argument("--format", help="source format (default: from the suffix)")
    p.add_argument("--output", metavar="DIR", help="where drift.json and drift.html go (the folder is replaced)")
    p.add_argument(
        "--threshold",
        dest="thresholds",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a limit, e.g. psi=0.25 or ks=none (repeatable): psi, js, ks, missing_rate, unseen_rate,"
        " prediction_psi, prediction_js, metric_drop",
    )
    p.add_argument(
        "--labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compute metrics against the training validation metrics (default: when the batch has the label)",
    )
    p.add_argument("--retrain", metavar="JOB", help="a training job spec (YAML) to run when a threshold is crossed")
    p.add_argument("--json", action="store_true", help="print the drift report as JSON on stdout")
    add_scheduler(p)
    p.add_argument("--storage-options", metavar="JSON", help="fsspec options as JSON (prefer AWS_* variables)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_common(p)
    return {"monitor": _monitor}


def parse_thresholds(items: list[str]) -> dict[str, float | None]:
    """``["psi=0.25", "ks=none"]`` -> ``{"psi": 0.25, "ks": None}`` (checked by the spec model)."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SpecError(f"--threshold {item!r}: expected NAME=VALUE, e.g. psi=0.25 (or psi=none to turn it off)")
        out[name.strip()] = None if value.strip().lower() in _OFF else value.strip()
    return out


def _monitor(args: argparse.Namespace) -> int:
    from dpipe.cli import _storage_options
    from dpipe.monitor import monitor, monitor_spec, retrain
    from dpipe.spec.load import load_entry

    if (args.source is None) == (args.source_spec is None):
        raise SpecError("monitor: give exactly one of --source PATH or --source-spec YAML")
    given = parse_thresholds(args.thresholds)
    if given:
        monitor_spec(given)  # a misspelt statistic fails before the bundle is read
    result = monitor(
        args.bundle,
        args.source if args.source is not None else load_entry(args.source_spec, "source"),
        scheduler=args.scheduler,
        thresholds=given or None,
        output=args.output,
        labels=args.labels,
        progress=not args.quiet,
        format=args.format,
        storage_options=_storage_options(args.storage_options),
    )
    job = args.retrain or result.report.get("retrain")
    retrained = None
    if result.drifted and job:
        retrained = retrain(job, scheduler=args.scheduler, progress=not args.quiet)
    if args.json:
        print(json.dumps({**result.report, "output_uri": result.output_uri, "retrained": retrained}, indent=2))
    else:
        print(result.summary())
        if result.output_uri:
            print(f"report: {result.output_uri}")
        if retrained:
            print(f"retrained: job {retrained['job']!r}, new bundle {retrained['bundle_uri']}")
            if retrained["version"]:
                print(f"registered as {retrained['version']} (challenger)")
            decision = retrained["decision"]
            if decision:
                moved = "promoted to champion" if decision["promoted"] else "not promoted"
                print(f"gate: {moved}: {decision['reason']}")
    return DRIFT_EXIT if result.drifted else 0
