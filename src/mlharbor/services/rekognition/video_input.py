"""A stream processor's video, read the way Rekognition reads it: GetDataEndpoint, then GetMedia on the
Kinesis Video stream the processor's Input names.

The Kinesis Video endpoint is this MLHarbor server by default, or whatever boto3's standard configuration
names when ``AWS_ENDPOINT_URL_KINESIS_VIDEO`` is set (``endpoints``), so a processor can analyse a stream
that lives elsewhere. The stream is named by the name in the Input ARN, in the processor's region: the
ARN's creation-time part is not compared (docs/COMPATIBILITY.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlharbor.engines.fragment_video import Answer, Connect, VideoUnusable, chunks_of
from mlharbor.engines.video import VideoError
from mlharbor.services.rekognition import endpoints

READ_TIMEOUT_S = 15.0  # GetMedia answers within this even when the stream is quiet (it ends the answer)


def not_found(name: str, account_id: str) -> str:
    return f"Stream {name} under account {account_id} not found"


def start_selector(kvs_start: dict[str, Any] | None) -> dict[str, Any]:
    """GetMedia's StartSelector for a KVSStreamStartSelector (ProducerTimestamp in ms, or a FragmentNumber
    to start at): NOW without one."""
    kvs_start = kvs_start or {}
    if "ProducerTimestamp" in kvs_start:
        at = datetime.fromtimestamp(kvs_start["ProducerTimestamp"] / 1000, tz=UTC)
        return {"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": at}
    if "FragmentNumber" in kvs_start:
        # GetMedia's FRAGMENT_NUMBER starts *after* the number; the session starts *at* it.
        before = str(max(0, int(kvs_start["FragmentNumber"]) - 1)).zfill(len(kvs_start["FragmentNumber"]))
        return {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": before}
    return {"StartSelectorType": "NOW"}


class _Answer:
    def __init__(self, payload: Any) -> None:
        self._payload = payload

    def __iter__(self) -> Any:
        return iter(chunks_of(self._payload))

    def close(self) -> None:
        self._payload.close()


def connector(
    kvs: dict[str, Any], region: str, account_id: str, name: str, selector: dict[str, Any]
) -> Connect:
    """``connect(after)`` for ``engines.fragment_video``: a GetMedia answer from ``selector`` (after None)
    or from the fragment after ``after``."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(
        retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=READ_TIMEOUT_S
    )
    args = endpoints.client_args(kvs, region, config)
    control = boto3.client("kinesisvideo", **args)

    def connect(after: str | None) -> Answer:
        start = (
            selector
            if after is None
            else {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": after}
        )
        try:
            endpoint = control.get_data_endpoint(StreamName=name, APIName="GET_MEDIA")["DataEndpoint"]
            media = boto3.client("kinesis-video-media", **{**args, "endpoint_url": endpoint})
            answer = media.get_media(StreamName=name, StartSelector=start)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise VideoUnusable(not_found(name, account_id)) from None
            if code in ("NotAuthorizedException", "AccessDeniedException"):
                raise VideoUnusable("Access denied to Kinesis Video") from None
            raise VideoError(f"cannot read stream {name}: {code or exc}") from None
        except BotoCoreError as exc:
            raise VideoError(f"cannot reach Kinesis Video for stream {name}: {exc}") from None
        return _Answer(answer["Payload"])

    return connect
