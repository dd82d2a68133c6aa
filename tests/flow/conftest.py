"""Fixtures of the flow tests: the steps' environment and an HTTP server for webhooks."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import ROOT


@contextlib.contextmanager
def webhook():
    """An HTTP server on 127.0.0.1 that keeps the JSON bodies POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def steps_env(monkeypatch, tmp_path):
    """The steps' processes import this checkout (and a sitecustomize a test may write)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv("PYTHONPATH", f"{hooks}:{ROOT}")
    monkeypatch.chdir(tmp_path)
    return hooks
