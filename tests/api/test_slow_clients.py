"""Slow clients over real sockets: request bodies that trickle in hold no in-flight slot, are cut off with
400 RequestTimeout, and never keep signed requests from being answered."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import RunningServer, _fresh_database, start_server, stop_server, wait_until

BODY_TIMEOUT_S = 3.0
BODY_IDLE_S = 1.0
MAX_RECEIVING = 16
MAX_IN_FLIGHT = 2
TRICKLE_EVERY_S = 0.25  # well under BODY_IDLE_S: only the total deadline stops a steady trickle
HEAD = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.1\r\n"
    b"X-Amz-Target: RekognitionService.ListStreamProcessors\r\nContent-Length: 1000\r\n\r\n{"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server with small budgets (module scope: starting one costs more than the tests)."""
    tmp = tmp_path_factory.mktemp("slow-clients")
    url, drop = _fresh_database(tmp)
    env = {
        "MLHARBOR_REQUEST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_S),
        "MLHARBOR_REQUEST_BODY_IDLE_SECONDS": str(BODY_IDLE_S),
        "MLHARBOR_THROTTLE__MAX_RECEIVING": str(MAX_RECEIVING),
        "MLHARBOR_THROTTLE__MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
    }
    running = start_server(tmp, url, env=env)
    yield running
    stop_server(running)
    drop()


class Trickler:
    """A raw connection that sends its headers and the body's first byte, then one more byte every
    ``every`` seconds (never, if None) until the server answers or closes."""

    def __init__(self, port: int, every: float | None, head: bytes = HEAD) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(head)
        self.sock.setblocking(False)
        self.every = every
        self.started = time.monotonic()
        self.next_send = self.started + every if every is not None else float("inf")
        self.response = b""
        self.ended: float | None = None

    def read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        self.response += data
        if not data:
            self.ended = time.monotonic()

    def trickle(self, now: float) -> None:
        if self.every is None or now < self.next_send:
            return
        self.next_send = now + self.every
        try:
            self.sock.send(b" ")
        except (BrokenPipeError, ConnectionResetError):
            self.read()  # the server answered and closed between our look and this send
            self.ended = self.ended or time.monotonic()

    @property
    def status_and_code(self) -> tuple[int, str, str]:
        head, _, body = self.response.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), json.loads(body)["__type"], headers.get("connection", "")

    def close(self) -> None:
        self.sock.close()


def drive(tricklers: list[Trickler], deadline: float, until: Trickler | None = None) -> None:
    """Trickle until every connection (or ``until``) has been answered and closed, or the deadline passes."""
    selector = selectors.DefaultSelector()
    for trickler in tricklers:
        selector.register(trickler.sock, selectors.EVENT_READ, trickler)
    try:
        while time.monotonic() < deadline:
            live = [t for t in tricklers if t.ended is None]
            if not live or (until is not None and until.ended is not None):
                return
            wait = max(0.0, min(t.next_send for t in live) - time.monotonic())
            for key, _ in selector.select(timeout=min(wait, 0.05)):
                key.data.read()  # an answer is read before anything more is sent
                if key.data.ended is not None:
                    selector.unregister(key.fileobj)
            now = time.monotonic()
            for trickler in live:
                if trickler.ended is None:
                    trickler.trickle(now)
    finally:
        selector.close()


def gauge(server: RunningServer, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def port_of(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def assert_request_timeout(trickler: Trickler) -> None:
    assert trickler.response, "connection closed without an answer"
    status, code, connection = trickler.status_and_code
    assert (status, code, connection) == (400, "RequestTimeout", "close")


def test_trickling_bodies_do_not_starve_signed_requests(server):
    rekognition = server.client("rekognition")
    tricklers = [Trickler(port_of(server), TRICKLE_EVERY_S) for _ in range(6 * MAX_IN_FLIGHT)]
    driver = threading.Thread(target=drive, args=(tricklers, time.monotonic() + BODY_TIMEOUT_S + 5))
    driver.start()
    try:
        wait_until(
            lambda: gauge(server, "mlharbor_requests_receiving") >= len(tricklers),
            timeout=BODY_TIMEOUT_S / 2,
            what="the server receiving every trickled body",
        )
        latencies: list[float] = []
        # Six times the in-flight cap is trickling: signed requests still answer, fast, until they stop.
        while time.monotonic() < tricklers[0].started + BODY_TIMEOUT_S - 1 and len(latencies) < 200:
            started = time.monotonic()
            rekognition.list_stream_processors()  # a ThrottlingException raises
            latencies.append(time.monotonic() - started)
        assert len(latencies) >= 2 and max(latencies) < BODY_TIMEOUT_S / 3, latencies
        assert all(t.ended is None for t in tricklers)  # ...and no trickler was dropped to make room
    finally:
        driver.join()
        for trickler in tricklers:
            trickler.close()
    for trickler in tricklers:
        assert_request_timeout(trickler)
        assert trickler.ended is not None and trickler.ended - trickler.started < BODY_TIMEOUT_S + 2
    wait_until(lambda: gauge(server, "mlharbor_requests_receiving") == 0, timeout=5, what="budget freed")
    rekognition.list_stream_processors()


@pytest.mark.parametrize(
    ("every", "earliest", "latest"),
    [
        (TRICKLE_EVERY_S, BODY_TIMEOUT_S, BODY_TIMEOUT_S + 1.5),  # steady but too slow: total deadline
        (None, BODY_IDLE_S, BODY_TIMEOUT_S),  # stalled after the first byte: idle timeout
    ],
    ids=["total-deadline", "idle"],
)
def test_body_past_its_deadline_gets_400_request_timeout(server, every, earliest, latest):
    trickler = Trickler(port_of(server), every)
    try:
        drive([trickler], time.monotonic() + latest + 2)
    finally:
        trickler.close()
    assert_request_timeout(trickler)
    assert trickler.ended is not None
    assert earliest - 0.1 <= trickler.ended - trickler.started < latest


def wait_full(server: RunningServer) -> None:
    wait_until(
        lambda: gauge(server, "mlharbor_requests_receiving") >= MAX_RECEIVING,
        timeout=BODY_TIMEOUT_S / 3,
        what="a full receiving budget",
    )


def test_when_the_receiving_budget_is_full_the_slowest_upload_is_cut(server):
    rekognition = server.client("rekognition")
    tricklers = [Trickler(port_of(server), TRICKLE_EVERY_S) for _ in range(MAX_RECEIVING)]
    try:
        wait_full(server)
        tricklers.append(Trickler(port_of(server), TRICKLE_EVERY_S))
        oldest = tricklers[0]
        drive(tricklers, time.monotonic() + BODY_TIMEOUT_S / 3, until=oldest)
        assert_request_timeout(oldest)  # cut long before its own deadline...
        assert oldest.ended is not None and oldest.ended - oldest.started < BODY_TIMEOUT_S * 2 / 3
        assert all(t.ended is None and not t.response for t in tricklers[1:])  # ...the others go on
        rekognition.list_stream_processors()  # room for a signed request too (it cuts the next oldest)
    finally:
        for trickler in tricklers:
            trickler.close()
    wait_until(lambda: gauge(server, "mlharbor_requests_receiving") == 0, timeout=5, what="budget freed")


def test_a_full_budget_cuts_the_slowest_upload_not_a_large_one_arriving_fast(server):
    # The oldest upload has sent 200 KB at once (a large image at network speed); tricklers fill the rest.
    big = b"{" + b" " * 200_000
    head = HEAD.replace(b"Content-Length: 1000", b"Content-Length: 400000")[:-1] + big
    fast = Trickler(port_of(server), TRICKLE_EVERY_S, head=head)
    tricklers = [Trickler(port_of(server), TRICKLE_EVERY_S) for _ in range(MAX_RECEIVING - 1)]
    everyone = [fast, *tricklers]
    try:
        wait_full(server)
        everyone.append(Trickler(port_of(server), TRICKLE_EVERY_S))
        drive(everyone, time.monotonic() + BODY_TIMEOUT_S / 3, until=tricklers[0])
        assert fast.ended is None and not fast.response  # the large upload goes on
        assert_request_timeout(tricklers[0])  # the slowest (the oldest trickler) was cut instead
    finally:
        for trickler in everyone:
            trickler.close()
    wait_until(lambda: gauge(server, "mlharbor_requests_receiving") == 0, timeout=5, what="budget freed")
