"""A local filesystem that records every file opened for reading, to prove what a run read.

``opencount:///abs/path`` is the local path; ``storage_options={"log": "/tmp/opens.log"}`` names a
file where each open appends the path (workers in other processes included: the filesystem is
pickled with its options).
"""

from __future__ import annotations

import fcntl

import fsspec
from fsspec.implementations.local import LocalFileSystem


class CountingFileSystem(LocalFileSystem):
    protocol = ("opencount",)

    def __init__(self, log: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("opencount://"):
            path = path[len("opencount://") :]
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return "opencount://" + self._strip_protocol(name)

    def _open(self, path, mode="rb", **kwargs):
        if self.log and "r" in mode:
            with open(self.log, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.write(self._strip_protocol(path) + "\n")
        return super()._open(path, mode, **kwargs)


def register() -> None:
    fsspec.register_implementation("opencount", CountingFileSystem, clobber=True)


def opened(log) -> list[str]:
    """The paths opened so far (one line per open)."""
    try:
        with open(log) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []
