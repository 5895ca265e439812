"""Kinesis Data Streams control plane against a real server: create, describe, list, shards, retention,
tags and delete, with AWS's errors for bad input (and nothing changed by a refused call)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import REGION, signed_post, unique, wait_until

pytestmark = pytest.mark.storage

ACCOUNT = "000000000000"


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_provisioned_stream_lifecycle(server, kinesis, new_stream):
    name = new_stream(3)
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE"
    assert summary["StreamARN"] == f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}"
    assert summary["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
    assert summary["OpenShardCount"] == 3 and summary["RetentionPeriodHours"] == 24
    kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 5})

    described = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    shards = described["Shards"]
    assert [s["ShardId"] for s in shards] == [f"shardId-{i:012d}" for i in range(3)]
    # The hash-key space 0 .. 2^128-1, split in contiguous ranges.
    assert shards[0]["HashKeyRange"]["StartingHashKey"] == "0"
    assert shards[-1]["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)
    for before, after in zip(shards, shards[1:], strict=False):
        assert (
            int(after["HashKeyRange"]["StartingHashKey"]) == int(before["HashKeyRange"]["EndingHashKey"]) + 1
        )
    # By ARN and by StreamId, the same stream. (boto3 sends a StreamId to a per-stream AWS host whatever the
    # endpoint_url, so that one goes as a raw signed request.)
    by_arn = kinesis.describe_stream_summary(StreamARN=summary["StreamARN"])["StreamDescriptionSummary"]
    answer = signed_post(server.url, service="kinesis", target="DescribeStreamSummary",
                         body={"StreamId": summary["StreamId"]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    by_id = answer.json()["StreamDescriptionSummary"]
    assert by_arn["StreamId"] == by_id["StreamId"] == summary["StreamId"] and by_id["StreamName"] == name

    kinesis.delete_stream(StreamName=name)
    kinesis.get_waiter("stream_not_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 10}
    )
    with pytest.raises(ClientError) as gone:
        kinesis.describe_stream(StreamName=name)
    assert code(gone) == "ResourceNotFoundException"
    assert gone.value.response["Error"]["Message"] == f"Stream {name} under account {ACCOUNT} not found."
    # The name is free again, and the new stream is a new one (a new StreamId, no old records).
    kinesis.create_stream(StreamName=name, ShardCount=1)
    again = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert again["StreamId"] != summary["StreamId"]
    kinesis.delete_stream(StreamName=name)


def test_on_demand_stream_has_four_shards(kinesis, new_stream):
    name = new_stream(None)
    summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"} and summary["OpenShardCount"] == 4
    # No mode and no shard count: on demand, as AWS creates it.
    plain = unique("ks")
    kinesis.create_stream(StreamName=plain)
    assert kinesis.describe_stream_summary(StreamName=plain)["StreamDescriptionSummary"][
        "StreamModeDetails"
    ] == {"StreamMode": "ON_DEMAND"}


def test_create_refuses_bad_requests_and_changes_nothing(server, kinesis, new_stream):
    name = new_stream(1)
    with pytest.raises(ClientError) as taken:
        kinesis.create_stream(StreamName=name, ShardCount=2)
    assert code(taken) == "ResourceInUseException"
    assert kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["OpenShardCount"] == 1

    fresh = unique("ks")
    cases = [
        ({"StreamName": "bad name!", "ShardCount": 1}, "ValidationException"),
        ({"StreamName": fresh, "StreamModeDetails": {"StreamMode": "PROVISIONED"}},
         "InvalidArgumentException"),
        ({"StreamName": fresh, "ShardCount": 2, "StreamModeDetails": {"StreamMode": "ON_DEMAND"}},
         "InvalidArgumentException"),
        ({"StreamName": fresh, "ShardCount": 501}, "LimitExceededException"),
    ]  # fmt: skip
    for params, expected in cases:
        with pytest.raises(ClientError) as refused:
            kinesis.create_stream(**params)
        assert code(refused) == expected, params
    # What boto3 itself refuses (numbers out of the model's range) reaches the server from other clients.
    for params in ({"StreamName": fresh, "ShardCount": 0},
                   {"StreamName": fresh, "ShardCount": 1, "MaxRecordSizeInKiB": 12000}):  # fmt: skip
        answer = signed_post(server.url, service="kinesis", target="CreateStream", body=params)
        assert answer.status_code == 400 and answer.json()["__type"] == "ValidationException", answer.text
    assert fresh not in kinesis.list_streams(Limit=10000)["StreamNames"]


def test_list_streams_pages(kinesis, new_stream):
    names = sorted(new_stream(1) for _ in range(3))
    seen: list[str] = []
    page = kinesis.list_streams(Limit=2)
    while True:
        assert len(page["StreamNames"]) <= 2
        assert [s["StreamName"] for s in page["StreamSummaries"]] == page["StreamNames"]
        seen += page["StreamNames"]
        if not page["HasMoreStreams"]:
            break
        page = kinesis.list_streams(Limit=2, NextToken=page["NextToken"])
    assert seen == sorted(seen) and set(names) <= set(seen)
    after = kinesis.list_streams(ExclusiveStartStreamName=names[0], Limit=10000)["StreamNames"]
    assert names[0] not in after and names[1] in after
    with pytest.raises(ClientError) as bad:
        kinesis.list_streams(NextToken="not-a-token")
    assert code(bad) == "InvalidArgumentException"


def test_list_shards_and_describe_pages(kinesis, new_stream):
    name = new_stream(5)
    first = kinesis.list_shards(StreamName=name, MaxResults=2)
    ids = [s["ShardId"] for s in first["Shards"]]
    token = first["NextToken"]
    while token:
        page = kinesis.list_shards(NextToken=token, MaxResults=2)
        ids += [s["ShardId"] for s in page["Shards"]]
        token = page.get("NextToken")
    assert ids == [f"shardId-{i:012d}" for i in range(5)]
    after = kinesis.list_shards(StreamName=name, ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": ids[2]})
    assert [s["ShardId"] for s in after["Shards"]] == ids[3:]
    assert len(kinesis.list_shards(StreamName=name, ShardFilter={"Type": "AT_LATEST"})["Shards"]) == 5
    # A NextToken already names the stream: naming it again is an error.
    with pytest.raises(ClientError) as both:
        kinesis.list_shards(StreamName=name, NextToken=first["NextToken"])
    assert code(both) == "InvalidArgumentException"

    described = kinesis.describe_stream(StreamName=name, Limit=2)["StreamDescription"]
    assert len(described["Shards"]) == 2 and described["HasMoreShards"] is True
    rest = kinesis.describe_stream(StreamName=name, ExclusiveStartShardId=ids[1])["StreamDescription"]
    assert [s["ShardId"] for s in rest["Shards"]] == ids[2:] and rest["HasMoreShards"] is False


def test_retention_changes(kinesis, new_stream):
    name = new_stream(1)
    kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=48)
    assert (
        kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["RetentionPeriodHours"]
        == 48
    )
    for call, hours in [
        (kinesis.increase_stream_retention_period, 30),  # shorter than now: use Decrease
        (kinesis.increase_stream_retention_period, 9000),  # past 8760
        (kinesis.decrease_stream_retention_period, 100),  # longer than now: use Increase
        (kinesis.decrease_stream_retention_period, 12),  # below 24
    ]:
        with pytest.raises(ClientError) as refused:
            call(StreamName=name, RetentionPeriodHours=hours)
        assert code(refused) == "InvalidArgumentException", hours
    assert (
        kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["RetentionPeriodHours"]
        == 48
    )
    kinesis.decrease_stream_retention_period(StreamName=name, RetentionPeriodHours=24)
    assert (
        kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["RetentionPeriodHours"]
        == 24
    )


def test_tags_by_stream_and_by_arn(kinesis, new_stream):
    name = new_stream(1, Tags={"team": "vision"})
    arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    kinesis.add_tags_to_stream(StreamName=name, Tags={"env": "test", "b": "2"})
    listed = kinesis.list_tags_for_stream(StreamName=name)
    assert listed["Tags"] == [{"Key": "b", "Value": "2"}, {"Key": "env", "Value": "test"},
                              {"Key": "team", "Value": "vision"}]  # fmt: skip
    assert listed["HasMoreTags"] is False
    page = kinesis.list_tags_for_stream(StreamName=name, Limit=1, ExclusiveStartTagKey="b")
    assert page["Tags"] == [{"Key": "env", "Value": "test"}] and page["HasMoreTags"] is True
    kinesis.remove_tags_from_stream(StreamName=name, TagKeys=["b"])
    kinesis.tag_resource(ResourceARN=arn, Tags={"owner": "me"})
    kinesis.untag_resource(ResourceARN=arn, TagKeys=["env"])
    assert kinesis.list_tags_for_resource(ResourceARN=arn)["Tags"] == [
        {"Key": "owner", "Value": "me"}, {"Key": "team", "Value": "vision"}
    ]  # fmt: skip
    with pytest.raises(ClientError) as too_many:
        kinesis.add_tags_to_stream(StreamName=name, Tags={f"k{i}": "v" for i in range(49)})
    assert code(too_many) == "LimitExceededException"
    assert len(kinesis.list_tags_for_resource(ResourceARN=arn)["Tags"]) == 2
    with pytest.raises(ClientError) as missing:
        kinesis.list_tags_for_resource(
            ResourceARN=f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{unique('no')}"
        )
    assert code(missing) == "ResourceNotFoundException"


def test_unknown_streams_and_unimplemented_operations(kinesis):
    absent = unique("no")
    for call in (
        lambda: kinesis.describe_stream(StreamName=absent),
        lambda: kinesis.put_record(StreamName=absent, Data=b"x", PartitionKey="k"),
        lambda: kinesis.delete_stream(StreamName=absent),
        lambda: kinesis.describe_stream_summary(
            StreamARN=f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{absent}"
        ),
    ):
        with pytest.raises(ClientError) as missing:
            call()
        assert code(missing) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as nothing:
        kinesis.describe_stream_summary()
    assert code(nothing) == "InvalidArgumentException"
    with pytest.raises(ClientError) as resharding:
        kinesis.update_shard_count(StreamName=absent, TargetShardCount=2, ScalingType="UNIFORM_SCALING")
    assert resharding.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501


def test_deleting_stream_refuses_writes_until_gone(kinesis, new_stream):
    name = new_stream(1)
    kinesis.put_record(StreamName=name, Data=b"x", PartitionKey="k")
    kinesis.delete_stream(StreamName=name)
    with pytest.raises(ClientError) as refused:
        kinesis.put_record(StreamName=name, Data=b"y", PartitionKey="k")
    assert code(refused) == "ResourceNotFoundException"

    def gone() -> bool:
        try:
            kinesis.describe_stream_summary(StreamName=name)
        except ClientError as exc:
            return exc.response["Error"]["Code"] == "ResourceNotFoundException"
        return False

    wait_until(gone, timeout=10, what="the deleted stream to disappear")


def test_aws_cli(server, new_stream):
    aws = shutil.which("aws") or str(Path(sys.executable).parent / "aws")
    env = {
        **os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }  # fmt: skip

    def cli(*args: str) -> dict:  # type: ignore[type-arg]
        done = subprocess.run(
            [aws, "--endpoint-url", server.url, "--output", "json", "kinesis", *args],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else {}

    name = unique("cli")
    cli("create-stream", "--stream-name", name, "--shard-count", "1")
    put = cli("put-record", "--stream-name", name, "--partition-key", "k", "--data", "hello")
    assert put["ShardId"] == "shardId-000000000000"
    iterator = cli("get-shard-iterator", "--stream-name", name, "--shard-id", put["ShardId"],
                   "--shard-iterator-type", "TRIM_HORIZON")["ShardIterator"]  # fmt: skip
    records = cli("get-records", "--shard-iterator", iterator)["Records"]
    assert [r["Data"] for r in records] == ["aGVsbG8="]  # base64 of "hello", as the CLI prints blobs
    assert name in cli("list-streams")["StreamNames"]
