"""Tuning: 20 trials on placed data against 20 separate `dpipe run`s with the same parameters.

    python -m benchmarks.tuning --rows 2e6 --trials 20 --repeat 3
    python -m benchmarks.tuning --rows 2e6 --trials 20 --rounds 50 --repeat 3 --runs-in 1   # the runs once
    python -m benchmarks.tuning --rows 50000 --trials 4 --rounds 20 --repeat 1    # a smoke run

The benchmark dataset and job (benchmarks/workload.py: fill_missing median, standard_scale,
categorical; XGBoost hist, 100 rounds, AUC on the validation rows), on one LocalCluster, after
an untimed warm-up run:

* **tuner**: the job's stages by hand, as the runner chains them (plan, fit, place), then
  :func:`dpipe.tune.tune` with ``--trials`` trials over eta, max_depth, subsample and
  min_child_weight (TPE, pruning off unless ``--pruning``, so both sides boost the same rounds);
* **runs**: one ``dpipe.run`` per completed trial of that tuning, with ``train.params`` set to the trial's
  parameters (the same cluster, one after another).

Each side's time splits into *boosting* and *everything else*. Boosting: for the tuner, each
trial's training calls on the matrices kept on the workers (the trials table's ``boost_seconds``);
for the runs, every ``dpipe.train.boost`` call, timed here, which includes the sketch
``xgboost.dask.train`` makes of its ``DaskQuantileDMatrix`` at every call (it cannot be told apart,
so the runs' figure flatters them). Everything else: reading, fitting, placing, the tuner's one
sketch, Optuna and its SQLite study, writing bundles. The target: the tuner's everything-else
under 5% of its total. The tuner writes no bundle (the runner's `tune:` integration does); the runs'
write stage is reported apart so it can be discounted. Prints a table; writes JSON under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = {
    "eta": {"low": 0.03, "high": 0.3, "log": True},
    "max_depth": {"low": 4, "high": 10},
    "subsample": {"low": 0.6, "high": 1.0},
    "min_child_weight": {"low": 1.0, "high": 20.0, "log": True},
}


class BoostTimer:
    """Times every ``dpipe.train.boost`` call while installed (the runs')."""

    def __init__(self):
        self.seconds: list[float] = []

    @contextlib.contextmanager
    def installed(self):
        from dpipe import train

        original = train.boost

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - t0)

        train.boost = timed
        try:
            yield self
        finally:
            train.boost = original

    def take(self) -> float:
        total, self.seconds = sum(self.seconds), []
        return total


def _job(events: Path, out: Path, rounds: int) -> dict:
    from benchmarks.workload import dpipe_job

    job = dpipe_job(str(events), str(out))
    job["output"]["valid_predictions"] = False
    job["lineage"] = {"openlineage": {"transport": "none"}}
    job["train"]["num_boost_round"] = rounds
    return job


def dpipe_run(spec: dict, client):
    import dpipe

    return dpipe.run(dpipe.job_from_dict(spec), client, progress=False, force=True)


def _compute(client):
    def compute(*collections):
        return tuple(client.gather(client.compute(list(collections))))

    return compute


def tuner(spec: dict, client, work: Path, *, trials: int, pruning: bool, seed: int) -> dict:
    """Plan, fit, place and tune, timed stage by stage (the runner's order)."""
    import dpipe
    from dpipe import stages
    from dpipe.plan import plan
    from dpipe.spec.tune import TuneSpec
    from dpipe.train import TrainConfig
    from dpipe.tune import tune

    compute = _compute(client)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    t0 = time.perf_counter()
    job = dpipe.job_from_dict(spec)
    p = plan(job)
    gate = stages.quality_gate(p)
    pre = stages.prepass(p, gate, compute)
    timings["plan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted = stages.fit(p, gate, pre, compute)
    timings["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    placed = stages.place(client, p, fitted, gate, pre)
    timings["load"] = time.perf_counter() - t0
    section = TuneSpec.model_validate({"space": SPACE, "n_trials": trials, "seed": seed, "pruning": pruning})
    t0 = time.perf_counter()
    result = tune(
        client,
        placed,
        TrainConfig.from_spec(job.train),
        section,
        study_name=f"bench-{seed}",
        storage=str(work / "study.db"),
    )
    timings["tune"] = time.perf_counter() - t0
    total = time.perf_counter() - started
    per_trial = [t["boost_seconds"] for t in result.trials]
    boosting = sum(per_trial)
    return {
        "total_s": total,
        "boost_s": boosting,
        "other_s": total - boosting,
        "other_fraction": (total - boosting) / total,
        "matrices_s": result.timings["matrices"],
        "stages_s": timings,
        "per_trial_boost_s": per_trial,
        "trials": [
            {k: t[k] for k in ("number", "params", "value", "state", "rounds", "seconds")} for t in result.trials
        ],
        "best_value": result.best_value,
    }


def runs(spec: dict, params: list[dict], client, work: Path, timer: BoostTimer) -> dict:
    """One ``dpipe.run`` per parameter set, one after another."""
    totals, boosts, writes, values = [], [], [], []
    for i, trial in enumerate(params):
        one = {**spec, "train": {**spec["train"], "params": {**spec["train"]["params"], **trial}}}
        one["output"] = {**spec["output"], "uri": str(work / f"run-{i}")}
        timer.take()
        t0 = time.perf_counter()
        result = dpipe_run(one, client)
        totals.append(time.perf_counter() - t0)
        boosts.append(timer.take())
        writes.append(float(result.timings.get("write", 0.0)))
        values.append(result.metrics["valid"].get("auc"))
    total, boosting = sum(totals), sum(boosts)
    return {
        "total_s": total,
        "boost_s": boosting,
        "other_s": total - boosting,
        "other_fraction": (total - boosting) / total,
        "write_s": sum(writes),
        "per_run_s": totals,
        "per_trial_boost_s": boosts,
        "values": values,
    }


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(rounds: list[dict]) -> dict:
    """Spreads over repeats; the runs' only over the repeats that timed them (``--runs-in``)."""
    out: dict = {}
    for side in ("tuner", "runs"):
        timed = [r[side] for r in rounds if r[side] is not None]
        if not timed:
            continue
        out[side] = {
            key: _spread([t[key] for t in timed]) for key in ("total_s", "boost_s", "other_s", "other_fraction")
        }
        out[side]["per_trial_boost_s"] = _spread([s for t in timed for s in t["per_trial_boost_s"]])
        out[side]["repeats"] = len(timed)
    if "runs" not in out:
        return out
    out["runs"]["per_run_s"] = _spread([s for r in rounds if r["runs"] for s in r["runs"]["per_run_s"]])
    # Each tuning against the runs of its own repeat where they ran, else against the runs' median total.
    runs_total = out["runs"]["total_s"]["median"]
    out["tuner_over_runs"] = _spread(
        [r["tuner"]["total_s"] / (r["runs"]["total_s"] if r["runs"] else runs_total) for r in rounds]
    )
    return out


def main(argv=None) -> int:
    from benchmarks.data import dataset
    from benchmarks.report import write_json
    from benchmarks.suite import cluster

    p = argparse.ArgumentParser(prog="python -m benchmarks.tuning", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=lambda t: int(float(t)), default=2_000_000)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--rounds", type=int, default=100, help="boosting rounds of every trial and run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--runs-in",
        type=int,
        default=None,
        help="time the separate runs in the first N repeats only (default: every repeat); each run is a sample",
    )
    p.add_argument("--layout", default="2x1")
    p.add_argument("--pruning", action="store_true", help="prune at 10%% and 30%% of the rounds (MedianPruner)")
    p.add_argument("--data-dir", type=Path, default=RESULTS / "data", help="where generated data is cached")
    p.add_argument("--out", type=Path, default=RESULTS / "tuning.json", help="where the JSON goes")
    args = p.parse_args(argv)
    report: dict = {
        "rows": args.rows,
        "trials": args.trials,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "runs_in": args.repeat if args.runs_in is None else min(args.runs_in, args.repeat),
        "layout": args.layout,
        "pruning": args.pruning,
        "load_average": os.getloadavg(),
    }
    events = dataset(args.data_dir, args.rows)
    timer = BoostTimer()
    rounds = []
    with (
        tempfile.TemporaryDirectory(prefix="dpipe-bench-tuning-") as tmp,
        cluster(args.layout) as client,
        timer.installed(),
    ):
        # Untimed: the workers import XGBoost, pyarrow and dpipe once, before either side is timed.
        warm = _job(events, Path(tmp) / "warm-up", 2)
        dpipe_run(warm, client)
        for r in range(args.repeat):
            work = Path(tmp) / f"repeat-{r}"
            work.mkdir()
            spec = _job(events, work / "bundle", args.rounds)
            tuned = tuner(spec, client, work, trials=args.trials, pruning=args.pruning, seed=r)
            params = [t["params"] for t in tuned["trials"] if t["state"] == "complete"]
            ran = runs(spec, params, client, work, timer) if r < report["runs_in"] else None
            rounds.append({"tuner": tuned, "runs": ran, "load_average": os.getloadavg()})
            # Kept after every repeat: an interrupted benchmark keeps what it measured.
            write_json({**report, "rounds_detail": rounds, "summary": summarize(rounds)}, args.out)
            print(
                f"repeat {r}: tuner {tuned['total_s']:.1f} s ({100 * tuned['other_fraction']:.2f}% beyond boosting)"
                + (f", {len(params)} runs {ran['total_s']:.1f} s ({100 * ran['other_fraction']:.2f}%)" if ran else ""),
                file=sys.stderr,
                flush=True,
            )
    report["rounds_detail"] = rounds
    report["summary"] = summary = summarize(rounds)
    report["load_average_after"] = os.getloadavg()
    print(
        f"\n{args.rows:,} rows, {args.trials} trials x {args.rounds} rounds, {args.layout} (workers x threads),"
        f" pruning {'on' if args.pruning else 'off'}; median (min-max) of {args.repeat} repeat(s),"
        f" the separate runs timed in {report['runs_in']}"
    )
    print(f"{'':<28}{'total s':>24}{'boosting s':>24}{'beyond boosting':>26}{'boost s per trial':>24}")
    for side, name in (("tuner", "tuner (plan..tune)"), ("runs", "separate dpipe runs")):
        if side not in summary:
            continue
        s = summary[side]

        def cell(x: dict, pct: bool = False) -> str:
            if pct:
                return f"{100 * x['median']:.2f}% ({100 * x['min']:.2f}-{100 * x['max']:.2f})"
            return f"{x['median']:.2f} ({x['min']:.2f}-{x['max']:.2f})"

        print(
            f"{name:<28}{cell(s['total_s']):>24}{cell(s['boost_s']):>24}{cell(s['other_fraction'], True):>26}"
            f"{cell(s['per_trial_boost_s']):>24}"
        )
    if "runs" in summary:
        per_run = summary["runs"]["per_run_s"]
        print(f"one separate run: {per_run['median']:.2f} s ({per_run['min']:.2f}-{per_run['max']:.2f})")
        ratio = summary["tuner_over_runs"]
        print(f"tuner / runs, total: {ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})")
    print(f"load average before {report['load_average']}, after {report['load_average_after']}")
    path = write_json(report, args.out)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
