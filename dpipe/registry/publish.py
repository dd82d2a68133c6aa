"""Writing a new version: claim its number, then put its files in place with the record last.

The crash tests kill a process inside these functions, so they stay module functions (patchable).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from dpipe.io.atomic import create_exclusive, dumps, ensure_parent, numbered, read_json
from dpipe.io.fs import is_local
from dpipe.registry.bundles import RECORD, SourceBundle
from dpipe.registry.records import now, who
from dpipe.spec.base import redact_url
from dpipe.versions import library_versions

#: The layout this code writes and reads (``registry.json``, ``registered.json``).
FORMAT_VERSION = 1
#: How many times a writer that lost a race for a number tries the next one.
ATTEMPTS = 200


def claim_number(fs, folder: str, token: str) -> int | None:
    """The next free version number, claimed by creating ``<folder>/<n>.json`` exclusively
    (``None`` after :data:`ATTEMPTS` lost races)."""
    number = max(numbered(fs, folder, ".json"), default=0) + 1
    claim = {"token": token, "at": now().isoformat(), "by": who()}
    for _ in range(ATTEMPTS):
        path = f"{folder}/{number}.json"
        try:
            create_exclusive(fs, path, dumps(claim))
            return number
        except FileExistsError:
            if read_json(fs, path).get("token") == token:  # our own write, retried by the client
                return number
            number += 1
    return None


def version_record(name: str, number: int, source: SourceBundle, files: dict, token: str) -> dict[str, Any]:
    """``registered.json``: where the bundle came from, what it is, who registered it, its files' hashes."""
    manifest = source.manifest
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": number,
        "source": redact_url(source.uri),
        "run_id": manifest.get("run_id"),
        "job": manifest.get("job"),
        "spec_hash": manifest.get("spec_hash"),
        "content_key": manifest.get("content_key"),
        "dpipe_version": manifest.get("dpipe_version"),
        "finished_at": manifest.get("finished_at"),
        "metrics": {k: v for k, v in source.metrics.items() if k != "history"},
        "rows": manifest.get("rows"),
        "features": (manifest.get("features") or {}).get("features"),
        "registered_at": now().isoformat(),
        "registered_by": {**who(), "dpipe": library_versions(("dpipe",)).get("dpipe")},
        "token": token,
        "files": files,
    }


def publish(fs, staging: str, target: str, record: dict) -> None:
    """Put the staged files at ``target`` (``versions/<n>/``) with ``registered.json`` last."""
    if is_local(fs):
        # One rename: the whole folder, record included, appears at once.
        with open(f"{staging}/{RECORD}", "wb") as f:
            f.write(dumps(record))
            f.flush()
            os.fsync(f.fileno())
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(staging, target)
        with contextlib.suppress(OSError):  # another registration may be staging there
            os.rmdir(os.path.dirname(staging))
        return
    try:
        for rel in sorted(record["files"]):
            ensure_parent(fs, f"{target}/{rel}")
            fs.copy(f"{staging}/{rel}", f"{target}/{rel}")
    except BaseException:
        remove(fs, target)  # invisible without its record; the number stays claimed (a gap)
        raise
    create_exclusive(fs, f"{target}/{RECORD}", dumps(record))
    remove(fs, staging)


def remove(fs, path: str) -> None:
    """Delete ``path`` if it is there, best effort: cleanup must not hide the error that caused it."""
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except Exception:  # noqa: BLE001
        pass
