"""SNS tests: clients of the shared server, a live HTTP subscriber, and confirmed subscriptions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import unique
from tests.services.sns.subscriber import Subscriber


@pytest.fixture
def sns(server):  # type: ignore[no-untyped-def]
    return server.client("sns")


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    endpoint = Subscriber()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def topic(sns) -> str:  # type: ignore[no-untyped-def]
    return sns.create_topic(Name=unique("topic"))["TopicArn"]


def confirmed(sns, topic_arn: str, endpoint: Subscriber, **attributes: str) -> str:  # type: ignore[no-untyped-def]
    """Subscribe ``endpoint`` and confirm through the SubscribeURL it receives, as a subscriber does."""
    before = len(endpoint.of_type("SubscriptionConfirmation"))
    extra: dict[str, Any] = {"Attributes": attributes} if attributes else {}
    sns.subscribe(TopicArn=topic_arn, Protocol="http", Endpoint=endpoint.url, **extra)
    confirmation = endpoint.wait_for("SubscriptionConfirmation", before + 1)[-1].doc
    answer = requests.get(confirmation["SubscribeURL"], timeout=10)
    assert answer.status_code == 200, answer.text
    arn = answer.text.split("<SubscriptionArn>")[1].split("</SubscriptionArn>")[0]
    assert arn.startswith(topic_arn + ":")
    return arn
