"""SNS topic records and their attributes."""

from __future__ import annotations

import json
from typing import Any

import regex
from sqlalchemy import Connection, Row, and_, func, select

from mlharbor import arns
from mlharbor.errors import (
    AuthorizationErrorException,
    InvalidParameterException,
    NotFoundException,
)
from mlharbor.services.sns import policy
from mlharbor.store.tables import sns_subscriptions, sns_topics

NAME = regex.compile(r"[A-Za-z0-9_-]{1,256}")
PAGE = 100
# The attributes a topic accepts (CreateTopic, SetTopicAttributes); the feedback ones are stored and shown
# but MLHarbor writes no delivery status logs.
_FEEDBACK = [
    f"{protocol}{outcome}"
    for protocol in ("Application", "Firehose", "HTTP", "Lambda", "SQS")
    for outcome in ("SuccessFeedbackRoleArn", "SuccessFeedbackSampleRate", "FailureFeedbackRoleArn")
]
SETTABLE = frozenset({"DeliveryPolicy", "DisplayName", "Policy", "SignatureVersion", "TracingConfig",
                      "KmsMasterKeyId", "DataProtectionPolicy", "ArchivePolicy", *_FEEDBACK})  # fmt: skip
FIFO_ONLY = frozenset({"FifoTopic", "ContentBasedDeduplication", "FifoThroughputScope"})
DEFAULTS = {"DisplayName": "", "SignatureVersion": "1", "TracingConfig": "PassThrough"}


def owner(arn: str, account_id: str, region: str, what: str = "TopicArn") -> str:
    """The topic name of ``arn`` if it is a topic ARN of the caller's account and region."""
    parts = arns.sns_parts(arn)
    if parts is None or parts[3] is not None or NAME.fullmatch(parts[2]) is None:
        raise InvalidParameterException(f"Invalid parameter: {what}")
    arn_region, arn_account, name, _ = parts
    if arn_region != region:
        raise InvalidParameterException(f"Invalid parameter: {what} (the topic is in another region)")
    if arn_account != account_id:
        raise AuthorizationErrorException(
            f"User: arn:aws:iam::{account_id}:root is not authorized to access this topic: {arn}"
        )
    return name


def find(conn: Connection, arn: str, account_id: str, region: str) -> Row[Any]:
    owner(arn, account_id, region)
    row = conn.execute(select(sns_topics).where(sns_topics.c.arn == arn)).first()
    if row is None:
        raise NotFoundException("Topic does not exist")
    return row


def check_attribute(name: str, value: str) -> None:
    """AWS's rules for one topic attribute (CreateTopic and SetTopicAttributes)."""
    if name in FIFO_ONLY:
        if name == "FifoTopic" and value.lower() == "false":
            return
        raise InvalidParameterException(
            f"Invalid parameter: Attributes Reason: MLHarbor does not support FIFO topics ({name})"
        )
    if name not in SETTABLE:
        raise InvalidParameterException(f"Invalid parameter: AttributeName Reason: Unknown attribute {name}")
    if name == "DisplayName" and len(value) > 100:
        raise InvalidParameterException("Invalid parameter: DisplayName Reason: at most 100 characters")
    if name == "SignatureVersion" and value not in ("1", "2"):
        raise InvalidParameterException("Invalid parameter: SignatureVersion Reason: must be 1 or 2")
    if name == "TracingConfig" and value not in ("PassThrough", "Active"):
        raise InvalidParameterException(
            "Invalid parameter: TracingConfig Reason: must be PassThrough or Active"
        )
    if name == "DeliveryPolicy" and value:
        policy.check_topic_policy(value)
    if name in ("Policy", "DataProtectionPolicy", "ArchivePolicy") and value:
        try:
            document = json.loads(value)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise InvalidParameterException(f"Invalid parameter: {name} Reason: not a JSON object")


def default_policy(arn: str, account_id: str) -> str:
    """The access policy AWS gives a new topic (shown; MLHarbor authorizes by credential, not by policy)."""
    actions = ["SNS:GetTopicAttributes", "SNS:SetTopicAttributes", "SNS:AddPermission",
               "SNS:RemovePermission", "SNS:DeleteTopic", "SNS:Subscribe", "SNS:ListSubscriptionsByTopic",
               "SNS:Publish"]  # fmt: skip
    statement = {
        "Sid": "__default_statement_ID",
        "Effect": "Allow",
        "Principal": {"AWS": "*"},
        "Action": actions,
        "Resource": arn,
        "Condition": {"StringEquals": {"AWS:SourceOwner": account_id}},
    }
    return json.dumps(
        {"Version": "2008-10-17", "Id": "__default_policy_ID", "Statement": [statement]},
        separators=(",", ":"),
    )


def effective(row: Row[Any], name: str) -> str:
    """An attribute as GetTopicAttributes shows it."""
    value = row.attributes.get(name)
    if value:
        return value
    if name == "Policy":
        return default_policy(row.arn, row.account_id)
    return DEFAULTS.get(name, "")


def attributes(conn: Connection, row: Row[Any]) -> dict[str, str]:
    counts = dict(
        conn.execute(
            select(sns_subscriptions.c.status, func.count())
            .where(sns_subscriptions.c.topic_arn == row.arn)
            .group_by(sns_subscriptions.c.status)
        ).all()
    )
    shown = {k: v for k, v in row.attributes.items() if v != ""}
    delivery_policy = row.attributes.get("DeliveryPolicy") or None
    return {
        **shown,
        "TopicArn": row.arn,
        "Owner": row.account_id,
        "Policy": effective(row, "Policy"),
        "DisplayName": effective(row, "DisplayName"),
        "SignatureVersion": effective(row, "SignatureVersion"),
        "TracingConfig": effective(row, "TracingConfig"),
        "SubscriptionsConfirmed": str(counts.get("Confirmed", 0)),
        "SubscriptionsPending": str(counts.get("PendingConfirmation", 0)),
        "SubscriptionsDeleted": str(row.subscriptions_deleted),
        "EffectiveDeliveryPolicy": json.dumps(policy.topic_effective(delivery_policy), separators=(",", ":")),
    }


def page(conn: Connection, account_id: str, region: str, after: str | None) -> list[Row[Any]]:
    where = and_(sns_topics.c.account_id == account_id, sns_topics.c.region == region)
    if after is not None:
        where = and_(where, sns_topics.c.arn > after)
    return list(
        conn.execute(select(sns_topics.c.arn).where(where).order_by(sns_topics.c.arn).limit(PAGE + 1))
    )
