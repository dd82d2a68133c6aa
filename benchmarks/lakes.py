"""Lakes and warehouses: reading tables against reading their Parquet files as a folder, and SQL throughput.

    python -m benchmarks.lakes --rows 2e6 --repeat 3
    python -m benchmarks.lakes --quick

* **Tables vs folder**: the benchmark dataset (Hive-partitioned Parquet) is registered, without
  copying a byte, as a Delta table (``convert_to_deltalake``) and an Iceberg table (``add_files``),
  so the three read exactly the same files. Each is opened with dpipe and read whole (every
  column, one reduction per partition) on the same LocalCluster; the reads alternate, and the
  table is the median time of each over the repeats, and its ratio to the folder's (target: at
  most 1.10x).
* **PostgreSQL** (a server started here, as the tests do): the table loaded with the driver's
  bulk ingest, then read by dpipe with 1, 2 and 4 partitions against one ``COPY`` into Arrow on
  the client through the same ADBC driver (rows/s), and dpipe's sink writing predictions back.

Prints a table and writes JSON under benchmarks/results/. Compare ratios, not seconds.
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


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _read_all(source: dict, client) -> int:
    """Open ``source`` with dpipe and read every column of every partition on the cluster."""
    from dpipe.io import open_source

    frame = open_source(source).frame
    sizes = frame.map_partitions(lambda df: df.memory_usage(index=False, deep=False).sum(), meta=("bytes", "int64"))
    return int(client.compute(sizes.sum()).result())


def tables_vs_folder(root: Path, work: Path, client, repeat: int) -> dict:
    """Median read time of the same files as a Parquet folder, a Delta table and an Iceberg table."""
    import deltalake
    import pyarrow.dataset as ds
    from pyiceberg.catalog.sql import SqlCatalog

    folder = work / "folder"
    shutil.copytree(root, folder)
    delta = work / "delta"
    shutil.copytree(root, delta)
    partitioning = ds.partitioning(ds.dataset(str(delta), partitioning="hive").partitioning.schema, flavor="hive")
    partition_schema = deltalake.Schema.from_arrow(partitioning.schema)
    deltalake.convert_to_deltalake(str(delta), partition_by=partition_schema, partition_strategy="hive")
    iceberg_files = work / "iceberg"
    shutil.copytree(root, iceberg_files)
    catalog = SqlCatalog("bench", uri=f"sqlite:///{work / 'catalog.db'}", warehouse=f"file://{work / 'warehouse'}")
    catalog.create_namespace("bench")
    files = sorted(str(p) for p in iceberg_files.rglob("*.parquet"))
    schema = ds.dataset(files[0]).schema
    table = catalog.create_table("bench.events", schema=schema)
    table.add_files(files)
    sources = {
        "parquet folder": {"uri": str(folder), "format": "parquet"},
        "delta": {"format": "delta", "uri": str(delta)},
        "iceberg": {
            "format": "iceberg",
            "table": "bench.events",
            "catalog": {
                "name": "bench",
                "uri": f"sqlite:///{work / 'catalog.db'}",
                "warehouse": f"file://{work / 'warehouse'}",
            },
        },
    }
    for source in sources.values():  # warm-up: imports, the first worker task
        _read_all(source, client)
    times: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(repeat):
        for name, source in sources.items():
            times[name].append(_timed(lambda source=source: _read_all(source, client)))
    from benchmarks.report import against

    return against(times, "parquet folder", "ratio_to_folder")


def postgres(rows: int, client, repeat: int) -> dict:
    """Rows/s of dpipe's PostgreSQL reads (1, 2, 4 partitions) and writes, against one COPY to Arrow."""
    import adbc_driver_postgresql.dbapi as pgdb
    import numpy as np
    import pyarrow as pa

    from dpipe.io import open_sink
    from tests.postgres import running_server

    with running_server() as server:
        rng = np.random.default_rng(0)
        data = pa.table(
            {"id": np.arange(rows, dtype="int64"), **{f"f{i}": rng.standard_normal(rows) for i in range(8)}}
        )
        with pgdb.connect(server.uri) as conn, conn.cursor() as cur:
            cur.adbc_ingest("events", data, mode="create")
            conn.commit()
        source = {"format": "postgresql", "uri": server.uri, "table": "events"}

        def copy_to_arrow():
            with pgdb.connect(server.uri) as conn, conn.cursor() as cur:
                cur.execute("SELECT * FROM events")
                assert cur.fetch_arrow_table().num_rows == rows

        readers = {"one COPY to Arrow (client)": copy_to_arrow}
        for n in (1, 2, 4):
            spec = {**source, "partition_on": "id", "partitions": n}
            readers[f"dpipe, {n} partition(s)"] = lambda spec=spec: _read_all(spec, client)
        for read in readers.values():
            read()
        times: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(repeat):
            for name, read in readers.items():
                times[name].append(_timed(read))

        from dpipe.io import open_source

        frame = open_source({**source, "partition_on": "id", "partitions": 4}).frame
        predictions = frame[["id"]].assign(prediction=frame["f0"].abs() / 10)
        writes = []
        for i in range(repeat):

            def write(i=i):
                with open_sink({"format": "postgresql", "uri": server.uri, "table": f"scores_{i}"}) as sink:
                    sink.write(predictions, compute=lambda *objs: client.compute(list(objs), sync=True))
                    sink.commit()

            writes.append(_timed(write))
        base = statistics.median(times["one COPY to Arrow (client)"])
        out = {
            name: {
                "median_s": statistics.median(t),
                "rows_per_s": rows / statistics.median(t),
                "ratio_to_copy": statistics.median(t) / base,
            }
            for name, t in times.items()
        }
        out["dpipe sink, predictions (4 partitions)"] = {
            "median_s": statistics.median(writes),
            "rows_per_s": rows / statistics.median(writes),
        }
        return out


def main(argv=None) -> int:
    from benchmarks.data import write_dataset
    from benchmarks.report import write_json
    from benchmarks.suite import cluster

    p = argparse.ArgumentParser(prog="python -m benchmarks.lakes", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=lambda t: int(float(t)), default=2_000_000)
    p.add_argument("--pg-rows", type=lambda t: int(float(t)), default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--layout", default="2x1")
    p.add_argument("--quick", action="store_true", help="20k rows, 1 repeat: a smoke run")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: tables, postgres")
    p.add_argument("--out", type=Path, default=RESULTS / "lakes.json", help="where the JSON goes")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.pg_rows, args.repeat = 20_000, 20_000, 1
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    report: dict = {"rows": args.rows, "pg_rows": args.pg_rows, "repeat": args.repeat, "layout": args.layout}
    report["load_average"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-lakes-") as tmp, cluster(args.layout) as client:
        work = Path(tmp)
        if "tables" not in skip:
            root = write_dataset(work / "data", args.rows)
            report["tables"] = tables_vs_folder(root, work, client, args.repeat)
            print(
                f"\nreading {args.rows:,} rows, the same files ({args.layout} workers x threads, median of {args.repeat})"
            )
            print(f"{'read as':<18}{'median s':>10}{'min s':>9}{'max s':>9}{'ratio':>8}")
            for name, r in report["tables"].items():
                print(
                    f"{name:<18}{r['median_s']:>10.2f}{r['min_s']:>9.2f}{r['max_s']:>9.2f}{r['ratio_to_folder']:>8.2f}"
                )
        if "postgres" not in skip:
            report["postgres"] = postgres(args.pg_rows, client, args.repeat)
            print(f"\nPostgreSQL, {args.pg_rows:,} rows x 9 columns (median of {args.repeat})")
            print(f"{'':<40}{'median s':>10}{'rows/s':>12}{'vs COPY':>9}")
            for name, r in report["postgres"].items():
                ratio = f"{r['ratio_to_copy']:>9.2f}" if "ratio_to_copy" in r else ""
                print(f"{name:<40}{r['median_s']:>10.2f}{r['rows_per_s']:>12,.0f}{ratio}")
    report["load_average_after"] = os.getloadavg()
    path = write_json(report, args.out)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
