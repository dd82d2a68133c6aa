"""An HTTP proxy on 127.0.0.1 in front of a moto server that throttles object reads, as S3 does.

S3 answers a request over its rate with ``503 SlowDown``; botocore retries it with backoff, then
gives up. The proxy answers the first ``throttle`` GETs of each object that way (``None``: all of
them) and forwards everything else unchanged, counting what it refused. ``throttle`` can be
changed while the proxy runs (``0``: refuse nothing).
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class Throttle:
    def __init__(self, upstream: str, throttle: int | None):
        self.upstream = urlsplit(upstream)
        self.throttle = throttle
        self.refused: Counter[str] = Counter()
        self.lock = threading.Lock()

    def refuses(self, method: str, path: str) -> bool:
        # Object reads only: a path with a key below the bucket, not a listing (`?list-type`).
        bucket_and_key = path.split("?", 1)[0].strip("/")
        if method != "GET" or "/" not in bucket_and_key or "?" in path:
            return False
        with self.lock:
            if self.throttle is not None and self.refused[bucket_and_key] >= self.throttle:
                return False
            self.refused[bucket_and_key] += 1
            return True


def _handler(throttle: Throttle) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _forward(self) -> None:
            if throttle.refuses(self.command, self.path):
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                self.wfile.write(SLOW_DOWN)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            up = http.client.HTTPConnection(throttle.upstream.hostname, throttle.upstream.port, timeout=30)
            try:
                up.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = up.getresponse()
                data = response.read()
            finally:
                up.close()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(key, value)
            # A HEAD answers with the object's length and no body.
            length_header = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length_header or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    return Handler


@contextmanager
def throttling_proxy(upstream: str, throttle: int | None):
    """``(endpoint, Throttle)`` of a proxy to ``upstream`` refusing object GETs as described above."""
    state = Throttle(upstream, throttle)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
