"""The object-store interface behind every ``s3://bucket/key`` URI the services accept.

Rekognition and Comprehend name training data and output locations with S3 URIs. MLHarbor resolves
them through :class:`BlobStore`, which has two back ends: a folder on local disk (the default, no
AWS needed) and real S3 or any S3-compatible server (MinIO, moto, ...).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

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
    """The local back end cannot hold both ``a/b`` and ``a/b/...``: a path is a file or a folder. Also
    raised by :meth:`BlobStore.delete_bucket` for a bucket that still holds objects."""


class BlobChanged(BlobNotFound):
    """The version of an object that an :class:`ObjectReader` opened is gone (replaced or deleted) and its
    bytes can no longer be read. Only the S3 back end raises it: the local reader holds the file open."""


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


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the S3 API reports about one version of an object."""

    size: int
    # S3 ETag without quotes: the hex MD5 of the bytes, or what the writer committed ("<hex>-3").
    etag: str
    last_modified: datetime  # timezone-aware, UTC
    # Opaque to the store: what the writer committed; {} for objects written by put/put_file. Left out of
    # the hash (a dict has none) so metas can still go in sets and dict keys.
    attributes: Mapping[str, str] = field(hash=False)

    def __post_init__(self) -> None:
        # A private plain dict: the caller's mapping may change later, and a dict serializes to JSON.
        object.__setattr__(self, "attributes", dict(self.attributes))


def check_commit(etag: str, attributes: Mapping[str, str]) -> dict[str, str]:
    """Validate what :meth:`ObjectWriter.commit` stores; returns the attributes as a plain dict."""
    if not isinstance(etag, str) or not etag or '"' in etag:
        raise ValueError(f"etag must be a non-empty string without quotes, got {etag!r}")
    copied = dict(attributes)
    for name, value in copied.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"attributes must map str to str, got {name!r}: {value!r}")
    return copied


class ObjectWriter(ABC):
    """A new object being written; a context manager that aborts unless committed.

    Bytes go to a temporary file, never to memory. One writer belongs to one thread at a time.
    """

    bytes_written: int

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``. Raises ValueError once the writer is committed or aborted."""

    @abstractmethod
    def commit(self, *, etag: str, attributes: Mapping[str, str]) -> ObjectMeta:
        """Make the object visible under its key with this etag and these attributes, durably and
        atomically: readers see the old object or the new one, never part of it. A crash before
        commit leaves no object. Commit once; on failure the writer is aborted."""

    @abstractmethod
    def abort(self) -> None:
        """Drop what was written. Does nothing after commit() or a previous abort()."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()  # a no-op after commit(): leaving the block without committing discards the object


class ObjectReader(ABC):
    """One version of an object, opened: meta and bytes always agree even if the object is replaced
    meanwhile (the S3 back end raises :class:`BlobChanged` rather than mix versions)."""

    meta: ObjectMeta

    @abstractmethod
    def chunks(self, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes ``[start, end)`` (``end`` None or past the end: up to the end), in pieces of at most
        ``chunk_size`` bytes. May be called more than once. ValueError if ``start`` is negative or after
        ``end`` or the object's end."""

    @abstractmethod
    def close(self) -> None: ...

    def _bounds(self, start: int, end: int | None, chunk_size: int) -> tuple[int, int]:
        """Validated ``[start, end)`` for :meth:`chunks`, with ``end`` clamped to the size."""
        size = self.meta.size
        end = size if end is None else min(end, size)
        if start < 0 or start > end:
            raise ValueError(f"invalid byte range [{start}, {end}) of an object of {size} bytes")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return start, end

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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

    # --- what the S3 API needs ------------------------------------------------------------------------
    @abstractmethod
    def open_write(self, uri: S3Uri | str) -> ObjectWriter:
        """A writer for a new version of the object. The key is checked now (:class:`InvalidS3Uri`, and
        :class:`BlobConflict` where the back end can know it), not at commit."""

    @abstractmethod
    def open_object(self, uri: S3Uri | str) -> ObjectReader:
        """The current version of the object, opened. Raises :class:`BlobNotFound`."""

    def stat(self, uri: S3Uri | str) -> ObjectMeta:
        """The object's meta. Raises :class:`BlobNotFound`."""
        with self.open_object(uri) as reader:
            return reader.meta

    @abstractmethod
    def list_page(
        self, bucket: str, *, prefix: str = "", start_after: str = "", delimiter: str = "", limit: int = 1000
    ) -> list[tuple[str, ObjectMeta | None]]:
        """One page of ListObjectsV2: ``(key, meta)`` for objects and ``(common_prefix, None)`` for
        delimiter roll-ups (``prefix`` + the text up to and including the first ``delimiter`` after it),
        in S3 order (keys compared as UTF-8 bytes), only entries after ``start_after`` (a common prefix
        is an entry too: ``start_after=P`` resumes past everything under P), at most ``limit`` entries.
        Ask for one more than the page size to learn whether the listing is truncated. A missing bucket
        lists as []. The cost of a page is proportional to the page, not to the bucket.

        ``meta.attributes`` may be {} here (the S3 back end does not fetch them); :meth:`stat` has them.
        """

    def compose(
        self,
        uri: S3Uri | str,
        parts: Sequence[S3Uri | str],
        *,
        etag: str,
        attributes: Mapping[str, str],
    ) -> ObjectMeta:
        """A new object holding the parts' bytes one after another, written atomically (multipart
        completion). Raises :class:`BlobNotFound` if a part is missing. The parts stay as they are."""
        sources = [S3Uri.of(part) for part in parts]
        # Generic version: stream every part through a writer. Back ends override it with a server-side
        # or in-kernel copy.
        with self.open_write(uri) as writer:
            for source in sources:
                with self.open_object(source) as reader:
                    for chunk in reader.chunks():
                        writer.write(chunk)
            return writer.commit(etag=etag, attributes=attributes)

    def copy(
        self, src: S3Uri | str, dest: S3Uri | str, *, etag: str, attributes: Mapping[str, str]
    ) -> ObjectMeta:
        """A new object at ``dest`` with ``src``'s bytes (CopyObject); ``src == dest`` replaces only the
        etag and attributes. Raises :class:`BlobNotFound` if ``src`` is missing."""
        return self.compose(dest, [src], etag=etag, attributes=attributes)

    @abstractmethod
    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket``; an existing bucket is fine."""

    @abstractmethod
    def delete_bucket(self, bucket: str) -> None:
        """Remove an empty bucket; :class:`BlobConflict` if it still holds objects; a missing bucket
        is fine."""


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
