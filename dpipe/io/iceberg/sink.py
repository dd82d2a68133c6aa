"""``format: iceberg`` sinks: data files written by the workers, one snapshot committed by the client."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlparse

import dask
import pandas as pd
import pyarrow as pa
from pyiceberg.exceptions import (
    CommitFailedException,
    NoSuchNamespaceError,
    NoSuchTableError,
    ResolveError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.io import load_file_io
from pyiceberg.io.fsspec import FsspecFileIO
from pyiceberg.io.pyarrow import PyArrowFileIO, pyarrow_to_schema, schema_to_pyarrow
from pyiceberg.manifest import DataFile, ManifestContent
from pyiceberg.schema import Schema, promote
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

from dpipe.errors import ColumnError, DataError, SpecError, StateError, StorageError
from dpipe.io.connector import Datum, Written
from dpipe.io.iceberg.catalog import catalog_errors, open_catalog, short, slim
from dpipe.spec.iceberg import IcebergSinkSpec

#: Snapshot summary properties a sink commit carries.
TXN, MANIFEST = "dpipe.txn", "dpipe.manifest"


@dataclass(frozen=True)
class WriteTarget:
    """What a worker needs to write data files of a table: picklable, one per run."""

    metadata: TableMetadata
    io_properties: dict[str, str]
    arrow_schema: pa.Schema
    required: tuple[str, ...]
    run: str
    where: str = "output"

    def __dask_tokenize__(self):
        return ("dpipe-iceberg-write", self.run)


def write_partition(frame: pd.DataFrame, target: WriteTarget, index: int) -> list[DataFile]:
    """Write one partition as data files of the table (runs on a worker); returns their entries."""
    # pyiceberg's own writer: the table's field ids, partition values and column statistics.
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    if frame.empty:
        return []
    table = pa.Table.from_pandas(frame, preserve_index=False)
    columns = []
    for f in target.arrow_schema:
        column = table.column(f.name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        try:
            # A timestamp's sub-microsecond part is dropped (Iceberg v2 stores microseconds).
            columns.append(column.cast(f.type, safe=not pa.types.is_timestamp(f.type)))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"{target.where}: column {f.name!r} cannot be written as {f.type}: {short(exc)}") from exc
        if f.name in target.required and columns[-1].null_count:
            raise DataError(f"{target.where}: column {f.name!r} is required by the table but has missing values")
    table = pa.Table.from_arrays(columns, schema=target.arrow_schema)
    io = load_file_io(target.io_properties, target.metadata.location)
    write_uuid = uuid.uuid5(uuid.UUID(target.run), str(index))  # a retried task overwrites its own files
    try:
        return list(_dataframe_to_data_files(target.metadata, table, io, write_uuid=write_uuid))
    except OSError as exc:
        location = target.metadata.location
        raise StorageError(f"{target.where}: cannot write data files under {location!r}: {short(exc)}") from exc


def _gather(parts: list[list[DataFile]]) -> list[DataFile]:
    return [f for part in parts for f in part]


def frame_schema(meta: pd.DataFrame, where: str) -> pa.Schema:
    """The Arrow schema of what will be written, as Iceberg can store it (microseconds, no dictionaries)."""
    fields = []
    for f in pa.Schema.from_pandas(meta, preserve_index=False):
        t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if pa.types.is_timestamp(t):
            # Iceberg stores microseconds, in UTC when zoned (the instants stay the same).
            t = pa.timestamp("us", "UTC" if t.tz else None)
        if pa.types.is_null(t):
            raise DataError(
                f"{where}: column {f.name!r} has no type (an object column without values)",
                hint="cast it (`astype('string')`, `astype('float64')`) before it is written",
            )
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def check_schema(table_schema: Schema, written: pa.Schema, where: str, table: str) -> None:
    """The output's columns must be the table's, each of the same type or one Iceberg promotes."""
    names = list(table_schema.column_names)
    extra = [c for c in written.names if c not in names]
    missing = [c for c in names if c not in written.names]
    if extra or missing:
        raise ColumnError(
            f"{where}: the output's columns do not match table {table!r}: not in the table {extra},"
            f" missing from the output {missing}; the table has {names}",
            hint="select, rename or add the columns before writing, or write to a new table",
        )
    with _unsupported_types(where):
        provided = pyarrow_to_schema(written, name_mapping=table_schema.name_mapping)
    wrong = []
    for name in names:
        have, want = provided.find_field(name).field_type, table_schema.find_field(name).field_type
        if have != want:
            try:
                promote(have, want)
            except ResolveError:
                wrong.append(f"{name!r} is {have} in the output, {want} in the table")
    if wrong:
        raise DataError(
            f"{where}: column types do not match table {table!r}: " + "; ".join(wrong),
            hint="cast the columns to the table's types before writing",
        )


@contextlib.contextmanager
def _unsupported_types(where: str) -> Iterator[None]:
    try:
        yield
    except (TypeError, ValueError) as exc:  # pyiceberg: "Unsupported type: ..."
        raise DataError(
            f"{where}: a column's type cannot be stored in Iceberg: {short(exc)}",
            hint="cast it to a type Iceberg has (such as float16 to float32) before it is written",
        ) from exc


class IcebergSink:
    """``format: iceberg``: data files written by the workers, committed by the client as one snapshot.

    ``commit(txn=...)`` stores ``dpipe.txn`` in the snapshot's summary and skips the commit when a
    snapshot with that txn exists (the files written are deleted); ``metadata`` is stored there as
    ``dpipe.manifest`` (JSON).

    Examples
    --------
    >>> with open_sink({"format": "iceberg", "table": "lake.scores", "catalog": {"warehouse": "data/lake"}}) as sink:
    ...     sink.write(predictions)
    ...     written = sink.commit(txn="run-42")
    """

    Spec: ClassVar[type[IcebergSinkSpec]] = IcebergSinkSpec

    def __init__(self, spec: IcebergSinkSpec, *, where: str = "output"):
        self.spec = spec
        self.where = where
        self.catalog = open_catalog(spec, where, create=True)
        self.run = uuid.uuid4().hex
        self.committed = False
        self._target: WriteTarget | None = None
        self._files: list[DataFile] | None = None
        self._create: Any = None  # the CreateTableTransaction of a new table
        self._created_namespace = False
        self._outcome_unknown = False

    @classmethod
    def from_spec(cls, spec: IcebergSinkSpec, *, where: str = "output") -> IcebergSink:
        return cls(spec, where=where)

    @property
    def uri(self) -> str:
        return self.spec.uri

    def __enter__(self) -> IcebergSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def _errors(self):
        return catalog_errors(self.where, self.catalog.name, self.catalog.properties)

    def _existing(self) -> Table | None:
        with self._errors():
            try:
                return self.catalog.load_table(self.spec.table)
            except (NoSuchTableError, NoSuchNamespaceError):
                return None

    def has_commit(self, txn: str) -> bool:
        """Whether a snapshot of the table already carries ``txn`` (checked before any work)."""
        table = self._existing()
        return table is not None and any(s.summary and s.summary.get(TXN) == str(txn) for s in table.metadata.snapshots)

    def check(self, meta: pd.DataFrame) -> None:
        """What will be written against the table (its columns and types), before any computation."""
        self._check(meta, self._existing())

    def _check(self, meta: pd.DataFrame, table: Table | None) -> None:
        written = frame_schema(meta, self.where)
        partition_by = list(self.spec.partition_by or [])
        if table is None:
            missing = [c for c in partition_by if c not in written.names]
            if missing:
                raise ColumnError(
                    f"{self.where}.partition_by: column(s) {missing} are not in the output; available: {written.names}",
                    hint=f"fix `{self.where}.partition_by`",
                )
            return
        check_schema(table.schema(), written, self.where, self.spec.table)
        has = [table.schema().find_column_name(f.source_id) for f in table.spec().fields]
        if partition_by and (has != partition_by or any(str(f.transform) != "identity" for f in table.spec().fields)):
            raise SpecError(
                f"{self.where}.partition_by: table {self.spec.table!r} is partitioned by {table.spec()}, not"
                f" by {partition_by}",
                hint=f"leave `{self.where}.partition_by` out to write with the table's partitioning",
            )

    def _prepare(self, meta: pd.DataFrame, table: Table | None) -> WriteTarget:
        """What the workers write with: the table's metadata, or that of the table this commit creates."""
        if table is None:
            namespace = tuple(self.spec.table.split(".")[:-1])
            with self._errors():
                if not self.catalog.namespace_exists(namespace):
                    self.catalog.create_namespace(namespace)
                    self._created_namespace = True
                with _unsupported_types(self.where):
                    written = frame_schema(meta, self.where)
                    tx = self.catalog.create_table_transaction(self.spec.table, schema=written)
                if self.spec.partition_by:
                    with tx.update_spec() as update:
                        for column in self.spec.partition_by:
                            update.add_identity(column)
            self._create, metadata, io = tx, tx.table_metadata, tx._table.io
        else:
            metadata, io = table.metadata, table.io
        schema = metadata.schema()
        # Every file of this run goes to one folder of the table's data, so abort can delete it whole.
        folder = f"{metadata.location.rstrip('/')}/data/dpipe-{self.run}"
        self._target = WriteTarget(
            metadata=slim(metadata, **{"write.data.path": folder}),
            io_properties=dict(io.properties),
            arrow_schema=schema_to_pyarrow(schema, include_field_ids=False),
            required=tuple(f.name for f in schema.fields if f.required),
            run=self.run,
            where=self.where,
        )
        return self._target

    def write(self, frame: Any, *, compute: Callable[[Any], Any] | None = None) -> None:
        """Write ``frame`` as data files (one or more per partition, by the workers); nothing is committed."""
        if self._target is not None:
            raise StateError(f"{self.where}: write() once per sink; commit() writes what it wrote")
        table = self._existing()
        self._check(frame._meta, table)
        target = self._prepare(frame._meta, table)
        writes = [dask.delayed(write_partition)(part, target, i) for i, part in enumerate(frame.to_delayed())]
        task = dask.delayed(_gather)(writes)
        result = (compute or (lambda t: t.compute()))(task)
        # `.compute()` gives the list; dask.compute-like callables a tuple holding it.
        if isinstance(result, tuple) and len(result) == 1:
            result = result[0]
        if not isinstance(result, list):
            raise StateError(f"{self.where}: `compute` must return what it computed (got {type(result).__name__})")
        self._files = result

    def commit(self, *, metadata: Mapping[str, Any] | None = None, txn: str | None = None) -> Written:
        """Commit the written files as one snapshot (see the class docstring for ``txn``/``metadata``)."""
        if self._files is None or self._target is None:
            raise StateError(f"{self.where}: commit() before write()")
        files, where, name = self._files, self.where, self.spec.table
        properties = {}
        if txn is not None:
            properties[TXN] = str(txn)
        if metadata is not None:
            properties[MANIFEST] = json.dumps(dict(metadata), default=str)
        table = self._existing()
        if table is not None and txn is not None:
            earlier = next((s for s in table.metadata.snapshots if s.summary and s.summary.get(TXN) == str(txn)), None)
            if earlier is not None:
                self._discard()
                self.committed = True
                # Nothing is added by this call (`rows` counts what a commit adds, as for every sink);
                # the record names the earlier snapshot that holds the rows.
                return Written(self.uri, rows=0, record=self._record(earlier.snapshot_id), duplicate=True)
        tx = self._transaction(table)
        producer = tx.update_snapshot(snapshot_properties=properties)
        overwrite = self.spec.mode == "overwrite" and table is not None
        with producer.overwrite() if overwrite else producer.fast_append() as update:
            for old in current_data_files(table) if overwrite and table is not None else []:
                update.delete_data_file(old)
            for f in files:
                update.append_data_file(f)
        try:
            with self._errors():
                done = tx.commit_transaction()
        except (CommitFailedException, ValidationException) as exc:
            self._discard()  # pyiceberg guarantees these did not land
            raise StorageError(
                f"{where}: the commit to table {name!r} conflicts with concurrent commits ({short(exc)})",
                hint="pyiceberg retried it (table properties commit.retry.*); run the job again",
            ) from exc
        except TableAlreadyExistsError as exc:
            self._discard()
            raise StorageError(
                f"{where}: table {name!r} was created by another writer while the job ran",
                hint="run the job again: it appends to that table",
            ) from exc
        except BaseException:
            self._outcome_unknown = True  # it may have landed: its files must stay
            raise
        self.committed = True
        snapshot = done.metadata.snapshot_by_name("main")
        snapshot_id = snapshot.snapshot_id if snapshot else None
        datums = tuple(Datum(f.file_path, f.file_size_in_bytes, str(snapshot_id)) for f in files)
        return Written(
            self.uri, rows=sum(f.record_count for f in files), datums=datums, record=self._record(snapshot_id)
        )

    def _transaction(self, table: Table | None) -> Any:
        """A transaction on the table the files were written for; fail if it changed under them."""
        written = self._target.metadata if self._target else None
        assert written is not None
        if table is None:
            if self._create is None:
                self._discard()
                raise StorageError(f"{self.where}: table {self.spec.table!r} was dropped while the job ran")
            return self._create
        if self._create is not None or table.schema() != written.schema() or table.spec() != written.spec():
            self._discard()
            raise StorageError(
                f"{self.where}: table {self.spec.table!r} was created or changed (schema or partitioning) by"
                " another writer while the job ran",
                hint="run the job again",
            )
        return table.transaction()

    def _record(self, snapshot_id: int | None) -> dict[str, Any]:
        return {
            "kind": "iceberg",
            "catalog": self.catalog.name,
            "table": self.spec.table,
            "snapshot_id": snapshot_id,
            "mode": self.spec.mode,
        }

    def _discard(self) -> None:
        """Delete this run's data folder (best effort: nothing there is referenced by the table)."""
        if self._target is None:
            return
        folder = self._target.metadata.properties["write.data.path"]
        io = load_file_io(self._target.io_properties, self._target.metadata.location)
        with contextlib.suppress(Exception):
            if isinstance(io, PyArrowFileIO):
                scheme, netloc, path = PyArrowFileIO.parse_location(folder)
                io.fs_by_scheme(scheme, netloc).delete_dir(path)
            elif isinstance(io, FsspecFileIO):
                fs = io.get_fs(urlparse(folder).scheme or "file")
                if fs.exists(folder):
                    fs.rm(folder, recursive=True)
            else:  # another FileIO lists nothing: delete the files known (a failed write's are not)
                for f in self._files or []:
                    io.delete(f.file_path)

    def abort(self) -> None:
        """Delete the files written (and a namespace this run created); the table stays as it was."""
        if self.committed or self._outcome_unknown:
            return
        self._discard()
        if self._created_namespace:
            namespace = tuple(self.spec.table.split(".")[:-1])
            with contextlib.suppress(Exception):
                if not self.catalog.list_tables(namespace):
                    self.catalog.drop_namespace(namespace)


def current_data_files(table: Table) -> list[DataFile]:
    """Every data file of the table's current snapshot (what an overwrite removes)."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    return [
        entry.data_file
        for manifest in snapshot.manifests(table.io)
        if manifest.content == ManifestContent.DATA
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
    ]
