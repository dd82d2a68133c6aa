"""Arrow's freed memory handed back to the system on workers with a memory limit.

pyarrow allocates through its own pool (mimalloc or jemalloc), which keeps freed memory for later
allocations. Dask counts it as the worker's unmanaged memory: past ``distributed.worker.memory.pause``
(80% of the limit) the worker pauses, and since nothing it could spill would lower it, it never
resumes (a job over data near the workers' memory hung in its fit pass). The system allocator
returns freed memory (the nanny sets ``MALLOC_TRIM_THRESHOLD_`` for that), at a cost of a few per
cent in allocation-heavy reads: so only workers with a memory limit switch, and those without
keep pyarrow's default.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

NAME = "dpipe-arrow-pool"


class SystemArrowPool(WorkerPlugin):
    """A worker plugin: pyarrow's default memory pool set to the system allocator on workers with
    a memory limit (workers that join later, a nanny's replacements included, get it too)."""

    name = NAME
    #: Registered once per cluster: registering it again is a no-op.
    idempotent = True

    def setup(self, worker: Any) -> None:
        if not worker.memory_manager.memory_limit:
            return
        import pyarrow as pa

        if pa.default_memory_pool().backend_name != "system":
            pa.set_memory_pool(pa.system_memory_pool())


def install(client: Any) -> None:
    """Register :class:`SystemArrowPool` on ``client``'s cluster (registering it again is a no-op)."""
    client.register_plugin(SystemArrowPool(), name=NAME)


def trim(client: Any) -> None:
    """Hand the freed heap of every worker back to the system (glibc's ``malloc_trim``): what the
    load's reads and writes freed is still the worker's memory for Dask and the kernel, and
    external-memory training needs it (a no-op off glibc)."""
    client.run(_malloc_trim)


def _malloc_trim() -> int:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return int(ctypes.CDLL(name).malloc_trim(0)) if name else 0
    except (OSError, AttributeError):
        return 0


def backends(client: Any) -> dict[str, str]:
    """Each worker's pyarrow memory pool backend (for tests and logs)."""
    return client.run(_backend)


def _backend() -> str:
    import pyarrow as pa

    return pa.default_memory_pool().backend_name
