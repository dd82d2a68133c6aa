"""Many small files: planning (listing, footer reads) and a whole run over N files.

    python -m benchmarks.many_files --files 10000 --repeat 3 --runs 1
    python -m benchmarks.many_files --files 500 --repeat 1     # a smoke run

N Parquet files of ``--rows-per-file`` rows each (the benchmark dataset's columns), in Hive
month folders. Measured, on one LocalCluster:

* **plan**: ``dpipe.plan.plan`` of the benchmark job: one listing, every footer read (in threads),
  the unified schema; no cluster;
* **validate**: ``dpipe validate`` of the same job in a fresh process, imports included (what a
  user waits for);
* **run**: ``dpipe.run`` of the job (10 rounds), with each stage's seconds; placement computes
  the partitions with one call per worker, not one per partition.

Prints medians (min-max) with the load average; writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RESULTS = Path(__file__).resolve().parent / "results"


def write_files(root: Path, files: int, rows_per_file: int) -> Path:
    """``files`` Parquet files under ``root/events/month=MM/``."""
    import pyarrow.parquet as pq

    from benchmarks.data import make_month

    events = root / "events"
    table = make_month(files * rows_per_file, 1).drop_columns(["event_date"])
    for i in range(files):
        folder = events / f"month={1 + i % 12:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(i * rows_per_file, rows_per_file), folder / f"part-{i:05d}.parquet")
    return events


def _job(events: Path, out: Path):
    import dpipe
    from benchmarks.workload import dpipe_job

    spec = dpipe_job(str(events), str(out))
    spec["train"]["num_boost_round"] = 10
    spec["output"]["valid_predictions"] = False
    spec["lineage"] = {"openlineage": {"transport": "none"}}
    return dpipe.job_from_dict(spec)


def main(argv=None) -> int:
    from benchmarks.report import write_json
    from benchmarks.suite import cluster

    ap = argparse.ArgumentParser(prog="python -m benchmarks.many_files", description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=lambda t: int(float(t)), default=10_000)
    ap.add_argument("--rows-per-file", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3, help="times planning is timed")
    ap.add_argument("--runs", type=int, default=1, help="whole runs over the files (0: none)")
    ap.add_argument("--layout", default="2x1")
    ap.add_argument("--out", type=Path, default=RESULTS / "many-files.json", help="where the JSON goes")
    args = ap.parse_args(argv)
    import dpipe
    from dpipe.plan import plan

    report: dict = {"files": args.files, "rows_per_file": args.rows_per_file, "load_average": os.getloadavg()}
    plans, validates, runs, stages = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-files-") as tmp:
        t0 = time.perf_counter()
        events = write_files(Path(tmp), args.files, args.rows_per_file)
        report["write_files_s"] = time.perf_counter() - t0
        # Planning is what grows with the number of files: timed `--repeat` times, no cluster.
        for r in range(args.repeat):
            job = _job(events, Path(tmp) / f"model-{r}")
            t0 = time.perf_counter()
            planned = plan(job)
            plans.append(time.perf_counter() - t0)
            assert len(planned.source.files) == args.files
            print(f"plan {r}: {plans[-1]:.2f} s", file=sys.stderr)
        # `dpipe validate` of the same job, as a user runs it: a fresh process (imports included).
        spec = Path(tmp) / "job.yaml"
        spec.write_text(yaml.safe_dump(_job(events, Path(tmp) / "model-v").model_dump(mode="json", by_alias=True)))
        for r in range(args.repeat):
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "dpipe", "validate", str(spec)], capture_output=True, text=True
            )
            validates.append(time.perf_counter() - t0)
            assert done.returncode == 0, done.stderr
            print(f"validate {r}: {validates[-1]:.2f} s", file=sys.stderr)
        with cluster(args.layout) as client:
            for r in range(args.runs):
                t0 = time.perf_counter()
                result = dpipe.run(_job(events, Path(tmp) / f"model-{r}"), client, progress=False, force=True)
                runs.append(time.perf_counter() - t0)
                stages.append(dict(result.timings))
                assert result.rows["read"] == args.files * args.rows_per_file
                print(f"run {r}: {runs[-1]:.2f} s {result.timings}", file=sys.stderr)

    def spread(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    report.update(plan_s=spread(plans), validate_s=spread(validates), load_average_after=os.getloadavg())
    rows = [("plan (no cluster)", report["plan_s"]), ("dpipe validate (process)", report["validate_s"])]
    if runs:
        report.update(run_s=spread(runs), stages_s={k: spread([s[k] for s in stages]) for k in stages[0]})
        rows += [("dpipe run", report["run_s"])] + [(f"  {k}", v) for k, v in report["stages_s"].items()]
    print(
        f"\n{args.files:,} files x {args.rows_per_file} rows, {args.layout}; median (min-max) of"
        f" {args.repeat} plan(s) and validate(s), {args.runs} run(s)"
    )
    for name, s in rows:
        print(f"{name:<24}{s['median']:>10.2f} s ({s['min']:.2f}-{s['max']:.2f})")
    print(f"load average before {report['load_average']}, after {report['load_average_after']}")
    print(f"\nJSON: {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
