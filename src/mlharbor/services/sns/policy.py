"""HTTP/S delivery policies: validation, the effective policy, and the delay before each retry.

A topic's ``DeliveryPolicy`` is ``{"http": {"defaultHealthyRetryPolicy": {...},
"disableSubscriptionOverrides": bool, "defaultThrottlePolicy": {...}, "defaultRequestPolicy":
{"headerContentType": ...}}}``; a subscription's
is ``{"healthyRetryPolicy": {...}, "throttlePolicy": {...}, "requestPolicy": {...}}``. The subscription's
parts win unless the topic disables overrides. Retries run in AWS's four phases: immediate, pre-backoff (at
the minimum delay), backoff (minimum to maximum by the backoff function) and post-backoff (at the maximum).
"""

from __future__ import annotations

import json
import math
from typing import Any

from mlharbor.errors import InvalidParameterException

DEFAULT_CONTENT_TYPE = "text/plain; charset=UTF-8"
DEFAULT_RETRY: dict[str, Any] = {
    "minDelayTarget": 20,
    "maxDelayTarget": 20,
    "numRetries": 3,
    "numMaxDelayRetries": 0,
    "numNoDelayRetries": 0,
    "numMinDelayRetries": 0,
    "backoffFunction": "linear",
}
MAX_DELAY = 3600  # seconds: the longest delay, and the longest a whole policy may take (a hard AWS limit)
MAX_RETRIES = 100
BACKOFF_FUNCTIONS = ("arithmetic", "exponential", "geometric", "linear")
CONTENT_TYPES = ("text/plain", "application/json", "application/xml")
_COUNTS = ("numRetries", "numNoDelayRetries", "numMinDelayRetries", "numMaxDelayRetries")


def _bad(reason: str) -> InvalidParameterException:
    return InvalidParameterException(f"Invalid parameter: DeliveryPolicy: {reason}")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be a JSON object")
    return value


def _integer(policy: dict[str, Any], key: str, low: int, high: int) -> int:
    value = policy[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{key} must be an integer between {low} and {high}")
    return value


def check_retry(policy: Any, where: str) -> dict[str, Any]:
    """A healthy retry policy with AWS's rules, completed with the defaults of what it leaves out."""
    given = _object(policy, where)
    unknown = set(given) - set(DEFAULT_RETRY)
    if unknown:
        raise _bad(f"{where} has unknown key {sorted(unknown)[0]}")
    full = {**DEFAULT_RETRY, **given}
    if "minDelayTarget" in given and "maxDelayTarget" not in given:
        full["maxDelayTarget"] = max(full["minDelayTarget"], DEFAULT_RETRY["maxDelayTarget"])
    if "maxDelayTarget" in given and "minDelayTarget" not in given:
        full["minDelayTarget"] = min(full["maxDelayTarget"], DEFAULT_RETRY["minDelayTarget"])
    high = _integer(full, "maxDelayTarget", 1, MAX_DELAY)
    _integer(full, "minDelayTarget", 1, high)
    total = _integer(full, "numRetries", 0, MAX_RETRIES)
    phases = sum(_integer(full, key, 0, MAX_RETRIES) for key in _COUNTS[1:])
    if phases > total:
        raise _bad("numNoDelayRetries + numMinDelayRetries + numMaxDelayRetries must not exceed numRetries")
    function = full["backoffFunction"]
    if not isinstance(function, str) or function.lower() not in BACKOFF_FUNCTIONS:
        raise _bad(f"backoffFunction must be one of {', '.join(BACKOFF_FUNCTIONS)}")
    full["backoffFunction"] = function.lower()
    if sum(delay(full, n) for n in range(1, total + 1)) > MAX_DELAY:
        raise _bad(f"the retries would take more than {MAX_DELAY} seconds")
    return full


def _check_request(policy: Any, where: str) -> None:
    request = _object(policy, where)
    content_type = request.get("headerContentType")
    if content_type is not None and (
        not isinstance(content_type, str)
        or content_type.split(";", 1)[0].strip().lower() not in CONTENT_TYPES
    ):
        raise _bad(f"headerContentType must be one of {', '.join(CONTENT_TYPES)} (with an optional charset)")


def _check_throttle(policy: Any, where: str) -> None:
    throttle = _object(policy, where)
    if "maxReceivesPerSecond" in throttle:
        _integer(throttle, "maxReceivesPerSecond", 1, 2**31 - 1)


def _parse(text: str) -> dict[str, Any]:
    try:
        return _object(json.loads(text), "the policy")
    except ValueError:
        raise _bad("not valid JSON") from None


def check_topic_policy(text: str) -> None:
    http = _parse(text).get("http")
    if http is None:
        return
    http = _object(http, "http")
    if "defaultHealthyRetryPolicy" in http:
        check_retry(http["defaultHealthyRetryPolicy"], "defaultHealthyRetryPolicy")
    if "defaultRequestPolicy" in http:
        _check_request(http["defaultRequestPolicy"], "defaultRequestPolicy")
    if "defaultThrottlePolicy" in http:
        _check_throttle(http["defaultThrottlePolicy"], "defaultThrottlePolicy")
    if not isinstance(http.get("disableSubscriptionOverrides", False), bool):
        raise _bad("disableSubscriptionOverrides must be true or false")


def check_subscription_policy(text: str) -> None:
    policy = _parse(text)
    if "healthyRetryPolicy" in policy:
        check_retry(policy["healthyRetryPolicy"], "healthyRetryPolicy")
    if "requestPolicy" in policy:
        _check_request(policy["requestPolicy"], "requestPolicy")
    if "throttlePolicy" in policy:
        _check_throttle(policy["throttlePolicy"], "throttlePolicy")


def topic_effective(topic_policy: str | None) -> dict[str, Any]:
    """The topic's EffectiveDeliveryPolicy: its own, completed with AWS's defaults."""
    http = (json.loads(topic_policy) if topic_policy else {}).get("http") or {}
    effective: dict[str, Any] = {
        "defaultHealthyRetryPolicy": check_retry(http.get("defaultHealthyRetryPolicy", {}), "retry"),
        "disableSubscriptionOverrides": http.get("disableSubscriptionOverrides", False),
        "defaultRequestPolicy": {
            "headerContentType": DEFAULT_CONTENT_TYPE,
            **http.get("defaultRequestPolicy", {}),
        },
    }
    if "defaultThrottlePolicy" in http:
        effective["defaultThrottlePolicy"] = http["defaultThrottlePolicy"]
    return {"http": effective}


def subscription_effective(topic_policy: str | None, subscription_policy: str | None) -> dict[str, Any]:
    """What a subscription's deliveries follow: the topic's defaults, overridden by the subscription's own
    policy unless the topic disables overrides."""
    http = topic_effective(topic_policy)["http"]
    own = (
        {}
        if http["disableSubscriptionOverrides"] or not subscription_policy
        else json.loads(subscription_policy)
    )
    effective: dict[str, Any] = {
        "healthyRetryPolicy": check_retry(own["healthyRetryPolicy"], "retry")
        if "healthyRetryPolicy" in own
        else http["defaultHealthyRetryPolicy"],
        "requestPolicy": {**http["defaultRequestPolicy"], **own.get("requestPolicy", {})},
        "guaranteed": False,
    }
    throttle = own.get("throttlePolicy", http.get("defaultThrottlePolicy"))
    if throttle is not None:
        effective["throttlePolicy"] = throttle
    return effective


def delay(retry: dict[str, Any], n: int) -> float:
    """Seconds to wait before retry ``n`` (1-based) under a complete healthy retry policy.

    AWS shows its backoff functions only as curves; here, over the backoff phase's retries j = 1..k with
    t = j / k, the delay goes from the minimum to the maximum as: linear t, arithmetic t², geometric
    (a constant factor per retry) min·(max/min)^t, exponential (steepest at the end) (2^(10t) - 1) / 1023.
    """
    low, high = retry["minDelayTarget"], retry["maxDelayTarget"]
    immediate, pre = retry["numNoDelayRetries"], retry["numMinDelayRetries"]
    backoff = retry["numRetries"] - immediate - pre - retry["numMaxDelayRetries"]
    if n <= immediate:
        return 0.0
    if n <= immediate + pre:
        return float(low)
    j = n - immediate - pre
    if j > backoff:
        return float(high)
    t = j / backoff
    function = retry["backoffFunction"]
    if function == "geometric":
        return low * math.pow(high / low, t)
    share = {"linear": t, "arithmetic": t * t, "exponential": (math.pow(2, 10 * t) - 1) / 1023}[function]
    return low + (high - low) * share
