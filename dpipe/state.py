"""The run state of new-data-only runs: which datums earlier runs processed, and what they learned.

A training job's state is ``state.json`` in its bundle, committed with the bundle (one atomic
commit). A features job's state is ``state.json`` in a folder beside its output (or at
``incremental.state.uri``), kept exactly once with the output by a write-ahead record: the batch
(its datums and the sink's transaction id) is saved as ``pending`` before the sink commits, and a
run that finds a pending batch asks the sink whether that transaction committed
(``has_commit``) before doing anything else, so a run killed at any point is finished by the
next one without duplicating or losing rows.

The statistics are the computed partials of the fit pass (:attr:`dpipe.pipeline.FitReport.stats`:
moments, sketches, counts per value), stored as Arrow IPC so their dtypes survive; the next run
merges its new datums' partials into them (:meth:`dpipe.ops.Op.merge`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import io
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from dpipe.errors import BundleError, StorageError
from dpipe.io.connector import Datum
from dpipe.io.fs import is_local, resolve, storage_errors
from dpipe.spec import spec_digest

STATE = "state.json"
FORMAT_VERSION = 1
#: Spec sections the fitted statistics do not depend on: changing them keeps the saved partials.
_NOT_FITTED = (
    "name",
    "train",
    "output",
    "cluster",
    "incremental",
    "lineage",
    "txn",
    "columns",
    "report",
    "monitor",
    "registry",
    "tune",
)


def new_run_id() -> str:
    return uuid.uuid4().hex


def fit_key(job: Any) -> str:
    """What the saved statistics depend on besides the rows: the spec without its ``train``,
    ``output``, ``cluster`` and ``incremental`` sections. Another key means starting over."""
    return spec_digest(job, _NOT_FITTED)


@dataclass(frozen=True)
class DatumRecord:
    """A processed datum: what it was when read, and which run first read it (and when)."""

    id: str
    size: int | None
    version: str | None
    run_id: str
    added_at: str

    @property
    def datum(self) -> Datum:
        return Datum(self.id, self.size, self.version)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunState:
    """What the committed runs of one job processed and learned.

    ``partials`` are the computed statistics by op location (decoded pandas objects),
    ``runs`` one entry per committed run (oldest first), ``pending`` a features batch whose
    commit may or may not have happened, ``pipeline`` a features job's fitted pipeline (reused
    unchanged by every later batch, so all its rows are transformed alike).
    """

    job: str
    fit_key: str
    datums: tuple[DatumRecord, ...] = ()
    partials: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    runs: tuple[Mapping[str, Any], ...] = ()
    pending: Mapping[str, Any] | None = None
    pipeline: Mapping[str, Any] | None = None

    @property
    def run_id(self) -> str | None:
        """The last committed run."""
        return self.runs[-1]["run_id"] if self.runs else None

    @property
    def seen(self) -> tuple[Datum, ...]:
        return tuple(d.datum for d in self.datums)

    def after_run(
        self,
        run_id: str,
        new: Iterable[Datum],
        *,
        partials: Mapping[str, Mapping[str, Any]] | None = None,
        info: Mapping[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> RunState:
        """This state with a committed run that read the datums ``new`` added."""
        at = (now or dt.datetime.now(dt.UTC)).isoformat()
        added = tuple(DatumRecord(d.id, d.size, d.version, run_id, at) for d in new)
        run = {"run_id": run_id, "finished_at": at, "datums": len(added), **dict(info or {})}
        return dataclasses.replace(
            self,
            datums=self.datums + added,
            partials=self.partials if partials is None else partials,
            runs=self.runs + (run,),
            pending=None,
        )

    def pending_batch(self, run_id: str, txn: str, datums: Iterable[Datum]) -> RunState:
        """This state with a batch about to commit as ``txn`` (saved before the sink commits)."""
        batch = {"run_id": run_id, "txn": txn, "datums": [d.to_dict() for d in datums]}
        return dataclasses.replace(self, pending=batch)

    def window(self, last: dt.timedelta | int, now: dt.datetime | None = None) -> list[str]:
        """The ids of the datums first processed within ``last`` (a duration) or the last ``last`` ones."""
        if isinstance(last, int):
            return [d.id for d in self.datums[-last:]]
        since = (now or dt.datetime.now(dt.UTC)) - last
        return [d.id for d in self.datums if dt.datetime.fromisoformat(d.added_at) >= since]

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "job": self.job,
            "fit_key": self.fit_key,
            "datums": [d.to_dict() for d in self.datums],
            "runs": [dict(r) for r in self.runs],
            "pending": dict(self.pending) if self.pending is not None else None,
            "pipeline": self.pipeline,
            "partials": {where: {k: encode(v) for k, v in stats.items()} for where, stats in self.partials.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> RunState:
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"{where}: run state has format_version {data.get('format_version')!r}; this dpipe reads {FORMAT_VERSION}",
                hint="run the job once without `--incremental` to start a new state",
            )
        try:
            return cls(
                job=data["job"],
                fit_key=data["fit_key"],
                datums=tuple(DatumRecord(**d) for d in data["datums"]),
                partials={w: {k: decode(v) for k, v in s.items()} for w, s in data["partials"].items()},
                runs=tuple(data["runs"]),
                pending=data.get("pending"),
                pipeline=data.get("pipeline"),
            )
        except (KeyError, TypeError, ValueError, pa.ArrowInvalid) as exc:
            raise BundleError(
                f"{where}: run state is corrupt ({type(exc).__name__}: {exc})",
                hint="run the job once without `--incremental` to start a new state",
            ) from exc


# -- computed statistics as JSON ---------------------------------------------------------------
def encode(value: Any) -> dict[str, Any]:
    """A computed statistic (pandas frame or series, or a scalar) as JSON; dtypes survive."""
    if isinstance(value, pd.Series):
        name = value.name
        frame = value.to_frame("__value__")
        return {"series": _ipc(frame), "name": name if isinstance(name, (str, int, float)) else None}
    if isinstance(value, pd.DataFrame):
        return {"frame": _ipc(value)}
    if hasattr(value, "item"):
        value = value.item()
    return {"scalar": value}


def decode(data: Mapping[str, Any]) -> Any:
    if "series" in data:
        return _frame(data["series"])["__value__"].rename(data.get("name"))
    if "frame" in data:
        return _frame(data["frame"])
    return data["scalar"]


def _ipc(frame: pd.DataFrame) -> str:
    table = pa.Table.from_pandas(frame, preserve_index=True)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue()).decode("ascii")


def _frame(text: str) -> pd.DataFrame:
    with pa.ipc.open_stream(base64.b64decode(text)) as reader:
        return reader.read_all().to_pandas()


# -- a features job's state folder --------------------------------------------------------------
class StateFolder:
    """``state.json`` in a folder, replaced whole on every save (a rename locally, one PUT on an
    object store), so a reader sees the old state or the new one."""

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None, *, where: str = "incremental.state"):
        self.uri = uri
        self.where = where
        self.fs, path = resolve(uri, dict(storage_options or {}), where=f"{where}.uri")
        self.path = path.rstrip("/")

    def load(self) -> RunState | None:
        with storage_errors(f"{self.where}.uri", self.uri):
            if not self.fs.exists(f"{self.path}/{STATE}"):
                return None
            raw = self.fs.cat_file(f"{self.path}/{STATE}")
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StorageError(
                f"{self.where}: {self.uri}/{STATE} is not JSON ({exc})",
                hint="restore it, or delete the folder to start over (the next run processes every datum)",
            ) from exc
        return RunState.from_dict(data, where=self.where)

    def save(self, state: RunState) -> None:
        data = json.dumps(state.to_dict(), default=str).encode()
        target = f"{self.path}/{STATE}"
        with storage_errors(f"{self.where}.uri", self.uri):
            self.fs.makedirs(self.path, exist_ok=True)
            if is_local(self.fs):
                staged = f"{self.path}/.{STATE}.{uuid.uuid4().hex[:8]}"
                self.fs.pipe_file(staged, data)
                self.fs.mv(staged, target)
            else:
                self.fs.pipe_file(target, data)
