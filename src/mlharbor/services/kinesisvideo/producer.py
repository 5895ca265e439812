"""A Kinesis Video Streams producer's PutMedia client: the server's built-in producer (``puller.py``) and the
tests use it.

boto3 has no PutMedia (the real producers are the C++/Java SDKs and GStreamer's ``kvssink``), so this
module plays the producer's part on the wire.

PutMedia. The real API is full duplex over one HTTP/1.1 request: the producer streams the MKV as a
chunked body for as long as the camera runs, and the service answers ``200`` at once and streams
newline-separated JSON ACK events (BUFFERING, RECEIVED, PERSISTED, ERROR, IDLE) while the body is still
being uploaded. ``requests``/``urllib3`` cannot read a response before the body is sent, and
``http.client.HTTPConnection`` gets in the way too: ``getresponse()`` closes the connection object when
the response says ``Connection: close``, and a later ``send()`` would silently open a *new* connection.
So ``PutMedia`` writes the request itself on a plain socket (the writer: the caller's thread) and a
daemon reader thread parses the response: ``http.client.HTTPResponse`` reads the status line and
headers, then the body's framing (chunked, Content-Length or up to the close) is read here, piece by
piece as it arrives, because ``HTTPResponse.readline``/``read`` take a chunked body cut off mid-way for
its clean end. The reader waits on the socket in short polls, so that ``close``/``abort`` wake it, and
silence is an error only once the body is finished (``timeout`` seconds); while uploading, a quiet
server is normal. Plain ``http://`` only: one TLS connection must not be read and written from two
threads at once. ``close``/``abort`` may be called from any thread: they shut the socket down first,
which also wakes a ``send`` blocked on a server that stopped reading.

Signing. AWS's streaming PutMedia is signed with SigV4 as if the body were empty: the payload hash in
the canonical request is SHA-256 of b"" (the body is not known when the headers are sent), and no
``X-Amz-Content-SHA256`` header is sent. ``PutMedia`` signs an ``AWSRequest`` with ``data=b""`` using
botocore's ``SigV4Auth`` (which, unlike the S3 signer, adds no content-hash header) and copies every
header botocore produced into the real request byte for byte; ``Transfer-Encoding`` (and botocore's
other hop-by-hop headers, ``Connection``, ``User-Agent``) are never signed.

    status, acks = put_media(endpoint, mkv_bytes, stream_name="cam")
    with PutMedia(endpoint, stream_name="cam") as producer:
        for piece in split_live(mkv_bytes, 4096):
            producer.send(piece)
        producer.wait_for(lambda acks: any(a.get("EventType") == "PERSISTED" for a in acks), 10)
        producer.finish()

The MKV itself (a live Matroska stream, one Cluster per fragment, each starting at a keyframe) is the
caller's: ``puller.py`` remuxes or encodes a camera with FFmpeg's matroska muxer; the tests' helper
``tests/kvs_producer.py`` encodes synthetic video.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import platform
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import botocore
import botocore.auth
import botocore.awsrequest
import botocore.credentials

from mlharbor import __version__

USER_AGENT = (
    f"mlharbor-kvs-producer/{__version__} botocore/{botocore.__version__} Python/{platform.python_version()}"
)
_POLL = 0.1  # seconds between the reader's checks of the stop flag and its idle deadline
_MAX_LINE = 65536
_PIECE = 65536


class _SocketReader(io.RawIOBase):
    """The response side of the socket, for ``http.client.HTTPResponse``: waits in short polls so that
    ``close``/``abort`` wake it, and gives up after ``timeout`` seconds of silence once ``idle_allowed``
    says the request body is finished (while uploading, a quiet server is normal)."""

    def __init__(self, sock: socket.socket, timeout: float, idle_allowed: Callable[[], bool]) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._idle_allowed = idle_allowed
        self.stopped = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        quiet_since = time.monotonic()
        while True:
            if self.stopped.is_set():
                raise ConnectionAbortedError("PutMedia stream closed by the producer")
            try:
                ready, _, _ = select.select([self._sock], [], [], _POLL)
            except (OSError, ValueError) as exc:  # closed under us
                raise ConnectionAbortedError("PutMedia stream closed by the producer") from exc
            if ready:
                try:
                    return self._sock.recv_into(buffer)
                except (BlockingIOError, InterruptedError):
                    continue
            if self._idle_allowed():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > self._timeout:
                raise TimeoutError(f"no response bytes for {self._timeout} s after the body was finished")


class _ResponseSocket:
    """What ``HTTPResponse`` needs of a socket: ``makefile``."""

    def __init__(self, raw: _SocketReader) -> None:
        self._raw = raw

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(self._raw, 64 * 1024)


def _body_pieces(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The response body as it arrives (chunked, Content-Length or up to the close). Unlike
    ``HTTPResponse.readline``/``read``, which take a chunked body cut off mid-way for its end, a body cut
    short raises ``IncompleteRead`` here."""
    fp = response.fp
    assert fp is not None
    if response.chunked:
        while True:
            line = fp.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise http.client.IncompleteRead(b"", None)  # closed mid-response
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while fp.readline(_MAX_LINE).strip():  # trailer fields, up to the blank line
                    pass
                return
            yield from _exactly(fp, size)
            if fp.readline(_MAX_LINE).strip():
                raise http.client.HTTPException("no CRLF after a chunk's data")
    elif response.length is not None:
        yield from _exactly(fp, response.length)
    else:
        while piece := fp.read1(_PIECE):
            yield piece


def _exactly(fp: io.BufferedReader, size: int) -> Iterator[bytes]:
    left = size
    while left:
        piece = fp.read1(min(left, _PIECE))
        if not piece:
            raise http.client.IncompleteRead(b"", left)
        left -= len(piece)
        yield piece


def _event(line: bytes) -> dict:
    text = line.strip()
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        event = {"EventType": "UNPARSEABLE", "Line": text.decode("utf-8", "replace")}
    return event


def _format_timestamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 1000:d}.{millis % 1000:03d}"


class PutMedia:
    """One PutMedia request, full duplex: ``send`` MKV pieces while ``acks()`` fills from the response.

    ``start()`` connects and sends the signed headers; the body is HTTP/1.1 chunked, one chunk per
    ``send``; ``finish()`` ends it; ``abort()`` drops the connection mid-body. A daemon thread reads the
    response: ``status``/``headers`` once the head arrives, then each JSON line into ``acks()`` (a non-200
    response's whole body goes to ``error_body()``). ``error`` says what ended the reader early (a
    ``ConnectionAbortedError`` after ``close``/``abort``, ``IncompleteRead`` if the server cut the
    response short, ``TimeoutError`` after ``timeout`` s of silence once the body is finished);
    ``upload_error`` why a ``send`` failed. ``extra_headers`` are added to the request and signed.
    Usable as a context manager (``start`` on entry if needed, ``close`` on exit).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        stream_name: str | None = None,
        stream_arn: str | None = None,
        timecode_type: str = "RELATIVE",
        start_timestamp: float | None = None,
        ack_required: bool = True,
        region: str = "us-east-1",
        access_key: str = "test",
        secret_key: str = "test",
        session_token: str | None = None,
        timeout: float = 30.0,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"PutMedia needs an http:// endpoint, not {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._path = parts.path.rstrip("/") + "/putMedia"
        self._netloc = parts.netloc
        self.stream_name = stream_name
        self.stream_arn = stream_arn
        self.timecode_type = timecode_type
        self.start_timestamp = time.time() if start_timestamp is None else start_timestamp
        self.ack_required = ack_required
        self.region = region
        self._credentials = botocore.credentials.Credentials(access_key, secret_key, session_token)
        self.timeout = timeout
        self._extra_headers = dict(extra_headers or {})

        self._sock: socket.socket | None = None
        self._raw: _SocketReader | None = None
        self._reader: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._acks: list[dict] = []
        self._status: int | None = None
        self._reason: str | None = None
        self._headers: http.client.HTTPMessage | None = None
        self._error_body = b""
        self._error: BaseException | None = None
        self._done = False
        self._finished = False
        self._closed = False
        self.request_headers: list[tuple[str, str]] = []
        self.bytes_sent = 0
        self.upload_error: OSError | None = None  # why the last send failed, if one did

    # -- request ---------------------------------------------------------------------------------------

    def signed_headers(self) -> list[tuple[str, str]]:
        """The request's headers, signed with SigV4 over an empty payload (see the module docstring)."""
        headers: dict[str, str] = {"Host": self._netloc}
        if self.stream_name is not None:
            headers["x-amzn-stream-name"] = self.stream_name
        if self.stream_arn is not None:
            headers["x-amzn-stream-arn"] = self.stream_arn
        headers["x-amzn-fragment-timecode-type"] = self.timecode_type
        headers["x-amzn-producer-start-timestamp"] = _format_timestamp(self.start_timestamp)
        headers["x-amzn-fragment-acknowledgment-required"] = "1" if self.ack_required else "0"
        headers["Content-Type"] = "application/json"
        headers.update(self._extra_headers)
        request = botocore.awsrequest.AWSRequest(
            method="POST", url=f"http://{self._netloc}{self._path}", data=b"", headers=headers
        )
        botocore.auth.SigV4Auth(self._credentials, "kinesisvideo", self.region).add_auth(request)
        # Only botocore's S3 signers add a payload-hash header; streaming PutMedia must not send one.
        assert "X-Amz-Content-SHA256" not in request.headers
        signed = [(name, str(value)) for name, value in request.headers.items()]
        # Hop-by-hop and user-agent headers: botocore never signs them.
        signed += [
            ("User-Agent", USER_AGENT),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive"),
        ]
        return signed

    def start(self) -> None:
        """Connect, send the signed request head (the body follows with ``send``), start the reader."""
        if self._sock is not None:
            raise RuntimeError("PutMedia already started")
        self.request_headers = self.signed_headers()
        head = f"POST {self._path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in self.request_headers
        )
        sock = socket.create_connection((self._host, self._port), timeout=self.timeout)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._raw = _SocketReader(sock, self.timeout, lambda: not self._finished)
        self._reader = threading.Thread(target=self._read, name="putmedia-reader", daemon=True)
        self._reader.start()
        self._sendall((head + "\r\n").encode("latin-1"))

    def _sendall(self, data: bytes) -> None:
        if self._sock is None:
            raise RuntimeError("PutMedia not started")
        with self._write_lock:
            if self._closed:
                raise ConnectionError("PutMedia stream is closed")
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self.upload_error = exc
                raise ConnectionError(f"PutMedia upload failed: {exc!r}") from exc

    def send(self, data: bytes) -> None:
        """One HTTP chunk of ``data``. Empty data is not sent: a zero-length chunk would end the body."""
        if self._finished:
            raise RuntimeError("PutMedia body already finished")
        if not data:
            return
        self._sendall(b"%X\r\n" % len(data) + bytes(data) + b"\r\n")
        self.bytes_sent += len(data)

    def finish(self) -> None:
        """End the body (the terminating zero-length chunk); the response may go on for a while."""
        if self._finished:
            return
        self._sendall(b"0\r\n\r\n")
        self._finished = True

    def abort(self, *, reset: bool = False) -> None:
        """Drop the connection mid-body, as a dying producer would: a FIN, or a TCP RST if ``reset``."""
        self._shut(reset=reset)

    def close(self) -> None:
        """Stop reading and close the connection (without finishing the body if it is not finished)."""
        self._shut(reset=False)

    def _shut(self, *, reset: bool) -> None:
        sock = self._sock
        if sock is None or self._closed:
            return
        self._closed = True
        if self._raw is not None:
            self._raw.stopped.set()
        with contextlib.suppress(OSError):
            # Shutting down wakes a reader or writer blocked on the socket; only then is it closed, so no
            # thread ever touches a file descriptor number that may have been reused.
            sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
        self._join(2.0)
        with self._write_lock:
            if reset:  # close() with a zero linger time sends a TCP RST instead of a FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def __enter__(self) -> PutMedia:
        if self._sock is None:
            self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- response --------------------------------------------------------------------------------------

    def _read(self) -> None:
        assert self._raw is not None
        try:
            response = http.client.HTTPResponse(_ResponseSocket(self._raw), method="POST")  # type: ignore[arg-type]
            response.begin()  # status line and headers (skips any 100 Continue)
            with self._cond:
                self._status, self._reason, self._headers = response.status, response.reason, response.headers
                self._cond.notify_all()
            if response.status != 200:
                body = b"".join(_body_pieces(response))
                with self._cond:
                    self._error_body = body
                return
            pending = b""
            for piece in _body_pieces(response):
                *lines, pending = (pending + piece).split(b"\n")
                events = [_event(line) for line in lines if line.strip()]
                if events:
                    with self._cond:
                        self._acks.extend(events)
                        self._cond.notify_all()
            if pending.strip():
                with self._cond:
                    self._acks.append(_event(pending))
        except Exception as exc:  # kept for the caller: the thread must not die loudly
            if self._closed and not isinstance(exc, ConnectionAbortedError):
                exc = ConnectionAbortedError(f"PutMedia stream closed by the producer ({exc!r})")
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    @property
    def status(self) -> int | None:
        """The response's status code, None until its head has arrived."""
        with self._cond:
            return self._status

    @property
    def reason(self) -> str | None:
        with self._cond:
            return self._reason

    @property
    def headers(self) -> http.client.HTTPMessage | None:
        """The response's headers, None until its head has arrived."""
        with self._cond:
            return self._headers

    @property
    def error(self) -> BaseException | None:
        """What stopped the reader early (a timeout, a reset, a malformed response), if anything."""
        with self._cond:
            return self._error

    @property
    def done(self) -> bool:
        """Whether the response has ended (or the reader gave up)."""
        with self._cond:
            return self._done

    def acks(self, start: int = 0) -> list[dict]:
        """A copy of the events received so far, in order, from the ``start``-th on (a long-lived producer
        passes how many it has seen): each line's JSON object (a line that is not one is kept as
        ``{"EventType": "UNPARSEABLE", "Line": ...}``)."""
        with self._cond:
            return self._acks[start:]

    def error_body(self) -> bytes:
        """A non-200 response's whole body (empty until it has been read)."""
        with self._cond:
            return self._error_body

    def _describe(self) -> str:
        with self._cond:  # re-entrant: callers may hold it already
            return (
                f"status={self._status} done={self._done} error={self._error!r} "
                f"upload_error={self.upload_error!r} error_body={self._error_body[:500]!r} "
                f"acks={self._acks!r}"
            )

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float) -> list[dict]:
        """Wait until ``predicate(acks)`` holds and return the acks; TimeoutError (with the acks in the
        message) after ``timeout`` seconds, or as soon as the response has ended without it holding."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                acks = list(self._acks)
                if predicate(acks):
                    return acks
                if self._done:
                    raise TimeoutError(f"the PutMedia response ended first: {self._describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching ACKs within {timeout} s: {self._describe()}")
                self._cond.wait(min(left, 1.0))

    def wait_status(self, timeout: float) -> int:
        """Wait for the response's head; its status code (TimeoutError if none came)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._status is None:
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    raise TimeoutError(f"no PutMedia response head: {self._describe()}")
                self._cond.wait(min(left, 1.0))
            return self._status

    def wait_done(self, timeout: float) -> None:
        """Wait until the response has been read to its end (TimeoutError after ``timeout`` seconds)."""
        if not self._join(timeout):
            raise TimeoutError(f"the PutMedia response did not end within {timeout} s: {self._describe()}")

    def _join(self, timeout: float) -> bool:
        if self._reader is None:
            return True
        self._reader.join(timeout)
        return not self._reader.is_alive()


def put_media(
    endpoint: str, body: bytes, *, chunk_bytes: int = 8192, pace: float = 0.0, **kwargs: Any
) -> tuple[int, list[dict]]:
    """Send ``body`` as one PutMedia request (``chunk_bytes`` per HTTP chunk, ``pace`` seconds between
    chunks) and read the response to its end: (status, ACK events). ``kwargs`` go to ``PutMedia``.

    An upload cut short by the server (an early error response) is not an error here: the status
    tells. A response that never came, or was cut short, raises ``ConnectionError`` (``TimeoutError`` if
    it did not end within ``timeout``). A non-200 status returns no acks; use ``PutMedia`` itself to
    see the error body.
    """
    producer = PutMedia(endpoint, **kwargs)
    producer.start()
    try:
        try:
            for i, piece in enumerate(split_live(body, chunk_bytes)):
                if producer.done:
                    break
                if pace > 0 and i:
                    time.sleep(pace)
                producer.send(piece)
            if not producer.done:
                producer.finish()
        except ConnectionError:
            pass  # the server answered and closed early; its response says why
        producer.wait_done(producer.timeout)
        status = producer.status
        if status is None or producer.error is not None:
            raise ConnectionError(
                f"no complete PutMedia response: {producer._describe()}"
            ) from producer.error
        return status, producer.acks()
    finally:
        producer.close()


def split_live(data: bytes, chunk_bytes: int) -> list[bytes]:
    """``data`` in pieces of ``chunk_bytes`` (the last may be shorter), as a producer would send them."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
