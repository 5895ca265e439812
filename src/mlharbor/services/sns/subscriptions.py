"""SNS subscription records: their state machine, tokens, attributes and listings.

A subscription starts ``PendingConfirmation`` (only its SubscriptionConfirmation is delivered), becomes
``Confirmed`` when its token comes back (SubscribeURL or ConfirmSubscription), and ``Deleted`` when it is
unsubscribed. A deleted subscription is kept while the token of its UnsubscribeConfirmation is valid: that
message's SubscribeURL restores it, as AWS's does. Expired pending and deleted subscriptions are purged.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Row, and_, delete, select

from mlharbor import arns
from mlharbor.errors import InvalidParameterException, NotFoundException
from mlharbor.services.sns import policy
from mlharbor.store import transitions
from mlharbor.store.tables import sns_subscriptions as table

PENDING, CONFIRMED, DELETED = "PendingConfirmation", "Confirmed", "Deleted"
MACHINE = transitions.machine(
    "sns subscription",
    PENDING,
    {PENDING: (CONFIRMED, DELETED), CONFIRMED: (DELETED,), DELETED: (CONFIRMED,)},
)
TOKEN_SECONDS = 2 * 24 * 3600  # a confirmation token is valid for two days
PAGE = 100
PROTOCOLS = ("http", "https")
# Protocols AWS delivers to and MLHarbor does not (yet): refused with a clear message, never taken silently.
OTHER_PROTOCOLS = ("email", "email-json", "sms", "sqs", "application", "lambda", "firehose")
SETTABLE = ("DeliveryPolicy", "RawMessageDelivery")
NOT_IMPLEMENTED = (
    "FilterPolicy",
    "FilterPolicyScope",
    "RedrivePolicy",
    "SubscriptionRoleArn",
    "ReplayPolicy",
)


def new_token() -> tuple[str, float]:
    return secrets.token_hex(64), time.time() + TOKEN_SECONDS


def endpoint_key(protocol: str, endpoint: str) -> str:
    return hashlib.sha256(f"{protocol}\n{endpoint}".encode()).hexdigest()


def check_endpoint(protocol: str, endpoint: str | None) -> str:
    if protocol not in PROTOCOLS:
        if protocol in OTHER_PROTOCOLS:
            raise InvalidParameterException(
                "Invalid parameter: Protocol Reason: MLHarbor delivers to http and https endpoints, "
                f"not {protocol}"
            )
        raise InvalidParameterException(
            f"Invalid parameter: Amazon SNS does not support this protocol string: {protocol}"
        )
    if not endpoint:
        raise InvalidParameterException("Invalid parameter: Endpoint must not be empty")
    parts = urlsplit(endpoint)
    if parts.scheme.lower() != protocol or not parts.hostname or any(c.isspace() for c in endpoint):
        raise InvalidParameterException(f"Invalid parameter: Endpoint must be an {protocol}:// URL")
    return endpoint


def check_attribute(name: str, value: str) -> str:
    """A subscription attribute AWS accepts, in the form it is stored."""
    if name in NOT_IMPLEMENTED:
        raise InvalidParameterException(
            f"Invalid parameter: Attributes Reason: MLHarbor does not implement {name} yet"
        )
    if name not in SETTABLE:
        raise InvalidParameterException(f"Invalid parameter: AttributeName Reason: Unknown attribute {name}")
    if name == "RawMessageDelivery":
        if value.lower() not in ("true", "false"):
            raise InvalidParameterException(
                "Invalid parameter: RawMessageDelivery Reason: must be true or false"
            )
        return value.lower()
    if value:
        policy.check_subscription_policy(value)
    return value


def parse_arn(arn: str, account_id: str, region: str) -> None:
    parts = arns.sns_parts(arn)
    if parts is None or parts[3] is None:
        raise InvalidParameterException("Invalid parameter: SubscriptionArn")
    if parts[0] != region or parts[1] != account_id:
        raise NotFoundException("Subscription does not exist")


def find(conn: Connection, arn: str, account_id: str, region: str) -> Row[Any]:
    parse_arn(arn, account_id, region)
    row = conn.execute(select(table).where(table.c.arn == arn, table.c.status != DELETED)).first()
    if row is None:
        raise NotFoundException("Subscription does not exist")
    return row


def live(conn: Connection, topic_arn: str, protocol: str, endpoint: str) -> Row[Any] | None:
    key = endpoint_key(protocol, endpoint)
    return conn.execute(
        select(table).where(table.c.topic_arn == topic_arn, table.c.endpoint_key == key)
    ).first()


def by_token(conn: Connection, topic_arn: str, token: str) -> Row[Any] | None:
    row = conn.execute(select(table).where(table.c.topic_arn == topic_arn, table.c.token == token)).first()
    return row if row is not None and row.token_expires_at > time.time() else None


def move(conn: Connection, row: Row[Any], target: str, **values: Any) -> bool:
    return transitions.transition(
        conn, table, MACHINE, table.c.arn == row.arn, current=row.status, version=row.version, target=target,
        **values,
    )  # fmt: skip


def confirmed_for_delivery(conn: Connection, topic_arn: str) -> list[Row[Any]]:
    return list(
        conn.execute(select(table).where(table.c.topic_arn == topic_arn, table.c.status == CONFIRMED))
    )


def attributes(row: Row[Any], topic_policy: str | None) -> dict[str, str]:
    own = row.attributes
    shown = {
        "SubscriptionArn": row.arn,
        "TopicArn": row.topic_arn,
        "Owner": row.account_id,
        "Protocol": row.protocol,
        "Endpoint": row.endpoint,
        "ConfirmationWasAuthenticated": "true" if row.authenticated else "false",
        "PendingConfirmation": "true" if row.status == PENDING else "false",
        "RawMessageDelivery": own.get("RawMessageDelivery", "false"),
        "SubscriptionPrincipal": f"arn:aws:iam::{row.account_id}:root",
        "EffectiveDeliveryPolicy": json.dumps(
            policy.subscription_effective(topic_policy, own.get("DeliveryPolicy") or None),
            separators=(",", ":"),
        ),
    }
    if own.get("DeliveryPolicy"):
        shown["DeliveryPolicy"] = own["DeliveryPolicy"]
    return shown


def summary(row: Row[Any]) -> dict[str, str]:
    return {
        "SubscriptionArn": "PendingConfirmation" if row.status == PENDING else row.arn,
        "Owner": row.account_id,
        "Protocol": row.protocol,
        "Endpoint": row.endpoint,
        "TopicArn": row.topic_arn,
    }


def page(conn: Connection, where: Any, after: str | None) -> list[Row[Any]]:
    where = and_(where, table.c.status != DELETED)
    if after is not None:
        where = and_(where, table.c.arn > after)
    return list(conn.execute(select(table).where(where).order_by(table.c.arn).limit(PAGE + 1)))


def purge_expired(conn: Connection, now: float) -> int:
    """Pending subscriptions nobody confirmed, and deleted ones nobody restored, once their token expired."""
    return conn.execute(
        delete(table).where(table.c.status.in_((PENDING, DELETED)), table.c.token_expires_at < now)
    ).rowcount
