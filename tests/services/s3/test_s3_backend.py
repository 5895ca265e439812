"""The S3 API over the S3 object-store back end (moto's S3 behind MLHarbor): the same answers, the bytes and
attributes kept in the backing store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from tests.conftest import REGION, aws_env, unique

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def backed(tmp_path_factory: Any, moto_endpoint: str) -> Any:
    from tests.conftest import _fresh_database, start_server, stop_server

    tmp = tmp_path_factory.mktemp("s3-backed")
    url, drop = _fresh_database(tmp)
    running = start_server(tmp, url, env={**aws_env(moto_endpoint, tmp), "MLHARBOR_OBJECT_STORE": "s3"})
    yield running
    stop_server(running)
    drop()


def test_objects_pass_through_to_the_backing_s3(backed: Any, moto_endpoint: str, tmp_path: Path) -> None:
    s3 = backed.client("s3")
    bucket = unique("backed").lower()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(
        Bucket=bucket, Key="docs/a.txt", Body=b"alpha", ContentType="text/plain", Metadata={"k": "v"}
    )
    got = s3.get_object(Bucket=bucket, Key="docs/a.txt")
    assert got["Body"].read() == b"alpha"
    assert got["ContentType"] == "text/plain" and got["Metadata"] == {"k": "v"}
    assert got["ETag"] == f'"{hashlib.md5(b"alpha").hexdigest()}"'
    assert s3.get_object(Bucket=bucket, Key="docs/a.txt", Range="bytes=1-2")["Body"].read() == b"lp"
    # The bytes really are in the backing store, under the same bucket and key.
    backing = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    assert backing.get_object(Bucket=bucket, Key="docs/a.txt")["Body"].read() == b"alpha"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MIB))
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    s3.upload_file(str(big), bucket, "docs/big.bin", Config=config)
    assert s3.head_object(Bucket=bucket, Key="docs/big.bin")["ETag"].endswith('-3"')
    s3.download_file(bucket, "docs/big.bin", str(tmp_path / "out.bin"), Config=config)
    assert (tmp_path / "out.bin").read_bytes() == big.read_bytes()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="docs/", Delimiter="/")
    assert [c["Key"] for c in listed["Contents"]] == ["docs/a.txt", "docs/big.bin"]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "docs/a.txt"}, {"Key": "docs/big.bin"}]})
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    s3.delete_bucket(Bucket=bucket)
