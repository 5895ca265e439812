"""The object-store interface behind every ``s3://bucket/key`` URI the services accept.

Rekognition and Comprehend name training data and output locations with S3 URIs. MLHarbor resolves
them through :class:`BlobStore`, which has two back ends: a folder on local disk (the default, no
AWS needed) and real S3 or any S3-compatible server (MinIO, moto, ...).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

_SCHEME = "s3://"
# Deliberately looser than today's S3 bucket rules (legacy buckets may hold uppercase and
# underscores), but a name must start and end with a letter or digit: that alone keeps "." and
# ".." out, which matters because the local back end turns bucket names into folder names.
_BUCKET_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?")
# S3's own limit on key length, counted in UTF-8 bytes.
MAX_KEY_BYTES = 1024


class InvalidS3Uri(ValueError):
    """A string that is not an ``s3://bucket[/key]`` URI, or a key a back end refuses to store."""


class BlobNotFound(KeyError):
    """No object at the URI (missing key or missing bucket)."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument, which quotes the message; show it plainly.
        return str(self.args[0]) if self.args else "object not found"


class BlobConflict(ValueError):
    """The local back end cannot hold both ``a/b`` and ``a/b/...``: a path is a file or a folder."""


@dataclass(frozen=True, slots=True)
class S3Uri:
    """A parsed ``s3://bucket/key``. An empty key means "the whole bucket" when used as a prefix.

    The key is kept verbatim: no percent-decoding and no path normalization, exactly like S3, where
    ``a//b``, ``./a`` and ``%2e%2e`` are ordinary, distinct keys.
    """

    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not isinstance(uri, str):
            raise InvalidS3Uri(f"S3 URI must be a string, got {type(uri).__name__}")
        if not uri.startswith(_SCHEME):
            raise InvalidS3Uri(f"{uri!r} is not an S3 URI: expected s3://bucket/key")
        bucket, _, key = uri[len(_SCHEME) :].partition("/")
        if not bucket:
            raise InvalidS3Uri(f"{uri!r} has no bucket name: expected s3://bucket/key")
        return cls(bucket, key)

    @classmethod
    def of(cls, uri: S3Uri | str) -> S3Uri:
        """Accept either form at API boundaries."""
        return uri if isinstance(uri, S3Uri) else cls.parse(uri)

    def __post_init__(self) -> None:
        # Validate here rather than in parse() so S3Uri(bucket, key) built in code is checked too.
        if not _BUCKET_RE.fullmatch(self.bucket):
            raise InvalidS3Uri(
                f"invalid bucket name {self.bucket!r}: use 1-255 letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit"
            )
        if len(self.key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise InvalidS3Uri(f"object key is longer than {MAX_KEY_BYTES} bytes: s3://{self.bucket}/...")

    def join(self, *parts: str) -> S3Uri:
        """``s3://b/out`` joined with ``"x.json"`` gives ``s3://b/out/x.json`` (no doubled slash)."""
        key = self.key
        for part in parts:
            if not part:
                continue
            key = f"{key}/{part}" if key and not key.endswith("/") else key + part
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"{_SCHEME}{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    uri: S3Uri
    key: str
    size: int
    last_modified: datetime  # timezone-aware, UTC


def require_object_key(uri: S3Uri) -> S3Uri:
    """Single-object operations need a key; ``s3://bucket`` alone names no object."""
    if not uri.key:
        raise InvalidS3Uri(f"{uri} names a bucket, not an object: expected s3://bucket/key")
    return uri


class BlobStore(ABC):
    """Objects addressed by S3 URIs. Every method takes an :class:`S3Uri` or its string form.

    Implementations must be safe to share between threads.
    """

    @abstractmethod
    def get(self, uri: S3Uri | str) -> bytes:
        """The whole object. Raises :class:`BlobNotFound`. Use :meth:`open_read` for big objects."""

    @abstractmethod
    def open_read(self, uri: S3Uri | str) -> BinaryIO:
        """A readable binary stream (``read(n)``, context manager). Raises :class:`BlobNotFound`."""

    @abstractmethod
    def put(self, uri: S3Uri | str, data: bytes, *, kms_key_id: str | None = None) -> None:
        """Create or replace the object; readers never see a partial object. ``kms_key_id`` asks S3 for
        server-side encryption with that KMS key (the local store keeps plain files on the server's disk)."""

    @abstractmethod
    def put_file(self, uri: S3Uri | str, path: Path | str) -> None:
        """Upload a local file without holding it in memory."""

    @abstractmethod
    def exists(self, uri: S3Uri | str) -> bool: ...

    @abstractmethod
    def list(self, prefix_uri: S3Uri | str) -> list[ObjectInfo]:
        """Every object whose key starts with the prefix's key, sorted by key.

        S3 semantics: a plain string prefix, not a folder (``s3://b/data/tr`` matches
        ``data/train.csv``). A missing bucket lists as empty.
        """

    @abstractmethod
    def delete(self, uri: S3Uri | str) -> None:
        """Remove the object; a missing object (or bucket) is not an error."""

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist (MLHarbor's own buckets: video fragments, models). The
        local store makes folders as it writes, so there is nothing to do there."""
        del bucket

    def delete_prefix(self, prefix_uri: S3Uri | str) -> int:
        """Remove every object :meth:`list` returns for the prefix; returns how many."""
        infos = self.list(prefix_uri)
        for info in infos:
            self.delete(info.uri)
        return len(infos)


def open_blob_store(kind: str, data_dir: Path) -> BlobStore:
    """The configured back end: ``local`` keeps objects under ``<data_dir>/s3/<bucket>/<key>``;
    ``s3`` uses boto3's standard configuration (``AWS_ENDPOINT_URL_S3``, credentials, region)."""
    # Imported here because both back-end modules import this one.
    if kind == "local":
        from mlharbor.blobs.local import LocalBlobStore

        return LocalBlobStore(Path(data_dir) / "s3")
    if kind == "s3":
        from mlharbor.blobs.s3 import S3BlobStore

        return S3BlobStore()
    raise ValueError(f"unknown object store {kind!r}: expected 'local' or 's3'")
