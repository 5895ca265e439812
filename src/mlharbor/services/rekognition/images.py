"""Rekognition's ``Image`` input: bytes or an S3 object, checked against AWS's limits, decoded to pixels."""

from __future__ import annotations

from typing import Any

import numpy

from mlharbor.blobs.store import BlobConflict, BlobNotFound, BlobStore, InvalidS3Uri, S3Uri
from mlharbor.engines.faces import ImageError, ImageTooBig, ImageTooSmall, decode_image
from mlharbor.errors import (
    ImageTooLargeException,
    InvalidImageFormatException,
    InvalidParameterException,
    InvalidS3ObjectException,
)

MAX_S3_BYTES = 15 * 1024 * 1024  # AWS: images stored in S3 may be up to 15 MB
MIN_SIDE = 80  # AWS: "the minimum image dimensions are 80 pixels for both height and width"
# AWS documents no pixel limit for these operations; this one refuses decompression bombs (a 5 MB JPEG
# can hold hundreds of megapixels) while accepting every camera photo: 40 MP is 7,300 × 5,480.
MAX_PIXELS = 40_000_000
# Larger photos are shrunk before detection: AWS's smallest detectable face is 40 px in a 1920-px image,
# which is ~27 px at this size, below what the HOG detector finds anyway; detection cost grows with area.
WORKING_SIDE = 1280

INVALID_FORMAT = "Request has invalid image format."
TOO_LARGE = "Image size is too large."
NO_S3_OBJECT = "Unable to get object metadata from S3. Check object key, region and/or access permissions."


def load(blobs: BlobStore, image: dict[str, Any]) -> numpy.ndarray:
    """The request's image as RGB pixels (longer side at most ``WORKING_SIDE``), or the AWS error."""
    if ("Bytes" in image) == ("S3Object" in image):
        raise InvalidParameterException("Image must contain exactly one of Bytes or S3Object.")
    data = image["Bytes"] if "Bytes" in image else _s3_bytes(blobs, image["S3Object"])
    try:
        return decode_image(data, max_pixels=MAX_PIXELS, min_side=MIN_SIDE, max_side=WORKING_SIDE)
    except ImageTooBig:
        raise ImageTooLargeException(TOO_LARGE) from None
    except ImageTooSmall as exc:
        raise InvalidParameterException(f"Request has invalid parameters: the image is {exc}.") from None
    except ImageError:
        raise InvalidImageFormatException(INVALID_FORMAT) from None


def _s3_bytes(blobs: BlobStore, s3_object: dict[str, Any]) -> bytes:
    # Versions are not kept by the local object store; a Version names the current object there.
    try:
        uri = S3Uri(s3_object.get("Bucket", ""), s3_object.get("Name", ""))
        data = blobs.get(uri)
    except (BlobNotFound, BlobConflict, InvalidS3Uri, OSError):
        raise InvalidS3ObjectException(NO_S3_OBJECT) from None
    if len(data) > MAX_S3_BYTES:
        raise ImageTooLargeException(TOO_LARGE)
    return data
