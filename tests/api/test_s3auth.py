"""S3 request authentication against botocore's own signers: SigV4 and SigV2, header and presigned URL.

Requests are built by a real boto3 S3 client and captured just before they would go on the wire (a
``before-send`` hook), then verified the way the server sees them: raw path, raw query, latin-1 headers.
Pure unit tests: no server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import boto3
import pytest
from botocore.auth import HmacV1Auth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from mlharbor.api.s3auth import PayloadCheck, S3Authenticator, S3Identity
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

ENDPOINT = "127.0.0.1:4580"
ACCESS_KEY = "AKIDMLHARBOR"
SECRET = "s3cr3t/K7MDENG+bPxRfi=CY"
ACCOUNT = "123456789012"
BUCKET = "my-bucket"
AUTH = S3Authenticator(
    {ACCESS_KEY: Credential(access_key_id=ACCESS_KEY, secret_access_key=SECRET, account_id=ACCOUNT)}
)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Keys that exercise the path's encoding: spaces, unicode, "+", "%", "~", "=", and S3's awkward characters.
KEYS = [
    "plain.txt",
    "a b/c+d.txt",
    "unicodé/ключ €.bin",
    "100%/~tilde=eq",
    "odd !*'()[]$&,;:@.x",
]


# --- capturing what botocore sends ----------------------------------------------------------------------
@dataclass(frozen=True)
class Wire:
    """A request as the server receives it."""

    method: str
    raw_path: str
    raw_query: str
    headers: dict[str, list[str]]
    body: bytes = b""

    def verify(self, auth: S3Authenticator = AUTH, now: datetime | None = None) -> S3Identity:
        return auth.verify(
            method=self.method,
            raw_path=self.raw_path,
            raw_query=self.raw_query,
            headers=self.headers,
            now=now,
        )

    def with_header(self, name: str, value: str | None) -> Wire:
        headers = {k: v for k, v in self.headers.items() if k != name}
        if value is not None:
            headers[name] = [value]
        return replace(self, headers=headers)


class _Captured(Exception):
    def __init__(self, request: AWSPreparedRequest) -> None:
        self.request = request


def _stop(request: AWSPreparedRequest, **_: Any) -> None:
    raise _Captured(request)


@cache
def s3_client(
    *,
    signature_version: str | None = None,
    scheme: str = "http",
    region: str = "us-east-1",
    key: str = ACCESS_KEY,
    secret: str = SECRET,
) -> Any:
    config = Config(signature_version=signature_version) if signature_version else None
    client = boto3.client(
        "s3",
        endpoint_url=f"{scheme}://{ENDPOINT}",
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=config,
    )
    client.meta.events.register("before-send", _stop)
    return client


def capture(client: Any, operation: str, **params: Any) -> Wire:
    """The request boto3 sends for ``operation``, as the server would receive it."""
    try:
        getattr(client, operation)(**params)
    except _Captured as captured:
        return wire_of(captured.request)
    raise AssertionError(f"{operation} sent nothing")


def wire_of(prepared: AWSPreparedRequest) -> Wire:
    split = urlsplit(prepared.url)
    headers: dict[str, list[str]] = {"host": [split.netloc]}  # urllib3 sends the URL's host:port
    for name, value in prepared.headers.items():
        raw = value if isinstance(value, bytes) else value.encode("utf-8")
        headers.setdefault(name.lower(), []).append(raw.decode("latin-1"))
    body = prepared.body
    if hasattr(body, "read"):
        body = body.read()
    return Wire(prepared.method, split.path, split.query, headers, body or b"")


def sign(signer: Any, request: AWSRequest) -> None:
    """Sign with one of botocore's signers directly, then encode headers as botocore's endpoint does."""
    credentials = Credentials(ACCESS_KEY, SECRET)
    instance = signer(credentials) if signer is HmacV1Auth else signer(credentials, "s3", "us-east-1")
    instance.add_auth(request)
    for name, value in list(request.headers.items()):
        if isinstance(value, str):
            request.headers[name] = value.encode("utf-8")


def url_wire(method: str, url: str, headers: dict[str, str] | None = None) -> Wire:
    """A request made with a presigned URL by a plain HTTP client."""
    split = urlsplit(url)
    all_headers = {"host": [split.netloc]}
    for name, value in (headers or {}).items():
        all_headers[name.lower()] = [value]
    return Wire(method, split.path, split.query, all_headers)


def error_of(wire: Wire, **kwargs: Any) -> AwsError:
    with pytest.raises(AwsError) as info:
        wire.verify(**kwargs)
    return info.value


# --- operations, each with the HTTP method it uses ------------------------------------------------------
def operations(key: str) -> list[tuple[str, str, dict[str, Any]]]:
    upload = {"Bucket": BUCKET, "Key": key, "UploadId": "2~up+load/id=="}
    return [
        ("GET", "get_object", {"Bucket": BUCKET, "Key": key}),
        ("PUT", "put_object", {"Bucket": BUCKET, "Key": key, "Body": b"hello world"}),
        ("DELETE", "delete_object", {"Bucket": BUCKET, "Key": key}),
        ("POST", "create_multipart_upload", {"Bucket": BUCKET, "Key": key}),
        ("PUT", "upload_part", {**upload, "PartNumber": 7, "Body": b"part"}),
        (
            "POST",
            "complete_multipart_upload",
            {**upload, "MultipartUpload": {"Parts": [{"ETag": '"abc"', "PartNumber": 7}]}},
        ),
        ("GET", "list_objects_v2", {"Bucket": BUCKET, "Prefix": key, "Delimiter": "/"}),
        ("GET", "list_parts", upload),
    ]


CASES = [(key, *op) for key in KEYS for op in operations(key)]
CASE_IDS = [f"{op}-{KEYS.index(key)}" for key, _, op, _ in CASES]


# --- every signer accepted ------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "method", "operation", "params"), CASES, ids=CASE_IDS)
def test_sigv4_header(key: str, method: str, operation: str, params: dict[str, Any]) -> None:
    wire = capture(s3_client(), operation, **params)
    assert wire.method == method
    assert wire.headers["authorization"][0].startswith("AWS4-HMAC-SHA256 ")
    identity = wire.verify()
    assert identity == S3Identity(ACCOUNT, ACCESS_KEY, "us-east-1", identity.payload, presigned=False)
    # Over http botocore signs the body: the decoder will check it against this digest.
    assert identity.payload == PayloadCheck("sha256", sha256=hashlib.sha256(wire.body).hexdigest())


@pytest.mark.parametrize(("key", "method", "operation", "params"), CASES, ids=CASE_IDS)
def test_sigv2_header(key: str, method: str, operation: str, params: dict[str, Any]) -> None:
    wire = capture(s3_client(signature_version="s3"), operation, **params)
    assert wire.headers["authorization"][0].startswith(f"AWS {ACCESS_KEY}:")
    assert wire.verify() == S3Identity(ACCOUNT, ACCESS_KEY, "", PayloadCheck("unsigned"), presigned=False)


@pytest.mark.parametrize(("key", "method", "operation", "params"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("version", ["s3v4", "default"])
def test_presigned(key: str, method: str, operation: str, params: dict[str, Any], version: str) -> None:
    # botocore 1.44 presigns with SigV2 in us-east-1 unless told s3v4.
    client = s3_client(signature_version="s3v4" if version == "s3v4" else None)
    # botocore cannot presign a request body (it would move it into the query): URLs carry none.
    params = {name: value for name, value in params.items() if name not in ("Body", "MultipartUpload")}
    url = client.generate_presigned_url(operation, Params=params, HttpMethod=method)
    assert ("X-Amz-Signature=" in url) == (version == "s3v4")
    assert ("AWSAccessKeyId=" in url) == (version == "default")
    identity = url_wire(method, url).verify()
    region = "us-east-1" if version == "s3v4" else ""
    assert identity == S3Identity(ACCOUNT, ACCESS_KEY, region, PayloadCheck("unsigned"), presigned=True)


def test_https_put_is_streaming_unsigned_with_a_trailer() -> None:
    wire = capture(s3_client(scheme="https"), "put_object", Bucket=BUCKET, Key="k", Body=b"hello world")
    assert wire.headers["x-amz-content-sha256"] == ["STREAMING-UNSIGNED-PAYLOAD-TRAILER"]
    assert wire.verify().payload == PayloadCheck("unsigned-chunks", trailer=True)


def test_get_without_body_signs_the_empty_digest() -> None:
    wire = capture(s3_client(), "list_buckets")
    assert wire.raw_path == "/"
    assert wire.verify().payload == PayloadCheck("sha256", sha256=EMPTY_SHA256)


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_unicode_subresource_values(version: str) -> None:
    # Sub-resource values are signed decoded (SigV2) or in the spec's encoding (SigV4).
    disposition = 'attachment; filename="résumé €.txt"'
    client = s3_client(signature_version=version)
    wire = capture(client, "get_object", Bucket=BUCKET, Key="k", ResponseContentDisposition=disposition)
    assert "response-content-disposition=" in wire.raw_query
    assert wire.verify().account_id == ACCOUNT


@pytest.mark.parametrize("signer", [S3SigV4Auth, HmacV1Auth])
def test_non_ascii_header_values(signer: Any) -> None:
    # boto3 refuses non-ASCII metadata, other clients send it as UTF-8; botocore's signers sign its UTF-8
    # (and its endpoint sends those bytes), which the server sees decoded as latin-1.
    request = AWSRequest("PUT", f"http://{ENDPOINT}/{BUCKET}/k", data=b"x")
    # "à" is C3 A0 in UTF-8: in latin-1 form its second byte is a no-break space that str.split() would cut.
    request.headers["x-amz-meta-name"] = "é and €  voilà"
    request.headers["x-amz-meta-end"] = "à"
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(b"x").hexdigest()
    sign(signer, request)
    assert wire_of(request.prepare()).verify().account_id == ACCOUNT


def test_presigned_put_with_content_type_sigv4() -> None:
    params = {"Bucket": BUCKET, "Key": "a b.txt", "ContentType": "text/plain"}
    url = s3_client(signature_version="s3v4").generate_presigned_url("put_object", Params=params)
    assert "X-Amz-SignedHeaders=content-type%3Bhost" in url
    assert url_wire("PUT", url, {"Content-Type": "text/plain"}).verify().presigned
    # Content-Type is signed: another one, or none, is a different request.
    for headers in ({"Content-Type": "text/html"}, {}):
        assert isinstance(error_of(url_wire("PUT", url, headers)), SignatureDoesNotMatch)


def test_presigned_put_with_content_type_sigv2() -> None:
    params = {"Bucket": BUCKET, "Key": "a b.txt", "ContentType": "text/plain"}
    url = s3_client().generate_presigned_url("put_object", Params=params)
    assert "AWSAccessKeyId=" in url and "content-type=text%2Fplain" in url
    assert url_wire("PUT", url, {"Content-Type": "text/plain"}).verify().presigned
    # botocore also copies the signed Content-Type into the URL: a client that sends none is checked with it.
    assert url_wire("PUT", url).verify().presigned
    assert isinstance(error_of(url_wire("PUT", url, {"Content-Type": "text/html"})), SignatureDoesNotMatch)


def test_presigned_sigv4_with_signed_amz_header_in_the_query() -> None:
    client = s3_client(signature_version="s3v4")
    params = {"Bucket": BUCKET, "Key": "k", "ServerSideEncryption": "AES256"}
    url = client.generate_presigned_url("put_object", Params=params)
    assert "x-amz-server-side-encryption" in url_param(url, "X-Amz-SignedHeaders")
    assert url_wire("PUT", url, {"x-amz-server-side-encryption": "AES256"}).verify().presigned
    assert isinstance(error_of(url_wire("PUT", url)), SignatureDoesNotMatch)
    # The JS SDK puts such a header in the URL as well as in X-Amz-SignedHeaders: the query value stands
    # in for the header a plain HTTP client will not send.
    request = AWSRequest("PUT", f"http://{ENDPOINT}/{BUCKET}/k?x-amz-server-side-encryption=AES256")
    request.headers["x-amz-server-side-encryption"] = "AES256"
    sign(S3SigV4QueryAuth, request)
    assert "x-amz-server-side-encryption" in url_param(request.url, "X-Amz-SignedHeaders")
    assert url_wire("PUT", request.url).verify().presigned


def test_sigv4_with_a_date_header_instead_of_x_amz_date() -> None:
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{ENDPOINT}",
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
    )
    client.meta.events.register("before-sign", lambda request, **_: request.headers.__setitem__("Date", "x"))
    client.meta.events.register("before-send", _stop)
    wire = capture(client, "get_object", Bucket=BUCKET, Key="k")
    assert "x-amz-date" not in wire.headers and wire.headers["date"][0].startswith(
        ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    )
    assert wire.verify().region == "us-east-1"


def test_other_regions_are_reported() -> None:
    wire = capture(s3_client(region="eu-central-1"), "get_object", Bucket=BUCKET, Key="k")
    assert wire.verify().region == "eu-central-1"
    url = s3_client(region="eu-central-1").generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "k"}
    )
    assert url_wire("GET", url).verify().region == "eu-central-1"


# --- failures -------------------------------------------------------------------------------------------
SIGNERS = ["v4-header", "v2-header", "v4-query", "v2-query"]


def signed(
    signer: str, *, secret: str = SECRET, key: str = ACCESS_KEY, operation: str = "upload_part"
) -> Wire:
    """One request of each kind: an UploadPart (path, sub-resource query, body, x-amz-* headers)."""
    params: dict[str, Any] = {"Bucket": BUCKET, "Key": "a b/ü.txt", "UploadId": "up+id", "PartNumber": 3}
    if signer.endswith("header"):
        client = s3_client(
            signature_version="s3v4" if signer == "v4-header" else "s3", key=key, secret=secret
        )
        return capture(client, operation, **params, Body=b"part data")
    client = s3_client(signature_version="s3v4" if signer == "v4-query" else None, key=key, secret=secret)
    return url_wire("PUT", client.generate_presigned_url(operation, Params=params))


@pytest.mark.parametrize("signer", SIGNERS)
def test_wrong_secret(signer: str) -> None:
    wire = signed(signer, secret="not-the-secret")
    error = error_of(wire)
    assert isinstance(error, SignatureDoesNotMatch) and error.status == 403
    assert error.fields["AWSAccessKeyId"] == ACCESS_KEY
    assert "StringToSign" in error.fields and "SignatureProvided" in error.fields
    assert ("CanonicalRequest" in error.fields) == signer.startswith("v4")


@pytest.mark.parametrize("signer", SIGNERS)
def test_unknown_access_key(signer: str) -> None:
    error = error_of(signed(signer, key="AKIDNOBODY"))
    assert isinstance(error, InvalidAccessKeyId) and error.status == 403
    assert error.fields == {"AWSAccessKeyId": "AKIDNOBODY"}


@pytest.mark.parametrize("signer", SIGNERS)
def test_tampered_path(signer: str) -> None:
    wire = signed(signer)
    assert wire.verify()
    assert isinstance(
        error_of(replace(wire, raw_path=wire.raw_path.replace("a%20b", "a%20c"))), SignatureDoesNotMatch
    )
    assert isinstance(error_of(replace(wire, raw_path=f"/other{wire.raw_path}")), SignatureDoesNotMatch)


@pytest.mark.parametrize("signer", SIGNERS)
def test_tampered_query(signer: str) -> None:
    wire = signed(signer)
    changed = replace(wire, raw_query=wire.raw_query.replace("partNumber=3", "partNumber=4"))
    assert changed.raw_query != wire.raw_query
    assert isinstance(error_of(changed), SignatureDoesNotMatch)


def test_tampered_query_sigv4_extra_parameter() -> None:
    # SigV4 signs every query parameter (SigV2 only S3's sub-resources).
    wire = signed("v4-header")
    assert isinstance(
        error_of(replace(wire, raw_query=wire.raw_query + "&versionId=1")), SignatureDoesNotMatch
    )
    wire = signed("v4-query")
    assert isinstance(
        error_of(replace(wire, raw_query=wire.raw_query + "&versionId=1")), SignatureDoesNotMatch
    )


def test_tampered_query_sigv2_subresource() -> None:
    for signer in ("v2-header", "v2-query"):
        wire = signed(signer)
        assert replace(wire, raw_query=wire.raw_query + "&list-type=2").verify()  # not a sub-resource
        assert isinstance(
            error_of(replace(wire, raw_query=wire.raw_query + "&versionId=1")), SignatureDoesNotMatch
        )


@pytest.mark.parametrize("signer", ["v4-header", "v2-header"])
def test_tampered_signed_header(signer: str) -> None:
    wire = signed(signer)
    changed = wire.with_header("x-amz-sdk-checksum-algorithm", "SHA256")
    assert isinstance(error_of(changed), SignatureDoesNotMatch)
    moved = wire.with_header("host", "elsewhere:4580")
    if signer == "v4-header":
        assert isinstance(error_of(moved), SignatureDoesNotMatch)
    else:
        assert moved.verify()  # SigV2 does not sign the host


@pytest.mark.parametrize("signer", ["v4-header", "v4-query"])
def test_unsigned_amz_header_is_refused(signer: str) -> None:
    wire = signed(signer).with_header("x-amz-copy-source", "/other/secret")
    error = error_of(wire)
    assert isinstance(error, AccessDenied)
    assert error.message == "There were headers present in the request which were not signed"
    assert error.fields == {"HeadersNotSigned": "x-amz-copy-source"}


def test_sigv2_signs_every_amz_header() -> None:
    wire = signed("v2-header").with_header("x-amz-meta-added", "1")
    assert isinstance(error_of(wire), SignatureDoesNotMatch)


def test_tampered_content_sha256_changes_the_signature() -> None:
    wire = signed("v4-header")
    assert isinstance(error_of(wire.with_header("x-amz-content-sha256", EMPTY_SHA256)), SignatureDoesNotMatch)
    unsigned = wire.with_header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    assert isinstance(error_of(unsigned), SignatureDoesNotMatch)


@pytest.mark.parametrize("signer", ["v4-header", "v2-header"])
@pytest.mark.parametrize("minutes", [16, -16])
def test_clock_skew(signer: str, minutes: int) -> None:
    wire = signed(signer)
    now = datetime.now(UTC)
    assert wire.verify(now=now + timedelta(minutes=14 if minutes > 0 else -14))
    error = error_of(wire, now=now + timedelta(minutes=minutes))
    assert isinstance(error, RequestTimeTooSkewed) and error.status == 403
    sent = wire.headers["x-amz-date" if signer == "v4-header" else "date"][0]
    assert error.fields["RequestTime"] == sent
    assert error.fields["MaxAllowedSkewMilliseconds"] == "900000"
    assert error.fields["ServerTime"].endswith("Z")


def test_expired_presigned_sigv4() -> None:
    client = s3_client(signature_version="s3v4")
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}, ExpiresIn=60)
    wire = url_wire("GET", url)
    signed_at = datetime.strptime(url_param(url, "X-Amz-Date"), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert wire.verify(now=signed_at + timedelta(seconds=60))
    error = error_of(wire, now=signed_at + timedelta(seconds=61))
    assert isinstance(error, AccessDenied) and error.message == "Request has expired"
    expiry = (signed_at + timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert error.fields["X-Amz-Expires"] == "60"
    assert error.fields["Expires"] == expiry
    assert error.fields["ServerTime"] == (signed_at + timedelta(seconds=61)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_presigned_sigv4_from_the_future() -> None:
    client = s3_client(signature_version="s3v4")
    wire = url_wire("GET", client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}))
    error = error_of(wire, now=datetime.now(UTC) - timedelta(hours=1))
    assert isinstance(error, AccessDenied) and error.message == "Request is not valid yet"


def test_expired_presigned_sigv2() -> None:
    url = s3_client().generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "k"}, ExpiresIn=60
    )
    expires = datetime.fromtimestamp(int(url_param(url, "Expires")), UTC)
    wire = url_wire("GET", url)
    assert wire.verify(now=expires)
    error = error_of(wire, now=expires + timedelta(seconds=1))
    assert isinstance(error, AccessDenied) and error.message == "Request has expired"
    assert error.fields["Expires"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    bad = url_wire("GET", set_param(url, "Expires", "soon"))
    assert error_of(bad).message == "Invalid date (should be seconds since epoch): soon"


@pytest.mark.parametrize(
    ("expires", "message"),
    [
        ("604801", "X-Amz-Expires must be less than a week (in seconds) that is 604800"),
        ("abc", "X-Amz-Expires should be a number"),
        ("-5", "X-Amz-Expires must be non-negative"),
    ],
)
def test_presigned_sigv4_bad_expires(expires: str, message: str) -> None:
    client = s3_client(signature_version="s3v4")
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"})
    error = error_of(url_wire("GET", set_param(url, "X-Amz-Expires", expires)))
    assert isinstance(error, AuthorizationQueryParametersError) and error.message == message


def test_presigned_sigv4_for_a_week_is_accepted() -> None:
    client = s3_client(signature_version="s3v4")
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"}, ExpiresIn=604800)
    assert url_wire("GET", url).verify(now=datetime.now(UTC) + timedelta(days=6))


@pytest.mark.parametrize("missing", ["X-Amz-Algorithm", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Expires"])
def test_presigned_sigv4_missing_parameter(missing: str) -> None:
    client = s3_client(signature_version="s3v4")
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"})
    error = error_of(url_wire("GET", set_param(url, missing, None)))
    assert isinstance(error, AuthorizationQueryParametersError)
    assert error.message.startswith("Query-string authentication version 4 requires the X-Amz-Algorithm")


def test_presigned_sigv4_malformed_credential() -> None:
    client = s3_client(signature_version="s3v4")
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"})
    credential = url_param(url, "X-Amz-Credential")
    for bad in (credential.replace("/s3/", "/sqs/"), credential.rsplit("/", 1)[0], "garbage"):
        error = error_of(url_wire("GET", set_param(url, "X-Amz-Credential", bad)))
        assert isinstance(error, AuthorizationQueryParametersError)
        assert error.message.startswith("Error parsing the X-Amz-Credential parameter;")
    error = error_of(url_wire("GET", set_param(url, "X-Amz-Algorithm", "AWS4-ECDSA-P256-SHA256")))
    assert isinstance(error, AuthorizationQueryParametersError)


def test_presigned_sigv2_missing_parameter() -> None:
    url = s3_client().generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "k"})
    error = error_of(url_wire("GET", set_param(url, "Expires", None)))
    assert isinstance(error, AccessDenied)
    assert error.message.startswith("Query-string authentication requires the Signature, Expires")


def test_missing_content_sha256() -> None:
    error = error_of(signed("v4-header").with_header("x-amz-content-sha256", None))
    assert isinstance(error, InvalidRequest)
    assert error.message == "Missing required header for this request: x-amz-content-sha256"


@pytest.mark.parametrize("value", ["abc", "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", "x" * 64])
def test_bad_content_sha256(value: str) -> None:
    error = error_of(signed("v4-header").with_header("x-amz-content-sha256", value))
    assert isinstance(error, InvalidArgument)
    assert error.fields == {"ArgumentName": "x-amz-content-sha256", "ArgumentValue": value}


def test_anonymous_request_is_denied() -> None:
    wire = Wire("GET", f"/{BUCKET}/k", "", {"host": [ENDPOINT]})
    error = error_of(wire)
    assert isinstance(error, AccessDenied) and error.status == 403 and error.message == "Access Denied"
    listing = Wire("GET", f"/{BUCKET}", "list-type=2&prefix=X-Amz-Signature", {"host": [ENDPOINT]})
    assert isinstance(error_of(listing), AccessDenied)


def test_header_and_query_authentication_together() -> None:
    header = signed("v4-header")
    query = signed("v4-query")
    both = replace(header, raw_query=query.raw_query)
    error = error_of(both)
    assert isinstance(error, InvalidArgument) and error.message.startswith("Only one auth mechanism allowed")


@pytest.mark.parametrize("authorization", ["Bearer abc", "AWS4-HMAC-SHA512 Credential=x", "Basic dXNlcg=="])
def test_unsupported_authorization_type(authorization: str) -> None:
    error = error_of(signed("v4-header").with_header("authorization", authorization))
    assert isinstance(error, InvalidArgument) and error.message == "Unsupported Authorization Type"


def test_malformed_sigv4_header() -> None:
    wire = signed("v4-header")
    header = wire.headers["authorization"][0]
    credential = header.split("Credential=")[1].split(",")[0]
    broken = [
        header.split(", Signature=")[0],  # no Signature
        header.replace(credential, credential.replace("/s3/", "/sqs/")),
        header.replace(credential, credential.replace("/aws4_request", "/aws5_request")),
        header.replace(credential, "AKID/20200101"),
        header.replace(
            credential, credential[:-20] + "20200101/us-east-1/s3/aws4_request"
        ),  # date != x-amz-date
    ]
    for value in broken:
        error = error_of(wire.with_header("authorization", value))
        assert isinstance(error, AuthorizationHeaderMalformed), value
        assert error.message.startswith("The authorization header is malformed;")


@pytest.mark.parametrize("signer", ["v4-header", "v2-header", "v4-query", "v2-query"])
def test_non_ascii_signature_is_a_mismatch(signer: str) -> None:
    wire = signed(signer)
    if signer == "v4-header":
        header = wire.headers["authorization"][0]
        wire = wire.with_header("authorization", header[:-1] + "é")
    elif signer == "v2-header":
        wire = wire.with_header("authorization", wire.headers["authorization"][0] + "é")
    else:
        name = "X-Amz-Signature" if signer == "v4-query" else "Signature"
        wire = replace(
            wire, raw_query=urlsplit(set_param(f"http://h/?{wire.raw_query}", name, "é" * 8)).query
        )
    assert isinstance(error_of(wire), SignatureDoesNotMatch)


def test_malformed_sigv2_header() -> None:
    error = error_of(signed("v2-header").with_header("authorization", f"AWS {ACCESS_KEY}"))
    assert isinstance(error, InvalidArgument) and error.fields["ArgumentName"] == "Authorization"


@pytest.mark.parametrize("signer", ["v4-header", "v2-header"])
def test_missing_date(signer: str) -> None:
    wire = signed(signer).with_header("x-amz-date", None).with_header("date", None)
    error = error_of(wire)
    assert isinstance(error, AccessDenied)
    assert error.message == "AWS authentication requires a valid Date or x-amz-date header"


def test_spec_encoded_path_from_another_client() -> None:
    # A client that sends a character raw (here "!") but signs the spec's %21 still verifies; botocore's
    # requests are signed exactly as sent and never need this second look.
    wire = capture(s3_client(), "get_object", Bucket=BUCKET, Key="odd!name")
    assert "%21" in wire.raw_path
    assert replace(wire, raw_path=wire.raw_path.replace("%21", "!")).verify()


# --- AWS's published SigV4 examples ---------------------------------------------------------------------
AWS_KEY, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_AUTH = S3Authenticator(
    {AWS_KEY: Credential(access_key_id=AWS_KEY, secret_access_key=AWS_SECRET, account_id="111122223333")}
)
AWS_NOW = datetime(2013, 5, 24, 0, 5, tzinfo=UTC)
AWS_CHUNKED_HEADERS = {
    "host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
}


def aws_example(signature: str, signed_headers: str, **extra: str) -> Wire:
    """The S3 docs' chunked upload examples (sigv4-streaming, sigv4-streaming-trailers)."""
    headers = {name: [value] for name, value in {**AWS_CHUNKED_HEADERS, **extra}.items()}
    headers["authorization"] = [
        f"AWS4-HMAC-SHA256 Credential={AWS_KEY}/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed_headers},Signature={signature}"
    ]
    return Wire("PUT", "/examplebucket/chunkObject.txt", "", headers)


AWS_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
AWS_TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"


def aws_chunked_example() -> Wire:
    return aws_example(
        AWS_SEED,
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
        "x-amz-storage-class",
        **{"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "content-length": "66824"},
    )


def aws_trailer_example() -> Wire:
    return aws_example(
        AWS_TRAILER_SEED,
        "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
        "x-amz-storage-class;x-amz-trailer",
        **{
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            "x-amz-trailer": "x-amz-checksum-crc32c",
        },
    )


def aws_signing_key() -> bytes:
    key = hmac.new(f"AWS4{AWS_SECRET}".encode(), b"20130524", hashlib.sha256).digest()
    for part in (b"us-east-1", b"s3", b"aws4_request"):
        key = hmac.new(key, part, hashlib.sha256).digest()
    return key


@pytest.mark.parametrize(
    ("example", "seed", "trailer"),
    [(aws_chunked_example, AWS_SEED, False), (aws_trailer_example, AWS_TRAILER_SEED, True)],
)
def test_aws_chunked_upload_seed_signatures(example: Any, seed: str, trailer: bool) -> None:
    identity = example().verify(AWS_AUTH, now=AWS_NOW)
    assert identity.payload == PayloadCheck(
        "signed-chunks",
        trailer=trailer,
        seed_signature=seed,
        signing_key=aws_signing_key(),
        amz_date="20130524T000000Z",
        scope="20130524/us-east-1/s3/aws4_request",
    )
    tampered = example().with_header("x-amz-storage-class", "STANDARD")
    assert isinstance(error_of(tampered, auth=AWS_AUTH, now=AWS_NOW), SignatureDoesNotMatch)


def test_aws_presigned_get_example() -> None:
    # "Authenticating Requests: Using Query Parameters": GET /test.txt, 86400 s from 20130524T000000Z.
    query = urlencode(
        {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{AWS_KEY}/20130524/us-east-1/s3/aws4_request",
            "X-Amz-Date": "20130524T000000Z",
            "X-Amz-Expires": "86400",
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
        },
        quote_via=quote,
    )
    wire = Wire("GET", "/test.txt", query, {"host": ["examplebucket.s3.amazonaws.com"]})
    assert wire.verify(AWS_AUTH, now=AWS_NOW).presigned
    assert isinstance(error_of(wire, auth=AWS_AUTH, now=AWS_NOW + timedelta(days=1, seconds=1)), AccessDenied)


def test_aws_get_object_example() -> None:
    # "Signature Calculations for the Authorization Header": GET Object with a Range header.
    headers = {
        "host": ["examplebucket.s3.amazonaws.com"],
        "range": ["bytes=0-9"],
        "x-amz-content-sha256": [EMPTY_SHA256],
        "x-amz-date": ["20130524T000000Z"],
        "authorization": [
            f"AWS4-HMAC-SHA256 Credential={AWS_KEY}/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        ],
    }
    identity = Wire("GET", "/test.txt", "", headers).verify(AWS_AUTH, now=AWS_NOW)
    assert identity.account_id == "111122223333" and identity.payload.sha256 == EMPTY_SHA256


# --- URL helpers ----------------------------------------------------------------------------------------
def url_param(url: str, name: str) -> str:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))[name]


def set_param(url: str, name: str, value: str | None) -> str:
    split = urlsplit(url)
    pairs = [(k, v) for k, v in parse_qsl(split.query, keep_blank_values=True) if k != name]
    if value is not None:
        pairs.append((name, value))
    return split._replace(query=urlencode(pairs, quote_via=quote, safe="")).geturl()


def add_param(url: str, name: str, value: str) -> str:
    return f"{url}&{quote(name, safe='')}={quote(value, safe='')}"


def test_sigv2_signature_is_base64_hmac_sha1() -> None:
    # The SigV2 string to sign, spelled out once (RESTAuthentication): VERB, MD5, type, date, amz, resource.
    date = "Tue, 27 Mar 2007 19:36:42 +0000"
    string_to_sign = f"GET\n\n\n{date}\n/johnsmith/photos/puppy.jpg"
    signature = base64.b64encode(
        hmac.new(SECRET.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    ).decode()
    wire = Wire(
        "GET",
        "/johnsmith/photos/puppy.jpg",
        "",
        {"host": [ENDPOINT], "date": [date], "authorization": [f"AWS {ACCESS_KEY}:{signature}"]},
    )
    assert wire.verify(now=datetime(2007, 3, 27, 19, 40, tzinfo=UTC)).region == ""
