"""Atomic outputs: everything is written to a hidden staging folder and moved into place last.

On a local disk the move is a rename, so readers see the old output or the new one, never a mix.
Object stores have no rename: the staged files are copied into place and a marker file
(``manifest.json`` for bundles, ``_SUCCESS`` for datasets) is copied last, which is what readers
check. A failed run deletes its staging folder and leaves the destination untouched.

:class:`StagedOutput` is that staged folder (bundles write theirs into it);
:class:`ParquetFolderSink` is the ``parquet`` sink kind, a dataset of Parquet files written so.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyarrow.parquet as pq

from dpipe.errors import ColumnError, StorageError
from dpipe.io.connector import Written
from dpipe.io.fs import full_uri, is_local, resolve, storage_errors, with_environment
from dpipe.io.listing import list_files
from dpipe.spec.connectors import ParquetSinkSpec

SUCCESS = "_SUCCESS"
#: The metadata of a commit (a features job's manifest), beside the data files.
MANIFEST = "_dpipe_manifest.json"


class StagedOutput:
    """A folder at ``uri`` written atomically.

    Parameters
    ----------
    uri
        Destination folder, local or any fsspec URL.
    storage_options
        Filesystem options (credentials, endpoint).
    overwrite
        Replace an existing destination on commit; otherwise an existing one is an error,
        raised at construction so a run fails before doing any work.
    marker
        File name written last on commit; readers treat the output as complete when it exists.

    Examples
    --------
    >>> with StagedOutput("runs/demo") as out:
    ...     out.write_json("metrics.json", {"auc": 0.9})
    ...     out.commit()
    """

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, Any] | None = None,
        *,
        overwrite: bool = True,
        marker: str = SUCCESS,
        where: str = "output.uri",
    ):
        self.uri = uri
        self.where = where
        # Resolved with the client's environment: Dask's writers on the workers get these.
        self.storage_options = with_environment(uri, storage_options)
        self.marker = marker
        self.fs, path = resolve(uri, storage_options, where=where)
        self.path = path.rstrip("/")
        parent, name = posixpath.split(self.path)
        if not name:
            raise StorageError(f"{where}: {uri!r} is not a folder that can be replaced", hint="name a sub-folder")
        self.parent = parent
        self.staging = f"{parent}/.{name}.dpipe-staging-{uuid.uuid4().hex[:12]}"
        self.committed = False
        with storage_errors(where, uri):
            exists = self.fs.exists(self.path)
        if exists and not overwrite:
            raise StorageError(
                f"{where}: {uri!r} already exists",
                hint="choose another location, delete it, or set `output.overwrite: true`",
            )

    # -- writing -----------------------------------------------------------------------------
    def __enter__(self) -> StagedOutput:
        self.begin()
        return self

    def begin(self) -> None:
        """Create the staging folder (idempotent; entering the ``with`` block does it)."""
        with storage_errors(self.where, self.uri):
            self.fs.makedirs(self.staging, exist_ok=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def staged_path(self, relpath: str = "") -> str:
        return f"{self.staging}/{relpath}" if relpath else self.staging

    def staged_uri(self, relpath: str = "") -> str:
        """Full URL of a staged path, for writers (Dask) that open their own filesystem."""
        return full_uri(self.fs, self.staged_path(relpath))

    def write_bytes(self, relpath: str, data: bytes) -> None:
        path = self.staged_path(relpath)
        with storage_errors(self.where, self.uri):
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with self.fs.open(path, "wb") as f:
                f.write(data)

    def write_json(self, relpath: str, obj: Any) -> None:
        self.write_bytes(relpath, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())

    def remove(self, relpath: str) -> None:
        """Delete a staged file or folder (if there is one) so that the commit leaves it out."""
        path = self.staged_path(relpath)
        with storage_errors(self.where, self.uri):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    # -- finishing ---------------------------------------------------------------------------
    def commit(self) -> str:
        """Move the staged folder to the destination; returns the destination URI."""
        with storage_errors(self.where, self.uri):
            if self.marker and not self.fs.exists(self.staged_path(self.marker)):
                self.write_bytes(self.marker, b"")
            # One commit at a time per output: copies into an object store, unlike a rename,
            # interleave, so two runs committing at once would leave a mix of their files.
            lock = f"{self.parent}/.{posixpath.basename(self.path)}.dpipe-commit"
            with commit_lock(self.fs, lock, self.where, self.uri):
                if is_local(self.fs):
                    self._commit_local()
                else:
                    self._commit_object_store()
        self.committed = True
        return full_uri(self.fs, self.path)

    def _commit_local(self) -> None:
        import os
        import shutil

        old = None
        if os.path.exists(self.path):
            old = f"{self.parent}/.{posixpath.basename(self.path)}.dpipe-old-{uuid.uuid4().hex[:12]}"
            os.rename(self.path, old)
        try:
            os.rename(self.staging, self.path)
        except OSError:
            if old:
                os.rename(old, self.path)  # put the previous output back
            raise
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def _commit_object_store(self) -> None:
        if self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)
        files = sorted(self.fs.find(self.staging))
        marker = self.staged_path(self.marker) if self.marker else None
        for src in [f for f in files if f != marker] + ([marker] if marker in files else []):
            self.fs.copy(src, self.path + src[len(self.staging) :])
        self.fs.rm(self.staging, recursive=True)

    def abort(self) -> None:
        """Delete the staging folder (best effort: the destination is untouched either way)."""
        try:
            if self.fs.exists(self.staging):
                self.fs.rm(self.staging, recursive=True)
        except Exception:  # noqa: BLE001 - cleanup must not hide the error that caused it
            pass


#: Seconds a commit waits for another run's commit to the same output, and the age after which
#: a lock is taken for a crashed committer's and broken.
COMMIT_WAIT, STALE_LOCK = 120.0, 900.0


@contextlib.contextmanager
def commit_lock(fs, path: str, where: str, uri: str) -> Iterator[None]:
    """Hold the commit lock ``path`` (an exclusively created file) for the block.

    Another run's lock is waited for (up to :data:`COMMIT_WAIT` seconds: its commit is a few
    copies), then the commit fails naming the output; a lock older than :data:`STALE_LOCK` is a
    crashed run's and is broken.
    """
    import time

    from dpipe.io.atomic import create_exclusive

    deadline = time.monotonic() + COMMIT_WAIT
    body = json.dumps({"at": time.time(), "id": uuid.uuid4().hex}).encode()
    while True:
        try:
            create_exclusive(fs, path, body, where=where)
            break
        except FileExistsError:
            held = _lock_age(fs, path)
            if held is not None and held > STALE_LOCK:
                fs.rm(path)
                continue
            if time.monotonic() >= deadline:
                raise StorageError(
                    f"{where}: another run is committing to {uri!r} (its lock {path!r} is {held or 0:.0f}s old)",
                    hint="run again when it is done; delete the lock file if no run is writing there",
                ) from None
            time.sleep(0.5)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)


def _lock_age(fs, path: str) -> float | None:
    import time

    try:
        return time.time() - float(json.loads(fs.cat_file(path))["at"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def write_parquet(frame, out: StagedOutput, relpath: str, *, compute=None) -> None:
    """Write a Dask DataFrame as ``part-NNNNN.parquet`` files under a staged folder."""
    task = parquet_task(frame, out, relpath)
    with storage_errors(out.where, out.uri):
        (compute or (lambda t: t.compute()))(task)


def parquet_task(frame, out: StagedOutput, relpath: str, *, partition_by: list[str] | None = None):
    """The lazy write of :func:`write_parquet`, to compute together with other values.

    With ``partition_by``, rows go to Hive folders ``key=value/`` (one file per partition each).
    """
    uri = out.staged_uri(relpath)
    extra = {"partition_on": list(partition_by)} if partition_by else {}
    with storage_errors(out.where, out.uri):
        return frame.to_parquet(
            uri,
            storage_options=out.storage_options,
            write_index=False,
            write_metadata_file=False,
            name_function=lambda i: f"part-{i:05d}.parquet",
            compute=False,
            **extra,
        )


class ParquetFolderSink:
    """The ``parquet`` sink: a folder of ``part-NNNNN.parquet`` files, replaced whole on commit.

    A staged write (:class:`StagedOutput`): the files go to a hidden staging folder, and
    :meth:`commit` moves them into place with ``_SUCCESS`` last (renames on a local disk, copies
    with the marker copied last on object stores). Leaving the ``with`` block without a commit
    deletes the staging folder and leaves ``uri`` as it was.

    Parameters
    ----------
    uri
        Destination folder, local or any fsspec URL.
    storage_options
        Filesystem options (credentials, endpoint).
    overwrite
        Replace an existing destination on commit; otherwise an existing one is an error,
        raised here, before any work.
    partition_by
        Columns whose values name Hive folders (``date=2024-06-01/``); they must be in the frame.

    The ``metadata`` given to :meth:`commit` is written as ``_dpipe_manifest.json`` beside the data
    (readers of the dataset skip files starting with ``_``).

    Examples
    --------
    >>> with ParquetFolderSink("runs/scores") as sink:
    ...     sink.write(predictions)
    ...     written = sink.commit()
    >>> written.rows
    """

    Spec = ParquetSinkSpec

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, Any] | None = None,
        *,
        overwrite: bool = True,
        partition_by: list[str] | None = None,
        where: str = "output",
    ):
        self.out = StagedOutput(uri, storage_options, overwrite=overwrite, marker=SUCCESS, where=where)
        self.partition_by = list(partition_by or [])
        self.where = where

    @classmethod
    def from_spec(cls, spec: ParquetSinkSpec, *, where: str = "output") -> ParquetFolderSink:
        return cls(
            spec.uri, spec.storage_options, overwrite=spec.overwrite, partition_by=spec.partition_by, where=where
        )

    @property
    def uri(self) -> str:
        return self.out.uri

    def __enter__(self) -> ParquetFolderSink:
        self.out.begin()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.out.committed:
            self.abort()

    def has_commit(self, txn: str) -> bool:
        """Whether the folder is the output of a commit of ``txn`` (its ``_dpipe_manifest.json`` says so)."""
        path = f"{self.out.path}/{MANIFEST}"
        with storage_errors(self.out.where, self.out.uri):
            if not (self.out.fs.exists(f"{self.out.path}/{SUCCESS}") and self.out.fs.exists(path)):
                return False
            try:
                return json.loads(self.out.fs.cat_file(path)).get("txn") == txn
            except ValueError:
                return False

    def check(self, meta) -> None:
        """``partition_by`` columns must be in what is written (checked before any computation)."""
        missing = [c for c in self.partition_by if c not in meta.columns]
        if missing:
            raise ColumnError(
                f"{self.where}.partition_by: column(s) {missing} are not in the output; available: {list(meta.columns)}",
                hint=f"fix `{self.where}.partition_by`",
            )

    def write_task(self, frame):
        """The lazy write of ``frame`` (one file per partition), to compute with other values."""
        self.check(frame._meta)
        self.out.begin()
        return parquet_task(frame, self.out, "", partition_by=self.partition_by)

    def write(self, frame, *, compute: Callable[[Any], Any] | None = None) -> None:
        """Write ``frame`` to the staging folder; ``compute`` runs the task (default: ``.compute()``)."""
        task = self.write_task(frame)
        with storage_errors(self.out.where, self.out.uri):
            (compute or (lambda t: t.compute()))(task)

    def commit(self, *, metadata: Mapping[str, Any] | None = None, txn: str | None = None) -> Written:
        """Move the staged files into place, ``_SUCCESS`` last; the rows come from the footers.

        The folder is replaced whole, so a retried commit (``txn``) cannot duplicate rows.
        """
        if metadata is not None or txn is not None:
            self.out.write_json(MANIFEST, {"txn": txn, **dict(metadata or {})})
        uri = self.out.commit()
        fs = self.out.fs
        with storage_errors(self.out.where, self.out.uri):
            listing = list_files(fs, self.out.path, suffixes=(".parquet",))
            rows = 0
            for path in listing.paths:
                with fs.open(path, "rb") as f:
                    rows += pq.ParquetFile(f).metadata.num_rows
        record = {"kind": "parquet", "files": len(listing.paths), "partition_by": self.partition_by}
        return Written(uri=uri, rows=rows, datums=listing.datums(), record=record)

    def abort(self) -> None:
        """Delete the staged files (best effort); the destination is untouched."""
        self.out.abort()
