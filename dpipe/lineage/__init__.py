"""Where every output came from: the manifest stored with an output, and the tree upstream of it.

Every dpipe output carries its manifest: a bundle its ``manifest.json``, a Parquet folder its
``_dpipe_manifest.json``, a Delta table the commit's metadata (``DeltaTable(uri).history()``), an
Iceberg table the snapshot summary (``dpipe.manifest``), a PostgreSQL or DuckDB table its row in
``_dpipe_commits``. :func:`read_output` finds it; :func:`lineage_tree` follows the parents it
names (the bundle scores were made with, the data each run read, with their versions, and the
previous run of an incremental job), reading the outputs among them again; :func:`format_tree`
prints the tree for a person (``dpipe lineage OUTPUT``).

Examples
--------
>>> print(format_tree(lineage_tree("runs/scores")))
predictions /work/runs/scores (parquet, run 3f2a1b2c, 2026-12-01T10:00:00)
├─ model: bundle /work/runs/m1 (job quickstart, run 9d8e7f6a, 2026-12-01T09:58:12)
│  │  dpipe 0.1.0, xgboost 3.2.0, dask 2026.8.0
│  └─ source: parquet /work/data/events (4 datums: date=2024-01-01/part-0.parquet, …)
└─ source: parquet /work/data/events (1 datum: date=2024-02-01/part-0.parquet)

See ``docs/lineage.md``.
"""

from __future__ import annotations

from dpipe.lineage.code import code_lineage
from dpipe.lineage.readers import MARKERS as MARKERS
from dpipe.lineage.readers import READERS as READERS
from dpipe.lineage.readers import Found as Found
from dpipe.lineage.readers import Location as Location
from dpipe.lineage.readers import read_output
from dpipe.lineage.text import format_tree
from dpipe.lineage.tree import FIRST_DATUMS as FIRST_DATUMS
from dpipe.lineage.tree import OUTPUT_KINDS as OUTPUT_KINDS
from dpipe.lineage.tree import lineage_tree

__all__ = ["code_lineage", "format_tree", "lineage_tree", "read_output"]
