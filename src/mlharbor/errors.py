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
        # A class may name its code where the name would shadow a Python builtin (S3's NotImplemented).
        return getattr(type(self), "wire_code", None) or type(self).__name__


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


# --- Amazon S3 (services/s3, api/restxml.py, api/s3auth.py): S3's codes, statuses, standard messages ---
class AccessDenied(AwsError):
    status = 403
    default_message = "Access Denied"


class AuthorizationHeaderMalformed(AwsError):
    default_message = "The authorization header you provided is malformed."


class AuthorizationQueryParametersError(AwsError):
    default_message = "Error parsing the X-Amz-Credential parameter."


class BadDigest(AwsError):
    default_message = (
        "The Content-MD5 or checksum value that you specified did not match what the server received."
    )


class BucketAlreadyExists(AwsError):
    status = 409
    default_message = (
        "The requested bucket name is not available. The bucket namespace is shared by all users of the "
        "system. Please select a different name and try again."
    )


class BucketAlreadyOwnedByYou(AwsError):
    status = 409
    default_message = "Your previous request to create the named bucket succeeded and you already own it."


class BucketNotEmpty(AwsError):
    status = 409
    default_message = "The bucket you tried to delete is not empty"


class EntityTooLarge(AwsError):
    default_message = "Your proposed upload exceeds the maximum allowed size"


class EntityTooSmall(AwsError):
    default_message = "Your proposed upload is smaller than the minimum allowed object size."


class IllegalLocationConstraintException(AwsError):
    pass


class IncompleteBody(AwsError):
    default_message = "You did not provide the number of bytes specified by the Content-Length HTTP header."


class InternalError(AwsError):
    status = 500
    default_message = "We encountered an internal error. Please try again."


class InvalidAccessKeyId(AwsError):
    status = 403
    default_message = "The AWS Access Key Id you provided does not exist in our records."


class InvalidArgument(AwsError):
    pass


class InvalidBucketName(AwsError):
    default_message = "The specified bucket is not valid."


class InvalidDigest(AwsError):
    default_message = "The Content-MD5 or checksum value that you specified is not valid."


class InvalidPart(AwsError):
    default_message = (
        "One or more of the specified parts could not be found. The part might not have been uploaded, or "
        "the specified entity tag might not have matched the part's entity tag."
    )


class InvalidPartOrder(AwsError):
    default_message = "The list of parts was not in ascending order. Parts must be ordered by part number."


class InvalidRange(AwsError):
    status = 416
    default_message = "The requested range is not satisfiable"


class InvalidRequest(AwsError):
    pass


class KeyTooLongError(AwsError):
    default_message = "Your key is too long"


class MalformedXML(AwsError):
    default_message = (
        "The XML you provided was not well-formed or did not validate against our published schema"
    )


class MethodNotAllowed(AwsError):
    status = 405
    default_message = "The specified method is not allowed against this resource."


class MissingContentLength(AwsError):
    status = 411
    default_message = "You must provide the Content-Length HTTP header."


class NoSuchBucket(AwsError):
    status = 404
    default_message = "The specified bucket does not exist"


class NoSuchKey(AwsError):
    status = 404
    default_message = "The specified key does not exist."


class NoSuchUpload(AwsError):
    status = 404
    default_message = (
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been "
        "aborted or completed."
    )


class S3NotImplemented(AwsError):
    """S3's ``NotImplemented``: an operation or header it does not implement (the name is Python's)."""

    wire_code = "NotImplemented"
    status = 501
    default_message = "A header you provided implies functionality that is not implemented"


class NotModified(AwsError):
    status = 304
    default_message = "Not Modified"


class PreconditionFailed(AwsError):
    status = 412
    default_message = "At least one of the pre-conditions you specified did not hold"


class RequestTimeTooSkewed(AwsError):
    status = 403
    default_message = "The difference between the request time and the current time is too large."


class SignatureDoesNotMatch(AwsError):
    status = 403
    default_message = (
        "The request signature we calculated does not match the signature you provided. Check your key and "
        "signing method."
    )


class SlowDown(AwsError):
    status = 503
    default_message = "Please reduce your request rate."


class XAmzContentSHA256Mismatch(AwsError):
    default_message = "The provided 'x-amz-content-sha256' header does not match what was computed."
