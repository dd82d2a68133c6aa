"""Checkpoints and restarts: what ``train.checkpoint_every`` costs, and what a lost worker costs.

    python -m benchmarks.checkpoint --rows 5e5 --repeat 3
    python -m benchmarks.checkpoint --rows 20000 --rounds 20 --repeat 1      # a smoke run

The benchmark dataset and job (benchmarks/workload.py), planned, fitted and placed once on one
LocalCluster, then trained again and again on the placed rows (``dpipe.stages.train``, early
stopping off so every training boosts ``--rounds`` rounds):

* **interval**: training without checkpoints against ``checkpoint_every`` 1, 5, 10 and 25, into
  a local staging folder: the time a checkpoint adds, as a ratio to training without any;
* **restart**: (``--kill``) the same training on a `dask scheduler` with two nanny-run `dask
  worker` processes, one of them SIGKILLed after the first checkpoint; the killed run's time
  against an uninterrupted one's, and what the restart record says (recovery seconds, rounds
  trained again).

Prints a table; writes JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
INTERVALS = (None, 1, 5, 10, 25)


def _job(events: Path, out: Path, rounds: int) -> dict:
    from benchmarks.workload import dpipe_job

    job = dpipe_job(str(events), str(out))
    job["output"]["valid_predictions"] = False
    job["lineage"] = {"openlineage": {"transport": "none"}}
    job["train"].update(num_boost_round=rounds, early_stopping_rounds=None, eval_train=False)
    return job


def placed_rows(spec: dict, client):
    """The job's plan, fit and placement (the runner's order), once."""
    import dpipe
    from dpipe import stages
    from dpipe.plan import plan

    def compute(*collections):
        return tuple(client.gather(client.compute(list(collections))))

    job = dpipe.job_from_dict(spec)
    p = plan(job)
    gate = stages.quality_gate(p)
    pre = stages.prepass(p, gate, compute)
    fitted = stages.fit(p, gate, pre, compute)
    return job, p, stages.place(client, p, fitted, gate, pre)


def train_once(client, job, p, placed, every: int | None, folder: Path) -> dict:
    from dpipe import stages
    from dpipe.resume import Resilience
    from dpipe.train import TrainConfig

    uri = str(folder / f"every-{every}-{time.monotonic_ns()}")
    resilience = Resilience(uri if every else None, every=every, max_restarts=0)
    t0 = time.perf_counter()
    trained = stages.train(client, placed, TrainConfig.from_spec(job.train), p.labeler.splitter, resilience)
    return {"train_s": time.perf_counter() - t0, "rounds": trained.metrics["rounds_trained"]}


def intervals(client, job, p, placed, repeat: int, folder: Path) -> dict:
    """Each interval ``repeat`` times, interleaved so drift hits every interval alike."""
    times: dict[str, list[float]] = {str(e): [] for e in INTERVALS}
    for _ in range(repeat):
        for every in INTERVALS:
            times[str(every)].append(train_once(client, job, p, placed, every, folder)["train_s"])
    from benchmarks.report import against

    return against(times, "None", "ratio_to_none")


def restart(events: Path, work: Path, rounds: int, every: int, repeat: int) -> dict:
    """Uninterrupted runs and runs whose worker is SIGKILLed after the first checkpoint, in pairs
    whose order alternates, after an untimed run that pays the workers' first imports."""
    import signal
    import statistics
    import threading

    from distributed import Client

    import dpipe
    from tests.conftest import dask_processes

    def run(out: Path):
        spec = _job(events, out, rounds)
        spec["train"].update(checkpoint_every=every)
        t0 = time.perf_counter()
        result = dpipe.run(dpipe.job_from_dict(spec), scheduler=address, progress=False)
        return time.perf_counter() - t0, result

    def killing(out: Path, victim: int) -> None:
        def kill_after_first_checkpoint():
            while not any(out.parent.glob(f".{out.name}.dpipe-staging-*/checkpoints/*/checkpoint-*.json")):
                time.sleep(0.01)
            os.kill(victim, signal.SIGKILL)

        threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()

    (work / "cluster").mkdir(parents=True, exist_ok=True)
    pairs = []
    with dask_processes(work / "cluster", workers=2) as (address, _), Client(address, set_as_default=False) as c:
        run(work / "warm-up")
        for i in range(repeat):
            order = ("steady", "killed") if i % 2 == 0 else ("killed", "steady")
            got: dict = {}
            for kind in order:
                c.wait_for_workers(2, timeout=120)  # the nanny's replacement after a kill
                out = work / f"{kind}-{i}"
                if kind == "killed":
                    killing(out, sorted(c.run(os.getpid).items())[-1][1])
                got[kind] = run(out)
            (steady_s, _), (killed_s, result) = got["steady"], got["killed"]
            pairs.append(
                {
                    "order": list(order),
                    "steady_s": steady_s,
                    "killed_s": killed_s,
                    "lost_s": killed_s - steady_s,
                    "ratio": killed_s / steady_s,
                    "restarts": result.manifest["training"]["restarts"],
                    "valid_auc": result.metrics["valid"].get("auc"),
                }
            )
    summary = {}
    for key in ("steady_s", "killed_s", "lost_s", "ratio"):
        values = [p[key] for p in pairs]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return {"pairs": pairs, **summary}


def main(argv=None) -> int:
    from benchmarks.data import dataset
    from benchmarks.report import write_json
    from benchmarks.suite import cluster

    ap = argparse.ArgumentParser(prog="python -m benchmarks.checkpoint", description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=lambda t: int(float(t)), default=500_000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layout", default="2x1")
    ap.add_argument("--kill", action="store_true", help="also time a run that loses a worker (a real cluster)")
    ap.add_argument("--kill-only", action="store_true", help="only the runs that lose a worker (no intervals)")
    ap.add_argument("--data-dir", type=Path, default=RESULTS / "data", help="where generated data is cached")
    ap.add_argument("--out", type=Path, default=RESULTS / "checkpoint.json", help="where the JSON goes")
    args = ap.parse_args(argv)
    report: dict = {"rows": args.rows, "rounds": args.rounds, "repeat": args.repeat, "load_average": os.getloadavg()}
    events = dataset(args.data_dir, args.rows)
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-checkpoint-") as tmp:
        if not args.kill_only:
            with cluster(args.layout) as client:
                job, p, placed = placed_rows(_job(events, Path(tmp) / "unused", args.rounds), client)
                train_once(client, job, p, placed, None, Path(tmp))  # untimed: first-use costs
                report["intervals"] = intervals(client, job, p, placed, args.repeat, Path(tmp))
            write_json(report, args.out)  # kept if the restart part fails
        if args.kill or args.kill_only:
            report["restart"] = restart(events, Path(tmp), args.rounds, 10, args.repeat)
    report["load_average_after"] = os.getloadavg()
    print(f"\n{args.rows:,} rows, {args.rounds} rounds, {args.layout}; median (min-max) of {args.repeat}")
    print(f"{'checkpoint_every':<18}{'train s':>24}{'ratio to none':>16}")
    for every, r in report.get("intervals", {}).items():
        spread = f"{r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f})"
        print(f"{every:<18}{spread:>24}{r['ratio_to_none']:>16.3f}")
    if "restart" in report:
        r = report["restart"]
        print(f"\nrestart (pairs in alternating order, median (min-max) of {len(r['pairs'])}):")
        for key, what in (
            ("steady_s", "uninterrupted s"),
            ("killed_s", "one worker killed s"),
            ("lost_s", "lost s"),
            ("ratio", "killed / uninterrupted"),
        ):
            print(f"  {what:<24}{r[key]['median']:>8.2f} ({r[key]['min']:.2f}-{r[key]['max']:.2f})")
        for pair in r["pairs"]:
            print(f"  {' then '.join(pair['order'])}: restarts {pair['restarts']}")
    print(f"load average before {report['load_average']}, after {report['load_average_after']}")
    print(f"\nJSON: {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
