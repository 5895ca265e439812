"""The S3 front door: rest-xml requests (any method, path-style ``/{Bucket}/{Key+}``) to the S3 handlers.

S3 differs from the other services in ways the JSON gateway cannot absorb: object bodies stream both ways
and may be gigabytes (never held in memory), requests are signed four ways (SigV4 header or query, SigV2
header or query; api/s3auth.py), bodies may be ``aws-chunked`` with signed chunks and trailing checksums
(api/s3payload.py), and errors are S3's XML. The protocol itself (routing, parsing, serializing from the
botocore model) is the generic rest-xml codec (api/restxml.py).

Order of checks: load shedding, signature, operation, account rate, then the body: a small body (XML
payloads) is read whole and checked against what the signature covers; a streaming payload (PutObject,
UploadPart) goes to the handler as an ``UploadBody`` that decodes and verifies it while the handler writes
it to the object store, so nothing is committed unless every claim about the body held.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.from_thread
from starlette.concurrency import run_in_threadpool

from mlharbor import errors
from mlharbor.api import restxml
from mlharbor.api.metrics import Metrics
from mlharbor.api.s3auth import PayloadCheck, S3Authenticator
from mlharbor.api.s3payload import Payload, PayloadDecoder
from mlharbor.api.services import Service
from mlharbor.api.shapes import Wire, parse_input
from mlharbor.api.throttle import Throttle
from mlharbor.context import Call, Server

log = logging.getLogger("mlharbor.api.s3")
# S3's request ids are 16 upper-case hex digits; a random per-process prefix and a counter make them unique
# without a system call per request (uuid4 cost ~5% of a small GetObject).
_ID_PREFIX = f"{secrets.randbits(24):06X}"
_request_ids = (f"{_ID_PREFIX}{n:010X}" for n in itertools.count())

STATUS = "__status__"  # a handler result key: the HTTP status to answer with (GetObject's 206)
RAW_BODY = "__body__"  # a handler result key: the whole XML body, for answers the model cannot describe
_HOST_ID = b"mlharbor"


class ClientGone(Exception):
    """The client went away while its body was arriving."""


# What one hop from a handler's thread to the event loop collects of a streaming body: uvicorn hands the body
# over in pieces of at most 64 KiB, and a hop per piece cost more CPU than hashing and writing them.
BATCH_BYTES = 1024 * 1024
# A streaming body this small, with its length known, is read before the handler runs: no hop at all.
SMALL_BODY_BYTES = 1024 * 1024


async def receive_batch(receive: Any, idle_seconds: float) -> tuple[bytes, bool]:
    """The body's next pieces, up to about ``BATCH_BYTES``: (bytes, more to come). ClientGone if the client
    left; S3's RequestTimeout if no piece arrives for ``idle_seconds`` (a slow client is fine, a silent one
    is not)."""
    pieces: list[bytes] = []
    size = 0
    while True:
        try:
            with anyio.fail_after(idle_seconds):
                message = await receive()
        except TimeoutError:
            raise errors.RequestTimeout() from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        data = message.get("body", b"")
        if data:
            pieces.append(data)
            size += len(data)
        more = bool(message.get("more_body", False))
        if not more or size >= BATCH_BYTES:
            return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), more


class UploadBody:
    """A streaming request body, read from the handler's thread (the handler runs in the thread pool, where
    ``anyio.from_thread`` reaches the event loop that owns ``receive``), or given whole when it was small
    enough to read first.

    ``chunks()`` yields the object's bytes as they arrive, decoded and checked on the way (aws-chunked
    framing, chunk signatures); ``finish()`` then checks the whole (length, SHA-256, Content-MD5, checksum)
    and returns the MD5 and checksums. A body that stops arriving for ``idle_seconds`` is S3's 400
    RequestTimeout.
    """

    def __init__(
        self,
        receive: Any,
        check: PayloadCheck,
        headers: dict[str, list[str]],
        idle_seconds: float,
        received: bytes | None = None,
    ) -> None:
        self._receive = receive
        self._check = check
        self._headers = headers
        self._idle = idle_seconds
        self._received = received
        self._algorithm: str | None = None
        self._decoder: PayloadDecoder | None = None
        self._pending: asyncio.Future[tuple[bytes, bool]] | None = None  # the next batch, being received
        self.complete = received is not None  # every byte of the request was read

    def require_checksum(self, algorithm: str) -> None:
        """Compute this checksum even if the client sends none (a multipart upload created with one)."""
        self._algorithm = algorithm

    def chunks(self) -> Iterator[bytes]:
        decoder = PayloadDecoder(self._check, self._headers, checksum_algorithm=self._algorithm)
        self._decoder = decoder
        if self._received is not None:
            decoded = decoder.feed(self._received)
            if decoded:
                yield decoded
            return
        try:
            while True:
                data, more = anyio.from_thread.run(self._take)
                if data:
                    decoded = decoder.feed(data)
                    if decoded:
                        yield decoded
                if not more:
                    self.complete = True
                    return
        finally:
            pending, self._pending = self._pending, None
            if pending is not None:
                with contextlib.suppress(RuntimeError):  # closed outside a worker thread: the loop is gone
                    anyio.from_thread.run_sync(_drop, pending)

    async def _take(self) -> tuple[bytes, bool]:
        """The next batch, and the one after it asked for at once: the event loop receives it while this
        thread hashes and writes the current one (on two cores, both at the same time)."""
        pending = self._pending or asyncio.ensure_future(receive_batch(self._receive, self._idle))
        self._pending = None
        data, more = await pending
        if more:
            self._pending = asyncio.ensure_future(receive_batch(self._receive, self._idle))
        return data, more

    def finish(self) -> Payload:
        if self._decoder is None or not self.complete:
            raise RuntimeError("finish() before the body was read")
        return self._decoder.finish()


def _drop(pending: asyncio.Future[Any]) -> None:
    """Stop receiving a batch nobody will read (the handler failed), without an unretrieved exception."""
    if not pending.done():
        pending.cancel()
    elif not pending.cancelled():
        pending.exception()


class S3Gateway:
    def __init__(
        self,
        server: Server,
        service: Service,
        authenticator: S3Authenticator,
        throttle: Throttle,
        metrics: Metrics,
        roots: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        self.service = service
        self.roots = roots or {}  # operation -> XML root element, where the model does not name it
        self.authenticator = authenticator
        self.throttle = throttle
        self.metrics = metrics
        self.router = restxml.Router(service.model)
        self.max_body = server.settings.max_body_bytes
        self.idle = server.settings.request_body_idle_seconds

    async def __call__(self, scope: Any, receive: Any, send: Any, headers: dict[str, list[str]]) -> None:
        started = time.perf_counter()
        request_id = next(_request_ids)
        method = scope["method"]
        operation = "unknown"
        state = {"body_read": False, "entered": False}
        body_stream: Any = None
        try:
            self.throttle.check()
            raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
            raw_query = scope.get("query_string", b"").decode("latin-1")
            identity = self.authenticator.verify(
                method=method, raw_path=raw_path, raw_query=raw_query, headers=headers
            )
            query = parse_qsl(
                scope.get("query_string", b"").decode("utf-8", "replace"), keep_blank_values=True
            )
            matched = self.router.match(method, raw_path, query, headers)
            if matched is None:
                raise errors.S3NotImplemented("MLHarbor's S3 does not implement this request")
            op_model, labels = matched
            operation = op_model.name
            handler = self.service.handlers.get(operation)
            if handler is None:
                raise errors.S3NotImplemented(f"MLHarbor's S3 does not implement {operation}")
            self.throttle.admit(identity.account_id, self.service.name, operation)
            streaming = _streaming_payload(op_model)
            received = None
            if streaming is not None:
                _require_length(headers)
                body = None
                declared = headers.get("content-length", [""])[0]
                if declared.isdigit() and int(declared) <= SMALL_BODY_BYTES:
                    received, _ = await receive_batch(receive, self.idle)
                    state["body_read"] = True
            else:
                body = await self._read_small_body(
                    receive, _body_headers(op_model, headers), identity.payload
                )
                state["body_read"] = True
            params = restxml.parse_request(op_model, labels, query, headers, body)
            try:
                params = parse_input(op_model.input_shape, params, Wire.QUERY)
            except errors.SerializationException as exc:  # e.g. U+0000 in a key: no S3 name can hold it
                raise errors.InvalidArgument(exc.message) from None
            if streaming is not None:
                body_stream = UploadBody(receive, identity.payload, headers, self.idle, received)
                params[streaming] = body_stream
            call = Call(
                self.server, self.service.name, operation, identity.account_id, identity.region, request_id,
                _endpoint(scope, headers),
            )  # fmt: skip
            self.throttle.enter()
            state["entered"] = True
            self.metrics.in_flight.inc()
            result = await run_in_threadpool(handler, call, params)
            result = result or {}
            status_override = result.pop(STATUS, None)
            raw = result.pop(RAW_BODY, None)
            if raw is not None:
                status, reply_headers, reply_body = 200, [(b"content-type", b"application/xml")], raw
            else:
                status, reply_headers, reply_body = restxml.serialize_response(
                    op_model, result, root=self.roots.get(operation)
                )
            status = status_override or status
        except errors.AwsError as exc:
            status, reply_headers, reply_body = self._error(exc, request_id, method)
        except errors.Neutral as exc:
            status, reply_headers, reply_body = self._error(
                self.service.dialect.translate(exc), request_id, method
            )
        except ClientGone:
            status, reply_headers, reply_body = 400, [], b""
        except Exception:
            log.exception("unhandled error in s3.%s request_id=%s", operation, request_id)
            status, reply_headers, reply_body = self._error(errors.InternalError(), request_id, method)
        finally:
            if state["entered"]:
                self.throttle.leave()
                self.metrics.in_flight.dec()
        if body_stream is not None:
            state["body_read"] = body_stream.complete
        reply_headers.append((b"x-amz-request-id", request_id.encode()))
        reply_headers.append((b"x-amz-id-2", _HOST_ID))
        if not state["body_read"] and _may_have_body(headers):
            # Answered before the whole body was read: what is left may never come. Answer and close.
            reply_headers.append((b"connection", b"close"))
        await self._send(scope, send, receive, status, reply_headers, reply_body, state["body_read"])
        self.metrics.observe(self.service.name, operation, status, time.perf_counter() - started)

    async def _read_small_body(
        self, receive: Any, headers: dict[str, list[str]], check: PayloadCheck
    ) -> bytes:
        declared = headers.get("content-length", [""])[0]
        if declared.isdigit() and int(declared) > self.max_body:
            raise errors.EntityTooLarge(MaxSizeAllowed=str(self.max_body))
        decoder = PayloadDecoder(check, headers)
        pieces: list[bytes] = []
        size = 0
        while True:
            data, more = await receive_batch(receive, self.idle)
            size += len(data)
            if size > self.max_body:
                raise errors.EntityTooLarge(MaxSizeAllowed=str(self.max_body))
            if data:
                pieces.append(decoder.feed(data))
            if not more:
                break
        decoder.finish()
        return b"".join(pieces)

    def _error(self, exc: errors.AwsError, request_id: str, method: str) -> tuple[int, list, Any]:
        headers: list[tuple[bytes, bytes]] = []
        if exc.status == 304:
            etag = exc.fields.get("ETag")
            if etag:
                headers.append((b"etag", str(etag).encode("latin-1")))
            return 304, headers, b""
        region = exc.fields.get("Region")
        if region:
            headers.append((b"x-amz-bucket-region", str(region).encode()))
        if method == "HEAD":
            return exc.status, headers, b""  # HEAD answers carry no body: clients see only the status
        body = restxml.error_body(exc.code, exc.message, request_id, exc.fields)
        headers.append((b"content-type", b"application/xml"))
        return exc.status, headers, body

    async def _send(
        self,
        scope: Any,
        send: Any,
        receive: Any,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: Any,
        body_read: bool,
    ) -> None:
        streamed = not isinstance(body, bytes | bytearray)
        if not streamed and not any(name == b"content-length" for name, _ in headers):
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["method"] == "HEAD" or not streamed:
            if streamed:
                await run_in_threadpool(_close, body)
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
            return
        await _stream(body, send, receive if body_read else None)


async def _stream(chunks: Iterator[bytes], send: Any, receive: Any) -> None:
    """Send an object's bytes, read in the thread pool, until they end or the reader goes away (uvicorn drops
    what is sent after a disconnect without a word, so the disconnect is watched for)."""
    gone = asyncio.ensure_future(receive()) if receive is not None else None
    try:
        while True:
            chunk = await run_in_threadpool(next, chunks, None)
            if chunk is None:
                break
            if gone is not None and gone.done():
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        if gone is not None:
            gone.cancel()
        await run_in_threadpool(_close, chunks)


def _close(chunks: Any) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _streaming_payload(op_model: Any) -> str | None:
    """The input member that is a streaming body (PutObject's and UploadPart's Body), if any."""
    if op_model.get_streaming_input() is None:
        return None
    return str(op_model.input_shape.serialization["payload"])


def _body_headers(op_model: Any, headers: dict[str, list[str]]) -> dict[str, list[str]]:
    """The headers that describe the request body. An operation without a request checksum in its model
    (CompleteMultipartUpload) may carry x-amz-checksum-* headers that describe the whole object, not the
    body: those are for the handler, not the body check."""
    if op_model.http_checksum:
        return headers
    return {k: v for k, v in headers.items() if not k.startswith("x-amz-checksum-")}


def _require_length(headers: dict[str, list[str]]) -> None:
    if "content-length" not in headers and "x-amz-decoded-content-length" not in headers:
        raise errors.MissingContentLength()


def _may_have_body(headers: dict[str, list[str]]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", ["0"])[0] not in ("", "0")


def _endpoint(scope: Any, headers: dict[str, list[str]]) -> str:
    host = headers.get("host", [""])[0]
    if not host and scope.get("server"):
        address, port = scope["server"][:2]
        host = f"{address}:{port}"
    return f"{scope.get('scheme', 'http')}://{host}"


def is_s3_request(method: str, query_string: bytes, headers: dict[str, list[str]]) -> bool:
    """Whether a request is for S3: signed for the ``s3`` scope (header or query), signed the SigV2 way, or
    unsigned and not a POST (every other service is POST, and their unsigned GETs are matched first)."""
    authorization = headers.get("authorization", [""])[0]
    if authorization:
        if authorization.startswith("AWS "):
            return True
        start = authorization.find("Credential=")
        if start < 0:
            return False
        scope = authorization[start + len("Credential=") :].split(",", 1)[0].strip().split("/")
        return len(scope) == 5 and scope[3] == "s3"
    if b"X-Amz-Credential=" in query_string:
        return b"%2Fs3%2Faws4_request" in query_string or b"/s3/aws4_request" in query_string
    if b"AWSAccessKeyId=" in query_string:
        return True
    return method != "POST"
