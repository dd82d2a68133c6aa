"""``format: postgresql`` as a sink: a table written by the workers and committed by the client once.

**One commit.** A sink's workers copy their partitions (ADBC ``adbc_ingest``, a binary COPY)
into a staging table ``<table>__dpipe_stage_<id>``, each in one transaction that also records the
partition in ``_dpipe_staged`` (a retried task finds its partition there and writes nothing).
The client then commits once: ``INSERT INTO table SELECT ... FROM stage`` (append) or a rename
swap (replace), with the commit's row in ``_dpipe_commits`` (one row per ``txn`` and target table) in the same
transaction. A failed or killed run leaves the target as it was (a killed one may leave its
staging table behind: its name says what it is).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa

from dpipe.errors import DataError, DpipeError, StateError, StorageError
from dpipe.io.connector import Datum, Written
from dpipe.io.sql.postgres import Conninfo, connect, conninfo, server_message, sqlstate
from dpipe.io.sql.text import POSTGRES
from dpipe.io.sql.writes import check_append, frame_schema, partition_writes, quietly, to_arrow
from dpipe.spec.sql import PostgresSinkSpec

#: PostgreSQL truncates longer identifiers.
MAX_IDENT = 63
#: Commit attempts when concurrent commits conflict: a serialization failure, a deadlock, or two
#: first commits creating the table at once (42P07, or 23505 on the catalog's unique index; a
#: duplicate ``txn`` is found before it could raise that).
COMMIT_ATTEMPTS = 4
_RETRY_STATES = {"40001", "40P01", "42P07", "23505"}
COMMITS = "_dpipe_commits"
STAGED = "_dpipe_staged"


def _sibling(name: str, tag: str) -> str:
    """``<name>__dpipe_<tag>_<id>``, shortened to fit PostgreSQL's identifier length."""
    suffix = f"__dpipe_{tag}_{uuid.uuid4().hex[:12]}"
    return name.encode()[: MAX_IDENT - len(suffix)].decode(errors="ignore") + suffix


@dataclass(frozen=True)
class StageTarget:
    """Where a worker copies its partition: picklable, the password only in ``info``."""

    info: Conninfo
    schema_name: str | None
    stage: str
    arrow_schema: pa.Schema
    where: str


def ingest_partition(frame: Any, target: StageTarget, part: int) -> int:
    """Copy one partition into the staging table, in one transaction with its ``_dpipe_staged`` row."""
    table = to_arrow(frame, target.arrow_schema, where=target.where)
    staged = _qualified(target.schema_name, STAGED)
    conn = connect(target.info, where=target.where, autocommit=False)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(
                    f"INSERT INTO {staged} (stage, part, rows) VALUES"
                    f" ({POSTGRES.literal(target.stage)}, {part}, {table.num_rows})"
                )
            except pg.IntegrityError:
                conn.rollback()  # a retried task: an earlier attempt wrote this partition
                return 0
            cur.adbc_ingest(target.stage, table, mode="append", db_schema_name=target.schema_name)
        conn.commit()
    except pg.Error as exc:
        raise DataError(f"{target.where}: cannot write a partition: {target.info.scrub(server_message(exc))}") from None
    finally:
        conn.close()
    return table.num_rows


def _create_if_missing(cur: Any, statement: str) -> None:
    """``CREATE TABLE IF NOT EXISTS`` (autocommit): two runs creating it at once may collide; either's table will do."""
    try:
        cur.execute(statement)
    except (pg.IntegrityError, pg.ProgrammingError) as exc:
        if sqlstate(exc) not in ("23505", "42P07"):
            raise


def _qualified(schema_name: str | None, name: str) -> str:
    return POSTGRES.table(name) if schema_name is None else f"{POSTGRES.ident(schema_name)}.{POSTGRES.ident(name)}"


class PostgresSink:
    """``format: postgresql``: a table written by the workers and committed by the client at once.

    Examples
    --------
    >>> with open_sink({"format": "postgresql", "uri": "postgresql://me@db/x", "table": "scores"}) as sink:
    ...     sink.write(predictions)
    ...     written = sink.commit(txn="run-2024-06-01")
    """

    Spec = PostgresSinkSpec

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
        self.info = conninfo(uri, storage_options, where=f"{where}.uri")
        self.table, self.mode, self.create, self.where = table, mode, create, where
        schema_name, _, self.name = table.rpartition(".")
        self.schema_name: str | None = schema_name or None
        self.stage = _sibling(self.name, "stage")
        self.uri = f"{self.info.display}/{table}"
        self.committed = False
        self._parts: int | None = None

    @classmethod
    def from_spec(cls, spec: PostgresSinkSpec, *, where: str = "output") -> PostgresSink:
        return cls(
            spec.uri, spec.table, mode=spec.mode, create=spec.create, storage_options=spec.storage_options, where=where
        )

    def __enter__(self) -> PostgresSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.committed:
            self.abort()

    @contextlib.contextmanager
    def _cursor(self, *, autocommit: bool = True) -> Iterator[Any]:
        conn = connect(self.info, where=f"{self.where}.uri", autocommit=autocommit)
        try:
            with conn.cursor() as cur:
                yield cur
        except pg.Error as exc:
            raise DataError(f"{self.where}: {self.info.scrub(server_message(exc))} (table {self.table!r})") from None
        finally:
            conn.close()

    def _target(self, cur: Any) -> pa.Schema | None:
        """The target table's schema, or ``None`` if it does not exist."""
        cur.execute(f"SELECT to_regclass({POSTGRES.literal(POSTGRES.table(self.table))}) IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute(f"SELECT * FROM {POSTGRES.table(self.table)} LIMIT 0")
        return cur.fetch_arrow_table().schema

    def check(self, meta: Any) -> None:
        """Checked before any computation: the table exists (or may be created) and, when
        appending, has the columns and types of ``meta``."""
        with self._cursor() as cur:
            existing = self._target(cur)
        if existing is None and not self.create:
            raise StorageError(
                f"{self.where}.table: table {self.table!r} does not exist in {self.info.display}",
                hint="create it first, or set `create: true`",
            )
        if existing is not None and self.mode == "append":
            check_append(frame_schema(meta), existing, where=self.where, name=self.table)

    def has_commit(self, txn: str) -> bool:
        """Whether ``_dpipe_commits`` holds a commit of ``txn`` to this table."""
        lit, commits = POSTGRES.literal, _qualified(self.schema_name, COMMITS)
        with self._cursor() as cur:
            cur.execute(f"SELECT to_regclass({lit(commits)}) IS NOT NULL")
            if not cur.fetchone()[0]:
                return False
            cur.execute(f"SELECT 1 FROM {commits} WHERE txn = {lit(txn)} AND target = {lit(self.table)}")
            return cur.fetchone() is not None

    def write_task(self, frame: Any) -> Any:
        """The lazy write of ``frame``'s partitions into a new staging table."""
        self.check(frame._meta)
        schema = frame_schema(frame._meta)
        with self._cursor() as cur:
            _create_if_missing(
                cur,
                f"CREATE TABLE IF NOT EXISTS {_qualified(self.schema_name, STAGED)}"
                " (stage text, part integer, rows bigint, PRIMARY KEY (stage, part))",
            )
            cur.adbc_ingest(self.stage, schema.empty_table(), mode="create", db_schema_name=self.schema_name)
        target = StageTarget(self.info, self.schema_name, self.stage, schema, self.where)
        task, self._parts = partition_writes(frame, ingest_partition, target)
        return task

    def write(self, frame: Any, *, compute: Callable[[Any], Any] | None = None) -> None:
        """Copy ``frame`` into the staging table (workers, in parallel); ``compute`` runs the task."""
        task = self.write_task(frame)
        (compute or (lambda t: t.compute()))(task)

    def commit(self, *, metadata: Mapping[str, Any] | None = None, txn: str | None = None) -> Written:
        """One transaction: the rows into the table (or the table swapped in) and the commit's row."""
        if self._parts is None:
            raise StateError(f"{self.where}: commit() before write()")
        commit_id = txn or f"dpipe-{uuid.uuid4().hex}"
        document = None if metadata is None else json.dumps(dict(metadata), default=str)
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                rows, duplicate = self._commit_once(commit_id, document, check_txn=txn is not None)
                break
            except pg.Error as exc:
                # A unique violation is retried once: a concurrent commit of the same txn (its
                # `_dpipe_commits` row) is then found; a second one is the target's own constraint.
                unique_again = sqlstate(exc) == "23505" and attempt > 0
                if sqlstate(exc) not in _RETRY_STATES or attempt == COMMIT_ATTEMPTS - 1 or unique_again:
                    raise self._commit_error(exc, attempt) from None
                time.sleep(0.05 * 2**attempt)
        self.committed = True
        if duplicate:
            self.abort()
        record = {"kind": "postgresql", "table": self.table, "mode": self.mode, "txn": commit_id, "rows": rows}
        return Written(
            uri=self.uri, rows=rows, datums=(Datum(self.uri, None, commit_id),), record=record, duplicate=duplicate
        )

    def _commit_once(self, commit_id: str, document: str | None, *, check_txn: bool) -> tuple[int, bool]:
        p, lit = POSTGRES, POSTGRES.literal
        commits, staged = _qualified(self.schema_name, COMMITS), _qualified(self.schema_name, STAGED)
        stage, target = _qualified(self.schema_name, self.stage), p.table(self.table)
        conn = connect(self.info, where=f"{self.where}.uri", autocommit=True)
        try:
            with conn.cursor() as cur:
                _create_if_missing(
                    cur,
                    f"CREATE TABLE IF NOT EXISTS {commits} (txn text NOT NULL, target text NOT NULL,"
                    " committed_at timestamptz NOT NULL, rows bigint, metadata jsonb, PRIMARY KEY (txn, target))",
                )
                cur.execute("BEGIN")
                cur.execute(
                    f"SELECT count(*), coalesce(sum(rows), 0)::bigint FROM {staged} WHERE stage = {lit(self.stage)}"
                )
                parts, rows = cur.fetchone()
                if parts != self._parts:
                    raise DataError(
                        f"{self.where}: {parts} of the {self._parts} partitions were written; nothing was committed",
                        hint="write() must finish before commit()",
                    )
                if check_txn:
                    cur.execute(f"SELECT 1 FROM {commits} WHERE txn = {lit(commit_id)} AND target = {lit(self.table)}")
                    if cur.fetchone() is not None:
                        cur.execute("ROLLBACK")
                        return 0, True
                exists = self._target(cur) is not None
                if exists and self.mode == "append":
                    cur.execute(f"SELECT * FROM {stage} LIMIT 0")
                    names = ", ".join(p.ident(c) for c in cur.fetch_arrow_table().schema.names)
                    cur.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM {stage}")
                    cur.execute(f"DROP TABLE {stage}")
                elif exists:
                    old = _sibling(self.name, "old")
                    cur.execute(f"ALTER TABLE {target} RENAME TO {p.ident(old)}")
                    cur.execute(f"ALTER TABLE {stage} RENAME TO {p.ident(self.name)}")
                    cur.execute(f"DROP TABLE {_qualified(self.schema_name, old)}")
                elif self.create:
                    cur.execute(f"ALTER TABLE {stage} RENAME TO {p.ident(self.name)}")
                else:
                    raise StorageError(
                        f"{self.where}.table: table {self.table!r} does not exist", hint="set `create: true`"
                    )
                cur.execute(f"DELETE FROM {staged} WHERE stage = {lit(self.stage)}")
                meta = "NULL" if document is None else f"{lit(document)}::jsonb"
                try:
                    cur.execute(
                        f"INSERT INTO {commits} (txn, target, committed_at, rows, metadata)"
                        f" VALUES ({lit(commit_id)}, {lit(self.table)}, now(), {int(rows)}, {meta})"
                    )
                except pg.IntegrityError:
                    if not check_txn:
                        raise
                    cur.execute("ROLLBACK")  # the same txn committed concurrently
                    return 0, True
                cur.execute("COMMIT")
            return int(rows), False
        finally:
            conn.close()  # an open transaction (an error above) is rolled back

    def _commit_error(self, exc: BaseException, attempt: int) -> DpipeError:
        message = self.info.scrub(server_message(exc))
        if sqlstate(exc) == "23505":
            return DataError(
                f"{self.where}: the rows violate a unique constraint of {self.table!r}: {message};"
                " nothing was committed",
                hint="the table already holds rows with these keys: write to a new table, or use `mode: replace`",
            )
        if sqlstate(exc) in _RETRY_STATES:
            return StorageError(
                f"{self.where}: the commit to {self.table!r} kept conflicting with concurrent commits"
                f" ({attempt + 1} attempts): {message}",
                hint="run again; the table is as it was before this commit",
            )
        return DataError(
            f"{self.where}: the commit to {self.table!r} failed: {message}; the table is as it was",
            hint="check the table's columns and types against the output (and objects that depend on it)",
        )

    def abort(self) -> None:
        """Drop the staging table (best effort); the target is untouched."""
        if self._parts is None:
            return
        self._parts = None
        with quietly(f"dropping the staging table {self.stage}"), self._cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {_qualified(self.schema_name, self.stage)}")
            cur.execute(
                f"DELETE FROM {_qualified(self.schema_name, STAGED)} WHERE stage = {POSTGRES.literal(self.stage)}"
            )
