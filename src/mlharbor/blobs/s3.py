"""Objects in real S3 or any S3-compatible server, through boto3.

The client gets boto3's standard configuration and nothing else: ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the AWS config file) point it at MinIO, moto, ...;
credentials and region come from the usual environment, config files or instance role.

ETags and attributes (for the S3 API). :meth:`S3BlobStore.open_write` spools to a temp file (deleted
after) and its commit uploads that file (multipart above boto3's 8 MiB threshold), with the etag and
attributes as base64url JSON in one user-metadata entry, ``x-amz-meta-mlharbor-object``, so any
character survives. ``stat``/``open_object`` read them back; an object without it (written by ``put``
or another client) reports the backing ETag and ``{}``. Caveats:

* ``list_page`` reports the backing ETag (ListObjectsV2 returns no user metadata), and attributes
  ``{}``. For objects committed through a multipart upload (over 8 MiB) or composed from small parts
  that backing ETag ("<hex>-N" or an MD5 of other part boundaries) differs from what ``stat`` returns.
  ``compose`` of parts of at least 5 MiB (S3's multipart rule) copies server-side with one
  UploadPartCopy per part, whose backing ETag is then the S3 multipart ETag of those parts.
* Real S3 allows 2 KB of user metadata: with base64's overhead, etag plus attributes must stay under
  about 1.5 KB of JSON (moto does not check).
* ``open_object`` makes one HEAD; each ``chunks`` call is one ranged GET conditional on the ETag
  (If-Match), so an object replaced meanwhile fails with :class:`BlobChanged` instead of mixing versions.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from boto3.exceptions import S3UploadFailedError
from boto3.session import Session
from botocore.exceptions import ClientError

from mlharbor.blobs.store import (
    BlobChanged,
    BlobConflict,
    BlobNotFound,
    BlobStore,
    ObjectInfo,
    ObjectMeta,
    ObjectReader,
    ObjectWriter,
    S3Uri,
    check_commit,
    require_object_key,
)

# Codes S3 (and compatible servers) use for "nothing there". HEAD responses carry no body, so
# botocore reports only the status as the code ("404").
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})


def _is_not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or status == 404


def _is_no_such_bucket(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "NoSuchBucket"


def _is_precondition_failed(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "412") or status == 412


# User metadata key (x-amz-meta-mlharbor-object) holding an object's etag and attributes.
_META_KEY = "mlharbor-object"
# S3's multipart limits: parts of 5 MiB .. 5 GiB (the last may be smaller), at most 10,000 of them.
_MIN_PART = 5 * 1024 * 1024
_MAX_PART = 5 * 1024 * 1024 * 1024
_MAX_PARTS = 10_000


def _encode_record(etag: str, attributes: Mapping[str, str]) -> str:
    # base64url: metadata travels in HTTP headers, where non-ASCII and control characters do not survive.
    text = json.dumps({"etag": etag, "attributes": dict(attributes)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")


def _decode_record(metadata: Mapping[str, str]) -> tuple[str, dict[str, str]] | None:
    raw = metadata.get(_META_KEY)
    if raw is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw.encode("ascii")))
        etag, attributes = value["etag"], value["attributes"]
    except (ValueError, KeyError, TypeError):
        return None  # not ours (someone else's metadata under our name): treat as a plain object
    if not isinstance(etag, str) or not isinstance(attributes, dict):
        return None
    return etag, {str(k): str(v) for k, v in attributes.items()}


def _meta_of_head(head: Mapping[str, Any]) -> ObjectMeta:
    record = _decode_record(head.get("Metadata", {}))
    etag, attributes = record if record is not None else (_strip_etag(head["ETag"]), {})
    return ObjectMeta(int(head["ContentLength"]), etag, head["LastModified"], attributes)


def _strip_etag(etag: str) -> str:
    return etag.strip('"')


class S3BlobStore(BlobStore):
    # Keys per ListObjectsV2 page; 1000 is both S3's maximum and DeleteObjects' batch limit.
    page_size = 1000

    def __init__(self, client: Any | None = None, *, spool_dir: Path | str | None = None) -> None:
        self._client = client
        self._lock = threading.Lock()
        # Where open_write spools objects before uploading them (None: the system temp folder).
        self.spool_dir = None if spool_dir is None else str(spool_dir)

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

    # --- the S3 API: versions, etags, pages ---------------------------------------------------------
    def open_write(self, uri: S3Uri | str) -> ObjectWriter:
        # S3 takes any key S3Uri accepts; a missing bucket shows at commit (BlobNotFound).
        return _S3Writer(self, require_object_key(S3Uri.of(uri)))

    def open_object(self, uri: S3Uri | str) -> ObjectReader:
        parsed = require_object_key(S3Uri.of(uri))
        head = self._head(parsed)
        return _S3Reader(self, parsed, _meta_of_head(head), head["ETag"])

    def stat(self, uri: S3Uri | str) -> ObjectMeta:
        return _meta_of_head(self._head(require_object_key(S3Uri.of(uri))))

    def list_page(
        self, bucket: str, *, prefix: str = "", start_after: str = "", delimiter: str = "", limit: int = 1000
    ) -> list[tuple[str, ObjectMeta | None]]:
        S3Uri(bucket)  # the bucket name check every other method makes
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if delimiter:
            request["Delimiter"] = delimiter
        if start_after:
            request["StartAfter"] = start_after
        page: list[tuple[str, ObjectMeta | None]] = []
        while len(page) < limit:
            try:
                response = self.client.list_objects_v2(**request, MaxKeys=min(limit - len(page), 1000))
            except ClientError as exc:
                if _is_no_such_bucket(exc):
                    return []
                raise
            page.extend(_page_entries(response, start_after))
            if not response.get("IsTruncated"):
                break
            request.pop("StartAfter", None)
            request["ContinuationToken"] = response["NextContinuationToken"]
        return page[:limit]

    def compose(
        self,
        uri: S3Uri | str,
        parts: Sequence[S3Uri | str],
        *,
        etag: str,
        attributes: Mapping[str, str],
    ) -> ObjectMeta:
        dest = require_object_key(S3Uri.of(uri))
        kept = check_commit(etag, attributes)
        sources = [require_object_key(S3Uri.of(part)) for part in parts]
        heads = [self._head(source) for source in sources]  # BlobNotFound before anything is written
        pieces = _plan_pieces(sources, heads)
        if pieces is None:  # parts too small for UploadPartCopy (or none): stream them through a spool
            return super().compose(dest, sources, etag=etag, attributes=kept)
        metadata = {_META_KEY: _encode_record(etag, kept)}
        if len(pieces) == 1:
            self._copy_object(dest, pieces[0], metadata)
        else:
            self._copy_parts(dest, pieces, metadata)
        size = sum(int(head["ContentLength"]) for head in heads)
        return ObjectMeta(size, etag, datetime.now(UTC), kept)

    def create_bucket(self, bucket: str) -> None:
        self.ensure_bucket(S3Uri(bucket).bucket)

    def delete_bucket(self, bucket: str) -> None:
        S3Uri(bucket)
        try:
            self.client.delete_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "BucketNotEmpty":
                raise BlobConflict(f"bucket {bucket} is not empty") from None
            if not _is_not_found(exc):
                raise

    # --- internals -----------------------------------------------------------------------------------
    def _head(self, uri: S3Uri) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], self.client.head_object(Bucket=uri.bucket, Key=uri.key))
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFound(f"no object at {uri}") from None
            raise

    def _copy_object(self, dest: S3Uri, piece: _Piece, metadata: dict[str, str]) -> None:
        source, etag, _, _ = piece
        try:
            # REPLACE: the new etag and attributes, even when copying an object onto itself.
            self.client.copy_object(
                Bucket=dest.bucket,
                Key=dest.key,
                CopySource={"Bucket": source.bucket, "Key": source.key},
                CopySourceIfMatch=etag,
                MetadataDirective="REPLACE",
                Metadata=metadata,
            )
        except ClientError as exc:
            raise _copy_error(exc, source, dest) from None

    def _copy_parts(self, dest: S3Uri, pieces: list[_Piece], metadata: dict[str, str]) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=dest.bucket, Key=dest.key, Metadata=metadata)[
            "UploadId"
        ]
        try:
            done = []
            for number, (source, etag, start, end) in enumerate(pieces, 1):
                result = self.client.upload_part_copy(
                    Bucket=dest.bucket,
                    Key=dest.key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": source.bucket, "Key": source.key},
                    CopySourceRange=f"bytes={start}-{end - 1}",
                    CopySourceIfMatch=etag,  # the version whose size we planned with
                )
                done.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=dest.bucket, Key=dest.key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException as exc:
            # An unfinished upload is invisible but billed by S3: abort it.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=dest.bucket, Key=dest.key, UploadId=upload_id)
            if isinstance(exc, ClientError):
                raise _copy_error(exc, pieces[0][0], dest) from None
            raise

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


# (source, its backing ETag as HEAD returned it, start, end): one UploadPartCopy of bytes [start, end).
_Piece = tuple[S3Uri, str, int, int]


def _plan_pieces(sources: list[S3Uri], heads: list[dict[str, Any]]) -> list[_Piece] | None:
    """The server-side copy plan for compose, or None if S3's part rules rule it out: every piece but
    the last must have 5 MiB, none more than 5 GiB (a bigger part is split), at most 10,000."""
    pieces: list[_Piece] = []
    for source, head in zip(sources, heads, strict=True):
        size = int(head["ContentLength"])
        if size == 0:
            continue  # adds nothing
        count = math.ceil(size / _MAX_PART)
        bounds = [size * i // count for i in range(count + 1)]
        pieces.extend((source, head["ETag"], bounds[i], bounds[i + 1]) for i in range(count))
    if not pieces or len(pieces) > _MAX_PARTS:
        return None
    if any(end - start < _MIN_PART for _, _, start, end in pieces[:-1]):
        return None
    return pieces


def _copy_error(exc: ClientError, source: S3Uri, dest: S3Uri) -> Exception:
    if _is_precondition_failed(exc):
        return BlobChanged(f"{source} changed while it was copied to {dest}")
    if _is_not_found(exc):
        return BlobNotFound(f"{source} or the bucket of {dest} is gone")
    return exc


def _page_entries(response: Mapping[str, Any], start_after: str) -> list[tuple[str, ObjectMeta | None]]:
    """One ListObjectsV2 response as list_page entries, in key order, none at or before start_after."""
    entries: list[tuple[str, ObjectMeta | None]] = [
        (item["Key"], ObjectMeta(int(item["Size"]), _strip_etag(item["ETag"]), item["LastModified"], {}))
        for item in response.get("Contents", [])
    ]
    entries.extend((item["Prefix"], None) for item in response.get("CommonPrefixes", []))
    # S3 returns keys and common prefixes as two sorted lists. Servers differ on whether StartAfter=P
    # may return the common prefix P again: our contract says no.
    entries.sort(key=lambda entry: entry[0])
    return [entry for entry in entries if entry[0] > start_after]


class _S3Writer(ObjectWriter):
    def __init__(self, store: S3BlobStore, uri: S3Uri) -> None:
        self.bytes_written = 0
        self._store = store
        self._uri = uri
        fd, self._spool = tempfile.mkstemp(prefix="mlharbor-s3-spool-", dir=store.spool_dir)
        self._file: io.BufferedWriter | None = os.fdopen(fd, "wb")

    def write(self, data: bytes | memoryview) -> None:
        if self._file is None:
            raise ValueError(f"the writer for {self._uri} is already committed or aborted")
        self.bytes_written += self._file.write(data)

    def commit(self, *, etag: str, attributes: Mapping[str, str]) -> ObjectMeta:
        if self._file is None:
            raise ValueError(f"the writer for {self._uri} is already committed or aborted")
        try:
            kept = check_commit(etag, attributes)
            self._file.close()
            self._upload({_META_KEY: _encode_record(etag, kept)})
        finally:
            self.abort()  # the spool is not needed any more, uploaded or not
        # S3 answers a PUT with no Last-Modified; the commit time is what it records, to the second.
        return ObjectMeta(self.bytes_written, etag, datetime.now(UTC), kept)

    def _upload(self, metadata: dict[str, str]) -> None:
        uri = self._uri
        try:
            # The managed transfer streams the file and switches to multipart upload for big files.
            self._store.client.upload_file(self._spool, uri.bucket, uri.key, ExtraArgs={"Metadata": metadata})
        except S3UploadFailedError as exc:
            # boto3 wraps the ClientError without chaining it explicitly; the context still has it.
            cause = exc.__context__
            if isinstance(cause, ClientError) and _is_not_found(cause):
                raise BlobNotFound(f"cannot store {uri}: no bucket {uri.bucket}") from exc
            raise

    def abort(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
        if self._spool:
            with contextlib.suppress(OSError):
                os.unlink(self._spool)
            self._spool = ""

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.abort()


class _S3Reader(ObjectReader):
    """The version HEAD saw: each chunks() call is one ranged GET with If-Match on its ETag."""

    def __init__(self, store: S3BlobStore, uri: S3Uri, meta: ObjectMeta, backing_etag: str) -> None:
        self.meta = meta
        self._store = store
        self._uri = uri
        self._backing_etag = backing_etag
        self._closed = False

    def chunks(self, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        start, end = self._bounds(start, end, chunk_size)  # checked now, not at the first next()
        return self._chunks(start, end, chunk_size)

    def _chunks(self, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
        if start == end:
            return  # no request: an empty range cannot be asked for
        if self._closed:
            raise ValueError(f"the reader for {self._uri} is closed")
        body = self._get(start, end)
        try:
            remaining = end - start
            while remaining:
                data = body.read(min(chunk_size, remaining))
                if not data:
                    raise OSError(f"{self._uri}: the connection ended {remaining} bytes early")
                remaining -= len(data)
                yield data
        finally:
            body.close()

    def _get(self, start: int, end: int) -> Any:
        uri = self._uri
        try:
            response = self._store.client.get_object(
                Bucket=uri.bucket, Key=uri.key, Range=f"bytes={start}-{end - 1}", IfMatch=self._backing_etag
            )
        except ClientError as exc:
            if _is_precondition_failed(exc) or _is_not_found(exc):
                raise BlobChanged(f"{uri} was replaced or deleted after it was opened") from None
            raise
        return response["Body"]

    def close(self) -> None:
        self._closed = True
