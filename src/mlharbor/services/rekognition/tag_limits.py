"""How many tags a Rekognition resource (stream processor, collection) may carry."""

from __future__ import annotations

from mlharbor.errors import ServiceQuotaExceededException

TAG_LIMIT = 50  # per resource; AWS does not publish Rekognition's number (docs/COMPATIBILITY.md, decision 11)


def check(count: int) -> None:
    """ServiceQuotaExceededException when a resource would end up with more than TAG_LIMIT tags."""
    if count > TAG_LIMIT:
        raise ServiceQuotaExceededException(f"A resource can have at most {TAG_LIMIT} tags.")
