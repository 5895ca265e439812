"""Multipart uploads: boto3's managed transfers above the threshold, and the low-level operations' rules."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

MIB = 1024 * 1024
# 5 MiB parts (S3's minimum) keep the transfers small; the file spans three parts, the last a short one.
TRANSFER = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=4)


pytestmark = pytest.mark.storage


def completion(*parts: tuple[int, str]) -> dict[str, Any]:
    """CompleteMultipartUpload's document for (part number, ETag) pairs."""
    return {"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in parts]}


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"], exc.value.response["Error"]["Code"]


def test_upload_and_download_file_above_and_below_the_threshold(s3: Any, bucket: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MIB))
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(100_000))
    s3.upload_file(str(big), bucket, "data/big.bin", Config=TRANSFER)
    s3.upload_file(str(small), bucket, "data/small.bin", Config=TRANSFER)
    head = s3.head_object(Bucket=bucket, Key="data/big.bin", ChecksumMode="ENABLED")
    data = big.read_bytes()
    parts = [data[i : i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]
    expected_etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert head["ETag"] == f'"{expected_etag}"' and head["ContentLength"] == 11 * MIB
    assert head["PartsCount"] == 3
    # boto3 asked for CRC32: the object's checksum is the checksum of the parts' checksums.
    composite = zlib.crc32(b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)).to_bytes(4, "big")
    assert head["ChecksumCRC32"] == base64.b64encode(composite).decode() + "-3"
    assert head["ChecksumType"] == "COMPOSITE"
    # download_file uses ranged GETs with If-Match above the threshold.
    s3.download_file(bucket, "data/big.bin", str(tmp_path / "big.out"), Config=TRANSFER)
    s3.download_file(bucket, "data/small.bin", str(tmp_path / "small.out"), Config=TRANSFER)
    assert (tmp_path / "big.out").read_bytes() == data
    assert (tmp_path / "small.out").read_bytes() == small.read_bytes()
    part = s3.get_object(Bucket=bucket, Key="data/big.bin", PartNumber=3)
    assert (
        part["Body"].read() == parts[2]
        and part["ContentRange"] == f"bytes {10 * MIB}-{11 * MIB - 1}/{11 * MIB}"
    )
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_multipart_rules(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="m", ContentType="video/mp4", Metadata={"x": "y"})
    uid = upload["UploadId"]
    small = s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1, Body=b"tiny")
    last = s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=2, Body=b"end")
    with pytest.raises(ClientError) as exc:  # every part but the last must be 5 MiB or more
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="m",
            UploadId=uid,
            MultipartUpload=completion((1, small["ETag"]), (2, last["ETag"])),
        )
    assert code(exc) == (400, "EntityTooSmall")
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="m",
            UploadId=uid,
            MultipartUpload=completion((2, last["ETag"]), (1, small["ETag"])),
        )
    assert code(exc) == (400, "InvalidPartOrder")
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="m",
            UploadId=uid,
            MultipartUpload=completion((1, '"ffff"')),
        )
    assert code(exc) == (400, "InvalidPart")
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=10001, Body=b"x")
    assert code(exc) == (400, "InvalidArgument")
    # A part uploaded again replaces the first.
    big = os.urandom(5 * MIB)
    first = s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1, Body=big)
    listed = s3.list_parts(Bucket=bucket, Key="m", UploadId=uid)
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, 5 * MIB), (2, 3)]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [uid]
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="m",
        UploadId=uid,
        MultipartUpload=completion((1, first["ETag"]), (2, last["ETag"])),
    )
    assert done["ETag"].endswith('-2"') and done["Key"] == "m"
    got = s3.get_object(Bucket=bucket, Key="m")
    assert got["Body"].read() == big + b"end"
    assert got["ContentType"] == "video/mp4" and got["Metadata"] == {"x": "y"}
    with pytest.raises(s3.exceptions.NoSuchUpload):
        s3.list_parts(Bucket=bucket, Key="m", UploadId=uid)


def test_abort_removes_the_parts(server: Any, s3: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="gone")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="gone", UploadId=uid, PartNumber=1, Body=b"part")
    parts_dir = server.data_dir / "s3" / "mlharbor-uploads" / uid
    assert parts_dir.is_dir() and any(parts_dir.iterdir())
    s3.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=uid)
    assert not parts_dir.exists()
    with pytest.raises(s3.exceptions.NoSuchUpload):
        s3.upload_part(Bucket=bucket, Key="gone", UploadId=uid, PartNumber=2, Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="gone")
    assert code(exc)[0] == 404


def test_copy_of_a_big_object_uses_part_copies(s3: Any, bucket: str, new_bucket: Any) -> None:
    data = os.urandom(11 * MIB)
    s3.put_object(Bucket=bucket, Key="src", Body=data)
    target = new_bucket()
    # s3.copy is the managed copy: UploadPartCopy with byte ranges above the threshold.
    s3.copy({"Bucket": bucket, "Key": "src"}, target, "dst", Config=TRANSFER)
    assert s3.get_object(Bucket=target, Key="dst")["Body"].read() == data
