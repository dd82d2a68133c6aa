"""Getting a Dask client: one passed in, an existing scheduler, or an embedded LocalCluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from dpipe import arrow_pool
from dpipe.errors import ClusterError
from dpipe.spec import ClusterSpec
from dpipe.spec.models import SecuritySpec


def _import_dpipe() -> str:
    import dpipe

    return dpipe.__version__


@contextlib.contextmanager
def connect(
    spec: ClusterSpec | None = None,
    *,
    client=None,
    address: str | None = None,
    security: SecuritySpec | None = None,
    log=None,
) -> Iterator:
    """Yield a ``distributed.Client``.

    The client is made current (``Client.as_current``) inside the block, as ``xgboost.dask``
    requires. Precedence: ``client`` (used as is, not closed), then ``address``, ``spec.address`` or
    ``DASK_SCHEDULER_ADDRESS`` (an existing cluster: dpipe must be installed on its workers),
    else an embedded ``LocalCluster`` shaped by ``spec`` and closed on exit. An existing cluster
    is reached with ``security``, else ``spec.security``, else Dask's own TLS configuration
    (``distributed.comm.tls.*``, which the CLI's ``--tls-*`` flags set).
    """
    from distributed import Client, LocalCluster

    spec = spec or ClusterSpec()
    log = log or (lambda msg: None)
    if client is not None:
        arrow_pool.install(client)
        with client.as_current():
            yield client
        return
    address = address or spec.address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        tls = security or spec.security
        try:
            remote = Client(address, timeout=spec.timeout, set_as_default=False, security=_security(tls, address))
        except ValueError as exc:
            raise ClusterError(
                f"cluster.address: {address!r} is not a valid scheduler address ({exc})",
                hint="write it as tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786 (tls://HOST:PORT for TLS)",
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise _unreachable(address, exc) from exc
        except TypeError as exc:
            # distributed's words for a tls:// address without TLS settings.
            if "ssl_context" not in str(exc):
                raise
            raise ClusterError(
                f"cluster.address: {address!r} is a TLS address, but no certificates are given",
                hint="pass --tls-ca-file, --tls-cert and --tls-key (or set `cluster.security`)",
            ) from exc
        try:
            _check_workers(remote, address)
            arrow_pool.install(remote)
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
        arrow_pool.install(local)
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


# -- TLS ------------------------------------------------------------------------------------------
def _security(tls: SecuritySpec | None, address: str):
    """Dask's ``Security`` of ``tls`` (``None``: Dask's configuration decides)."""
    if tls is None:
        return None
    from distributed.security import Security

    for flag, path in (("--tls-ca-file", tls.tls_ca_file), ("--tls-cert", tls.tls_cert), ("--tls-key", tls.tls_key)):
        if path is not None and not os.path.isfile(path):
            raise ClusterError(
                f"cluster.security: {flag.removeprefix('--').replace('-', '_')} {path!r} is not a file",
                hint=f"give {flag} (or `cluster.security`) the path of a PEM file",
            )
    if tls.require_encryption and not address.startswith("tls://"):
        raise ClusterError(
            f"cluster.security: TLS is required, but {address!r} is not a tls:// address",
            hint="write the scheduler address as tls://HOST:PORT",
        )
    return Security(
        tls_ca_file=tls.tls_ca_file,
        tls_client_cert=tls.tls_cert,
        tls_client_key=tls.tls_key,
        require_encryption=tls.require_encryption,
    )


def _unreachable(address: str, exc: BaseException) -> ClusterError:
    """The error of a scheduler that cannot be reached, naming TLS when that is the reason."""
    import ssl

    cause = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}" if str(exc) else type(exc).__name__
    words = str(exc).lower()
    tls_server = _speaks_tls(address)
    if address.startswith("tls://") and (isinstance(exc, ssl.SSLError) or "certificate" in words or tls_server):
        return ClusterError(
            f"cluster.address: the TLS handshake with the Dask scheduler at {address!r} failed ({cause})",
            hint="check that --tls-ca-file is the CA that signed the cluster's certificates, and that"
            " --tls-cert/--tls-key are a certificate and key it signed",
        )
    if address.startswith("tcp://") and tls_server:
        return ClusterError(
            f"cluster.address: the Dask scheduler at {address!r} only accepts TLS connections",
            hint=f"connect to {'tls://' + address.removeprefix('tcp://')!r} with --tls-ca-file, --tls-cert and"
            " --tls-key (or `cluster.security`)",
        )
    return ClusterError(
        f"cluster.address: cannot reach the Dask scheduler at {address!r} ({cause})",
        hint="start it with `dask scheduler` and `dask worker ADDRESS`, or drop --scheduler to run locally",
    )


def _speaks_tls(address: str, timeout: float = 3.0) -> bool:
    """Whether the server at ``PROTOCOL://HOST:PORT`` completes a TLS handshake (certificates
    unchecked: this only tells a TLS scheduler from a plain or unreachable one)."""
    import socket
    import ssl

    host, _, port = address.partition("://")[2].rpartition(":")
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host or None),
        ):
            return True
    except ssl.SSLError as exc:
        # A server that refused the handshake with an alert (no client certificate) spoke TLS;
        # a plain one gives "wrong version number" or an EOF.
        words = str(exc).lower()
        return "alert" in words or "certificate" in words
    except (OSError, ValueError):
        return False
