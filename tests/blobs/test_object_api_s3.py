"""The object API of the S3 back end against a real moto server: the shared contract plus what only a
backing S3 can show (metadata encoding, If-Match reads, server-side compose, the spool)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import boto3
import pytest

from mlharbor.blobs.s3 import S3BlobStore
from mlharbor.blobs.store import BlobChanged, BlobNotFound, BlobStore

from .object_api_contract import ObjectApiContract, md5, read_all

MIB = 1024 * 1024


class TestS3ObjectApi(ObjectApiContract):
    memory_test_mib = 64  # moto holds the upload in its own memory; 64 MiB is still 8 multipart parts
    # Each list call is an HTTP round trip: fewer combinations than the local store runs.
    starts_after = ["", "a/b", "a/b/c", "a-", "\U0001f600"]
    resume_limits = [2]

    @pytest.fixture
    def store(self, s3_env: str, tmp_path: Path) -> BlobStore:
        return S3BlobStore(spool_dir=tmp_path)

    @pytest.fixture
    def bucket(self, s3_bucket: str) -> str:
        return s3_bucket


@pytest.fixture
def store(s3_env: str, tmp_path: Path) -> S3BlobStore:
    spool = tmp_path / "spool"
    spool.mkdir()
    return S3BlobStore(spool_dir=spool)


def test_record_is_one_base64url_metadata_entry(store: S3BlobStore, s3_bucket: str) -> None:
    attributes = {"content-type": "a/b", "x-amz-meta-ü": 'line\nbreak "€" \x01', "": "empty"}
    with store.open_write(f"s3://{s3_bucket}/k") as writer:
        writer.write(b"data")
        writer.commit(etag="feed-3", attributes=attributes)
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key="k")
    (raw,) = head["Metadata"].values()
    assert list(head["Metadata"]) == ["mlharbor-object"]
    assert json.loads(base64.urlsafe_b64decode(raw)) == {"etag": "feed-3", "attributes": attributes}
    meta = store.stat(f"s3://{s3_bucket}/k")
    assert (meta.etag, dict(meta.attributes), meta.size) == ("feed-3", attributes, 4)


def test_objects_of_other_clients_report_the_backing_etag(store: S3BlobStore, s3_bucket: str) -> None:
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="k", Body=b"other", Metadata={"x": "y"})
    meta = store.stat(f"s3://{s3_bucket}/k")
    assert (meta.etag, dict(meta.attributes)) == (md5(b"other"), {})


def test_reader_of_a_replaced_object_fails_instead_of_mixing(store: S3BlobStore, s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/k"
    store.put(uri, b"old bytes")
    with store.open_object(uri) as reader:
        assert b"".join(reader.chunks(0, 3)) == b"old"
        store.put(uri, b"new bytes!")
        with pytest.raises(BlobChanged):
            list(reader.chunks())
        assert reader.meta.size == 9
        store.delete(uri)
        with pytest.raises(BlobNotFound):  # BlobChanged is a BlobNotFound
            list(reader.chunks())


def test_spool_is_removed(store: S3BlobStore, s3_bucket: str) -> None:
    assert store.spool_dir is not None
    spool = Path(store.spool_dir)
    with store.open_write(f"s3://{s3_bucket}/a") as writer:
        writer.write(b"x" * MIB)
        assert [p.stat().st_size for p in spool.iterdir()] == [MIB]  # on disk, not in memory
        writer.commit(etag="e", attributes={})
    with store.open_write(f"s3://{s3_bucket}/b") as writer:
        writer.write(b"aborted")
    assert list(spool.iterdir()) == []


def test_commit_to_a_missing_bucket(store: S3BlobStore) -> None:
    assert store.spool_dir is not None
    with store.open_write("s3://no-such-bucket-mlharbor/k") as writer:
        writer.write(b"x")
        with pytest.raises(BlobNotFound):
            writer.commit(etag="e", attributes={})
    assert list(Path(store.spool_dir).iterdir()) == []


def test_big_commit_uses_multipart(store: S3BlobStore, s3_bucket: str) -> None:
    payload = os.urandom(9 * MIB)  # above boto3's 8 MiB threshold
    with store.open_write(f"s3://{s3_bucket}/big") as writer:
        for start in range(0, len(payload), MIB):
            writer.write(payload[start : start + MIB])
        writer.commit(etag=md5(payload), attributes={"a": "b"})
    meta, data = read_all(store, f"s3://{s3_bucket}/big")
    assert (data == payload, meta.etag) == (True, md5(payload))
    # What the docstring warns of: the listing shows the backing multipart ETag.
    ((_, listed),) = store.list_page(s3_bucket)
    assert listed is not None and listed.etag.endswith("-2")


def test_compose_server_side(store: S3BlobStore, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB + 1), b"tail"]
    for n, part in enumerate(parts):
        store.put(f"s3://{s3_bucket}/parts/{n}", part)
    # Server-side only: no byte of the parts comes through this process.
    monkeypatch.setattr(store.client, "get_object", None)
    meta = store.compose(
        f"s3://{s3_bucket}/whole",
        [f"s3://{s3_bucket}/parts/{n}" for n in range(3)],
        etag="x-3",
        attributes={},
    )
    monkeypatch.undo()
    assert meta.size == sum(map(len, parts))
    meta, data = read_all(store, f"s3://{s3_bucket}/whole")
    assert (data == b"".join(parts), meta.etag) == (True, "x-3")
    listed = dict(store.list_page(s3_bucket, prefix="whole"))["whole"]
    # The S3 multipart ETag of those part boundaries: what CompleteMultipartUpload computes as well.
    expected = md5(b"".join(bytes.fromhex(md5(p)) for p in parts)) + "-3"
    assert listed is not None and listed.etag == expected


def test_copy_is_server_side(store: S3BlobStore, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put(f"s3://{s3_bucket}/src", b"payload")
    monkeypatch.setattr(store.client, "get_object", None)
    store.copy(f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/src", etag="c", attributes={"a": "1"})
    monkeypatch.undo()
    meta = store.stat(f"s3://{s3_bucket}/src")
    assert (meta.etag, dict(meta.attributes)) == ("c", {"a": "1"})


def test_server_side_copies_are_conditional_on_the_planned_version(
    store: S3BlobStore, s3_bucket: str
) -> None:
    # moto ignores x-amz-copy-source-if-match, so check what is sent; real S3 answers 412 to a part
    # replaced between the HEAD that sized it and its copy, which compose reports as BlobChanged.
    sent: list[tuple[str, str]] = []

    def capture(params: dict, model: object, **kwargs: object) -> None:
        sent.append((params["headers"]["x-amz-copy-source"], params["headers"]["x-amz-copy-source-if-match"]))

    for n in range(2):
        store.put(f"s3://{s3_bucket}/p{n}", bytes([n]) * (5 * MIB))
    store.client.meta.events.register("before-call.s3.UploadPartCopy", capture)
    store.client.meta.events.register("before-call.s3.CopyObject", capture)
    store.compose(
        f"s3://{s3_bucket}/out", [f"s3://{s3_bucket}/p0", f"s3://{s3_bucket}/p1"], etag="e", attributes={}
    )
    store.copy(f"s3://{s3_bucket}/p0", f"s3://{s3_bucket}/c", etag="e", attributes={})
    etag = f'"{md5(bytes([0]) * (5 * MIB))}"'
    assert [value for _, value in sent] == [etag, f'"{md5(bytes([1]) * (5 * MIB))}"', etag]
    assert sent[0][0].endswith("/p0") and sent[1][0].endswith("/p1")


def test_precondition_failures_are_blob_changed() -> None:
    from botocore.exceptions import ClientError

    from mlharbor.blobs.s3 import _copy_error
    from mlharbor.blobs.store import S3Uri

    failed = ClientError(
        {"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {"HTTPStatusCode": 412}},
        "UploadPartCopy",
    )
    assert isinstance(_copy_error(failed, S3Uri("b", "p"), S3Uri("b", "out")), BlobChanged)
