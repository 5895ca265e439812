"""moto clients and the SNS → SQS inbox that connected home tests (and bench/connected_home.py) read."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3

from tests.conftest import REGION, unique


def moto(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip


class Inbox:
    """An SNS topic with an SQS queue subscribed: the notifications connected home sessions publish.
    Messages are deleted once read (else SQS would hand them out again after its visibility timeout)."""

    def __init__(self, endpoint: str) -> None:
        sns, self.sqs = moto("sns", endpoint), moto("sqs", endpoint)
        self.topic = sns.create_topic(Name=unique("events"))["TopicArn"]
        self.queue = self.sqs.create_queue(QueueName=unique("inbox"))["QueueUrl"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])
        sns.subscribe(TopicArn=self.topic, Protocol="sqs", Endpoint=attributes["Attributes"]["QueueArn"])
        self.received: list[tuple[float, dict[str, Any]]] = []  # (time.time() when read, message)

    def of(self, name: str) -> list[dict[str, Any]]:
        """The messages received so far from processor ``name`` (in order)."""
        return [message for _, message in self.timed(name)]

    def timed(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        """Like ``of``, with the time each message was read."""
        response = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10)
        for message in response.get("Messages", []):
            body = json.loads(message["Body"])
            assert body["Subject"] == "Rekognition Stream Processing Event"
            self.received.append((time.time(), json.loads(body["Message"])))
            self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])
        return [(at, m) for at, m in self.received if m["startStreamProcessorRequest"]["name"] == name]
