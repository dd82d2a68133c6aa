"""``format: duckdb``: tables and queries of a local DuckDB database file, and tables written.

DuckDB lets many processes read a file or one process write it. A source opens the file
read-only on the client for the schema and the range of ``partition_on``, then once per task on
the workers. There is no snapshot to share between processes; instead the file's version (its
modification time and size, and its write-ahead log's) is taken when the source opens, and a task
that finds the file changed fails with a :class:`DataError` rather than read other rows.

A sink's workers write Parquet files of their partitions to a hidden staging folder beside the
database file (a retried task rewrites its own file), and the client ingests them in ONE DuckDB
transaction (``INSERT INTO ... BY NAME SELECT * FROM read_parquet([...])``, or ``CREATE OR
REPLACE TABLE`` for replace) with the commit's row in ``_dpipe_commits``; the staging folder is
removed after. The workers must see the client's disk (a LocalCluster, or a shared filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from dpipe.errors import DataError, DpipeError, StateError, StorageError
from dpipe.io.connector import Datum, Written
from dpipe.io.sql.base import SQLSource, query_error, quietly
from dpipe.io.sql.text import DUCKDB
from dpipe.io.sql.writes import check_append, frame_schema, partition_writes, to_arrow
from dpipe.spec.sql import DuckDBSinkSpec, DuckDBSourceSpec

COMMITS = "_dpipe_commits"
#: Attempts to open the file for the commit while another process holds its write lock.
LOCK_ATTEMPTS = 5


def database_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).expanduser().absolute()


def file_version(path: Path) -> str | None:
    """``mtime_ns-size`` of the file (and of its ``.wal``): changes whenever DuckDB writes it."""
    parts = []
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            parts.append(f"{st.st_mtime_ns}-{st.st_size}")
    return ":".join(parts) or None


def _connect(path: Path, config: Mapping[str, Any], *, read_only: bool, where: str) -> Any:
    if read_only and not path.exists():
        raise StorageError(f"{where}: DuckDB database {str(path)!r} does not exist", hint="check `uri`")
    try:
        return duckdb.connect(str(path), read_only=read_only, config=dict(config))
    except duckdb.Error as exc:
        raise StorageError(
            f"{where}: cannot open DuckDB database {str(path)!r}: {_message(exc)}",
            hint="another process may be writing it (DuckDB allows one writer or many readers)",
        ) from None


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[0].split())[:500] or type(exc).__name__


def _category(exc: BaseException) -> str:
    if isinstance(exc, duckdb.CatalogException):
        return "missing"
    if isinstance(exc, duckdb.PermissionException):
        return "denied"
    if isinstance(exc, duckdb.BinderException):
        return "column" if "column" in str(exc).lower() else "syntax"
    if isinstance(exc, (duckdb.ParserException, duckdb.SyntaxException)):
        return "syntax"
    return "other"


@dataclass(frozen=True)
class DuckDBReader:
    """A worker's read: the file opened read-only, refused if it changed since the source opened."""

    path: str
    version: str | None
    config: Mapping[str, Any] = field(default_factory=dict)
    where: str = "source"
    table: str | None = None
    query: str | None = None

    @property
    def token(self) -> str:
        return f"{self.path}@{self.version}"

    def read(self, sql: str) -> pa.Table:
        path = Path(self.path)
        if file_version(path) != self.version:
            raise DataError(
                f"{self.where}: DuckDB database {self.path!r} changed since the source was opened",
                hint="open the source again to read the new rows (nothing may write the file while a job reads it)",
            )
        conn = _connect(path, self.config, read_only=True, where=f"{self.where}.uri")
        try:
            return conn.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise self.error(exc) from None
        finally:
            conn.close()

    def error(self, exc: BaseException) -> DpipeError:
        return query_error(_category(exc), _message(exc), where=self.where, table=self.table, query=self.query)


class _Session:
    def __init__(self, reader: DuckDBReader):
        self.reader = reader
        self.version = reader.version
        self.snapshot = None
        self.conn = _connect(Path(reader.path), reader.config, read_only=True, where=f"{reader.where}.uri")

    def table(self, sql: str) -> pa.Table:
        try:
            return self.conn.sql(sql).to_arrow_table()
        except duckdb.Error as exc:
            raise self.reader.error(exc) from None

    def keep(self) -> DuckDBReader:
        return self.reader


class DuckDBSource(SQLSource):
    """``format: duckdb``: a table or query of a DuckDB database file, in ranges of ``partition_on``."""

    #: A database file's version changes whenever it is written: equal versions, equal rows.
    versioned = True

    Spec = DuckDBSourceSpec
    dialect = DUCKDB
    kind = "duckdb"

    def __init__(self, spec: DuckDBSourceSpec, *, where: str = "source"):
        super().__init__(spec, where=where)
        self.path = database_path(spec.uri)

    @contextlib.contextmanager
    def session(self) -> Iterator[_Session]:
        spec = self.spec
        reader = DuckDBReader(
            str(self.path), file_version(self.path), dict(spec.storage_options), self.where, spec.table, spec.query
        )
        session = _Session(reader)
        try:
            yield session
        finally:
            session.conn.close()

    def location(self) -> str:
        return f"duckdb://{self.path}"


# -- the sink --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParquetStage:
    folder: str
    arrow_schema: pa.Schema
    where: str


def write_partition(frame: Any, target: ParquetStage, part: int) -> int:
    """Write one partition as ``part-NNNNN.parquet`` (renamed into place: a retry overwrites it)."""
    table = to_arrow(frame, target.arrow_schema, where=target.where)
    final = os.path.join(target.folder, f"part-{part:05d}.parquet")
    tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, final)
    except OSError as exc:
        raise StorageError(f"{target.where}: cannot write the staged file {final!r}: {exc}") from exc
    return table.num_rows


class DuckDBSink:
    """``format: duckdb``: a table of a DuckDB file, staged as Parquet and ingested in one transaction."""

    Spec = DuckDBSinkSpec

    def __init__(
        self,
        uri: str,
        table: str,
        *,
        mode: str = "append",
        create: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        where: str = "output",
    ):
        self.path = database_path(uri)
        self.table, self.mode, self.create, self.where = table, mode, create, where
        self.config = dict(storage_options or {})
        self.schema_name = table.rpartition(".")[0] or None
        self.uri = f"duckdb://{self.path}/{table}"
        self.staging = self.path.parent / f".{self.path.name}.dpipe-stage-{uuid.uuid4().hex[:12]}"
        self.committed = False
        self._parts: int | None = None

    @classmethod
    def from_spec(cls, spec: DuckDBSinkSpec, *, where: str = "output") -> DuckDBSink:
        return cls(
            spec.uri, spec.table, mode=spec.mode, create=spec.create, storage_options=spec.storage_options, where=where
        )

    def __enter__(self) -> DuckDBSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.committed:
            self.abort()

    def _target(self, conn: Any) -> pa.Schema | None:
        """The table's schema, or ``None`` if it does not exist (looked up: an error would end the transaction)."""
        schema, _, name = self.table.rpartition(".")
        found = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema or "main", name],
        ).fetchall()[0][0]  # fetchall: DuckDB keeps a result open until it is read to the end
        if not found:
            return None
        return conn.sql(f"SELECT * FROM {DUCKDB.table(self.table)} LIMIT 0").to_arrow_table().schema

    def check(self, meta: Any) -> None:
        """Before any computation: the table exists (or may be created) and, when appending,
        has the columns and types of ``meta``."""
        existing = None
        if self.path.exists():
            conn = _connect(self.path, self.config, read_only=True, where=f"{self.where}.uri")
            try:
                existing = self._target(conn)
            finally:
                conn.close()
        elif not self.path.parent.is_dir():
            raise StorageError(f"{self.where}.uri: folder {str(self.path.parent)!r} does not exist", hint="create it")
        if existing is None and not self.create:
            raise StorageError(
                f"{self.where}.table: table {self.table!r} does not exist in {str(self.path)!r}",
                hint="create it first, or set `create: true`",
            )
        if existing is not None and self.mode == "append":
            check_append(frame_schema(meta), existing, where=self.where, name=self.table)

    def has_commit(self, txn: str) -> bool:
        """Whether ``_dpipe_commits`` holds a commit of ``txn`` to this table."""
        if not self.path.exists():
            return False
        d, lit = DUCKDB, DUCKDB.literal
        schema = self.schema_name or "main"
        conn = _connect(self.path, self.config, read_only=True, where=f"{self.where}.uri")
        try:
            found = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, COMMITS]
            ).fetchall()
            if not found:
                return False
            commits = d.table(f"{schema}.{COMMITS}")
            sql = f"SELECT 1 FROM {commits} WHERE txn = {lit(txn)} AND target = {lit(self.table)}"
            return bool(conn.execute(sql).fetchall())
        finally:
            conn.close()

    def write_task(self, frame: Any) -> Any:
        """The lazy write of ``frame``'s partitions as Parquet files in the staging folder."""
        self.check(frame._meta)
        self.staging.mkdir(parents=True, exist_ok=True)
        target = ParquetStage(str(self.staging), frame_schema(frame._meta), self.where)
        task, self._parts = partition_writes(frame, write_partition, target)
        return task

    def write(self, frame: Any, *, compute: Callable[[Any], Any] | None = None) -> None:
        task = self.write_task(frame)
        (compute or (lambda t: t.compute()))(task)

    def commit(self, *, metadata: Mapping[str, Any] | None = None, txn: str | None = None) -> Written:
        """One DuckDB transaction: the staged files into the table, and the commit's row."""
        if self._parts is None:
            raise StateError(f"{self.where}: commit() before write()")
        files = sorted(str(p) for p in self.staging.glob("part-*.parquet"))
        if len(files) != self._parts:
            raise DataError(
                f"{self.where}: {len(files)} of the {self._parts} partitions were written; nothing was committed",
                hint="write() must finish before commit()",
            )
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        commit_id = txn or f"dpipe-{uuid.uuid4().hex}"
        document = None if metadata is None else json.dumps(dict(metadata), default=str)
        conn = self._writer()
        try:
            duplicate = self._commit_in(conn, files, rows, commit_id, document, check_txn=txn is not None)
        except duckdb.Error as exc:
            with quietly("rolling back"):
                conn.rollback()
            raise DataError(
                f"{self.where}: the commit to {self.table!r} failed: {_message(exc)}; the table is as it was",
                hint="check the table's columns and types against the output",
            ) from None
        finally:
            conn.close()
        self.committed = True
        self.abort()  # the staged files are in the table now (or were a duplicate)
        rows = 0 if duplicate else rows
        record = {"kind": "duckdb", "table": self.table, "mode": self.mode, "txn": commit_id, "rows": rows}
        return Written(
            uri=self.uri, rows=rows, datums=(Datum(self.uri, None, commit_id),), record=record, duplicate=duplicate
        )

    def _writer(self) -> Any:
        """The file opened for writing, waiting a little for another writer to finish."""
        for attempt in range(LOCK_ATTEMPTS):
            try:
                return duckdb.connect(str(self.path), config=self.config)
            except duckdb.Error as exc:
                if attempt == LOCK_ATTEMPTS - 1:
                    raise StorageError(
                        f"{self.where}.uri: cannot open DuckDB database {str(self.path)!r} for writing: {_message(exc)}",
                        hint="another process holds it open (DuckDB allows one writer); the table is as it was",
                    ) from None
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def _commit_in(
        self, conn: Any, files: list[str], rows: int, commit_id: str, document: str | None, *, check_txn: bool
    ) -> bool:
        d, lit = DUCKDB, DUCKDB.literal
        commits = d.table(f"{self.schema_name}.{COMMITS}" if self.schema_name else COMMITS)
        target = d.table(self.table)
        scan = "read_parquet([" + ", ".join(lit(f) for f in files) + "])"
        conn.execute("BEGIN TRANSACTION")
        if self.schema_name:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {d.ident(self.schema_name)}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {commits} (txn VARCHAR NOT NULL, target VARCHAR NOT NULL,"
            " committed_at TIMESTAMPTZ NOT NULL, rows BIGINT, metadata JSON, PRIMARY KEY (txn, target))"
        )
        if (
            check_txn
            and conn.execute(
                f"SELECT 1 FROM {commits} WHERE txn = {lit(commit_id)} AND target = {lit(self.table)}"
            ).fetchall()
        ):
            conn.rollback()
            return True
        exists = self._target(conn) is not None
        if exists and self.mode == "append":
            conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {scan}")
        elif exists or self.create:
            conn.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {scan}")
        else:
            raise StorageError(f"{self.where}.table: table {self.table!r} does not exist", hint="set `create: true`")
        meta = "NULL" if document is None else lit(document)
        conn.execute(f"INSERT INTO {commits} VALUES ({lit(commit_id)}, {lit(self.table)}, now(), {int(rows)}, {meta})")
        conn.commit()
        return False

    def abort(self) -> None:
        """Remove the staged files (best effort); the table is untouched."""
        self._parts = None
        shutil.rmtree(self.staging, ignore_errors=True)
