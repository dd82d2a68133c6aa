"""A real PostgreSQL server for the test session: initdb and pg_ctl on a free port on 127.0.0.1.

The server runs from a fresh data folder in a temporary directory, with password (SCRAM)
authentication for one user, so a wrong password is really refused. PostgreSQL refuses to run as
root: when the tests run as root, ``initdb`` and ``pg_ctl`` run as the ``postgres`` user, which
owns the temporary directory. A machine without ``pg_ctl`` gets Debian's ``postgresql`` package
when running as root (how a fresh CI machine gets one); otherwise starting fails with a clear
message. The tests never skip for want of a server.

Examples
--------
>>> with running_server() as pg:
...     pg.sql("SELECT 1")
'1'
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "dpipe"
PASSWORD = "pg-test-secret-7f3a"
DBNAME = "dpipe_test"
#: Settings for a throwaway server: no durability, so writes cost little.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
}


@dataclass(frozen=True)
class PostgresServer:
    """How to reach the test server: the pieces of its URL, and :meth:`sql` to run statements."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    bindir: Path
    #: The server's log (its stderr): what ``log_statement`` and ``auto_explain`` write, when a
    #: test turns them on for a database of its own (see :meth:`log_from`).
    log: Path | None = None

    @property
    def uri(self) -> str:
        """``postgresql://user:password@host:port/dbname``."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.dbname}"

    @property
    def uri_without_password(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def uri_of(self, dbname: str) -> str:
        """The URL of another database on this server."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    def log_size(self) -> int:
        """Bytes in the server's log so far: where :meth:`log_from` starts reading later lines."""
        assert self.log is not None
        return self.log.stat().st_size

    def log_from(self, offset: int) -> str:
        """The server's log from byte ``offset`` on (what was logged since :meth:`log_size` said it)."""
        assert self.log is not None
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def sql(self, statement: str, *, dbname: str | None = None) -> str:
        """Run ``statement`` with ``psql`` (unaligned, tuples only); returns its output, stripped.

        A failing statement raises ``RuntimeError`` with psql's message.
        """
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                dbname or self.dbname,
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": self.password},
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}\nstatement: {statement}")
        return done.stdout.strip()


def find_bindir() -> Path:
    """The folder of ``pg_ctl``: on ``PATH``, else the newest ``/usr/lib/postgresql/*/bin``.

    When neither has one and this process runs as root, Debian's ``postgresql`` package is
    installed first; otherwise a ``RuntimeError`` says how to get one.
    """
    found = _find_pg_ctl()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        found = _find_pg_ctl()
    if found is None:
        raise RuntimeError(
            "the PostgreSQL tests need a PostgreSQL server: `pg_ctl` is neither on PATH nor in"
            " /usr/lib/postgresql/*/bin. Install it (Debian/Ubuntu: `apt-get install postgresql`;"
            " macOS: `brew install postgresql`) or put its bin folder on PATH"
        )
    return found.parent


def _find_pg_ctl() -> Path | None:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve()

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parents[1].name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version, reverse=True)
    return Path(candidates[0]) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the owner of the data folder."""
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@contextlib.contextmanager
def running_server(*, attempts: int = 3) -> Iterator[PostgresServer]:
    """Start a fresh server and yield how to reach it; stop it and delete its files on exit."""
    bindir = find_bindir()
    owner = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="dpipe-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    started = False
    try:
        sockets.mkdir()
        pwfile = root / "password"
        pwfile.write_text(PASSWORD + "\n")
        if owner:
            for path in (root, sockets, pwfile):
                shutil.chown(path, owner)
        _run(
            _as_owner(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    USER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                owner,
            ),
            "initdb",
        )
        pwfile.unlink()
        options = " ".join(f"-c {k}={v}" for k, v in SETTINGS.items())
        for attempt in range(attempts):
            # Another process may take the free port before the server binds it: try another.
            port = _free_port()
            argv = [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {port} -k {sockets} {options}",
                "start",
            ]
            done = subprocess.run(_as_owner(argv, owner), capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                started = True
                break
            if attempt == attempts - 1:
                server_log = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"pg_ctl start failed ({done.returncode}): {done.stderr}\n{server_log}")
        server = PostgresServer("127.0.0.1", port, USER, PASSWORD, DBNAME, bindir, log)
        server.sql(f"CREATE DATABASE {DBNAME}", dbname="postgres")
        yield server
    finally:
        if started:
            subprocess.run(
                _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], owner),
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)
