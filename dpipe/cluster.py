"""Getting a Dask client: one passed in, an existing scheduler, or an embedded LocalCluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from dpipe.errors import ClusterError
from dpipe.spec import ClusterSpec


def _import_dpipe() -> str:
    import dpipe

    return dpipe.__version__


@contextlib.contextmanager
def connect(spec: ClusterSpec | None = None, *, client=None, address: str | None = None, log=None) -> Iterator:
    """Yield a ``distributed.Client``.

    The client is made current (``Client.as_current``) inside the block, as ``xgboost.dask``
    requires. Precedence: ``client`` (used as is, not closed), then ``address``, ``spec.address`` or
    ``DASK_SCHEDULER_ADDRESS`` (an existing cluster: dpipe must be installed on its workers),
    else an embedded ``LocalCluster`` shaped by ``spec`` and closed on exit.
    """
    from distributed import Client, LocalCluster

    spec = spec or ClusterSpec()
    log = log or (lambda msg: None)
    if client is not None:
        with client.as_current():
            yield client
        return
    address = address or spec.address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            remote = Client(address, timeout=spec.timeout, set_as_default=False)
        except ValueError as exc:
            raise ClusterError(
                f"cluster.address: {address!r} is not a valid scheduler address ({exc})",
                hint="write it as tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786",
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cluster.address: cannot reach the Dask scheduler at {address!r} ({type(exc).__name__})",
                hint="start it with `dask scheduler` and `dask worker ADDRESS`, or drop --scheduler to run locally",
            ) from exc
        try:
            _check_workers(remote, address)
            log(f"connected to {address} ({_describe(remote)})" + _dashboard(remote))
            with remote.as_current():
                yield remote
        finally:
            remote.close()
        return
    kwargs = {
        k: getattr(spec, k) for k in ("n_workers", "threads_per_worker", "memory_limit") if getattr(spec, k) is not None
    }
    try:
        cluster = LocalCluster(processes=spec.processes, dashboard_address=spec.dashboard_address, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ClusterError(f"cluster: cannot start a LocalCluster: {exc}", hint="check the `cluster` section") from exc
    with cluster, Client(cluster, set_as_default=False) as local:
        log(f"started LocalCluster ({_describe(local)})" + _dashboard(local))
        with local.as_current():
            yield local


#: The Dask config key the run sets while it plans: the threads of the cluster it will run on, which
#: sources that can split their reads for free (SQL ranges) use as their default partition count.
THREADS_KEY = "dpipe.planned-threads"


def planned_threads(spec: ClusterSpec | None = None, *, client=None, address: str | None = None) -> int | None:
    """The worker threads the run will have, known before a cluster starts (``None``: a remote one).

    A given client answers; an embedded ``LocalCluster`` is shaped as :func:`connect` shapes it
    (``distributed``'s defaults split the machine's cores between workers and threads).
    """
    spec = spec or ClusterSpec()
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a client that cannot answer: unknown
            return None
    if address or spec.address or os.environ.get("DASK_SCHEDULER_ADDRESS"):
        return None
    cores = os.cpu_count() or 1
    if spec.n_workers and spec.threads_per_worker:
        return spec.n_workers * spec.threads_per_worker
    if spec.n_workers:
        return spec.n_workers * max(1, cores // spec.n_workers)
    if spec.threads_per_worker:
        return max(1, cores // spec.threads_per_worker) * spec.threads_per_worker
    return cores


def planning(spec: ClusterSpec | None = None, *, client=None, address: str | None = None):
    """A context in which :data:`THREADS_KEY` holds :func:`planned_threads` (when known)."""
    import contextlib

    import dask

    threads = planned_threads(spec, client=client, address=address)
    return dask.config.set({THREADS_KEY: threads}) if threads else contextlib.nullcontext()


def _check_workers(client, address: str) -> None:
    try:
        client.wait_for_workers(1, timeout=30)
    except TimeoutError as exc:
        raise ClusterError(
            f"cluster.address: the scheduler at {address!r} has no workers",
            hint="start workers with `dask worker ADDRESS`",
        ) from exc
    try:
        versions = client.run(_import_dpipe)
    except ImportError as exc:
        raise ClusterError(
            f"cluster.address: dpipe is not installed on the workers of {address!r}",
            hint="install the same dpipe version (and its dependencies) in every worker's environment",
        ) from exc
    # Another version may compute another split or other features than the bundle records.
    here = _import_dpipe()
    other = sorted({v for v in versions.values() if v != here})
    if other:
        raise ClusterError(
            f"cluster.address: the workers of {address!r} run dpipe {other}; this client runs {here}",
            hint="install the same dpipe version (and its dependencies) on the client and every worker",
        )


def _describe(client) -> str:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    threads = sum(w["nthreads"] for w in workers.values())
    return f"{len(workers)} workers, {threads} threads"


def _dashboard(client) -> str:
    link = getattr(client, "dashboard_link", None)
    return f"; dashboard: {link}" if link else ""
