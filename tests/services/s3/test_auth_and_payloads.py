"""S3 signatures (SigV4 and SigV2, header and presigned), body checks, and account isolation."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import boto3
import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import REGION, unique, wait_until

ACCOUNT_A, ACCOUNT_B = "111111111111", "222222222222"


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"], exc.value.response["Error"]["Code"]


def xml_code(response: requests.Response) -> str:
    text = response.text
    return text[text.index("<Code>") + 6 : text.index("</Code>")]


def test_presigned_urls_work_with_plain_http(server: Any, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"for anyone with the link")
    # botocore presigns with SigV2 in us-east-1 by default, with SigV4 when asked.
    v2 = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"}, ExpiresIn=60)
    assert "AWSAccessKeyId=" in v2
    v4_client = server.client("s3", signature_version="s3v4")
    v4 = v4_client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"})
    assert "X-Amz-Signature=" in v4
    for url in (v2, v4):
        response = requests.get(url, timeout=10)
        assert response.status_code == 200 and response.content == b"for anyone with the link"
    put_url = v4_client.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "up.txt", "ContentType": "text/plain"}
    )
    response = requests.put(put_url, data=b"uploaded", headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 200, response.text
    got = s3.get_object(Bucket=bucket, Key="up.txt")
    assert got["Body"].read() == b"uploaded" and got["ContentType"] == "text/plain"
    # Tampering with a signed parameter, or the key, breaks the signature.
    response = requests.get(v4.replace("shared.txt", "up.txt"), timeout=10)
    assert (response.status_code, xml_code(response)) == (403, "SignatureDoesNotMatch")
    response = requests.get(v2.replace("shared.txt", "up.txt"), timeout=10)
    assert (response.status_code, xml_code(response)) == (403, "SignatureDoesNotMatch")
    expired = v4_client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "shared.txt"}, ExpiresIn=1
    )
    # Good for one second, then refused.
    # (A Response is falsy when it is an error, so the poll returns it in a list.)
    [response] = wait_until(
        lambda: [r] if (r := requests.get(expired, timeout=10)).status_code != 200 else None,
        timeout=10,
        what="the presigned URL to expire",
    )
    assert (response.status_code, xml_code(response)) == (403, "AccessDenied")
    assert "expired" in response.text


def test_anonymous_requests_are_denied(server: Any, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="private", Body=b"secret")
    response = requests.get(f"{server.url}/{bucket}/private", timeout=10)
    assert (response.status_code, xml_code(response)) == (403, "AccessDenied")
    response = requests.put(f"{server.url}/{bucket}/new", data=b"x", timeout=10)
    assert (response.status_code, xml_code(response)) == (403, "AccessDenied")


def test_body_checks_refuse_and_store_nothing(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad-crc", Body=b"hello world", ChecksumCRC32="AAAAAA==")
    assert code(exc) == (400, "BadDigest")
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad-md5", Body=b"hello world", ContentMD5=wrong_md5)
    assert code(exc) == (400, "BadDigest")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_a_body_that_is_not_the_signed_one_is_refused(server: Any, s3: Any, bucket: str) -> None:
    request = AWSRequest(method="PUT", url=f"{server.url}/{bucket}/k", data=b"what was signed")
    S3SigV4Auth(Credentials("test", "test"), "s3", REGION).add_auth(request)
    prepared = request.prepare()
    headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
    response = requests.put(prepared.url, data=b"something else", headers=headers, timeout=10)
    assert (response.status_code, xml_code(response)) == (400, "XAmzContentSHA256Mismatch")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_aws_chunked_bodies_with_trailing_checksums(server: Any, s3: Any, bucket: str) -> None:
    """What botocore sends over https (aws-chunked, unsigned payload, CRC32 trailer), sent over http."""
    data = b"x" * 70_000 + b"end"
    captured: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> Any:
        captured["headers"] = dict(request.headers)
        body = request.body
        captured["body"] = body.read() if hasattr(body, "read") else body
        raise RuntimeError("captured")

    https = boto3.client(
        "s3", endpoint_url=server.url.replace("http://", "https://"), region_name=REGION,
        aws_access_key_id="test", aws_secret_access_key="test", config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    https.meta.events.register("before-send.s3.PutObject", capture)
    with pytest.raises(RuntimeError):
        https.put_object(Bucket=bucket, Key="chunked", Body=data)
    # requests frames the body itself (chunked, from an iterator), as botocore does over https.
    headers = {
        k: v.decode() if isinstance(v, bytes) else v
        for k, v in captured["headers"].items()
        if k.lower() != "transfer-encoding"
    }
    assert headers["X-Amz-Content-SHA256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    url = f"{server.url}/{bucket}/chunked"
    response = requests.put(url, data=iter([captured["body"]]), headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    got = s3.get_object(Bucket=bucket, Key="chunked")
    assert got["Body"].read() == data and got.get("ContentEncoding") is None
    # The same request with one byte of the payload changed fails its trailing checksum: the object keeps
    # the bytes it had.
    body = bytearray(captured["body"])
    body[body.index(b"end")] = ord("E")
    response = requests.put(url, data=iter([bytes(body)]), headers=headers, timeout=10)
    assert (response.status_code, xml_code(response)) == (400, "BadDigest")
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == data


@pytest.fixture(scope="module")
def two_accounts(tmp_path_factory: Any) -> Any:
    from tests.conftest import _fresh_database, start_server, stop_server

    tmp = tmp_path_factory.mktemp("s3-accounts")
    credentials = tmp / "credentials.toml"
    credentials.write_text(
        f'[AKIDA]\nsecret_access_key = "secret-a"\naccount_id = "{ACCOUNT_A}"\n'
        f'[AKIDB]\nsecret_access_key = "secret-b"\naccount_id = "{ACCOUNT_B}"\n'
    )
    url, drop = _fresh_database(tmp)
    running = start_server(tmp, url, "--credentials", str(credentials))
    yield running
    stop_server(running)
    drop()


def test_accounts_see_only_their_buckets(two_accounts: Any) -> None:
    a = two_accounts.client("s3", access_key="AKIDA", secret="secret-a")
    b = two_accounts.client("s3", access_key="AKIDB", secret="secret-b")
    name = unique("owned").lower()
    a.create_bucket(Bucket=name)
    a.put_object(Bucket=name, Key="k", Body=b"a's")
    assert name not in [x["Name"] for x in b.list_buckets()["Buckets"]]
    for attempt in (
        lambda: b.get_object(Bucket=name, Key="k"),
        lambda: b.put_object(Bucket=name, Key="k", Body=b"b's"),
        lambda: b.list_objects_v2(Bucket=name),
        lambda: b.delete_object(Bucket=name, Key="k"),
        lambda: b.copy_object(Bucket=name, Key="c", CopySource=f"{name}/k"),
    ):
        with pytest.raises(ClientError) as exc:
            attempt()
        assert code(exc) == (403, "AccessDenied")
    with pytest.raises(ClientError) as exc:
        b.create_bucket(Bucket=name)
    assert code(exc) == (409, "BucketAlreadyExists")
    with pytest.raises(ClientError) as exc:  # ExpectedBucketOwner guards against writing to someone else's
        a.put_object(Bucket=name, Key="k2", Body=b"x", ExpectedBucketOwner=ACCOUNT_B)
    assert code(exc) == (403, "AccessDenied")
    assert a.get_object(Bucket=name, Key="k")["Body"].read() == b"a's"
    wrong_secret = two_accounts.client("s3", access_key="AKIDA", secret="nope")
    with pytest.raises(ClientError) as exc:
        wrong_secret.list_buckets()
    assert code(exc) == (403, "SignatureDoesNotMatch")
    unknown = two_accounts.client("s3", access_key="AKIDX", secret="nope")
    with pytest.raises(ClientError) as exc:
        unknown.list_buckets()
    assert code(exc) == (403, "InvalidAccessKeyId")
