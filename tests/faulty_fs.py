"""A local filesystem whose writes fail like a full disk or a read-only mount.

``faulty:///abs/path`` is the local path. ``storage_options={"fault": "full", "quota": N}``: a
file written past N bytes raises ``ENOSPC``; ``{"fault": "read-only"}``: every write, folder,
move and delete raises ``EROFS``. Without ``fault`` it is the local disk. Tests run as root, whom
permissions do not stop, and cannot mount a small or read-only filesystem: this is how they meet
those errors. Workers in other processes get it pickled with its options.
"""

from __future__ import annotations

import errno
import io
import os

import fsspec
from fsspec.implementations.local import LocalFileSystem


class _Quota(io.RawIOBase):
    def __init__(self, inner, quota: int, path: str):
        self.inner, self.left, self.path, self.written = inner, quota, path, 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.written

    def write(self, data) -> int:
        if len(data) > self.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        self.left -= len(data)
        self.written += len(data)
        return self.inner.write(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


class FaultyFileSystem(LocalFileSystem):
    protocol = ("faulty",)

    def __init__(self, fault: str | None = None, quota: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.fault, self.quota = fault, quota

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("faulty://"):
            path = path[len("faulty://") :]
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return "faulty://" + self._strip_protocol(name)

    def _read_only(self, path) -> None:
        if self.fault == "read-only":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def _open(self, path, mode="rb", **kwargs):
        if any(c in mode for c in "wax+"):
            self._read_only(path)
            if self.fault == "full":
                return _Quota(super()._open(path, mode, **kwargs), self.quota, str(path))
        return super()._open(path, mode, **kwargs)

    def makedirs(self, path, exist_ok=False):
        self._read_only(path)
        return super().makedirs(path, exist_ok=exist_ok)

    def mkdir(self, path, create_parents=True, **kwargs):
        self._read_only(path)
        return super().mkdir(path, create_parents=create_parents, **kwargs)

    def mv(self, path1, path2, *args, **kwargs):
        self._read_only(path1)
        return super().mv(path1, path2, *args, **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        self._read_only(path2)
        if self.fault == "full" and os.path.getsize(self._strip_protocol(path1)) > self.quota:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path2))
        # Committed as to an object store (the protocol is not "file"): copies, whose folders
        # an object store would not need.
        os.makedirs(os.path.dirname(self._strip_protocol(path2)), exist_ok=True)
        return super().cp_file(path1, path2, **kwargs)

    def rm(self, path, recursive=False, maxdepth=None):
        self._read_only(path)
        return super().rm(path, recursive=recursive, maxdepth=maxdepth)


def register() -> None:
    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
