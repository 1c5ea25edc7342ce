"""Study test helpers and fixtures (the general fixtures live in tests/backend/conftest.py):
a webhook receiver on a real local HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tests.backend.conftest import jpeg_bytes, png_bytes

__all__ = ["SECRET", "Receiver", "jpeg_bytes", "png_bytes", "verify_like_a_receiver"]

SECRET = "hospital-shared-secret"


class Receiver:
    """An HTTP server on 127.0.0.1 that records requests and answers with a set status."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/pneumoscan"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hooked(user: Any, receiver: Receiver) -> Any:
    user.hospital.webhook_url = receiver.url
    user.hospital.webhook_secret = SECRET
    user.hospital.save()
    return user


def verify_like_a_receiver(headers: dict[str, str], body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-PneumoScan-Signature"])
