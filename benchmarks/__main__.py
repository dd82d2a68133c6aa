"""The dpipe benchmark suite (see benchmarks/README.md).

    python -m benchmarks --rows 2000000 --repeat 3          # dpipe vs hand-written Dask, pandas, floor
    python -m benchmarks --quick                              # about a minute: a smoke run
    python -m benchmarks --scaling 1e6,2e6,4e6 --layouts 1x2,2x1
    python -m benchmarks --larger-than-memory --ltm-rows 4e6 --memory-fraction 0.5

Every mode prints a table and writes JSON (and the sweep a PNG) under benchmarks/results/.
Compare ratios, not seconds: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _count(text: str) -> int:
    value = float(text)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"must be a positive whole number of rows. Instead got {text!r}")
    return int(value)


def _counts(text: str) -> list[int]:
    return [_count(t) for t in text.split(",") if t.strip()]


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    p.add_argument("--rows", type=_count, default=2_000_000, help="rows of the compared run (accepts 2e6)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each system (alternating)")
    p.add_argument("--layout", default="2x1", help="workers x threads of the LocalCluster, e.g. 2x1 or 1x2")
    p.add_argument("--systems", type=_names, default=None, help="default: every system the workload has")
    p.add_argument(
        "--workload",
        choices=["default", "full"],
        default="default",
        help="default: median fills of 10 columns, scaling of 4; full: a filter, derived and date columns,"
        " the mean fill and scaling of all 32 numeric columns, ordinal codes (no floor)",
    )
    p.add_argument("--rounds", type=int, default=None, help="boosting rounds (default 100; --quick: 10)")
    p.add_argument("--seed", type=int, default=0, help="data generator seed")
    p.add_argument(
        "--quick",
        action="store_true",
        help="20k rows, 1 repeat, 10 rounds, no warm-up: a smoke run of every measurement",
    )
    p.add_argument("--no-count", action="store_true", help="skip the instrumented bytes-read runs")
    p.add_argument(
        "--profile",
        action="store_true",
        help="write a Dask performance report (HTML) of the first run of each Dask system",
    )
    p.add_argument("--scaling", type=_counts, metavar="ROWS,...", help="sweep these sizes instead, e.g. 1e6,2e6,4e6")
    p.add_argument("--layouts", type=_names, default=["1x2", "2x1"], help="worker layouts of the sweep")
    p.add_argument(
        "--larger-than-memory", action="store_true", help="run the features-only job under small memory limits"
    )
    p.add_argument("--ltm-rows", type=_count, default=8_000_000)
    p.add_argument(
        "--memory-fraction",
        type=float,
        default=0.5,
        help="the workers' memory limits together, as a fraction of the data's in-memory size",
    )
    p.add_argument(
        "--arrow-pool",
        choices=["system", "jemalloc", "mimalloc"],
        default=None,
        help="ARROW_DEFAULT_MEMORY_POOL for the larger-than-memory workers (default: pyarrow's)",
    )
    p.add_argument(
        "--ltm-timeout", type=float, default=900, help="seconds before a stalled features-only run is reported"
    )
    p.add_argument("--data-dir", type=Path, default=RESULTS / "data", help="cache of generated datasets")
    p.add_argument(
        "--json", type=Path, default=None, help="where to write the JSON (default under benchmarks/results/)"
    )
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from benchmarks import report, suite
    from benchmarks.systems import SYSTEMS

    offered = [s for s in SYSTEMS if args.workload == "default" or s != "floor"]
    if args.systems is None:
        args.systems = offered
    unknown = [s for s in args.systems if s not in offered]
    if unknown:
        print(
            f"--systems: {unknown} not offered for workload {args.workload!r}; choose from {offered}", file=sys.stderr
        )
        return 2
    if args.workload != "default" and (args.scaling or args.larger_than_memory):
        print("--workload: the sweep and the larger-than-memory run use the default workload", file=sys.stderr)
        return 2
    for layout in [args.layout, *args.layouts]:
        try:
            suite.parse_layout(layout)
        except ValueError as exc:
            print(f"--layout(s): {exc}", file=sys.stderr)
            return 2
    rounds = args.rounds or (10 if args.quick else 100)
    if args.profile:
        try:
            import bokeh  # noqa: F401
        except ImportError:
            print("--profile: Dask's performance report needs bokeh\n\nHint: pip install bokeh", file=sys.stderr)
            return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.scaling:
        path = args.json or RESULTS / "scaling.json"
        result = suite.scaling(
            args.data_dir,
            args.scaling,
            args.layouts,
            systems=args.systems,
            repeat=1 if args.quick else args.repeat,
            rounds=rounds,
            seed=args.seed,
            checkpoint=lambda r: report.write_json(r, path),
            log=log,
        )
        report.print_scaling(result)
        path = report.write_json(result, path)
        png = report.plot_scaling(result, path.with_suffix(".png"))
        print(f"JSON: {path}" + (f"\nPNG: {png}" if png else ""))
    if args.larger_than_memory:
        result = suite.larger_than_memory(
            args.data_dir,
            50_000 if args.quick else args.ltm_rows,
            fraction=args.memory_fraction,
            layout=args.layout,
            arrow_pool=args.arrow_pool,
            timeout=args.ltm_timeout,
            seed=args.seed,
            log=log,
        )
        report.print_ltm(result)
        path = report.write_json(result, args.json or RESULTS / "larger-than-memory.json")
        print(f"JSON: {path}")
    if not (args.scaling or args.larger_than_memory):
        rows, repeat = (20_000, 1) if args.quick else (args.rows, args.repeat)
        result = suite.compare(
            args.data_dir,
            rows,
            repeat=repeat,
            layout=args.layout,
            systems=args.systems,
            rounds=rounds,
            seed=args.seed,
            warmup=not args.quick,
            count=not args.no_count,
            profile_dir=RESULTS / "profiles" if args.profile else None,
            log=log,
            workload=args.workload,
        )
        report.print_compare(result)
        name = f"compare-rows{rows}" + ("" if args.workload == "default" else f"-{args.workload}")
        path = report.write_json(result, args.json or RESULTS / f"{name}.json")
        print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
