"""XGBoost's console lines (the collective's "Task ... got rank N") on the ``dpipe.xgboost`` logger.

XGBoost prints them from its C++ runtime through a log callback that it keeps **per thread**, so
registering one on a worker with ``client.run`` (the event loop's thread) misses the executor
threads that run the training tasks. :func:`route_xgboost_logs` therefore runs one small task on
every executor thread of every worker at once (each waits until all have started, so no thread
runs two), and each registers a callback in its own thread. The lines become DEBUG records of
``dpipe.xgboost`` on the worker, which are dropped there unless the client's logger wants DEBUG
(``dpipe run --verbose``): then they are forwarded and appear with the other progress lines.
XGBoost's warnings stay Python warnings, as XGBoost itself makes them. The client process's own
threads are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import uuid
import warnings
from typing import Any

LOGGER = "dpipe.xgboost"
_WAIT = 10.0  # seconds to wait for every executor thread to take a task (busy ones are skipped)
_registered = threading.local()
#: The workers (address, threads) each client has routed already: a training run asks for every
#: matrix and every training call, and one routing is a round trip through the scheduler's
#: queues (~0.5 s). A restarted worker comes back under another address and is routed again.
_routed: dict[str, frozenset[tuple[str, int]]] = {}


def route_xgboost_logs(client: Any) -> None:
    """Register the ``dpipe.xgboost`` log callback on every executor thread of ``client``'s workers."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    seen = frozenset((address, int(info["nthreads"])) for address, info in workers.items())
    if not seen <= _routed.get(client.id, frozenset()) and _register(client, workers):
        _routed[client.id] = seen
    if logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG):
        client.run(_debug_level)
        client.forward_logging(LOGGER, level=logging.DEBUG)


def _register(client: Any, workers: dict[str, Any]) -> bool:
    """Route every executor thread of ``workers``; whether every one took its task."""
    from distributed import Event, Queue, wait

    name = f"dpipe-xgboost-logs-{uuid.uuid4().hex}"
    futures = [
        client.submit(_register_in_thread, name, pure=False, workers=[address], allow_other_workers=False)
        for address, info in workers.items()
        for _ in range(info["nthreads"])
    ]
    started, event = Queue(name, client=client), Event(name, client=client)
    every = True
    try:
        for _ in futures:
            started.get(timeout=_WAIT)
    except TimeoutError:
        every = False
        logging.getLogger(LOGGER).debug("a busy executor thread keeps XGBoost's own log callback")
    finally:
        event.set()
        wait(futures)
    return every


def _debug_level() -> None:
    logging.getLogger(LOGGER).setLevel(logging.DEBUG)


def _register_in_thread(name: str) -> None:
    """On a worker: route this executor thread's XGBoost console lines, then hold the thread
    until every other one has taken its task."""
    from distributed import Event, Queue

    route_this_thread()
    Queue(name).put(threading.get_ident())
    Event(name).wait(timeout=2 * _WAIT)


def route_this_thread() -> None:
    """Send XGBoost's console lines from the calling thread to the ``dpipe.xgboost`` logger."""
    if getattr(_registered, "callback", None) is not None:
        return
    import xgboost.core

    logger = logging.getLogger(LOGGER)

    def log(message: bytes) -> None:
        text = message.decode("utf-8", errors="replace")
        if "WARNING:" in text:
            warnings.warn(text, UserWarning, stacklevel=3)
        else:
            logger.debug(text.strip())

    lib: Any = xgboost.core._LIB
    # Kept alive with the thread's registration: ctypes calls it for as long as the thread lives.
    _registered.callback = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(log)
    lib.XGBRegisterLogCallback(_registered.callback)
