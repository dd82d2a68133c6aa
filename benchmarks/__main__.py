"""End-to-end benchmark: dpipe vs a hand-written Dask + xgboost.dask script.

    python -m benchmarks --rows 1000000 --repeat 3

Both run in one invocation on the same data (the demo table), the same LocalCluster and the same
XGBoost parameters (hist, 100 rounds, depth 8, eta 0.1, no early stopping), with the same
transforms (median/mean fills, standard scaling, categorical encoding) and validation fraction.
Prints a table and writes JSON. Timings are wall-clock medians; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

ROUNDS, DEPTH, ETA = 100, 8, 0.1
NUMERIC = ["age", "income", "sessions", "tenure_days", "pages_per_session"]
CATEGORICAL = ["country", "device", "plan"]


def dpipe_job(data: Path, out: Path) -> dict:
    return {
        "name": "bench",
        "source": {"uri": str(data / "events"), "columns": ["event_id", *NUMERIC, *CATEGORICAL, "converted"]},
        "id_columns": ["event_id"],
        "features": [
            {"op": "fill_missing", "columns": ["age", "tenure_days"], "strategy": "median"},
            {"op": "fill_missing", "columns": ["income"], "strategy": "mean"},
            {"op": "standard_scale", "columns": ["pages_per_session", "sessions"]},
            {"op": "categorical", "columns": CATEGORICAL},
        ],
        "label": {"column": "converted"},
        "split": {"valid_fraction": 0.2, "seed": 0, "key": ["event_id"]},
        "train": {"num_boost_round": ROUNDS, "early_stopping_rounds": None, "eval_metric": ["auc"],
                  "eval_train": False,  # the baseline evaluates the validation rows only
                  "params": {"max_depth": DEPTH, "eta": ETA}},
        "output": {"uri": str(out)},
    }


def run_dpipe(client, data: Path, out: Path) -> dict:
    import dpipe

    result = dpipe.run(dpipe.job_from_dict(dpipe_job(data, out)), client=client, progress=False)
    return {"auc": result.metrics["valid"]["auc"], "stages": result.timings}


def run_handwritten(client, data: Path) -> dict:
    """What an expert would write directly: one pass for statistics, then DaskQuantileDMatrix."""
    import dask
    import dask.dataframe as dd
    import pandas as pd
    import xgboost as xgb

    stages = {}
    t = time.perf_counter()
    df = dd.read_parquet(str(data / "events"), columns=["event_id", *NUMERIC, *CATEGORICAL, "converted"])
    valid = (df["event_id"] % 5) == 0
    train = df[~valid]
    medians = [train[c].quantile(0.5) for c in ("age", "tenure_days")]
    stats = dask.compute(
        *medians, train["income"].mean(), train[["pages_per_session", "sessions"]].mean(),
        train[["pages_per_session", "sessions"]].std(ddof=0), *[train[c].value_counts(split_out=1) for c in CATEGORICAL],
    )
    stages["fit"] = time.perf_counter() - t
    age_med, ten_med, inc_mean, means, stds = stats[:5]
    cats = {c: sorted(vc.index) for c, vc in zip(CATEGORICAL, stats[5:])}

    def transform(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.fillna({"age": age_med, "tenure_days": ten_med, "income": inc_mean})
        for c in ("pages_per_session", "sessions"):
            pdf[c] = (pdf[c] - means[c]) / stds[c]
        for c in CATEGORICAL:
            pdf[c] = pdf[c].astype(pd.CategoricalDtype(cats[c]))
        return pdf.astype({c: "float32" for c in NUMERIC})

    t = time.perf_counter()
    frame = df.map_partitions(transform).persist()
    dask.distributed.wait(frame)
    stages["load"] = time.perf_counter() - t
    is_valid = (frame["event_id"] % 5) == 0
    features = [*NUMERIC, *CATEGORICAL]
    t = time.perf_counter()
    dtrain = xgb.dask.DaskQuantileDMatrix(client, frame[~is_valid][features], frame[~is_valid]["converted"], enable_categorical=True)
    dvalid = xgb.dask.DaskQuantileDMatrix(client, frame[is_valid][features], frame[is_valid]["converted"], ref=dtrain, enable_categorical=True)
    out = xgb.dask.train(client, {"tree_method": "hist", "objective": "binary:logistic", "max_depth": DEPTH, "eta": ETA,
                                  "eval_metric": ["auc"]}, dtrain, num_boost_round=ROUNDS, evals=[(dvalid, "valid")],
                         verbose_eval=False)
    stages["train"] = time.perf_counter() - t
    return {"auc": out["history"]["valid"]["auc"][-1], "stages": stages}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="100k rows, 1 repeat")
    parser.add_argument("--json", default="benchmarks/results/latest.json", help="where to write the JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeat = 100_000, 1

    import dask.distributed  # noqa: F401
    from distributed import Client, LocalCluster

    from dpipe.demo import write_demo_data

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_demo_data(str(data), rows=args.rows, days=12)
        results: dict[str, list[dict]] = {"dpipe": [], "handwritten": []}
        with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            run_dpipe(client, data, Path(tmp) / "warmup")  # imports and first-use costs on the workers
            run_handwritten(client, data)
            for i in range(args.repeat):
                for name in results:  # alternate so drift on a shared machine hits both
                    t = time.perf_counter()
                    r = run_dpipe(client, data, Path(tmp) / f"run{i}") if name == "dpipe" else run_handwritten(client, data)
                    r["total"] = time.perf_counter() - t
                    results[name].append(r)

    summary = {}
    for name, runs in results.items():
        totals = [r["total"] for r in runs]
        summary[name] = {
            "total_median_s": statistics.median(totals), "total_min_s": min(totals), "total_max_s": max(totals),
            "rows_per_s": args.rows / statistics.median(totals), "valid_auc": runs[-1]["auc"],
            "stages_median_s": {s: statistics.median(r["stages"].get(s, 0.0) for r in runs)
                                for s in sorted({s for r in runs for s in r["stages"]})},
        }
    ratio = summary["dpipe"]["total_median_s"] / summary["handwritten"]["total_median_s"]
    report = {"rows": args.rows, "repeat": args.repeat, "workers": args.workers, "threads": args.threads,
              "systems": summary, "ratio_dpipe_over_handwritten": ratio}

    print(f"{'system':<12} {'median s':>9} {'min s':>8} {'max s':>8} {'rows/s':>10} {'valid AUC':>10}  stages (median s)")
    for name, s in summary.items():
        stages = ", ".join(f"{k}={v:.2f}" for k, v in s["stages_median_s"].items())
        print(f"{name:<12} {s['total_median_s']:>9.2f} {s['total_min_s']:>8.2f} {s['total_max_s']:>8.2f} "
              f"{s['rows_per_s']:>10.0f} {s['valid_auc']:>10.4f}  {stages}")
    print(f"ratio dpipe / handwritten (end to end, median): {ratio:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
