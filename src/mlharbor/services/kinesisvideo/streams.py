"""Kinesis Video stream records: lookups, the description AWS returns, and keyset pages by name."""

from __future__ import annotations

import secrets
import string
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select

from mlharbor.errors import InvalidArgumentException, ResourceNotFoundException
from mlharbor.store.tables import video_streams as table

MAX_RETENTION_HOURS = 87_600  # the model's documented maximum (10 years)
STREAM_LIMIT = 10_000  # streams per account and region (AWS's default quota)
NOT_FOUND = "The requested stream is not found or not active."

_OWNER = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_BY_NAME = select(table).where(_OWNER, table.c.name == bindparam("name"))
_BY_ARN = select(table).where(_OWNER, table.c.arn == bindparam("arn"))
_COUNT = select(func.count()).select_from(table).where(_OWNER)


def new_version() -> str:
    """Kinesis Video's ``Version`` (``[a-zA-Z0-9]+``): a new one for every change of the stream."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))


def find(conn: Connection, account_id: str, region: str, params: dict[str, Any]) -> Row[Any]:
    """The stream ``params`` names by StreamName or StreamARN (exactly one of them, as AWS requires)."""
    name, arn = params.get("StreamName"), params.get("StreamARN")
    if (name is None) == (arn is None):
        raise InvalidArgumentException("Exactly one of StreamName or StreamARN must be provided.")
    owner = {"account_id": account_id, "region": region}
    query, value = (_BY_NAME, {"name": name}) if name is not None else (_BY_ARN, {"arn": arn})
    row = conn.execute(query, {**owner, **value}).first()
    if row is None:
        raise ResourceNotFoundException(NOT_FOUND)
    return row


def exists(conn: Connection, arn: str) -> bool:
    return conn.execute(select(table.c.arn).where(table.c.arn == arn)).first() is not None


def count(conn: Connection, account_id: str, region: str) -> int:
    return conn.execute(_COUNT, {"account_id": account_id, "region": region}).scalar_one()


def page(
    conn: Connection, account_id: str, region: str, prefix: str | None, after: str | None, limit: int
) -> list[Row[Any]]:
    """Streams by name (names are unique per account and region, so a name is a stable position)."""
    query = select(table).where(table.c.account_id == account_id, table.c.region == region)
    if prefix:
        query = query.where(table.c.name.startswith(prefix, autoescape=True))
    if after is not None:
        query = query.where(table.c.name > after)
    return conn.execute(query.order_by(table.c.name).limit(limit)).all()


def describe(row: Row[Any]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "StreamName": row.name,
        "StreamARN": row.arn,
        "Version": row.stream_version,
        "Status": row.status,
        "CreationTime": row.created_at,
        "DataRetentionInHours": row.retention_hours,
    }
    for key, value in (("DeviceName", row.device_name), ("MediaType", row.media_type),
                       ("KmsKeyId", row.kms_key_id)):  # fmt: skip
        if value is not None:
            info[key] = value
    return info
