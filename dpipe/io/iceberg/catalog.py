"""Iceberg catalogs and tables on the client: properties, loading, and one error per missing thing.

A spec's ``catalog`` is passed to ``pyiceberg.catalog.load_catalog`` as it is, with two additions:
the embedded default (no ``type`` nor ``uri``: the SQL catalog in ``<warehouse>/catalog.db``) and
dpipe's s3fs-style ``storage_options`` mapped to pyiceberg's FileIO properties (pyiceberg's
PyArrow FileIO reads neither ``AWS_ENDPOINT_URL`` nor s3fs options). Messages never show a
property's value, only the catalog's name and its URI with any password redacted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NoSuchNamespaceError,
    NoSuchTableError,
    NotInstalledError,
    RESTError,
    ValidationException,
)
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata

from dpipe.errors import DpipeError, SpecError, StorageError
from dpipe.io.fs import with_environment
from dpipe.spec.base import REDACTED, redact_url
from dpipe.spec.iceberg import EMBEDDED_DB, IcebergSinkSpec, IcebergSourceSpec, catalog_name, is_embedded

#: dpipe's s3fs-style ``storage_options`` -> pyiceberg FileIO properties.
_S3_OPTIONS = {"key": "s3.access-key-id", "secret": "s3.secret-access-key", "token": "s3.session-token"}
_S3_CLIENT_KWARGS = {"endpoint_url": "s3.endpoint", "region_name": "s3.region"}


def catalog_properties(spec: IcebergSourceSpec | IcebergSinkSpec, where: str) -> tuple[str, dict[str, str]]:
    """The catalog's name and pyiceberg properties: the embedded default and ``storage_options`` filled in."""
    name = catalog_name(spec.catalog)
    redacted = sorted(k for k, v in spec.catalog.items() if v == REDACTED)
    if redacted:
        raise SpecError(
            f"{where}.catalog: the saved spec does not store the catalog's secrets {redacted}",
            hint="give the catalog again (its secrets through ${ENV_VARS} in the job spec)",
        )
    props = {k: _text(v) for k, v in spec.catalog.items() if k != "name"}
    if is_embedded(props):
        folder = os.path.abspath(props["warehouse"].removeprefix("file://"))
        props.update(type="sql", uri=f"sqlite:///{folder}/{EMBEDDED_DB}", warehouse=f"file://{folder}")
    options = with_environment(str(props.get("warehouse", "")), spec.storage_options)
    for key, prop in _S3_OPTIONS.items():
        if key in options:
            props.setdefault(prop, _text(options[key]))
    for key, prop in _S3_CLIENT_KWARGS.items():
        value = (options.get("client_kwargs") or {}).get(key) or (options.get(key) if key == "endpoint_url" else None)
        if value:
            props.setdefault(prop, _text(value))
    if options.get("anon"):
        props.setdefault("s3.anonymous", "true")
    if "s3.endpoint" in props and not ({"s3.region", "client.region"} & set(props)):
        # Without a region pyarrow asks AWS where the bucket is, which a custom endpoint is not.
        props["s3.region"] = "us-east-1"
    return name, props


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact_url(text)[:300]


@contextlib.contextmanager
def catalog_errors(where: str, name: str, props: Mapping[str, str]) -> Iterator[None]:
    """A catalog that cannot be reached or refuses access is a StorageError; never echo a secret."""
    at = f" at {redact_url(props['uri'])!r}" if "uri" in props else ""
    try:
        yield
    except (DpipeError, NoSuchTableError, NoSuchNamespaceError, CommitFailedException, ValidationException):
        raise
    except RESTError as exc:
        raise StorageError(
            f"{where}.catalog: catalog {name!r}{at} refused the request ({type(exc).__name__}: {short(exc)})",
            hint="check the catalog's credential/token and the permissions of its principal",
        ) from exc
    except OSError as exc:  # requests' ConnectionError and pyarrow's file errors are OSErrors
        raise StorageError(
            f"{where}.catalog: cannot reach catalog {name!r}{at} ({short(exc)})",
            hint="check `catalog.uri` (and `catalog.warehouse`), the network and the credentials",
        ) from exc
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "sqlalchemy":
            raise
        raise StorageError(
            f"{where}.catalog: cannot use the SQL catalog {name!r}{at} ({short(exc)})",
            hint="check `catalog.uri`: the database must exist and be reachable",
        ) from exc


def open_catalog(spec: IcebergSourceSpec | IcebergSinkSpec, where: str, *, create: bool = False) -> Catalog:
    """Load the spec's catalog on the client. A source never creates an embedded catalog's database."""
    name, props = catalog_properties(spec, where)
    uri = props.get("uri", "")
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        elif path != ":memory:" and not os.path.exists(path):
            raise StorageError(
                f"{where}.catalog: no catalog database at {path!r}",
                hint="check `catalog.uri` (or `catalog.warehouse`, the folder of the embedded catalog.db)",
            )
    try:
        with catalog_errors(where, name, props):
            return load_catalog(name, **props)
    except NotInstalledError as exc:
        raise SpecError(f"{where}.catalog: {short(exc)}", hint="install the pyiceberg extra named above") from exc
    except ValueError as exc:  # an unknown `type`, a missing `uri`
        raise SpecError(
            f"{where}.catalog: cannot load catalog {name!r}: {short(exc)}",
            hint="give `catalog.type` and `catalog.uri` (or `catalog.warehouse` for the embedded SQLite catalog)",
        ) from exc


def load_table(catalog: Catalog, table: str, where: str) -> Table:
    """The table, or one error naming what is missing (the namespace or the table) with what exists."""
    namespace = tuple(table.split(".")[:-1])
    with catalog_errors(where, catalog.name, catalog.properties):
        try:
            return catalog.load_table(table)
        except (NoSuchTableError, NoSuchNamespaceError) as exc:
            if not catalog.namespace_exists(namespace):
                known = sorted(".".join(n) for n in catalog.list_namespaces())
                raise SpecError(
                    f"{where}.table: namespace {'.'.join(namespace)!r} not found in catalog {catalog.name!r};"
                    f" namespaces: {known}",
                    hint=f"check `{where}.table` and `{where}.catalog`",
                ) from exc
            tables = sorted(".".join(t) for t in catalog.list_tables(namespace))
            raise SpecError(
                f"{where}.table: table {table!r} not found in catalog {catalog.name!r}; tables: {tables}",
                hint=f"check `{where}.table`",
            ) from exc


def slim(metadata: TableMetadata, **properties: str) -> TableMetadata:
    """What a worker needs of the metadata (schemas, specs, properties, location): no snapshot history."""
    update: dict[str, Any] = {"snapshots": [], "snapshot_log": [], "metadata_log": [], "refs": {}}
    if properties:
        update["properties"] = {**metadata.properties, **properties}
    return metadata.model_copy(update={**update, "current_snapshot_id": None})
