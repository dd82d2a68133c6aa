"""Measurement: stage timers, peak RSS of a process tree, and a filesystem that counts bytes read.

``countingfile://`` is an fsspec protocol over the local disk. Every read through it appends
``bytes<TAB>path`` to ``<counter_dir>/<pid>.tsv`` at once, so reads in worker processes are
counted too (the filesystem pickles with its ``counter_dir`` into Dask tasks and
pyarrow fragments). Pyarrow and pandas use it through ``pyarrow.fs.PyFileSystem(FSSpecHandler(fs))``.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import fsspec
import psutil
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "countingfile"


_LOGS: dict[str, int] = {}


def _log(counter_dir: str, line: str) -> None:
    """Append one line to this process's log, unbuffered: counts survive a worker that is killed
    and files that are never closed."""
    path = os.path.join(counter_dir, f"{os.getpid()}.tsv")
    fd = _LOGS.get(path)
    if fd is None:
        fd = _LOGS[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())


class _CountingFile:
    """A read-only file proxy that logs every read's size as it happens."""

    def __init__(self, f, path: str, counter_dir: str):
        self._f, self._path, self._dir = f, path, counter_dir
        _log(counter_dir, f"open\t{path}\n")

    def read(self, size=-1):
        data = self._f.read(size)
        _log(self._dir, f"{len(data)}\t{self._path}\n")
        return data

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        _log(self._dir, f"{n or 0}\t{self._path}\n")
        return n

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


class CountingFileSystem(LocalFileSystem):
    """The local filesystem, counting the bytes read from every file into ``counter_dir``."""

    protocol = (PROTOCOL,)

    def __init__(self, counter_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.counter_dir = counter_dir

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3 :]
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{self._strip_protocol(name)}"

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode=mode, **kwargs)
        return _CountingFile(f, self._strip_protocol(path), self.counter_dir) if "r" in mode else f


fsspec.register_implementation(PROTOCOL, CountingFileSystem, clobber=True)


def counting_uri(path: Path) -> str:
    return f"{PROTOCOL}://{Path(path).resolve()}"


def bytes_read(counter_dir: Path) -> dict:
    """Total bytes read and files opened, summed over every process's log."""
    total = opens = 0
    for log in Path(counter_dir).glob("*.tsv"):
        for line in log.read_text().splitlines():
            n, _ = line.split("\t", 1)
            if n == "open":
                opens += 1
            else:
                total += int(n)
    return {"bytes": total, "opens": opens}


# -- memory -----------------------------------------------------------------------------------
class MemorySampler:
    """Peak RSS, sampled every ``interval`` seconds on a background thread.

    ``roles`` maps a name to a function returning the processes of that role now (processes come
    and go: a Dask nanny restarts a worker that ran out of memory). The peak of the total is the
    largest simultaneous sum, not the sum of each process's peak.
    """

    def __init__(self, roles: dict, interval: float = 0.05):
        self.roles, self.interval = roles, interval
        self.peak = {name: 0 for name in roles}
        self.peak_process = {name: 0 for name in roles}
        self.peak_total = 0
        self.baseline_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> dict:
        out = {}
        for name, procs in self.roles.items():
            rss = 0
            for p in procs():
                try:
                    one = p.memory_info().rss
                except psutil.Error:
                    continue
                rss += one
                self.peak_process[name] = max(self.peak_process[name], one)
            out[name] = rss
        return out

    def _loop(self):
        while not self._stop.is_set():
            sample = self._sample()
            for k, v in sample.items():
                self.peak[k] = max(self.peak[k], v)
            self.peak_total = max(self.peak_total, sum(sample.values()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self.baseline_total = sum(self._sample().values())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        mib = 1 << 20
        out = {f"peak_{k}_mib": round(v / mib, 1) for k, v in self.peak.items()}
        out.update({f"peak_one_{k}_process_mib": round(v / mib, 1) for k, v in self.peak_process.items()})
        out["peak_total_mib"] = round(self.peak_total / mib, 1)
        out["baseline_total_mib"] = round(self.baseline_total / mib, 1)
        return out


def dask_roles() -> dict:
    """This process (client and, for a LocalCluster, the scheduler) and its child processes (nannies, workers)."""
    me = psutil.Process()

    def children():
        return me.children(recursive=True)

    return {"client_scheduler": lambda: [me], "workers": children}


def process_roles(pid: int) -> dict:
    proc = psutil.Process(pid)

    def tree():
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return []

    return {"process": tree}


# -- time -------------------------------------------------------------------------------------
class Stages:
    """Wall-clock seconds per stage, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
