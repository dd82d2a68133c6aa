"""Opening a Delta table: delta-rs storage options, time travel, and the table features dpipe reads."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from dpipe.errors import DataError, SpecError, StorageError
from dpipe.io.fs import with_environment
from dpipe.spec.base import redact_url

SUPPORTED_READER_FEATURES = frozenset(
    {"deletionVectors", "timestampNtz", "v2Checkpoint", "vacuumProtocolCheck", "variantType"}
)
#: The partition folder name of a null partition value (Hive's, which Delta uses).
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def delta_storage_options(storage_options: Mapping[str, Any], uri: str, *, writing: bool = False) -> dict[str, str]:
    """dpipe's fsspec ``storage_options`` (s3fs's ``key``/``secret``/``client_kwargs``) as delta-rs options.

    Keys delta-rs already understands (``AWS_REGION``, ``aws_endpoint``...) pass through. A plain
    ``http://`` endpoint (a local S3 such as MinIO or moto) sets ``AWS_ALLOW_HTTP``. Writes to S3
    without a locking provider are allowed (``AWS_S3_ALLOW_UNSAFE_RENAME``): a single writer per
    table is safe; for concurrent writers set ``AWS_S3_LOCKING_PROVIDER`` (see delta-rs).
    """
    options = with_environment(uri, dict(storage_options))
    out: dict[str, str] = {}
    client = options.pop("client_kwargs", None) or {}
    mapping = {
        "key": "AWS_ACCESS_KEY_ID",
        "secret": "AWS_SECRET_ACCESS_KEY",
        "token": "AWS_SESSION_TOKEN",
        "endpoint_url": "AWS_ENDPOINT_URL",
        "region_name": "AWS_REGION",
    }
    for source in (client, options):
        for key, value in source.items():
            if key in mapping and value is not None:
                out[mapping[key]] = str(value)
            elif source is options and isinstance(value, (str, int, float, bool)):
                out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    endpoint = out.get("AWS_ENDPOINT_URL")
    if uri.startswith(("s3://", "s3a://")):
        if endpoint:
            out.setdefault("AWS_REGION", "us-east-1")
            if endpoint.startswith("http://"):
                out.setdefault("AWS_ALLOW_HTTP", "true")
        if writing and "AWS_S3_LOCKING_PROVIDER" not in out:
            out.setdefault("AWS_S3_ALLOW_UNSAFE_RENAME", "true")
    return out


def _delta_errors():
    from deltalake.exceptions import DeltaError, DeltaProtocolError, TableNotFoundError

    return DeltaError, DeltaProtocolError, TableNotFoundError


def _load_table(uri: str, storage_options: Mapping[str, Any], where: str, *, version=None, as_of=None, writing=False):
    """The ``DeltaTable`` at ``uri`` (at ``version`` / ``as_of``), or ``None`` when there is none and ``writing``."""
    from deltalake import DeltaTable

    DeltaError, _, TableNotFoundError = _delta_errors()
    shown = redact_url(uri)
    options = delta_storage_options(storage_options, uri, writing=writing)
    try:
        table = DeltaTable(uri, version=version, storage_options=options)
    except TableNotFoundError as exc:
        if writing:
            return None
        raise SpecError(
            f"{where}.uri: no Delta table at {shown!r} ({_first_line(exc)})",
            hint=f"check `{where}.uri`: it names the table's folder, the one holding `_delta_log/`",
        ) from exc
    except (DeltaError, OSError) as exc:
        text = _first_line(exc)
        if version is not None and "version" in text.lower():
            raise SpecError(
                f"{where}.version: the Delta table {shown!r} has no version {version}: {text}",
                hint="list the versions with `DeltaTable(uri).history()`; old versions may have been vacuumed",
            ) from exc
        raise StorageError(
            f"{where}.uri: cannot open the Delta table {shown!r}: {text}",
            hint=f"check `{where}.uri`, the credentials and that the storage is reachable",
        ) from exc
    if as_of is not None:
        when = as_of if as_of.tzinfo else as_of.replace(tzinfo=_dt.UTC)
        first = min((h["timestamp"] for h in table.history() if "timestamp" in h), default=None)
        if first is not None and when.timestamp() * 1000 < first:
            created = _dt.datetime.fromtimestamp(first / 1000, _dt.UTC).isoformat()
            raise SpecError(
                f"{where}.as_of: the Delta table {shown!r} did not exist yet at {when.isoformat()}"
                f" (its first commit is from {created})",
                hint=f"choose an `{where}.as_of` after {created}",
            )
        try:
            table.load_as_version(when)
        except (DeltaError, OSError, ValueError) as exc:
            raise SpecError(
                f"{where}.as_of: the Delta table {shown!r} has no version at {when.isoformat()}: {_first_line(exc)}",
                hint="choose a time after the table's first commit (see `DeltaTable(uri).history()`)",
            ) from exc
    return table


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _check_protocol(table, uri: str, where: str) -> None:
    """Refuse, by name, every table feature that could make dpipe read wrong rows."""
    protocol = table.protocol()
    features = set(protocol.reader_features or [])
    config = table.metadata().configuration or {}
    mode = config.get("delta.columnMapping.mode", "none")
    if "columnMapping" in features or mode not in ("none", None):
        raise DataError(
            f"source: the Delta table {redact_url(uri)!r} uses column mapping (table feature `columnMapping`,"
            f" mode {mode!r}): its files name columns by physical ids, which dpipe does not read yet",
            hint="read a copy without column mapping, or ask for column-mapping support",
        )
    unknown = sorted(features - SUPPORTED_READER_FEATURES)
    if unknown or (protocol.min_reader_version > 3):
        raise DataError(
            f"source: the Delta table {redact_url(uri)!r} needs reader feature(s) {unknown or protocol.min_reader_version}"
            " that dpipe does not support; reading it could give wrong rows",
            hint=f"dpipe reads tables with reader features {sorted(SUPPORTED_READER_FEATURES)}",
        )
