"""Kinesis data streams and their shards: lookups, hash-key ranges, and the descriptions AWS returns.

A stream is found by StreamARN, StreamName or StreamId (the 1.44 model lets every operation name it either
way). Its shards split the 128-bit hash-key space evenly, as a new AWS stream's do; MLHarbor does not
reshard (UpdateShardCount, SplitShard and MergeShards answer 501), so every shard is open and has no
parent.
"""

from __future__ import annotations

import bisect
import secrets
import string
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select

from mlharbor import arns
from mlharbor.errors import InvalidArgumentException, ResourceNotFoundException
from mlharbor.services.kinesis import sequences
from mlharbor.store.tables import kinesis_shards as shards_table
from mlharbor.store.tables import kinesis_streams as table

HASH_SPACE = 2**128
DEFAULT_RETENTION_HOURS = 24
MAX_RETENTION_HOURS = 8760
ON_DEMAND_SHARDS = 4  # what an on-demand stream starts with on AWS
SHARD_LIMIT = 500  # open shards per account and region (AWS's default quota in the big regions)
ON_DEMAND_STREAM_LIMIT = 50
DEFAULT_MAX_RECORD_KIB = 1024

_OWNER = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_BY_NAME = select(table).where(_OWNER, table.c.name == bindparam("name"))
_BY_ID = select(table).where(_OWNER, table.c.stream_id == bindparam("stream_id"))
_SHARDS = (
    select(shards_table)
    .where(shards_table.c.stream_id == bindparam("stream_id"))
    .order_by(shards_table.c.shard_index)
)
_SHARD = select(shards_table).where(
    shards_table.c.stream_id == bindparam("stream_id"), shards_table.c.shard_index == bindparam("shard_index")
)


def new_stream_id() -> str:
    """AWS's StreamId shape: ``[a-z0-9]{20}-[a-z0-9]{3}``."""
    alphabet = string.ascii_lowercase + string.digits

    def pick(n: int) -> str:
        return "".join(secrets.choice(alphabet) for _ in range(n))

    return f"{pick(20)}-{pick(3)}"


def not_found(name: str, account_id: str) -> str:
    return f"Stream {name} under account {account_id} not found."


def find(conn: Connection, account_id: str, region: str, params: dict[str, Any]) -> Row[Any]:
    """The stream ``params`` names (StreamARN, else StreamName, else StreamId); a StreamId given with one of
    the others must be that stream's."""
    owner = {"account_id": account_id, "region": region}
    arn, name, stream_id = params.get("StreamARN"), params.get("StreamName"), params.get("StreamId")
    if arn is not None:
        named = arns.named_stream(arn)
        parsed = arns.parse(arn)
        if named is None or parsed is None or parsed.service != "kinesis":
            raise InvalidArgumentException(f"{arn} is not a Kinesis data stream ARN.")
        if (parsed.region, parsed.account_id) != (region, account_id):
            raise ResourceNotFoundException(not_found(named[2], parsed.account_id))
        if name is not None and name != named[2]:
            raise InvalidArgumentException("StreamName and StreamARN name different streams.")
        name = named[2]
    if name is not None:
        row = conn.execute(_BY_NAME, {**owner, "name": name}).first()
        shown = name
    elif stream_id is not None:
        row = conn.execute(_BY_ID, {**owner, "stream_id": stream_id}).first()
        shown = stream_id
    else:
        raise InvalidArgumentException("Either StreamName, StreamARN or StreamId must be provided.")
    if row is None or (stream_id is not None and row.stream_id != stream_id):
        raise ResourceNotFoundException(not_found(shown, account_id))
    return row


def by_id(conn: Connection, stream_id: str) -> Row[Any] | None:
    return conn.execute(select(table).where(table.c.stream_id == stream_id)).first()


def shards(conn: Connection, stream_id: str) -> list[Row[Any]]:
    return conn.execute(_SHARDS, {"stream_id": stream_id}).all()


def shard(conn: Connection, stream_id: str, shard_index: int) -> Row[Any] | None:
    return conn.execute(_SHARD, {"stream_id": stream_id, "shard_index": shard_index}).first()


def open_shards(conn: Connection, account_id: str, region: str) -> int:
    """Shards of every stream of the account in the region (all are open: nothing reshards)."""
    query = (
        select(func.count())
        .select_from(shards_table.join(table, shards_table.c.stream_id == table.c.stream_id))
        .where(table.c.account_id == account_id, table.c.region == region)
    )
    return conn.execute(query).scalar_one()


def on_demand_streams(conn: Connection, account_id: str, region: str) -> int:
    query = (
        select(func.count())
        .select_from(table)
        .where(table.c.account_id == account_id, table.c.region == region, table.c.mode == "ON_DEMAND")
    )
    return conn.execute(query).scalar_one()


def hash_ranges(count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ranges covering 0 .. 2**128 - 1, the last one taking the remainder."""
    step = HASH_SPACE // count
    return [(i * step, HASH_SPACE - 1 if i == count - 1 else (i + 1) * step - 1) for i in range(count)]


def shard_id(index: int) -> str:
    return f"shardId-{index:012d}"


def shard_index(value: str) -> int | None:
    """The index a ShardId names (``shardId-000000000003`` -> 3; AWS also accepts the bare number)."""
    digits = value.removeprefix("shardId-")
    return int(digits) if digits.isdigit() and len(digits) <= 12 else None


class Router:
    """Which shard holds a hash key: the shards' ranges as numbers, sorted, searched by bisection (a
    PutRecords of 500 records asks 500 times)."""

    def __init__(self, shard_rows: list[Row[Any]]) -> None:
        ranges = sorted((int(r.start_hash), int(r.end_hash), int(r.shard_index)) for r in shard_rows)
        self._starts = [start for start, _, _ in ranges]
        self._ranges = ranges

    def shard(self, hash_key: int) -> int:
        at = bisect.bisect_right(self._starts, hash_key) - 1
        if at < 0 or hash_key > self._ranges[at][1]:
            raise InvalidArgumentException(f"The hash key {hash_key} is outside every shard's range.")
        return self._ranges[at][2]


def describe_shard(row: Row[Any]) -> dict[str, Any]:
    return {
        "ShardId": shard_id(row.shard_index),
        "HashKeyRange": {"StartingHashKey": row.start_hash, "EndingHashKey": row.end_hash},
        "SequenceNumberRange": {"StartingSequenceNumber": sequences.format(row.shard_index, 0)},
    }


def mode_details(row: Row[Any]) -> dict[str, str]:
    return {"StreamMode": row.mode}


def summary(row: Row[Any]) -> dict[str, Any]:
    """A ListStreams StreamSummary."""
    return {
        "StreamName": row.name, "StreamARN": row.arn, "StreamStatus": row.status,
        "StreamModeDetails": mode_details(row), "StreamCreationTimestamp": row.created_at,
    }  # fmt: skip


def description(row: Row[Any], shard_rows: list[Row[Any]], has_more: bool) -> dict[str, Any]:
    """DescribeStream's StreamDescription."""
    out: dict[str, Any] = {
        "StreamName": row.name, "StreamARN": row.arn, "StreamStatus": row.status,
        "StreamModeDetails": mode_details(row), "Shards": [describe_shard(s) for s in shard_rows],
        "HasMoreShards": has_more, "RetentionPeriodHours": row.retention_hours,
        "StreamCreationTimestamp": row.created_at, "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": row.encryption_type,
    }  # fmt: skip
    if row.key_id:
        out["KeyId"] = row.key_id
    return out


def description_summary(row: Row[Any], open_shard_count: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "StreamName": row.name, "StreamARN": row.arn, "StreamId": row.stream_id, "StreamStatus": row.status,
        "StreamModeDetails": mode_details(row), "RetentionPeriodHours": row.retention_hours,
        "StreamCreationTimestamp": row.created_at, "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": row.encryption_type, "OpenShardCount": open_shard_count, "ConsumerCount": 0,
        "MaxRecordSizeInKiB": row.max_record_kib, "RecordDistributionStrategy": row.distribution,
    }  # fmt: skip
    if row.key_id:
        out["KeyId"] = row.key_id
    return out
