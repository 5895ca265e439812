"""SNS topics over the wire: CreateTopic (idempotent), attributes, listing, deletion, tags, AWS's errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from tests.conftest import REGION, unique

pytestmark = pytest.mark.storage
ACCOUNT = "000000000000"


def code(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    error = caught.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]


def test_create_topic_is_idempotent_for_the_same_name_and_attributes(sns):
    name = unique("t")
    arn = sns.create_topic(
        Name=name, Attributes={"DisplayName": "Alerts"}, Tags=[{"Key": "team", "Value": "a"}]
    )["TopicArn"]
    assert arn == f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}"
    assert sns.create_topic(Name=name)["TopicArn"] == arn
    assert sns.create_topic(Name=name, Attributes={"DisplayName": "Alerts"})["TopicArn"] == arn
    assert sns.create_topic(Name=name, Tags=[{"Key": "team", "Value": "a"}])["TopicArn"] == arn
    with pytest.raises(ClientError) as caught:
        sns.create_topic(Name=name, Attributes={"DisplayName": "Other"})
    assert code(caught) == ("InvalidParameter", 400)
    assert "different attributes" in caught.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as caught:
        sns.create_topic(Name=name, Tags=[{"Key": "team", "Value": "b"}])
    assert code(caught) == ("InvalidParameter", 400)
    assert sns.get_topic_attributes(TopicArn=arn)["Attributes"]["DisplayName"] == "Alerts"
    assert sns.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "a"}]


def test_topic_attributes(sns):
    arn = sns.create_topic(Name=unique("t"))["TopicArn"]
    shown = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    assert shown["TopicArn"] == arn and shown["Owner"] == ACCOUNT and shown["DisplayName"] == ""
    counts = [shown[f"Subscriptions{state}"] for state in ("Confirmed", "Pending", "Deleted")]
    assert counts == ["0", "0", "0"]
    assert shown["SignatureVersion"] == "1" and "DeliveryPolicy" not in shown
    assert json.loads(shown["Policy"])["Statement"][0]["Resource"] == arn
    effective = json.loads(shown["EffectiveDeliveryPolicy"])["http"]
    assert effective["defaultHealthyRetryPolicy"] == {
        "minDelayTarget": 20, "maxDelayTarget": 20, "numRetries": 3, "numMaxDelayRetries": 0,
        "numNoDelayRetries": 0, "numMinDelayRetries": 0, "backoffFunction": "linear",
    }  # fmt: skip
    assert effective["defaultRequestPolicy"] == {"headerContentType": "text/plain; charset=UTF-8"}

    policy = {
        "http": {"defaultHealthyRetryPolicy": {"minDelayTarget": 5, "maxDelayTarget": 10, "numRetries": 4}}
    }
    sns.set_topic_attributes(TopicArn=arn, AttributeName="DeliveryPolicy", AttributeValue=json.dumps(policy))
    sns.set_topic_attributes(TopicArn=arn, AttributeName="DisplayName", AttributeValue="Ops <&> team")
    sns.set_topic_attributes(TopicArn=arn, AttributeName="SignatureVersion", AttributeValue="2")
    shown = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    assert json.loads(shown["DeliveryPolicy"]) == policy
    assert shown["DisplayName"] == "Ops <&> team" and shown["SignatureVersion"] == "2"
    retry = json.loads(shown["EffectiveDeliveryPolicy"])["http"]["defaultHealthyRetryPolicy"]
    assert (retry["minDelayTarget"], retry["maxDelayTarget"], retry["numRetries"]) == (5, 10, 4)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SignatureVersion", "3"),
        ("DisplayName", "x" * 101),
        ("DeliveryPolicy", "{not json"),
        ("DeliveryPolicy", json.dumps({"http": {"defaultHealthyRetryPolicy": {"minDelayTarget": 0}}})),
        ("DeliveryPolicy", json.dumps({"http": {"defaultHealthyRetryPolicy": {"backoffFunction": "cubic"}}})),
        ("DeliveryPolicy", json.dumps({"http": {"defaultHealthyRetryPolicy": {"numRetries": 101}}})),
        (
            "DeliveryPolicy",
            json.dumps(
                {
                    "http": {
                        "defaultHealthyRetryPolicy": {
                            "minDelayTarget": 3600,
                            "maxDelayTarget": 3600,
                            "numRetries": 2,
                        }
                    }
                }
            ),
        ),  # fmt: skip
        ("Policy", "[]"),
        ("NoSuchAttribute", "x"),
        ("FifoTopic", "true"),
    ],
)
def test_bad_topic_attributes_change_nothing(sns, name, value):
    arn = sns.create_topic(Name=unique("t"))["TopicArn"]
    before = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
    with pytest.raises(ClientError) as caught:
        sns.set_topic_attributes(TopicArn=arn, AttributeName=name, AttributeValue=value)
    assert code(caught) == ("InvalidParameter", 400)
    assert sns.get_topic_attributes(TopicArn=arn)["Attributes"] == before
    with pytest.raises(ClientError) as caught:
        sns.create_topic(Name=unique("t"), Attributes={name: value})
    assert code(caught) == ("InvalidParameter", 400)


def test_bad_names_and_arns(sns, server):
    regional = server.client("sns", region_name="eu-test-9")
    for name in ("", "has space", "x" * 257, "dots.not.allowed", "fifo.fifo"):
        with pytest.raises(ClientError) as caught:
            regional.create_topic(Name=name)
        assert code(caught) == ("InvalidParameter", 400), name
    assert regional.list_topics()["Topics"] == []
    missing = f"arn:aws:sns:{REGION}:{ACCOUNT}:{unique('gone')}"
    with pytest.raises(ClientError) as caught:
        sns.get_topic_attributes(TopicArn=missing)
    assert code(caught) == ("NotFound", 404)
    assert caught.value.response["Error"]["Message"] == "Topic does not exist"
    with pytest.raises(sns.exceptions.NotFoundException):
        sns.set_topic_attributes(TopicArn=missing, AttributeName="DisplayName", AttributeValue="x")
    with pytest.raises(ClientError) as caught:
        sns.get_topic_attributes(TopicArn="not-an-arn")
    assert code(caught) == ("InvalidParameter", 400)
    with pytest.raises(ClientError) as caught:
        sns.get_topic_attributes(TopicArn=f"arn:aws:sns:{REGION}:123456789012:{unique('t')}")
    assert code(caught) == ("AuthorizationError", 403)


def test_list_topics_pages_by_100_per_region(server):
    region = f"eu-{unique('r')}"
    regional = server.client("sns", region_name=region)
    names = sorted(unique("p") for _ in range(101))
    for name in names:
        regional.create_topic(Name=name)
    first = regional.list_topics()
    assert len(first["Topics"]) == 100 and "NextToken" in first
    second = regional.list_topics(NextToken=first["NextToken"])
    assert "NextToken" not in second
    listed = [t["TopicArn"] for t in first["Topics"] + second["Topics"]]
    assert listed == [f"arn:aws:sns:{region}:{ACCOUNT}:{name}" for name in names]
    assert [t["TopicArn"] for t in regional.get_paginator("list_topics").paginate().build_full_result()[
        "Topics"
    ]] == listed  # fmt: skip
    with pytest.raises(ClientError) as caught:
        regional.list_topics(NextToken="forged")
    assert code(caught) == ("InvalidParameter", 400)
    with pytest.raises(ClientError) as caught:  # a token is bound to its region (and account, operation)
        server.client("sns").list_topics(NextToken=first["NextToken"])
    assert code(caught) == ("InvalidParameter", 400)


def test_delete_topic(sns, subscriber):
    from tests.services.sns.conftest import confirmed

    arn = sns.create_topic(Name=unique("t"), Tags=[{"Key": "k", "Value": "v"}])["TopicArn"]
    confirmed(sns, arn, subscriber)
    sns.delete_topic(TopicArn=arn)
    sns.delete_topic(TopicArn=arn)  # deleting a topic that does not exist is no error (AWS: idempotent)
    assert arn not in [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    with pytest.raises(sns.exceptions.NotFoundException):
        sns.get_topic_attributes(TopicArn=arn)
    assert not [s for s in sns.list_subscriptions()["Subscriptions"] if s["TopicArn"] == arn]
    again = sns.create_topic(Name=arn.rsplit(":", 1)[1])["TopicArn"]  # the same ARN, a new topic
    assert again == arn
    assert sns.list_tags_for_resource(ResourceArn=arn)["Tags"] == []
    assert sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"] == []


def test_tags(sns, topic):
    sns.tag_resource(ResourceArn=topic, Tags=[{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "1"}])
    sns.tag_resource(ResourceArn=topic, Tags=[{"Key": "a", "Value": "one"}])
    assert sns.list_tags_for_resource(ResourceArn=topic)["Tags"] == [
        {"Key": "a", "Value": "one"}, {"Key": "b", "Value": "2"}
    ]  # fmt: skip
    sns.untag_resource(ResourceArn=topic, TagKeys=["b", "missing"])
    assert sns.list_tags_for_resource(ResourceArn=topic)["Tags"] == [{"Key": "a", "Value": "one"}]
    with pytest.raises(ClientError) as caught:
        sns.tag_resource(ResourceArn=topic, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    assert code(caught) == ("TagLimitExceeded", 400)
    assert len(sns.list_tags_for_resource(ResourceArn=topic)["Tags"]) == 1
    with pytest.raises(ClientError) as caught:
        sns.tag_resource(ResourceArn=topic, Tags=[{"Key": "aws:reserved", "Value": "v"}])
    assert code(caught) == ("InvalidParameter", 400)
    with pytest.raises(ClientError) as caught:
        sns.tag_resource(
            ResourceArn=topic, Tags=[{"Key": "k" * 129, "Value": "v"}]
        )  # the model's length rule
    assert code(caught)[1] == 400
    missing = f"arn:aws:sns:{REGION}:{ACCOUNT}:{unique('gone')}"
    for call in (
        lambda: sns.list_tags_for_resource(ResourceArn=missing),
        lambda: sns.tag_resource(ResourceArn=missing, Tags=[{"Key": "a", "Value": "b"}]),
        lambda: sns.untag_resource(ResourceArn=missing, TagKeys=["a"]),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert code(caught) == ("ResourceNotFound", 404)


def test_unimplemented_operations_answer_501(sns, topic):
    with pytest.raises(ClientError) as caught:
        sns.add_permission(TopicArn=topic, Label="l", AWSAccountId=["111122223333"], ActionName=["Publish"])
    assert code(caught) == ("NotImplementedException", 501)


@pytest.mark.skipif(shutil.which("aws", path=os.path.dirname(sys.executable)) is None, reason="no AWS CLI")
def test_aws_cli(server, tmp_path):
    aws = shutil.which("aws", path=os.path.dirname(sys.executable))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(tmp_path / "none")}  # fmt: skip

    def cli(*args: str) -> dict:
        done = subprocess.run([aws, "sns", *args, "--endpoint-url", server.url, "--output", "json"],  # type: ignore[list-item]
                              capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if done.stdout.strip() else {}

    name = unique("cli")
    arn = cli("create-topic", "--name", name, "--attributes", "DisplayName=From the CLI")["TopicArn"]
    assert arn.endswith(f":{name}")
    assert cli("get-topic-attributes", "--topic-arn", arn)["Attributes"]["DisplayName"] == "From the CLI"
    assert {"TopicArn": arn} in cli("list-topics")["Topics"]
    assert len(cli("publish", "--topic-arn", arn, "--message", "hello")["MessageId"]) == 36
    cli("delete-topic", "--topic-arn", arn)
