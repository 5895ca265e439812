"""Bucket records: who owns each name. Names are global, as in AWS: one account's bucket is another's
BucketAlreadyExists, and its objects are AccessDenied to everyone else."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import regex
from sqlalchemy import Connection, Row, delete, insert, select
from sqlalchemy.exc import IntegrityError

from mlharbor.context import Call
from mlharbor.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    BucketAlreadyExists,
    BucketAlreadyOwnedByYou,
    InvalidBucketName,
    NoSuchBucket,
)
from mlharbor.store.db import Store
from mlharbor.store.tables import s3_buckets

# AWS's rules for new general purpose buckets: 3-63 lowercase letters, digits, '.' and '-', starting and
# ending with a letter or digit, no '..', not an IP address, none of the prefixes and suffixes AWS reserves.
_NAME = regex.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def check_name(name: str) -> None:
    if (
        not _NAME.fullmatch(name)
        or ".." in name
        or name.startswith(_RESERVED_PREFIXES)
        or name.endswith(_RESERVED_SUFFIXES)
        or _is_ip(name)
    ):
        raise InvalidBucketName(BucketName=name)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def own_buckets(call: Call) -> frozenset[str]:
    """MLHarbor's own buckets (model artifacts, video fragments, upload parts): never a user's."""
    settings = call.server.settings
    return frozenset({settings.models_bucket, settings.video_bucket, settings.uploads_bucket})


def create(store: Store, call: Call, name: str, region: str) -> bool:
    """Record the bucket; False when the caller already owns it in us-east-1 (AWS answers 200 there, for
    legacy compatibility, and 409 BucketAlreadyOwnedByYou elsewhere)."""
    if name in own_buckets(call):
        raise BucketAlreadyExists(BucketName=name)
    try:
        with store.begin() as conn:
            conn.execute(
                insert(s3_buckets).values(
                    name=name, account_id=call.account_id, region=region, created_at=time.time()
                )
            )
        forget(call, name)
    except IntegrityError:
        with store.read() as conn:
            existing = conn.execute(select(s3_buckets).where(s3_buckets.c.name == name)).first()
        if existing is None or existing.account_id != call.account_id:
            raise BucketAlreadyExists(BucketName=name) from None
        if existing.region == "us-east-1" and region == "us-east-1":
            return False
        raise BucketAlreadyOwnedByYou(BucketName=name) from None
    return True


# Bucket records change rarely and are read by every request: each server keeps the ones it read for a
# second (docs/COMPATIBILITY.md, decision 63). A change made on this server is seen at once.
CACHE_SECONDS = 1.0


def find(call: Call, name: str, *, any_region: bool = False) -> Row[Any]:
    """The caller's bucket: NoSuchBucket if nobody has it, AccessDenied if another account (or MLHarbor) does,
    AuthorizationHeaderMalformed naming the right region if the request was signed for another one (what
    S3 answers, and what botocore's region redirector follows)."""
    if name in own_buckets(call):
        raise AccessDenied()
    row = _read(call, name)
    if row is None:
        raise NoSuchBucket(BucketName=name)
    if row.account_id != call.account_id:
        raise AccessDenied()
    if call.region and row.region != call.region and not any_region:
        raise AuthorizationHeaderMalformed(
            f"The authorization header is malformed; the region '{call.region}' is wrong; expecting "
            f"'{row.region}'",
            Region=row.region,
        )
    return row


def _read(call: Call, name: str) -> Row[Any] | None:
    cache: dict[str, tuple[Row[Any], float]] = call.server.extras.setdefault("s3.buckets", {})
    now = time.monotonic()
    hit = cache.get(name)
    if hit is not None and hit[1] > now:
        return hit[0]
    with call.store.read() as conn:
        row = conn.execute(select(s3_buckets).where(s3_buckets.c.name == name)).first()
    if row is None:
        cache.pop(name, None)
    else:
        if len(cache) > 10_000:
            cache.clear()
        cache[name] = (row, now + CACHE_SECONDS)
    return row


def forget(call: Call, name: str) -> None:
    call.server.extras.get("s3.buckets", {}).pop(name, None)


def listing(conn: Connection, account_id: str) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(s3_buckets).where(s3_buckets.c.account_id == account_id).order_by(s3_buckets.c.name)
        )
    )


def remove(conn: Connection, call: Call, name: str) -> None:
    conn.execute(delete(s3_buckets).where(s3_buckets.c.name == name))
    forget(call, name)
