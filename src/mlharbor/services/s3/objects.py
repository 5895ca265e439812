"""Objects: what the S3 API keeps with each object, and the rules its reads and writes follow.

An object's bytes, ETag and attributes live together in the object store (``BlobStore.open_write`` commits
all three at once). The attributes are the members a PutObject set that S3 gives back on GetObject and
HeadObject, under their model names (``ContentType``, ``ChecksumCRC32``, ...), user metadata as
``meta:<name>``. Objects the ML services wrote themselves (detection job output, connected-home frames) have
none: they read back as ``binary/octet-stream`` with an MD5 ETag the store computes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from mlharbor.blobs.store import (
    BlobConflict,
    BlobNotFound,
    InvalidS3Uri,
    ObjectMeta,
    ObjectReader,
    S3Uri,
)
from mlharbor.errors import (
    InvalidArgument,
    InvalidRange,
    KeyTooLongError,
    NoSuchKey,
    NotModified,
    PreconditionFailed,
    S3NotImplemented,
)

DEFAULT_CONTENT_TYPE = "binary/octet-stream"
MAX_OBJECT_BYTES = 5 * 1024**3  # one PutObject, one part
MAX_METADATA_BYTES = 2 * 1024  # user metadata, names and values together (S3's limit)
CHECKSUMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")

# Members copied from a write request into the object's attributes, and given back on reads.
STORED = (
    "CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage", "ContentType", "Expires",
    "ServerSideEncryption", "SSEKMSKeyId", "SSEKMSEncryptionContext", "BucketKeyEnabled", "StorageClass",
    "WebsiteRedirectLocation",
)  # fmt: skip
# Members that ask for behaviour MLHarbor does not have: refused (501) rather than silently ignored, so a
# request never "succeeds" without doing what it said.
UNSUPPORTED = (
    "SSECustomerAlgorithm", "SSECustomerKey", "CopySourceSSECustomerAlgorithm", "ObjectLockMode",
    "ObjectLockRetainUntilDate", "ObjectLockLegalHoldStatus", "Tagging", "GrantFullControl", "GrantRead",
    "GrantReadACP", "GrantWriteACP", "WriteOffsetBytes", "MFA",
)  # fmt: skip
# Conditional writes and deletes (If-Match / If-None-Match on PUT, DELETE, CompleteMultipartUpload): not
# implemented, so refused; on reads they are implemented (check_conditions).
CONDITIONAL_WRITES = ("IfMatch", "IfNoneMatch")
# Canned ACLs that change nothing for a bucket only its owner can reach.
OWNER_ONLY_ACLS = frozenset({"private", "bucket-owner-full-control", "bucket-owner-read"})
STORAGE_CLASSES = frozenset({
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
})  # fmt: skip
_META = "meta:"


def uri(bucket: str, key: str) -> S3Uri:
    if len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise KeyTooLongError(Size=str(len(key.encode("utf-8", "surrogatepass"))), MaxSizeAllowed="1024")
    if not key:
        raise InvalidArgument("The object key must not be empty", ArgumentName="key")
    try:
        return S3Uri(bucket, key)
    except InvalidS3Uri as exc:
        raise InvalidArgument(str(exc), ArgumentName="key", ArgumentValue=key[:200]) from None


def refuse_unsupported(params: Mapping[str, Any], *, writing: bool = False) -> None:
    for name in UNSUPPORTED + (CONDITIONAL_WRITES if writing else ()):
        if params.get(name) is not None:
            raise S3NotImplemented(f"MLHarbor's S3 does not implement {name}", Header=name)
    acl = params.get("ACL")
    if acl is not None and acl not in OWNER_ONLY_ACLS:
        raise S3NotImplemented(f"MLHarbor's S3 keeps every object private: ACL {acl} is not supported")
    if params.get("VersionId") not in (None, "null"):
        raise S3NotImplemented("MLHarbor's S3 does not keep object versions", Header="versionId")


def attributes_from(params: Mapping[str, Any]) -> dict[str, str]:
    """What a write request (PutObject, CreateMultipartUpload, CopyObject with REPLACE) stores."""
    refuse_unsupported(params, writing=True)
    storage = params.get("StorageClass")
    if storage is not None and storage not in STORAGE_CLASSES:
        raise S3NotImplemented(
            f"MLHarbor's S3 does not offer storage class {storage}: objects are always readable"
        )
    attributes: dict[str, str] = {"ContentType": DEFAULT_CONTENT_TYPE}
    for name in STORED:
        value = params.get(name)
        if value is None:
            continue
        if name == "Expires" and isinstance(value, datetime):
            value = format_datetime(value.astimezone(UTC), usegmt=True)
        elif name == "ContentEncoding":
            # aws-chunked describes how this request's body travelled, not the object (S3 drops it too).
            value = ",".join(p.strip() for p in str(value).split(",") if p.strip() not in ("aws-chunked", ""))
            if not value:
                continue
        elif isinstance(value, bool):
            value = "true" if value else "false"
        attributes[name] = str(value)
    if attributes.get("SSEKMSKeyId") and "ServerSideEncryption" not in attributes:
        raise InvalidArgument(
            "Server Side Encryption with KMS managed key requires HTTP header x-amz-server-side-encryption : "
            "aws:kms",
            ArgumentName="x-amz-server-side-encryption",
        )
    metadata = params.get("Metadata") or {}
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"Your metadata headers exceed the maximum allowed metadata size ({size} > {MAX_METADATA_BYTES})",
            ArgumentName="x-amz-meta-",
        )
    for name, value in metadata.items():
        attributes[_META + name.lower()] = value
    return attributes


def checksum_attributes(checksums: Mapping[str, str], checksum_type: str = "FULL_OBJECT") -> dict[str, str]:
    if not checksums:
        return {}
    out = {f"Checksum{algorithm}": value for algorithm, value in checksums.items()}
    out["ChecksumType"] = checksum_type
    return out


def checksum_fields(attributes: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in attributes.items() if k.startswith("Checksum")}


def quoted(etag: str) -> str:
    return f'"{etag}"'


def head_fields(meta: ObjectMeta, *, checksums: bool) -> dict[str, Any]:
    """GetObject's and HeadObject's header members for one object version."""
    attributes = meta.attributes
    out: dict[str, Any] = {
        "AcceptRanges": "bytes",
        "LastModified": meta.last_modified,
        "ContentLength": meta.size,
        "ETag": quoted(meta.etag),
        "ContentType": attributes.get("ContentType", DEFAULT_CONTENT_TYPE),
    }
    for name in STORED:
        if name in attributes and name != "ContentType":
            value: Any = attributes[name]
            if name == "BucketKeyEnabled":
                value = value == "true"
            elif name == "Expires":
                value = _http_date(value)
                if value is None:
                    continue
            out[name] = value
    metadata = {k[len(_META) :]: v for k, v in attributes.items() if k.startswith(_META)}
    if metadata:
        out["Metadata"] = metadata
    if "PartsCount" in attributes:
        out["PartsCount"] = int(attributes["PartsCount"])
    if checksums:
        out.update(checksum_fields(attributes))
    return out


def _http_date(value: str) -> datetime | None:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def check_conditions(meta: ObjectMeta, params: Mapping[str, Any], prefix: str = "") -> None:
    """If-Match / If-None-Match / If-(Un)Modified-Since as S3 evaluates them (RFC 7232 precedence): 412
    PreconditionFailed, or 304 NotModified for reads. ``prefix`` "CopySource" reads the x-amz-copy-source-if-*
    members, where the "not modified" cases are 412 too."""
    etag = meta.etag
    modified = meta.last_modified.replace(microsecond=0)
    if_match = params.get(f"{prefix}IfMatch")
    if_none_match = params.get(f"{prefix}IfNoneMatch")
    if_modified = params.get(f"{prefix}IfModifiedSince")
    if_unmodified = params.get(f"{prefix}IfUnmodifiedSince")
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            raise PreconditionFailed(Condition="If-Match")
    elif if_unmodified is not None and modified > if_unmodified:
        raise PreconditionFailed(Condition="If-Unmodified-Since")
    not_modified = PreconditionFailed if prefix else NotModified
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            raise not_modified(Condition="If-None-Match") if prefix else NotModified(ETag=quoted(etag))
    elif if_modified is not None and modified <= if_modified:
        raise not_modified(Condition="If-Modified-Since") if prefix else NotModified(ETag=quoted(etag))


def _etag_matches(header: str, etag: str) -> bool:
    wanted = [part.strip() for part in header.split(",")]
    return "*" in wanted or any(w.removeprefix("W/").strip('"') == etag for w in wanted)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b | a- | -n`` as [start, end); None for the whole object. A header that is not one
    byte range is ignored, as S3 (and RFC 7233) do; a range past the end is 416 InvalidRange."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # the last n bytes
        count = int(last)
        if count == 0 or size == 0:
            raise InvalidRange(RangeRequested=header, ActualObjectSize=str(size))
        return max(0, size - count), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or (last and int(last) < start):
        raise InvalidRange(RangeRequested=header, ActualObjectSize=str(size))
    return start, end


def open_existing(blobs: Any, location: S3Uri) -> ObjectReader:
    try:
        return blobs.open_object(location)
    except BlobNotFound:
        raise NoSuchKey(Key=location.key) from None
    except InvalidS3Uri:
        raise NoSuchKey(Key=location.key) from None


def stat_existing(blobs: Any, location: S3Uri) -> ObjectMeta:
    try:
        return blobs.stat(location)
    except (BlobNotFound, InvalidS3Uri):
        raise NoSuchKey(Key=location.key) from None


def body_chunks(reader: ObjectReader, start: int, end: int) -> Iterator[bytes]:
    """The response body of a GetObject: the opened version's bytes, the reader closed at the end (or when
    the client goes away and the iterator is closed)."""
    try:
        yield from reader.chunks(start, end)
    finally:
        reader.close()


def store_conflict(exc: BlobConflict | InvalidS3Uri, key: str) -> InvalidArgument:
    """A key the local object store cannot hold next to the bucket's other keys (``a/b`` and ``a/b/c``), or
    cannot hold at all (``..`` segments, NUL, a trailing ``/``): refused, nothing written."""
    return InvalidArgument(
        f"MLHarbor's local object store cannot store this key: {exc}",
        ArgumentName="key",
        ArgumentValue=key[:200],
    )


def multipart_etag(part_md5s: list[str]) -> str:
    digest = hashlib.md5(b"".join(bytes.fromhex(m) for m in part_md5s), usedforsecurity=False)
    return f"{digest.hexdigest()}-{len(part_md5s)}"
