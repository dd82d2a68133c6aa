"""What the registry reads from a bundle before it copies it: that it is complete and that this dpipe
can load it, and then the copy itself (streamed, hashed) into a staging folder."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from dpipe.errors import BundleError
from dpipe.io.atomic import ensure_parent
from dpipe.io.fs import full_uri, resolve, storage_errors
from dpipe.spec.base import redact_url
from dpipe.versions import library_versions

#: The files every bundle has (:mod:`dpipe.bundle`); ``manifest.json`` is written last.
MANIFEST = "manifest.json"
REQUIRED = ("model.ubj", "pipeline.json", "metrics.json", MANIFEST)
#: The registry's record of a version, inside the version's folder (never copied from a source).
RECORD = "registered.json"
CHUNK = 8 * 2**20

_VERSION = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True)
class SourceBundle:
    """A complete bundle about to be registered: where it is, its files and what it says."""

    uri: str  # full URI, as given to the registry's record (redacted there)
    fs: Any
    path: str
    files: tuple[str, ...]  # paths relative to ``path``
    manifest_bytes: bytes
    manifest: dict
    metrics: dict
    pipeline: dict


def read_bundle(uri: str, storage_options: dict | None = None) -> SourceBundle:
    """Check that ``uri`` holds a complete bundle this dpipe can read, and list its files."""
    fs, path = resolve(uri, storage_options, where="bundle")
    path = path.rstrip("/")
    shown = redact_url(uri)
    with storage_errors("bundle", shown):
        if not fs.exists(f"{path}/{MANIFEST}"):
            what = "is not a complete model bundle (no manifest.json)" if fs.exists(path) else "does not exist"
            raise BundleError(f"bundle: {shown!r} {what}", hint="register the `output.uri` of a finished `dpipe run`")
        files = tuple(sorted(posixpath.relpath(f, path) for f in fs.find(path)))
        missing = [name for name in REQUIRED if name not in files]
        if missing:
            raise BundleError(
                f"bundle: {shown!r} is incomplete: {missing} missing (it has {list(files)[:10]})",
                hint="write it again with `dpipe run`; do not edit the files of a bundle",
            )
        raw = {name: fs.cat_file(f"{path}/{name}") for name in ("pipeline.json", "metrics.json", MANIFEST)}
    try:
        parsed = {name: json.loads(data) for name, data in raw.items()}
    except ValueError as exc:
        raise BundleError(f"bundle: {shown!r} is corrupt: {exc}", hint="write it again with `dpipe run`") from exc
    if not all(isinstance(v, dict) for v in parsed.values()):
        raise BundleError(f"bundle: {shown!r} is corrupt: its JSON files are not objects")
    bundle = SourceBundle(
        uri=full_uri(fs, path),
        fs=fs,
        path=path,
        files=tuple(f for f in files if f != RECORD),
        manifest_bytes=raw[MANIFEST],
        manifest=parsed[MANIFEST],
        metrics=parsed["metrics.json"],
        pipeline=parsed["pipeline.json"],
    )
    check_compatible(bundle.manifest, bundle.pipeline, shown)
    return bundle


def check_compatible(manifest: dict, pipeline: dict, uri: str) -> None:
    """A :class:`BundleError` unless this dpipe can load a bundle with this manifest and pipeline.

    A bundle's ``dpipe_version`` must not be of a newer major.minor than the installed dpipe, and
    its fitted pipeline's ``format_version`` must be the one this dpipe reads.
    """
    from dpipe.pipeline import FORMAT_VERSION  # the pipeline module imports pandas: only on registration

    written = manifest.get("dpipe_version")
    if not isinstance(written, str) or not _VERSION.match(written):
        raise BundleError(
            f"bundle: {uri!r}: manifest.json has no dpipe version (`dpipe_version`: {written!r})",
            hint="register a bundle written by `dpipe run`",
        )
    installed = library_versions(("dpipe",)).get("dpipe") or ""
    if _major_minor(written) > _major_minor(installed, default=(10**6, 0)):
        raise BundleError(
            f"bundle: {uri!r} was written by dpipe {written}; this is dpipe {installed}, which reads bundles"
            f" of dpipe {'.'.join(map(str, _major_minor(installed)))} and older",
            hint=f"upgrade dpipe to {'.'.join(written.split('.')[:2])} or newer to register or load it",
        )
    if pipeline.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"bundle: {uri!r}: its fitted pipeline has format_version {pipeline.get('format_version')!r};"
            f" this dpipe reads {FORMAT_VERSION}",
            hint="train the model again with this dpipe version",
        )


def _major_minor(version: str, default: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    match = _VERSION.match(version)
    # A source checkout without metadata ("0+unknown") reads every bundle.
    return (int(match.group(1)), int(match.group(2))) if match else default


def stage(bundle: SourceBundle, fs, staging: str) -> dict[str, dict[str, Any]]:
    """Copy every file of ``bundle`` under ``staging`` on ``fs``; returns ``{relpath: {size, sha256}}``.

    The manifest is read again at the end: a bundle replaced while it was copied (a rerun of its
    job) is refused rather than registered as a mix of two runs.
    """
    hashes = {}
    for rel in bundle.files:
        hashes[rel] = copy_file(bundle.fs, f"{bundle.path}/{rel}", fs, f"{staging}/{rel}")
    if bundle.fs.cat_file(f"{bundle.path}/{MANIFEST}") != bundle.manifest_bytes:
        raise BundleError(
            f"bundle: {redact_url(bundle.uri)!r} changed while it was being registered",
            hint="register it again once the run that is writing it has finished",
        )
    return hashes


def copy_file(src_fs, src: str, dst_fs, dst: str) -> dict[str, Any]:
    """Stream one file between two filesystems (read once, hashed on the way); its size and SHA-256."""
    digest, size = hashlib.sha256(), 0
    ensure_parent(dst_fs, dst)
    with src_fs.open(src, "rb") as f, dst_fs.open(dst, "wb") as out:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return {"size": size, "sha256": digest.hexdigest()}
