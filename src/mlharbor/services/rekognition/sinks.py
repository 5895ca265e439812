"""Where stream processors put their results: a Kinesis data stream (face search), an SNS topic (connected
home notifications).

Both are this MLHarbor server's own Kinesis and SNS by default, or boto3's standard configuration
(``AWS_ENDPOINT_URL_KINESIS`` / ``AWS_ENDPOINT_URL_SNS``, credentials, the ARN's region) when the server
was told to use another endpoint (``endpoints``).

Records wait in a bounded buffer and go out with PutRecords; a failed call (Kinesis unreachable, throttled)
leaves them buffered and the next attempt waits with exponential backoff, so an outage never blocks the
analysis loop or crashes the worker. Past ``MAX_BUFFERED`` records the oldest are dropped (a
live stream cannot wait for ever); ``error`` says what is wrong until a call succeeds again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any

from mlharbor import arns
from mlharbor.services.rekognition import endpoints

log = logging.getLogger(__name__)

MAX_BATCH = 500  # PutRecords' limit
MAX_BUFFERED = 2_000  # ~6 minutes of records at 5 frames/s
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0


class SinkUnavailable(Exception):
    """The output stream does not exist or cannot be reached; ``str()`` is the processor's StatusMessage."""


class KinesisSink:
    def __init__(self, stream_arn: str, partition_key: str, endpoint: dict[str, Any] | None = None) -> None:
        import boto3
        from botocore.config import Config

        named = arns.named_stream(stream_arn)
        if named is None:
            raise SinkUnavailable(f"{stream_arn} is not a Kinesis data stream ARN")
        region, _, self.stream_name = named
        self.stream_arn = stream_arn
        self.partition_key = partition_key
        # One try per call, short timeouts: the analysis loop (and a Stop) never waits long on Kinesis; the
        # sink retries with backoff itself.
        config = Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=1)
        self._client = boto3.client("kinesis", **endpoints.client_args(endpoint, region, config))
        self._buffer: deque[bytes] = deque(maxlen=MAX_BUFFERED)
        self._backoff = 0.0
        self._next_try = 0.0
        self.error: str | None = None
        self.sent = 0
        self.dropped = 0

    def check(self) -> None:
        """Raise SinkUnavailable unless the stream exists (at start, so a wrong ARN fails the processor)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.describe_stream_summary(StreamARN=self.stream_arn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise SinkUnavailable(f"Stream {self.stream_name} doesn't exist") from None
            if "AccessDenied" in code or "Unrecognized" in code or "Signature" in code:
                raise SinkUnavailable("Access denied to Kinesis Data") from None
            raise SinkUnavailable(f"Kinesis data stream {self.stream_name} is unavailable ({code})") from None
        except BotoCoreError as exc:
            raise SinkUnavailable(f"Kinesis data stream {self.stream_name} is unreachable: {exc}") from None

    def put(self, record: dict[str, Any]) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append(json.dumps(record, separators=(",", ":")).encode())

    def flush(self) -> bool:
        """Send what is buffered unless backing off; True when the buffer is empty afterwards."""
        from botocore.exceptions import BotoCoreError, ClientError

        while self._buffer and time.monotonic() >= self._next_try:
            batch = [self._buffer[i] for i in range(min(MAX_BATCH, len(self._buffer)))]
            try:
                response = self._client.put_records(
                    StreamARN=self.stream_arn,
                    Records=[{"Data": data, "PartitionKey": self.partition_key} for data in batch],
                )
            except (ClientError, BotoCoreError) as exc:
                log.debug("PutRecords to %s failed: %s", self.stream_name, exc)
                self._failed(
                    f"Kinesis data stream {self.stream_name} is unavailable; records are kept and retried"
                )
                return False
            results = response.get("Records", [])
            failed = [data for data, r in zip(batch, results, strict=False) if "ErrorCode" in r]
            for _ in batch:
                self._buffer.popleft()
            self.sent += len(batch) - len(failed)
            if failed:  # throttled records go back in front, in order
                self._buffer.extendleft(reversed(failed))
                self._failed(
                    f"Kinesis data stream {self.stream_name} is throttling; records are kept and retried"
                )
                return False
            self._backoff, self.error = 0.0, None
        return not self._buffer

    def _failed(self, error: str) -> None:
        if self.error != error:
            log.warning("%s", error)
        self.error = error
        self._backoff = min(MAX_BACKOFF_S, max(FIRST_BACKOFF_S, self._backoff * 2))
        self._next_try = time.monotonic() + self._backoff


class NotificationUnavailable(Exception):
    """The SNS topic does not exist or cannot be reached; ``str()`` is the processor's StatusMessage."""


class Notifier:
    """Connected home notifications: SNS Publish to the processor's topic, subject "Rekognition Stream
    Processing Event", the message a JSON document."""

    SUBJECT = "Rekognition Stream Processing Event"

    def __init__(self, topic_arn: str, endpoint: dict[str, Any] | None = None) -> None:
        import boto3
        from botocore.config import Config

        parsed = arns.parse(topic_arn)
        self.topic_arn = topic_arn
        config = Config(retries={"total_max_attempts": 3}, connect_timeout=1, read_timeout=2)
        self._client = boto3.client(
            "sns", **endpoints.client_args(endpoint, parsed.region if parsed else None, config)
        )

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.get_topic_attributes(TopicArn=self.topic_arn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NotFound", "NotFoundException", "ResourceNotFoundException"):
                raise NotificationUnavailable(f"SNS topic {self.topic_arn} doesn't exist") from None
            raise NotificationUnavailable(f"Access denied to SNS topic {self.topic_arn} ({code})") from None
        except BotoCoreError as exc:
            raise NotificationUnavailable(f"SNS topic {self.topic_arn} is unreachable: {exc}") from None

    def publish(self, message: dict[str, Any]) -> bool:
        """Send one notification; False (logged) when SNS refuses it: a notification is not worth
        stopping the session for."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.publish(TopicArn=self.topic_arn, Subject=self.SUBJECT, Message=json.dumps(message))
            return True
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not notify %s: %s", self.topic_arn, exc)
            return False
