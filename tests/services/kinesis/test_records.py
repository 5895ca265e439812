"""Kinesis Data Streams data plane against a real server: PutRecord(s) routing and sequence numbers, every
shard iterator type, GetRecords paging, partial failures, expiry, durability across kill -9, and
retention trimming."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import time
from datetime import UTC, datetime

import pytest
from botocore.exceptions import ClientError

from tests.conftest import start_server, stop_server, wait_until

pytestmark = pytest.mark.storage


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def shard_of(kinesis, name: str, key: str) -> str:  # type: ignore[no-untyped-def]
    """The shard whose hash-key range holds MD5(key), from the stream's own description."""
    point = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
    for shard in kinesis.list_shards(StreamName=name)["Shards"]:
        low, high = shard["HashKeyRange"]["StartingHashKey"], shard["HashKeyRange"]["EndingHashKey"]
        if int(low) <= point <= int(high):
            return str(shard["ShardId"])
    raise AssertionError(f"no shard holds {point}")


def read_all(kinesis, name: str, shard: str, kind: str = "TRIM_HORIZON", **start: object) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType=kind, **start)[
        "ShardIterator"
    ]
    out: list[dict] = []  # type: ignore[type-arg]
    while True:
        page = kinesis.get_records(ShardIterator=iterator, Limit=3)
        out += page["Records"]
        iterator = page["NextShardIterator"]
        if not page["Records"] and page["MillisBehindLatest"] == 0:
            return out


def test_records_go_to_their_key_shard_in_order(kinesis, new_stream):
    name = new_stream(4)
    keys = [f"camera-{i}" for i in range(12)]
    put = {key: kinesis.put_record(StreamName=name, Data=key.encode(), PartitionKey=key) for key in keys}
    for key, answer in put.items():
        assert answer["ShardId"] == shard_of(kinesis, name, key)
        assert len(answer["SequenceNumber"]) == 56 and answer["EncryptionType"] == "NONE"
    for shard in {a["ShardId"] for a in put.values()}:
        records = read_all(kinesis, name, shard)
        expected = [k for k in keys if put[k]["ShardId"] == shard]
        assert [r["Data"].decode() for r in records] == expected  # arrival order
        assert [r["PartitionKey"] for r in records] == expected
        numbers = [int(r["SequenceNumber"]) for r in records]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        assert [r["SequenceNumber"] for r in records] == [put[k]["SequenceNumber"] for k in expected]
        assert all(isinstance(r["ApproximateArrivalTimestamp"], datetime) for r in records)
    # An ExplicitHashKey overrides the partition key.
    last = kinesis.put_record(
        StreamName=name, Data=b"x", PartitionKey="anything", ExplicitHashKey=str(2**128 - 1)
    )
    assert last["ShardId"] == "shardId-000000000003"


def test_put_records_answers_in_request_order(kinesis, new_stream):
    name = new_stream(None)  # on demand: no per-shard limit
    entries = [{"Data": f"r{i}".encode(), "PartitionKey": f"k{i % 7}"} for i in range(500)]
    answer = kinesis.put_records(StreamName=name, Records=entries)
    assert answer["FailedRecordCount"] == 0 and len(answer["Records"]) == 500
    for entry, result in zip(entries, answer["Records"], strict=True):
        assert result["ShardId"] == shard_of(kinesis, name, entry["PartitionKey"])
    stored = {r["Data"] for s in range(4) for r in read_all(kinesis, name, f"shardId-{s:012d}")}
    assert stored == {e["Data"] for e in entries}


def test_put_records_partial_failure_when_a_shard_is_over_its_limit(kinesis, new_stream):
    name = new_stream(1)  # PROVISIONED: 1,000 records/s per shard
    results: list[dict] = []  # type: ignore[type-arg]
    sent: list[bytes] = []
    for batch in range(3):  # 1,500 records within well under a second
        entries = [{"Data": f"{batch}-{i}".encode(), "PartitionKey": "k"} for i in range(500)]
        sent += [e["Data"] for e in entries]
        answer = kinesis.put_records(StreamName=name, Records=entries)
        assert answer["FailedRecordCount"] == sum("ErrorCode" in r for r in answer["Records"])
        results += answer["Records"]
    failed = [r for r in results if "ErrorCode" in r]
    assert failed, "1,500 records in a moment must exceed one shard's 1,000 records/s"
    assert failed[0] == {
        "ErrorCode": "ProvisionedThroughputExceededException",
        "ErrorMessage": f"Rate exceeded for shard shardId-000000000000 in stream {name} under account "
        "000000000000.",
    }
    # Exactly the accepted records are stored, in order.
    stored = [r["Data"] for r in read_all(kinesis, name, "shardId-000000000000")]
    assert stored == [data for data, r in zip(sent, results, strict=True) if "SequenceNumber" in r]


def test_every_iterator_type(kinesis, new_stream):
    name = new_stream(1)
    shard = "shardId-000000000000"
    first = [kinesis.put_record(StreamName=name, Data=f"a{i}".encode(), PartitionKey="k") for i in range(3)]
    latest = kinesis.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType="LATEST")[
        "ShardIterator"
    ]
    time.sleep(0.01)  # the arrival clock must move on between the two batches
    middle = datetime.now(UTC)
    time.sleep(0.01)
    second = [kinesis.put_record(StreamName=name, Data=f"b{i}".encode(), PartitionKey="k") for i in range(3)]

    def data(records: list[dict]) -> list[str]:  # type: ignore[type-arg]
        return [r["Data"].decode() for r in records]

    everything = ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert data(read_all(kinesis, name, shard)) == everything
    assert data(kinesis.get_records(ShardIterator=latest)["Records"]) == ["b0", "b1", "b2"]
    at = first[2]["SequenceNumber"]
    assert (
        data(read_all(kinesis, name, shard, "AT_SEQUENCE_NUMBER", StartingSequenceNumber=at))
        == everything[2:]
    )
    assert (
        data(read_all(kinesis, name, shard, "AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=at))
        == everything[3:]
    )
    assert data(read_all(kinesis, name, shard, "AT_TIMESTAMP", Timestamp=middle)) == ["b0", "b1", "b2"]
    assert data(read_all(kinesis, name, shard, "AT_TIMESTAMP", Timestamp=datetime.now(UTC))) == []
    # A caught-up reader gets nothing, MillisBehindLatest 0, and an iterator that sees what comes next.
    page = kinesis.get_records(ShardIterator=kinesis.get_shard_iterator(
        StreamName=name, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"])  # fmt: skip
    assert page["Records"] == [] and page["MillisBehindLatest"] == 0
    kinesis.put_record(StreamName=name, Data=b"c", PartitionKey="k")
    assert data(kinesis.get_records(ShardIterator=page["NextShardIterator"])["Records"]) == ["c"]
    # A reader behind the tip is told how far.
    behind = kinesis.get_records(
        ShardIterator=kinesis.get_shard_iterator(StreamName=name, ShardId=shard,
                                                 ShardIteratorType="TRIM_HORIZON")["ShardIterator"],
        Limit=1,
    )  # fmt: skip
    assert data(behind["Records"]) == ["a0"] and behind["MillisBehindLatest"] > 0
    assert int(second[-1]["SequenceNumber"]) > int(first[0]["SequenceNumber"])


def test_bad_iterator_requests(kinesis, new_stream):
    name = new_stream(2)
    other = new_stream(1)
    foreign = kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="k", ExplicitHashKey="0")
    invalid = "InvalidArgumentException"
    cases = [
        ({"ShardId": "shardId-000000000009", "ShardIteratorType": "LATEST"}, "ResourceNotFoundException"),
        ({"ShardId": "shardId-000000000000", "ShardIteratorType": "AT_SEQUENCE_NUMBER"}, invalid),
        ({"ShardId": "shardId-000000000000", "ShardIteratorType": "AT_TIMESTAMP"}, invalid),
        # A sequence number of another shard.
        ({"ShardId": "shardId-000000000001", "ShardIteratorType": "AT_SEQUENCE_NUMBER",
          "StartingSequenceNumber": foreign["SequenceNumber"]}, "InvalidArgumentException"),
        ({"ShardId": "shardId-000000000000", "ShardIteratorType": "SOMETIME"}, "ValidationException"),
    ]  # fmt: skip
    for params, expected in cases:
        with pytest.raises(ClientError) as refused:
            kinesis.get_shard_iterator(StreamName=name, **params)
        assert code(refused) == expected, params
    with pytest.raises(ClientError) as garbage:
        kinesis.get_records(ShardIterator="AAAAnot-an-iterator")
    assert code(garbage) == "InvalidArgumentException"
    # An iterator of a stream that was deleted since.
    stale = kinesis.get_shard_iterator(StreamName=other, ShardId="shardId-000000000000",
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]  # fmt: skip
    kinesis.delete_stream(StreamName=other)
    with pytest.raises(ClientError) as deleted:
        kinesis.get_records(ShardIterator=stale)
    assert code(deleted) == "ResourceNotFoundException"


def test_records_refused_whole_change_nothing(kinesis, new_stream):
    name = new_stream(1)
    too_big = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
        "MaxRecordSizeInKiB"
    ]
    with pytest.raises(ClientError) as big:
        kinesis.put_record(StreamName=name, Data=b"x" * (too_big * 1024 + 1), PartitionKey="k")
    assert code(big) == "ValidationException"
    with pytest.raises(ClientError) as one_big:
        big_data = b"x" * (too_big * 1024)
        entries = [{"Data": b"ok", "PartitionKey": "k"}, {"Data": big_data, "PartitionKey": "k"}]
        kinesis.put_records(StreamName=name, Records=entries)
    assert code(one_big) == "ValidationException"
    assert "records.2.member.data" in one_big.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as too_many:
        kinesis.put_records(StreamName=name, Records=[{"Data": b"x", "PartitionKey": "k"}] * 501)
    assert code(too_many) == "ValidationException"
    with pytest.raises(ClientError) as no_key:
        kinesis.put_record(StreamName=name, Data=b"x")
    assert code(no_key) == "InvalidArgumentException"
    with pytest.raises(ClientError) as bad_hash:
        kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="k", ExplicitHashKey=str(2**128))
    assert code(bad_hash) == "InvalidArgumentException"
    assert read_all(kinesis, name, "shardId-000000000000") == []


def test_iterators_expire(make_server):
    running = make_server(env={"MLHARBOR_KINESIS_ITERATOR_LIFETIME_SECONDS": "0.5"})
    kinesis = running.client("kinesis")
    kinesis.create_stream(StreamName="expiry", ShardCount=1)
    iterator = kinesis.get_shard_iterator(StreamName="expiry", ShardId="shardId-000000000000",
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]  # fmt: skip
    assert kinesis.get_records(ShardIterator=iterator)["Records"] == []

    def expired() -> bool:
        try:
            kinesis.get_records(ShardIterator=iterator)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ExpiredIteratorException"
            assert "tolerated delay of 500 milliseconds" in exc.response["Error"]["Message"]
            return True
        return False

    wait_until(expired, timeout=10, what="the iterator to expire")


def test_acknowledged_records_survive_kill_9_and_numbers_keep_growing(make_server):
    first = make_server()
    kinesis = first.client("kinesis")
    kinesis.create_stream(StreamName="durable", ShardCount=2)
    acked = [
        kinesis.put_record(StreamName="durable", Data=f"d{i}".encode(), PartitionKey=f"k{i}")
        for i in range(20)
    ]
    batch = kinesis.put_records(StreamName="durable", Records=[{"Data": b"batch", "PartitionKey": "b"}] * 30)
    assert batch["FailedRecordCount"] == 0
    os.kill(first.process.pid, signal.SIGKILL)  # no clean shutdown of anything
    first.process.wait()
    again = start_server(first.data_dir.parent, first.database_url, *first.extra_args)
    try:
        kinesis = again.client("kinesis")
        stored = {
            s: read_all(kinesis, "durable", s) for s in ("shardId-000000000000", "shardId-000000000001")
        }
        numbers = {r["SequenceNumber"] for records in stored.values() for r in records}
        assert {a["SequenceNumber"] for a in acked + batch["Records"]} == numbers
        after = kinesis.put_record(StreamName="durable", Data=b"later", PartitionKey="k0")
        shard_numbers = [int(r["SequenceNumber"]) for r in stored[after["ShardId"]]]
        assert int(after["SequenceNumber"]) > max(shard_numbers)
    finally:
        stop_server(again)


def test_records_past_retention_are_not_read_and_are_trimmed(make_server):
    running = make_server()
    kinesis = running.client("kinesis")
    kinesis.create_stream(StreamName="trim", ShardCount=1)
    for i in range(5):
        kinesis.put_record(StreamName="trim", Data=f"old{i}".encode(), PartitionKey="k")
    kinesis.put_record(StreamName="trim", Data=b"new", PartitionKey="k")
    # Age the first five past the 24-hour retention, as if a day had passed for them.
    if running.database_url.startswith("sqlite"):
        with sqlite3.connect(running.database_url.split("///", 1)[1]) as db:
            db.execute("UPDATE kinesis_records SET arrival = arrival - 90000 WHERE data != ?", (b"new",))
    else:
        import sqlalchemy

        engine = sqlalchemy.create_engine(running.database_url)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("UPDATE kinesis_records SET arrival = arrival - 90000 "
                                         "WHERE data != :new"), {"new": b"new"})  # fmt: skip
        engine.dispose()
    assert [r["Data"] for r in read_all(kinesis, "trim", "shardId-000000000000")] == [b"new"]

    def remaining() -> int:
        if running.database_url.startswith("sqlite"):
            with sqlite3.connect(running.database_url.split("///", 1)[1]) as db:
                return int(db.execute("SELECT count(*) FROM kinesis_records").fetchone()[0])
        import sqlalchemy

        engine = sqlalchemy.create_engine(running.database_url)
        with engine.connect() as conn:
            count = int(conn.execute(sqlalchemy.text("SELECT count(*) FROM kinesis_records")).scalar_one())
        engine.dispose()
        return count

    wait_until(lambda: remaining() == 1, timeout=10, what="the retention pass to trim old records")


def test_a_stream_can_take_records_up_to_its_max_record_size(kinesis, new_stream):
    name = new_stream(1, MaxRecordSizeInKiB=10240)  # AWS's largest: 10 MiB records, 13.4 MiB of base64 JSON
    data = bytes(range(256)) * (10 * 1024 * 1024 // 256 - 1)
    answer = kinesis.put_record(StreamName=name, Data=data, PartitionKey="k")
    iterator = kinesis.get_shard_iterator(StreamName=name, ShardId=answer["ShardId"],
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]  # fmt: skip
    [record] = kinesis.get_records(ShardIterator=iterator)["Records"]
    assert record["Data"] == data
