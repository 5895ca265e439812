"""Multipart uploads: the records of uploads in progress and their parts.

A part is an object in MLHarbor's uploads bucket, under the upload's id, named anew for every upload of it
(``<upload id>/<part number>-<random>``): a part uploaded twice at once never mixes bytes, and the part row
says which one counts. Everything is in the database and the object store, so an upload survives restarts
and may be continued on any server until it is completed or aborted.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, insert, or_, select

from mlharbor.errors import InvalidArgument, NoSuchUpload
from mlharbor.store.tables import s3_parts, s3_uploads

MAX_PART_NUMBER = 10_000
MIN_PART_BYTES = 5 * 1024 * 1024  # every part but the last


def new_upload_id() -> str:
    return secrets.token_urlsafe(48)


def create(
    conn: Connection,
    upload_id: str,
    bucket: str,
    key: str,
    account_id: str,
    attributes: dict[str, str],
    checksum_algorithm: str | None,
    checksum_type: str | None,
) -> float:
    now = time.time()
    conn.execute(
        insert(s3_uploads).values(
            upload_id=upload_id, bucket=bucket, key=key, account_id=account_id, attributes=attributes,
            checksum_algorithm=checksum_algorithm, checksum_type=checksum_type, initiated_at=now,
        )
    )  # fmt: skip
    return now


def find(conn: Connection, bucket: str, key: str, upload_id: str) -> Row[Any]:
    row = conn.execute(select(s3_uploads).where(s3_uploads.c.upload_id == upload_id)).first()
    if row is None or row.bucket != bucket or row.key != key:
        raise NoSuchUpload(UploadId=upload_id)
    return row


def check_part_number(number: int) -> None:
    if not 1 <= number <= MAX_PART_NUMBER:
        raise InvalidArgument(
            f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive",
            ArgumentName="partNumber",
            ArgumentValue=str(number),
        )


def part_blob_key(upload_id: str, number: int) -> str:
    return f"{upload_id}/{number:05d}-{secrets.token_hex(8)}"


def put_part(
    conn: Connection,
    upload_id: str,
    number: int,
    blob_key: str,
    etag: str,
    size: int,
    checksums: dict[str, str],
) -> str | None:
    """Record a part; the blob key of the part it replaces (to delete once committed), if any. NoSuchUpload if
    the upload was completed or aborted while the part was arriving."""
    if (
        conn.execute(select(s3_uploads.c.upload_id).where(s3_uploads.c.upload_id == upload_id)).first()
        is None
    ):
        raise NoSuchUpload(UploadId=upload_id)
    previous = conn.execute(
        select(s3_parts.c.blob_key).where(
            and_(s3_parts.c.upload_id == upload_id, s3_parts.c.part_number == number)
        )
    ).scalar()
    if previous is not None:
        conn.execute(
            delete(s3_parts).where(and_(s3_parts.c.upload_id == upload_id, s3_parts.c.part_number == number))
        )
    conn.execute(
        insert(s3_parts).values(
            upload_id=upload_id, part_number=number, blob_key=blob_key, etag=etag, size=size,
            checksums=checksums, last_modified=time.time(),
        )
    )  # fmt: skip
    return previous


def parts(conn: Connection, upload_id: str, after: int = 0, limit: int | None = None) -> list[Row[Any]]:
    query = (
        select(s3_parts)
        .where(and_(s3_parts.c.upload_id == upload_id, s3_parts.c.part_number > after))
        .order_by(s3_parts.c.part_number)
    )
    if limit is not None:
        query = query.limit(limit)
    return list(conn.execute(query))


def remove(conn: Connection, upload_id: str) -> bool:
    """Forget the upload and its parts; False if it was already gone (completed or aborted meanwhile)."""
    conn.execute(delete(s3_parts).where(s3_parts.c.upload_id == upload_id))
    return conn.execute(delete(s3_uploads).where(s3_uploads.c.upload_id == upload_id)).rowcount > 0


def in_bucket(conn: Connection, bucket: str) -> list[str]:
    return list(conn.execute(select(s3_uploads.c.upload_id).where(s3_uploads.c.bucket == bucket)).scalars())


def page(
    conn: Connection, bucket: str, prefix: str, key_marker: str, upload_id_marker: str, limit: int
) -> list[Row[Any]]:
    """Uploads of the bucket in (key, initiation) order after the markers (ListMultipartUploads)."""
    conditions = [s3_uploads.c.bucket == bucket]
    if prefix:
        # A range rather than LIKE: keys may hold % and _.
        conditions.append(s3_uploads.c.key >= prefix)
    if key_marker:
        if upload_id_marker:
            marker = conn.execute(
                select(s3_uploads.c.initiated_at).where(s3_uploads.c.upload_id == upload_id_marker)
            ).scalar()
            after_marker = s3_uploads.c.key > key_marker
            if marker is not None:
                after_marker = or_(
                    after_marker,
                    and_(s3_uploads.c.key == key_marker, s3_uploads.c.initiated_at > marker),
                )
            conditions.append(after_marker)
        else:
            conditions.append(s3_uploads.c.key > key_marker)
    query = (
        select(s3_uploads)
        .where(and_(*conditions))
        .order_by(s3_uploads.c.key, s3_uploads.c.initiated_at, s3_uploads.c.upload_id)
    )
    rows: list[Row[Any]] = []
    for row in conn.execute(query):
        if not row.key.startswith(prefix):
            break
        rows.append(row)
        if len(rows) >= limit:
            break
    return rows
