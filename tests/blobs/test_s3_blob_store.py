"""The S3 back end against a real moto server (fixtures in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from mlharbor.blobs import BlobStore, S3BlobStore

# The shared contract lives with the local tests. tests/ is a package but tests/blobs/ has no
# __init__.py today; accept either layout so adding one later does not break this import.
try:
    from .test_local_blob_store import BlobStoreContract
except ImportError:
    from test_local_blob_store import BlobStoreContract  # type: ignore[no-redef]


class TestS3Contract(BlobStoreContract):
    @pytest.fixture
    def store(self, s3_env: str) -> BlobStore:
        return S3BlobStore()

    @pytest.fixture
    def bucket(self, s3_bucket: str) -> str:
        return s3_bucket


def test_client_is_made_lazily_from_the_environment(s3_env: str) -> None:
    store = S3BlobStore()
    assert store._client is None  # constructing the store needs no AWS configuration
    assert store.client.meta.endpoint_url == s3_env
    assert store.client is store.client


def test_pagination(s3_bucket: str) -> None:
    store = S3BlobStore()
    store.page_size = 2  # force several ListObjectsV2 pages and DeleteObjects batches
    keys = [f"p/{i:02d}" for i in range(7)]
    for key in reversed(keys):
        store.put(f"s3://{s3_bucket}/{key}", b"x")
    store.put(f"s3://{s3_bucket}/q", b"x")
    assert [info.key for info in store.list(f"s3://{s3_bucket}/p/")] == keys
    assert store.delete_prefix(f"s3://{s3_bucket}/p/") == 7
    assert [info.key for info in store.list(f"s3://{s3_bucket}")] == ["q"]


def test_put_file_multipart(s3_bucket: str, tmp_path: Path) -> None:
    # Above boto3's 8 MiB threshold, upload_file switches to a multipart upload.
    source = tmp_path / "big.bin"
    payload = os.urandom(9 * 1024 * 1024)
    source.write_bytes(payload)
    store = S3BlobStore()
    store.put_file(f"s3://{s3_bucket}/big.bin", source)
    (info,) = store.list(f"s3://{s3_bucket}/big")
    assert info.size == len(payload)
    assert store.get(f"s3://{s3_bucket}/big.bin") == payload


def test_objects_are_visible_to_other_clients(s3_bucket: str) -> None:
    store = S3BlobStore()
    store.put(f"s3://{s3_bucket}/shared/key.txt", b"hello")
    other = boto3.client("s3")
    assert other.get_object(Bucket=s3_bucket, Key="shared/key.txt")["Body"].read() == b"hello"
    other.put_object(Bucket=s3_bucket, Key="shared/from-other", Body=b"hi")
    assert store.get(f"s3://{s3_bucket}/shared/from-other") == b"hi"
