"""The one place that turns a URI into a filesystem, and storage failures into clear errors."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from dpipe.errors import StorageError

#: s3fs options the client's own AWS environment variables give when ``storage_options`` lack them:
#: ``(option, variables)``, the first variable set wins.
_S3_ENVIRONMENT = (
    ("key", ("AWS_ACCESS_KEY_ID",)),
    ("secret", ("AWS_SECRET_ACCESS_KEY",)),
    ("token", ("AWS_SESSION_TOKEN",)),
    ("endpoint_url", ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
)
_S3 = ("s3://", "s3a://", "s3n://")


def with_environment(uri: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` with what this process's AWS variables say and they do not, for S3.

    botocore reads ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``... in each process, so on a
    cluster whose workers were started without them a read that works on the client fails on the
    workers. Resolved here, on the client, the options travel with the filesystem into every task
    (they are never logged or written: manifests record the spec's own, redacted, options).
    Options given explicitly win; an ``anon`` access or a profile takes no credentials.
    """
    options = dict(storage_options or {})
    if not uri.startswith(_S3) or options.get("anon") or options.get("profile"):
        return options
    import os

    kwargs = options.get("client_kwargs") or {}
    for option, names in _S3_ENVIRONMENT:
        value = next((os.environ[n] for n in names if os.environ.get(n)), None)
        if value is None or option in options or (option == "endpoint_url" and "endpoint_url" in kwargs):
            continue
        if option in ("secret", "token") and "key" in (storage_options or {}):
            continue  # explicit key: its secret is the given one, not the environment's
        options[option] = value
    return options


def resolve(uri: str, storage_options: dict[str, Any] | None = None, *, where: str = "uri"):
    """Return ``(fs, path)`` for any fsspec URL or local path.

    Local paths become absolute, so they mean the same thing on every worker of a cluster.
    Credentials come from ``storage_options`` or the backend's usual environment variables
    (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...) of the client, which travel with the
    filesystem to the workers (:func:`with_environment`).
    """
    try:
        fs, path = url_to_fs(uri, **with_environment(uri, storage_options))
    except (ImportError, ValueError) as exc:
        raise StorageError(
            f"{where}: cannot open {uri!r}: {exc}",
            hint="use a local path or a URL such as s3://bucket/prefix/ (install the backend's package if needed)",
        ) from exc
    except TypeError as exc:
        keys = sorted(storage_options or {})
        raise StorageError(
            f"{where}: storage_options keys {keys} are not accepted for {uri!r}: {exc}",
            hint="see the filesystem's documentation (s3fs.S3FileSystem for s3://) for its options",
        ) from exc
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URI that names ``path`` unambiguously, for manifests and messages."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


@contextlib.contextmanager
def storage_errors(where: str, uri: str) -> Iterator[None]:
    """Translate filesystem exceptions raised inside the block into :class:`StorageError`."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageError(
            f"{where}: {uri!r} does not exist ({_short(exc)})",
            hint="check the path, bucket name and endpoint",
        ) from exc
    except PermissionError as exc:
        raise StorageError(
            f"{where}: access to {uri!r} was denied ({_short(exc)})",
            hint="check the credentials: storage_options key/secret or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        ) from exc
    except (ConnectionError, TimeoutError) as exc:
        raise StorageError(
            f"{where}: cannot reach the storage for {uri!r} ({_short(exc)})",
            hint="check the endpoint (storage_options.client_kwargs.endpoint_url or AWS_ENDPOINT_URL) and network",
        ) from exc
    except OSError as exc:
        if exc.errno == errno.EBUSY:  # s3fs: SlowDown / ServiceUnavailable after botocore's retries
            raise StorageError(
                f"{where}: the storage throttled the requests for {uri!r} after its retries ({_short(exc)})",
                hint="run fewer jobs against it at once, or raise `storage_options.config_kwargs.retries`",
            ) from exc
        if exc.errno == errno.ENOSPC:
            raise StorageError(
                f"{where}: no space left on the storage of {uri!r} ({_short(exc)})",
                hint="free space there or choose another location; the previous output is untouched",
            ) from exc
        if exc.errno == errno.EROFS:
            raise StorageError(
                f"{where}: the storage of {uri!r} is read-only ({_short(exc)})",
                hint="choose a writable location; nothing was written",
            ) from exc
        raise StorageError(f"{where}: cannot access {uri!r}: {_short(exc)}") from exc
    except TypeError as exc:
        # s3fs builds its client on first use, so a misspelt storage option surfaces here rather
        # than in `resolve`. The message names the key, never a value.
        if "unexpected keyword argument" not in str(exc):
            raise
        raise StorageError(
            f"{where}: storage_options are not accepted for {uri!r}: {_short(exc)}",
            hint="see the filesystem's documentation (s3fs.S3FileSystem for s3://) for its options",
        ) from exc
    except Exception as exc:
        # botocore raises its own classes for endpoint and credential failures.
        name = type(exc).__name__
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
            raise StorageError(
                f"{where}: cannot reach the storage for {uri!r} ({name})",
                hint="check the endpoint (storage_options.client_kwargs.endpoint_url or AWS_ENDPOINT_URL) and network",
            ) from exc
        if name in ("NoCredentialsError", "PartialCredentialsError", "ClientError"):
            raise StorageError(
                f"{where}: cannot access {uri!r} ({name}: {_short(exc)})",
                hint="check the credentials: storage_options key/secret or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            ) from exc
        raise


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
