"""What Publish accepts (AWS's limits) and what arrives at an HTTP/S endpoint (AWS's JSON documents)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import regex

from mlharbor.errors import InvalidParameterException, InvalidParameterValueException

MAX_MESSAGE_BYTES = 256 * 1024  # the message and its attributes (names, types, values) together
MAX_SUBJECT = 99  # "less than 100 characters"
_CONTROL = regex.compile(r"[\x00-\x1f\x7f]")
_ATTRIBUTE_NAME = regex.compile(r"[A-Za-z0-9_.-]{1,256}")
_DATA_TYPE = regex.compile(r"(String|Number|Binary)(\..+)?", regex.DOTALL)
_NUMBER = regex.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def timestamp(when: float) -> str:
    """AWS's notification timestamp: 2012-05-02T00:54:06.655Z."""
    moment = datetime.fromtimestamp(when, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def check_subject(subject: str) -> None:
    if not subject or len(subject) > MAX_SUBJECT or _CONTROL.search(subject):
        raise InvalidParameterException(
            "Invalid parameter: Subject Reason: must be 1 to 99 characters, without line breaks or control "
            "characters"
        )


def check_structure(message: str, structure: str | None) -> None:
    """MessageStructure=json: the message is a JSON object of texts, one per protocol, with a default."""
    if structure is None:
        return
    if structure != "json":
        raise InvalidParameterException("Invalid parameter: MessageStructure Reason: the only value is json")
    try:
        texts = json.loads(message)
    except ValueError:
        texts = None
    if not isinstance(texts, dict):
        raise InvalidParameterException(
            "Invalid parameter: Message Structure - JSON message body failed to parse"
        )
    if not isinstance(texts.get("default"), str):
        raise InvalidParameterException(
            "Invalid parameter: Message Structure - No default entry in JSON message body"
        )
    if not all(isinstance(text, str) for text in texts.values()):
        raise InvalidParameterException(
            "Invalid parameter: Message Structure - every protocol's message must be a string"
        )


def for_protocol(message: str, structure: str | None, protocol: str) -> str:
    if structure != "json":
        return message
    texts = json.loads(message)
    return texts.get(protocol, texts["default"])


def check_attributes(attributes: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, str]], int]:
    """MessageAttributes as the Notification shows them ({name: {Type, Value}}), and their size in bytes."""
    shown: dict[str, dict[str, str]] = {}
    size = 0
    for name, attribute in attributes.items():
        lowered = name.lower()
        if (
            _ATTRIBUTE_NAME.fullmatch(name) is None
            or lowered.startswith(("aws.", "amazon."))
            or name.startswith(".")
            or name.endswith(".")
            or ".." in name
        ):
            raise InvalidParameterValueException(
                f"The message attribute name '{name}' is invalid. Attribute names can contain A-Z, a-z, 0-9, "
                "underscore (_), hyphen (-), and period (.), must not start or end with a period, have two "
                "periods in a row, or start with AWS. or Amazon."
            )
        data_type = attribute["DataType"]
        kind = _DATA_TYPE.fullmatch(data_type)
        if kind is None or len(data_type) > 256:
            raise InvalidParameterValueException(
                f"The message attribute '{name}' has an invalid message attribute type, the set of supported "
                "type prefixes is Binary, Number, and String."
            )
        if kind.group(1) == "Binary":
            data = attribute.get("BinaryValue")
            if not data:
                raise InvalidParameterValueException(
                    f"The message attribute '{name}' with type 'Binary' must use field 'Binary'."
                )
            value, value_size = base64.b64encode(data).decode("ascii"), len(data)
        else:
            value = attribute.get("StringValue")
            if not value:
                raise InvalidParameterValueException(
                    f"The message attribute '{name}' must contain non-empty message attribute value for "
                    f"message attribute type '{kind.group(1)}'."
                )
            if kind.group(1) == "Number" and _NUMBER.fullmatch(value) is None:
                raise InvalidParameterValueException(
                    f"Could not cast message attribute '{name}' value to number."
                )
            value_size = len(value.encode("utf-8"))
        shown[name] = {"Type": data_type, "Value": value}
        size += len(name.encode("utf-8")) + len(data_type.encode("utf-8")) + value_size
    return shown, size


def subscribe_url(base_url: str, topic_arn: str, token: str) -> str:
    return f"{base_url}/?Action=ConfirmSubscription&TopicArn={quote(topic_arn, safe='')}&Token={token}"


def unsubscribe_url(base_url: str, subscription_arn: str) -> str:
    return f"{base_url}/?Action=Unsubscribe&SubscriptionArn={quote(subscription_arn, safe='')}"


def confirmation_text(kind: str, topic_arn: str, subscription_arn: str) -> str:
    if kind == "SubscriptionConfirmation":
        return (
            f"You have chosen to subscribe to the topic {topic_arn}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        )
    return (
        f"You have chosen to deactivate subscription {subscription_arn}.\n"
        "To cancel this operation and restore the subscription, visit the SubscribeURL included in this "
        "message."
    )


def document(
    *,
    kind: str,
    message_id: str,
    topic_arn: str,
    subscription_arn: str,
    message: str,
    subject: str | None,
    attributes: dict[str, Any] | None,
    token: str | None,
    timestamp: str,
    signature_version: str,
    base_url: str,
    certificate_path: str,
) -> dict[str, Any]:
    """The JSON document, in AWS's key order, without its Signature (the caller signs it)."""
    if kind == "Notification":
        doc: dict[str, Any] = {"Type": kind, "MessageId": message_id, "TopicArn": topic_arn}
        if subject is not None:
            doc["Subject"] = subject
        doc.update(
            Message=message,
            Timestamp=timestamp,
            SignatureVersion=signature_version,
            Signature="",
            SigningCertURL=f"{base_url}{certificate_path}",
            UnsubscribeURL=unsubscribe_url(base_url, subscription_arn),
        )
        if attributes:
            doc["MessageAttributes"] = attributes
        return doc
    return {
        "Type": kind,
        "MessageId": message_id,
        "Token": token,
        "TopicArn": topic_arn,
        "Message": message,
        "SubscribeURL": subscribe_url(base_url, topic_arn, token or ""),
        "Timestamp": timestamp,
        "SignatureVersion": signature_version,
        "Signature": "",
        "SigningCertURL": f"{base_url}{certificate_path}",
    }


def encode(doc: dict[str, Any]) -> bytes:
    # AWS's layout: two-space indent, " : " between key and value.
    return json.dumps(doc, indent=2, separators=(",", " : "), ensure_ascii=False).encode("utf-8")
