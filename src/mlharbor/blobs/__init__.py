"""Object storage for ``s3://bucket/key`` URIs: a local folder or S3 (see :mod:`mlharbor.blobs.store`)."""

from mlharbor.blobs.local import LocalBlobStore
from mlharbor.blobs.s3 import S3BlobStore
from mlharbor.blobs.store import (
    BlobConflict,
    BlobNotFound,
    BlobStore,
    InvalidS3Uri,
    ObjectInfo,
    S3Uri,
    open_blob_store,
    require_object_key,
)

__all__ = [
    "BlobConflict",
    "BlobNotFound",
    "BlobStore",
    "InvalidS3Uri",
    "LocalBlobStore",
    "ObjectInfo",
    "S3BlobStore",
    "S3Uri",
    "open_blob_store",
    "require_object_key",
]
