"""Connectors: sources (read), sinks (atomic writes), and the one place that resolves filesystems."""

from dpipe.io.fs import resolve, storage_errors
from dpipe.io.sinks import StagedOutput, write_parquet
from dpipe.io.sources import Source, read

__all__ = ["Source", "StagedOutput", "read", "resolve", "storage_errors", "write_parquet"]
