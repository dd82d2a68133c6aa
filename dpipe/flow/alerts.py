"""A flow run's alerts: a command run, or the run's summary POSTed to a webhook.

An alert is raised after the run, for the events it is ``on``: ``failure`` (a step failed or
was not run because of one), ``success`` (every step succeeded or was skipped), ``drift`` (a
monitor step crossed a threshold). An alert that cannot be delivered (a command that fails, a
webhook that is down) is logged as a warning and changes nothing about the run's result.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dpipe.spec.base import redact_url
from dpipe.spec.flow import AlertSpec

logger = logging.getLogger(__name__)


def events_of(result: Any) -> set[str]:
    """The events a flow run raises: ``failure`` or ``success``, and ``drift``."""
    events = {"failure" if result.failed else "success"}
    if result.drifted:
        events.add("drift")
    return events


def raise_alerts(
    alerts: Sequence[AlertSpec], result: Any, summary: Path, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Deliver each alert whose ``on`` meets the run's events; what happened to each."""
    log = log or logger.info
    events = events_of(result)
    body = result.to_dict()
    delivered = []
    for alert in alerts:
        hit = sorted(events & set(alert.on))
        if not hit:
            continue
        payload = {**body, "event": hit[0], "events": hit}
        target = f"command {alert.command!r}" if alert.command else f"webhook {redact_url(alert.webhook or '')}"
        try:
            if alert.command:
                _command(alert, payload, summary, result)
            else:
                _webhook(alert, payload)
        except (OSError, subprocess.SubprocessError, urllib.error.URLError, ValueError, _Refused) as exc:
            logger.warning("flow %r: alert %s on %s could not be delivered: %s", result.flow, target, hit[0], exc)
            delivered.append({"alert": target, "event": hit[0], "delivered": False, "error": str(exc)})
            continue
        log(f"alert on {hit[0]}: {target} delivered")
        delivered.append({"alert": target, "event": hit[0], "delivered": True})
    return delivered


class _Refused(Exception):
    """A command exited non-zero, or a webhook answered with an error status."""


def _command(alert: AlertSpec, payload: dict[str, Any], summary: Path, result: Any) -> None:
    env = {
        **os.environ,
        "DPIPE_FLOW": result.flow,
        "DPIPE_FLOW_RUN_ID": result.run_id,
        "DPIPE_FLOW_STATUS": result.status,
        "DPIPE_FLOW_EVENT": payload["event"],
        "DPIPE_FLOW_SUMMARY": str(summary.resolve()),
    }
    done = subprocess.run(  # noqa: S602 - the flow's own author wrote the command line
        alert.command or "",
        shell=True,
        input=json.dumps(payload, default=str),
        text=True,
        env=env,
        capture_output=True,
        timeout=alert.timeout,
    )
    if done.returncode != 0:
        raise _Refused(f"exit status {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")


def _webhook(alert: AlertSpec, payload: dict[str, Any]) -> None:
    request = urllib.request.Request(  # noqa: S310 - the spec allows only http(s) URLs
        alert.webhook or "",
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "dpipe-flow", **alert.headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=alert.timeout) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as exc:
        raise _Refused(f"HTTP {exc.code} {exc.reason}") from exc
