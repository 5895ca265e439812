"""``mlharbor put-media``: the built-in producer (``puller.Puller``) run from a shell, against any Kinesis
Video endpoint (this server by default).

It puts a video file (played at its own speed and looped, like a camera), an RTSP or an HTTP source into an
existing Kinesis Video stream with PutMedia until it is interrupted (Ctrl-C, SIGTERM), then ends its request
cleanly so the last fragment is stored. Credentials and region come from boto3's standard configuration,
else MLHarbor's default ``test``/``test`` in us-east-1.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

DEFAULT_ENDPOINT = "http://127.0.0.1:4580"


class _Interruptible:
    """The ``WorkContext`` the puller expects, stopped by a signal instead of an executor."""

    work_id = "put-media"

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self._stop = threading.Event()
        self.progress: dict[str, Any] = {}

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_stop(self, timeout: float) -> bool:
        return self._stop.wait(timeout)

    def heartbeat(self, progress: dict[str, Any] | None = None) -> None:
        error = (progress or {}).get("error")
        if error and error != self.progress.get("error"):
            print(f"put-media: {error}", file=sys.stderr, flush=True)
        self.progress = progress or self.progress


def _credentials(region: str | None) -> tuple[str, str, str]:
    import botocore.session

    session = botocore.session.get_session()
    found = session.get_credentials()
    key, secret = (found.access_key, found.secret_key) if found is not None else ("test", "test")
    return key, secret, region or session.get_config_variable("region") or "us-east-1"


def run(stream_name: str, source: str, endpoint_url: str, region: str | None) -> int:
    from mlharbor.services.kinesisvideo.puller import DEFAULT_ROTATE_SECONDS, Puller

    access_key, secret_key, region = _credentials(region)
    payload = {
        "stream_name": stream_name, "url": source, "region": region, "endpoint": endpoint_url.rstrip("/"),
        "access_key": access_key, "secret_key": secret_key, "rotate_seconds": DEFAULT_ROTATE_SECONDS,
    }  # fmt: skip
    ctx = _Interruptible(payload)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, ctx.request_stop)
    print(f"put-media: {source} -> Kinesis Video stream {stream_name} at {endpoint_url} (Ctrl-C stops)",
          file=sys.stderr, flush=True)  # fmt: skip
    result = Puller(ctx, payload).run()
    print(f"put-media: stopped; {result.get('persisted', 0)} fragments stored", file=sys.stderr, flush=True)
    return 0
