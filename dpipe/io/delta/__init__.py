"""Delta Lake tables, both ways, with the ``deltalake`` package (delta-rs).

Reading: the client loads the table's log at one version (latest, ``version``, or ``as_of``),
prunes data files with the filters (exactly on partition columns, by min/max statistics on others)
and makes one Dask partition per data file. Workers read the Parquet files through fsspec, add the
partition values, apply the file's deletion vector (rows deleted without rewriting the file) and
then the row filter. A table feature dpipe cannot read correctly (column mapping, any reader
feature it does not know) is refused with its name: a table is never read wrong.

Writing: workers write Parquet data files of their partitions straight into the table's folder
(unreferenced files, invisible to readers) and return their add actions; the client commits them
in ONE Delta transaction, with the run's ``txn`` as an application transaction so a retried run
cannot append twice, and the job's manifest in the commit's metadata. Files of a run that fails
before its commit are deleted (and would be invisible to readers either way).
"""

from dpipe.io.delta.read import DeltaFileTask, DeltaSource, read_delta_file
from dpipe.io.delta.table import SUPPORTED_READER_FEATURES, delta_storage_options
from dpipe.io.delta.write import DeltaSink, DeltaWriteTask, write_delta_part

__all__ = [
    "SUPPORTED_READER_FEATURES",
    "DeltaFileTask",
    "DeltaSink",
    "DeltaSource",
    "DeltaWriteTask",
    "delta_storage_options",
    "read_delta_file",
    "write_delta_part",
]
