"""Kinesis Video Streams' control plane over rest-json, with boto3's kinesisvideo client and the AWS CLI:
streams, versions, retention, data endpoints and tags; bad input gets AWS's codes and changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from tests.conftest import REGION, signed_post, unique

pytestmark = pytest.mark.storage
ARN = re.compile(rf"arn:aws:kinesisvideo:{REGION}:000000000000:stream/([a-zA-Z0-9_.-]+)/([0-9]+)")


def error(call, **params) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as excinfo:
        call(**params)
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_create_describe_list_and_delete_a_stream(kvs):
    name = unique("cam")
    arn = kvs.create_stream(StreamName=name, DeviceName="porch", MediaType="video/h264",
                            DataRetentionInHours=24, Tags={"site": "home"})["StreamARN"]  # fmt: skip
    match = ARN.fullmatch(arn)
    assert match and match.group(1) == name
    info = kvs.describe_stream(StreamName=name)["StreamInfo"]
    assert info["StreamARN"] == arn and info["Status"] == "ACTIVE" and info["DataRetentionInHours"] == 24
    assert (info["DeviceName"], info["MediaType"]) == ("porch", "video/h264")
    # The ARN ends with the creation time in milliseconds, as AWS's do.
    assert abs(int(match.group(2)) - info["CreationTime"].timestamp() * 1000) < 2
    assert kvs.describe_stream(StreamARN=arn)["StreamInfo"] == info
    assert kvs.list_tags_for_stream(StreamARN=arn)["Tags"] == {"site": "home"}

    assert error(kvs.create_stream, StreamName=name) == (400, "ResourceInUseException")
    kvs.delete_stream(StreamARN=arn, CurrentVersion=info["Version"])
    assert error(kvs.describe_stream, StreamName=name) == (404, "ResourceNotFoundException")
    assert error(kvs.delete_stream, StreamARN=arn) == (404, "ResourceNotFoundException")
    # A stream created again under the name is another stream: another ARN, no old tags.
    again = kvs.create_stream(StreamName=name)["StreamARN"]
    assert kvs.list_tags_for_stream(StreamARN=again)["Tags"] == {}
    assert kvs.describe_stream(StreamName=name)["StreamInfo"]["DataRetentionInHours"] == 0  # AWS's default


def test_updates_need_the_current_version(kvs):
    name = unique("cam")
    kvs.create_stream(StreamName=name, DataRetentionInHours=2)
    first = kvs.describe_stream(StreamName=name)["StreamInfo"]["Version"]
    kvs.update_stream(StreamName=name, CurrentVersion=first, DeviceName="door", MediaType="video/h265")
    info = kvs.describe_stream(StreamName=name)["StreamInfo"]
    assert (info["DeviceName"], info["MediaType"]) == ("door", "video/h265") and info["Version"] != first
    stale = {"StreamName": name, "CurrentVersion": first}
    assert error(kvs.update_stream, **stale, DeviceName="x") == (400, "VersionMismatchException")
    assert error(kvs.delete_stream, StreamARN=info["StreamARN"], CurrentVersion=first)[1] == (
        "VersionMismatchException"
    )

    current = {"StreamName": name, "CurrentVersion": info["Version"]}
    kvs.update_data_retention(**current, Operation="INCREASE_DATA_RETENTION", DataRetentionChangeInHours=10)
    info = kvs.describe_stream(StreamName=name)["StreamInfo"]
    assert info["DataRetentionInHours"] == 12
    below_zero = {"StreamName": name, "CurrentVersion": info["Version"],
                  "Operation": "DECREASE_DATA_RETENTION", "DataRetentionChangeInHours": 13}  # fmt: skip
    assert error(kvs.update_data_retention, **below_zero) == (400, "InvalidArgumentException")
    assert kvs.describe_stream(StreamName=name)["StreamInfo"] == info  # refused: nothing changed
    assert error(kvs.update_stream, StreamName=unique("nope"), CurrentVersion="abc") == (
        404, "ResourceNotFoundException"
    )  # fmt: skip


def test_list_streams_pages_by_name_with_a_prefix(kvs):
    prefix = unique("list")
    names = [f"{prefix}-{i}" for i in range(5)]
    for name in reversed(names):
        kvs.create_stream(StreamName=name)
    condition = {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": prefix}
    pages = kvs.get_paginator("list_streams").paginate(StreamNameCondition=condition, PaginationConfig={
        "PageSize": 2})  # fmt: skip
    listed = [s["StreamName"] for page in pages for s in page["StreamInfoList"]]
    assert listed == names
    assert error(kvs.list_streams, NextToken="bm90LWEtdG9rZW4=")[1] == "InvalidArgumentException"


def test_data_endpoint_is_this_server_for_every_api(server, kvs):
    name = unique("cam")
    kvs.create_stream(StreamName=name)
    for api in ("PUT_MEDIA", "GET_MEDIA", "LIST_FRAGMENTS", "GET_MEDIA_FOR_FRAGMENT_LIST", "GET_CLIP",
                "GET_IMAGES", "GET_HLS_STREAMING_SESSION_URL", "GET_DASH_STREAMING_SESSION_URL"):  # fmt: skip
        # The server the client reached (on PostgreSQL, clients go to the deployment's servers in turn).
        assert kvs.get_data_endpoint(StreamName=name, APIName=api)["DataEndpoint"] == kvs.meta.endpoint_url
    assert error(kvs.get_data_endpoint, StreamName=unique("nope"), APIName="GET_MEDIA")[1] == (
        "ResourceNotFoundException"
    )


def test_tags_by_stream_and_by_resource(kvs):
    arn = kvs.create_stream(StreamName=unique("cam"))["StreamARN"]
    kvs.tag_stream(StreamARN=arn, Tags={"a": "1", "b": "2"})
    kvs.untag_stream(StreamARN=arn, TagKeyList=["a"])
    kvs.tag_resource(ResourceARN=arn, Tags=[{"Key": "c", "Value": "3"}])
    assert kvs.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"b": "2", "c": "3"}
    kvs.untag_resource(ResourceARN=arn, TagKeyList=["b"])
    assert kvs.list_tags_for_stream(StreamARN=arn)["Tags"] == {"c": "3"}
    too_many = {f"k{i}": "v" for i in range(50)}
    assert error(kvs.tag_stream, StreamARN=arn, Tags=too_many)[1] == "TagsPerResourceExceededLimitException"
    assert kvs.list_tags_for_stream(StreamARN=arn)["Tags"] == {"c": "3"}
    gone = arn.rsplit("/", 1)[0] + "/1"  # same name, another creation time: not this stream
    assert error(kvs.list_tags_for_resource, ResourceARN=gone) == (404, "ResourceNotFoundException")


def test_bad_input_gets_aws_codes_and_changes_nothing(server, kvs):
    assert error(kvs.create_stream, StreamName="bad name!") == (400, "InvalidArgumentException")
    assert error(kvs.describe_stream) == (400, "InvalidArgumentException")  # neither name nor ARN
    name = unique("cam")
    assert error(kvs.create_stream, StreamName=name, DataRetentionInHours=87_601)[1] == (
        "InvalidArgumentException"
    )
    assert error(kvs.describe_stream, StreamName=name)[1] == "ResourceNotFoundException"
    # The raw wire: rest-json errors carry the code in x-amzn-ErrorType and a JSON body.
    response = signed_post(
        server.url,
        service="kinesisvideo",
        path="/describeStream",
        body={"StreamName": unique("nope")},
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 404
    assert response.headers["x-amzn-ErrorType"].split(":")[0] == "ResourceNotFoundException"
    assert response.headers["Content-Type"] == "application/json"
    assert "Message" in response.json()


def test_the_aws_cli_speaks_to_it(server):
    name = unique("cli")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": REGION}  # fmt: skip
    cli = [sys.executable, "-m", "awscli", "kinesisvideo", "--endpoint-url", server.url, "--output", "json"]
    created = subprocess.run([*cli, "create-stream", "--stream-name", name], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert created.returncode == 0, created.stderr
    described = subprocess.run([*cli, "describe-stream", "--stream-name", name], env=env,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    assert json.loads(described.stdout)["StreamInfo"]["StreamARN"] == json.loads(created.stdout)["StreamARN"]
