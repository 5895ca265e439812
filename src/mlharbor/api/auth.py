"""SigV4 verification of incoming requests, header-based, the way botocore signs them.

The canonicalisation pieces come from botocore's own signer so that client and server cannot
disagree; only the assembly around them (what the client said it signed) lives here.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from hashlib import sha256
from urllib.parse import unquote, urlsplit

from botocore.auth import SigV4Auth

from mlharbor.config import Credential
from mlharbor.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

ALGORITHM = "AWS4-HMAC-SHA256"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
# botocore's canonicalisation helpers are instance methods that touch no instance state.
_CANON = SigV4Auth(None, "", "")


@dataclass(frozen=True, slots=True)
class Identity:
    account_id: str
    region: str
    access_key_id: str


@dataclass(frozen=True, slots=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


class Authenticator:
    def __init__(self, credentials: dict[str, Credential], clock_skew_seconds: int = 300) -> None:
        self._credentials = credentials
        self._skew = clock_skew_seconds

    def verify(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: dict[str, list[str]],
        body: bytes,
        service: str | None,
        now: datetime | None = None,
    ) -> Identity:
        """Check the request's signature; ``headers`` maps lower-case names to all their values.

        ``service`` is the signing name the request must be scoped to (None when the target is unknown:
        the signature is still verified, against whatever service the scope names).
        """
        header = _first(headers, "authorization")
        if not header:
            raise MissingAuthenticationTokenException()
        auth = _parse_authorization(header)
        credential = self._credentials.get(auth.access_key_id)
        if credential is None:
            raise UnrecognizedClientException()
        if service is not None and auth.service != service:
            raise InvalidSignatureException(f"Credential should be scoped to correct service: '{service}'. ")
        amz_date = _first(headers, "x-amz-date")
        if not amz_date:
            raise IncompleteSignatureException(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
                f"Authorization={header}"
            )
        try:
            signed_at = _parse_amz_date(amz_date)
        except ValueError:
            raise IncompleteSignatureException(
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
            ) from None
        if auth.date != amz_date[:8]:
            raise InvalidSignatureException(
                f"Credential should be scoped to a valid date: '{auth.date}' does not match '{amz_date[:8]}'."
            )
        current = now or datetime.now(UTC)
        if abs((current - signed_at).total_seconds()) > self._skew:
            stamp = current.strftime("%Y%m%dT%H%M%SZ")
            raise InvalidSignatureException(
                f"Signature expired: {amz_date} is now earlier than {stamp} "
                f"({stamp} - {self._skew // 60} min.)"
                if signed_at < current
                else f"Signature not yet current: {amz_date} is still later than {stamp} "
                f"({stamp} + {self._skew // 60} min.)"
            )
        if "host" not in auth.signed_headers:
            raise InvalidSignatureException("'Host' must be a 'SignedHeader' in the AWS Authorization.")
        expected = _signature(
            auth, credential.secret_access_key, method, path, query, headers, body, amz_date
        )
        if not hmac.compare_digest(expected, auth.signature):
            raise InvalidSignatureException(_MISMATCH)
        return Identity(
            account_id=credential.account_id, region=auth.region, access_key_id=auth.access_key_id
        )


def _parse_amz_date(value: str) -> datetime:
    # ISO-8601 basic format, e.g. 20261123T001152Z (strptime is ten times slower on this hot path).
    if len(value) != 16 or value[8] != "T" or value[15] != "Z":
        raise ValueError(value)
    return datetime(
        int(value[0:4]), int(value[4:6]), int(value[6:8]),
        int(value[9:11]), int(value[11:13]), int(value[13:15]), tzinfo=UTC,
    )  # fmt: skip


def _first(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _parse_authorization(header: str) -> _Authorization:
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignatureException(f"Unsupported AWS 'algorithm': '{algorithm}'")
    parts: dict[str, str] = {}
    for piece in rest.split(","):
        key, sep, value = piece.strip().partition("=")
        if sep:
            parts[key] = value
    for required in ("Credential", "SignedHeaders", "Signature"):
        if required not in parts:
            raise IncompleteSignatureException(
                f"Authorization header requires '{required}' parameter. Authorization={header}"
            )
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise IncompleteSignatureException(
            f"Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
            f"got '{parts['Credential']}'"
        )
    signed = tuple(h.strip().lower() for h in parts["SignedHeaders"].split(";") if h.strip())
    return _Authorization(scope[0], scope[1], scope[2], scope[3], signed, parts["Signature"])


@lru_cache(maxsize=256)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), sha256).digest()
    return key


def _signature(
    auth: _Authorization,
    secret: str,
    method: str,
    path: str,
    query: str,
    headers: dict[str, list[str]],
    body: bytes,
    amz_date: str,
) -> str:
    # Canonical headers are exactly those the client listed (sorted, repeated values comma-joined),
    # each value trimmed the way botocore's signer trims it.
    canonical_headers = "\n".join(
        f"{name}:{','.join(_CANON._header_value(v) for v in headers.get(name, []))}"
        for name in sorted(set(auth.signed_headers))
    )
    payload_hash = sha256(body).hexdigest()
    claimed = _first(headers, "x-amz-content-sha256")
    if claimed is not None and claimed != payload_hash:
        # The body must be the one that was signed, whatever the client claims about it.
        raise InvalidSignatureException(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
        )
    canonical_request = "\n".join(
        (
            method.upper(),
            _CANON._normalize_url_path(unquote(path) or "/"),
            _CANON._canonical_query_string_url(urlsplit(f"?{query}")) if query else "",
            canonical_headers + "\n",
            ";".join(sorted(set(auth.signed_headers))),
            payload_hash,
        )
    )
    scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
    string_to_sign = "\n".join(
        (ALGORITHM, amz_date, scope, sha256(canonical_request.encode("utf-8")).hexdigest())
    )
    key = _signing_key(secret, auth.date, auth.region, auth.service)
    return hmac.new(key, string_to_sign.encode("utf-8"), sha256).hexdigest()
