"""Training beyond memory: dpipe with workers limited to a fraction of the data's in-memory size
(``train.memory: auto``, which must choose XGBoost's external memory) against dpipe training in
memory on workers without that limit, on the same data.

    python -m benchmarks.external --rows 4e7 --fraction 0.25 --repeat 1
    python -m benchmarks.external --rows 2e5 --fraction 0.25 --repeat 1 --rounds 5   # a smoke run

Each run is a whole ``dpipe.run`` of the benchmark job (``--workload``), in a fresh LocalCluster
(so the limit applies to the limited side only), alternating in-memory and limited runs. Reported:
end-to-end seconds and stages, the ratio limited / in memory, each side's validation AUC and its
difference (the target: within 0.005), the peak memory of every process, and which mode
``auto`` chose. Prints a table; writes JSON under benchmarks/results/.
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
#: Below this a worker cannot hold its own imports (dask.dataframe, pyarrow, XGBoost): ~230 MiB idle.
MIN_WORKER_BYTES = 384 * 2**20


def one_run(root: Path, work: Path, *, layout: str, limit: int | str, memory: str, rounds: int, workload: str) -> dict:
    from benchmarks.measure import MemorySampler, dask_roles
    from benchmarks.suite import cluster
    from benchmarks.systems import run_dpipe

    out = work / f"model-{memory}"
    with cluster(layout, memory_limit=limit) as client:
        with MemorySampler(dask_roles()) as mem:
            start = time.perf_counter()
            result = run_dpipe(client, str(root), out, rounds=rounds, workload=workload, train={"memory": memory})
            total = time.perf_counter() - start
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        limits = sorted({w.get("memory_limit") for w in workers})
    shutil.rmtree(out, ignore_errors=True)
    return {"total_s": total, **result, "memory_mib": mem.result(), "memory_limit_per_worker": limits}


def main(argv=None) -> int:
    from benchmarks.data import dataset, dataset_bytes
    from benchmarks.report import write_json
    from benchmarks.suite import _in_memory_bytes, parse_layout

    ap = argparse.ArgumentParser(prog="python -m benchmarks.external", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=lambda t: int(float(t)), default=40_000_000)
    ap.add_argument("--fraction", type=float, default=0.25, help="the workers' memory limits over the data's size")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--layout", default="2x1")
    ap.add_argument("--workload", choices=["default", "full"], default="full")
    ap.add_argument("--data-dir", type=Path, default=RESULTS / "data")
    ap.add_argument("--out", type=Path, default=RESULTS / "external.json")
    args = ap.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    root = dataset(args.data_dir, args.rows, log=log)
    workers, _ = parse_layout(args.layout)
    in_memory = _in_memory_bytes(root, args.rows)
    limit = int(args.fraction * in_memory / workers)
    if limit < MIN_WORKER_BYTES:
        log(
            f"--fraction: {limit / 2**20:.0f} MiB a worker is under the {MIN_WORKER_BYTES / 2**20:.0f} MiB an idle"
            " worker holds (its imports); use more --rows or a larger --fraction"
        )
        return 2
    report: dict = {
        "rows": args.rows,
        "layout": args.layout,
        "workload": args.workload,
        "rounds": args.rounds,
        "dataset_bytes": dataset_bytes(root),
        "in_memory_bytes": in_memory,
        "fraction": args.fraction,
        "memory_limit_per_worker_bytes": limit,
        "load_average": os.getloadavg(),
    }
    log(
        f"{args.rows:,} rows, {in_memory / 2**20:.0f} MiB in memory; limited side: {workers} worker(s) x"
        f" {limit / 2**20:.0f} MiB ({args.fraction:g} of the data)"
    )
    runs: dict[str, list[dict]] = {"memory": [], "limited": []}
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-external-") as tmp:
        for r in range(args.repeat):
            order = ["limited", "memory"] if r % 2 == 0 else ["memory", "limited"]
            for side in order:
                run = one_run(
                    root,
                    Path(tmp),
                    layout=args.layout,
                    limit="auto" if side == "memory" else limit,
                    memory="memory" if side == "memory" else "auto",
                    rounds=args.rounds,
                    workload=args.workload,
                )
                runs[side].append(run)
                log(
                    f"{side} {r}: {run['total_s']:.1f} s, AUC {run['auc']:.4f}, mode {run['memory_mode']}, {run['stages']}"
                )

    def spread(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    summary = {
        side: {
            "total_s": spread([x["total_s"] for x in rs]),
            "stages_s": {k: spread([x["stages"][k] for x in rs]) for k in rs[0]["stages"]},
            "valid_auc": rs[-1]["auc"],
            "modes": sorted({x["memory_mode"] for x in rs}),
            "peak_total_mib": max(x["memory_mib"]["peak_total_mib"] for x in rs),
            "peak_one_worker_mib": max(x["memory_mib"]["peak_one_workers_process_mib"] for x in rs),
        }
        for side, rs in runs.items()
    }
    mem, lim = summary["memory"], summary["limited"]
    report.update(
        runs=runs,
        summary=summary,
        ratio_limited_over_memory=lim["total_s"]["median"] / mem["total_s"]["median"],
        auc_difference=lim["valid_auc"] - mem["valid_auc"],
        load_average_after=os.getloadavg(),
    )
    print(
        f"\n{args.rows:,} rows ({args.workload}), {args.layout}, {args.rounds} rounds, median (min-max) of {args.repeat}"
    )
    print(f"{'side':<34}{'end to end s':>22}{'valid AUC':>11}{'peak MiB':>10}{'one worker':>12}  mode")
    names = {"memory": "in memory, no limit", "limited": f"workers at {args.fraction:g} of the data"}
    for side, s in summary.items():
        t = s["total_s"]
        print(
            f"{names[side]:<34}{t['median']:>9.1f} ({t['min']:.1f}-{t['max']:.1f}){s['valid_auc']:>11.4f}"
            f"{s['peak_total_mib']:>10.0f}{s['peak_one_worker_mib']:>12.0f}  {','.join(s['modes'])}"
        )
    print(
        f"limited / in memory: {report['ratio_limited_over_memory']:.2f}; AUC difference {report['auc_difference']:+.4f}"
    )
    print(
        f"memory limit per worker {limit / 2**20:.0f} MiB; load average before {report['load_average']}, after {report['load_average_after']}"
    )
    print(f"\nJSON: {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
