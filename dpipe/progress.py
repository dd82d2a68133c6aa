"""Progress of a run: log lines on the ``dpipe`` logger, stage timings, Dask progress bars.

dpipe never prints: every progress line is a record of the ``dpipe`` logger (``logging``), which
the ``dpipe`` command sends to stderr as ``[dpipe] message``. A program that uses dpipe as a
library routes or silences them like any other logger's::

    logging.getLogger("dpipe").setLevel(logging.WARNING)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

logger = logging.getLogger("dpipe")
FORMAT = "[dpipe] %(message)s"


class Reporter:
    """Stage lines and timings of one run, and a Dask progress bar on a terminal.

    Parameters
    ----------
    progress
        Show Dask's progress bar while computing, when ``stream`` is a terminal.
    stream
        Where the progress bar is drawn (default: stderr).
    """

    def __init__(self, *, progress: bool = True, stream: IO[str] | None = None):
        self.progress = progress
        self.stream = stream or sys.stderr
        self.timings: dict[str, float] = {}

    def log(self, message: str) -> None:
        logger.info(message)

    def warn(self, message: str) -> None:
        logger.warning(message)

    @contextmanager
    def stage(self, name: str, what: str = "") -> Iterator[None]:
        """Log the start and end of a stage and add its seconds to :attr:`timings`."""
        self.log(f"{name}: {what}..." if what else f"{name}...")
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.timings[name] = round(self.timings.get(name, 0.0) + elapsed, 4)
        self.log(f"{name}: done in {elapsed:.1f}s")

    def compute(self, client: Any) -> Callable[..., tuple[Any, ...]]:
        """A ``dask.compute`` replacement that runs on ``client``, with a progress bar on a terminal."""

        def compute(*collections: Any) -> tuple[Any, ...]:
            # The collections flattened out of their dicts and lists: distributed cannot compute a
            # nested dict holding collections backed by futures (placed rows).
            leaves: list[Any] = []
            shape = _flatten(collections, leaves)
            futures = client.compute(leaves)
            if self.progress and getattr(self.stream, "isatty", lambda: False)():
                from distributed import progress

                progress(futures, notebook=False)
            return tuple(_rebuild(shape, iter(client.gather(futures))))

        return compute


def _flatten(value: Any, leaves: list[Any]) -> Any:
    """``value`` with every dask collection replaced by a marker and appended to ``leaves``."""
    from dask import is_dask_collection

    if is_dask_collection(value):
        leaves.append(value)
        return _LEAF
    if isinstance(value, dict):
        return {k: _flatten(v, leaves) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_flatten(v, leaves) for v in value)
    return value


def _rebuild(shape: Any, values: Iterator[Any]) -> Any:
    if shape is _LEAF:
        return next(values)
    if isinstance(shape, dict):
        return {k: _rebuild(v, values) for k, v in shape.items()}
    if isinstance(shape, list | tuple):
        return type(shape)(_rebuild(v, values) for v in shape)
    return shape


_LEAF = object()


def configure_logging(*, level: int = logging.INFO, stream: IO[str] | None = None) -> logging.Handler:
    """Send the ``dpipe`` logger's records to ``stream`` (stderr) as ``[dpipe] message``.

    What the ``dpipe`` command calls; returns the handler so a caller can remove it again.
    """
    for old in [h for h in logger.handlers if getattr(h, "dpipe_cli", False)]:
        logger.removeHandler(old)  # called again in one process (tests, notebooks): one handler
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.dpipe_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
