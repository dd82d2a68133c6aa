"""The files a URI selects, with what the store's listing says about each (size, ETag or mtime).

One listing serves discovery, lineage and datums: the details come with the listing itself (one
``LIST`` per 1,000 objects on S3), never from one request per file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dpipe.io.connector import Datum
from dpipe.io.fs import full_uri

GLOB_CHARS = frozenset("*?[")
#: Names that folder discovery skips, as ``pyarrow.dataset`` does: hidden files, ``_SUCCESS``,
#: ``_temporary/``, dpipe's ``.x.dpipe-staging-*`` folders.
IGNORED_PREFIXES = (".", "_")
#: Listing keys that version a file, best first, and the name lineage records them under.
_VERSION_KEYS = (
    ("ETag", "etag"),
    ("etag", "etag"),
    ("generation", "generation"),
    ("mtime", "mtime"),
    ("LastModified", "modified"),
    ("last_modified", "modified"),
    ("updated", "modified"),
)


@dataclass(frozen=True)
class Listing:
    """Files selected by one URI: ``paths`` (sorted filesystem paths) and their datums.

    ``base`` is the folder that relative paths (and so Hive ``key=value`` folders) start from,
    ``None`` for a single file.
    """

    base: str | None
    paths: tuple[str, ...]
    datums_by_path: Mapping[str, Datum] = field(repr=False)
    #: Which listing key versions the datums: ``etag`` (object stores), ``mtime`` (local disks).
    versioned_by: str | None = None

    def datums(self, paths: Iterable[str] | None = None) -> tuple[Datum, ...]:
        """The datums of ``paths`` (a subset, e.g. after partition pruning), all by default."""
        return tuple(self.datums_by_path[p] for p in (self.paths if paths is None else paths))

    def record(self) -> dict[str, Any]:
        """The connector's part of the lineage of file sources."""
        return {"kind": "files", "versioned_by": self.versioned_by}


def list_files(fs: Any, path: str, *, suffixes: tuple[str, ...] | None = None) -> Listing:
    """List a file, a folder (recursively) or a glob at ``path`` on ``fs``.

    A folder skips names starting with ``.`` or ``_`` at any depth (an empty folder gives an
    empty listing); ``suffixes`` keep only files ending so (case-insensitive). Raises
    ``FileNotFoundError`` for a missing path or a glob that matches no file (callers translate it
    with :func:`dpipe.io.fs.storage_errors`).

    Examples
    --------
    >>> fs, path = resolve("data/demo/events")
    >>> listing = list_files(fs, path)
    >>> listing.datums()[0].version  # the file's mtime on a local disk
    """
    if GLOB_CHARS & set(path):
        found = fs.glob(path, detail=True)
        base: str | None = path[: min(path.index(c) for c in GLOB_CHARS & set(path))].rsplit("/", 1)[0]
    else:
        try:
            info = fs.info(path)
        except FileNotFoundError as exc:
            # The path alone, as before listings kept details: the OS's "[Errno 2] ..." adds nothing.
            raise FileNotFoundError(path) from exc
        if info.get("type") == "directory":
            base = path.rstrip("/")
            found = {p: i for p, i in fs.find(base, detail=True).items() if not _ignored(p[len(base) + 1 :])}
        else:
            base, found = None, {info["name"]: info}
    infos = {p: i for p, i in found.items() if i.get("type", "file") == "file" and _kept(p, suffixes)}
    if not infos and GLOB_CHARS & set(path):
        raise FileNotFoundError(f"no file matches {path}")
    paths = tuple(sorted(infos))
    versions = {p: _version(infos[p]) for p in paths}
    datums = {p: Datum(full_uri(fs, p), _size(infos[p]), versions[p][1]) for p in paths}
    return Listing(base, paths, datums, versioned_by=versions[paths[0]][0] if paths else None)


def _ignored(relative: str) -> bool:
    return any(part.startswith(IGNORED_PREFIXES) for part in relative.split("/"))


def _kept(path: str, suffixes: tuple[str, ...] | None) -> bool:
    return suffixes is None or path.lower().endswith(tuple(s.lower() for s in suffixes))


def _size(info: Mapping[str, Any]) -> int | None:
    size = info.get("size")
    return int(size) if size is not None else None


def _version(info: Mapping[str, Any]) -> tuple[str | None, str | None]:
    for key, name in _VERSION_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)) and name == "mtime":
            value = dt.datetime.fromtimestamp(value, dt.UTC).isoformat()
        elif isinstance(value, dt.datetime):
            value = value.isoformat()
        return name, str(value).strip('"')
    return None, None
