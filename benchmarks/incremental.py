"""Incremental runs: one new month of twelve, against the full run over all twelve.

    python -m benchmarks.incremental --rows 1.2e6 --repeat 3
    python -m benchmarks.incremental --quick

The benchmark dataset (twelve months of Parquet) and the benchmark job (fill_missing median,
standard_scale, categorical, 100 XGBoost rounds), on one LocalCluster:

* **full**: the job over all twelve months (no state), timed;
* **incremental**: the same job whose state holds months 1-11 (from an untimed run), timed when
  month 12 arrives, for each way to retrain: ``continue`` (the previous booster grows on the new
  month), ``window`` (``last: 1``: a model of the new month, with the merged statistics) and
  ``all`` (a new model on every month: reading them all to train is the point of that mode);
* **features**: a features job (the same ops, into a Delta table) over twelve months, against
  its incremental run on month 12.

Each time is the run's own (plan to commit), with its fit stage apart; the table gives medians
over the repeats, min and max, and each incremental run's ratio to the full one (the target:
at most 1/6, fit included). Prints a table and writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("continue", "window", "all")


def _train_job(events: Path, out: Path, retrain: str | None, rounds: int | None = None) -> dict:
    from benchmarks.workload import dpipe_job

    job = dpipe_job(str(events), str(out))
    if rounds is not None:
        job["train"]["num_boost_round"] = rounds
    job["output"]["valid_predictions"] = False
    job["lineage"] = {"openlineage": {"transport": "none"}}
    if retrain is not None:
        job["incremental"] = {"retrain": retrain, **({"last": 1} if retrain == "window" else {})}
    return job


def _features_job(events: Path, lake: Path, incremental: bool) -> dict:
    job = _train_job(events, lake, None)
    return {
        "kind": "features",
        "name": "bench-features",
        "source": job["source"],
        "features": job["features"],
        "output": {"format": "delta", "uri": str(lake), "mode": "append"},
        "incremental": incremental,
        "lineage": job["lineage"],
    }


def _timed_run(spec: dict, client) -> dict:
    import dpipe

    job = dpipe.job_from_dict(spec)
    started = time.perf_counter()
    result = dpipe.run(job, client, progress=False)
    total = time.perf_counter() - started
    return {"total_s": total, "fit_s": float(result.timings.get("fit", 0.0)), "rows_read": result.rows.get("read")}


def _months(root: Path, work: Path) -> tuple[Path, Path]:
    """``work/events`` with months 1-11 (a copy), and month 12's folder beside it."""
    events = work / "events"
    shutil.rmtree(events, ignore_errors=True)
    shutil.copytree(root, events)
    last = sorted(events.glob("month=*"))[-1]
    aside = work / last.name
    shutil.rmtree(aside, ignore_errors=True)
    shutil.move(str(last), aside)
    return events, aside


def one_round(root: Path, work: Path, client, rounds: int | None = None) -> dict:
    """Every measurement once: full runs over twelve months, incremental ones over the twelfth."""
    import dpipe

    out: dict = {}
    out["train full"] = _timed_run(_train_job(root, work / "full", None, rounds), client)
    events, month12 = _months(root, work)
    base = work / "base"
    shutil.rmtree(base, ignore_errors=True)
    dpipe.run(dpipe.job_from_dict(_train_job(events, base, "all", rounds)), client, progress=False)  # months 1-11
    shutil.copytree(month12, events / month12.name)
    for mode in MODES:
        model = work / f"model-{mode}"
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(base, model)
        out[f"train incremental ({mode})"] = _timed_run(_train_job(events, model, mode, rounds), client)
    shutil.rmtree(work / "full", ignore_errors=True)

    out["features full"] = _timed_run(_features_job(root, work / "lake-full", False), client)
    events, month12 = _months(root, work)
    lake = work / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    dpipe.run(dpipe.job_from_dict(_features_job(events, lake, True)), client, progress=False)
    shutil.copytree(month12, events / month12.name)
    out["features incremental"] = _timed_run(_features_job(events, lake, True), client)
    shutil.rmtree(work / "lake-full", ignore_errors=True)
    return out


def summarize(rounds: list[dict]) -> dict:
    """Medians (min, max) per measurement, and each incremental one's ratio to its full run."""
    summary: dict = {}
    for name in rounds[0]:
        totals = [r[name]["total_s"] for r in rounds]
        fits = [r[name]["fit_s"] for r in rounds]
        summary[name] = {
            "median_s": statistics.median(totals),
            "min_s": min(totals),
            "max_s": max(totals),
            "fit_median_s": statistics.median(fits),
            "rows_read": rounds[0][name]["rows_read"],
        }
    for name, entry in summary.items():
        if "incremental" in name:
            full = summary[name.split(" ")[0] + " full"]
            entry["ratio_to_full"] = entry["median_s"] / full["median_s"]
            entry["fit_ratio_to_full"] = entry["fit_median_s"] / full["fit_median_s"] if full["fit_median_s"] else None
    return summary


def main(argv=None) -> int:
    from benchmarks.data import write_dataset
    from benchmarks.report import write_json
    from benchmarks.suite import cluster

    p = argparse.ArgumentParser(prog="python -m benchmarks.incremental", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=lambda t: int(float(t)), default=1_200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--layout", default="2x1")
    p.add_argument("--rounds", type=int, default=None, help="boosting rounds (default: the job's 100; --quick: 10)")
    p.add_argument("--quick", action="store_true", help="24k rows, 10 rounds, 1 repeat: a smoke run")
    p.add_argument("--out", type=Path, default=RESULTS / "incremental.json", help="where the JSON goes")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.repeat = 24_000, 1
        args.rounds = args.rounds or 10
    report: dict = {
        "rows": args.rows,
        "num_boost_round": args.rounds,
        "repeat": args.repeat,
        "layout": args.layout,
        "load_average": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-incremental-") as tmp, cluster(args.layout) as client:
        work = Path(tmp)
        root = write_dataset(work / "data", args.rows)
        rounds = [one_round(root, work, client, args.rounds) for _ in range(args.repeat)]
    report["rounds"] = rounds
    report["summary"] = summary = summarize(rounds)
    report["load_average_after"] = os.getloadavg()
    print(f"\n{args.rows:,} rows in 12 months; month 12 new ({args.layout} workers x threads, median of {args.repeat})")
    print(
        f"{'run':<32}{'median s':>10}{'min s':>8}{'max s':>8}{'fit s':>8}{'rows read':>11}{'ratio':>8}{'fit ratio':>10}"
    )
    for name, r in summary.items():
        ratio = f"{r['ratio_to_full']:>8.3f}" if "ratio_to_full" in r else f"{'':>8}"
        fit = r.get("fit_ratio_to_full")
        fit_ratio = f"{fit:>10.3f}" if fit is not None else f"{'':>10}"
        print(
            f"{name:<32}{r['median_s']:>10.2f}{r['min_s']:>8.2f}{r['max_s']:>8.2f}{r['fit_median_s']:>8.2f}"
            f"{r['rows_read'] or 0:>11,}{ratio}{fit_ratio}"
        )
    path = write_json(report, args.out)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
