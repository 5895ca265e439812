"""The front door: awsJson 1.1 (POST / + X-Amz-Target), Smithy RPC v2 CBOR
(POST /service/<Service>/operation/<Op>, which Comprehend's model lists first), rest-json (the
operation named by the request's method and path, as the model's ``http`` trait says: Kinesis Video) and
the query protocol (POST / with a form: the service named by the signature's credential scope, the
operation by the form's Action; SNS). Query services may also serve a few unsigned GETs (SNS's
SubscribeURL, UnsubscribeURL and signing certificate).

Order of checks, as AWS does: load shedding, body size, signature, operation, account rate,
decoding, model validation, then the handler. Whatever fails, nothing has been changed.

Receiving the body sits between body size and signature, under its own budget (``throttle.Receiving``:
a deadline, an idle timeout, a count whose overflow cuts off the slowest upload; 400
RequestTimeout, connection closed). A request takes its in-flight slot only once its body has arrived,
so clients that send their bodies slowly can never fill the slots; a full server still sheds a new
request before reading its body.

This is a plain ASGI app rather than a framework route: on the hot path the framework's request and
response objects cost more than the rest of the gateway together.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

import cbor2
from starlette.concurrency import run_in_threadpool

from mlharbor import errors
from mlharbor.api import query
from mlharbor.api.auth import Authenticator
from mlharbor.api.metrics import Metrics
from mlharbor.api.s3gateway import S3Gateway, is_s3_request
from mlharbor.api.services import DocumentHandler, Handler, Service, is_blocking, rest_routes
from mlharbor.api.shapes import Wire, parse_input, serialize_output
from mlharbor.api.throttle import Receiving, Throttle, Upload
from mlharbor.context import Call, Server

log = logging.getLogger("mlharbor.api")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON_CONTENT_TYPE = b"application/x-amz-json-1.1"
REST_JSON_CONTENT_TYPE = b"application/json"
CBOR_CONTENT_TYPE = b"application/cbor"
# Requests the front end cannot authenticate (api/auth.py): 400 on the awsJson services, 403 on rest-json.
_AUTHENTICATION_FAILURES = frozenset({
    "MissingAuthenticationTokenException", "UnrecognizedClientException", "InvalidSignatureException",
    "IncompleteSignatureException",
})  # fmt: skip


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


@dataclass(frozen=True, slots=True)
class Route:
    wire: Wire
    prefix: str | None  # the services key: X-Amz-Target prefix, rest-json service, "query:<signing name>"
    operation: str | None
    rest: bool = False  # rest-json: JSON bodies, errors with the model's HTTP status


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    stream: AsyncIterator[bytes] | None = None  # a streaming payload (GetMedia): sent chunk by chunk


def route_of(
    method: str, path: str, headers: dict[str, list[str]], rest: dict[tuple[str, str], tuple[str, str]]
) -> Route:
    if "x-amz-target" not in headers:
        if (method, path) in rest:
            key, operation = rest[(method, path)]
            return Route(Wire.JSON, key, operation, rest=True)
        if path == "/" and headers.get("content-type", [""])[0].lower().startswith(query.FORM_CONTENT_TYPE):
            # The query protocol names no service in the request: the signature's credential scope does.
            # The operation is the form's Action, known once the body has arrived.
            scope = _scope_service(headers)
            return Route(Wire.QUERY, f"query:{scope}" if scope else None, None)
    if path.startswith("/service/"):
        # /service/<ServiceName>/operation/<OperationName>
        parts = path.split("/")
        if len(parts) == 5 and parts[3] == "operation":
            return Route(Wire.CBOR, parts[2], parts[4])
        return Route(Wire.CBOR, None, None)
    target = headers.get("x-amz-target", [""])[0]
    prefix, dot, operation = target.partition(".")
    return Route(Wire.JSON, prefix if dot else None, operation if dot else None)


class Gateway:
    def __init__(
        self,
        server: Server,
        services: dict[str, Service],
        authenticator: Authenticator,
        throttle: Throttle,
        receiving: Receiving,
        metrics: Metrics,
        s3: S3Gateway | None = None,
    ) -> None:
        self.server = server
        # S3 (rest-xml) has its own front door: its bodies stream, it signs four ways and answers in XML.
        self.s3 = s3
        self.services = services
        self.authenticator = authenticator
        self.throttle = throttle
        self.receiving = receiving
        self.metrics = metrics
        self.max_body = server.settings.max_body_bytes
        self.rest = rest_routes(services)
        # Unsigned GET entry points of query services: Action -> (service, handler); path prefix -> document.
        self.unsigned: dict[str, tuple[Service, Handler]] = {}
        self.documents: list[tuple[str, Service, DocumentHandler]] = []
        for service in services.values():
            for action, handler in service.unsigned.items():
                if action in self.unsigned or action not in service.operations:
                    raise ValueError(f"unsigned action {action} is taken or not in {service.name}'s model")
                self.unsigned[action] = (service, handler)
            self.documents += [(prefix, service, handler) for prefix, handler in service.documents.items()]
        # The envelope of a query request whose service is unknown (no or another credential scope): the
        # query services' XML, in the namespace of the one there is.
        query_services = [s for s in services.values() if s.is_query]
        self.query_fallback = query_services[0] if len(query_services) == 1 else None
        metrics.receiving.set_function(lambda: receiving.count)  # read at scrape time: free per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        headers = _header_lists(scope)
        if self.s3 is not None and is_s3_request(scope["method"], scope.get("query_string", b""), headers):
            # An unsigned GET may still be one a query service serves (SNS's SubscribeURL).
            if not (
                scope["method"] == "GET"
                and "authorization" not in headers
                and await self._unsigned(scope, receive, send, headers, request_id, started)
            ):
                await self.s3(scope, receive, send, headers)
            return
        route = route_of(scope["method"], scope["path"], headers, self.rest)
        service = self.services.get(route.prefix or "")
        if service is not None and route.rest and scope["path"] in service.raw and scope["method"] == "POST":
            await self._raw(scope, receive, send, headers, request_id, service, started)
            return
        if scope["method"] == "GET" and await self._unsigned(
            scope, receive, send, headers, request_id, started
        ):
            return
        operation = route.operation if service and route.operation in service.operations else None
        entered = body_read = False
        try:
            self.throttle.check()
            if scope["method"] != "POST":
                raise errors.UnknownOperationException("Only POST is supported")
            body = await self._read_body(receive, headers)
            body_read = True
            if route.wire is Wire.QUERY:
                route = replace(route, operation=query.action_of(body))
                operation = route.operation if service and route.operation in service.operations else None
            self.throttle.enter()
            entered = True
            self.metrics.in_flight.inc()
            reply = await self._handle(scope, body, headers, request_id, route, service, operation)
        except errors.AwsError as exc:
            reply = self._error(exc, request_id, service, route.wire)
        except errors.Neutral as exc:
            reply = self._error(_translate(service, exc), request_id, service, route.wire)
        except ClientGone:
            reply = Reply(400, b"", [])
        except Exception:
            log.exception("unhandled error in %s.%s request_id=%s", route.prefix, route.operation, request_id)
            internal = service.dialect.internal() if service else errors.InternalServerException()
            reply = self._error(internal, request_id, service, route.wire)
        finally:
            if entered:
                self.throttle.leave()
                self.metrics.in_flight.dec()
        if not body_read and _may_have_body(headers):
            # Answered before its body was read (shed, too large, timed out): what is left of the body may
            # never come, and the server would go on reading it outside every budget. Answer and close.
            reply.headers.append((b"connection", b"close"))
        if reply.stream is None:
            reply.headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        if reply.stream is None:
            await send({"type": "http.response.body", "body": reply.body})
        else:
            await _stream(reply.stream, send, receive)
        self.metrics.observe(
            service.name if service else "unknown",
            operation or "unknown",
            reply.status,
            time.perf_counter() - started,
        )

    async def _handle(
        self,
        scope: Scope,
        body: bytes,
        headers: dict[str, list[str]],
        request_id: str,
        route: Route,
        service: Service | None,
        operation: str | None,
    ) -> Reply:
        raw_path = scope.get("raw_path")
        identity = self.authenticator.verify(
            method=scope["method"],
            path=raw_path.decode("latin-1").split("?", 1)[0] if raw_path else scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
            service=service.signing_name if service else None,
        )
        if route.wire is Wire.QUERY and (service is None or operation is None):
            if route.operation is None:
                raise errors.MissingAction()
            raise errors.InvalidAction(f"Could not find operation {route.operation}")
        if service is None or operation is None:
            raise errors.UnknownOperationException(
                f"Unknown operation {route.prefix}.{route.operation}"
                if route.prefix
                else "Missing operation target"
            )
        if route.wire is Wire.CBOR and "smithy-rpc-v2-cbor" not in service.model.metadata.get(
            "protocols", []
        ):
            prefix = service.model.metadata.get("targetPrefix", service.name)
            raise errors.UnknownOperationException(f"{prefix} does not speak rpc-v2-cbor")
        self.throttle.admit(identity.account_id, service.name, operation)
        op_model = service.operations[operation]
        decoded = (
            query.to_params(op_model.input_shape, query.decode_form(body))
            if route.wire is Wire.QUERY
            else _decode(body, route.wire)
        )
        params = parse_input(op_model.input_shape, decoded, route.wire)
        call = Call(
            self.server, service.name, operation, identity.account_id, identity.region, request_id,
            _endpoint(scope, headers),
        )  # fmt: skip
        return await self._invoke(service, service.handlers.get(operation), call, params, route)

    async def _invoke(
        self, service: Service, handler: Handler | None, call: Call, params: dict[str, Any], route: Route
    ) -> Reply:
        """Run the operation's handler and put its result on the route's wire."""
        operation, request_id = call.operation, call.request_id
        op_model = service.operations[operation]
        if handler is None:
            raise errors.NotImplementedException(
                f"MLHarbor does not implement {service.model.metadata['serviceId']} {operation} yet"
            )
        if is_blocking(handler):
            result = await run_in_threadpool(handler, call, params)
        else:
            result = handler(call, params)
            if inspect.isawaitable(result):  # a handler that waits on other processes (DetectEntities)
                result = await result
        output = op_model.output_shape
        if route.rest and output is not None and "payload" in output.serialization:
            return _payload_reply(output, result or {}, request_id)
        payload = serialize_output(output, result, route.wire)
        if route.wire is Wire.QUERY:
            return _xml_reply(200, query.encode_result(op_model, payload, request_id), request_id)
        return _encode(200, payload, route.wire, request_id, rest=route.rest)

    async def _unsigned(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, list[str]],
        request_id: str,
        started: float,
    ) -> bool:
        """Answer an unsigned GET that a query service serves (``/?Action=...`` whose action it lists, or one
        of its documents); False if the request is none of those. The body of a GET is never read."""
        path = scope["path"]
        service: Service | None = None
        operation = "unknown"
        try:
            if path == "/":
                query_string = scope.get("query_string", b"")
                target = self.unsigned.get(query.action_of(query_string) or "")
                if target is None:
                    return False
                service, handler = target
                fields = query.decode_form(query_string)
                operation = fields["Action"]
                self.throttle.check()
                self.throttle.admit("unsigned", service.name, operation)
                op_model = service.operations[operation]
                params = parse_input(
                    op_model.input_shape, query.to_params(op_model.input_shape, fields), Wire.QUERY
                )
                call = Call(
                    self.server, service.name, operation, "", "", request_id, _endpoint(scope, headers)
                )
                self.throttle.enter()
                try:
                    reply = await self._invoke(
                        service, handler, call, params, Route(Wire.QUERY, None, operation)
                    )
                finally:
                    self.throttle.leave()
            else:
                document = next(((s, h) for prefix, s, h in self.documents if path.startswith(prefix)), None)
                if document is None:
                    return False
                service, read = document
                operation = "GetDocument"
                self.throttle.check()
                found = await run_in_threadpool(read, self.server, path)
                reply = (
                    Reply(200, found[1], [(b"content-type", found[0].encode())])
                    if found is not None
                    else Reply(404, b"Not Found", [(b"content-type", b"text/plain")])
                )
        except errors.AwsError as exc:
            reply = self._error(exc, request_id, service, Wire.QUERY)
        except errors.Neutral as exc:
            reply = self._error(_translate(service, exc), request_id, service, Wire.QUERY)
        except Exception:
            log.exception("unhandled error in unsigned GET %s request_id=%s", path, request_id)
            internal = service.dialect.internal() if service else errors.InternalServerException()
            reply = self._error(internal, request_id, service, Wire.QUERY)
        reply.headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})
        self.metrics.observe(
            service.name if service else "unknown", operation, reply.status, time.perf_counter() - started
        )
        return True

    async def _raw(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, list[str]],
        request_id: str,
        service: Service,
        started: float,
    ) -> None:
        """An operation that streams both ways (PutMedia): signed as if its body were empty, as AWS's
        streaming APIs are; the handler reads the body and writes its own response."""
        operation, handler = service.raw[scope["path"]]
        responded = False
        status = 200

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal responded, status
            if message["type"] == "http.response.start":
                responded, status = True, message["status"]
            await send(message)

        try:
            self.throttle.check()
            raw_path = scope.get("raw_path")
            identity = self.authenticator.verify(
                method="POST",
                path=raw_path.decode("latin-1").split("?", 1)[0] if raw_path else scope["path"],
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=headers,
                body=b"",
                service=service.signing_name,
            )
            self.throttle.admit(identity.account_id, service.name, operation)
            call = Call(
                self.server, service.name, operation, identity.account_id, identity.region, request_id,
                _endpoint(scope, headers),
            )  # fmt: skip
            await handler(call, headers, receive, tracked)
            reply = None
        except errors.AwsError as exc:
            reply = self._error(exc, request_id, service, Wire.JSON)
        except errors.Neutral as exc:
            reply = self._error(_translate(service, exc), request_id, service, Wire.JSON)
        except Exception:
            log.exception("unhandled error in %s.%s request_id=%s", service.name, operation, request_id)
            reply = self._error(service.dialect.internal(), request_id, service, Wire.JSON)
        if reply is not None:
            if responded:
                log.error("%s.%s failed after its response started: request_id=%s", service.name, operation,
                          request_id)  # fmt: skip
            else:
                status = reply.status
                reply.headers += [
                    (b"connection", b"close"),
                    (b"content-length", str(len(reply.body)).encode()),
                ]
                await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
                await send({"type": "http.response.body", "body": reply.body})
        self.metrics.observe(service.name, operation, status, time.perf_counter() - started)

    async def _read_body(self, receive: Receive, headers: dict[str, list[str]]) -> bytes:
        declared = headers.get("content-length", [""])[0]
        if declared.isdigit() and int(declared) > self.max_body:
            raise errors.RequestEntityTooLargeException(f"Request body exceeds {self.max_body} bytes")
        upload = self.receiving.start()
        try:
            return await self._receive_pieces(receive, upload)
        finally:
            self.receiving.finish(upload)

    async def _receive_pieces(self, receive: Receive, upload: Upload) -> bytes:
        # Between receiving.start and finish, ``await receive()`` must stay the only suspension point:
        # that is where a cut-off upload's cancellation has to land.
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not upload.cut:
                    raise  # not ours (server shutdown)
                upload.task.uncancel()  # the request goes on, to answer with an error
                raise errors.RequestTimeout() from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise errors.RequestEntityTooLargeException(f"Request body exceeds {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
            self.receiving.progress(upload, size)

    def _error(self, exc: errors.AwsError, request_id: str, service: Service | None, wire: Wire) -> Reply:
        if wire is Wire.QUERY:
            known = service or self.query_fallback
            status, body = query.encode_error(exc, known.model if known else None, request_id)
            return _xml_reply(status, body, request_id)
        code = exc.code
        body: dict[str, Any]
        if wire is Wire.CBOR and service is not None:
            body = {"__type": f"{service.error_namespace}#{code}", "Message": exc.message}
        else:
            body = {"__type": code}
            if service is not None and service.dialect.code_and_logref:
                body["Code"] = code
                body["Logref"] = request_id
            body["Message"] = exc.message
        body.update({k: v for k, v in exc.fields.items() if v is not None})
        rest = service is not None and service.is_rest
        # rest-json: the status the model gives the code (ResourceNotFoundException is 404 there). The awsJson
        # services keep errors.py's (their Coral front ends answer 400 whatever newer models say).
        status = service.error_statuses.get(code, exc.status) if rest and service else exc.status
        if rest and code in _AUTHENTICATION_FAILURES:
            status = 403  # Kinesis Video answers a bad or missing signature 403 Forbidden (PutMedia included)
        reply = _encode(status, body, wire if service is not None else Wire.JSON, request_id, rest=rest)
        reply.headers.append((b"x-amzn-errortype", code.encode()))
        return reply


def _payload_reply(output: Any, result: dict[str, Any], request_id: str) -> Reply:
    """rest-json output whose body is one member (GetMedia's video): the others travel as headers."""
    headers = [(b"x-amzn-requestid", request_id.encode())]
    for name, member in output.members.items():
        location_name = member.serialization.get("name", name)
        if member.serialization.get("location") == "header" and result.get(name) is not None:
            headers.append((location_name.lower().encode(), str(result[name]).encode("latin-1")))
    body = result.get(output.serialization["payload"], b"")
    if isinstance(body, bytes):
        return Reply(200, body, headers)
    return Reply(200, b"", headers, stream=body)


async def _stream(chunks: AsyncIterator[bytes], send: Send, receive: Receive) -> None:
    """Send a streaming payload until it ends or the reader goes away. uvicorn drops what is sent after a
    disconnect without a word, so the disconnect is watched for; a payload that waits for data (a live
    GetMedia) yields empty chunks now and then to be told."""
    gone = asyncio.ensure_future(receive())  # the body was read: the next message is the disconnect
    try:
        async for chunk in chunks:
            if gone.done():
                return
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        gone.cancel()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _xml_reply(status: int, body: bytes, request_id: str) -> Reply:
    return Reply(
        status, body, [(b"content-type", query.CONTENT_TYPE), (b"x-amzn-requestid", request_id.encode())]
    )


def _scope_service(headers: dict[str, list[str]]) -> str | None:
    """The service named by the SigV4 credential scope (Credential=AKID/date/region/SERVICE/aws4_request)."""
    authorization = headers.get("authorization", [""])[0]
    start = authorization.find("Credential=")
    if start < 0:
        return None
    scope = authorization[start + len("Credential=") :].split(",", 1)[0].strip().split("/")
    return scope[3] if len(scope) == 5 else None


def _translate(service: Service | None, exc: errors.Neutral) -> errors.AwsError:
    if service is not None:
        return service.dialect.translate(exc)
    if isinstance(exc, errors.ServerOverloaded):
        return errors.ThrottlingException()
    return errors.InternalServerException()


def _may_have_body(headers: dict[str, list[str]]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", ["0"])[0] not in ("", "0")


def _header_lists(scope: Scope) -> dict[str, list[str]]:
    # ASGI servers lower-case header names already.
    out: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        out.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return out


def _decode(body: bytes, wire: Wire) -> Any:
    # Only JSON has whitespace: in CBOR, b" " is the integer -1 and b"\n" the integer 10, not an empty body.
    if not (body.strip() if wire is Wire.JSON else body):
        return {}
    try:
        return json.loads(body) if wire is Wire.JSON else cbor2.loads(body)
    except (ValueError, cbor2.CBORDecodeError, UnicodeDecodeError, RecursionError):
        raise errors.SerializationException(
            "Request body is not valid JSON" if wire is Wire.JSON else "Request body is not valid CBOR"
        ) from None


def _endpoint(scope: Scope, headers: dict[str, list[str]]) -> str:
    """The base URL the client reached: its Host header (what it can reach again), else the socket."""
    host = headers.get("host", [""])[0]
    if not host and scope.get("server"):
        address, port = scope["server"][:2]
        host = f"{address}:{port}"
    return f"{scope.get('scheme', 'http')}://{host}"


def _encode(status: int, payload: dict[str, Any], wire: Wire, request_id: str, rest: bool = False) -> Reply:
    rid = (b"x-amzn-requestid", request_id.encode())
    if wire is Wire.CBOR:
        content = cbor2.dumps(payload, datetime_as_timestamp=True)
        return Reply(
            status, content, [(b"content-type", CBOR_CONTENT_TYPE), rid, (b"smithy-protocol", b"rpc-v2-cbor")]
        )
    content = json.dumps(payload, separators=(",", ":")).encode()
    content_type = REST_JSON_CONTENT_TYPE if rest else JSON_CONTENT_TYPE
    return Reply(status, content, [(b"content-type", content_type), rid])
