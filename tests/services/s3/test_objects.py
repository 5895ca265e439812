"""S3 buckets and objects through boto3 against a real server: what a user of put/get/list/copy sees."""

from __future__ import annotations

import base64
import hashlib
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import unique

pytestmark = pytest.mark.storage


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    error = exc.value.response
    return error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]


# --- Buckets ------------------------------------------------------------------------------------------
def test_bucket_lifecycle(s3: Any) -> None:
    name = unique("life").lower()
    assert s3.create_bucket(Bucket=name)["Location"] == f"/{name}"
    s3.head_bucket(Bucket=name)
    listed = s3.list_buckets()
    assert name in [b["Name"] for b in listed["Buckets"]]
    assert len(listed["Owner"]["ID"]) == 64
    # us-east-1 answers 200 to re-creating your own bucket (AWS's legacy behaviour there).
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=name)
    assert code(exc) == (409, "BucketNotEmpty")
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket=name)
    assert code(exc)[0] == 404
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.list_objects_v2(Bucket=name)


def test_bucket_names_and_regions(server: Any, s3: Any) -> None:
    for bad in ("ab", "UPPER-case", "a..b", "192.168.1.1", "-dash", "xn--bucket"):
        with pytest.raises(ClientError) as exc:
            s3.create_bucket(Bucket=bad)
        assert code(exc) == (400, "InvalidBucketName"), bad
    west = server.client("s3", region_name="eu-west-1")
    name = unique("west").lower()
    west.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    with pytest.raises(ClientError) as exc:
        west.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert code(exc) == (409, "BucketAlreadyOwnedByYou")
    assert west.get_bucket_location(Bucket=name)["LocationConstraint"] == "eu-west-1"
    assert west.head_bucket(Bucket=name)["BucketRegion"] == "eu-west-1"
    # A constraint that is not the region the request was signed for is refused, nothing created.
    other = unique("mismatch").lower()
    with pytest.raises(ClientError) as exc:
        west.create_bucket(Bucket=other, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    assert code(exc)[1] == "IllegalLocationConstraintException"
    assert other not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    west.delete_bucket(Bucket=name)


def test_mlharbor_own_buckets_are_not_users(s3: Any) -> None:
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="mlharbor-models")
    assert code(exc) == (409, "BucketAlreadyExists")
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket="mlharbor-video")
    assert code(exc) == (403, "AccessDenied")


# --- Objects ------------------------------------------------------------------------------------------
def test_put_get_head_keep_bytes_metadata_and_checksums(s3: Any, bucket: str) -> None:
    body = b"hello world\n" * 1000
    put = s3.put_object(
        Bucket=bucket, Key="dir/hello.txt", Body=body, ContentType="text/plain", CacheControl="max-age=60",
        Metadata={"Origin": "unit-test", "n": "1"}, ServerSideEncryption="aws:kms", SSEKMSKeyId="alias/k",
    )  # fmt: skip
    md5 = hashlib.md5(body).hexdigest()
    crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert put["ETag"] == f'"{md5}"'
    assert put["ChecksumCRC32"] == crc  # botocore sends CRC32 by default; it is verified and kept
    assert put["ServerSideEncryption"] == "aws:kms" and put["SSEKMSKeyId"] == "alias/k"
    got = s3.get_object(Bucket=bucket, Key="dir/hello.txt", ChecksumMode="ENABLED")
    assert got["Body"].read() == body  # botocore validates the CRC32 it is sent back
    assert got["ContentType"] == "text/plain"
    assert got["CacheControl"] == "max-age=60"
    assert got["Metadata"] == {"origin": "unit-test", "n": "1"}
    assert got["ETag"] == f'"{md5}"' and got["ContentLength"] == len(body)
    assert got["ChecksumCRC32"] == crc
    assert got["ServerSideEncryption"] == "aws:kms"
    head = s3.head_object(Bucket=bucket, Key="dir/hello.txt")
    assert head["ContentLength"] == len(body) and head["ETag"] == f'"{md5}"'
    assert abs(head["LastModified"] - datetime.now(UTC)) < timedelta(minutes=1)
    # Replacing is atomic and complete: the new bytes, the new metadata.
    s3.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"v2")
    again = s3.get_object(Bucket=bucket, Key="dir/hello.txt")
    assert again["Body"].read() == b"v2"
    assert again["ContentType"] == "binary/octet-stream" and again.get("Metadata") == {}


def test_missing_objects_and_buckets(s3: Any, bucket: str) -> None:
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key="nope")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="nope")
    assert code(exc)[0] == 404
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.get_object(Bucket=unique("nobucket").lower(), Key="k")
    s3.delete_object(Bucket=bucket, Key="never-existed")  # 204 all the same


def test_ranges(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="r", Body=b"0123456789")
    for header, expected, content_range in (
        ("bytes=0-3", b"0123", "bytes 0-3/10"),
        ("bytes=7-", b"789", "bytes 7-9/10"),
        ("bytes=-2", b"89", "bytes 8-9/10"),
        ("bytes=5-100", b"56789", "bytes 5-9/10"),
    ):
        got = s3.get_object(Bucket=bucket, Key="r", Range=header, ChecksumMode="ENABLED")
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["Body"].read() == expected and got["ContentRange"] == content_range
        assert "ChecksumCRC32" not in got  # a whole-object checksum never comes with part of it
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="r", Range="bytes=10-")
    assert code(exc) == (416, "InvalidRange")
    # Not a single byte range: ignored, as S3 does.
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=0-1,4-5")["Body"].read() == b"0123456789"


def test_conditional_reads(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"abc")["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"abc"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert code(exc) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert code(exc)[0] == 304
    future = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=future)
    assert code(exc)[0] == 304
    past = datetime.now(UTC) - timedelta(hours=1)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert code(exc)[0] == 412


def test_delete_objects_reports_each_key(s3: Any, bucket: str) -> None:
    for key in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    result = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "zz"}, {"Key": "../up"}]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["a", "b", "zz"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("../up", "InvalidArgument")]
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "c"}], "Quiet": True})
    assert "Deleted" not in quiet
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_list_objects_v2_pages_with_delimiters(s3: Any, bucket: str) -> None:
    keys = ["a-b", "a.b", "a/b", "a/c/d", "a/c/e", "a0", "b", "photos/2026/x.jpg", "photos/y.jpg", "z"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [c["Key"] for c in listed["Contents"]] == sorted(keys)
    assert listed["KeyCount"] == len(keys) and not listed["IsTruncated"]
    # Paging two at a time with "/" walks keys and rolled-up prefixes in order, each once.
    seen: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2}
    ):
        seen += [c["Key"] for c in page.get("Contents", [])] + [
            p["Prefix"] for p in page.get("CommonPrefixes", [])
        ]
        assert page["KeyCount"] <= 2
    assert sorted(seen) == ["a-b", "a.b", "a/", "a0", "b", "photos/", "z"]
    inside = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [c["Key"] for c in inside["Contents"]] == ["a/b"]
    assert [p["Prefix"] for p in inside["CommonPrefixes"]] == ["a/c/"]
    after = s3.list_objects_v2(Bucket=bucket, StartAfter="a0")
    assert [c["Key"] for c in after["Contents"]][0] == "b"
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="not-a-token")
    assert code(exc) == (400, "InvalidArgument")


def test_keys_with_special_characters_round_trip(s3: Any, bucket: str) -> None:
    keys = ["a b+c.txt", "ünï/cødé ✓.bin", "100%.txt", "q?x=1&y", "tilde~", "semi;colon"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    # botocore asks for EncodingType=url and decodes what comes back.
    listed = s3.list_objects_v2(Bucket=bucket)
    assert sorted(c["Key"] for c in listed["Contents"]) == sorted(keys)
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()


def test_copy_object(s3: Any, bucket: str, new_bucket: Any) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"payload", ContentType="text/plain", Metadata={"a": "1"})
    other = new_bucket()
    copied = s3.copy_object(Bucket=other, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"payload").hexdigest()}"'
    got = s3.get_object(Bucket=other, Key="dst")
    assert (
        got["Body"].read() == b"payload"
        and got["Metadata"] == {"a": "1"}
        and got["ContentType"] == "text/plain"
    )
    s3.copy_object(
        Bucket=bucket, Key="src", CopySource=f"{bucket}/src", MetadataDirective="REPLACE", Metadata={"b": "2"}
    )
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"b": "2"}
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="src", CopySource=f"{bucket}/src")
    assert code(exc) == (400, "InvalidRequest")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.copy_object(Bucket=bucket, Key="x", CopySource=f"{bucket}/missing")
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="x", CopySource=f"{bucket}/src", CopySourceIfMatch='"nope"')
    assert code(exc) == (412, "PreconditionFailed")


def test_unsupported_requests_are_refused_not_ignored(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"x", Tagging="a=b")
    assert code(exc) == (501, "NotImplemented")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"x", ACL="public-read")
    assert code(exc) == (501, "NotImplemented")
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_policy(Bucket=bucket)
    assert code(exc) == (501, "NotImplemented")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../escape", "/absolute", "a//b", "nul\x00byte", "dir/", "a/./b"]
)
def test_keys_that_would_leave_the_bucket_are_refused(server: Any, s3: Any, bucket: str, key: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert code(exc) == (400, "InvalidArgument")
    assert not (server.data_dir / "escape").exists()
    assert not (server.data_dir / "s3" / "escape").exists()
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_an_encoded_dot_dot_is_an_ordinary_name(server: Any, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a/%2e%2e/b", Body=b"literal")
    assert s3.get_object(Bucket=bucket, Key="a/%2e%2e/b")["Body"].read() == b"literal"
    assert (server.data_dir / "s3" / bucket / "a" / "%2e%2e" / "b").read_bytes() == b"literal"


def test_objects_the_ml_services_wrote_are_readable(server: Any, s3: Any, bucket: str) -> None:
    """A detection job or a connected-home processor writes straight into the object store: the S3 API
    serves those objects as they are, with an MD5 ETag."""
    folder = server.data_dir / "s3" / bucket / "output"
    folder.mkdir(parents=True)
    (folder / "output.tar.gz").write_bytes(b"written by a worker")
    head = s3.head_object(Bucket=bucket, Key="output/output.tar.gz")
    assert head["ETag"] == f'"{hashlib.md5(b"written by a worker").hexdigest()}"'
    assert s3.get_object(Bucket=bucket, Key="output/output.tar.gz")["Body"].read() == b"written by a worker"
