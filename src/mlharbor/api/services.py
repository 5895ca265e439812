"""The services MLHarbor speaks: their botocore models, handlers and error dialects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel

from mlharbor import errors
from mlharbor.context import Call

Handler = Callable[[Call, dict[str, Any]], Any]  # returns the output dict (or None), or awaits it
# An operation that is not in the model and talks ASGI itself (PutMedia: the body streams in while its
# answer streams out). It gets the authenticated call and the request's headers, and raises AwsError
# only before it has started its response.
RawHandler = Callable[[Call, dict[str, list[str]], Any, Any], Awaitable[None]]
# A document served by an unsigned GET (SNS's signing certificate): the server and the request's path in,
# (content type, body) out, or None when there is no such document (404).
DocumentHandler = Callable[[Any, str], tuple[str, bytes] | None]


def blocking(handler: Handler) -> Handler:
    """Mark a handler that may wait (object store, network, heavy compute): it runs in a thread.

    Unmarked handlers run on the event loop. They must do only short store work: a thread hand-off
    costs more than an indexed SQLite query, and on two cores the hand-offs (and the GIL contention
    they bring) dominated request latency.
    """
    handler.blocking = True  # type: ignore[attr-defined]
    return handler


def is_blocking(handler: Handler) -> bool:
    return getattr(handler, "blocking", False)


@dataclass(frozen=True)
class Dialect:
    """How one service spells the conditions shared code raises without knowing the service."""

    validation: Callable[[errors.ConstraintViolations], errors.AwsError]
    bad_token: type[errors.AwsError]
    throttled: type[errors.AwsError]
    overloaded: type[errors.AwsError]
    internal: type[errors.AwsError]
    # Rekognition's documented error body also carries "Code" and "Logref".
    code_and_logref: bool

    def translate(self, exc: errors.Neutral) -> errors.AwsError:
        if isinstance(exc, errors.ConstraintViolations):
            return self.validation(exc)
        if isinstance(exc, errors.BadPaginationToken):
            return self.bad_token(str(exc) or None)
        if isinstance(exc, errors.AccountThrottled):
            return self.throttled()
        if isinstance(exc, errors.ServerOverloaded):
            return self.overloaded()
        return self.internal()


def _rekognition_validation(violations: errors.ConstraintViolations) -> errors.AwsError:
    # Image bytes over the model's 5 MB are AWS's ImageTooLargeException, not a parameter error.
    if any(path == "image.bytes" and "less than or equal" in rule for path, _, rule in violations.violations):
        return errors.ImageTooLargeException("Image size is too large.")
    return errors.InvalidParameterException(str(violations))


REKOGNITION_DIALECT = Dialect(
    validation=_rekognition_validation,
    bad_token=errors.InvalidPaginationTokenException,
    throttled=errors.ProvisionedThroughputExceededException,
    overloaded=errors.ThrottlingException,
    internal=errors.InternalServerError,
    code_and_logref=True,
)

COMPREHEND_DIALECT = Dialect(
    validation=lambda v: errors.ValidationException(str(v)),
    bad_token=errors.InvalidRequestException,
    throttled=errors.TooManyRequestsException,
    overloaded=errors.TooManyRequestsException,
    internal=errors.InternalServerException,
    code_and_logref=False,
)


KINESIS_VIDEO_DIALECT = Dialect(
    validation=lambda v: errors.InvalidArgumentException(str(v)),
    bad_token=errors.InvalidArgumentException,
    throttled=errors.ClientLimitExceededException,
    overloaded=errors.ClientLimitExceededException,
    internal=errors.InternalServerException,
    code_and_logref=False,
)


KINESIS_DIALECT = Dialect(
    validation=lambda v: errors.ValidationException(str(v)),
    bad_token=errors.InvalidArgumentException,
    throttled=errors.LimitExceededException,
    overloaded=errors.LimitExceededException,
    internal=errors.InternalFailureException,
    code_and_logref=False,
)


S3_DIALECT = Dialect(
    validation=lambda v: errors.InvalidArgument(str(v)),
    bad_token=errors.InvalidArgument,
    throttled=errors.SlowDown,
    overloaded=errors.SlowDown,
    internal=errors.InternalError,
    code_and_logref=False,
)


SNS_DIALECT = Dialect(
    validation=lambda v: errors.InvalidParameterException(str(v)),
    bad_token=errors.InvalidParameterException,
    throttled=errors.ThrottledException,
    overloaded=errors.ThrottledException,
    internal=errors.InternalErrorException,
    code_and_logref=False,
)


@dataclass(frozen=True)
class Service:
    name: str  # botocore service name, e.g. "rekognition"
    dialect: Dialect
    handlers: Mapping[str, Handler]
    # path -> (operation name, handler) for operations the model does not describe (always POST)
    raw: Mapping[str, tuple[str, RawHandler]] = field(default_factory=dict)
    # Query services: actions also served as an unsigned GET /?Action=...&..., for requests that carry their
    # own secret (SNS's SubscribeURL and UnsubscribeURL tokens). The Call has no account or region: the
    # handler takes them from its parameters. Their model operation gives the input and output shapes.
    unsigned: Mapping[str, Handler] = field(default_factory=dict)
    # Path prefix -> documents served by unsigned GET (SNS's SigningCertURL).
    documents: Mapping[str, DocumentHandler] = field(default_factory=dict)

    @cached_property
    def model(self) -> ServiceModel:
        return botocore.session.get_session().get_service_model(self.name)

    @cached_property
    def is_rest(self) -> bool:
        return self.model.metadata["protocol"] == "rest-json"

    @cached_property
    def is_query(self) -> bool:
        return self.model.metadata["protocol"] == "query"

    @cached_property
    def is_rest_xml(self) -> bool:
        return self.model.metadata["protocol"] == "rest-xml"

    @cached_property
    def key(self) -> str:
        """How requests name the service: the X-Amz-Target prefix, (rest-json, rest-xml) the service name, or
        (query, dispatched by the credential scope) ``query:`` and the signing name."""
        if self.is_query:
            return f"query:{self.signing_name}"
        return self.name if self.is_rest or self.is_rest_xml else self.model.metadata["targetPrefix"]

    @cached_property
    def target_prefix(self) -> str:
        return self.model.metadata["targetPrefix"]

    @cached_property
    def rest_routes(self) -> dict[tuple[str, str], str]:
        """(method, path) -> operation, for a rest-json service whose operations have fixed paths."""
        return {(op.http["method"], op.http["requestUri"]): name for name, op in self.operations.items()}

    @cached_property
    def error_statuses(self) -> dict[str, int]:
        """The HTTP status the model gives each of the service's error codes (rest-json relies on it)."""
        return {
            shape.name: shape.metadata["error"]["httpStatusCode"]
            for op in self.operations.values()
            for shape in op.error_shapes
            if "httpStatusCode" in shape.metadata.get("error", {})
        }

    @cached_property
    def signing_name(self) -> str:
        return self.model.metadata.get("signingName") or self.model.metadata["endpointPrefix"]

    @cached_property
    def error_namespace(self) -> str:
        return f"com.amazonaws.{self.model.metadata['endpointPrefix']}"

    @cached_property
    def operations(self) -> dict[str, OperationModel]:
        return {name: self.model.operation_model(name) for name in self.model.operation_names}


def build_services() -> dict[str, Service]:
    """Target prefix -> service. Imported late so handlers can import shared modules freely."""
    from mlharbor.services.comprehend.operations import OPERATIONS as COMPREHEND_OPERATIONS
    from mlharbor.services.kinesis.operations import OPERATIONS as KINESIS_OPERATIONS
    from mlharbor.services.kinesisvideo.archive import OPERATIONS as ARCHIVED_MEDIA_OPERATIONS
    from mlharbor.services.kinesisvideo.ingest import put_media
    from mlharbor.services.kinesisvideo.media import OPERATIONS as MEDIA_OPERATIONS
    from mlharbor.services.kinesisvideo.operations import OPERATIONS as KINESIS_VIDEO_OPERATIONS
    from mlharbor.services.rekognition.operations import OPERATIONS as REKOGNITION_OPERATIONS
    from mlharbor.services.s3.operations import OPERATIONS as S3_OPERATIONS
    from mlharbor.services.sns import operations as sns

    services = [
        Service("rekognition", REKOGNITION_DIALECT, REKOGNITION_OPERATIONS),
        Service("comprehend", COMPREHEND_DIALECT, COMPREHEND_OPERATIONS),
        Service(
            "kinesisvideo",
            KINESIS_VIDEO_DIALECT,
            KINESIS_VIDEO_OPERATIONS,
            raw={"/putMedia": ("PutMedia", put_media)},
        ),
        Service("kinesis-video-media", KINESIS_VIDEO_DIALECT, MEDIA_OPERATIONS),
        Service("kinesis-video-archived-media", KINESIS_VIDEO_DIALECT, ARCHIVED_MEDIA_OPERATIONS),
        Service("sns", SNS_DIALECT, sns.OPERATIONS, unsigned=sns.UNSIGNED, documents=sns.DOCUMENTS),
        Service("kinesis", KINESIS_DIALECT, KINESIS_OPERATIONS),
        Service("s3", S3_DIALECT, S3_OPERATIONS),
    ]
    for service in services:
        # Load models and resolve every shape now, before the port opens, so no request pays for it.
        for op in service.operations.values():
            _ = op.input_shape, op.output_shape, op.error_shapes
    return {s.key: s for s in services}


def rest_routes(services: dict[str, Service]) -> dict[tuple[str, str], tuple[str, str]]:
    """(method, path) -> (service key, operation) over every rest-json service, raw operations included."""
    routes: dict[tuple[str, str], tuple[str, str]] = {}
    for service in services.values():
        if service.is_rest:
            raw = {("POST", path): operation for path, (operation, _) in service.raw.items()}
            for route, operation in {**service.rest_routes, **raw}.items():
                if route in routes:
                    raise ValueError(f"{route} is served by two services")
                routes[route] = (service.key, operation)
    return routes
