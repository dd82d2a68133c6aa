"""The registry on storage: versions, aliases and the journal, on any fsspec URL.

::

    <root>/registry.json                      marks the folder as a registry (format_version)
    <root>/<name>/claims/<n>.json             who claimed version number n (created exclusively)
    <root>/<name>/versions/<n>/               the bundle's files, then registered.json (last)
    <root>/<name>/aliases/<alias>/<seq>.json  every move of the alias; the highest seq is its value
    <root>/<name>/journal/<time>-<id>.json    registrations, alias moves, promotion decisions
    <root>/<name>/.staging/<id>/              copies in progress (never read; removed on failure)

Every file a reader relies on is created once and never changed (:func:`create_exclusive`), so a
reader sees the old state or the new one; see ``docs/registry.md`` for the argument.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dpipe.errors import SpecError, StorageError
from dpipe.io.atomic import children, create_exclusive, dumps, numbered, read_json
from dpipe.io.fs import full_uri, resolve, storage_errors
from dpipe.registry import publish
from dpipe.registry.bundles import CHUNK, RECORD, read_bundle, stage
from dpipe.registry.publish import ATTEMPTS, FORMAT_VERSION
from dpipe.registry.records import AliasMove, Version, now, who
from dpipe.registry.refs import LATEST, ModelRef, check_alias, check_name, parse_model_uri, parse_version
from dpipe.spec.base import redact_url

ROOT_FILE = "registry.json"


class Registry:
    """A model registry at ``uri`` (a local folder or any fsspec URL such as ``s3://bucket/registry``).

    Versions are immutable copies of bundles, numbered 1, 2, 3... per model name; aliases
    (``champion``, ``challenger``, any name) point at versions and keep the history of their moves.
    Safe under concurrent writers and crashes: see ``docs/registry.md``.

    Examples
    --------
    >>> reg = Registry("s3://ml/registry")
    >>> v = reg.register("runs/churn-2024-06", "churn", aliases=["challenger"])
    >>> reg.resolve("models:/churn@challenger") == v.uri
    True
    >>> reg.promote("churn", v.number, gate={"metric": "auc", "margin": 0.002}, scores=my_scores)
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.uri = uri
        self.storage_options = dict(storage_options or {})
        self.shown = redact_url(uri)
        self.fs, path = resolve(uri, storage_options, where="registry")
        self.root = path.rstrip("/")
        self._checked = False

    def __repr__(self) -> str:
        return f"Registry({self.shown!r})"

    # -- paths -------------------------------------------------------------------------------
    def _model(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _version_path(self, name: str, number: int) -> str:
        return f"{self._model(name)}/versions/{number}"

    def _alias_dir(self, name: str, alias: str) -> str:
        return f"{self._model(name)}/aliases/{alias}"

    def _io(self):
        return storage_errors("registry", self.shown)

    # -- the root ----------------------------------------------------------------------------
    def _check_root(self) -> None:
        """A registry's folder has ``registry.json``: a mistyped URL is an error, not an empty registry."""
        if self._checked:
            return
        with self._io():
            try:
                info = read_json(self.fs, f"{self.root}/{ROOT_FILE}")
            except FileNotFoundError:
                raise StorageError(
                    f"registry: {self.shown!r} is not a model registry (no {ROOT_FILE})",
                    hint="check --registry or DPIPE_REGISTRY; `dpipe register BUNDLE --name NAME` creates one",
                ) from None
        if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
            got = info.get("format_version") if isinstance(info, dict) else info
            raise StorageError(
                f"registry: {self.shown!r} has format_version {got!r}; this dpipe reads {FORMAT_VERSION}",
                hint="use the dpipe version that wrote the registry",
            )
        self._checked = True

    def _ensure_root(self) -> None:
        """Create ``registry.json`` if there is none; the first write, so a registry without write access
        fails here, before anything is copied."""
        if self._checked:
            return
        data = {"format": "dpipe-registry", "format_version": FORMAT_VERSION, "created_at": now().isoformat()}
        try:
            with self._io(), contextlib.suppress(FileExistsError):
                create_exclusive(self.fs, f"{self.root}/{ROOT_FILE}", dumps({**data, "created_by": who()}))
        except StorageError as exc:
            if not isinstance(exc.__cause__, NotADirectoryError):
                raise
            raise StorageError(
                f"registry: cannot write to {self.shown!r}: a file is where a folder of its path should be"
                f" ({exc.__cause__.filename})",
                hint="name a folder (or a URL such as s3://bucket/registry) for the registry",
            ) from exc.__cause__
        self._check_root()

    # -- reading -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The model names that have at least one version."""
        self._check_root()
        with self._io():
            return [
                n
                for n in children(self.fs, self.root)
                if n != ROOT_FILE and _valid(n) and numbered(self.fs, f"{self._model(n)}/versions")
            ]

    def versions(self, name: str) -> list[Version]:
        """Every complete version of ``name``, oldest first, with the aliases pointing at each."""
        numbers = self._numbers(name)
        held = self._held(name)
        with self._io():
            found = [self._read_version(name, n, held) for n in numbers]
        return [v for v in found if v is not None]

    def show(self, name: str, version: int | str = LATEST) -> Version:
        """One version: a number (``3`` or ``"3"``), an alias (``"champion"``) or ``"latest"``."""
        which = parse_version(version, f"version of {name!r}")
        if isinstance(which, str):
            return self.show(name, self._alias_target(name, which))
        numbers = self._numbers(name)
        held = self._held(name)
        with self._io():
            if which is None:
                for n in reversed(numbers):
                    if (v := self._read_version(name, n, held)) is not None:
                        return v
            elif which in numbers and (v := self._read_version(name, which, held)) is not None:
                return v
        complete = [v.number for v in self.versions(name)]
        raise SpecError(
            f"registry: model {name!r} has no version {which}; versions: {complete}",
            hint=f"`dpipe registry list {name}` lists them with their aliases",
        )

    def resolve(self, uri: str | ModelRef) -> str:
        """The bundle URI of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME`` (latest)."""
        ref = parse_model_uri(uri) if isinstance(uri, str) else uri
        which: int | str = ref.alias if ref.alias is not None else (ref.version or LATEST)
        return self.show(ref.name, which).uri

    def aliases(self, name: str) -> dict[str, int]:
        """Each alias of ``name`` and the version it points at now."""
        self._numbers(name)
        return self._held(name)

    def alias_history(self, name: str, alias: str) -> list[AliasMove]:
        """Every move of ``alias``, oldest first."""
        check_alias(alias)
        folder = self._alias_dir(name, alias)
        with self._io():
            return [self._read_move(f"{folder}/{seq:08d}.json") for seq in numbered(self.fs, folder, ".json")]

    def journal(self, name: str) -> list[dict[str, Any]]:
        """The journal of ``name``: registrations, alias moves and promotion decisions, oldest first."""
        self._numbers(name)
        folder = f"{self._model(name)}/journal"
        with self._io():
            return [read_json(self.fs, f"{folder}/{entry}") for entry in children(self.fs, folder)]

    def read(self, version: Version, relpath: str) -> bytes:
        """The bytes of one file of a registered version (``manifest.json``, ``metrics.json``...)."""
        with self._io():
            return self.fs.cat_file(f"{self._version_path(version.name, version.number)}/{relpath}")

    def verify(self, name: str, version: int | str) -> list[str]:
        """Files of a version whose size or SHA-256 differ from its record (empty: intact)."""
        import hashlib

        v = self.show(name, version)
        path = self._version_path(name, v.number)
        problems = []
        with self._io():
            for rel, expected in sorted(v.record.get("files", {}).items()):
                digest, size = hashlib.sha256(), 0
                try:
                    with self.fs.open(f"{path}/{rel}", "rb") as f:
                        while chunk := f.read(CHUNK):
                            digest.update(chunk)
                            size += len(chunk)
                except FileNotFoundError:
                    problems.append(f"{rel}: missing")
                    continue
                if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
                    problems.append(f"{rel}: content differs from the registered SHA-256")
        return problems

    def _numbers(self, name: str) -> list[int]:
        """The version numbers present under ``name`` (complete or not); an unknown name is an error."""
        check_name(name)
        self._check_root()
        with self._io():
            numbers = numbered(self.fs, f"{self._model(name)}/versions")
        if not numbers:
            raise SpecError(
                f"registry: no model {name!r} in {self.shown!r}; models: {self.names()}",
                hint="`dpipe register BUNDLE --name NAME` adds one",
            )
        return numbers

    def _read_version(self, name: str, number: int, held: Mapping[str, int]) -> Version | None:
        path = self._version_path(name, number)
        try:
            record = read_json(self.fs, f"{path}/{RECORD}")
        except FileNotFoundError:
            return None  # claimed but not (yet, or ever: its writer died) complete
        aliases = tuple(sorted(a for a, n in held.items() if n == number))
        return Version(name, number, full_uri(self.fs, path), record, aliases)

    def _held(self, name: str) -> dict[str, int]:
        folder = f"{self._model(name)}/aliases"
        held = {}
        with self._io():
            for alias in children(self.fs, folder):
                head = self._head(name, alias) if _valid(alias) else None
                if head is not None and head.version is not None:
                    held[alias] = head.version
        return held

    def head(self, name: str, alias: str) -> AliasMove | None:
        """The last move of ``alias`` (``None``: never set): what :meth:`move_alias` is conditional on."""
        check_alias(alias)
        self._numbers(name)
        with self._io():
            return self._head(name, alias)

    def _head(self, name: str, alias: str) -> AliasMove | None:
        folder = self._alias_dir(name, alias)
        seqs = numbered(self.fs, folder, ".json")
        return self._read_move(f"{folder}/{seqs[-1]:08d}.json") if seqs else None

    def _read_move(self, path: str) -> AliasMove:
        return AliasMove.from_dict(read_json(self.fs, path))

    def _alias_target(self, name: str, alias: str) -> int:
        held = self.aliases(name)
        if alias not in held:
            raise SpecError(
                f"registry: model {name!r} has no alias {alias!r}; aliases: {held or 'none'}",
                hint=f"`dpipe registry promote {name} VERSION --alias {alias} --no-gate` sets it",
            )
        return held[alias]

    # -- writing -----------------------------------------------------------------------------
    def register(
        self,
        bundle_uri: str,
        name: str,
        *,
        storage_options: dict[str, Any] | None = None,
        aliases: Sequence[str] = (),
    ) -> Version:
        """Copy the bundle at ``bundle_uri`` into a new, immutable version of ``name``.

        The bundle is checked first (complete, loadable by this dpipe), copied into a staging
        folder, then given the next free number with an exclusive create; the version becomes
        visible when its ``registered.json`` is in place. ``aliases`` then point at it.
        ``storage_options`` are the bundle's (the registry's are the constructor's).
        """
        check_name(name)
        for alias in aliases:
            check_alias(alias)
        source = read_bundle(bundle_uri, storage_options)
        self._ensure_root()
        token = uuid.uuid4().hex
        staging = f"{self._model(name)}/.staging/{token}"
        try:
            with self._io():
                files = stage(source, self.fs, staging)
                number = publish.claim_number(self.fs, f"{self._model(name)}/claims", token)
                if number is None:
                    raise self.contention(name, "a version number")
                record = publish.version_record(name, number, source, files, token)
                publish.publish(self.fs, staging, self._version_path(name, number), record)
        except BaseException:
            publish.remove(self.fs, staging)
            raise
        with self._io():
            self._write_journal(name, "register", version=number, source=record["source"], run_id=record["run_id"])
        for alias in aliases:
            self.set_alias(name, alias, number, reason="register")
        return Version(
            name, number, full_uri(self.fs, self._version_path(name, number)), record, tuple(sorted(aliases))
        )

    def set_alias(self, name: str, alias: str, version: int | str, *, reason: str = "set") -> AliasMove:
        """Point ``alias`` at ``version`` (a number, or another alias), whatever it pointed at before."""
        check_alias(alias)
        target = self.show(name, version).number
        for _ in range(ATTEMPTS):
            with self._io():
                head = self._head(name, alias)
            if head is not None and head.version == target:
                return head
            move = self.move_alias(name, alias, target, head=head, reason=reason)
            if move is not None:
                return move
        raise self.contention(name, alias)

    def move_alias(
        self,
        name: str,
        alias: str,
        version: int | None,
        *,
        head: AliasMove | None,
        reason: str,
        decision: Mapping[str, Any] | None = None,
    ) -> AliasMove | None:
        """Move ``alias`` to ``version`` only if its last move is still ``head``; ``None`` if another
        writer moved it since (read the new head and decide again)."""
        move = AliasMove(
            alias=alias,
            seq=(head.seq if head else 0) + 1,
            version=version,
            previous=head.version if head else None,
            at=now().isoformat(),
            by=who(),
            reason=reason,
            token=uuid.uuid4().hex,
            decision=dict(decision) if decision is not None else None,
        )
        path = f"{self._alias_dir(name, alias)}/{move.seq:08d}.json"
        with self._io():
            try:
                create_exclusive(self.fs, path, dumps(move.to_dict()))
            except FileExistsError:
                # Lost the race, unless what is there is our own write (a retried request).
                return move if self._read_move(path).token == move.token else None
            self._write_journal(name, "alias", alias=alias, version=version, previous=move.previous, reason=reason)
        return move

    def promote(
        self,
        name: str,
        version: int | str,
        alias: str = "champion",
        *,
        gate: Any = None,
        scores: Callable[[str], Mapping[str, float]] | None = None,
    ):
        """Move ``alias`` to ``version`` if it passes ``gate``; see :func:`dpipe.registry.gate.promote`."""
        from dpipe.registry.gate import promote

        return promote(self, name, version, alias, gate=gate, scores=scores)

    def diff(self, name: str, a: int | str, b: int | str) -> dict[str, Any]:
        """What differs between two versions; see :func:`dpipe.registry.diff.diff`."""
        from dpipe.registry.diff import diff

        return diff(self, name, a, b)

    def write_journal(self, name: str, event: str, /, **data: Any) -> dict[str, Any]:
        """Append one entry to the journal of ``name`` (its own file: concurrent writers never clash)."""
        with self._io():
            return self._write_journal(name, event, **data)

    def _write_journal(self, name: str, event: str, /, **data: Any) -> dict[str, Any]:
        at = now()
        entry = {"event": event, "at": at.isoformat(), "by": who(), **data}
        path = f"{self._model(name)}/journal/{at:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:12]}.json"
        create_exclusive(self.fs, path, dumps(entry))
        return entry

    def contention(self, name: str, what: str) -> StorageError:
        """The error of a writer that lost the race for ``what`` too many times in a row."""
        return StorageError(
            f"registry: model {name!r}: {ATTEMPTS} concurrent writers took {what} first",
            hint="retry; so many writers at once on one model is unusual",
        )


def _valid(name: str) -> bool:
    from dpipe.spec.registry import name_problem

    return name_problem(name) is None
