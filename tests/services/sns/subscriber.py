"""A real HTTP endpoint for SNS tests: records what SNS posts, answers what the test says, verifies signatures
with the certificate the server publishes (AWS's documented algorithm, written here independently)."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.conftest import wait_until

SIGNED_NOTIFICATION = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
SIGNED_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def type(self) -> str:
        return self.headers.get("x-amz-sns-message-type", "")

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.body)


class Subscriber:
    """``answer(received) -> status`` decides each response (200 unless told otherwise)."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        self.answer: Callable[[Received], int] = lambda _: 200
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                status = owner.answer(got)
                with owner._lock:
                    owner.received.append(got)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/sns"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def of_type(self, kind: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.type == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 20.0) -> list[Received]:
        return wait_until(lambda: (got := self.of_type(kind)) and len(got) >= count and got, timeout,
                          what=f"{count} {kind} message(s) at {self.url}")  # fmt: skip

    def wait_message(self, text: str, timeout: float = 20.0) -> list[Received]:
        """Every delivery (retries included) of the notification whose message is ``text``."""

        def found() -> list[Received]:
            return [r for r in self.of_type("Notification") if message_of(r) == text]

        return wait_until(found, timeout, what=f"notification {text!r}")


def message_of(received: Received) -> str:
    if received.headers.get("x-amz-sns-rawdelivery") == "true":
        return received.body.decode()
    return received.doc["Message"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def verify_signature(doc: dict[str, Any]) -> None:
    """Raise unless ``doc`` carries a valid signature by the certificate at its SigningCertURL."""
    certificate = x509.load_pem_x509_certificate(requests.get(doc["SigningCertURL"], timeout=10).content)
    names = SIGNED_NOTIFICATION if doc["Type"] == "Notification" else SIGNED_CONFIRMATION
    text = "".join(f"{name}\n{doc[name]}\n" for name in names if name in doc)
    algorithm = {"1": hashes.SHA1, "2": hashes.SHA256}[doc["SignatureVersion"]]()
    certificate.public_key().verify(  # type: ignore[union-attr, call-arg]
        base64.b64decode(doc["Signature"]), text.encode(), padding.PKCS1v15(), algorithm
    )


class Dropper:
    """An endpoint that is down in the way a crashing server is: each connection is accepted and closed
    without an answer. Counts the connections, so a test knows an attempt failed."""

    def __init__(self, port: int = 0) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
