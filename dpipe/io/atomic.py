"""The two storage operations the registry and committing outputs rest on, on any fsspec filesystem.

- :func:`create_exclusive`: write a small file only if nothing is at its path, else
  ``FileExistsError``; a reader sees the whole content or no file. On a local disk the content is
  written to a temporary file and hard-linked into place (``link(2)`` fails if the target exists);
  on S3 it is one ``PUT`` with ``If-None-Match: *`` (s3fs's ``"xb"`` mode; AWS S3 and moto honour
  it, a losing writer gets ``412 PreconditionFailed``, which s3fs raises as ``FileExistsError``).
- :func:`children`: the names in a folder, listed afresh (s3fs caches listings otherwise).
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import uuid
from typing import Any

from dpipe.errors import StorageError
from dpipe.io.fs import is_local


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False, default=str).encode()


def create_exclusive(fs, path: str, data: bytes, *, where: str = "registry") -> None:
    """Write ``data`` at ``path`` unless something is there already (then ``FileExistsError``)."""
    parent = posixpath.dirname(path)
    if is_local(fs):
        _makedirs_local(parent)
        _link_into_place(path, data)
        return
    ensure_parent(fs, path)
    try:
        with fs.open(path, "xb") as f:
            f.write(data)
    except (ValueError, NotImplementedError) as exc:
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        raise StorageError(
            f"{where}: the {protocol!r} filesystem cannot create a file only if it does not exist ({exc})",
            hint=f"put the {where.split('.')[0]} on a local or shared disk or on S3 (s3fs), whose writes can be"
            " made conditional",
        ) from exc


#: Stores without folders: nothing to create before a write (and s3fs's ``makedirs`` would create
#: a missing bucket, turning a mistyped bucket name into a new bucket).
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})


def ensure_parent(fs, path: str) -> None:
    """Create the folder ``path`` goes in, on filesystems that have folders."""
    parent = posixpath.dirname(path)
    if is_local(fs):
        _makedirs_local(parent)
        return
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & OBJECT_STORES:
        fs.makedirs(parent, exist_ok=True)


def _makedirs_local(parent: str) -> None:
    try:
        os.makedirs(parent, exist_ok=True)
    except FileExistsError as exc:
        # A file where a folder should be: not "the target exists", which callers take as a lost race.
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of the folder", parent) from exc


def _link_into_place(path: str, data: bytes) -> None:
    tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.{uuid.uuid4().hex[:12]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # A disk without hard links: an exclusive create, then the content (fsynced).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.unlink(tmp)


def read_json(fs, path: str) -> Any:
    """The JSON at ``path`` (``FileNotFoundError`` if none), read afresh: s3fs would answer from a
    listing it cached before another writer created the file."""
    fs.invalidate_cache(path)
    return json.loads(fs.cat_file(path))


def children(fs, path: str) -> list[str]:
    """The names directly in folder ``path`` (none if it does not exist), listed afresh."""
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    own = path.rstrip("/")
    # An object store may list a folder's own placeholder object among its entries.
    return sorted(posixpath.basename(e.rstrip("/")) for e in map(str, entries) if e.rstrip("/") != own)


def numbered(fs, path: str, suffix: str = "") -> list[int]:
    """The whole numbers that name the entries of folder ``path`` (``3``, or ``3.json`` with ``suffix``)."""
    found = []
    for name in children(fs, path):
        stem = name[: -len(suffix)] if suffix and name.endswith(suffix) else (None if suffix else name)
        if stem is not None and stem.isdigit():
            found.append(int(stem))
    return sorted(found)
