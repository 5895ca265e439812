"""AWS errors. Each class is named exactly like the AWS error code it puts on the wire.

Services raise these; the protocol layer turns them into each service's envelope. A few
conditions are spelled differently by the two services (constraint violations, throttling,
internal errors, bad pagination tokens); for those, raise the service-neutral error at the
bottom of this file and the service's dialect (api/services.py) picks the AWS code.
"""

from __future__ import annotations


class AwsError(Exception):
    """An error the client sees. ``code`` is the class name; ``status`` the HTTP status."""

    status: int = 400
    default_message: str = ""

    def __init__(self, message: str | None = None, **fields: object) -> None:
        self.message = message if message is not None else self.default_message
        # Extra modelled members (e.g. Comprehend InvalidRequestException.Reason).
        self.fields = fields
        super().__init__(self.message)

    @property
    def code(self) -> str:
        return type(self).__name__


# --- Protocol and authentication (both services) ----------------------------------------------------
class UnknownOperationException(AwsError):
    pass


class SerializationException(AwsError):
    pass


class RequestEntityTooLargeException(AwsError):
    status = 413
    default_message = "Request body is too large"


class RequestTimeout(AwsError):
    """The request body did not arrive in time. S3's code and message; the SDKs retry it as transient."""

    default_message = (
        "Your socket connection to the server was not read from or written to within the timeout period. "
        "Idle connections will be closed."
    )


class NotImplementedException(AwsError):
    """An operation of the service that MLHarbor does not implement yet (never a fake success)."""

    status = 501


class MissingAuthenticationTokenException(AwsError):
    default_message = "Missing Authentication Token"


class UnrecognizedClientException(AwsError):
    default_message = "The security token included in the request is invalid."


class InvalidSignatureException(AwsError):
    pass


class IncompleteSignatureException(AwsError):
    pass


class AccessDeniedException(AwsError):
    pass


class ValidationException(AwsError):
    """Comprehend's (Coral's) constraint-violation error; not in Comprehend's model but what it sends."""


# --- Rekognition ---------------------------------------------------------------------------------------
class ConflictException(AwsError):
    pass


class HumanLoopQuotaExceededException(AwsError):
    pass


class IdempotentParameterMismatchException(AwsError):
    pass


class ImageTooLargeException(AwsError):
    pass


class InternalServerError(AwsError):
    status = 500
    default_message = "Internal server error"


class InvalidImageFormatException(AwsError):
    pass


class InvalidManifestException(AwsError):
    pass


class InvalidPaginationTokenException(AwsError):
    default_message = "Invalid Pagination Token"


class InvalidParameterException(AwsError):
    default_message = "Request has invalid parameters"


class InvalidPolicyRevisionIdException(AwsError):
    pass


class InvalidS3ObjectException(AwsError):
    pass


class LimitExceededException(AwsError):
    pass


class MalformedPolicyDocumentException(AwsError):
    pass


class ProvisionedThroughputExceededException(AwsError):
    default_message = "Provisioned rate exceeded"


class ResourceAlreadyExistsException(AwsError):
    pass


class ResourceNotReadyException(AwsError):
    pass


class ServiceQuotaExceededException(AwsError):
    pass


class SessionNotFoundException(AwsError):
    pass


class ThrottlingException(AwsError):
    # Rekognition's API reference documents ThrottlingException as a 5xx "Service Unavailable".
    status = 500
    default_message = "Slow down"


class VideoTooLargeException(AwsError):
    pass


# --- Both services ---------------------------------------------------------------------------------------
class ResourceInUseException(AwsError):
    pass


class ResourceNotFoundException(AwsError):
    pass


# --- Kinesis Video Streams (statuses come from the model: ResourceNotFoundException is 404 there) ----------
class InvalidArgumentException(AwsError):
    pass


class ClientLimitExceededException(AwsError):
    default_message = "Your request was throttled."


class AccountStreamLimitExceededException(AwsError):
    pass


class VersionMismatchException(AwsError):
    pass


class TagsPerResourceExceededLimitException(AwsError):
    pass


class NotAuthorizedException(AwsError):
    status = 401


class ConnectionLimitExceededException(AwsError):
    pass


class NoDataRetentionException(AwsError):
    default_message = "The stream has no data retention: it keeps no archive to read."


class UnsupportedStreamMediaTypeException(AwsError):
    pass


class MissingCodecPrivateDataException(AwsError):
    pass


class InvalidCodecPrivateDataException(AwsError):
    pass


class InvalidMediaFrameException(AwsError):
    pass


# --- Kinesis Data Streams (InvalidArgumentException, ResourceNotFoundException, ... are above) -------------
class ExpiredIteratorException(AwsError):
    pass


class ExpiredNextTokenException(AwsError):
    pass


class InternalFailureException(AwsError):
    status = 500
    default_message = "Internal service failure."


# --- Comprehend ---------------------------------------------------------------------------------------------
class BatchSizeLimitExceededException(AwsError):
    pass


class ConcurrentModificationException(AwsError):
    pass


class InternalServerException(AwsError):
    status = 500
    default_message = "Internal server error"


class InvalidFilterException(AwsError):
    pass


class InvalidRequestException(AwsError):
    pass


class JobNotFoundException(AwsError):
    pass


class KmsKeyValidationException(AwsError):
    pass


class ResourceLimitExceededException(AwsError):
    pass


class ResourceUnavailableException(AwsError):
    pass


class TextSizeLimitExceededException(AwsError):
    pass


class TooManyRequestsException(AwsError):
    default_message = "Rate exceeded"


class TooManyTagKeysException(AwsError):
    pass


class TooManyTagsException(AwsError):
    pass


class UnsupportedLanguageException(AwsError):
    pass


# --- Service-neutral conditions, translated by each service's dialect ----------------------------------
class Neutral(Exception):
    """Raised by shared code that does not know which service it serves."""


class ConstraintViolations(Neutral):
    """Input violates the model's constraints. ``violations`` are (camelPath, value, constraint)."""

    def __init__(self, violations: list[tuple[str, object, str]]) -> None:
        self.violations = violations
        super().__init__(coral_validation_message(violations))


class BadPaginationToken(Neutral):
    pass


class AccountThrottled(Neutral):
    """The caller's (account, operation) token bucket is empty."""


class ServerOverloaded(Neutral):
    """Too many requests in flight: shed load instead of queueing without bound."""


def coral_validation_message(violations: list[tuple[str, object, str]]) -> str:
    """AWS's wording: "2 validation errors detected: Value 'x' at 'a.b' failed to satisfy constraint: ..."."""
    parts = []
    for path, value, constraint in violations:
        shown = "null" if value is None else f"'{value}'"
        parts.append(f"Value {shown} at '{path}' failed to satisfy constraint: {constraint}")
    count = len(violations)
    noun = "error" if count == 1 else "errors"
    return f"{count} validation {noun} detected: " + "; ".join(parts)


def by_code(code: str) -> type[AwsError] | None:
    """The error class for an AWS code, if this module defines one."""
    cls = globals().get(code)
    if isinstance(cls, type) and issubclass(cls, AwsError):
        return cls
    return None


# --- Query protocol (api/query.py): its common errors, for any query service --------------------------------
class InvalidAction(AwsError):
    default_message = "The action or operation requested is invalid."


class MissingAction(AwsError):
    default_message = "The request must contain the parameter Action."


class MalformedQueryString(AwsError):
    pass


class InvalidParameterValue(AwsError):
    pass


# --- SNS (the model's error shapes; api/query.py puts each on the wire under the model's code and status) ---
class AuthorizationErrorException(AwsError):
    status = 403


class BatchEntryIdsNotDistinctException(AwsError):
    pass


class BatchRequestTooLongException(AwsError):
    pass


class ConcurrentAccessException(AwsError):
    pass


class EmptyBatchRequestException(AwsError):
    pass


class EndpointDisabledException(AwsError):
    pass


class FilterPolicyLimitExceededException(AwsError):
    status = 403


class InternalErrorException(AwsError):
    status = 500
    default_message = "Internal error"


class InvalidBatchEntryIdException(AwsError):
    pass


class InvalidParameterValueException(AwsError):
    pass


class InvalidSecurityException(AwsError):
    status = 403


class InvalidStateException(AwsError):
    pass


class KMSAccessDeniedException(AwsError):
    pass


class KMSDisabledException(AwsError):
    pass


class KMSInvalidStateException(AwsError):
    pass


class KMSNotFoundException(AwsError):
    pass


class KMSOptInRequired(AwsError):
    status = 403


class KMSThrottlingException(AwsError):
    pass


class NotFoundException(AwsError):
    status = 404


class OptedOutException(AwsError):
    pass


class PlatformApplicationDisabledException(AwsError):
    pass


class ReplayLimitExceededException(AwsError):
    status = 403


class StaleTagException(AwsError):
    pass


class SubscriptionLimitExceededException(AwsError):
    status = 403


class TagLimitExceededException(AwsError):
    pass


class TagPolicyException(AwsError):
    pass


class ThrottledException(AwsError):
    status = 429
    default_message = "Rate exceeded"


class TooManyEntriesInBatchRequestException(AwsError):
    pass


class TopicLimitExceededException(AwsError):
    status = 403


class UserErrorException(AwsError):
    pass


class VerificationException(AwsError):
    pass
