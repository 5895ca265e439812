"""The console's actions are the API's operations: the same model validation, handler and errors, run for the
signed-in account and region (Start/Stop buttons, SearchFacesByImage, DetectEntities, ...)."""

from __future__ import annotations

import inspect
import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool

from mlharbor import errors
from mlharbor.api.services import Service, is_blocking
from mlharbor.api.shapes import Wire, parse_input, serialize_output
from mlharbor.api.throttle import Throttle
from mlharbor.console.session import Who
from mlharbor.context import Call, Server

# Operations answering a byte stream or holding a request open: the console has its own media routes.
NOT_INVOKABLE = frozenset({"GetMedia", "PutMedia", "GetClip", "GetMediaForFragmentList", "GetObject"})
# S3's handlers take rest-xml requests (bodies streamed in, headers): not callable with a JSON input.
NOT_INVOKABLE_SERVICES = frozenset({"s3"})


class Operations:
    def __init__(self, server: Server, services: dict[str, Service], throttle: Throttle) -> None:
        self.server = server
        self.throttle = throttle  # the API's own buckets: a console call counts against the account's rate
        self.by_name = {
            service.name: service
            for service in services.values()
            if service.name not in NOT_INVOKABLE_SERVICES
        }

    async def invoke(
        self, who: Who, service_name: str, operation: str, params: Any, endpoint: str = ""
    ) -> dict[str, Any]:
        """Run one operation as ``who``; returns its output as the awsJson wire has it (epoch timestamps,
        base64 blobs). Raises AwsError exactly as the API would answer."""
        service = self.by_name.get(service_name)
        if service is None or operation not in service.operations or operation in NOT_INVOKABLE:
            raise errors.UnknownOperationException(f"Unknown operation {service_name}.{operation}")
        handler = service.handlers.get(operation)
        if handler is None:
            raise errors.NotImplementedException(f"MLHarbor does not implement {operation} yet")
        op_model = service.operations[operation]
        try:
            self.throttle.admit(who.account_id, service.name, operation)
            parsed = parse_input(op_model.input_shape, params, Wire.JSON)
        except errors.Neutral as exc:
            raise service.dialect.translate(exc) from None
        call = Call(
            self.server, service.name, operation, who.account_id, who.region, str(uuid.uuid4()), endpoint
        )
        try:
            if is_blocking(handler):
                result = await run_in_threadpool(handler, call, parsed)
            else:
                result = handler(call, parsed)
                if inspect.isawaitable(result):
                    result = await result
        except errors.Neutral as exc:
            raise service.dialect.translate(exc) from None
        return serialize_output(op_model.output_shape, result, Wire.JSON)
