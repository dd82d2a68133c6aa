"""``format: postgresql``: tables and queries read through ADBC (Arrow end to end); the sink is in
:mod:`dpipe.io.sql.postgres_sink`.

**One snapshot.** Opening a source starts a ``REPEATABLE READ READ ONLY`` transaction on the
client, reads the schema and the range of ``partition_on`` in it and exports its snapshot
(``pg_export_snapshot()``); every partition's task imports it (``SET TRANSACTION SNAPSHOT``) so
all partitions see the same rows as the client did, however late they run. An exported snapshot
can be imported only while the exporting transaction is open, so the client keeps that
connection open for as long as the source's frame (any frame computed from it) is alive: the
tasks hold a :class:`SnapshotLease` whose connection closes when the last of them is garbage
collected (it pickles to the snapshot id alone). A task that finds the snapshot gone (the client
exited, or the server's ``idle_in_transaction_session_timeout`` closed it) fails with a
:class:`DataError`; ``snapshot: false`` reads each partition in its own transaction instead, and
the lineage records the open-time watermark (``pg_current_snapshot()``) either way. Ranges are
open at both ends (see :func:`dpipe.io.sql.text.range_bounds`), so every row is read exactly
once with or without the snapshot.
"""

from __future__ import annotations

import contextlib
import os
import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import adbc_driver_postgresql.dbapi as pg
import pyarrow as pa

from dpipe.errors import DataError, DpipeError, SpecError, StorageError
from dpipe.io.sql.base import SQLSource, query_error, quietly
from dpipe.io.sql.text import POSTGRES
from dpipe.spec.base import REDACTED, redact_url
from dpipe.spec.sql import PostgresSourceSpec

#: PostgreSQL truncates longer identifiers.
MAX_IDENT = 63
#: Commit attempts when concurrent commits conflict (serialization failure, deadlock, a table
#: created at the same time).
COMMIT_ATTEMPTS = 4
_RETRY_STATES = {"40001", "40P01", "42P07"}
COMMITS = "_dpipe_commits"
STAGED = "_dpipe_staged"


# -- connecting ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conninfo:
    """How to connect: ``url`` holds the password and is never shown; ``display`` names the database."""

    url: str = field(repr=False)
    display: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        """``text`` (a driver's message) with the password in any spelling replaced by ``***``."""
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, REDACTED)
        return redact_url(text)

    def __dask_tokenize__(self):
        return ("pg", self.display)


def conninfo(uri: str, storage_options: Mapping[str, Any] | None, *, where: str) -> Conninfo:
    """The connection of a spec: the password from the URL, ``storage_options.password`` or ``PGPASSWORD``.

    A URL password of ``***`` (a saved spec's) is dropped for the others; other
    ``storage_options`` become libpq parameters of the URL.
    """
    options = {k: v for k, v in (storage_options or {}).items()}
    given = options.pop("password", None)
    parts = urlsplit(uri)
    password = unquote(parts.password) if parts.password is not None else None
    redacted = password == REDACTED or given == REDACTED
    if password in (None, "", REDACTED):
        password = None if given in (None, REDACTED) else str(given)
    if password is None and os.environ.get("PGPASSWORD"):
        password = os.environ["PGPASSWORD"]
    if password is None and redacted:
        raise SpecError(
            f"{where}: the password was not saved with the spec ({redact_url(uri)})",
            hint="give it in PGPASSWORD or `storage_options: {password: ...}` (predict: `--storage-options`)",
        )
    try:
        host, port = parts.hostname or "", parts.port or 5432
    except ValueError as exc:
        raise SpecError(f"{where}: {redact_url(uri)!r} has an invalid port", hint="write host:port") from exc
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    netloc = user + (":" + quote(password, safe="") if password else "") + ("@" if user or password else "")
    netloc += (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("connect_timeout", "10")
    query.update({str(k): str(v) for k, v in options.items()})
    url = urlunsplit(("postgresql", netloc, parts.path, urlencode(query), ""))
    display = f"postgresql://{host or 'localhost'}:{port}{parts.path or '/'}"
    secrets = (password, quote(password, safe="")) if password else ()
    return Conninfo(url, display, secrets)


def connect(info: Conninfo, *, where: str, autocommit: bool = True) -> Any:
    try:
        return pg.connect(info.url, autocommit=autocommit)
    except pg.Error as exc:
        message = info.scrub(server_message(exc))
        if "password authentication failed" in message or sqlstate(exc).startswith("28"):
            raise StorageError(
                f"{where}: cannot log in to {info.display}: {message}",
                hint="check the user and password (in `uri`, `storage_options.password` or PGPASSWORD)",
            ) from None
        if "does not exist" in message:
            raise StorageError(
                f"{where}: {message} ({info.display})", hint="check the database name in `uri`"
            ) from None
        raise StorageError(
            f"{where}: cannot reach the database server {info.display}: {message}",
            hint="check the host and port in `uri`, and that the server is running and accepts TCP/IP connections",
        ) from None


def sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", None) or "")


def server_message(exc: BaseException) -> str:
    """The server's own words from an ADBC error: the ``ERROR:`` or ``FATAL:`` line."""
    text = str(exc)
    found = re.search(r"(?:ERROR|FATAL):\s+(.*)", text)
    line = found.group(1) if found else re.sub(r"^[A-Z_]+: (\[libpq\] )?", "", text)
    return " ".join(line.split("\n")[0].split())[:500] or type(exc).__name__


def _category(exc: BaseException) -> str:
    state = sqlstate(exc)
    if state in ("42P01", "3F000"):
        return "missing"
    if state == "42501":
        return "denied"
    if state == "42703":
        return "column"
    if state.startswith("42"):
        return "syntax"
    return "other"


# -- the snapshot ----------------------------------------------------------------------------------
class SnapshotLease:
    """An exported snapshot, importable while the client's connection that exported it is open.

    On the client it holds that connection and closes it when garbage collected (or at exit);
    pickled, it is the snapshot id alone.
    """

    def __init__(self, id: str, connection: Any = None):
        self.id = id
        self._release: Callable[[], Any] | None = None
        if connection is not None:
            self._release = weakref.finalize(self, _close, connection)

    def release(self) -> None:
        if self._release is not None:
            self._release()

    def __reduce__(self):
        return (SnapshotLease, (self.id,))

    def __dask_tokenize__(self):
        return ("pg-snapshot", self.id)


def _close(connection: Any) -> None:
    with quietly("closing the snapshot's connection"):
        connection.close()


@dataclass(frozen=True)
class PostgresReader:
    """A worker's read: its own connection, inside the client's snapshot when there is one."""

    info: Conninfo
    snapshot: SnapshotLease | None
    where: str
    table: str | None
    query: str | None

    @property
    def token(self) -> str:
        return f"{self.info.display}@{self.snapshot.id if self.snapshot else 'now'}"

    def read(self, sql: str) -> pa.Table:
        conn = connect(self.info, where=self.where)
        try:
            with conn.cursor() as cur:
                if self.snapshot is not None:
                    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    try:
                        cur.execute(f"SET TRANSACTION SNAPSHOT {POSTGRES.literal(self.snapshot.id)}")
                    except pg.Error as exc:
                        raise DataError(
                            f"{self.where}: the snapshot the source was opened in is gone ({self.info.scrub(server_message(exc))})",
                            hint="the client's connection holding it was closed: keep the opened source alive while"
                            " its frame computes, or set `snapshot: false` to read each partition on its own",
                        ) from None
                cur.execute(sql)
                table = cur.fetch_arrow_table()
                if self.snapshot is not None:
                    cur.execute("ROLLBACK")
            return table
        except pg.Error as exc:
            raise self.error(exc) from None
        finally:
            conn.close()

    def error(self, exc: BaseException) -> DpipeError:
        message = self.info.scrub(server_message(exc))
        return query_error(_category(exc), message, where=self.where, table=self.table, query=self.query)


class _Session:
    """The client's reads while the source opens, in the snapshot its tasks will import.

    The snapshot is exported by a connection that reads no table, so the lease holds no lock (a
    later ``DROP``, or a replace's rename swap of the same table, is not blocked by it); the
    schema and the range are read on a second connection that imports it and closes after.
    """

    def __init__(self, info: Conninfo, spec: PostgresSourceSpec, where: str):
        self.info, self.where = info, where
        self.reader = PostgresReader(info, None, where, spec.table, spec.query)
        self.lease: SnapshotLease | None = None
        self.kept = False
        self.conn: Any = None
        try:
            if spec.snapshot:
                self.lease = self._export()
            self.conn = connect(info, where=f"{where}.uri")
            self.cur = self.conn.cursor()
            self.cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if self.lease is not None:
                self.cur.execute(f"SET TRANSACTION SNAPSHOT {POSTGRES.literal(self.lease.id)}")
            self.version = self.table("SELECT pg_current_snapshot()::text AS s").column(0)[0].as_py()
        except pg.Error as exc:
            self.close()
            raise self.reader.error(exc) from None
        except BaseException:
            self.close()
            raise

    def _export(self) -> SnapshotLease:
        holder = connect(self.info, where=f"{self.where}.uri")
        try:
            with holder.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute("SELECT pg_export_snapshot()")
                exported = cur.fetchone()[0]
        except BaseException:
            holder.close()
            raise
        return SnapshotLease(exported, holder)  # it closes the holder when the last task is gone

    @property
    def snapshot(self) -> str | None:
        return None if self.lease is None else self.lease.id

    def table(self, sql: str) -> pa.Table:
        try:
            self.cur.execute(sql)
            return self.cur.fetch_arrow_table()
        except pg.Error as exc:
            raise self.reader.error(exc) from None

    def keep(self) -> PostgresReader:
        self.kept = True
        if self.lease is None:
            return self.reader
        return PostgresReader(self.info, self.lease, self.reader.where, self.reader.table, self.reader.query)

    def close(self) -> None:
        if self.conn is not None:
            with quietly("closing the source's connection"):
                self.cur.close()
                self.conn.close()
        if self.lease is not None and not self.kept:
            self.lease.release()


class PostgresSource(SQLSource):
    """``format: postgresql``: a table or query of a PostgreSQL database, in ranges of ``partition_on``."""

    Spec = PostgresSourceSpec
    dialect = POSTGRES
    kind = "postgresql"
    spec: PostgresSourceSpec

    def __init__(self, spec: PostgresSourceSpec, *, where: str = "source"):
        super().__init__(spec, where=where)
        self.info = conninfo(spec.uri, spec.storage_options, where=f"{where}.uri")

    @contextlib.contextmanager
    def session(self) -> Iterator[_Session]:
        session = _Session(self.info, self.spec, self.where)
        try:
            yield session
        finally:
            session.close()

    def location(self) -> str:
        return self.info.display
