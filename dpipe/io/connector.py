"""What every connector is: a :class:`Source` opens a spec into an :class:`OpenedSource`; a
:class:`Sink` is a staged write and one commit.

An opened source is lazy (a Dask frame whose column projections reach the read), and says exactly
what it read: its :meth:`~OpenedSource.lineage` (the files with their size and ETag or mtime
today; a table version, a snapshot id, or a query and its watermark for later kinds) and its
:attr:`~OpenedSource.datums`, the units of new data that a new-data-only run diffs against the
previous run's. Kinds are found by ``format`` in :mod:`dpipe.io.registry`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import pyarrow as pa

from dpipe.io.fs import resolve, storage_errors
from dpipe.spec.connectors import BaseSinkSpec
from dpipe.spec.source import BaseSourceSpec


@dataclass(frozen=True)
class Datum:
    """One unit of new data in a source: a file today (later a table's file, a query's range).

    ``id`` names it (a file's full URI), ``version`` changes whenever its content may have (the
    store's ETag, else the modification time), so two runs can tell new and changed data apart.
    """

    id: str
    size: int | None = None
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "version": self.version}


@dataclass(frozen=True, eq=False)
class OpenedSource:
    """A source opened lazily: the Dask frame and exactly what it reads.

    Partition ``i`` of ``frame`` comes from ``files[i]`` (a label: a file's URI for file sources).
    ``datums`` are what was selected (after partition pruning), ``record`` the connector's own
    part of the lineage (``{"kind": "files", "versioned_by": "etag"}``, later a table version).
    """

    uri: str
    format: str
    frame: Any
    schema: pa.Schema
    files: list[str]
    datums: tuple[Datum, ...] = ()
    record: Mapping[str, Any] = field(default_factory=dict)
    partition_columns: list[str] = field(default_factory=list)
    #: Whether the lineage identifies the rows read: equal lineage, equal rows (files with their
    #: ETags, a table version, a database file's version). ``False`` for a live database, whose
    #: rows can change without a version: two reads of it cannot be told apart from a retry.
    versioned: bool = True

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    @property
    def nbytes(self) -> int | None:
        """Bytes of the selected data on storage, from the listing (``None`` if the store cannot tell)."""
        sizes = [d.size for d in self.datums]
        return None if not sizes or None in sizes else sum(s for s in sizes if s is not None)

    def lineage(self) -> dict[str, Any]:
        """What exactly was read, JSON-able: the connector's record and every datum."""
        return {**self.record, "datums": [d.to_dict() for d in self.datums]}


@dataclass(frozen=True)
class BadFileLog:
    """A folder where workers record the input files they skipped, one small JSON file each.

    Records are named by a hash of the file's URI, so reading a file again (a retried task, a
    second pass) overwrites its record instead of adding one.
    """

    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def record(self, file: str, error: str) -> None:
        fs, path = resolve(self.uri, self.storage_options, where="bad files")
        name = hashlib.sha1(file.encode()).hexdigest()[:20]
        with storage_errors("bad files", self.uri):
            fs.makedirs(path, exist_ok=True)
            with fs.open(f"{path.rstrip('/')}/{name}.json", "w") as f:
                json.dump({"file": file, "error": error}, f)

    def records(self) -> list[dict[str, str]]:
        """Every record written so far, sorted by file."""
        fs, path = resolve(self.uri, self.storage_options, where="bad files")
        with storage_errors("bad files", self.uri):
            if not fs.exists(path):
                return []
            found = []
            for p in sorted(fs.glob(f"{path.rstrip('/')}/*.json")):
                with fs.open(p, "r") as f:
                    found.append(json.load(f))
        return sorted(found, key=lambda r: r["file"])

    def __dask_tokenize__(self):
        return ("dpipe-bad-file-log", self.uri)


@runtime_checkable
class Source(Protocol):
    """A source kind: built from one validated spec, opened into an :class:`OpenedSource`.

    ``Spec`` is its spec model (a :class:`~dpipe.spec.source.BaseSourceSpec` subclass that
    validates the entry's keys when the job loads). ``open`` lists what the spec selects, reads
    the schema (listings, and one footer or first block per file, on the client) and returns the lazy frame; it reads
    ``spec.columns`` only. With a ``bad_file_log``, a datum that cannot be read gives an empty
    partition and is recorded there; a kind that cannot skip data raises a ``SpecError``.
    """

    Spec: ClassVar[type[BaseSourceSpec]]
    spec: BaseSourceSpec
    where: str

    def __init__(self, spec: Any, *, where: str = "source") -> None: ...

    def open(self, *, bad_file_log: BadFileLog | None = None) -> OpenedSource: ...


@dataclass(frozen=True)
class Written:
    """What a sink committed: its URI, the rows this commit added (if known; 0 for a duplicate), the
    datums it wrote, and its record.

    ``record`` is the sink's part of the lineage: what the commit created (``{"kind": "delta",
    "version": 7, "mode": "append"}``, an Iceberg snapshot id, a SQL table and transaction id).
    ``duplicate`` is true when the commit was skipped because a commit with the same ``txn``
    already happened (a retried run): the destination holds the rows once.
    """

    uri: str
    rows: int | None = None
    datums: tuple[Datum, ...] = ()
    record: Mapping[str, Any] = field(default_factory=dict)
    duplicate: bool = False

    def lineage(self) -> dict[str, Any]:
        """What exactly was written, JSON-able."""
        return {
            "uri": self.uri,
            "rows": self.rows,
            **self.record,
            "duplicate": self.duplicate,
            "datums": [d.to_dict() for d in self.datums],
        }


@runtime_checkable
class Sink(Protocol):
    """A sink kind: a staged write and one commit, built from a spec with ``from_spec``.

    Workers write data files in parallel (:meth:`write`); the client commits them once
    (:meth:`commit`): nothing is visible at ``uri`` before, and leaving the ``with`` block without
    a commit (an error) calls :meth:`abort`, which leaves the destination as it was.

    ``check(meta)`` (optional) checks an empty frame of what will be written against the
    destination (an appended table's schema) before any computation; ``has_commit(txn)``
    (optional) says whether a commit of ``txn`` is already there, so an unchanged rerun can stop
    before any work. ``commit`` takes
    ``metadata``, a JSON-able dict stored with the commit (the manifest of a features job: in a
    table's commit metadata, or beside a folder's files), and ``txn``, an id that makes the commit
    happen at most once: a sink that finds a commit with the same ``txn`` returns a
    :class:`Written` with ``duplicate=True`` instead of committing again.
    """

    Spec: ClassVar[type[BaseSinkSpec]]
    uri: str

    @classmethod
    def from_spec(cls, spec: Any, *, where: str = "output") -> Sink: ...

    def write(self, frame: Any, *, compute: Callable[[Any], Any] | None = None) -> None: ...

    def commit(self, *, metadata: Mapping[str, Any] | None = None, txn: str | None = None) -> Written: ...

    def abort(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...
