"""Authentication of S3 requests: SigV4 and SigV2, each in the Authorization header or in a presigned URL.

S3 signs differently from the JSON services (api/auth.py, whose key derivation and date parsing are reused):

* the canonical URI is the path exactly as sent (no normalisation, no second encoding);
* the payload hash in the canonical request is whatever ``x-amz-content-sha256`` claims: a hex digest, or a
  literal saying the body is unsigned or comes in (signed) aws-chunked framing. The body itself is checked
  later, as it streams, by ``s3payload.PayloadDecoder`` from the ``PayloadCheck`` returned here;
* boto3 still presigns with SigV2 in us-east-1 by default, so SigV2 (HMAC-SHA1) is verified too.

Signatures cover bytes. Headers are expected as the ASGI layer decodes them (latin-1, lower-case names, every
value kept), so every string here is kept in that "latin-1 form" (one char per byte as sent) and encoded back
with latin-1 before hashing: botocore signs a header value's UTF-8 bytes and sends exactly those bytes.
Percent-decoded query values are brought into the same form (``_unquote``).
Error codes and messages follow what S3 sends; fields become extra elements of the XML error document.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from hashlib import sha1, sha256
from operator import itemgetter
from typing import Literal
from urllib.parse import quote, unquote_to_bytes

from botocore.auth import HmacV1Auth

from mlharbor.api.auth import ALGORITHM, _parse_amz_date, _signing_key
from mlharbor.config import Credential
from mlharbor.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    AwsError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    RequestTimeTooSkewed,
    SignatureDoesNotMatch,
)

PayloadMode = Literal["sha256", "unsigned", "signed-chunks", "unsigned-chunks"]

SERVICE = "s3"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
MAX_PRESIGN_EXPIRES = 604_800  # S3's limit for SigV4 presigned URLs: one week
MAX_SKEW_SECONDS = 900  # S3's: 15 minutes

_BAD_CONTENT_SHA256 = (
    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD, STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER or a valid "
    "sha256 value."
)
_MALFORMED_CREDENTIAL = (
    'the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
)
_NO_DATE = "AWS authentication requires a valid Date or x-amz-date header"
_V4_QUERY_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)
_V4_MISSING_PARAMS = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, "
    "X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)
# The query parameters SigV2 signs as sub-resources: botocore's own list, so its signer and this verifier
# cannot disagree.
_V2_SUBRESOURCES = frozenset(HmacV1Auth.QSAOfInterest)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}").fullmatch
_UNRESERVED = re.compile(r"[A-Za-z0-9\-_.~]*").fullmatch
_DIGITS = re.compile(r"[0-9]{1,12}").fullmatch
# ASCII whitespace only: strings here are in latin-1 form, where str.strip() would also eat 0x85 and 0xA0.
_SPACE = " \t\r\n\x0b\x0c"
_SPACES = re.compile(r"[ \t\r\n\x0b\x0c]+")


@dataclass(frozen=True, slots=True)
class PayloadCheck:
    """What the signature says about the body; s3payload.PayloadDecoder enforces it."""

    mode: PayloadMode
    sha256: str | None = None  # mode "sha256": the hex digest the signature covers (lower case)
    trailer: bool = False  # chunked modes: trailing headers follow the last chunk (...-TRAILER)
    seed_signature: str = ""  # "signed-chunks": the request's own signature, first link of the chain
    signing_key: bytes = b""  # "signed-chunks": the SigV4 signing key of the request's scope
    amz_date: str = ""  # "signed-chunks": the request's X-Amz-Date
    scope: str = ""  # "signed-chunks": date/region/s3/aws4_request


@dataclass(frozen=True, slots=True)
class S3Identity:
    account_id: str
    access_key_id: str
    region: str  # the SigV4 credential scope's region; "" for SigV2 (no region in the signature)
    payload: PayloadCheck
    presigned: bool


# Shared instances: most requests need one of these and nothing request-specific.
_UNSIGNED = PayloadCheck("unsigned")
_UNSIGNED_TRAILER = PayloadCheck("unsigned-chunks", trailer=True)
_EMPTY_SHA256 = PayloadCheck("sha256", sha256=sha256(b"").hexdigest())


@dataclass(frozen=True, slots=True)
class _V4Scope:
    access_key_id: str
    date: str
    region: str
    service: str
    terminal: str


class S3Authenticator:
    def __init__(
        self, credentials: dict[str, Credential], *, clock_skew_seconds: int = MAX_SKEW_SECONDS
    ) -> None:
        self._credentials = credentials
        self._skew = clock_skew_seconds

    def verify(
        self,
        *,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: dict[str, list[str]],
        now: datetime | None = None,
    ) -> S3Identity:
        """Who signed this request, and what the signature promises about its body.

        ``raw_path`` is the path as received (still percent-encoded, no query), ``raw_query`` the raw query
        string, ``headers`` lower-case names to all their values (latin-1 decoded). Raises the S3 error.
        """
        current = now or datetime.now(UTC)
        authorization = _first(headers, "authorization")
        # Only parse the query when it may carry presign parameters: most requests have none.
        params = _query_params(raw_query) if _may_be_presigned(raw_query) else {}
        v4_query = any(name in params for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"))
        v2_query = "AWSAccessKeyId" in params or "Signature" in params
        if authorization is not None:
            if v4_query or v2_query:
                raise InvalidArgument(
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature "
                    "query string parameter or the Authorization header should be specified",
                    ArgumentName="Authorization",
                    ArgumentValue=authorization,
                )
            if authorization.startswith(f"{ALGORITHM} "):
                return self._v4_header(method, raw_path, raw_query, headers, authorization, current)
            if authorization.startswith("AWS "):
                return self._v2_header(method, raw_path, raw_query, headers, authorization, current)
            raise InvalidArgument(
                "Unsupported Authorization Type", ArgumentName="Authorization", ArgumentValue=authorization
            )
        if v4_query:
            return self._v4_query(method, raw_path, raw_query, headers, params, current)
        if v2_query:
            return self._v2_query(method, raw_path, raw_query, headers, params, current)
        # No public buckets: an anonymous request is never allowed.
        raise AccessDenied()

    # --- SigV4, Authorization header -----------------------------------------------------------------------
    def _v4_header(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: dict[str, list[str]],
        authorization: str,
        now: datetime,
    ) -> S3Identity:
        parts = _authorization_parts(authorization)
        scope = _parse_scope(
            parts["Credential"], AuthorizationHeaderMalformed, "The authorization header is malformed; "
        )
        amz_date, request_time = _v4_request_date(headers)
        if scope.date != amz_date[:8]:
            raise AuthorizationHeaderMalformed(
                "The authorization header is malformed; Invalid credential date. "
                "Date is not the same as X-Amz-Date."
            )
        credential = self._credential(scope.access_key_id)
        self._check_skew(request_time, _first(headers, "x-amz-date") or _first(headers, "date") or "", now)
        claimed = _first(headers, "x-amz-content-sha256")
        if claimed is None:
            raise InvalidRequest("Missing required header for this request: x-amz-content-sha256")
        mode = _payload_mode(claimed)
        key = _signing_key(credential.secret_access_key, scope.date, scope.region, SERVICE)
        signature = parts["Signature"]
        _check_v4_signature(
            method=method,
            raw_path=raw_path,
            canonical_query=_canonical_query(raw_query, None),
            headers=headers,
            signed_headers=parts["SignedHeaders"],
            query_fallback=None,
            payload_hash=claimed,
            amz_date=amz_date,
            scope=scope,
            key=key,
            signature=signature,
        )
        return S3Identity(
            account_id=credential.account_id,
            access_key_id=scope.access_key_id,
            region=scope.region,
            payload=_payload_check(mode, claimed, signature, key, amz_date, scope),
            presigned=False,
        )

    # --- SigV4, presigned URL ------------------------------------------------------------------------------
    def _v4_query(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: dict[str, list[str]],
        params: dict[str, str],
        now: datetime,
    ) -> S3Identity:
        if not all(params.get(name) for name in _V4_QUERY_PARAMS):
            raise AuthorizationQueryParametersError(_V4_MISSING_PARAMS)
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise AuthorizationQueryParametersError(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
        scope = _parse_scope(
            params["X-Amz-Credential"],
            AuthorizationQueryParametersError,
            "Error parsing the X-Amz-Credential parameter; ",
        )
        amz_date = params["X-Amz-Date"]
        try:
            signed_at = _parse_amz_date(amz_date)
        except ValueError:
            raise AuthorizationQueryParametersError(
                "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
            ) from None
        if scope.date != amz_date[:8]:
            raise AuthorizationQueryParametersError(
                f'Invalid credential date "{scope.date}". '
                f'This date is not the same as X-Amz-Date: "{amz_date[:8]}".'
            )
        expires = _presign_expires(params["X-Amz-Expires"])
        credential = self._credential(scope.access_key_id)
        if now > signed_at + timedelta(seconds=expires):
            raise AccessDenied(
                "Request has expired",
                **{"X-Amz-Expires": str(expires)},
                Expires=_iso(signed_at + timedelta(seconds=expires)),
                ServerTime=_iso(now),
            )
        if (signed_at - now).total_seconds() > self._skew:
            raise AccessDenied("Request is not valid yet")
        # A presigned URL promises nothing about the body, unless the signer put a hash in the query.
        claimed = _param(params, "x-amz-content-sha256") or UNSIGNED_PAYLOAD
        mode = _payload_mode(claimed)
        key = _signing_key(credential.secret_access_key, scope.date, scope.region, SERVICE)
        signature = params["X-Amz-Signature"]
        _check_v4_signature(
            method=method,
            raw_path=raw_path,
            canonical_query=_canonical_query(raw_query, "X-Amz-Signature"),
            headers=headers,
            signed_headers=params["X-Amz-SignedHeaders"],
            query_fallback=params,
            payload_hash=claimed,
            amz_date=amz_date,
            scope=scope,
            key=key,
            signature=signature,
        )
        return S3Identity(
            account_id=credential.account_id,
            access_key_id=scope.access_key_id,
            region=scope.region,
            payload=_payload_check(mode, claimed, signature, key, amz_date, scope),
            presigned=True,
        )

    # --- SigV2, Authorization header -----------------------------------------------------------------------
    def _v2_header(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: dict[str, list[str]],
        authorization: str,
        now: datetime,
    ) -> S3Identity:
        access_key_id, sep, signature = authorization[4:].strip().rpartition(":")
        if not sep or not access_key_id or not signature:
            raise InvalidArgument(
                "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature",
                ArgumentName="Authorization",
                ArgumentValue=authorization,
            )
        amz_date = _first(headers, "x-amz-date")
        sent = amz_date if amz_date is not None else _first(headers, "date")
        request_time = _parse_http_date(sent)
        if request_time is None:
            raise AccessDenied(_NO_DATE)
        credential = self._credential(access_key_id)
        self._check_skew(request_time, sent or "", now)
        # With x-amz-date the Date line is empty: x-amz-date is signed among the x-amz-* headers instead.
        date_line = "" if amz_date is not None else (sent or "").strip(_SPACE)
        string_to_sign = _v2_string_to_sign(method, raw_path, raw_query, headers, date_line, None)
        _check_v2_signature(credential, access_key_id, string_to_sign, signature)
        return S3Identity(credential.account_id, access_key_id, "", _UNSIGNED, presigned=False)

    # --- SigV2, presigned URL ------------------------------------------------------------------------------
    def _v2_query(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: dict[str, list[str]],
        params: dict[str, str],
        now: datetime,
    ) -> S3Identity:
        access_key_id, signature, expires = (
            params.get(n) for n in ("AWSAccessKeyId", "Signature", "Expires")
        )
        if not access_key_id or not signature or not expires:
            raise AccessDenied(
                "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters"
            )
        if not _DIGITS(expires):
            raise AccessDenied(f"Invalid date (should be seconds since epoch): {expires}")
        credential = self._credential(access_key_id)
        expiry = datetime.fromtimestamp(int(expires), UTC)
        if now > expiry:
            raise AccessDenied("Request has expired", Expires=_iso(expiry), ServerTime=_iso(now))
        string_to_sign = _v2_string_to_sign(method, raw_path, raw_query, headers, expires, params)
        _check_v2_signature(credential, access_key_id, string_to_sign, signature)
        return S3Identity(credential.account_id, access_key_id, "", _UNSIGNED, presigned=True)

    # --- shared --------------------------------------------------------------------------------------------
    def _credential(self, access_key_id: str) -> Credential:
        credential = self._credentials.get(access_key_id)
        if credential is None:
            raise InvalidAccessKeyId(AWSAccessKeyId=access_key_id)
        return credential

    def _check_skew(self, request_time: datetime, sent: str, now: datetime) -> None:
        if abs((now - request_time).total_seconds()) > self._skew:
            raise RequestTimeTooSkewed(
                RequestTime=sent,
                ServerTime=_iso(now),
                MaxAllowedSkewMilliseconds=str(self._skew * 1000),
            )


# --- SigV4 pieces ------------------------------------------------------------------------------------------
def _authorization_parts(authorization: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for piece in authorization[len(ALGORITHM) + 1 :].split(","):
        name, sep, value = piece.strip().partition("=")
        if sep:
            parts[name] = value
    if not all(parts.get(name) for name in ("Credential", "SignedHeaders", "Signature")):
        raise AuthorizationHeaderMalformed(
            "The authorization header is malformed; the authorization header requires three components: "
            "Credential, SignedHeaders, and Signature."
        )
    return parts


def _parse_scope(credential: str, error: type[AwsError], prefix: str) -> _V4Scope:
    # The access key id comes first; split from the right so that only the four scope parts are cut off.
    pieces = credential.rsplit("/", 4)
    if len(pieces) != 5 or not all(pieces):
        raise error(prefix + _MALFORMED_CREDENTIAL)
    scope = _V4Scope(*pieces)
    if scope.service != SERVICE:
        raise error(f'{prefix}incorrect service "{scope.service}". This endpoint belongs to "{SERVICE}".')
    if scope.terminal != "aws4_request":
        raise error(f'{prefix}incorrect terminal "{scope.terminal}". This endpoint uses "aws4_request".')
    return scope


def _v4_request_date(headers: dict[str, list[str]]) -> tuple[str, datetime]:
    """The ISO-8601 basic timestamp that was signed, and the time it stands for (X-Amz-Date, else Date)."""
    amz_date = _first(headers, "x-amz-date")
    if amz_date is not None:
        try:
            return amz_date, _parse_amz_date(amz_date)
        except ValueError:
            raise AccessDenied(_NO_DATE) from None
    when = _parse_http_date(_first(headers, "date"))
    if when is None:
        raise AccessDenied(_NO_DATE)
    return when.strftime("%Y%m%dT%H%M%SZ"), when


def _presign_expires(value: str) -> int:
    if value.startswith("-") and _DIGITS(value[1:]):
        raise AuthorizationQueryParametersError("X-Amz-Expires must be non-negative")
    if not _DIGITS(value):
        raise AuthorizationQueryParametersError("X-Amz-Expires should be a number")
    expires = int(value)
    if expires > MAX_PRESIGN_EXPIRES:
        raise AuthorizationQueryParametersError(
            f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGN_EXPIRES}"
        )
    return expires


def _payload_mode(claimed: str) -> PayloadMode:
    if claimed == UNSIGNED_PAYLOAD:
        return "unsigned"
    if claimed in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER):
        return "signed-chunks"
    if claimed == STREAMING_UNSIGNED_TRAILER:
        return "unsigned-chunks"
    if _HEX64(claimed):
        return "sha256"
    raise InvalidArgument(_BAD_CONTENT_SHA256, ArgumentName="x-amz-content-sha256", ArgumentValue=claimed)


def _payload_check(
    mode: PayloadMode, claimed: str, signature: str, key: bytes, amz_date: str, scope: _V4Scope
) -> PayloadCheck:
    if mode == "unsigned":
        return _UNSIGNED
    if mode == "unsigned-chunks":
        return _UNSIGNED_TRAILER
    if mode == "sha256":
        digest = claimed.lower()
        return _EMPTY_SHA256 if digest == _EMPTY_SHA256.sha256 else PayloadCheck("sha256", sha256=digest)
    return PayloadCheck(
        "signed-chunks",
        trailer=claimed == STREAMING_SIGNED_TRAILER,
        seed_signature=signature,
        signing_key=key,
        amz_date=amz_date,
        scope=f"{scope.date}/{scope.region}/{SERVICE}/aws4_request",
    )


def _check_v4_signature(
    *,
    method: str,
    raw_path: str,
    canonical_query: str,
    headers: dict[str, list[str]],
    signed_headers: str,
    query_fallback: dict[str, str] | None,
    payload_hash: str,
    amz_date: str,
    scope: _V4Scope,
    key: bytes,
    signature: str,
) -> None:
    names = sorted({name.strip().lower() for name in signed_headers.split(";") if name.strip()})
    _require_signed(headers, names)
    # Canonical headers: exactly those the client listed, repeated values comma-joined, each value trimmed
    # and its inner runs of spaces folded (as botocore's signer does). A presigned URL may carry a signed
    # x-amz-* header as a query parameter instead (the JS SDK does): the query value stands in for it.
    header_block = "".join(f"{name}:{_header_value(headers, name, query_fallback)}\n" for name in names)
    tail = f"\n{canonical_query}\n{header_block}\n{';'.join(names)}\n{payload_hash}"
    credential_scope = f"{scope.date}/{scope.region}/{SERVICE}/aws4_request"
    path = raw_path or "/"
    canonical_request = f"{method}\n{path}{tail}"
    expected, string_to_sign = _v4_sign(key, amz_date, credential_scope, canonical_request)
    if _same(expected, signature):
        return
    # S3 signs the path as sent; a client that sent characters unencoded, or lower-case escapes, signed
    # the spec's encoding of it (each byte but A-Za-z0-9-_.~/ as %XX). Only tried when the two differ.
    spec_path = quote(unquote_to_bytes(_bytes(path)), safe="/~")
    if spec_path != path and _same(
        _v4_sign(key, amz_date, credential_scope, f"{method}\n{spec_path}{tail}")[0], signature
    ):
        return
    raise SignatureDoesNotMatch(
        AWSAccessKeyId=scope.access_key_id,
        StringToSign=string_to_sign,
        SignatureProvided=signature,
        CanonicalRequest=canonical_request,
    )


def _v4_sign(key: bytes, amz_date: str, credential_scope: str, canonical_request: str) -> tuple[str, str]:
    digest = sha256(_bytes(canonical_request)).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{amz_date}\n{credential_scope}\n{digest}"
    return hmac.new(key, string_to_sign.encode("utf-8"), sha256).hexdigest(), string_to_sign


def _require_signed(headers: dict[str, list[str]], signed: list[str]) -> None:
    """S3 wants host and every x-amz-* header that is present signed: they change what a request does."""
    missing = [
        name
        for name in headers
        if name.startswith("x-amz-") and name != "x-amz-content-sha256" and name not in signed
    ]
    if "host" not in signed:
        missing.insert(0, "host")
    if missing:
        raise AccessDenied(
            "There were headers present in the request which were not signed",
            HeadersNotSigned=", ".join(missing),
        )


def _header_value(headers: dict[str, list[str]], name: str, query_fallback: dict[str, str] | None) -> str:
    values = headers.get(name)
    if values is None:
        fallback = _param(query_fallback, name) if query_fallback and name.startswith("x-amz-") else None
        return "" if fallback is None else _trim_all(fallback)
    if len(values) == 1:
        return _trim_all(values[0])
    return ",".join(_trim_all(value) for value in values)


def _trim_all(value: str) -> str:
    """SigV4's Trimall: no space around, inner runs folded to one. Only ASCII whitespace: in latin-1 form
    bytes 0x85 and 0xA0 (inside UTF-8 sequences, as in "à") are text that str.split() would cut at."""
    if value.isascii():
        return " ".join(value.split())
    return _SPACES.sub(" ", value).strip(" ")


def _canonical_query(raw_query: str, drop: str | None) -> str:
    """SigV4's canonical query: each name and value in the spec's encoding, sorted by name then value."""
    if not raw_query:
        return ""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if name == drop:
            continue
        pairs.append((_spec_encode(name), _spec_encode(value)))
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


def _spec_encode(component: str) -> str:
    # botocore sends the spec's encoding already, so the common case returns the string untouched; any other
    # client's encoding (a raw "/" or "+", %7E, lower-case escapes) is normalised to what it must have signed.
    if "%" not in component and _UNRESERVED(component):
        return component
    return quote(unquote_to_bytes(_bytes(component)), safe="-_.~")


# --- SigV2 pieces ------------------------------------------------------------------------------------------
def _v2_string_to_sign(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: dict[str, list[str]],
    date_line: str,
    query_params: dict[str, str] | None,
) -> str:
    """VERB, Content-MD5, Content-Type, date, the x-amz-* headers, the resource (RESTAuthentication).

    For a presigned URL (``query_params`` given) botocore also copies Content-Type, Content-MD5 and the
    x-amz-* headers it signed into the query; a request that does not send those headers is checked with
    the query's values, so the URL works from any HTTP client.
    """
    content_md5 = _v2_header(headers, "content-md5", query_params)
    content_type = _v2_header(headers, "content-type", query_params)
    amz = {
        name: ",".join(value.strip(_SPACE) for value in values)
        for name, values in headers.items()
        if name.startswith("x-amz-")
    }
    if query_params:
        for name, value in query_params.items():
            lowered = name.lower()
            if lowered.startswith("x-amz-"):
                amz.setdefault(lowered, value.strip(_SPACE))
    amz_lines = "".join(f"{name}:{amz[name]}\n" for name in sorted(amz))
    resource = _v2_resource(raw_path, raw_query)
    return f"{method}\n{content_md5}\n{content_type}\n{date_line}\n{amz_lines}{resource}"


def _v2_header(headers: dict[str, list[str]], name: str, query_params: dict[str, str] | None) -> str:
    values = headers.get(name)
    if values:
        return values[0].strip(_SPACE)
    if query_params:
        return query_params.get(name, "").strip(_SPACE)
    return ""


def _v2_resource(raw_path: str, raw_query: str) -> str:
    """The path as sent, plus the sub-resources among the query parameters, sorted, values decoded."""
    path = raw_path or "/"
    if path.count("/") == 1 and len(path) > 1:
        # The resource is /bucket/key: a path-style request on the bucket itself signs "/bucket/".
        path += "/"
    if not raw_query:
        return path
    picked: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        name, sep, value = part.partition("=")
        if name in _V2_SUBRESOURCES:
            picked.append((name, f"{name}={_unquote(value)}" if sep else name))
    if not picked:
        return path
    picked.sort(key=itemgetter(0))  # stable: repeated names keep their order, as botocore's sort does
    return path + "?" + "&".join(text for _, text in picked)


def _check_v2_signature(
    credential: Credential, access_key_id: str, string_to_sign: str, signature: str
) -> None:
    digest = hmac.new(credential.secret_access_key.encode("utf-8"), _bytes(string_to_sign), sha1).digest()
    if not _same(base64.b64encode(digest).decode("ascii"), signature):
        raise SignatureDoesNotMatch(
            AWSAccessKeyId=access_key_id, StringToSign=string_to_sign, SignatureProvided=signature
        )


# --- small helpers -----------------------------------------------------------------------------------------
def _first(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _may_be_presigned(raw_query: str) -> bool:
    return bool(raw_query) and (
        "X-Amz-" in raw_query or "Signature=" in raw_query or "AWSAccessKeyId=" in raw_query
    )


def _query_params(raw_query: str) -> dict[str, str]:
    """Decoded query parameters (latin-1 form), first value of each; "+" stays "+" (S3 URLs use %20)."""
    params: dict[str, str] = {}
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        params.setdefault(_unquote(name), _unquote(value))
    return params


def _param(params: dict[str, str] | None, lowered: str) -> str | None:
    """A query parameter whose name matches case-insensitively (signers disagree on X-Amz-* casing)."""
    if not params:
        return None
    for name, value in params.items():
        if name.lower() == lowered:
            return value
    return None


def _parse_http_date(value: str | None) -> datetime | None:
    """An RFC 1123 date (SigV2, or SigV4's Date header), or an ISO-8601 basic one; None if neither."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            return _parse_amz_date(value.strip())
        except ValueError:
            return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _same(expected: str, provided: str) -> bool:
    # Constant-time, and on bytes: compare_digest refuses str with non-ASCII characters (a client's input).
    return hmac.compare_digest(expected.encode("ascii"), _bytes(provided))


def _unquote(text: str) -> str:
    """Percent-decoding into latin-1 form: the decoded bytes, one char each (the UTF-8 a signer encoded)."""
    return unquote_to_bytes(_bytes(text)).decode("latin-1") if "%" in text else text


def _bytes(text: str) -> bytes:
    """A latin-1-form string back to the bytes it stands for (UTF-8 for a caller that decoded otherwise)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
