"""Warehouse tables as sources and sinks: PostgreSQL (read through ADBC) and DuckDB (a database file).

A source reads a ``table`` (``name`` or ``schema.name``, exactly as the catalog holds it) or the
rows of a ``query``, with the keys of every source (``columns``: the SELECT list) plus:

- ``filters``: ``[column, op, value]`` triples ANDed, or a list of such lists ORed, as for file
  sources; they become the query's WHERE clause (identifiers quoted, values as quoted literals);
- ``partition_on`` and ``partitions``: a numeric, date or timestamp column whose range is split
  into ``partitions`` ranges read in parallel, one Dask partition each (default: one per worker
  thread of the cluster the run plans for, else of the current Dask client, else 4); without
  ``partition_on``, one partition;
- ``watermark``: a number, date or timestamp column that only grows for new rows (an insert
  timestamp, a serial id). A read then takes the rows up to the column's highest value when it
  opens, as one datum (``events:inserted_at(,2024-06-01T00:00:00]``), and an incremental read
  (``open_new``) only the rows above the previous read's mark. It may be ``partition_on`` too.

PostgreSQL reads every partition in one snapshot (``snapshot: true``, see
:mod:`dpipe.io.sql.postgres`). A sink writes a ``table`` (``mode: append`` or ``replace``,
``create: true`` to create a missing one) in one database transaction.

The models import no database package: validating a job needs neither driver.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dpipe.spec.connectors import BaseSinkSpec
from dpipe.spec.source import BaseSourceSpec, Filters

#: What makes a query return other rows each time it runs (each range of a partitioned read runs it).
UNREPEATABLE = re.compile(
    r"\b(?:limit|offset|fetch\s+(?:first|next)|tablesample|using\s+sample)\b|\b(?:random|uuid|gen_random_uuid)\s*\(",
    re.IGNORECASE,
)

#: URL schemes of a PostgreSQL ``uri`` (libpq's).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def check_table_name(name: str) -> str:
    """``name`` or ``schema.name``: one or two non-empty parts (quoted when the SQL is written)."""
    parts = name.split(".")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise ValueError(f"a table is `name` or `schema.name`; got {name!r}")
    return name


class SQLSourceSpec(BaseSourceSpec):
    """The keys of a database source: ``table`` or ``query``, filters, partitioned and incremental reads."""

    table: str | None = None
    query: str | None = None
    filters: Filters = None
    partition_on: str | None = Field(default=None, min_length=1)
    partitions: int | None = Field(default=None, ge=1)
    watermark: str | None = Field(default=None, min_length=1)

    @field_validator("table")
    @classmethod
    def _check_table(cls, table: str | None) -> str | None:
        return None if table is None else check_table_name(table)

    @field_validator("query")
    @classmethod
    def _check_query(cls, query: str | None) -> str | None:
        if query is None:
            return None
        query = query.strip().rstrip(";").strip()
        if not query:
            raise ValueError("`query` is empty")
        return query

    @model_validator(mode="after")
    def _one_relation(self) -> SQLSourceSpec:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` (a table or view) and `query` (a SELECT)")
        if self.partitions is not None and self.partitions > 1 and self.partition_on is None:
            raise ValueError("`partitions` needs `partition_on`, the column whose range is split")
        found = UNREPEATABLE.search(self.query) if self.query is not None else None
        if found and self.partition_on is not None:
            raise ValueError(
                f"a `query` read in ranges of `partition_on` runs once per range, so it must return the same"
                f" rows every time; this one has {found.group(0).strip()!r}. Read it in one partition (leave"
                " `partition_on` out), or write its rows to a table first"
            )
        if found and self.watermark is not None:
            raise ValueError(
                f"a `query` read above a `watermark` runs once for the mark and once for the rows, so it must"
                f" return the same rows every time; this one has {found.group(0).strip()!r}. Write its rows"
                " to a table first, or leave `watermark` out"
            )
        return self


class PostgresSourceSpec(SQLSourceSpec):
    """``format: postgresql``: ``uri`` is a libpq URL, ``postgresql://user[:password]@host:port/db``.

    The password may instead come from ``storage_options: {password: ...}`` or ``PGPASSWORD``
    (saved specs show it as ``***``); other ``storage_options`` are libpq connection parameters
    (``sslmode``, ``connect_timeout``). ``snapshot: false`` reads each partition in its own
    transaction instead of one exported snapshot.
    """

    format: Literal["postgresql"] = "postgresql"
    snapshot: bool = True

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str) -> str:
        return check_postgres_uri(uri)


class DuckDBSourceSpec(SQLSourceSpec):
    """``format: duckdb``: ``uri`` is the path of a local DuckDB database file, opened read-only.

    ``storage_options`` are DuckDB configuration options (``threads``, ``memory_limit``).
    """

    format: Literal["duckdb"] = "duckdb"

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str) -> str:
        return check_duckdb_uri(uri)


class SQLSinkSpec(BaseSinkSpec):
    """A database table written in one transaction.

    ``mode: append`` adds the rows to ``table`` (its columns and types must match what is
    written); ``replace`` swaps in a new table of the written rows. ``create: false`` refuses to
    create a missing table.
    """

    table: str
    mode: Literal["append", "replace"] = "append"
    create: bool = True

    @field_validator("table")
    @classmethod
    def _check_table(cls, table: str) -> str:
        return check_table_name(table)


class PostgresSinkSpec(SQLSinkSpec):
    """``format: postgresql``: a table of a PostgreSQL database (``uri`` as for the source)."""

    format: Literal["postgresql"] = "postgresql"

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str) -> str:
        return check_postgres_uri(uri)


class DuckDBSinkSpec(SQLSinkSpec):
    """``format: duckdb``: a table of a local DuckDB database file (created if missing)."""

    format: Literal["duckdb"] = "duckdb"

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str) -> str:
        return check_duckdb_uri(uri)


def check_postgres_uri(uri: str) -> str:
    if not uri.startswith(POSTGRES_SCHEMES):
        raise ValueError("a PostgreSQL `uri` is a libpq URL such as postgresql://user@host:5432/dbname")
    return uri


def check_duckdb_uri(uri: str) -> str:
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError("a DuckDB `uri` is the path of a local database file, such as data/warehouse.duckdb")
    return uri
