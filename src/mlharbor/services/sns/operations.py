"""Amazon SNS: one small function per AWS operation.

Topics and subscriptions are rows (``topics.py``, ``subscriptions.py``); messages go out through the outbox
(``delivery.py``): an operation writes the message and its deliveries in the transaction that acknowledges
it and hands them to this server's deliverer after the commit. Subscriptions deliver to http and https
endpoints. SubscribeURL, UnsubscribeURL and SigningCertURL point at the address the client reached.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from mlharbor import arns
from mlharbor.api.services import DocumentHandler, Handler
from mlharbor.context import Call
from mlharbor.errors import (
    AuthorizationErrorException,
    InvalidParameterException,
    NotFoundException,
    ResourceNotFoundException,
    TagLimitExceededException,
)
from mlharbor.services import tags
from mlharbor.services.sns import delivery, messages, subscriptions, topics
from mlharbor.services.sns.delivery import Deliverer, Job
from mlharbor.services.sns.signing import CERT_PREFIX
from mlharbor.store.tables import sns_subscriptions, sns_topics

TAG_LIMIT = 50
DIFFERENT_ATTRIBUTES = "Invalid parameter: Attributes Reason: Topic already exists with different attributes"


def _deliverer(call: Call) -> Deliverer:
    return call.server.extras["sns.deliverer"]


def _base_url(call: Call) -> str:
    return call.endpoint or call.server.url or ""


def _after(call: Call, params: dict[str, Any]) -> str | None:
    token = params.get("NextToken")
    return str(call.server.pager.decode(call.page_scope(), token).get("a", "")) if token else None


def _next_token(call: Call, keys: list[str], page: int) -> dict[str, str]:
    return (
        {"NextToken": call.server.pager.encode(call.page_scope(), {"a": keys[page - 1]})}
        if len(keys) > page
        else {}
    )


# --- Topics -------------------------------------------------------------------------------------------------
def create_topic(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["Name"]
    if topics.NAME.fullmatch(name) is None:
        raise InvalidParameterException(
            "Invalid parameter: Topic Name Reason: MLHarbor does not support FIFO topics"
            if name.endswith(".fifo")
            else "Invalid parameter: Topic Name"
        )
    given = dict(params.get("Attributes", {}))
    if "DataProtectionPolicy" in params:
        given["DataProtectionPolicy"] = params["DataProtectionPolicy"]
    for key, value in given.items():
        topics.check_attribute(key, value)
    wanted = {k: v for k, v in given.items() if k in topics.SETTABLE}
    new_tags = _tag_map(params.get("Tags", []))
    arn = arns.sns_topic(call.region, call.account_id, name)
    for _ in range(2):  # a concurrent CreateTopic of the same name: the second round finds its topic
        try:
            with call.store.begin() as conn:
                existing = conn.execute(select(sns_topics).where(sns_topics.c.arn == arn)).first()
                if existing is not None:
                    _check_same(conn, existing, wanted, new_tags if "Tags" in params else None)
                    return {"TopicArn": arn}
                conn.execute(
                    insert(sns_topics).values(
                        arn=arn, account_id=call.account_id, region=call.region, name=name, attributes=wanted,
                        subscriptions_deleted=0, version=0, created_at=time.time(),
                    )
                )  # fmt: skip
                tags.put(conn, arn, new_tags)
            return {"TopicArn": arn}
        except IntegrityError:
            continue
    raise InvalidParameterException(DIFFERENT_ATTRIBUTES)


def _check_same(conn: Any, row: Any, wanted: dict[str, str], new_tags: dict[str, str] | None) -> None:
    """CreateTopic of an existing name succeeds only if it asks for what the topic already has."""
    if any(topics.effective(row, key) != value for key, value in wanted.items()):
        raise InvalidParameterException(DIFFERENT_ATTRIBUTES)
    if new_tags and tags.get(conn, row.arn) != new_tags:
        raise InvalidParameterException(
            "Invalid parameter: Tags Reason: Topic already exists with different tags"
        )


def delete_topic(call: Call, params: dict[str, Any]) -> None:
    arn = params["TopicArn"]
    topics.owner(arn, call.account_id, call.region)
    with call.store.begin() as conn:
        # Its subscriptions go with it; their undelivered messages are dropped when a sender claims them.
        conn.execute(delete(sns_subscriptions).where(sns_subscriptions.c.topic_arn == arn))
        tags.remove_all(conn, arn)
        conn.execute(delete(sns_topics).where(sns_topics.c.arn == arn))  # deleting nothing is no error


def list_topics(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    after = _after(call, params)
    with call.store.read() as conn:
        keys = [row.arn for row in topics.page(conn, call.account_id, call.region, after)]
    return {
        "Topics": [{"TopicArn": arn} for arn in keys[: topics.PAGE]],
        **_next_token(call, keys, topics.PAGE),
    }


def get_topic_attributes(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        row = topics.find(conn, params["TopicArn"], call.account_id, call.region)
        return {"Attributes": topics.attributes(conn, row)}


def set_topic_attributes(call: Call, params: dict[str, Any]) -> None:
    name, value = params["AttributeName"], params.get("AttributeValue", "")
    if name == "FifoTopic":
        raise InvalidParameterException(
            "Invalid parameter: AttributeName Reason: FifoTopic cannot be changed"
        )
    topics.check_attribute(name, value)
    _set_attribute(call, sns_topics, topics.find, params["TopicArn"], name, value)


def _set_attribute(call: Call, table: Any, find: Any, arn: str, name: str, value: str) -> None:
    """One attribute of a topic or subscription, by compare-and-set: two changes of different attributes
    made at once must both survive."""
    while True:
        with call.store.begin() as conn:
            row = find(conn, arn, call.account_id, call.region)
            changed = conn.execute(
                update(table)
                .where(table.c.arn == row.arn, table.c.version == row.version)
                .values(attributes={**row.attributes, name: value}, version=row.version + 1)
            ).rowcount
        if changed:
            return


# --- Subscriptions ------------------------------------------------------------------------------------------
def subscribe(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    protocol = params["Protocol"]
    topics.owner(params["TopicArn"], call.account_id, call.region)
    endpoint = subscriptions.check_endpoint(protocol, params.get("Endpoint"))
    wanted = {
        key: subscriptions.check_attribute(key, value) for key, value in params.get("Attributes", {}).items()
    }
    for _ in range(2):  # a concurrent Subscribe of the same endpoint: the second round finds it
        try:
            arn, jobs = _subscribe(call, params["TopicArn"], protocol, endpoint, wanted)
            break
        except IntegrityError:
            continue
    else:
        raise InvalidParameterException("Invalid parameter: Endpoint Reason: subscribed concurrently; retry")
    _deliverer(call).dispatch(jobs)
    if jobs and not params.get("ReturnSubscriptionArn", False):
        return {"SubscriptionArn": "pending confirmation"}
    return {"SubscriptionArn": arn}


def _subscribe(
    call: Call, topic_arn: str, protocol: str, endpoint: str, wanted: dict[str, str]
) -> tuple[str, list[Job]]:
    with call.store.begin() as conn:
        topic = topics.find(conn, topic_arn, call.account_id, call.region)
        existing = subscriptions.live(conn, topic.arn, protocol, endpoint)
        if existing is not None and existing.status == subscriptions.CONFIRMED:
            current = {"RawMessageDelivery": "false", **existing.attributes}
            if any(current.get(key, "") != value for key, value in wanted.items()):
                raise InvalidParameterException(
                    "Invalid parameter: Attributes Reason: Subscription already exists with different "
                    "attributes"
                )
            return existing.arn, []
        if existing is not None:  # still pending: send its confirmation again, with the attributes asked now
            arn, token = existing.arn, existing.token
            conn.execute(
                update(sns_subscriptions).where(sns_subscriptions.c.arn == arn).values(attributes=wanted)
            )
        else:
            arn = arns.sns_subscription(topic.arn, str(uuid.uuid4()))
            token, expires = subscriptions.new_token()
            conn.execute(
                insert(sns_subscriptions).values(
                    arn=arn, topic_arn=topic.arn, account_id=call.account_id, region=call.region,
                    protocol=protocol, endpoint=endpoint,
                    endpoint_key=subscriptions.endpoint_key(protocol, endpoint), status=subscriptions.PENDING,
                    version=0, token=token, token_expires_at=expires, authenticated=False,
                    unsubscribe_needs_auth=False, attributes=wanted, created_at=time.time(),
                )
            )  # fmt: skip
        target = conn.execute(select(sns_subscriptions).where(sns_subscriptions.c.arn == arn)).one()
        _, jobs = _confirmation(call, conn, topic, target, delivery.SUBSCRIPTION_CONFIRMATION, token)
    return arn, jobs


def _confirmation(
    call: Call, conn: Any, topic: Any, target: Any, kind: str, token: str
) -> tuple[str, list[Job]]:
    return delivery.enqueue(
        conn, account_id=topic.account_id, region=topic.region, kind=kind, topic_arn=topic.arn,
        topic_policy=topic.attributes.get("DeliveryPolicy") or None,
        signature_version=topics.effective(topic, "SignatureVersion"), base_url=_base_url(call),
        targets=[target],
        message=messages.confirmation_text(kind, topic.arn, target.arn), token=token,
    )  # fmt: skip


def confirm_subscription(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    needs_auth = params.get("AuthenticateOnUnsubscribe", "false").lower() == "true"
    return _confirm(call, params, authenticated=True, needs_auth=needs_auth)


def confirm_subscription_by_url(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    """The SubscribeURL: an unsigned GET whose token is the secret; the topic's ARN says whose it is."""
    return _confirm(
        _owned_by(call, params["TopicArn"], "TopicArn"), params, authenticated=False, needs_auth=False
    )


def _owned_by(call: Call, arn: str, what: str) -> Call:
    parts = arns.sns_parts(arn)
    if parts is None:
        raise InvalidParameterException(f"Invalid parameter: {what}")
    return replace(call, account_id=parts[1], region=parts[0])


def _confirm(call: Call, params: dict[str, Any], *, authenticated: bool, needs_auth: bool) -> dict[str, Any]:
    with call.store.begin() as conn:
        topic = topics.find(conn, params["TopicArn"], call.account_id, call.region)
        row = subscriptions.by_token(conn, topic.arn, params["Token"])
        if row is None:
            raise InvalidParameterException("Invalid token")
        if row.status == subscriptions.CONFIRMED:
            return {"SubscriptionArn": row.arn}
        values: dict[str, Any] = {"authenticated": authenticated, "unsubscribe_needs_auth": needs_auth}
        if row.status == subscriptions.DELETED:  # the UnsubscribeConfirmation's SubscribeURL restores it
            values["endpoint_key"] = subscriptions.endpoint_key(row.protocol, row.endpoint)
            conn.execute(
                update(sns_topics)
                .where(sns_topics.c.arn == topic.arn)
                .values(subscriptions_deleted=sns_topics.c.subscriptions_deleted - 1)
            )
        try:
            moved = subscriptions.move(conn, row, subscriptions.CONFIRMED, **values)
        except IntegrityError:
            raise InvalidParameterException(
                "Invalid parameter: Token Reason: the endpoint has been subscribed again since"
            ) from None
    if not moved:  # confirmed (or unsubscribed) by another request meanwhile: answer what it is now
        with call.store.read() as conn:
            return {"SubscriptionArn": subscriptions.find(conn, row.arn, call.account_id, call.region).arn}
    return {"SubscriptionArn": row.arn}


def unsubscribe(call: Call, params: dict[str, Any]) -> None:
    _unsubscribe(call, params["SubscriptionArn"], signed=True)


def unsubscribe_by_url(call: Call, params: dict[str, Any]) -> None:
    """The UnsubscribeURL: an unsigned GET, refused if the subscription set AuthenticateOnUnsubscribe."""
    arn = params["SubscriptionArn"]
    _unsubscribe(_owned_by(call, arn, "SubscriptionArn"), arn, signed=False)


def _unsubscribe(call: Call, arn: str, *, signed: bool) -> None:
    with call.store.begin() as conn:
        row = subscriptions.find(conn, arn, call.account_id, call.region)
        if row.unsubscribe_needs_auth and not signed:
            raise AuthorizationErrorException(
                "This subscription can only be unsubscribed by an authenticated request"
            )
        token, expires = subscriptions.new_token()
        if not subscriptions.move(
            conn, row, subscriptions.DELETED, endpoint_key=None, token=token, token_expires_at=expires
        ):
            raise NotFoundException(
                "Subscription does not exist"
            )  # unsubscribed by another request meanwhile
        conn.execute(
            update(sns_topics)
            .where(sns_topics.c.arn == row.topic_arn)
            .values(subscriptions_deleted=sns_topics.c.subscriptions_deleted + 1)
        )
        topic = conn.execute(select(sns_topics).where(sns_topics.c.arn == row.topic_arn)).first()
        jobs: list[Job] = []
        if topic is not None:
            _, jobs = _confirmation(call, conn, topic, row, delivery.UNSUBSCRIBE_CONFIRMATION, token)
    _deliverer(call).dispatch(jobs)


def list_subscriptions(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    owned = and_(sns_subscriptions.c.account_id == call.account_id, sns_subscriptions.c.region == call.region)
    return _subscription_page(call, params, owned)


def list_subscriptions_by_topic(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        topic = topics.find(conn, params["TopicArn"], call.account_id, call.region)
    return _subscription_page(call, params, sns_subscriptions.c.topic_arn == topic.arn)


def _subscription_page(call: Call, params: dict[str, Any], where: Any) -> dict[str, Any]:
    after = _after(call, params)
    with call.store.read() as conn:
        rows = subscriptions.page(conn, where, after)
    return {
        "Subscriptions": [subscriptions.summary(row) for row in rows[: subscriptions.PAGE]],
        **_next_token(call, [row.arn for row in rows], subscriptions.PAGE),
    }


def get_subscription_attributes(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        row = subscriptions.find(conn, params["SubscriptionArn"], call.account_id, call.region)
        topic = conn.execute(select(sns_topics.c.attributes).where(sns_topics.c.arn == row.topic_arn)).first()
    topic_policy = (topic.attributes.get("DeliveryPolicy") or None) if topic is not None else None
    return {"Attributes": subscriptions.attributes(row, topic_policy)}


def set_subscription_attributes(call: Call, params: dict[str, Any]) -> None:
    name = params["AttributeName"]
    value = subscriptions.check_attribute(name, params.get("AttributeValue", ""))
    _set_attribute(call, sns_subscriptions, subscriptions.find, params["SubscriptionArn"], name, value)


# --- Publish ------------------------------------------------------------------------------------------------
def publish(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("PhoneNumber") is not None:
        raise InvalidParameterException("Invalid parameter: PhoneNumber Reason: MLHarbor does not send SMS")
    if params.get("TopicArn") is not None and params.get("TargetArn") is not None:
        raise InvalidParameterException(
            "Invalid parameter: TopicArn Reason: give TopicArn or TargetArn, not both"
        )
    what = "TopicArn" if params.get("TopicArn") is not None else "TargetArn"
    arn = params.get(what)
    if arn is None:
        raise InvalidParameterException(
            "Invalid parameter: TopicArn or TargetArn Reason: no value for required parameter"
        )
    topics.owner(arn, call.account_id, call.region, what)
    message = params["Message"]
    if not message:
        raise InvalidParameterException("Invalid parameter: Empty message")
    subject, structure = params.get("Subject"), params.get("MessageStructure")
    if subject is not None:
        messages.check_subject(subject)
    messages.check_structure(message, structure)
    attributes, attributes_size = messages.check_attributes(params.get("MessageAttributes", {}))
    if len(message.encode("utf-8")) + attributes_size > messages.MAX_MESSAGE_BYTES:
        raise InvalidParameterException("Invalid parameter: Message too long")
    if params.get("MessageDeduplicationId") is not None:
        raise InvalidParameterException(
            "Invalid parameter: MessageDeduplicationId Reason: The request includes MessageDeduplicationId "
            "parameter that is not valid for this topic type"
        )
    with call.store.begin() as conn:
        topic = topics.find(conn, arn, call.account_id, call.region)
        message_id, jobs = delivery.enqueue(
            conn, account_id=call.account_id, region=call.region, kind=delivery.NOTIFICATION,
            topic_arn=topic.arn,
            topic_policy=topic.attributes.get("DeliveryPolicy") or None,
            signature_version=topics.effective(topic, "SignatureVersion"), base_url=_base_url(call),
            targets=subscriptions.confirmed_for_delivery(conn, topic.arn), message=message, subject=subject,
            structure=structure, attributes=attributes or None,
        )  # fmt: skip
    _deliverer(call).dispatch(jobs)
    return {"MessageId": message_id}


# --- Tags ---------------------------------------------------------------------------------------------------
def _tag_map(pairs: list[dict[str, str]]) -> dict[str, str]:
    new = {pair["Key"]: pair["Value"] for pair in pairs}
    if any(key.lower().startswith("aws:") for key in new):
        raise InvalidParameterException(
            "Invalid parameter: Tags Reason: keys starting with aws: are reserved"
        )
    if len(new) > TAG_LIMIT:
        raise TagLimitExceededException("Could not complete request: tag quota of per resource exceeded")
    return new


def _tagged_topic(call: Call, conn: Any, arn: str) -> str:
    topics.owner(arn, call.account_id, call.region, "ResourceArn")
    if conn.execute(select(sns_topics.c.arn).where(sns_topics.c.arn == arn)).first() is None:
        raise ResourceNotFoundException("Resource does not exist")
    return arn


def tag_resource(call: Call, params: dict[str, Any]) -> None:
    new = _tag_map(params["Tags"])
    with call.store.begin() as conn:
        arn = _tagged_topic(call, conn, params["ResourceArn"])
        if tags.count_after(conn, arn, new) > TAG_LIMIT:
            raise TagLimitExceededException("Could not complete request: tag quota of per resource exceeded")
        tags.put(conn, arn, new)


def untag_resource(call: Call, params: dict[str, Any]) -> None:
    with call.store.begin() as conn:
        tags.remove(conn, _tagged_topic(call, conn, params["ResourceArn"]), params["TagKeys"])


def list_tags_for_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        found = tags.get(conn, _tagged_topic(call, conn, params["ResourceArn"]))
    return {"Tags": [{"Key": key, "Value": found[key]} for key in sorted(found)]}


def signing_certificate(server: Any, path: str) -> tuple[str, bytes] | None:
    return server.extras["sns.deliverer"].signer.certificate(path)


OPERATIONS: dict[str, Handler] = {
    "CreateTopic": create_topic,
    "DeleteTopic": delete_topic,
    "ListTopics": list_topics,
    "GetTopicAttributes": get_topic_attributes,
    "SetTopicAttributes": set_topic_attributes,
    "Subscribe": subscribe,
    "ConfirmSubscription": confirm_subscription,
    "Unsubscribe": unsubscribe,
    "ListSubscriptions": list_subscriptions,
    "ListSubscriptionsByTopic": list_subscriptions_by_topic,
    "GetSubscriptionAttributes": get_subscription_attributes,
    "SetSubscriptionAttributes": set_subscription_attributes,
    "Publish": publish,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTagsForResource": list_tags_for_resource,
}
# SubscribeURL and UnsubscribeURL: unsigned GETs (the token, or the subscription's ARN, is the secret).
UNSIGNED: dict[str, Handler] = {
    "ConfirmSubscription": confirm_subscription_by_url,
    "Unsubscribe": unsubscribe_by_url,
}
DOCUMENTS: dict[str, DocumentHandler] = {CERT_PREFIX: signing_certificate}
