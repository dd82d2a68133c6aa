"""Connectors: sources (read), sinks (atomic writes), and the one place that resolves filesystems."""

from dpipe.io.fs import resolve, storage_errors
from dpipe.io.sinks import StagedOutput, parquet_task, write_parquet
from dpipe.io.sources import BadFileLog, Source, read

__all__ = ["BadFileLog", "Source", "StagedOutput", "parquet_task", "read", "resolve", "storage_errors", "write_parquet"]
