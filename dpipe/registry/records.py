"""What the registry records: versions, alias moves, and who made each change."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from dpipe.registry.refs import ModelRef


def now() -> dt.datetime:
    """The time of a change (UTC)."""
    return dt.datetime.now(dt.UTC)


def who() -> dict[str, Any]:
    """Who is writing: user, host and process (recorded with every change)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


@dataclass(frozen=True)
class Version:
    """One registered version: its number, the URI of its bundle, and its ``registered.json``."""

    name: str
    number: int
    uri: str
    record: dict = field(repr=False, compare=False)
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return str(ModelRef(self.name, version=self.number))

    @property
    def metrics(self) -> dict:
        return dict(self.record.get("metrics") or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.number,
            "uri": self.uri,
            "aliases": list(self.aliases),
            **self.record,
        }


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: it pointed at ``previous`` and now points at ``version``."""

    alias: str
    seq: int
    version: int | None
    previous: int | None
    at: str
    by: dict
    reason: str
    token: str
    decision: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AliasMove:
        values: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**values)
