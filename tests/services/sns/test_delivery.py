"""SNS delivery to a real HTTP endpoint: AWS's documents and headers, signatures (SignatureVersion 1 and 2),
raw delivery, per-protocol messages, Publish's limits, retries per the delivery policy, and a pending message
that survives kill -9."""

from __future__ import annotations

import base64
import json
import os
import signal

import pytest
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature

from tests.conftest import REGION, start_server, stop_server, unique, wait_until
from tests.services.sns.conftest import confirmed
from tests.services.sns.subscriber import Dropper, Received, Subscriber, message_of, verify_signature

pytestmark = pytest.mark.storage


def code(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    error = caught.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]


def quick_retries(**retry: object) -> str:
    """A subscription DeliveryPolicy that keeps a test's retries short."""
    return json.dumps({"healthyRetryPolicy": {"minDelayTarget": 1, "maxDelayTarget": 1, **retry}})


@pytest.mark.parametrize("version", ["1", "2"])
def test_notification_document_headers_and_signature(sns, topic, subscriber, version):
    sns.set_topic_attributes(TopicArn=topic, AttributeName="SignatureVersion", AttributeValue=version)
    arn = confirmed(sns, topic, subscriber)
    text = f'hello {unique()} \u2603 "quoted" <&>\nsecond line'
    message_id = sns.publish(
        TopicArn=topic, Message=text, Subject="Greetings",
        MessageAttributes={
            "s": {"DataType": "String", "StringValue": "v"},
            "n": {"DataType": "Number", "StringValue": "12.5"},
            "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01bin"},
            "arr": {"DataType": "String.Array", "StringValue": '["a","b"]'},
        },
    )["MessageId"]  # fmt: skip
    received = subscriber.wait_message(text)[0]
    headers = received.headers
    assert headers["x-amz-sns-message-type"] == "Notification"
    assert headers["x-amz-sns-message-id"] == message_id
    assert headers["x-amz-sns-topic-arn"] == topic and headers["x-amz-sns-subscription-arn"] == arn
    assert headers["content-type"] == "text/plain; charset=UTF-8"
    assert headers["user-agent"] == "Amazon Simple Notification Service Agent"
    assert "x-amz-sns-rawdelivery" not in headers
    doc = received.doc
    assert list(doc) == ["Type", "MessageId", "TopicArn", "Subject", "Message", "Timestamp",
                         "SignatureVersion", "Signature", "SigningCertURL", "UnsubscribeURL",
                         "MessageAttributes"]  # fmt: skip
    assert (doc["Type"], doc["MessageId"], doc["TopicArn"]) == ("Notification", message_id, topic)
    assert (doc["Subject"], doc["Message"], doc["SignatureVersion"]) == ("Greetings", text, version)
    assert doc["MessageAttributes"] == {
        "s": {"Type": "String", "Value": "v"},
        "n": {"Type": "Number", "Value": "12.5"},
        "b": {"Type": "Binary", "Value": base64.b64encode(b"\x00\x01bin").decode()},
        "arr": {"Type": "String.Array", "Value": '["a","b"]'},
    }
    assert doc["UnsubscribeURL"].startswith(sns.meta.endpoint_url + "/?Action=Unsubscribe&SubscriptionArn=")
    verify_signature(doc)
    forged = {**doc, "Message": doc["Message"] + "!"}
    with pytest.raises(InvalidSignature):
        verify_signature(forged)


def test_without_subject_or_attributes(sns, topic, subscriber):
    confirmed(sns, topic, subscriber)
    sns.publish(TopicArn=topic, Message="plain")
    doc = subscriber.wait_message("plain")[0].doc
    assert "Subject" not in doc and "MessageAttributes" not in doc
    verify_signature(doc)


def test_raw_message_delivery(sns, topic, subscriber):
    confirmed(sns, topic, subscriber, RawMessageDelivery="true")
    text = '{"looks": "like json", "but": "is the message"}'
    attributes = {"a": {"DataType": "String", "StringValue": "v"}}
    message_id = sns.publish(TopicArn=topic, Message=text, Subject="s", MessageAttributes=attributes)[
        "MessageId"
    ]
    received = subscriber.wait_message(text)[0]
    assert received.body == text.encode()
    assert received.headers["x-amz-sns-rawdelivery"] == "true"
    assert received.headers["x-amz-sns-message-id"] == message_id
    assert received.headers["x-amz-sns-message-type"] == "Notification"


def test_message_structure_json_and_content_type(sns, topic, subscriber):
    policy = json.dumps({"requestPolicy": {"headerContentType": "application/json"}})
    confirmed(sns, topic, subscriber, DeliveryPolicy=policy)
    texts = {"default": "for everyone", "http": "for http", "email": "for email"}
    sns.publish(TopicArn=topic, Message=json.dumps(texts), MessageStructure="json")
    received = subscriber.wait_message("for http")[0]
    assert received.headers["content-type"] == "application/json"
    https_only = {"default": "the default", "https": "for https"}
    sns.publish(TopicArn=topic, Message=json.dumps(https_only), MessageStructure="json")
    subscriber.wait_message("the default")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"Message": ""}, "InvalidParameter"),
        ({"Message": "x" * (256 * 1024 + 1)}, "InvalidParameter"),
        ({"Message": "x", "Subject": "s" * 100}, "InvalidParameter"),
        ({"Message": "x", "Subject": "two\nlines"}, "InvalidParameter"),
        ({"Message": "x", "Subject": ""}, "InvalidParameter"),
        ({"Message": "not json", "MessageStructure": "json"}, "InvalidParameter"),
        ({"Message": '{"http": "no default"}', "MessageStructure": "json"}, "InvalidParameter"),
        ({"Message": "x", "MessageStructure": "xml"}, "InvalidParameter"),
        ({"Message": "x", "MessageDeduplicationId": "d"}, "InvalidParameter"),
        ({"Message": "x", "MessageAttributes": {"bad name": {"DataType": "String", "StringValue": "v"}}},
         "ParameterValueInvalid"),
        ({"Message": "x", "MessageAttributes": {"AWS.reserved": {"DataType": "String", "StringValue": "v"}}},
         "ParameterValueInvalid"),
        ({"Message": "x", "MessageAttributes": {"a": {"DataType": "Text", "StringValue": "v"}}},
         "ParameterValueInvalid"),
        ({"Message": "x", "MessageAttributes": {"a": {"DataType": "String", "StringValue": ""}}},
         "ParameterValueInvalid"),
        ({"Message": "x", "MessageAttributes": {"a": {"DataType": "Number", "StringValue": "twelve"}}},
         "ParameterValueInvalid"),
        ({"Message": "x", "MessageAttributes": {"a": {"DataType": "Binary", "StringValue": "v"}}},
         "ParameterValueInvalid"),
        ({"Message": "x" * (256 * 1024 - 10),
          "MessageAttributes": {"attr": {"DataType": "String", "StringValue": "v" * 10}}},
         "InvalidParameter"),
    ],
)  # fmt: skip
def test_publish_refuses_what_aws_refuses_and_delivers_nothing(sns, topic, subscriber, params, expected):
    confirmed(sns, topic, subscriber)
    with pytest.raises(ClientError) as caught:
        sns.publish(TopicArn=topic, **params)
    assert code(caught) == (expected, 400)
    sns.publish(TopicArn=topic, Message="the valid one")
    subscriber.wait_message("the valid one")
    assert [message_of(r) for r in subscriber.of_type("Notification")] == ["the valid one"]


def test_publish_targets(sns, topic, subscriber):
    confirmed(sns, topic, subscriber)
    sns.publish(TargetArn=topic, Message="by target arn")
    subscriber.wait_message("by target arn")
    sns.publish(TopicArn=topic, Message="x" * (256 * 1024))  # exactly the limit is accepted
    subscriber.wait_message("x" * (256 * 1024))
    with pytest.raises(ClientError) as caught:
        sns.publish(TopicArn=f"arn:aws:sns:{REGION}:000000000000:{unique('gone')}", Message="x")
    assert code(caught) == ("NotFound", 404)
    with pytest.raises(ClientError) as caught:
        sns.publish(PhoneNumber="+15555550100", Message="x")
    assert code(caught) == ("InvalidParameter", 400)
    with pytest.raises(ClientError) as caught:
        sns.publish(Message="x")
    assert code(caught) == ("InvalidParameter", 400)
    assert (
        len(
            sns.publish(TopicArn=sns.create_topic(Name=unique("t"))["TopicArn"], Message="no one")[
                "MessageId"
            ]
        )
        == 36
    )


def test_retries_after_server_errors_reuse_the_message_id(sns, topic, subscriber):
    answers = iter([500, 503])
    subscriber.answer = lambda got: next(answers, 200) if got.type == "Notification" else 200
    confirmed(sns, topic, subscriber, DeliveryPolicy=quick_retries(numRetries=3, numNoDelayRetries=1))
    message_id = sns.publish(TopicArn=topic, Message="eventually")["MessageId"]
    attempts = wait_until(lambda: len(got := subscriber.wait_message("eventually")) >= 3 and got, 20,
                          what="three attempts")  # fmt: skip
    assert {a.doc["MessageId"] for a in attempts} == {message_id}
    for attempt in attempts:
        verify_signature(attempt.doc)


def test_retries_stop_after_num_retries_and_4xx_is_final(sns, topic, subscriber):
    def answer(got: Received) -> int:
        if got.type != "Notification":
            return 200
        return {"fail": 500, "reject": 404, "moved": 302}.get(got.doc["Message"], 200)

    subscriber.answer = answer
    confirmed(sns, topic, subscriber, DeliveryPolicy=quick_retries(numRetries=2, numNoDelayRetries=2))
    sns.publish(TopicArn=topic, Message="fail")
    wait_until(lambda: len(subscriber.wait_message("fail")) >= 3, what="three attempts")
    sns.publish(TopicArn=topic, Message="reject")
    subscriber.wait_message("reject")
    sns.publish(TopicArn=topic, Message="moved")
    subscriber.wait_message("moved")
    sns.publish(TopicArn=topic, Message="ok")
    subscriber.wait_message("ok")
    # Immediate retries would have come before the next message: none did.
    messages = [message_of(r) for r in subscriber.of_type("Notification")]
    assert messages == ["fail", "fail", "fail", "reject", "moved", "ok"]


def test_an_endpoint_that_is_down_gets_the_message_when_it_is_back(sns, topic, subscriber):
    confirmed(sns, topic, subscriber, DeliveryPolicy=quick_retries(numRetries=20))
    port = subscriber.port
    subscriber.stop()
    down = Dropper(port)
    try:
        message_id = sns.publish(TopicArn=topic, Message="while you were down")["MessageId"]
        wait_until(lambda: down.connections >= 2, what="two failed attempts")
    finally:
        down.stop()
    back = Subscriber(port)
    try:
        got = back.wait_message("while you were down")[0]
        assert got.doc["MessageId"] == message_id
        verify_signature(got.doc)
    finally:
        back.stop()


def test_a_pending_delivery_survives_kill_9(make_server, subscriber):
    first = make_server()
    sns = first.client("sns")
    topic = sns.create_topic(Name=unique("t"))["TopicArn"]
    failing = {"on": True}
    subscriber.answer = lambda got: 500 if failing["on"] and got.type == "Notification" else 200
    confirmed(
        sns,
        topic,
        subscriber,
        DeliveryPolicy=quick_retries(minDelayTarget=2, maxDelayTarget=2, numRetries=10),
    )
    message_id = sns.publish(TopicArn=topic, Message="survivor")["MessageId"]
    subscriber.wait_message("survivor")  # the first attempt failed: the message waits for its retry
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    failing["on"] = False
    port = first.url.rsplit(":", 1)[1]
    # The same address (the message's URLs name it) and the same data.
    again = start_server(first.data_dir.parent, first.database_url, "--port", port)
    try:
        delivered = wait_until(lambda: len(got := subscriber.wait_message("survivor")) >= 2 and got, 60,
                               what="the retry after the restart")  # fmt: skip
        assert {d.doc["MessageId"] for d in delivered} == {message_id}
        verify_signature(delivered[-1].doc)
    finally:
        stop_server(again)
