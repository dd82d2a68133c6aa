"""What every connector is: a :class:`Source` opens a spec into an :class:`OpenedSource`; a
:class:`Sink` is a staged write and one commit.

An opened source is lazy (a Dask frame whose column projections reach the read), and says exactly
what it read: its :meth:`~OpenedSource.lineage` (the files with their size and ETag or mtime
today; a table version, a snapshot id, or a query and its watermark for later kinds) and its
:attr:`~OpenedSource.datums`, the units of new data that a new-data-only run diffs against the
previous run's. Kinds are found by ``format`` in :mod:`dpipe.io.registry`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

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


@dataclass(frozen=True)
class Deferred:
    """A Dask frame not built yet: ``build()`` makes it, ``meta`` is its empty pandas frame.

    A connector may give one as :attr:`OpenedSource.frame`, so that planning, which needs only
    the columns and their types, does not import ``dask.dataframe`` (about a second) at all.
    """

    build: Callable[[], Any]
    meta: Any


class _FrameField:
    """The ``frame`` field: stores a frame or a :class:`Deferred`, and builds the latter on first read."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            raise AttributeError("frame")  # no default: the field is required
        value = obj.__dict__[self.slot]
        if isinstance(value, Deferred):
            value = obj.__dict__[self.slot] = value.build()
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value


@dataclass(frozen=True, eq=False)
class OpenedSource:
    """A source opened lazily: the Dask frame and exactly what it reads.

    Partition ``i`` of ``frame`` comes from ``files[i]`` (a label: a file's URI for file sources).
    ``datums`` are what was selected (after partition pruning), ``record`` the connector's own
    part of the lineage (``{"kind": "files", "versioned_by": "etag"}``, later a table version).
    """

    uri: str
    format: str
    #: The Dask frame, or a :class:`Deferred` one (built when first read).
    if TYPE_CHECKING:  # a required field to type checkers; at run time, the field's descriptor
        frame: Any
    else:
        frame: Any = _FrameField()
    schema: pa.Schema
    files: list[str]
    datums: tuple[Datum, ...] = ()
    record: Mapping[str, Any] = field(default_factory=dict)
    partition_columns: list[str] = field(default_factory=list)
    #: Whether the lineage identifies the rows read: equal lineage, equal rows (files with their
    #: ETags, a table version, a database file's version). ``False`` for a live database, whose
    #: rows can change without a version: two reads of it cannot be told apart from a retry.
    versioned: bool = True
    #: The datum id of each partition (``()``: a partition's ``files`` label up to its ``#``).
    partition_datums: tuple[str, ...] = ()
    #: Bytes on storage of each partition (``()``: not known), and the size up to which
    #: consecutive small partitions are combined past the checks (``None``: never; :meth:`combined`).
    partition_sizes: tuple[int, ...] = ()
    combine_to: int | None = None
    #: The frame read as pieces by the connector itself, given where each piece starts (then the
    #: partition count): one task reads a piece's partitions (``None``: pieces are concatenated
    #: from the partitions' tasks).
    read_pieces: Callable[[list[int]], Any] | None = None

    @property
    def meta(self) -> Any:
        """The frame's empty pandas frame (its columns and types), without building a deferred frame."""
        value = self.__dict__["_frame"]
        return value.meta if isinstance(value, Deferred) else value._meta

    @property
    def columns(self) -> list[str]:
        return list(self.meta.columns)

    @property
    def nbytes(self) -> int | None:
        """Bytes of the selected data on storage, from the listing (``None`` if the store cannot tell)."""
        sizes = [d.size for d in self.datums]
        return None if not sizes or None in sizes else sum(s for s in sizes if s is not None)

    def lineage(self) -> dict[str, Any]:
        """What exactly was read, JSON-able: the connector's record and every datum."""
        return {**self.record, "datums": [d.to_dict() for d in self.datums]}

    def combined(self, frame: Any = None) -> Any:
        """``frame`` (default :attr:`frame`; partition ``i`` read from ``files[i]``) with its small
        partitions concatenated into pieces of up to :attr:`combine_to` bytes on storage
        (:func:`dpipe.io.combine.combine`). Use it once nothing needs a partition's file any more:
        past the quality checks, which tag the rows they set aside with their file. The source's
        own frame is read as pieces where the connector can (:attr:`read_pieces`: a task per
        piece, not per file)."""
        from dpipe.io.combine import boundaries, combine

        if frame is None and self.read_pieces is not None and self.combine_to is not None and self.partition_sizes:
            starts = boundaries(self.partition_sizes, self.combine_to)
            if len(starts) - 1 < len(self.partition_sizes):
                return self.read_pieces(starts)
        return combine(self.frame if frame is None else frame, self.partition_sizes, self.combine_to)

    def datum_of_partitions(self) -> tuple[str, ...]:
        """The datum id of every partition of ``frame``, in order."""
        return self.partition_datums or tuple(label.split("#", 1)[0] for label in self.files)

    def select(self, ids: Collection[str]) -> OpenedSource:
        """Only the partitions of the datums ``ids`` (the frame reads nothing else); at least one."""
        wanted = set(ids)
        parts = self.datum_of_partitions()
        keep = [i for i, d in enumerate(parts) if d in wanted]
        if not keep:
            raise ValueError("select: none of the datums is in this source")
        return replace(
            self,
            frame=self.frame.partitions[keep],
            files=[self.files[i] for i in keep],
            datums=tuple(d for d in self.datums if d.id in wanted),
            partition_datums=tuple(parts[i] for i in keep),
            partition_sizes=tuple(self.partition_sizes[i] for i in keep) if self.partition_sizes else (),
            read_pieces=None,
        )


@dataclass(frozen=True)
class Increment:
    """What is new in a source since the datums of earlier runs (``seen``).

    ``source`` reads only the ``new`` datums (``None`` when there are none); ``changed`` are seen
    datums whose version differs now (as they are now), ``missing`` seen datums that are gone.
    A source whose datums accumulate (a SQL watermark range) never reports either.
    """

    source: OpenedSource | None
    new: tuple[Datum, ...] = ()
    changed: tuple[Datum, ...] = ()
    missing: tuple[Datum, ...] = ()
    #: Every datum the source holds now (the seen ones included).
    current: tuple[Datum, ...] = ()


def increment(opened: OpenedSource, seen: Collection[Datum]) -> Increment:
    """The :class:`Increment` of a fully opened source: its datums diffed against ``seen`` by id
    and version. Sources whose ``open`` lists every datum cheaply use this; others (a database
    read above a watermark) implement ``open_new`` themselves."""
    diff = diff_datums(opened.datums, seen)
    return dataclasses.replace(diff, source=opened.select([d.id for d in diff.new]) if diff.new else None)


def diff_datums(current: Collection[Datum], seen: Collection[Datum]) -> Increment:
    """``current`` datums against ``seen`` ones by id and version (an :class:`Increment` without a source)."""
    before = {d.id: d for d in seen}
    now = {d.id: d for d in current}
    new = tuple(d for i, d in now.items() if i not in before)
    changed = tuple(d for i, d in now.items() if i in before and before[i].version != d.version)
    missing = tuple(d for i, d in before.items() if i not in now)
    return Increment(None, new, changed, missing, tuple(current))


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

    # Optional: ``open_new(seen, *, bad_file_log=None) -> Increment`` opens only the data that is
    # not among the ``seen`` datums (a database reads above its watermark); without it dpipe
    # opens the source and diffs its datums (:func:`increment`).


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


def already_committed(sink: Any, txn: str) -> bool:
    """Whether ``sink`` holds a commit of ``txn`` already (a sink that cannot tell: no)."""
    has_commit = getattr(sink, "has_commit", None)
    return bool(has_commit(txn)) if callable(has_commit) else False
