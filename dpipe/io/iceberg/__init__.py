"""``format: iceberg``: Apache Iceberg tables read and written with ``pyiceberg`` on Dask.

Reading (:mod:`.source`): the client loads the catalog and the table, resolves the snapshot and
plans the scan with the row filter and the projection (pyiceberg prunes data files by partition
values and column statistics); every planned data file becomes one Dask partition, read on a
worker by pyiceberg's own Arrow scan, which applies the file's positional deletes and deletion
vectors. Equality deletes, which pyiceberg cannot apply, are refused by name: never read wrong.

Writing (:mod:`.sink`): workers write Parquet data files into a folder of this run under the
table's data folder, each returning pyiceberg ``DataFile`` entries (partition values, column
statistics); the client commits them all as ONE snapshot (a fast append, or an overwrite that
removes every current data file). pyiceberg retries a commit that conflicts with a concurrent one
(its ``commit.retry.*`` table properties) and validates an overwrite against what was added
meanwhile. A run that fails or is aborted deletes its folder: the table stays as it was.

:mod:`.catalog` loads catalogs (the embedded SQLite one by default) and tables, with one clear
error for each thing that is missing.
"""

from dpipe.io.iceberg.catalog import catalog_properties, load_table, open_catalog
from dpipe.io.iceberg.sink import MANIFEST, TXN, IcebergSink, write_partition
from dpipe.io.iceberg.source import IcebergSource, ScanPart, filter_expression, read_scan_part

__all__ = [
    "MANIFEST",
    "TXN",
    "IcebergSink",
    "IcebergSource",
    "ScanPart",
    "catalog_properties",
    "filter_expression",
    "load_table",
    "open_catalog",
    "read_scan_part",
    "write_partition",
]
