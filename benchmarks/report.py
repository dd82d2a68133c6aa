"""Printing tables, writing JSON and plotting the scaling sweep."""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("read", "fit", "transform", "matrix", "train", "predict")


def write_json(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float))
    return path


def _stage_cells(stages: dict) -> str:
    return ", ".join(f"{k}={v['median']:.2f}" for k, v in stages.items())


def print_compare(report: dict, out=print) -> None:
    out(
        f"\n{report['rows']:,} rows, {report['layout']['name']} (workers x threads), {report['repeat']} repeat(s), "
        f"{report['rounds']} rounds; seconds are medians (min-max)"
    )
    out(
        f"{'system':<12} {'end to end s':>20} {'rows/s':>10} {'AUC':>7} {'pred AUC':>8} {'peak MiB':>9} {'reads/byte':>10}  stages (median s)"
    )
    for name, s in report["systems"].items():
        t = s["total_s"]
        passes = report["bytes_read"].get(name, {}).get("per_projected_byte")
        out(
            f"{name:<12} {t['median']:>8.2f} ({t['min']:.2f}-{t['max']:.2f}) {s['rows_per_s']:>10.0f} "
            f"{s['valid_auc']:>7.4f} {s['prediction_auc']:>8.4f} {s['memory_mib']['peak_total_mib']:>9.0f} "
            f"{'' if passes is None else f'{passes:.2f}':>10}  {_stage_cells(s['stages_s'])}"
        )
    if "dpipe_fit_only" in report["bytes_read"]:
        out(
            f"dpipe fit pass alone reads {report['bytes_read']['dpipe_fit_only']['per_projected_byte']:.2f}x the projected bytes"
        )
    for k, v in report["ratios"].items():
        out(f"  {k:<46} {v:6.2f}")


def print_scaling(report: dict, out=print) -> None:
    out(f"\n{'system':<12} {'layout':<10} {'rows':>10} {'median s':>9} {'rows/s':>10} {'peak MiB':>9}")
    for p in report["points"]:
        out(
            f"{p['system']:<12} {p['layout']:<10} {p['rows']:>10,} {p['total_s']['median']:>9.2f} "
            f"{p['rows_per_s']:>10.0f} {p['memory_mib']['peak_total_mib']:>9.0f}"
        )
    for g in report["growth"]:
        out(
            f"  {g['system']} {g['layout']}: {g['rows_ratio']:.0f}x rows -> {g['time_ratio']:.2f}x time, "
            f"{g['peak_memory_ratio']:.2f}x peak memory"
        )


def print_ltm(report: dict, out=print) -> None:
    mib = 2**20
    out(
        f"\nfeatures-only, {report['rows']:,} rows: {report['dataset_bytes'] / mib:.0f} MiB on disk, "
        f"{report['in_memory_bytes'] / mib:.0f} MiB in memory; memory_limit {report['memory_limit_per_worker_bytes'] / mib:.0f} MiB "
        f"x {report['layout']['workers']} worker(s) ({report['memory_limit_total_over_in_memory']:.2f}x the data)"
    )
    m = report["memory_mib"]
    out(f"  arrow memory pool: {report['arrow_memory_pool']}; completed: {report['completed']}")
    out(
        f"  {report['total_s']:.1f} s; peak one worker {m['peak_one_workers_process_mib']:.0f} MiB "
        f"({report['peak_one_worker_over_limit']:.2f}x its limit); all workers {m['peak_workers_mib']:.0f} MiB "
        f"({report['peak_workers_over_in_memory']:.2f}x the data); workers restarted: {report['workers_restarted']}"
    )


def plot_scaling(report: dict, path: Path, out=print) -> Path | None:
    """Time and peak memory against rows, one line per system and layout. Skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out("plot skipped: matplotlib is not installed (pip install 'dpipe[bench]' or pip install matplotlib)")
        return None
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = list(dict.fromkeys((p["system"], p["layout"]) for p in report["points"]))
    for system, layout in keys:
        series = sorted(
            (p for p in report["points"] if (p["system"], p["layout"]) == (system, layout)), key=lambda p: p["rows"]
        )
        rows = [p["rows"] for p in series]
        ax_t.plot(rows, [p["total_s"]["median"] for p in series], marker="o", label=f"{system} ({layout})")
        ax_m.plot(rows, [p["memory_mib"]["peak_total_mib"] for p in series], marker="o", label=f"{system} ({layout})")
    for ax, title in ((ax_t, "end to end (median s)"), (ax_m, "peak RSS, all processes (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def against(times: dict[str, list[float]], base: str, ratio_key: str) -> dict[str, dict[str, float]]:
    """Each entry's median, min and max seconds, and its median's ratio (``ratio_key``) to ``base``'s."""
    import statistics

    reference = statistics.median(times[base])
    return {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            ratio_key: statistics.median(t) / reference,
        }
        for name, t in times.items()
    }
