"""Objects in real S3 or any S3-compatible server, through boto3.

The client gets boto3's standard configuration and nothing else: ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the AWS config file) point it at MinIO, moto, ...;
credentials and region come from the usual environment, config files or instance role.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any, BinaryIO, cast

from boto3.session import Session
from botocore.exceptions import ClientError

from mlharbor.blobs.store import BlobNotFound, BlobStore, ObjectInfo, S3Uri, require_object_key

# Codes S3 (and compatible servers) use for "nothing there". HEAD responses carry no body, so
# botocore reports only the status as the code ("404").
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})


def _is_not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or status == 404


def _is_no_such_bucket(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "NoSuchBucket"


class S3BlobStore(BlobStore):
    # Keys per ListObjectsV2 page; 1000 is both S3's maximum and DeleteObjects' batch limit.
    page_size = 1000

    def __init__(self, client: Any | None = None) -> None:
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        # Made on first use, not at construction, so the server can start (and run with the local
        # store) without AWS configuration. A private Session keeps us off boto3's global default
        # session, whose lazy setup is not thread-safe; the client itself is safe to share.
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = Session().client("s3")
        return self._client

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if not _is_not_found(exc):
                raise
            region = self.client.meta.region_name
            where = {} if region in (None, "us-east-1") else {
                "CreateBucketConfiguration": {"LocationConstraint": region}
            }  # fmt: skip
            try:
                self.client.create_bucket(Bucket=bucket, **where)
            except ClientError as created:  # someone else made it meanwhile: as good
                if created.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",):
                    raise

    # --- reading -------------------------------------------------------------------------------------
    def get(self, uri: S3Uri | str) -> bytes:
        body = self._get_body(uri)
        try:
            return body.read()
        finally:
            body.close()

    def open_read(self, uri: S3Uri | str) -> BinaryIO:
        # botocore's StreamingBody reads in chunks but iterates in chunks too, not in lines, and has
        # no readinto/readline; wrapping it gives callers an ordinary buffered binary file.
        return cast(BinaryIO, io.BufferedReader(_BodyReader(self._get_body(uri)), 1024 * 1024))

    def exists(self, uri: S3Uri | str) -> bool:
        parsed = require_object_key(S3Uri.of(uri))
        try:
            self.client.head_object(Bucket=parsed.bucket, Key=parsed.key)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def list(self, prefix_uri: S3Uri | str) -> list[ObjectInfo]:
        prefix = S3Uri.of(prefix_uri)
        found: list[ObjectInfo] = []
        try:
            for page in self._pages(prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    found.append(
                        ObjectInfo(
                            uri=S3Uri(prefix.bucket, key),
                            key=key,
                            size=int(item["Size"]),
                            last_modified=item["LastModified"],
                        )
                    )
        except ClientError as exc:
            # Same as the local store: a missing bucket holds no objects.
            if _is_no_such_bucket(exc):
                return []
            raise
        # S3 already returns keys in UTF-8 byte order (= code point order); some servers may not.
        found.sort(key=lambda info: info.key)
        return found

    # --- writing -------------------------------------------------------------------------------------
    def put(self, uri: S3Uri | str, data: bytes, *, kms_key_id: str | None = None) -> None:
        parsed = require_object_key(S3Uri.of(uri))
        encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}
        self.client.put_object(Bucket=parsed.bucket, Key=parsed.key, Body=data, **encryption)

    def put_file(self, uri: S3Uri | str, path: Path | str) -> None:
        parsed = require_object_key(S3Uri.of(uri))
        # The managed transfer streams the file and switches to multipart upload for big files.
        self.client.upload_file(str(path), parsed.bucket, parsed.key)

    def delete(self, uri: S3Uri | str) -> None:
        parsed = require_object_key(S3Uri.of(uri))
        try:
            self.client.delete_object(Bucket=parsed.bucket, Key=parsed.key)
        except ClientError as exc:
            # DeleteObject of a missing key already succeeds; a missing bucket is "missing" too.
            if not _is_not_found(exc):
                raise

    def delete_prefix(self, prefix_uri: S3Uri | str) -> int:
        prefix = S3Uri.of(prefix_uri)
        deleted = 0
        try:
            # Deleting the page just listed is safe: the continuation token is a key position.
            for page in self._pages(prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                response = self.client.delete_objects(
                    Bucket=prefix.bucket, Delete={"Objects": keys, "Quiet": True}
                )
                # DeleteObjects answers 200 even when some keys fail; the failures are in Errors.
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise OSError(
                        f"could not delete {len(errors)} object(s) under {prefix}, e.g. "
                        f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                    )
                deleted += len(keys)
        except ClientError as exc:
            if _is_no_such_bucket(exc):
                return deleted
            raise
        return deleted

    # --- internals -----------------------------------------------------------------------------------
    def _get_body(self, uri: S3Uri | str) -> Any:
        parsed = require_object_key(S3Uri.of(uri))
        try:
            return self.client.get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"]
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFound(f"no object at {parsed}") from None
            raise

    def _pages(self, prefix: S3Uri) -> Any:
        paginator = self.client.get_paginator("list_objects_v2")
        return paginator.paginate(
            Bucket=prefix.bucket, Prefix=prefix.key, PaginationConfig={"PageSize": self.page_size}
        )


class _BodyReader(io.RawIOBase):
    """A raw stream over a botocore StreamingBody, for io.BufferedReader to buffer."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
