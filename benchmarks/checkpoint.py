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


def restart(events: Path, work: Path, rounds: int, every: int) -> dict:
    """An uninterrupted run and one whose worker is SIGKILLed after the first checkpoint."""
    import signal
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

    (work / "cluster").mkdir(parents=True, exist_ok=True)
    with dask_processes(work / "cluster", workers=2) as (address, _):
        steady_s, _ = run(work / "steady")
        with Client(address, set_as_default=False) as c:
            victim = sorted(c.run(os.getpid).items())[-1][1]
        out = work / "killed"

        def kill_after_first_checkpoint():
            while not any(out.parent.glob(f".{out.name}.dpipe-staging-*/checkpoints/*/checkpoint-*.json")):
                time.sleep(0.01)
            os.kill(victim, signal.SIGKILL)

        threading.Thread(target=kill_after_first_checkpoint, daemon=True).start()
        killed_s, result = run(out)
    restarts = result.manifest["training"]["restarts"]
    return {
        "steady_s": steady_s,
        "killed_s": killed_s,
        "lost_s": killed_s - steady_s,
        "ratio": killed_s / steady_s,
        "restarts": restarts,
        "valid_auc": result.metrics["valid"].get("auc"),
    }


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
    ap.add_argument("--data-dir", type=Path, default=RESULTS / "data", help="where generated data is cached")
    ap.add_argument("--out", type=Path, default=RESULTS / "checkpoint.json", help="where the JSON goes")
    args = ap.parse_args(argv)
    report: dict = {"rows": args.rows, "rounds": args.rounds, "repeat": args.repeat, "load_average": os.getloadavg()}
    events = dataset(args.data_dir, args.rows)
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-checkpoint-") as tmp:
        with cluster(args.layout) as client:
            job, p, placed = placed_rows(_job(events, Path(tmp) / "unused", args.rounds), client)
            train_once(client, job, p, placed, None, Path(tmp))  # untimed: first-use costs
            report["intervals"] = intervals(client, job, p, placed, args.repeat, Path(tmp))
        write_json(report, args.out)  # kept if the restart part fails
        if args.kill:
            report["restart"] = restart(events, Path(tmp), args.rounds, 10)
    report["load_average_after"] = os.getloadavg()
    print(f"\n{args.rows:,} rows, {args.rounds} rounds, {args.layout}; median (min-max) of {args.repeat}")
    print(f"{'checkpoint_every':<18}{'train s':>24}{'ratio to none':>16}")
    for every, r in report["intervals"].items():
        spread = f"{r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f})"
        print(f"{every:<18}{spread:>24}{r['ratio_to_none']:>16.3f}")
    if "restart" in report:
        r = report["restart"]
        print(
            f"\nrestart: uninterrupted {r['steady_s']:.1f} s, one worker killed {r['killed_s']:.1f} s"
            f" (ratio {r['ratio']:.2f}); restarts {r['restarts']}"
        )
    print(f"load average before {report['load_average']}, after {report['load_average_after']}")
    print(f"\nJSON: {write_json(report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
