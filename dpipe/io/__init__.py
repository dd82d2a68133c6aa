"""Connectors: sources (read) and sinks (atomic writes) found by ``format``, and the one place that
resolves filesystems.

- :mod:`~dpipe.io.connector`: the contracts (:class:`Source`, :class:`OpenedSource`,
  :class:`Datum`, :class:`Sink`, :class:`Written`);
- :mod:`~dpipe.io.registry`: :func:`open_source`, :func:`open_sink`, :func:`read`, registration;
- :mod:`~dpipe.io.sources`: the file kinds (Parquet, CSV, JSON lines);
  :mod:`~dpipe.io.sinks`: staged folders and the Parquet-folder sink;
- :mod:`~dpipe.io.listing`, :mod:`~dpipe.io.arrow`, :mod:`~dpipe.io.fs`: what connectors share.

See ``docs/connectors.md`` for writing one.
"""

from dpipe.io.arrow import arrow_to_pandas, empty_frame
from dpipe.io.connector import (
    BadFileLog,
    Datum,
    Deferred,
    Increment,
    OpenedSource,
    Sink,
    Source,
    Written,
    already_committed,
    increment,
)
from dpipe.io.fs import full_uri, is_local, resolve, storage_errors
from dpipe.io.listing import Listing, list_files
from dpipe.io.registry import (
    open_increment,
    open_sink,
    open_source,
    read,
    register_sink,
    register_source,
    sink_class,
    sink_spec,
    source_class,
    source_spec,
)
from dpipe.io.sinks import ParquetFolderSink, StagedOutput, parquet_task, write_parquet

__all__ = [
    "BadFileLog",
    "Datum",
    "Deferred",
    "Increment",
    "Listing",
    "OpenedSource",
    "ParquetFolderSink",
    "Sink",
    "Source",
    "StagedOutput",
    "Written",
    "already_committed",
    "arrow_to_pandas",
    "empty_frame",
    "full_uri",
    "increment",
    "is_local",
    "list_files",
    "open_increment",
    "open_sink",
    "open_source",
    "parquet_task",
    "read",
    "register_sink",
    "register_source",
    "resolve",
    "sink_class",
    "sink_spec",
    "source_class",
    "source_spec",
    "storage_errors",
    "write_parquet",
]
