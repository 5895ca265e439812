"""Kinesis Data Streams: one small function per AWS operation.

Streams are ``ACTIVE`` as soon as CreateStream returns (AWS passes through ``CREATING`` for a few seconds;
producers and boto3's ``stream_exists`` waiter wait for ``ACTIVE`` either way). DeleteStream makes the
stream ``DELETING`` (it answers ResourceNotFoundException to readers and writers, and keeps its name taken)
and wakes the retention pass, which deletes its records and then the stream itself.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from mlharbor import arns
from mlharbor.api.services import Handler
from mlharbor.context import Call
from mlharbor.errors import (
    BadPaginationToken,
    ExpiredNextTokenException,
    InvalidArgumentException,
    LimitExceededException,
    ProvisionedThroughputExceededException,
    ResourceInUseException,
    ResourceNotFoundException,
    ValidationException,
)
from mlharbor.services import tags
from mlharbor.services.kinesis import iterators, records, sequences, streams
from mlharbor.services.kinesis.throughput import ShardLimits
from mlharbor.store import transitions
from mlharbor.store.tables import kinesis_shards as shards_table
from mlharbor.store.tables import kinesis_streams as table

TAG_LIMIT = 50
MAX_PUT_RECORDS_BYTES = 10 * 1024 * 1024
NEXT_TOKEN_LIFETIME_S = 300
STATES = transitions.machine("kinesis stream", "ACTIVE", {"ACTIVE": ("DELETING",), "DELETING": ()})


def _limits(call: Call) -> ShardLimits:
    limits = call.server.extras.get("kinesis.limits")
    if limits is None:
        limits = call.server.extras["kinesis.limits"] = ShardLimits()
    return limits


def _active(call: Call, conn: Any, params: dict[str, Any]) -> Any:
    row = streams.find(conn, call.account_id, call.region, params)
    if row.status != "ACTIVE":
        raise ResourceNotFoundException(streams.not_found(row.name, call.account_id))
    return row


# --- streams ------------------------------------------------------------------------------------------------
def create_stream(call: Call, params: dict[str, Any]) -> None:
    name = params["StreamName"]
    count = params.get("ShardCount")
    mode = params.get("StreamModeDetails", {}).get("StreamMode") or ("PROVISIONED" if count else "ON_DEMAND")
    if mode == "PROVISIONED" and count is None:
        raise InvalidArgumentException("ShardCount is required for a stream in PROVISIONED mode.")
    if mode == "ON_DEMAND" and count is not None:
        raise InvalidArgumentException("ShardCount cannot be given for a stream in ON_DEMAND mode.")
    shard_count = count if mode == "PROVISIONED" else streams.ON_DEMAND_SHARDS
    new_tags = params.get("Tags", {})
    if len(new_tags) > TAG_LIMIT:
        raise InvalidArgumentException(f"A stream can have at most {TAG_LIMIT} tags.")
    now = round(time.time(), 3)
    arn = arns.kinesis_stream(call.region, call.account_id, name)
    stream_id = streams.new_stream_id()
    try:
        with call.store.begin() as conn:
            used = streams.open_shards(conn, call.account_id, call.region)
            if used + shard_count > streams.SHARD_LIMIT:
                raise LimitExceededException(
                    f"This request would exceed the shard limit for the account {call.account_id} in "
                    f"{call.region}. Current shard count for the account: {used}. Limit: "
                    f"{streams.SHARD_LIMIT}. Number of additional shards that would have resulted from this "
                    f"request: {shard_count}."
                )
            limit = streams.ON_DEMAND_STREAM_LIMIT
            if mode == "ON_DEMAND" and streams.on_demand_streams(conn, call.account_id, call.region) >= limit:
                raise LimitExceededException(f"Exceeded the limit of {limit} on-demand streams.")
            conn.execute(
                insert(table).values(
                    stream_id=stream_id, arn=arn, account_id=call.account_id, region=call.region, name=name,
                    status=STATES.initial, version=0, mode=mode,
                    retention_hours=streams.DEFAULT_RETENTION_HOURS, created_at=now, encryption_type="NONE",
                    key_id=None,
                    max_record_kib=params.get("MaxRecordSizeInKiB", streams.DEFAULT_MAX_RECORD_KIB),
                    distribution=params.get("RecordDistributionStrategy", "USER_PARTITION_KEY"),
                )
            )  # fmt: skip
            conn.execute(
                insert(shards_table),
                [
                    {
                        "stream_id": stream_id,
                        "shard_index": i,
                        "start_hash": str(start),
                        "end_hash": str(end),
                        "created_at": now,
                        "next_sequence": 1,
                    }  # fmt: skip
                    for i, (start, end) in enumerate(streams.hash_ranges(shard_count))
                ],
            )
            tags.remove_all(conn, arn)  # a deleted namesake's tags (same ARN) are not this stream's
            tags.put(conn, arn, new_tags)
    except IntegrityError:
        raise ResourceInUseException(
            f"Stream {name} under account {call.account_id} already exists."
        ) from None


def delete_stream(call: Call, params: dict[str, Any]) -> None:
    with call.store.begin() as conn:
        row = streams.find(conn, call.account_id, call.region, params)
        if row.status == "DELETING":
            return  # already on its way out: AWS answers a second DeleteStream the same way
        if not transitions.transition(
            conn, table, STATES, table.c.stream_id == row.stream_id,
            current=row.status, version=row.version, target="DELETING",
        ):  # fmt: skip
            raise ResourceInUseException(f"Stream {row.name} under account {call.account_id} is changing.")
        tags.remove_all(conn, row.arn)
    _limits(call).forget(row.stream_id)
    call.server.reconciler.wake()  # the retention pass deletes its records, then the stream


def describe_stream(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    limit = params.get("Limit", 100)
    with call.store.read() as conn:
        row = streams.find(conn, call.account_id, call.region, params)
        shard_rows = streams.shards(conn, row.stream_id)
    start = params.get("ExclusiveStartShardId")
    if start is not None:
        after = streams.shard_index(start)
        shard_rows = [s for s in shard_rows if after is None or s.shard_index > after]
    return {"StreamDescription": streams.description(row, shard_rows[:limit], len(shard_rows) > limit)}


def describe_stream_summary(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        row = streams.find(conn, call.account_id, call.region, params)
        count = len(streams.shards(conn, row.stream_id))
    return {"StreamDescriptionSummary": streams.description_summary(row, count)}


def list_streams(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    limit = params.get("Limit", 100)
    after = params.get("ExclusiveStartStreamName")
    if params.get("NextToken"):
        after = _read_token(call, params["NextToken"])["n"]
    query = select(table).where(table.c.account_id == call.account_id, table.c.region == call.region)
    if after is not None:
        query = query.where(table.c.name > after)
    with call.store.read() as conn:
        rows = conn.execute(query.order_by(table.c.name).limit(limit + 1)).all()
    page = rows[:limit]
    result: dict[str, Any] = {
        "StreamNames": [r.name for r in page],
        "StreamSummaries": [streams.summary(r) for r in page],
        "HasMoreStreams": len(rows) > limit,
    }
    if len(rows) > limit:
        result["NextToken"] = _token(call, {"n": page[-1].name})
    return result


def list_shards(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    limit = params.get("MaxResults", 1000)
    if params.get("NextToken"):
        if any(params.get(k) is not None for k in ("StreamName", "StreamARN", "ExclusiveStartShardId")):
            raise InvalidArgumentException(
                "NextToken cannot be used with StreamName, StreamARN or ExclusiveStartShardId."
            )
        position = _read_token(call, params["NextToken"])
        stream_params, after = {"StreamARN": position["arn"]}, int(position["h"])
    else:
        stream_params, after = params, -1
        if params.get("ExclusiveStartShardId") is not None:
            after = _shard_or_fail(params["ExclusiveStartShardId"])
        shard_filter = params.get("ShardFilter") or {}
        if shard_filter.get("Type") == "AFTER_SHARD_ID":
            if not shard_filter.get("ShardId"):
                raise InvalidArgumentException("ShardFilter type AFTER_SHARD_ID needs a ShardId.")
            after = max(after, _shard_or_fail(shard_filter["ShardId"]))
        elif shard_filter.get("Type") in ("AT_TIMESTAMP", "FROM_TIMESTAMP") and not shard_filter.get(
            "Timestamp"
        ):
            raise InvalidArgumentException(f"ShardFilter type {shard_filter['Type']} needs a Timestamp.")
        # Every other filter keeps every shard: nothing reshards, so all of them are open and were there
        # from the stream's start.
    with call.store.read() as conn:
        row = streams.find(conn, call.account_id, call.region, stream_params)
        shard_rows = [s for s in streams.shards(conn, row.stream_id) if s.shard_index > after]
    result: dict[str, Any] = {"Shards": [streams.describe_shard(s) for s in shard_rows[:limit]]}
    if len(shard_rows) > limit:
        result["NextToken"] = _token(call, {"arn": row.arn, "h": shard_rows[limit - 1].shard_index})
    return result


def _shard_or_fail(value: str) -> int:
    index = streams.shard_index(value)
    if index is None:
        raise InvalidArgumentException(f"{value} is not a shard id.")
    return index


def _token(call: Call, position: dict[str, Any]) -> str:
    return call.server.pager.encode(call.page_scope(), {**position, "t": int(time.time())})


def _read_token(call: Call, token: str) -> dict[str, Any]:
    try:
        position = call.server.pager.decode(call.page_scope(), token)
    except BadPaginationToken:
        raise InvalidArgumentException("Invalid NextToken.") from None
    if time.time() - float(position.get("t", 0)) > NEXT_TOKEN_LIFETIME_S:
        raise ExpiredNextTokenException("The NextToken has expired.")
    return position


def _retention(call: Call, params: dict[str, Any], increase: bool) -> None:
    hours = params["RetentionPeriodHours"]
    with call.store.begin() as conn:
        row = _active(call, conn, params)
        if hours < streams.DEFAULT_RETENTION_HOURS:
            raise InvalidArgumentException(
                f"Minimum allowed retention period is {streams.DEFAULT_RETENTION_HOURS} hours. Requested "
                f"retention period ({hours} hours) is too short."
            )
        if hours > streams.MAX_RETENTION_HOURS:
            raise InvalidArgumentException(
                f"Maximum allowed retention period is {streams.MAX_RETENTION_HOURS} hours. Requested "
                f"retention period ({hours} hours) is too long."
            )
        if increase and hours < row.retention_hours:
            raise InvalidArgumentException(
                f"Requested retention period ({hours} hours) for stream {row.name} can not be shorter than "
                f"existing retention period ({row.retention_hours} hours). Use DecreaseRetentionPeriod API."
            )
        if not increase and hours > row.retention_hours:
            raise InvalidArgumentException(
                f"Requested retention period ({hours} hours) for stream {row.name} can not be longer than "
                f"existing retention period ({row.retention_hours} hours). Use IncreaseRetentionPeriod API."
            )
        conn.execute(
            update(table)
            .where(table.c.stream_id == row.stream_id)
            .values(retention_hours=hours, version=table.c.version + 1)
        )


def increase_stream_retention_period(call: Call, params: dict[str, Any]) -> None:
    _retention(call, params, increase=True)


def decrease_stream_retention_period(call: Call, params: dict[str, Any]) -> None:
    _retention(call, params, increase=False)
    call.server.reconciler.wake()  # records now past the retention are trimmed at once


def describe_limits(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        used = streams.open_shards(conn, call.account_id, call.region)
        on_demand = streams.on_demand_streams(conn, call.account_id, call.region)
    return {
        "ShardLimit": streams.SHARD_LIMIT, "OpenShardCount": used, "OnDemandStreamCount": on_demand,
        "OnDemandStreamCountLimit": streams.ON_DEMAND_STREAM_LIMIT,
    }  # fmt: skip


# --- records ------------------------------------------------------------------------------------------------
def _entry(record: dict[str, Any], stream: Any) -> records.Entry:
    key = record.get("PartitionKey")
    if key is None and stream.distribution != "AUTO":
        raise InvalidArgumentException("PartitionKey is required: the stream distributes records by key.")
    return records.Entry(record["Data"], key or "", record.get("ExplicitHashKey"))


def _place(stream: Any, router: streams.Router, entry: records.Entry) -> int:
    if stream.distribution == "AUTO":
        key = records.random_hash_key()
    else:
        key = records.hash_key(entry)
        if key >= streams.HASH_SPACE:
            raise InvalidArgumentException(
                f"ExplicitHashKey {entry.explicit_hash_key} is larger than 2^128 - 1."
            )
    return router.shard(key)


def _check_size(stream: Any, entries: list[records.Entry], where: str) -> None:
    limit = stream.max_record_kib * 1024
    for n, entry in enumerate(entries):
        if len(entry.data) + len(entry.partition_key.encode("utf-8")) > limit:
            at = where.format(n=n + 1)
            raise ValidationException(
                f"1 validation error detected: Value at '{at}' failed to satisfy constraint: Member must "
                f"have length less than or equal to {limit}"
            )


def _throttled(stream: Any, shard: int, account_id: str) -> str:
    where = f"shard {streams.shard_id(shard)} in stream {stream.name} under account {account_id}"
    return f"Rate exceeded for {where}."


def put_record(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        stream = _active(call, conn, params)
        shard_rows = streams.shards(conn, stream.stream_id)
    entry = _entry(params, stream)
    _check_size(stream, [entry], "data")
    shard = _place(stream, streams.Router(shard_rows), entry)
    if stream.mode == "PROVISIONED" and not _limits(call).admit(
        stream.stream_id, shard, len(entry.data) + len(entry.partition_key)
    ):
        raise ProvisionedThroughputExceededException(_throttled(stream, shard, call.account_id))
    if params.get("DryRun"):
        return {"ShardId": streams.shard_id(shard), "SequenceNumber": sequences.format(shard, 0),
                "EncryptionType": stream.encryption_type}  # fmt: skip
    with call.store.begin() as conn:
        counters = records.put(conn, stream.stream_id, [(shard, entry)], time.time())
    if counters is None:
        raise ResourceNotFoundException(streams.not_found(stream.name, call.account_id))
    return {
        "ShardId": streams.shard_id(shard), "SequenceNumber": sequences.format(shard, counters[0]),
        "EncryptionType": stream.encryption_type,
    }  # fmt: skip


def put_records(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        stream = _active(call, conn, params)
        shard_rows = streams.shards(conn, stream.stream_id)
    entries = [_entry(r, stream) for r in params["Records"]]
    _check_size(stream, entries, "records.{n}.member.data")
    if sum(len(e.data) + len(e.partition_key.encode("utf-8")) for e in entries) > MAX_PUT_RECORDS_BYTES:
        raise InvalidArgumentException("Records size exceeds 10 MB limit")
    router = streams.Router(shard_rows)
    shards = [_place(stream, router, e) for e in entries]
    limits = _limits(call)
    admitted = [
        stream.mode != "PROVISIONED"
        or limits.admit(stream.stream_id, shard, len(e.data) + len(e.partition_key))
        for shard, e in zip(shards, entries, strict=True)
    ]
    stored = [(shard, e) for shard, e, ok in zip(shards, entries, admitted, strict=True) if ok]
    counters: list[int] = []
    if stored and not params.get("DryRun"):
        with call.store.begin() as conn:
            taken = records.put(conn, stream.stream_id, stored, time.time())
        if taken is None:
            raise ResourceNotFoundException(streams.not_found(stream.name, call.account_id))
        counters = taken
    elif stored:
        counters = [0] * len(stored)
    results: list[dict[str, Any]] = []
    next_counter = iter(counters)
    for shard, ok in zip(shards, admitted, strict=True):
        if ok:
            results.append({"SequenceNumber": sequences.format(shard, next(next_counter)),
                            "ShardId": streams.shard_id(shard)})  # fmt: skip
        else:
            results.append({"ErrorCode": "ProvisionedThroughputExceededException",
                            "ErrorMessage": _throttled(stream, shard, call.account_id)})  # fmt: skip
    return {"FailedRecordCount": admitted.count(False), "Records": results,
            "EncryptionType": stream.encryption_type}  # fmt: skip


def get_shard_iterator(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    kind = params["ShardIteratorType"]
    with call.store.read() as conn:
        stream = _active(call, conn, params)
        index = streams.shard_index(params["ShardId"])
        shard = streams.shard(conn, stream.stream_id, index) if index is not None else None
        if shard is None:
            raise ResourceNotFoundException(
                f"Shard {params['ShardId']} in stream {stream.name} under account {call.account_id} does not "
                "exist"
            )
        tip = shard.next_sequence - 1
        if kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            if params.get("StartingSequenceNumber") is None:
                raise InvalidArgumentException(f"StartingSequenceNumber is required for {kind}.")
            where = f"{streams.shard_id(shard.shard_index)} in stream {stream.name} under account "
            where += call.account_id
            counter = sequences.parse(params["StartingSequenceNumber"], shard.shard_index, where)
            after = counter - 1 if kind == "AT_SEQUENCE_NUMBER" else counter
        elif kind == "AT_TIMESTAMP":
            if params.get("Timestamp") is None:
                raise InvalidArgumentException("Timestamp is required for AT_TIMESTAMP.")
            first = records.first_at(conn, stream.stream_id, shard.shard_index, _epoch(params["Timestamp"]))
            after = tip if first is None else first - 1
        elif kind == "LATEST":
            after = tip
        else:  # TRIM_HORIZON: records past the retention are never read, trimmed yet or not
            after = 0
    position = iterators.Position(stream.stream_id, shard.shard_index, min(after, tip))
    return {"ShardIterator": iterators.issue(call.server.pager, call.account_id, call.region, position)}


def _epoch(value: Any) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def get_records(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    position = iterators.read(
        call.server.pager, call.account_id, call.region, params["ShardIterator"],
        call.server.settings.kinesis_iterator_lifetime_seconds,
    )  # fmt: skip
    limit = params.get("Limit", records.MAX_RECORDS_PER_READ)
    with call.store.read() as conn:
        stream = streams.by_id(conn, position.stream_id)
        shard = streams.shard(conn, position.stream_id, position.shard) if stream is not None else None
        if stream is None or shard is None or stream.status != "ACTIVE":
            raise ResourceNotFoundException(
                f"Shard {streams.shard_id(position.shard)} in stream under account {call.account_id} does "
                "not exist"
            )
        if params.get("StreamARN") is not None and params["StreamARN"] != stream.arn:
            raise InvalidArgumentException("The ShardIterator is not one of the stream StreamARN names.")
        now = time.time()
        rows = records.read(
            conn, stream.stream_id, position.shard, position.after, limit, now - stream.retention_hours * 3600
        )
    tip = shard.next_sequence - 1
    last = rows[-1].sequence if rows else max(position.after, 0)
    behind = 0 if last >= tip or not rows else max(0, int((now - rows[-1].arrival) * 1000))
    next_position = iterators.Position(stream.stream_id, position.shard, last)
    first, encryption = sequences.base(position.shard), stream.encryption_type
    return {
        "Records": [
            {
                "SequenceNumber": str(first + sequence),
                "ApproximateArrivalTimestamp": arrival,
                "Data": data,
                "PartitionKey": key,
                "EncryptionType": encryption,
            }
            for sequence, key, data, arrival in rows
        ],
        "NextShardIterator": iterators.issue(call.server.pager, call.account_id, call.region, next_position),
        "MillisBehindLatest": behind,
    }


# --- tags: by stream (map in, list out) and by resource ARN ---------------------------------------------
def _tagged_stream(call: Call, params: dict[str, Any]) -> Any:
    with call.store.read() as conn:
        return _active(call, conn, params)


def _resource(call: Call, params: dict[str, Any]) -> Any:
    named = arns.named_stream(params["ResourceARN"])
    parsed = arns.parse(params["ResourceARN"])
    if named is None or parsed is None or parsed.service != "kinesis":
        raise InvalidArgumentException(f"{params['ResourceARN']} is not a Kinesis data stream ARN.")
    return _tagged_stream(call, {"StreamARN": params["ResourceARN"], "StreamId": params.get("StreamId")})


def _add_tags(call: Call, arn: str, new: dict[str, str]) -> None:
    with call.store.begin() as conn:
        if tags.count_after(conn, arn, new) > TAG_LIMIT:
            raise LimitExceededException(f"A stream can have at most {TAG_LIMIT} tags.")
        tags.put(conn, arn, new)


def _remove_tags(call: Call, arn: str, keys: list[str]) -> None:
    with call.store.begin() as conn:
        tags.remove(conn, arn, keys)


def _tag_list(call: Call, arn: str) -> list[dict[str, str]]:
    with call.store.read() as conn:
        return [{"Key": k, "Value": v} for k, v in sorted(tags.get(conn, arn).items())]


def add_tags_to_stream(call: Call, params: dict[str, Any]) -> None:
    _add_tags(call, _tagged_stream(call, params).arn, params["Tags"])


def remove_tags_from_stream(call: Call, params: dict[str, Any]) -> None:
    _remove_tags(call, _tagged_stream(call, params).arn, params["TagKeys"])


def list_tags_for_stream(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    listed = _tag_list(call, _tagged_stream(call, params).arn)
    start = params.get("ExclusiveStartTagKey")
    if start is not None:
        listed = [t for t in listed if t["Key"] > start]
    limit = params.get("Limit", 50)
    return {"Tags": listed[:limit], "HasMoreTags": len(listed) > limit}


def tag_resource(call: Call, params: dict[str, Any]) -> None:
    _add_tags(call, _resource(call, params).arn, params["Tags"])


def untag_resource(call: Call, params: dict[str, Any]) -> None:
    _remove_tags(call, _resource(call, params).arn, params["TagKeys"])


def list_tags_for_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {"Tags": _tag_list(call, _resource(call, params).arn)}


OPERATIONS: dict[str, Handler] = {
    "CreateStream": create_stream,
    "DeleteStream": delete_stream,
    "DescribeStream": describe_stream,
    "DescribeStreamSummary": describe_stream_summary,
    "ListStreams": list_streams,
    "ListShards": list_shards,
    "IncreaseStreamRetentionPeriod": increase_stream_retention_period,
    "DecreaseStreamRetentionPeriod": decrease_stream_retention_period,
    "DescribeLimits": describe_limits,
    "PutRecord": put_record,
    "PutRecords": put_records,
    "GetShardIterator": get_shard_iterator,
    "GetRecords": get_records,
    "AddTagsToStream": add_tags_to_stream,
    "RemoveTagsFromStream": remove_tags_from_stream,
    "ListTagsForStream": list_tags_for_stream,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTagsForResource": list_tags_for_resource,
}
