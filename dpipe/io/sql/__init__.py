"""Warehouses: PostgreSQL (through ADBC) and DuckDB tables and queries as sources and sinks.

- :mod:`~dpipe.io.sql.postgres`: ``format: postgresql`` (:class:`PostgresSource`, :class:`PostgresSink`);
- :mod:`~dpipe.io.sql.duckdb`: ``format: duckdb`` (:class:`DuckDBSource`, :class:`DuckDBSink`);
- :mod:`~dpipe.io.sql.base`: the partitioned read and the sinks' checks they share;
  :mod:`~dpipe.io.sql.watermark`: new-rows-only reads above a ``watermark`` column (the datums);
  :mod:`~dpipe.io.sql.text`: the SQL they write (quoting, filters, ranges).

The classes are imported on first use, so ``dpipe.io.sql:PostgresSource`` needs only the
PostgreSQL driver and ``dpipe.io.sql:DuckDBSource`` only ``duckdb``; a missing driver raises
``ImportError``, which the registry reports with the kind's install hint. Another database
(through SQLAlchemy, say) is one more module: a :class:`~dpipe.io.sql.base.SQLSource` subclass
with a session and a reader, and a sink with the same commit shape.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "PostgresSource": "dpipe.io.sql.postgres",
    "PostgresSink": "dpipe.io.sql.postgres_sink",
    "DuckDBSource": "dpipe.io.sql.duckdb",
    "DuckDBSink": "dpipe.io.sql.duckdb",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
