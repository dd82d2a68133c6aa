"""OpenLineage run events (START, COMPLETE, FAIL) for dpipe runs, through ``openlineage-python``.

A run is wrapped in :func:`run_events`; it emits START when the run knows what it reads, COMPLETE
with exactly what it read and wrote, and FAIL (with the error message) when the block raises.
Datasets are built from dpipe's own lineage: an :class:`~dpipe.io.OpenedSource` or its
``source_lineage`` entry in a manifest, a :class:`~dpipe.io.Written` or its ``lineage()``, or a sink
spec (for START, before anything is written). They are named as OpenLineage names datasets, by
where they are stored:

============  ======================================  ===============================
kind          namespace                               name
============  ======================================  ===============================
local files   ``file``                                the absolute path
object store  ``s3://bucket`` (``gs://``, ...)        the key
Delta         the table folder's, as for files
PostgreSQL    ``postgres://host:port``                ``database.schema.table``
DuckDB        ``duckdb://<database file>``            ``schema.table``
Iceberg       ``iceberg://<catalog name>``            ``namespace.table``
============  ======================================  ===============================

with a schema facet when the columns are known and a version facet (a Delta version, an Iceberg
snapshot, a SQL watermark or commit id, a hash of the files' versions). Nothing secret is sent: names
carry no user info, messages pass through :func:`~dpipe.spec.base.redact_url`.

Sending never fails a run: a transport that cannot deliver (an HTTP server that is down) logs
one warning on the ``dpipe`` logger and the run's later events are dropped.

Examples
--------
>>> with run_events(job.lineage, job=job.name, run_id=run_id, kind="train") as events:
...     events.start([opened_source], [job.output])
...     ...  # the run
...     events.complete([opened_source], [written], facets={"dpipe": {"spec_hash": spec_hash}})
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dpipe.spec.base import redact_url
from dpipe.spec.lineage import LineageSpec, OpenLineageSpec
from dpipe.versions import library_versions

log = logging.getLogger(__name__)

__all__ = ["RunEvents", "dataset_name", "input_dataset", "output_dataset", "run_events"]

#: The job facet's ``integration``, and the producer of every event.
INTEGRATION = "DPIPE"
#: A URL's scheme and everything up to the next blank: what :func:`scrub` redacts in free text.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
#: HTTP retries: a server that is down costs at most two short attempts per run, not the client's five.
_RETRY = {"total": 1, "connect": 1, "read": 1, "backoff_factor": 0.1}


def scrub(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return redact_url(_URL.sub(lambda m: redact_url(m.group(0)), text))


# -- datasets ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    """One dataset, whatever dpipe object or dict described it."""

    uri: str
    kind: str | None
    record: Mapping[str, Any] = field(default_factory=dict)
    schema: Any = None


def _entry(item: Any) -> _Entry:
    """An :class:`_Entry` of an OpenedSource/Written, a lineage dict, a sink spec, or a URI."""
    if isinstance(item, str):
        return _Entry(item, None)
    lineage = getattr(item, "lineage", None)
    if callable(lineage):  # an OpenedSource or a Written
        record = dict(lineage())
        uri = str(getattr(item, "uri", None) or record.get("uri") or "")
        kind = record.get("kind") or getattr(item, "format", None)
        return _Entry(uri, kind, record, getattr(item, "schema", None))
    if hasattr(item, "model_dump"):  # a sink or source spec
        item = item.model_dump(mode="json")
    if not isinstance(item, Mapping):
        raise TypeError(f"openlineage: cannot make a dataset of {type(item).__name__}")
    nested = item.get("lineage")  # a manifest's source_lineage entry nests the connector's record
    record = {**{k: v for k, v in item.items() if k != "lineage"}, **(nested if isinstance(nested, Mapping) else {})}
    where = item.get("uri") or record.get("table_uri") or record.get("uri") or _common_folder(record)
    return _Entry(
        str(where or ""), record.get("kind") or item.get("format"), record, item.get("schema", item.get("columns"))
    )


def _common_folder(record: Mapping[str, Any]) -> str | None:
    """The folder of a file source's datums (an ``OpenedSource.lineage()`` has no URI)."""
    ids = [d["id"] for d in record.get("datums") or [] if isinstance(d, Mapping) and d.get("id")]
    return os.path.commonpath(ids) if ids and all("://" not in i for i in ids) else (ids[0] if ids else None)


def _storage(uri: str) -> tuple[str, str]:
    """(namespace, name) of a path or URL: ``file`` and the absolute path, or ``scheme://bucket`` and the key."""
    scheme, netloc, path = "file", "", uri.removeprefix("file://")
    if "://" in path:
        scheme, rest = path.split("://", 1)
        netloc, _, path = rest.partition("/")
        netloc = netloc.rpartition("@")[2]  # user info (a password) is never part of a name
    glob = next((i for i, ch in enumerate(path) if ch in "*?["), None)
    if glob is not None:  # a glob names the folder it lists
        path = path[:glob].rsplit("/", 1)[0] if "/" in path[:glob] else ""
    if scheme == "file":
        return "file", os.path.abspath(os.path.expanduser(path or ".")).rstrip("/") or "/"
    return f"{scheme}://{netloc}", path.rstrip("/") or "/"


def _postgres(e: _Entry) -> tuple[str, str]:
    parts = urlsplit(str(e.record.get("uri") or e.uri))
    host, port = parts.hostname or "localhost", parts.port or 5432
    database = parts.path.strip("/").split("/")[0] or "postgres"
    table = e.record.get("table")
    if not table:
        query = str(e.record.get("query") or "")
        table = "query_" + hashlib.sha256(query.encode()).hexdigest()[:12]
    schema, _, name = str(table).rpartition(".")
    return f"postgres://{host}:{port}", f"{database}.{schema or 'public'}.{name}"


def _duckdb(e: _Entry) -> tuple[str, str]:
    table = str(e.record.get("table") or "")
    path = str(e.record.get("uri") or e.uri)
    if path.startswith("duckdb://"):
        path = path.removeprefix("duckdb://")
        if table and path.endswith("/" + table):  # a sink's uri names its table after the file
            path = path[: -len(table) - 1]
    path = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    if not table:
        query = str(e.record.get("query") or "")
        table = "query_" + hashlib.sha256(query.encode()).hexdigest()[:12]
    schema, _, name = table.rpartition(".")
    return f"duckdb://{path}", f"{schema or 'main'}.{name}"


def _iceberg(e: _Entry) -> tuple[str, str]:
    if e.record.get("location"):
        return _storage(str(e.record["location"]))
    table, catalog = e.record.get("table"), e.record.get("catalog")
    if isinstance(catalog, Mapping):  # a spec's catalog properties
        catalog = catalog.get("name")
    if not table and e.uri.startswith("iceberg://"):
        catalog, _, table = e.uri.removeprefix("iceberg://").partition("/")
    return f"iceberg://{catalog or 'default'}", str(table or e.uri)


def _delta(e: _Entry) -> tuple[str, str]:
    return _storage(str(e.record.get("table_uri") or e.uri))


#: How each kind of dataset is named (others: by their storage path).
NAMERS: dict[str, Callable[[_Entry], tuple[str, str]]] = {
    "postgresql": _postgres,
    "duckdb": _duckdb,
    "iceberg": _iceberg,
    "delta": _delta,
}


def dataset_name(item: Any) -> tuple[str, str]:
    """The OpenLineage ``(namespace, name)`` of a dataset (see the module docstring).

    Examples
    --------
    >>> dataset_name({"uri": "s3://lake/events/2024", "format": "parquet"})
    ('s3://lake', 'events/2024')
    >>> dataset_name({"format": "postgresql", "uri": "postgresql://me:pw@db:5433/shop", "table": "orders"})
    ('postgres://db:5433', 'shop.public.orders')
    """
    e = _entry(item)
    return NAMERS.get(str(e.kind), lambda x: _storage(x.uri))(e)


def _version(e: _Entry) -> str | None:
    for key in ("version", "snapshot_id", "watermark", "txn"):
        if e.record.get(key) is not None:
            return str(e.record[key])
    datums = [d for d in e.record.get("datums") or [] if isinstance(d, Mapping)]
    if datums:  # a folder's version: its files and their versions
        text = json.dumps(sorted((str(d.get("id")), str(d.get("version"))) for d in datums))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
    return None


def _fields(schema: Any) -> list[tuple[str, str | None]]:
    """(name, type) of a pyarrow schema, an empty pandas frame, a ``{name: type}`` mapping or a list of names."""
    if schema is None:
        return []
    if isinstance(schema, Mapping):
        return [(str(k), None if v is None else str(v)) for k, v in schema.items()]
    dtypes = getattr(schema, "dtypes", None)
    if dtypes is not None and hasattr(dtypes, "items"):
        return [(str(k), str(v)) for k, v in dtypes.items()]
    if hasattr(schema, "names") and hasattr(schema, "field"):  # pyarrow.Schema
        return [(f.name, str(f.type)) for f in schema]
    out: list[tuple[str, str | None]] = []
    for f in schema:
        out.append((str(f["name"]), f.get("type")) if isinstance(f, Mapping) else (str(f), None))
    return out


def _dataset_facets(e: _Entry) -> dict[str, Any]:
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
    from openlineage.client.generated.schema_dataset import SchemaDatasetFacet, SchemaDatasetFacetFields

    facets: dict[str, Any] = {}
    fields = _fields(e.schema)
    if fields:
        facets["schema"] = SchemaDatasetFacet(
            fields=[SchemaDatasetFacetFields(name=n, type=t, ordinal_position=i + 1) for i, (n, t) in enumerate(fields)]
        )
    version = _version(e)
    if version is not None:
        facets["version"] = DatasetVersionDatasetFacet(datasetVersion=version)
    return facets


def _statistics(e: _Entry) -> dict[str, Any]:
    datums = [d for d in e.record.get("datums") or [] if isinstance(d, Mapping)]
    sizes = [d.get("size") for d in datums]
    size = sum(int(s) for s in sizes if s is not None) if sizes and None not in sizes else None
    rows = e.record.get("rows") if isinstance(e.record.get("rows"), int) else None
    return {"rowCount": rows, "size": size, "fileCount": len(datums) or None}


def input_dataset(item: Any) -> Any:
    """An OpenLineage ``InputDataset`` of what a run read (see :func:`dataset_name` for ``item``)."""
    from openlineage.client.event_v2 import InputDataset
    from openlineage.client.generated.input_statistics_input_dataset import InputStatisticsInputDatasetFacet

    namespace, name, facets, stats = _dataset_parts(item)
    extra: dict[str, Any] = {"inputStatistics": InputStatisticsInputDatasetFacet(**stats)} if stats else {}
    return InputDataset(namespace=namespace, name=name, facets=facets, inputFacets=extra)


def output_dataset(item: Any) -> Any:
    """An OpenLineage ``OutputDataset`` of what a run wrote (a Written, its lineage, or a sink spec)."""
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.generated.output_statistics_output_dataset import OutputStatisticsOutputDatasetFacet

    namespace, name, facets, stats = _dataset_parts(item)
    extra: dict[str, Any] = {"outputStatistics": OutputStatisticsOutputDatasetFacet(**stats)} if stats else {}
    return OutputDataset(namespace=namespace, name=name, facets=facets, outputFacets=extra)


def _dataset_parts(item: Any) -> tuple[str, str, dict[str, Any], dict[str, Any] | None]:
    """A dataset's namespace, name, facets and statistics (``None`` when nothing is known)."""
    e = _entry(item)
    namespace, name = dataset_name(item)
    stats = _statistics(e)
    return namespace, name, _dataset_facets(e), stats if any(stats.values()) else None


# -- transports -------------------------------------------------------------------------------
def _transport(spec: OpenLineageSpec, job: str, run_id: str) -> tuple[Any, str]:
    """The openlineage-python transport of a spec, and where it sends (for messages)."""
    kind = spec.transport
    if kind == "file":
        from openlineage.client.transport.file import FileConfig, FileTransport

        folder = spec.folder()
        if "://" not in folder:
            os.makedirs(folder, exist_ok=True)
        # One file per event: <folder>/<job>-<run_id>-<time>.json
        path = f"{folder.rstrip('/')}/{job}-{run_id}"
        return FileTransport(FileConfig(log_file_path=path, append=False)), folder
    if kind == "http":
        from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport, TokenProvider

        assert spec.url is not None  # the spec requires it
        auth = ApiKeyTokenProvider({"api_key": spec.api_key}) if spec.api_key else TokenProvider({})
        config = HttpConfig(url=spec.url, endpoint=spec.endpoint, timeout=spec.timeout, auth=auth, retry=dict(_RETRY))
        return HttpTransport(config), scrub(f"{spec.url.rstrip('/')}/{spec.endpoint.lstrip('/')}")
    if kind == "console":
        from openlineage.client.transport.console import ConsoleConfig, ConsoleTransport

        return ConsoleTransport(ConsoleConfig()), "the openlineage logger"
    raise ValueError(f"openlineage: unknown transport {kind!r}")


def _facet(value: Any, base: type) -> Any:
    """A facet object as it is, or a JSON-able mapping as a facet of ``base`` with those properties."""
    if not isinstance(value, Mapping):
        return value
    return base().with_additional_properties(**json.loads(json.dumps(dict(value), default=str)))


# -- events -----------------------------------------------------------------------------------
class RunEvents:
    """The events of one run; made by :func:`run_events`, which sends FAIL or ABORT for you.

    ``inputs`` and ``outputs`` are lists of what :func:`input_dataset` / :func:`output_dataset`
    take; :meth:`complete` reuses those given to :meth:`start` when it gets none. ``facets`` are
    run facets: OpenLineage facet objects, or JSON-able dicts (sent as custom facets, e.g.
    ``{"dpipe": {"spec_hash": ...}}``). ``sent`` lists the event types delivered.
    """

    def __init__(
        self, client: Any, *, namespace: str, job: str, run_id: str, kind: str, where: str = "", producer: str = ""
    ):
        self.client = client
        self.namespace, self.job, self.run_id, self.kind = namespace, job, run_id, kind
        self.where = where
        self.producer = producer
        self.sent: list[str] = []
        self._inputs: list[Any] = []
        self._outputs: list[Any] = []
        self._broken = client is None
        self._finished = False

    def start(self, inputs: Iterable[Any] = (), outputs: Iterable[Any] = (), facets: Mapping[str, Any] | None = None):
        """Send START: the run began, reading ``inputs`` into ``outputs``."""
        self._inputs, self._outputs = list(inputs), list(outputs)
        self._send("START", self._inputs, self._outputs, facets)

    def complete(
        self,
        inputs: Iterable[Any] | None = None,
        outputs: Iterable[Any] | None = None,
        facets: Mapping[str, Any] | None = None,
    ):
        """Send COMPLETE with exactly what was read and written (default: what :meth:`start` got)."""
        self._finished = True
        ins = self._inputs if inputs is None else list(inputs)
        outs = self._outputs if outputs is None else list(outputs)
        self._send("COMPLETE", ins, outs, facets)

    def fail(self, error: BaseException) -> None:
        """Send FAIL with the error's message (and traceback) in an ``errorMessage`` facet."""
        from openlineage.client.generated.error_message_run import ErrorMessageRunFacet

        if self._finished:
            return  # COMPLETE was sent: the output is committed, whatever failed after it
        self._finished = True
        message = scrub(str(error).strip() or type(error).__name__)
        trace = scrub("".join(traceback.format_exception(type(error), error, error.__traceback__)))
        facet = ErrorMessageRunFacet(message=message, programmingLanguage="PYTHON", stackTrace=trace)
        self._send("FAIL", self._inputs, self._outputs, {"errorMessage": facet})

    def abort(self) -> None:
        """Send ABORT (the run was interrupted: Ctrl-C, SIGTERM)."""
        if self._finished:
            return
        self._finished = True
        self._send("ABORT", self._inputs, self._outputs, None)

    def _event(self, state: str, inputs: list[Any], outputs: list[Any], facets: Mapping[str, Any] | None) -> Any:
        from openlineage.client import __version__ as ol_version
        from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
        from openlineage.client.generated.base import RunFacet
        from openlineage.client.generated.job_type_job import JobTypeJobFacet
        from openlineage.client.generated.processing_engine_run import ProcessingEngineRunFacet

        run_facets: dict[str, Any] = {
            "processing_engine": ProcessingEngineRunFacet(
                version=library_versions(("dpipe",)).get("dpipe", "unknown"),
                name="dpipe",
                openlineageAdapterVersion=ol_version,
            )
        }
        run_facets.update({name: _facet(value, RunFacet) for name, value in (facets or {}).items()})
        job_facets: dict[str, Any] = {
            "jobType": JobTypeJobFacet(processingType="BATCH", integration=INTEGRATION, jobType=self.kind.upper())
        }
        return RunEvent(
            eventType=getattr(RunState, state),
            eventTime=dt.datetime.now(dt.UTC).isoformat(),
            run=Run(runId=str(uuid.UUID(self.run_id)), facets=run_facets),
            job=Job(namespace=self.namespace, name=self.job, facets=job_facets),
            inputs=[input_dataset(i) for i in inputs],
            outputs=[output_dataset(o) for o in outputs],
            producer=self.producer,
        )

    def _send(self, state: str, inputs: list[Any], outputs: list[Any], facets: Mapping[str, Any] | None) -> None:
        if self._broken:
            return
        try:
            self.client.emit(self._event(state, inputs, outputs, facets))
        except Exception as exc:  # noqa: BLE001 - lineage must never fail the run it describes
            self._broken = True
            text = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)[:300]
            log.warning(
                "openlineage: cannot send the %s event of run %s to %s (%s); the run goes on without its"
                " lineage events",
                state,
                self.run_id,
                self.where,
                text,
            )
            return
        self.sent.append(state)

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()


@contextlib.contextmanager
def run_events(spec: LineageSpec | None, *, job: str, run_id: str, kind: str) -> Iterator[RunEvents]:
    """The OpenLineage events of one run: FAIL (or ABORT) is sent when the block raises.

    Parameters
    ----------
    spec
        The job's ``lineage:`` section; ``None`` is the default (the ``file`` transport in
        ``$DPIPE_HOME/openlineage``).
    job
        The job's name (the OpenLineage job, in ``spec.openlineage.namespace``).
    run_id
        The run's id, a UUID (``uuid.uuid4().hex``): the one its manifest records.
    kind
        ``train``, ``features`` or ``predict`` (the job type facet's ``jobType``).

    The exception is re-raised after FAIL is sent; a transport that fails only logs a warning.
    """
    ol = (spec or LineageSpec()).openlineage
    client, where = None, ""
    if ol.transport != "none":
        try:
            from openlineage.client import OpenLineageClient

            transport, where = _transport(ol, job, run_id)
            client = OpenLineageClient(transport=transport)
        except Exception as exc:  # noqa: BLE001 - a lineage folder that cannot be made must not stop the run
            log.warning(
                "openlineage: cannot set up the %s transport (%s); the run goes on without its lineage events",
                ol.transport,
                scrub(str(exc))[:300],
            )
    version = library_versions(("dpipe",)).get("dpipe", "unknown")
    events = RunEvents(
        client, namespace=ol.namespace, job=job, run_id=run_id, kind=kind, where=where, producer=f"urn:dpipe:{version}"
    )
    try:
        yield events
    except Exception as exc:
        events.fail(exc)
        raise
    except BaseException:
        events.abort()
        raise
    finally:
        events.close()
