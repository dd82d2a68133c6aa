"""A real headless Chromium for the tests, driven over the DevTools protocol on a pipe.

Chromium is started with ``--remote-debugging-pipe``: it reads DevTools commands from its file
descriptor 3 and writes replies and events to 4, each message JSON ended by a NUL byte (as
Puppeteer's ``pipe: true`` does). No websocket, no port, no new dependency. A machine without
Chromium gets Debian's ``chromium`` package when running as root (how a fresh CI machine gets
one); otherwise starting fails with a clear message. The tests never skip for want of a browser.

:meth:`Browser.check_page` opens a file and reports what a person would notice: console errors
and warnings, uncaught exceptions, resources that failed to load, every request the page made,
and the value of a script run in the page; it saves a full-page screenshot.

Examples
--------
>>> with Browser.start(tmp_path / "profile") as browser:
...     seen = browser.check_page(tmp_path / "report.html", tmp_path / "shot.png", script="document.title")
>>> seen.errors, seen.value
([], 'dpipe report: quickstart')
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Where Chromium may be, first found wins (the wrapper in /usr/bin re-reads /etc/chromium.d).
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--disable-gpu",
    "--remote-debugging-pipe",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> str:
    """The Chromium binary; installs Debian's ``chromium`` first when missing and running as root."""
    found = _which()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        found = _which()
    if found is None:
        raise RuntimeError(
            "the report's browser test needs Chromium: none of "
            f"{', '.join(CANDIDATES)} was found. Install it (Debian/Ubuntu: `apt-get install chromium`)"
            " or put it on PATH"
        )
    return found


_TRAMPOLINE = """
import os, sys
commands, replies = int(sys.argv[1]), int(sys.argv[2])
os.dup2(commands, 3)
os.dup2(replies, 4)
os.close(commands)
os.close(replies)
os.execv(sys.argv[3], sys.argv[3:])
"""


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are above descriptor 9: the trampoline's ``dup2`` onto 3 and 4 never
    overwrites the other end."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


def _which() -> str | None:
    for name in CANDIDATES:
        path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Seen:
    """What a page did while it loaded."""

    url: str
    value: Any = None
    #: Console errors and warnings, uncaught exceptions, failed loads: ``"kind: text"`` each.
    errors: list[str] = field(default_factory=list)
    #: Every URL the page requested (the page itself first).
    requests: list[str] = field(default_factory=list)
    screenshot: Path | None = None


class Browser:
    """One Chromium process; :meth:`check_page` opens a tab per call."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int):
        self.proc, self._out, self._in = proc, to_browser, from_browser
        self._buffer = b""
        self._events: list[dict] = []
        self._next = 0

    @classmethod
    def start(cls, profile: Path, *, binary: str | None = None) -> Browser:
        binary = binary or find_chromium()
        profile.mkdir(parents=True, exist_ok=True)
        commands, replies = _high_pipe(), _high_pipe()  # (read, write) each
        flags = [*FLAGS, f"--user-data-dir={profile}", *(["--no-sandbox"] if os.geteuid() == 0 else [])]
        # A small Python trampoline puts the pipe ends on descriptors 3 and 4, where Chromium looks
        # for them (a shell cannot: dash redirects single-digit descriptors only).
        proc = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(commands[0]), str(replies[1]), binary, *flags, "about:blank"],
            pass_fds=(commands[0], replies[1]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands[0])
        os.close(replies[1])
        browser = cls(proc, commands[1], replies[0])
        try:
            browser.call("Browser.getVersion", timeout=30)
        except BaseException:
            browser.close()
            raise
        return browser

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"id": -1, "method": "Browser.close"})
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the protocol ---------------------------------------------------------------------------
    def _send(self, message: dict) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited ({self.proc.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 20) -> dict:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def wait_for(self, method: str, *, session: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method and event.get("sessionId") == session:
                    return self._events.pop(i)
            event = self._receive(deadline)
            if "method" in event:
                self._events.append(event)

    # -- a page ---------------------------------------------------------------------------------
    def check_page(self, path: Path, screenshot: Path, *, script: str = "null", width: int = 1300) -> Seen:
        """Open ``path``, wait for its load event, run ``script`` in it, save a full-page screenshot."""
        url = Path(path).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            for domain in ("Runtime", "Log", "Page", "Network"):
                self.call(f"{domain}.enable", session=session)
            metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
            self.call("Emulation.setDeviceMetricsOverride", metrics, session=session)
            self._events.clear()
            self.call("Page.navigate", {"url": url}, session=session)
            self.wait_for("Page.loadEventFired", session=session)
            result = self.call(
                "Runtime.evaluate", {"expression": script, "returnByValue": True, "awaitPromise": True}, session=session
            )
            seen = Seen(url, value=(result.get("result") or {}).get("value"))
            if "exceptionDetails" in result:
                seen.errors.append(f"script: {result['exceptionDetails'].get('text')}")
            size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}
            shot = self.call(
                "Page.captureScreenshot",
                {"format": "png", "clip": clip, "captureBeyondViewport": True},
                session=session,
                timeout=60,
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            seen.screenshot = screenshot
            self._collect(seen, session)
            return seen
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def _collect(self, seen: Seen, session: str) -> None:
        for event in [e for e in self._events if e.get("sessionId") == session]:
            params = event.get("params") or {}
            method = event["method"]
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                seen.errors.append(f"console.{params['type']}: {args}")
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails") or {}
                seen.errors.append(
                    f"exception: {(details.get('exception') or {}).get('description') or details.get('text')}"
                )
            elif method == "Log.entryAdded" and (params.get("entry") or {}).get("level") in ("error", "warning"):
                entry = params["entry"]
                seen.errors.append(f"log.{entry['level']}: {entry.get('text')} {entry.get('url', '')}".rstrip())
            elif method == "Network.requestWillBeSent":
                seen.requests.append((params.get("request") or {}).get("url", ""))
            elif method == "Network.loadingFailed":
                seen.errors.append(f"load failed: {params.get('errorText')}")
        self._events = [e for e in self._events if e.get("sessionId") != session]
