"""SNS HTTP/HTTPS subscriptions: the confirmation handshake (SubscribeURL and ConfirmSubscription),
listings with pending subscriptions, attributes, Unsubscribe with its UnsubscribeConfirmation."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
import requests
from botocore.exceptions import ClientError

from tests.conftest import REGION, unique
from tests.services.sns.conftest import confirmed
from tests.services.sns.subscriber import Subscriber, verify_signature

pytestmark = pytest.mark.storage
NS = {"n": "http://sns.amazonaws.com/doc/2010-03-31/"}


def code(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    error = caught.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]


def counts(sns, topic: str) -> list[str]:  # type: ignore[no-untyped-def]
    shown = sns.get_topic_attributes(TopicArn=topic)["Attributes"]
    return [shown[f"Subscriptions{state}"] for state in ("Confirmed", "Pending", "Deleted")]


def test_subscription_confirmation_then_subscribe_url(sns, topic, subscriber):
    answer = sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=subscriber.url)
    assert answer["SubscriptionArn"] == "pending confirmation"
    received = subscriber.wait_for("SubscriptionConfirmation")[0]
    assert received.path == "/sns"
    assert received.headers["content-type"] == "text/plain; charset=UTF-8"
    assert received.headers["user-agent"] == "Amazon Simple Notification Service Agent"
    assert received.headers["x-amz-sns-topic-arn"] == topic
    assert "x-amz-sns-subscription-arn" not in received.headers  # as in AWS's example
    doc = received.doc
    assert list(doc) == ["Type", "MessageId", "Token", "TopicArn", "Message", "SubscribeURL", "Timestamp",
                         "SignatureVersion", "Signature", "SigningCertURL"]  # fmt: skip
    assert doc["Type"] == "SubscriptionConfirmation" and doc["TopicArn"] == topic
    assert received.headers["x-amz-sns-message-id"] == doc["MessageId"]
    assert doc["Message"] == (
        f"You have chosen to subscribe to the topic {topic}.\n"
        "To confirm the subscription, visit the SubscribeURL included in this message."
    )
    assert doc["SubscribeURL"].startswith(sns.meta.endpoint_url + "/?Action=ConfirmSubscription&TopicArn=")
    assert doc["Timestamp"].endswith("Z") and len(doc["Timestamp"]) == 24
    verify_signature(doc)

    listed = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert listed == [{"SubscriptionArn": "PendingConfirmation", "Owner": "000000000000", "Protocol": "http",
                       "Endpoint": subscriber.url, "TopicArn": topic}]  # fmt: skip
    assert counts(sns, topic) == ["0", "1", "0"]

    page = requests.get(doc["SubscribeURL"], timeout=10)  # what a subscriber does: a plain, unsigned GET
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/xml"
    arn = ET.fromstring(page.content).findtext("n:ConfirmSubscriptionResult/n:SubscriptionArn", namespaces=NS)
    assert arn is not None and arn.startswith(topic + ":")
    assert requests.get(doc["SubscribeURL"], timeout=10).status_code == 200  # confirming again is harmless
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"][0]["SubscriptionArn"] == arn
    assert counts(sns, topic) == ["1", "0", "0"]
    shown = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
    assert shown["PendingConfirmation"] == "false" and shown["ConfirmationWasAuthenticated"] == "false"
    assert shown["TopicArn"] == topic and shown["Endpoint"] == subscriber.url and shown["Protocol"] == "http"
    assert shown["RawMessageDelivery"] == "false"
    retry = json.loads(shown["EffectiveDeliveryPolicy"])["healthyRetryPolicy"]
    assert (retry["numRetries"], retry["minDelayTarget"]) == (3, 20)
    # Subscribing a confirmed endpoint again answers its ARN and sends nothing new.
    assert sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=subscriber.url)["SubscriptionArn"] == arn


def test_signed_confirm_subscription_and_authenticated_unsubscribe(sns, topic, subscriber):
    answer = sns.subscribe(
        TopicArn=topic, Protocol="http", Endpoint=subscriber.url, ReturnSubscriptionArn=True
    )
    arn = answer["SubscriptionArn"]
    assert arn.startswith(topic + ":")
    shown = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
    assert shown["PendingConfirmation"] == "true"
    token = subscriber.wait_for("SubscriptionConfirmation")[0].doc["Token"]
    with pytest.raises(ClientError) as caught:
        sns.confirm_subscription(TopicArn=topic, Token="0" * 128)
    assert code(caught) == ("InvalidParameter", 400)
    confirmed_arn = sns.confirm_subscription(TopicArn=topic, Token=token, AuthenticateOnUnsubscribe="true")
    assert confirmed_arn["SubscriptionArn"] == arn
    shown = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
    assert shown["ConfirmationWasAuthenticated"] == "true" and shown["PendingConfirmation"] == "false"
    # AuthenticateOnUnsubscribe: the unsigned UnsubscribeURL may no longer remove it; a signed call may.
    message = unique("m")
    sns.publish(TopicArn=topic, Message=message)
    unsubscribe_url = subscriber.wait_message(message)[0].doc["UnsubscribeURL"]
    refused = requests.get(unsubscribe_url, timeout=10)
    assert refused.status_code == 403
    assert ET.fromstring(refused.content).findtext("n:Error/n:Code", namespaces=NS) == "AuthorizationError"
    sns.unsubscribe(SubscriptionArn=arn)
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []


def test_pending_subscribe_again_resends_the_confirmation(sns, topic, subscriber):
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=subscriber.url)
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=subscriber.url)
    first, second = subscriber.wait_for("SubscriptionConfirmation", 2)
    assert first.doc["Token"] == second.doc["Token"] and first.doc["MessageId"] != second.doc["MessageId"]
    assert len(sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]) == 1


def test_nothing_but_the_confirmation_reaches_a_pending_subscription(sns, topic, subscriber):
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=subscriber.url)
    sns.publish(TopicArn=topic, Message="not for pending endpoints")
    confirmation = subscriber.wait_for("SubscriptionConfirmation")[0].doc
    requests.get(confirmation["SubscribeURL"], timeout=10)
    sns.publish(TopicArn=topic, Message="after confirmation")
    subscriber.wait_message("after confirmation")
    assert [r.doc["Message"] for r in subscriber.of_type("Notification")] == ["after confirmation"]


def test_unsubscribe_sends_an_unsubscribe_confirmation_that_can_restore(sns, topic, subscriber):
    arn = confirmed(sns, topic, subscriber)
    sns.unsubscribe(SubscriptionArn=arn)
    received = subscriber.wait_for("UnsubscribeConfirmation")[0]
    assert received.headers["x-amz-sns-subscription-arn"] == arn
    doc = received.doc
    assert doc["Message"] == (
        f"You have chosen to deactivate subscription {arn}.\n"
        "To cancel this operation and restore the subscription, visit the SubscribeURL included in this "
        "message."
    )
    verify_signature(doc)
    assert counts(sns, topic) == ["0", "0", "1"]
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
    with pytest.raises(ClientError) as caught:
        sns.get_subscription_attributes(SubscriptionArn=arn)
    assert code(caught) == ("NotFound", 404)
    with pytest.raises(ClientError) as caught:
        sns.unsubscribe(SubscriptionArn=arn)
    assert code(caught) == ("NotFound", 404)
    # The UnsubscribeConfirmation's SubscribeURL restores the same subscription.
    assert requests.get(doc["SubscribeURL"], timeout=10).status_code == 200
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"][0]["SubscriptionArn"] == arn
    assert counts(sns, topic) == ["1", "0", "0"]
    message = unique("m")
    sns.publish(TopicArn=topic, Message=message)
    # The UnsubscribeURL of a notification unsubscribes with a plain GET.
    unsubscribe_url = subscriber.wait_message(message)[0].doc["UnsubscribeURL"]
    page = requests.get(unsubscribe_url, timeout=10)
    assert page.status_code == 200 and ET.fromstring(page.content).tag == f"{{{NS['n']}}}UnsubscribeResponse"
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
    subscriber.wait_for("UnsubscribeConfirmation", 2)


def test_list_subscriptions_pages(server, subscriber):
    regional = server.client("sns", region_name=f"ap-{unique('r')}")
    topic = regional.create_topic(Name=unique("t"))["TopicArn"]
    for i in range(101):
        regional.subscribe(TopicArn=topic, Protocol="http", Endpoint=f"{subscriber.url}/{i}")
    everything = regional.get_paginator("list_subscriptions").paginate().build_full_result()["Subscriptions"]
    assert len(everything) == 101 and {s["SubscriptionArn"] for s in everything} == {"PendingConfirmation"}
    first = regional.list_subscriptions_by_topic(TopicArn=topic)
    assert len(first["Subscriptions"]) == 100
    rest = regional.list_subscriptions_by_topic(TopicArn=topic, NextToken=first["NextToken"])
    assert len(rest["Subscriptions"]) == 1 and "NextToken" not in rest
    endpoints = {s["Endpoint"] for s in first["Subscriptions"] + rest["Subscriptions"]}
    assert endpoints == {f"{subscriber.url}/{i}" for i in range(101)}
    subscriber.wait_for("SubscriptionConfirmation", 101)


@pytest.mark.parametrize(
    ("protocol", "endpoint"),
    [
        ("sqs", "arn:aws:sqs:us-east-1:000000000000:q"),
        ("email", "someone@example.com"),
        ("carrier-pigeon", "http://127.0.0.1:9/"),
        ("http", "https://127.0.0.1:9/"),
        ("https", "http://127.0.0.1:9/"),
        ("http", "not a url"),
        ("http", None),
    ],
)
def test_subscribe_refuses_what_it_cannot_deliver(sns, topic, protocol, endpoint):
    extra = {"Endpoint": endpoint} if endpoint is not None else {}
    with pytest.raises(ClientError) as caught:
        sns.subscribe(TopicArn=topic, Protocol=protocol, **extra)
    assert code(caught) == ("InvalidParameter", 400)
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RawMessageDelivery", "maybe"),
        ("DeliveryPolicy", json.dumps({"healthyRetryPolicy": {"numRetries": -1}})),
        ("DeliveryPolicy", json.dumps({"requestPolicy": {"headerContentType": "image/png"}})),
        ("FilterPolicy", json.dumps({"k": ["v"]})),
        ("Unknown", "x"),
    ],
)
def test_bad_subscription_attributes_change_nothing(sns, topic, subscriber, name, value):
    arn = confirmed(sns, topic, subscriber)
    before = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
    with pytest.raises(ClientError) as caught:
        sns.set_subscription_attributes(SubscriptionArn=arn, AttributeName=name, AttributeValue=value)
    assert code(caught) == ("InvalidParameter", 400)
    assert sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"] == before
    with pytest.raises(ClientError) as caught:
        sns.subscribe(
            TopicArn=topic, Protocol="http", Endpoint=subscriber.url + "/x", Attributes={name: value}
        )
    assert code(caught) == ("InvalidParameter", 400)


def test_subscription_attributes_and_overrides(sns, topic, subscriber):
    arn = confirmed(sns, topic, subscriber)
    policy = {"healthyRetryPolicy": {"minDelayTarget": 1, "maxDelayTarget": 2, "numRetries": 5},
              "requestPolicy": {"headerContentType": "application/json"}}  # fmt: skip
    sns.set_subscription_attributes(
        SubscriptionArn=arn, AttributeName="DeliveryPolicy", AttributeValue=json.dumps(policy)
    )
    sns.set_subscription_attributes(
        SubscriptionArn=arn, AttributeName="RawMessageDelivery", AttributeValue="true"
    )
    shown = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
    assert json.loads(shown["DeliveryPolicy"]) == policy and shown["RawMessageDelivery"] == "true"
    effective = json.loads(shown["EffectiveDeliveryPolicy"])
    assert effective["healthyRetryPolicy"]["numRetries"] == 5
    assert effective["requestPolicy"]["headerContentType"] == "application/json"
    with pytest.raises(ClientError) as caught:  # a confirmed endpoint subscribed with other attributes
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=subscriber.url,
                      Attributes={"RawMessageDelivery": "false"})  # fmt: skip
    assert code(caught) == ("InvalidParameter", 400)
    # The topic can take the say back: disableSubscriptionOverrides.
    topic_policy = {"http": {"disableSubscriptionOverrides": True}}
    sns.set_topic_attributes(
        TopicArn=topic, AttributeName="DeliveryPolicy", AttributeValue=json.dumps(topic_policy)
    )
    effective = json.loads(
        sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]["EffectiveDeliveryPolicy"]
    )
    assert effective["healthyRetryPolicy"]["numRetries"] == 3


def test_subscription_errors(sns, topic):
    missing_topic = f"arn:aws:sns:{REGION}:000000000000:{unique('gone')}"
    with pytest.raises(ClientError) as caught:
        sns.subscribe(TopicArn=missing_topic, Protocol="http", Endpoint="http://127.0.0.1:9/")
    assert code(caught) == ("NotFound", 404)
    for arn in ("nonsense", topic):  # a topic's ARN is not a subscription's
        with pytest.raises(ClientError) as caught:
            sns.get_subscription_attributes(SubscriptionArn=arn)
        assert code(caught) == ("InvalidParameter", 400)
    with pytest.raises(ClientError) as caught:
        sns.unsubscribe(SubscriptionArn=f"{topic}:{unique('x')}")
    assert code(caught) == ("NotFound", 404)
    with pytest.raises(ClientError) as caught:
        sns.list_subscriptions_by_topic(TopicArn=missing_topic)
    assert code(caught) == ("NotFound", 404)
    with pytest.raises(ClientError) as caught:
        sns.confirm_subscription(TopicArn=missing_topic, Token="t")
    assert code(caught) == ("NotFound", 404)


def test_unsigned_urls_with_bad_tokens_and_arns(server, topic):
    def get(query: str) -> tuple[int, str | None]:
        page = requests.get(f"{server.url}/?{query}", timeout=10)
        return page.status_code, ET.fromstring(page.content).findtext("n:Error/n:Code", namespaces=NS)

    assert get(f"Action=ConfirmSubscription&TopicArn={topic}&Token=nope") == (400, "InvalidParameter")
    assert get("Action=ConfirmSubscription&TopicArn=nonsense&Token=nope") == (400, "InvalidParameter")
    assert get(f"Action=ConfirmSubscription&TopicArn={topic}") == (400, "InvalidParameter")  # no token
    assert get(f"Action=Unsubscribe&SubscriptionArn={topic}:{unique('x')}") == (404, "NotFound")
    assert get("Action=Unsubscribe&SubscriptionArn=%ff") == (400, "MalformedQueryString")


def test_the_signing_certificate_is_served(server, topic, subscriber, sns):
    sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=subscriber.url)
    url = subscriber.wait_for("SubscriptionConfirmation")[0].doc["SigningCertURL"]
    path = url[len(server.url) :]
    assert path.startswith("/SimpleNotificationService-") and path.endswith(".pem")
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and page.content.startswith(b"-----BEGIN CERTIFICATE-----")
    assert requests.get(f"{server.url}/SimpleNotificationService-0000.pem", timeout=10).status_code == 404


def test_two_subscribers_and_other_endpoints(sns, topic, subscriber):
    other = Subscriber()
    try:
        confirmed(sns, topic, subscriber)
        confirmed(sns, topic, other)
        sns.publish(TopicArn=topic, Message="to both")
        subscriber.wait_message("to both")
        other.wait_message("to both")
    finally:
        other.stop()
