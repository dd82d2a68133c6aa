"""``dpipe flow validate|run|show FLOW``.

Exit status of ``run``: 0 when every step succeeded or was skipped, 3 when so and a monitor step
crossed a threshold, 1 when a step failed (or was not run because of one), 2 for spec errors.
Every ``dpipe`` command loads this module to build its parser: imports are lazy.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from dpipe.errors import SpecError


def add_commands(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Callable[..., int]]:
    from dpipe.cli import add_scheduler

    p = sub.add_parser("flow", help="a pipeline of jobs (flow.yaml): validate it, run it, or show its steps' state")
    verbs = p.add_subparsers(dest="flow_command", required=True, metavar="ACTION")

    q = verbs.add_parser("validate", help="check every step's job and the graph between them; run nothing")
    _flow_args(q)
    add_common(q)

    q = verbs.add_parser("run", help="run the flow's steps on one cluster, each after the steps it needs")
    _flow_args(q)
    q.add_argument("--from", dest="start", metavar="STEP", help="run this step and every step after it")
    q.add_argument(
        "--step",
        dest="steps",
        action="append",
        default=[],
        metavar="STEP",
        help="run only this step (repeatable); the steps it needs are taken from their last run",
    )
    q.add_argument("--force", action="store_true", help="run every job even when it would find nothing to do")
    q.add_argument("--no-alerts", action="store_true", help="do not raise the flow's alerts")
    q.add_argument("--json", action="store_true", help="print the run's summary as JSON on stdout")
    add_scheduler(q, "run the steps on an existing Dask scheduler (default: cluster.address, else a LocalCluster)")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_common(q)

    q = verbs.add_parser("show", help="print the steps in run order, what each needs, and its last state")
    _flow_args(q)
    q.add_argument("--dot", action="store_true", help="print a Graphviz DOT graph instead")
    q.add_argument("--json", action="store_true")
    add_common(q)
    return {"flow": _flow}


def _flow_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("flow", metavar="FLOW", help="flow spec (YAML)")
    p.add_argument(
        "--var",
        dest="vars",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value of ${NAME} in the steps' jobs, e.g. ds=2013-11-01 (repeatable; wins over the environment)",
    )


def parse_vars(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise SpecError(f"--var {item!r}: expected NAME=VALUE, e.g. ds=2013-11-01")
        out[name.strip()] = value
    return out


def _flow(args: argparse.Namespace) -> int:
    from dpipe.flow import load_flow

    flow = load_flow(args.flow, vars=parse_vars(args.vars))
    if args.flow_command == "validate":
        print(f"{args.flow}: valid flow {flow.name!r}, {len(flow.steps)} step(s) in run order:")
        for step in flow.steps.values():
            needs = f" (needs {', '.join(step.needs)})" if step.needs else ""
            print(f"  {step.name}: {step.kind}{needs}")
        return 0
    if args.flow_command == "show":
        return _show(flow, args)
    from dpipe.flow.engine import DRIFT_EXIT, run_flow

    result = run_flow(
        flow,
        scheduler=args.scheduler,
        start=args.start,
        steps=args.steps or None,
        force=args.force,
        alerts=not args.no_alerts,
        log=(lambda msg: None) if args.quiet else None,
    )
    print(json.dumps(result.to_dict(), indent=2, default=str) if args.json else result.summary())
    if result.failed:
        return 1
    return DRIFT_EXIT if result.drifted else 0


def _show(flow: Any, args: argparse.Namespace) -> int:
    from dpipe.flow.engine import last_state

    state = last_state(flow)
    if args.dot:
        print(flow.dot({n: s.get("status", "") for n, s in state.items()}))
        return 0
    rows = []
    for step in flow.steps.values():
        last = state.get(step.name) or {}
        rows.append(
            {
                "step": step.name,
                "kind": step.kind,
                "needs": list(step.needs),
                "status": last.get("status", "never run"),
                "finished_at": last.get("finished_at"),
                "output": last.get("output"),
                "error": last.get("error"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"flow {flow.name!r} ({flow.path}), {len(rows)} step(s) in run order:")
    for row in rows:
        needs = f" <- {', '.join(row['needs'])}" if row["needs"] else ""
        when = f" at {row['finished_at']}" if row["finished_at"] else ""
        what = row["error"] or row["output"] or ""
        print(f"  {row['step']:<20} {row['kind']:<9} {row['status']:<10}{when}{needs}  {what}".rstrip())
    return 0
