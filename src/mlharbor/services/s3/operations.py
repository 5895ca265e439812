"""The S3 operations, one function each, over MLHarbor's object store.

Every handler waits on the object store, so all are ``@blocking``. A streaming request body (PutObject's and
UploadPart's ``Body``) arrives as an ``UploadBody``: its ``chunks()`` are the object's bytes as they arrive,
and ``finish()`` checks what the request claimed about them (SHA-256, Content-MD5, a checksum) before the
object is committed: a mismatch leaves nothing behind. A result may carry ``STATUS`` (GetObject's 206).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, unquote

from mlharbor.api.services import blocking
from mlharbor.blobs.store import BlobConflict, BlobNotFound, InvalidS3Uri, ObjectMeta, S3Uri
from mlharbor.context import Call
from mlharbor.errors import (
    AccessDenied,
    BadDigest,
    BadPaginationToken,
    BucketNotEmpty,
    EntityTooLarge,
    EntityTooSmall,
    IllegalLocationConstraintException,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    InvalidRequest,
    MalformedXML,
    NoSuchKey,
    S3NotImplemented,
)
from mlharbor.services.s3 import buckets, multipart, objects

STATUS = "__status__"  # a result key the front door takes as the HTTP status
RAW_BODY = "__body__"  # a result key the front door sends as the whole XML body
XMLNS_RESULT_MAX_KEYS = 1000
INLINE_BYTES = 1024 * 1024  # a GetObject body up to this size is sent whole, not streamed
# S3's XML root elements, which botocore's model does not name (its parser ignores the root).
XML_ROOTS = {
    "ListObjects": "ListBucketResult",
    "ListObjectsV2": "ListBucketResult",
    "ListBuckets": "ListAllMyBucketsResult",
    "CreateMultipartUpload": "InitiateMultipartUploadResult",
    "CompleteMultipartUpload": "CompleteMultipartUploadResult",
    "ListParts": "ListPartsResult",
    "ListMultipartUploads": "ListMultipartUploadsResult",
    "DeleteObjects": "DeleteResult",
}


class UploadBody(Protocol):
    def require_checksum(self, algorithm: str) -> None: ...
    def chunks(self) -> Iterator[bytes]: ...
    def finish(self) -> Any: ...  # api.s3payload.Payload: size, md5_hex, checksums


# --- Buckets ------------------------------------------------------------------------------------------
@blocking
def create_bucket(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["Bucket"]
    buckets.check_name(name)
    objects.refuse_unsupported(params)
    if params.get("ObjectLockEnabledForBucket"):
        raise S3NotImplemented(
            "MLHarbor's S3 does not implement Object Lock", Header="x-amz-bucket-object-lock-enabled"
        )
    region = call.region or "us-east-1"
    constraint = (params.get("CreateBucketConfiguration") or {}).get("LocationConstraint")
    if constraint == "EU":
        constraint = "eu-west-1"
    if (constraint or "us-east-1") != region:
        raise _illegal_location(constraint, region)
    buckets.create(call.store, call, name, region)
    # The folder (or backing bucket) is made now so an empty bucket lists as empty, and adopted if the ML
    # services already wrote there.
    call.server.blobs.create_bucket(name)
    return {"Location": f"/{name}"}


def _illegal_location(constraint: str | None, region: str) -> IllegalLocationConstraintException:
    where = "unspecified" if constraint is None else constraint
    return IllegalLocationConstraintException(
        f"The {where} location constraint is incompatible for the region specific endpoint this request was "
        f"sent to ({region}).",
        LocationConstraint=constraint or "",
    )


@blocking
def head_bucket(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params)
    return {"BucketRegion": row.region}


@blocking
def get_bucket_location(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params, any_region=True)
    # us-east-1 is the empty constraint, as S3 answers. The answer is the root element's text, which the
    # model-driven writer cannot produce.
    text = "" if row.region == "us-east-1" else row.region
    return {
        RAW_BODY: b'<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint '
        b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' + text.encode() + b"</LocationConstraint>"
    }


@blocking
def list_buckets(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    prefix = params.get("Prefix") or ""
    wanted_region = params.get("BucketRegion")
    with call.store.read() as conn:
        rows = buckets.listing(conn, call.account_id)
    limit = params.get("MaxBuckets") or 10_000
    after = ""
    if params.get("ContinuationToken"):
        after = _decode_token(call, ("ListBuckets",), params["ContinuationToken"])
    chosen = [
        r
        for r in rows
        if r.name > after
        and r.name.startswith(prefix)
        and (wanted_region is None or r.region == wanted_region)
    ]
    result: dict[str, Any] = {
        "Buckets": [
            {
                "Name": r.name,
                "CreationDate": datetime.fromtimestamp(r.created_at, UTC),
                "BucketRegion": r.region,
                "BucketArn": f"arn:aws:s3:::{r.name}",
            }
            for r in chosen[:limit]
        ],
        "Owner": owner(call.account_id),
    }
    if prefix:
        result["Prefix"] = prefix
    if len(chosen) > limit:
        result["ContinuationToken"] = _encode_token(call, ("ListBuckets",), chosen[limit - 1].name)
    return result


@blocking
def delete_bucket(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    blobs = call.server.blobs
    row = _bucket(call, params)
    if blobs.list_page(row.name, limit=1):
        raise BucketNotEmpty(BucketName=row.name)
    try:
        blobs.delete_bucket(row.name)
    except BlobConflict:  # an object arrived meanwhile
        raise BucketNotEmpty(BucketName=row.name) from None
    with call.store.begin() as conn:
        uploads = multipart.in_bucket(conn, row.name)
        for upload_id in uploads:
            multipart.remove(conn, upload_id)
        buckets.remove(conn, call, row.name)
    for upload_id in uploads:
        _delete_part_blobs(call, upload_id)
    return {}


def owner(account_id: str) -> dict[str, str]:
    """The account as S3 shows owners: a 64-hex canonical user id (derived, stable) and no display name."""
    return {"ID": hashlib.sha256(f"mlharbor:{account_id}".encode()).hexdigest()}


# --- Objects ------------------------------------------------------------------------------------------
@blocking
def put_object(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params)
    location = objects.uri(row.name, params["Key"])
    attributes = objects.attributes_from(params)
    meta, payload = _write_body(call, location, params["Body"], attributes, params.get("ChecksumAlgorithm"))
    return {
        "ETag": objects.quoted(meta.etag),
        **objects.checksum_fields(meta.attributes),
        **_sse(meta.attributes),
    }


def _write_body(
    call: Call, location: S3Uri, body: UploadBody, attributes: dict[str, str], algorithm: str | None
) -> tuple[ObjectMeta, Any]:
    """Stream the request body into a new object; committed only when every claim about it held."""
    if algorithm:
        body.require_checksum(algorithm)
    try:
        with call.server.blobs.open_write(location) as writer:
            for chunk in body.chunks():
                writer.write(chunk)
                if writer.bytes_written > objects.MAX_OBJECT_BYTES:
                    raise EntityTooLarge(
                        ProposedSize=str(writer.bytes_written), MaxSizeAllowed=str(objects.MAX_OBJECT_BYTES)
                    )
            payload = body.finish()
            attributes = {**attributes, **objects.checksum_attributes(payload.checksums)}
            return writer.commit(etag=payload.md5_hex, attributes=attributes), payload
    except (BlobConflict, InvalidS3Uri) as exc:
        raise objects.store_conflict(exc, location.key) from None


def _sse(attributes: dict[str, str] | Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("ServerSideEncryption", "SSEKMSKeyId", "SSEKMSEncryptionContext"):
        if name in attributes:
            out[name] = attributes[name]
    if "BucketKeyEnabled" in attributes:
        out["BucketKeyEnabled"] = attributes["BucketKeyEnabled"] == "true"
    return out


@blocking
def get_object(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    location = _object_location(call, params)
    reader = objects.open_existing(call.server.blobs, location)
    try:
        result, (start, end) = _read_answer(reader.meta, params)
        if end - start <= INLINE_BYTES:
            # Read here, in the handler's thread: streaming it would cost a thread hop per chunk.
            result["Body"] = b"".join(reader.chunks(start, end))
            reader.close()
        else:
            result["Body"] = objects.body_chunks(reader, start, end)
    except BaseException:
        reader.close()
        raise
    return result


def _object_location(call: Call, params: dict[str, Any]) -> S3Uri:
    """The object a GetObject or HeadObject reads, once the bucket and the request's options are checked."""
    row = _bucket(call, params)
    objects.refuse_unsupported(params)
    return objects.uri(row.name, params["Key"])


def _read_answer(meta: ObjectMeta, params: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int]]:
    """GetObject's and HeadObject's header members for one version, and the byte span they describe: the
    conditions checked, a range or part turned into 206 + Content-Range."""
    objects.check_conditions(meta, params)
    span = _span(meta, params)
    start, end = span or (0, meta.size)
    # A checksum describes the whole object: never sent with part of it (botocore would reject it).
    result = objects.head_fields(meta, checksums=span is None and params.get("ChecksumMode") == "ENABLED")
    result.update(_response_overrides(params))
    result["ContentLength"] = end - start
    if span is not None:
        result["ContentRange"] = f"bytes {start}-{end - 1}/{meta.size}"
        result[STATUS] = 206
    return result, (start, end)


def _span(meta: ObjectMeta, params: dict[str, Any]) -> tuple[int, int] | None:
    part = params.get("PartNumber")
    if part is None:
        return objects.byte_range(params.get("Range"), meta.size)
    if params.get("Range"):
        raise InvalidRequest("Cannot specify both Range header and partNumber query parameter")
    count = int(meta.attributes.get("PartsCount", "1"))
    if part < 1 or part > count:
        raise objects.InvalidRange(RangeRequested=f"partNumber={part}", ActualObjectSize=str(meta.size))
    if count == 1:
        return None
    size = int(meta.attributes.get("PartSize", "0"))
    if not size:
        raise S3NotImplemented("This object's parts are not of one size: read it with a Range instead")
    return (part - 1) * size, min(part * size, meta.size)


def _response_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """response-content-type=... and friends: a presigned GET may choose the headers of its answer."""
    out: dict[str, Any] = {}
    for member in ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage", "ContentType"):
        value = params.get(f"Response{member}")
        if value is not None:
            out[member] = value
    if params.get("ResponseExpires") is not None:
        out["Expires"] = params["ResponseExpires"]
    return out


@blocking
def head_object(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    location = _object_location(call, params)
    result, _ = _read_answer(objects.stat_existing(call.server.blobs, location), params)
    return result


@blocking
def delete_object(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params)
    objects.refuse_unsupported(params, writing=True)
    _delete_key(call, row.name, params["Key"])
    return {}


def _delete_key(call: Call, bucket: str, key: str) -> None:
    try:
        call.server.blobs.delete(objects.uri(bucket, key))
    except InvalidS3Uri as exc:
        raise objects.store_conflict(exc, key) from None


@blocking
def delete_objects(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params)
    objects.refuse_unsupported(params)
    request = params["Delete"]
    entries = request.get("Objects", [])
    if len(entries) > 1000:
        raise MalformedXML()
    quiet = bool(request.get("Quiet"))
    deleted: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for entry in entries:
        key = entry["Key"]
        if entry.get("VersionId") not in (None, "null"):
            failed.append({"Key": key, "Code": "NotImplemented", "Message": "Object versions are not kept"})
            continue
        try:
            _delete_key(call, row.name, key)
        except (InvalidArgument, objects.KeyTooLongError) as exc:
            failed.append({"Key": key, "Code": exc.code, "Message": exc.message})
            continue
        if not quiet:
            deleted.append({"Key": key})
    result: dict[str, Any] = {}
    if deleted:
        result["Deleted"] = deleted
    if failed:
        result["Errors"] = failed
    return result


@blocking
def copy_object(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params)
    source_bucket, source_key = _copy_source(params["CopySource"])
    source_row = buckets.find(call, source_bucket) if source_bucket != row.name else row
    objects.refuse_unsupported(params, writing=True)
    blobs = call.server.blobs
    source = objects.uri(source_row.name, source_key)
    target = objects.uri(row.name, params["Key"])
    meta = objects.stat_existing(blobs, source)
    objects.check_conditions(meta, params, prefix="CopySource")
    directive = params.get("MetadataDirective", "COPY")
    if directive == "REPLACE":
        attributes = objects.attributes_from(params) | objects.checksum_fields(meta.attributes)
    else:
        attributes = dict(meta.attributes)
        for name in ("ServerSideEncryption", "SSEKMSKeyId", "StorageClass", "WebsiteRedirectLocation"):
            if params.get(name) is not None:
                attributes[name] = str(params[name])
        if source == target and attributes == dict(meta.attributes):
            raise InvalidRequest(
                "This copy request is illegal because it is trying to copy an object to itself without "
                "changing the object's metadata, storage class, website redirect location or encryption "
                "attributes."
            )
    try:
        copied = blobs.copy(source, target, etag=meta.etag, attributes=attributes)
    except BlobNotFound:
        raise NoSuchKey(Key=source_key) from None
    except (BlobConflict, InvalidS3Uri) as exc:
        raise objects.store_conflict(exc, target.key) from None
    return {
        "CopyObjectResult": {
            "ETag": objects.quoted(copied.etag),
            "LastModified": copied.last_modified,
            **objects.checksum_fields(copied.attributes),
        },
        **_sse(copied.attributes),
    }


def _copy_source(header: str) -> tuple[str, str]:
    """``x-amz-copy-source``: ``bucket/key`` (or ``/bucket/key``), URL-encoded, maybe ``?versionId=``."""
    source, _, version = header.partition("?")
    if version and version not in ("versionId=null",):
        raise S3NotImplemented("MLHarbor's S3 does not keep object versions", Header="x-amz-copy-source")
    bucket, _, key = unquote(source).lstrip("/").partition("/")
    if not bucket or not key:
        raise InvalidArgument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            ArgumentName="x-amz-copy-source",
            ArgumentValue=header[:200],
        )
    return bucket, key


# --- Listing ------------------------------------------------------------------------------------------
@blocking
def list_objects_v2(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params)
    prefix = params.get("Prefix") or ""
    delimiter = params.get("Delimiter") or ""
    max_keys = _max_keys(params.get("MaxKeys"))
    start_after = params.get("StartAfter") or ""
    after = start_after
    if params.get("ContinuationToken"):
        after = _decode_token(call, (row.name, "ListObjectsV2"), params["ContinuationToken"])
    entries = _page(call, row.name, prefix, max(after, start_after), delimiter, max_keys)
    truncated = len(entries) > max_keys
    entries = entries[:max_keys]
    encode = _encoder(params.get("EncodingType"))
    result: dict[str, Any] = {
        "Name": row.name,
        "Prefix": encode(prefix),
        "MaxKeys": max_keys,
        "KeyCount": len(entries),
        "IsTruncated": truncated,
    }
    if params.get("EncodingType"):
        result["EncodingType"] = params["EncodingType"]
    if delimiter:
        result["Delimiter"] = encode(delimiter)
    if start_after:
        result["StartAfter"] = encode(start_after)
    if params.get("ContinuationToken"):
        result["ContinuationToken"] = params["ContinuationToken"]
    if truncated:
        result["NextContinuationToken"] = _encode_token(call, (row.name, "ListObjectsV2"), entries[-1][0])
    _fill_entries(result, entries, encode, owner(call.account_id) if params.get("FetchOwner") else None)
    return result


@blocking
def list_objects(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params)
    prefix = params.get("Prefix") or ""
    delimiter = params.get("Delimiter") or ""
    max_keys = _max_keys(params.get("MaxKeys"))
    marker = params.get("Marker") or ""
    entries = _page(call, row.name, prefix, marker, delimiter, max_keys)
    truncated = len(entries) > max_keys
    entries = entries[:max_keys]
    encode = _encoder(params.get("EncodingType"))
    result: dict[str, Any] = {
        "Name": row.name,
        "Prefix": encode(prefix),
        "Marker": encode(marker),
        "MaxKeys": max_keys,
        "IsTruncated": truncated,
    }
    if params.get("EncodingType"):
        result["EncodingType"] = params["EncodingType"]
    if delimiter:
        result["Delimiter"] = encode(delimiter)
        if truncated:
            result["NextMarker"] = encode(entries[-1][0])
    _fill_entries(result, entries, encode, owner(call.account_id))
    return result


def _page(
    call: Call, bucket: str, prefix: str, after: str, delimiter: str, max_keys: int
) -> list[tuple[str, ObjectMeta | None]]:
    if max_keys == 0:
        return []
    return call.server.blobs.list_page(
        bucket, prefix=prefix, start_after=after, delimiter=delimiter, limit=max_keys + 1
    )


def _fill_entries(
    result: dict[str, Any],
    entries: list[tuple[str, ObjectMeta | None]],
    encode: Any,
    owned_by: dict[str, str] | None,
) -> None:
    contents = []
    prefixes = []
    for key, meta in entries:
        if meta is None:
            prefixes.append({"Prefix": encode(key)})
            continue
        item: dict[str, Any] = {
            "Key": encode(key),
            "LastModified": meta.last_modified,
            "ETag": objects.quoted(meta.etag),
            "Size": meta.size,
            "StorageClass": meta.attributes.get("StorageClass", "STANDARD"),
        }
        algorithms = [
            k[len("Checksum") :] for k in meta.attributes if k.startswith("Checksum") and k != "ChecksumType"
        ]
        if algorithms:
            item["ChecksumAlgorithm"] = algorithms
            item["ChecksumType"] = meta.attributes.get("ChecksumType", "FULL_OBJECT")
        if owned_by is not None:
            item["Owner"] = owned_by
        contents.append(item)
    if contents:
        result["Contents"] = contents
    if prefixes:
        result["CommonPrefixes"] = prefixes


def _max_keys(value: int | None) -> int:
    if value is None:
        return XMLNS_RESULT_MAX_KEYS
    if value < 0:
        raise InvalidArgument(
            "Argument maxKeys must be an integer between 0 and 2147483647", ArgumentName="maxKeys"
        )
    return min(value, XMLNS_RESULT_MAX_KEYS)


def _encoder(encoding: str | None) -> Any:
    if encoding is None:
        return lambda text: text
    if encoding != "url":
        raise InvalidArgument("Invalid Encoding Method specified in Request", ArgumentName="encoding-type")
    # botocore decodes with unquote_plus: '+' must travel as %2B, which quote() does.
    return lambda text: quote(text, safe="/")


# --- Multipart uploads --------------------------------------------------------------------------------
@blocking
def create_multipart_upload(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _bucket(call, params)
    location = objects.uri(row.name, params["Key"])
    attributes = objects.attributes_from(params)
    algorithm = params.get("ChecksumAlgorithm")
    checksum_type = params.get("ChecksumType")
    if checksum_type and not algorithm:
        raise InvalidRequest(
            "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header"
        )
    if algorithm and algorithm not in objects.CHECKSUMS:
        raise S3NotImplemented(f"MLHarbor's S3 does not compute {algorithm} checksums")
    if algorithm:
        checksum_type = checksum_type or ("FULL_OBJECT" if algorithm == "CRC64NVME" else "COMPOSITE")
        if checksum_type == "FULL_OBJECT" and not algorithm.startswith("CRC"):
            raise InvalidRequest(
                f"The FULL_OBJECT checksum type cannot be used with the {algorithm} algorithm"
            )
    _check_key_storable(call, location)
    upload_id = multipart.new_upload_id()
    with call.store.begin() as conn:
        multipart.create(
            conn, upload_id, row.name, location.key, call.account_id, attributes, algorithm, checksum_type
        )
    result: dict[str, Any] = {
        "Bucket": row.name,
        "Key": location.key,
        "UploadId": upload_id,
        **_sse(attributes),
    }
    if algorithm:
        result["ChecksumAlgorithm"] = algorithm
        result["ChecksumType"] = checksum_type
    return result


def _check_key_storable(call: Call, location: S3Uri) -> None:
    """Refuse at the start, not at completion, a key the object store cannot hold."""
    try:
        call.server.blobs.open_write(location).abort()
    except (BlobConflict, InvalidS3Uri) as exc:
        raise objects.store_conflict(exc, location.key) from None


@blocking
def upload_part(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        row = _bucket(call, params)
        upload = multipart.find(conn, row.name, params["Key"], params["UploadId"])
    number = params["PartNumber"]
    multipart.check_part_number(number)
    blob_key = multipart.part_blob_key(upload.upload_id, number)
    part = S3Uri(call.server.settings.uploads_bucket, blob_key)
    meta, payload = _write_body(
        call, part, params["Body"], {}, upload.checksum_algorithm or params.get("ChecksumAlgorithm")
    )
    _record_part(call, upload.upload_id, number, blob_key, meta, payload.checksums)
    result: dict[str, Any] = {"ETag": objects.quoted(meta.etag), **_sse(upload.attributes)}
    result.update({f"Checksum{a}": v for a, v in payload.checksums.items()})
    return result


def _record_part(
    call: Call, upload_id: str, number: int, blob_key: str, meta: ObjectMeta, checksums: dict[str, str]
) -> None:
    uploads_bucket = call.server.settings.uploads_bucket
    try:
        with call.store.begin() as conn:
            previous = multipart.put_part(conn, upload_id, number, blob_key, meta.etag, meta.size, checksums)
    except BaseException:
        call.server.blobs.delete(S3Uri(uploads_bucket, blob_key))
        raise
    if previous is not None:
        call.server.blobs.delete(S3Uri(uploads_bucket, previous))


@blocking
def upload_part_copy(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        row = _bucket(call, params)
        upload = multipart.find(conn, row.name, params["Key"], params["UploadId"])
        source_bucket, source_key = _copy_source(params["CopySource"])
        source_row = buckets.find(call, source_bucket) if source_bucket != row.name else row
    objects.refuse_unsupported(params)
    number = params["PartNumber"]
    multipart.check_part_number(number)
    blobs = call.server.blobs
    reader = objects.open_existing(blobs, objects.uri(source_row.name, source_key))
    with reader:
        objects.check_conditions(reader.meta, params, prefix="CopySource")
        start, end = _copy_range(params.get("CopySourceRange"), reader.meta.size)
        if end - start > objects.MAX_OBJECT_BYTES:
            raise InvalidRequest(
                "The specified copy source is larger than the maximum allowable size for a copy source: "
                f"{objects.MAX_OBJECT_BYTES}"
            )
        blob_key = multipart.part_blob_key(upload.upload_id, number)
        md5 = hashlib.md5(usedforsecurity=False)
        with blobs.open_write(S3Uri(call.server.settings.uploads_bucket, blob_key)) as writer:
            for chunk in reader.chunks(start, end):
                md5.update(chunk)
                writer.write(chunk)
            meta = writer.commit(etag=md5.hexdigest(), attributes={})
    checksums: dict[str, str] = {}
    if upload.checksum_algorithm:
        checksums = {
            upload.checksum_algorithm: _checksum_of(
                call, S3Uri(call.server.settings.uploads_bucket, blob_key), upload.checksum_algorithm
            )
        }
    _record_part(call, upload.upload_id, number, blob_key, meta, checksums)
    result = {"ETag": objects.quoted(meta.etag), "LastModified": meta.last_modified}
    result.update({f"Checksum{a}": v for a, v in checksums.items()})
    return {"CopyPartResult": result}


def _copy_range(header: str | None, size: int) -> tuple[int, int]:
    if header is None:
        return 0, size
    unit, _, spec = header.partition("=")
    first, dash, last = spec.partition("-")
    if unit != "bytes" or not dash or not first.isdigit() or not last.isdigit() or int(last) < int(first):
        raise InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are "
            "the zero-based offsets of the first and last bytes to copy",
            ArgumentName="x-amz-copy-source-range",
            ArgumentValue=header,
        )
    if int(last) >= size:
        raise objects.InvalidRange(RangeRequested=header, ActualObjectSize=str(size))
    return int(first), int(last) + 1


def _checksum_of(call: Call, location: S3Uri, algorithm: str) -> str:
    from mlharbor.api.s3payload import new_checksum

    checksum = new_checksum(algorithm)
    with call.server.blobs.open_object(location) as reader:
        for chunk in reader.chunks():
            checksum.update(chunk)
    return checksum.b64()


@blocking
def complete_multipart_upload(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        row = _bucket(call, params)
        upload = multipart.find(conn, row.name, params["Key"], params["UploadId"])
        stored = {p.part_number: p for p in multipart.parts(conn, upload.upload_id)}
    objects.refuse_unsupported(params, writing=True)
    requested = (params.get("MultipartUpload") or {}).get("Parts") or []
    if not requested:
        raise MalformedXML()
    chosen = []
    previous = 0
    for entry in requested:  # order and existence first, as S3 checks them before sizes
        number = entry.get("PartNumber")
        if number is None or entry.get("ETag") is None:
            raise MalformedXML()
        if number <= previous:
            raise InvalidPartOrder(UploadId=upload.upload_id)
        previous = number
        part = stored.get(number)
        if part is None or entry["ETag"].strip().strip('"') != part.etag:
            raise InvalidPart(UploadId=upload.upload_id, PartNumber=str(number), ETag=entry["ETag"])
        algorithm = upload.checksum_algorithm
        if algorithm and upload.checksum_type == "COMPOSITE":
            given = entry.get(f"Checksum{algorithm}")
            if given is None:
                raise InvalidRequest(
                    f"The upload was created using a {algorithm.lower()} checksum. The complete request must "
                    f"include the checksum for each part. It was missing for part {number} in the request."
                )
            if given != part.checksums.get(algorithm):
                raise InvalidPart(UploadId=upload.upload_id, PartNumber=str(number), ETag=entry["ETag"])
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < multipart.MIN_PART_BYTES:
            raise EntityTooSmall(
                ProposedSize=str(part.size), MinSizeAllowed=str(multipart.MIN_PART_BYTES),
                PartNumber=str(part.part_number), ETag=objects.quoted(part.etag),
            )  # fmt: skip
    total = sum(p.size for p in chosen)
    if params.get("MpuObjectSize") is not None and params["MpuObjectSize"] != total:
        raise InvalidRequest(
            f"The provided x-amz-mp-object-size ({params['MpuObjectSize']}) does not match the parts "
            f"({total})"
        )
    attributes = dict(upload.attributes)
    attributes["PartsCount"] = str(len(chosen))
    sizes = {p.size for p in chosen[:-1]}
    if len(sizes) <= 1 and chosen[-1].size <= (next(iter(sizes)) if sizes else chosen[-1].size):
        attributes["PartSize"] = str(chosen[0].size)
    uploads_bucket = call.server.settings.uploads_bucket
    sources = [S3Uri(uploads_bucket, p.blob_key) for p in chosen]
    target = objects.uri(row.name, upload.key)
    blobs = call.server.blobs
    if upload.checksum_algorithm:
        attributes.update(_multipart_checksum(call, upload, chosen, sources, params))
    etag = objects.multipart_etag([p.etag for p in chosen])
    try:
        meta = blobs.compose(target, sources, etag=etag, attributes=attributes)
    except BlobNotFound:
        raise InvalidPart(UploadId=upload.upload_id) from None
    except (BlobConflict, InvalidS3Uri) as exc:
        raise objects.store_conflict(exc, target.key) from None
    with call.store.begin() as conn:
        multipart.remove(conn, upload.upload_id)
    _delete_part_blobs(call, upload.upload_id)
    return {
        "Location": f"{call.endpoint}/{quote(row.name)}/{quote(upload.key, safe='/')}",
        "Bucket": row.name,
        "Key": upload.key,
        "ETag": objects.quoted(meta.etag),
        **objects.checksum_fields(meta.attributes),
        **_sse(meta.attributes),
    }


def _multipart_checksum(
    call: Call, upload: Any, chosen: list[Any], sources: list[S3Uri], params: dict[str, Any]
) -> dict[str, str]:
    """COMPOSITE: the checksum of the parts' checksums, ``-N``; FULL_OBJECT: the checksum of all the bytes,
    computed from the parts (a CRC of the whole object, as S3 gives it)."""
    from mlharbor.api.s3payload import new_checksum

    algorithm = upload.checksum_algorithm
    checksum = new_checksum(algorithm)
    if upload.checksum_type == "COMPOSITE":
        for part in chosen:
            checksum.update(base64.b64decode(part.checksums[algorithm]))
        value = f"{checksum.b64()}-{len(chosen)}"
    else:
        for source in sources:
            with call.server.blobs.open_object(source) as reader:
                for chunk in reader.chunks():
                    checksum.update(chunk)
        value = checksum.b64()
        given = params.get(f"Checksum{algorithm}")
        if given is not None and given != value:
            raise BadDigest(f"The {algorithm} you specified for the whole object did not match the parts.")
    return {f"Checksum{algorithm}": value, "ChecksumType": upload.checksum_type}


@blocking
def abort_multipart_upload(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.begin() as conn:
        row = _bucket(call, params)
        upload = multipart.find(conn, row.name, params["Key"], params["UploadId"])
        multipart.remove(conn, upload.upload_id)
    _delete_part_blobs(call, upload.upload_id)
    return {}


def _delete_part_blobs(call: Call, upload_id: str) -> None:
    call.server.blobs.delete_prefix(S3Uri(call.server.settings.uploads_bucket, f"{upload_id}/"))


@blocking
def list_parts(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    limit = min(params.get("MaxParts") or 1000, 1000)
    marker = params.get("PartNumberMarker") or 0
    with call.store.read() as conn:
        row = _bucket(call, params)
        upload = multipart.find(conn, row.name, params["Key"], params["UploadId"])
        rows = multipart.parts(conn, upload.upload_id, after=int(marker), limit=limit + 1)
    truncated = len(rows) > limit
    rows = rows[:limit]
    result: dict[str, Any] = {
        "Bucket": row.name,
        "Key": upload.key,
        "UploadId": upload.upload_id,
        "PartNumberMarker": int(marker),
        "MaxParts": limit,
        "IsTruncated": truncated,
        "Initiator": owner(call.account_id),
        "Owner": owner(call.account_id),
        "StorageClass": upload.attributes.get("StorageClass", "STANDARD"),
        "Parts": [
            {
                "PartNumber": p.part_number,
                "LastModified": datetime.fromtimestamp(p.last_modified, UTC),
                "ETag": objects.quoted(p.etag),
                "Size": p.size,
                **{f"Checksum{a}": v for a, v in p.checksums.items()},
            }
            for p in rows
        ],
    }
    if rows:
        result["NextPartNumberMarker"] = rows[-1].part_number
    if upload.checksum_algorithm:
        result["ChecksumAlgorithm"] = upload.checksum_algorithm
        result["ChecksumType"] = upload.checksum_type
    return result


@blocking
def list_multipart_uploads(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    limit = min(params.get("MaxUploads") or 1000, 1000)
    prefix = params.get("Prefix") or ""
    delimiter = params.get("Delimiter") or ""
    key_marker = params.get("KeyMarker") or ""
    upload_id_marker = params.get("UploadIdMarker") or ""
    encode = _encoder(params.get("EncodingType"))
    with call.store.read() as conn:
        row = _bucket(call, params)
        rows = multipart.page(conn, row.name, prefix, key_marker, upload_id_marker, 100_000)
    uploads: list[dict[str, Any]] = []
    prefixes: list[str] = []
    truncated = False
    last_key = last_id = ""
    for upload in rows:
        if delimiter:
            cut = upload.key.find(delimiter, len(prefix))
            if cut >= 0:
                common = upload.key[: cut + len(delimiter)]
                if common in prefixes or common <= key_marker:
                    continue
                if len(uploads) + len(prefixes) >= limit:
                    truncated = True
                    break
                prefixes.append(common)
                last_key, last_id = common, ""
                continue
        if len(uploads) + len(prefixes) >= limit:
            truncated = True
            break
        uploads.append(
            {
                "UploadId": upload.upload_id,
                "Key": encode(upload.key),
                "Initiated": datetime.fromtimestamp(upload.initiated_at, UTC),
                "StorageClass": upload.attributes.get("StorageClass", "STANDARD"),
                "Owner": owner(call.account_id),
                "Initiator": owner(call.account_id),
                **({"ChecksumAlgorithm": upload.checksum_algorithm, "ChecksumType": upload.checksum_type}
                   if upload.checksum_algorithm else {}),
            }
        )  # fmt: skip
        last_key, last_id = upload.key, upload.upload_id
    result: dict[str, Any] = {
        "Bucket": row.name,
        "KeyMarker": encode(key_marker),
        "UploadIdMarker": upload_id_marker,
        "MaxUploads": limit,
        "IsTruncated": truncated,
        "Prefix": encode(prefix),
    }
    if params.get("EncodingType"):
        result["EncodingType"] = params["EncodingType"]
    if delimiter:
        result["Delimiter"] = encode(delimiter)
    if truncated:
        result["NextKeyMarker"] = encode(last_key)
        result["NextUploadIdMarker"] = last_id
    if uploads:
        result["Uploads"] = uploads
    if prefixes:
        result["CommonPrefixes"] = [{"Prefix": encode(p)} for p in prefixes]
    return result


# --- Shared -------------------------------------------------------------------------------------------
def _bucket(call: Call, params: dict[str, Any], any_region: bool = False) -> Any:
    row = buckets.find(call, params["Bucket"], any_region=any_region)
    expected = params.get("ExpectedBucketOwner")
    if expected is not None and expected != row.account_id:
        raise AccessDenied()
    return row


def _encode_token(call: Call, scope: tuple[str, ...], position: str) -> str:
    return call.server.pager.encode(("s3", call.account_id, *scope), {"a": position})


def _decode_token(call: Call, scope: tuple[str, ...], token: str) -> str:
    try:
        position = call.server.pager.decode(("s3", call.account_id, *scope), token).get("a")
    except BadPaginationToken:
        raise InvalidArgument(
            "The continuation token provided is incorrect", ArgumentName="continuation-token"
        ) from None
    if not isinstance(position, str):
        raise InvalidArgument(
            "The continuation token provided is incorrect", ArgumentName="continuation-token"
        )
    return position


OPERATIONS = {
    "CreateBucket": create_bucket,
    "HeadBucket": head_bucket,
    "GetBucketLocation": get_bucket_location,
    "ListBuckets": list_buckets,
    "DeleteBucket": delete_bucket,
    "PutObject": put_object,
    "GetObject": get_object,
    "HeadObject": head_object,
    "DeleteObject": delete_object,
    "DeleteObjects": delete_objects,
    "CopyObject": copy_object,
    "ListObjectsV2": list_objects_v2,
    "ListObjects": list_objects,
    "CreateMultipartUpload": create_multipart_upload,
    "UploadPart": upload_part,
    "UploadPartCopy": upload_part_copy,
    "CompleteMultipartUpload": complete_multipart_upload,
    "AbortMultipartUpload": abort_multipart_upload,
    "ListParts": list_parts,
    "ListMultipartUploads": list_multipart_uploads,
}
