"""A deterministic HIGGS-like table at any size, Hive-partitioned Parquet by month.

Columns: ``row_id`` (int64), ``f00``..``f27`` (float32, ~2% missing each), ``cat10``, ``cat100``,
``cat1000`` (strings of cardinality ~10, ~100, ~1000, Zipf-like), ``event_date`` (a date in
2024) and ``label`` (int8). The label depends on products, thresholds and sines of the features
and on two categorical columns, so a depth-8 tree ensemble has something to learn (AUC ~0.8).

Rows are generated month by month with a generator seeded by ``(seed, month)``, so memory stays
bounded at any size and the same ``(rows, seed)`` always gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_FLOAT = 28
FLOATS = [f"f{i:02d}" for i in range(N_FLOAT)]
CATEGORICAL = {"cat10": 10, "cat100": 100, "cat1000": 1000}
NULL_FRACTION = 0.02
MONTHS = 12
ROWS_PER_FILE = 250_000  # bounds a partition's size, so the larger-than-memory run has small tasks
YEAR = 2024


def _month_rows(rows: int) -> list[int]:
    base, extra = divmod(rows, MONTHS)
    return [base + (1 if m < extra else 0) for m in range(MONTHS)]


def make_month(rows: int, month: int, *, seed: int = 0, first_id: int = 0) -> pa.Table:
    """The rows of one month (1-based) as an Arrow table."""
    rng = np.random.default_rng([seed, month])
    effects = np.random.default_rng([seed, 0])  # the same category effects in every month
    n = rows
    x = rng.standard_normal((n, N_FLOAT)).astype("float32")
    x[:, 20:] = np.abs(x[:, 20:]) + 0.5 * np.abs(x[:, :8])  # HIGGS's high-level features: positive, correlated
    cats = {}
    for name, k in CATEGORICAL.items():
        weights = 1.0 / np.arange(1, k + 1) ** 1.1
        cats[name] = rng.choice(k, n, p=weights / weights.sum())
    effect10 = effects.normal(0, 0.8, 10)
    effect100 = effects.normal(0, 0.5, 100)
    logit = (
        0.8 * x[:, 0] * x[:, 1]
        + 1.2 * np.tanh(x[:, 2])
        - 0.7 * (x[:, 3] > 0.5)
        + 0.6 * np.sin(2.0 * x[:, 4])
        + 0.5 * x[:, 5] ** 2
        - 0.4 * x[:, 20]
        + 0.3 * x[:, 21] * x[:, 6]
        + 0.5 * (x[:, 7] > 0) * x[:, 8]
        + effect10[cats["cat10"]]
        + effect100[cats["cat100"]]
        + 0.3 * (cats["cat1000"] % 7 == 0)
        - 0.5
    )
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype("int8")
    start = dt.date(YEAR, month, 1)
    days = ((dt.date(YEAR + month // 12, month % 12 + 1, 1)) - start).days
    dates = np.datetime64(start) + rng.integers(0, days, n).astype("timedelta64[D]")
    columns = {"row_id": pa.array(np.arange(first_id, first_id + n, dtype="int64"))}
    for i, name in enumerate(FLOATS):
        columns[name] = pa.array(x[:, i], mask=rng.random(n) < NULL_FRACTION)
    for name, k in CATEGORICAL.items():
        labels = np.array([f"{name[3:]}_{v}" for v in range(k)], dtype=object)
        columns[name] = pa.array(labels[cats[name]], pa.string())
    columns["event_date"] = pa.array(dates.astype("datetime64[D]"), pa.date32())
    columns["label"] = pa.array(label)
    return pa.table(columns)


def write_dataset(root: Path, rows: int, *, seed: int = 0) -> Path:
    """Write ``root/month=YYYY-MM/part-NNN.parquet`` files; returns ``root``."""
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    first_id = 0
    for month, n in enumerate(_month_rows(rows), start=1):
        table = make_month(n, month, seed=seed, first_id=first_id)
        first_id += n
        folder = tmp / f"month={YEAR}-{month:02d}"
        folder.mkdir(parents=True)
        for part, start in enumerate(range(0, max(n, 1), ROWS_PER_FILE)):
            pq.write_table(
                table.slice(start, ROWS_PER_FILE), folder / f"part-{part:03d}.parquet", row_group_size=ROWS_PER_FILE
            )
    (tmp / "_BENCH.json").write_text(json.dumps({"rows": rows, "seed": seed}))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def dataset(cache: Path, rows: int, *, seed: int = 0, log=print) -> Path:
    """The cached dataset for ``(rows, seed)`` under ``cache``, generated on first use."""
    root = Path(cache) / f"higgs-rows{rows}-seed{seed}"
    if not (root / "_BENCH.json").exists():
        log(f"generating {rows:,} rows into {root} ...")
        write_dataset(root, rows, seed=seed)
    return root


def parquet_files(root: Path) -> list[Path]:
    return sorted(Path(root).glob("month=*/*.parquet"))


def dataset_bytes(root: Path, columns: list[str] | None = None) -> int:
    """Bytes on disk; with ``columns``, only those columns' chunks plus every file's footer."""
    total = 0
    for path in parquet_files(root):
        if columns is None:
            total += path.stat().st_size
            continue
        meta = pq.ParquetFile(path).metadata
        total += meta.serialized_size + 8  # footer, its length and the magic bytes
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema in columns:
                    total += chunk.total_compressed_size
    return total
