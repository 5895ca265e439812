"""Delivery policies as data: AWS's rules, the effective policy, and the delay before each retry."""

from __future__ import annotations

import json

import pytest

from mlharbor.errors import InvalidParameterException
from mlharbor.services.sns import policy


def schedule(**retry: object) -> list[float]:
    full = policy.check_retry(retry, "retry")
    return [round(policy.delay(full, n), 3) for n in range(1, full["numRetries"] + 1)]


def test_the_default_is_three_retries_twenty_seconds_apart():
    assert schedule() == [20, 20, 20]


def test_the_four_phases():
    retry = {"minDelayTarget": 1, "maxDelayTarget": 9, "numRetries": 9, "numNoDelayRetries": 2,
             "numMinDelayRetries": 2, "numMaxDelayRetries": 1}  # fmt: skip
    assert schedule(**retry) == [0, 0, 1, 1, 3, 5, 7, 9, 9]


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("linear", [3, 5, 7, 9]),
        ("arithmetic", [1.5, 3, 5.5, 9]),
        ("geometric", [1.732, 3, 5.196, 9]),
        ("exponential", [1.036, 1.242, 2.408, 9]),
    ],
)
def test_backoff_functions_go_from_min_to_max(function, expected):
    assert schedule(minDelayTarget=1, maxDelayTarget=9, numRetries=4, backoffFunction=function) == expected


@pytest.mark.parametrize(
    "retry",
    [
        {"minDelayTarget": 0},
        {"minDelayTarget": 10, "maxDelayTarget": 5},
        {"maxDelayTarget": 3601},
        {"numRetries": 101},
        {"numRetries": 2, "numNoDelayRetries": 3},
        {"numRetries": 2, "minDelayTarget": 3600, "maxDelayTarget": 3600},
        {"backoffFunction": "cubic"},
        {"numRetries": "3"},
        {"numRetries": True},
        {"surprise": 1},
    ],
)
def test_aws_rules(retry):
    with pytest.raises(InvalidParameterException):
        policy.check_retry(retry, "retry")


def test_subscription_overrides_unless_the_topic_disables_them():
    own = json.dumps(
        {"healthyRetryPolicy": {"numRetries": 7}, "requestPolicy": {"headerContentType": "application/json"}}
    )
    effective = policy.subscription_effective(None, own)
    assert effective["healthyRetryPolicy"]["numRetries"] == 7
    assert effective["requestPolicy"] == {"headerContentType": "application/json"}
    closed = json.dumps({"http": {"disableSubscriptionOverrides": True,
                                  "defaultHealthyRetryPolicy": {"numRetries": 1}}})  # fmt: skip
    effective = policy.subscription_effective(closed, own)
    assert effective["healthyRetryPolicy"]["numRetries"] == 1
    assert effective["requestPolicy"] == {"headerContentType": "text/plain; charset=UTF-8"}
