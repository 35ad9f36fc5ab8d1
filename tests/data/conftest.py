"""Fixtures for the data tests: a local HTTP server on 127.0.0.1 (tests never use the internet)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Route:
    """What the server answers for one path.

    Attributes:
        body: the bytes sent.
        content_length: the ``Content-Length`` announced (default ``len(body)``); ``-1`` sends none.
        status: HTTP status code.
    """

    body: bytes
    content_length: int | None = None
    status: int = 200


@dataclass
class LocalServer:
    """A running server: register routes with ``add``; ``hits`` counts requests per path."""

    base_url: str
    routes: dict[str, Route] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def add(self, path: str, body: bytes, content_length: int | None = None, status: int = 200) -> str:
        """Serve ``body`` at ``path``; return its URL."""
        self.routes[path] = Route(body, content_length, status)
        return f"{self.base_url}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # close after each response: a short body is cut off, not awaited
    state: LocalServer

    def do_GET(self) -> None:
        self.state.hits[self.path] += 1
        route = self.state.routes.get(self.path)
        if route is None:
            self.send_error(404, "no such route")
            return
        self.send_response(route.status)
        length = len(route.body) if route.content_length is None else route.content_length
        if length >= 0:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    """A threaded HTTP server on 127.0.0.1 with an ephemeral port, stopped after the test."""
    state = LocalServer(base_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"state": state}))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
