"""Every ARN MLHarbor builds or parses, in one place."""

from __future__ import annotations

from dataclasses import dataclass

PARTITION = "aws"


@dataclass(frozen=True, slots=True)
class Arn:
    partition: str
    service: str
    region: str
    account_id: str
    resource: str  # e.g. "streamprocessor/name" or "entity-recognizer/name/version/v1"

    @property
    def resource_type(self) -> str:
        return self.resource.split("/", 1)[0]

    def __str__(self) -> str:
        return f"arn:{self.partition}:{self.service}:{self.region}:{self.account_id}:{self.resource}"


def parse(arn: str) -> Arn | None:
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return None
    return Arn(parts[1], parts[2], parts[3], parts[4], parts[5])


def stream_processor(region: str, account_id: str, name: str) -> str:
    return str(Arn(PARTITION, "rekognition", region, account_id, f"streamprocessor/{name}"))


def collection(region: str, account_id: str, collection_id: str) -> str:
    return str(Arn(PARTITION, "rekognition", region, account_id, f"collection/{collection_id}"))


def entity_recognizer(region: str, account_id: str, name: str, version_name: str | None = None) -> str:
    resource = f"entity-recognizer/{name}" + (f"/version/{version_name}" if version_name else "")
    return str(Arn(PARTITION, "comprehend", region, account_id, resource))


def entity_recognizer_endpoint(region: str, account_id: str, name: str) -> str:
    return str(Arn(PARTITION, "comprehend", region, account_id, f"entity-recognizer-endpoint/{name}"))


def entities_detection_job(region: str, account_id: str, job_id: str) -> str:
    return str(Arn(PARTITION, "comprehend", region, account_id, f"entities-detection-job/{job_id}"))


def video_stream(region: str, account_id: str, name: str, created_ms: int) -> str:
    """Kinesis Video's stream ARN ends with the creation time in epoch milliseconds."""
    return str(Arn(PARTITION, "kinesisvideo", region, account_id, f"stream/{name}/{created_ms}"))


def kinesis_stream(region: str, account_id: str, name: str) -> str:
    return str(Arn(PARTITION, "kinesis", region, account_id, f"stream/{name}"))


def named_stream(arn: str) -> tuple[str, str, str] | None:
    """(region, account, NAME) of a Kinesis data stream (``...:kinesis:R:A:stream/NAME``) or Kinesis Video
    stream (``...:kinesisvideo:R:A:stream/NAME/CREATION-TIME``) ARN; None if it names no stream."""
    parsed = parse(arn)
    if parsed is None or parsed.resource_type != "stream":
        return None
    parts = parsed.resource.split("/")
    return (parsed.region, parsed.account_id, parts[1]) if len(parts) > 1 and parts[1] else None


# --- SNS: a topic is arn:aws:sns:REGION:ACCOUNT:NAME; a subscription is the topic's ARN, ":", and a UUID.
def sns_topic(region: str, account_id: str, name: str) -> str:
    return str(Arn(PARTITION, "sns", region, account_id, name))


def sns_subscription(topic_arn: str, subscription_id: str) -> str:
    return f"{topic_arn}:{subscription_id}"


def sns_parts(arn: str) -> tuple[str, str, str, str | None] | None:
    """(region, account, topic name, subscription id or None) of an SNS topic or subscription ARN; None if the
    text is no SNS ARN."""
    parsed = parse(arn)
    if parsed is None or parsed.service != "sns" or not parsed.region or not parsed.account_id:
        return None
    name, colon, subscription = parsed.resource.partition(":")
    if not name or ":" in subscription or (colon and not subscription):
        return None
    return parsed.region, parsed.account_id, name, subscription or None
