"""The benchmark modes: compare the systems, sweep sizes and layouts, run larger than memory."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import systems as _systems
from benchmarks.data import dataset, dataset_bytes
from benchmarks.measure import MemorySampler, bytes_read, counting_uri, dask_roles
from benchmarks.workload import COLUMNS, ROUNDS, auc, columns_read


def parse_layout(text: str) -> tuple[int, int]:
    """``"2x1"`` -> 2 workers x 1 thread."""
    try:
        workers, threads = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"layout must look like 2x1 (workers x threads). Instead got {text!r}") from None
    if workers < 1 or threads < 1:
        raise ValueError(f"layout needs at least 1 worker and 1 thread. Instead got {text!r}")
    return workers, threads


@contextlib.contextmanager
def cluster(layout: str, memory_limit: str | int | None = "auto"):
    from distributed import Client, LocalCluster

    workers, threads = parse_layout(layout)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
            memory_limit=memory_limit,
        ) as c,
        Client(c) as client,
    ):
        client.get_task_stream()  # installs the scheduler's task-stream plugin (see task_seconds)
        yield client


def prediction_auc(path: str) -> float:
    """AUC of the written validation predictions (read back untimed): a check on each system's output."""
    df = pd.read_parquet(path, columns=["label", "prediction"])
    return auc(df["label"].to_numpy(), df["prediction"].to_numpy())


def task_seconds(stream: list[dict], top: int = 25) -> dict:
    """Worker seconds per task prefix and action (compute, transfer, ...), from the scheduler's
    task stream: where a Dask system spends its workers' time."""
    from dask.utils import key_split

    totals: dict[str, float] = {}
    for task in stream:
        prefix = key_split(task["key"])[:60]
        for ss in task.get("startstops", ()):
            name = f"{prefix} [{ss['action']}]"
            totals[name] = totals.get(name, 0.0) + ss["stop"] - ss["start"]
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {k: round(v, 3) for k, v in ranked}


def fresh_workers(client, system: str, warm: Path | None, work: Path, workload: str) -> None:
    """Restart the workers, then (with ``warm``) run ``system`` on ``warm`` untimed: every timed run of a
    Dask system starts from the same memory (worker processes keep much of what an earlier run
    freed: 7.7 GB after dpipe's 40M-row run, which the next system's peak counted) with its
    imports and first-use costs paid. Without ``warm`` (``--quick``, a smoke run) nothing is done:
    a restart there measures nothing, and one under a loaded machine (the test suite) can time out."""
    if warm is None:
        return
    client.restart()
    run_once(system, client, str(warm), work / "warm", rounds=2, workload=workload)


def run_once(
    system: str,
    client,
    uri: str,
    out: Path,
    *,
    rounds: int,
    storage_options: dict | None = None,
    profile: Path | None = None,
    workload: str = "default",
) -> dict:
    """One timed run of ``system`` with its peak memory; ``out`` is removed afterwards."""
    if system in _systems.DASK_SYSTEMS:
        fn = _systems.DASK_SYSTEMS[system]
        report = contextlib.nullcontext()
        if profile is not None:
            from distributed import performance_report

            report = performance_report(filename=str(profile))
        since = time.time()
        with MemorySampler(dask_roles()) as mem, report:
            start = time.perf_counter()
            result = fn(client, uri, out, storage_options, rounds=rounds, workload=workload)
            total = time.perf_counter() - start
        memory = mem.result()
        result["task_seconds"] = task_seconds(client.get_task_stream(start=since))
    else:
        result, memory = _systems.run_local(system, uri, out, storage_options, rounds=rounds, workload=workload)
        total = sum(result["stages"].values())  # measured inside the process, after its imports
    result["prediction_auc"] = prediction_auc(result.pop("predictions"))
    shutil.rmtree(out, ignore_errors=True)
    return {"total_s": total, **result, "memory": memory}


def count_bytes(system: str, client, root: Path, work: Path, workload: str = "default") -> dict:
    """An untimed run on ``countingfile://`` with one boosting round (training reads no input)."""
    counter = Path(tempfile.mkdtemp(prefix=f"count-{system}-", dir=work))
    options = {"counter_dir": str(counter)}
    out = work / f"count-{system}-out"
    if system == "dpipe_fit_only":
        _systems.run_dpipe_features(client, counting_uri(root), out, options, write=False, workload=workload)
    elif system in _systems.DASK_SYSTEMS:
        _systems.DASK_SYSTEMS[system](client, counting_uri(root), out, options, rounds=1, workload=workload)
    else:
        _systems.run_local(system, counting_uri(root), out, options, rounds=1, workload=workload)
    shutil.rmtree(out, ignore_errors=True)
    return bytes_read(counter)


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict], rows: int) -> dict:
    totals = [r["total_s"] for r in runs]
    stage_names = list(dict.fromkeys(s for r in runs for s in r["stages"]))
    memory_keys = list(dict.fromkeys(k for r in runs for k in r["memory"]))
    return {
        "total_s": _spread(totals),
        "stages_s": {s: _spread([r["stages"][s] for r in runs if s in r["stages"]]) for s in stage_names},
        "rows_per_s": rows / statistics.median(totals),
        "valid_auc": runs[-1]["auc"],
        "prediction_auc": runs[-1]["prediction_auc"],
        "memory_mib": {k: max(r["memory"].get(k, 0.0) for r in runs) for k in memory_keys},
        "runs": runs,
    }


NON_TRAINING = ("read", "fit", "transform", "read+fit", "read+transform", "matrix")


def ratios(summary: dict, read_passes: dict) -> dict:
    """Ratios of dpipe to each other system, and the figures each target is judged by."""
    med = {name: s["total_s"]["median"] for name, s in summary.items()}
    out: dict = {}
    if "dpipe" not in summary:
        return out
    for other in ("handwritten", "pandas", "floor"):
        if other in summary:
            out[f"dpipe/{other}"] = med["dpipe"] / med[other]
    d = {k: v["median"] for k, v in summary["dpipe"]["stages_s"].items()}
    if "floor" in summary:
        f = {k: v["median"] for k, v in summary["floor"]["stages_s"].items()}
        # dpipe's matrix build is fused into its train stage, so its non-training stages stop at
        # placement; the floor's matrix build goes to its train side to compare like with like.
        out["dpipe_non_training/floor_scan"] = sum(v for k, v in d.items() if k in NON_TRAINING) / f["read"]
        out["dpipe_matrix+train/floor_matrix+train"] = d["matrix+train"] / (f["matrix"] + f["train"])
        out["dpipe_matrix+train/floor_train"] = d["matrix+train"] / f["train"]
    if "handwritten" in summary:
        h = {k: v["median"] for k, v in summary["handwritten"]["stages_s"].items()}
        out["dpipe_matrix+train/handwritten_matrix+train"] = d["matrix+train"] / h["matrix+train"]
        out["dpipe_peak_memory/handwritten_peak_memory"] = (
            summary["dpipe"]["memory_mib"]["peak_total_mib"] / summary["handwritten"]["memory_mib"]["peak_total_mib"]
        )
    if "dpipe_fit_only" in read_passes:
        out["dpipe_fit_reads_per_input_byte"] = read_passes["dpipe_fit_only"]["per_projected_byte"]
    return out


def compare(
    cache: Path,
    rows: int,
    *,
    repeat: int,
    layout: str,
    systems: list[str],
    rounds: int = ROUNDS,
    seed: int = 0,
    warmup: bool = True,
    count: bool = True,
    profile_dir: Path | None = None,
    log=print,
    workload: str = "default",
) -> dict:
    """Every system on the same data and cluster, alternating, ``repeat`` times each, on the
    ``default`` or the ``full`` workload (:mod:`benchmarks.workload`)."""
    root = dataset(cache, rows, seed=seed, log=log)
    warm = dataset(cache, 20_000, seed=seed, log=log) if warmup else None
    work = Path(tempfile.mkdtemp(prefix="dpipe-bench-"))
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    read_passes: dict = {}
    data_bytes, projected = dataset_bytes(root), dataset_bytes(root, columns_read(workload))
    try:
        with cluster(layout) as client:
            for i in range(repeat):
                # Alternate, so drift on a shared machine hits every system, and rotate who goes
                # first: the first run after the warm-up is often the slowest.
                for s in systems[i % len(systems) :] + systems[: i % len(systems)]:
                    log(f"run {i + 1}/{repeat}: {s} ({rows:,} rows, {layout})")
                    if s in _systems.DASK_SYSTEMS:
                        fresh_workers(client, s, warm, work, workload)
                    profile = (
                        profile_dir / f"{s}-rows{rows}.html"
                        if profile_dir and i == 0 and s in _systems.DASK_SYSTEMS
                        else None
                    )
                    r = run_once(
                        s, client, str(root), work / f"{s}-{i}", rounds=rounds, profile=profile, workload=workload
                    )
                    log(f"  {r['total_s']:.2f} s, AUC {r['auc']:.4f}, peak {r['memory']['peak_total_mib']:.0f} MiB")
                    runs[s].append(r)
            if count:
                for s in [*systems, *(["dpipe_fit_only"] if "dpipe" in systems else [])]:
                    log(f"counting bytes read: {s}")
                    n = count_bytes(s, client, root, work, workload)
                    read_passes[s] = {
                        **n,
                        "per_dataset_byte": n["bytes"] / data_bytes,
                        "per_projected_byte": n["bytes"] / projected,
                    }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {s: summarize(r, rows) for s, r in runs.items()}
    workers, threads = parse_layout(layout)
    return {
        "mode": "compare",
        "workload": workload,
        "rows": rows,
        "repeat": repeat,
        "rounds": rounds,
        "layout": {"name": layout, "workers": workers, "threads_per_worker": threads},
        "dataset": {"uri": str(root), "bytes": data_bytes, "projected_bytes": projected, "seed": seed},
        "systems": summary,
        "bytes_read": read_passes,
        "ratios": ratios(summary, read_passes),
    }


def scaling(
    cache: Path,
    sizes: list[int],
    layouts: list[str],
    *,
    systems: list[str],
    repeat: int = 1,
    rounds: int = ROUNDS,
    seed: int = 0,
    checkpoint=None,
    log=print,
) -> dict:
    """The same runs over sizes and worker layouts. Single-process systems ignore the layout and
    run with the first one only. ``checkpoint(report)`` is called after every point, so an
    interrupted sweep keeps what it measured."""
    points = []
    work = Path(tempfile.mkdtemp(prefix="dpipe-bench-"))
    try:
        for k, layout in enumerate(layouts):
            with cluster(layout) as client:
                warm = dataset(cache, 20_000, seed=seed, log=log)
                for s in systems:
                    if s in _systems.DASK_SYSTEMS:
                        run_once(s, client, str(warm), work / "warm", rounds=2)
                for j, rows in enumerate(sizes):
                    root = dataset(cache, rows, seed=seed, log=log)
                    for s in systems[j % len(systems) :] + systems[: j % len(systems)]:  # rotate who goes first
                        if s not in _systems.DASK_SYSTEMS and k > 0:
                            continue
                        log(f"{layout} {rows:,} rows: {s}")
                        rs = [run_once(s, client, str(root), work / f"{s}-{i}", rounds=rounds) for i in range(repeat)]
                        summary = summarize(rs, rows)
                        summary.pop("runs")
                        points.append(
                            {
                                "layout": layout if s in _systems.DASK_SYSTEMS else "1 process",
                                "rows": rows,
                                "system": s,
                                "dataset_bytes": dataset_bytes(root),
                                **summary,
                            }
                        )
                        log(
                            f"  {summary['total_s']['median']:.2f} s, peak {summary['memory_mib']['peak_total_mib']:.0f} MiB"
                        )
                        if checkpoint:
                            checkpoint(_scaling_report(points, sizes, layouts, rounds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _scaling_report(points, sizes, layouts, rounds)


def _scaling_report(points: list[dict], sizes: list[int], layouts: list[str], rounds: int) -> dict:
    growth = []
    for key in dict.fromkeys((p["system"], p["layout"]) for p in points):
        series = sorted((p for p in points if (p["system"], p["layout"]) == key), key=lambda p: p["rows"])
        if len(series) > 1:
            a, b = series[0], series[-1]
            growth.append(
                {
                    "system": key[0],
                    "layout": key[1],
                    "rows_from": a["rows"],
                    "rows_to": b["rows"],
                    "rows_ratio": b["rows"] / a["rows"],
                    "time_ratio": b["total_s"]["median"] / a["total_s"]["median"],
                    "peak_memory_ratio": b["memory_mib"]["peak_total_mib"] / a["memory_mib"]["peak_total_mib"],
                }
            )
    return {"mode": "scaling", "sizes": sizes, "layouts": layouts, "rounds": rounds, "points": points, "growth": growth}


def _in_memory_bytes(root: Path, rows: int) -> int:
    """The projected columns' size as pandas frames (dpipe's dtypes), from one file scaled to all rows."""
    from dpipe.io import read

    files = sorted(root.glob("month=*/*.parquet"))
    src = read(str(files[0]), columns=COLUMNS)
    first = src.frame.compute(scheduler="sync")
    return int(first.memory_usage(deep=True).sum() / max(len(first), 1) * rows)


def larger_than_memory(
    cache: Path,
    rows: int,
    *,
    fraction: float,
    layout: str,
    arrow_pool: str | None = None,
    timeout: float = 900,
    seed: int = 0,
    log=print,
) -> dict:
    """dpipe's features-only job (read, fit, transform, write Parquet) with worker memory limits
    adding up to ``fraction`` of the data's in-memory size.

    ``arrow_pool`` sets ``ARROW_DEFAULT_MEMORY_POOL`` for the workers (``system`` returns freed
    memory to the OS; pyarrow's default pool keeps it, which Dask sees as unmanaged memory and
    pauses the workers). A run that stalls past ``timeout`` seconds is reported, not waited on.
    """
    import os

    root = dataset(cache, rows, seed=seed, log=log)
    workers, threads = parse_layout(layout)
    in_memory = _in_memory_bytes(root, rows)
    limit = int(fraction * in_memory / workers)
    work = Path(tempfile.mkdtemp(prefix="dpipe-bench-"))
    saved = os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
    if arrow_pool:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = arrow_pool  # inherited by the worker processes
    stalled = False
    try:
        with cluster(layout, memory_limit=limit) as client:
            before = set(client.scheduler_info(n_workers=-1)["workers"])
            log(
                f"features-only: {rows:,} rows, {in_memory / 2**20:.0f} MiB in memory, "
                f"{workers} worker(s) x {limit / 2**20:.0f} MiB, arrow pool {arrow_pool or 'default'}"
            )
            with MemorySampler(dask_roles()) as mem:
                start = time.perf_counter()
                try:
                    result = _systems.run_dpipe_features(client, str(root), work / "features", timeout=timeout)
                except TimeoutError:
                    stalled, result = True, {"stages": {}}
                total = time.perf_counter() - start
            after = set(client.scheduler_info(n_workers=-1)["workers"])
            written = sum(p.stat().st_size for p in (work / "features").glob("*.parquet"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if saved is None:
            os.environ.pop("ARROW_DEFAULT_MEMORY_POOL", None)
        else:
            os.environ["ARROW_DEFAULT_MEMORY_POOL"] = saved
    m = mem.result()
    return {
        "mode": "larger_than_memory",
        "rows": rows,
        "layout": {"name": layout, "workers": workers, "threads_per_worker": threads},
        "dataset_bytes": dataset_bytes(root),
        "in_memory_bytes": in_memory,
        "memory_limit_per_worker_bytes": limit,
        "memory_limit_total_over_in_memory": limit * workers / in_memory,
        "arrow_memory_pool": arrow_pool or "default",
        "completed": not stalled,
        "total_s": total,
        "stages_s": result["stages"],
        "output_bytes": written,
        "memory_mib": m,
        "peak_one_worker_over_limit": m["peak_one_workers_process_mib"] * 2**20 / limit,
        "peak_workers_over_in_memory": m["peak_workers_mib"] * 2**20 / in_memory,
        "workers_restarted": len(before - after),
    }
