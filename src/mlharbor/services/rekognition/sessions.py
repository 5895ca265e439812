"""What both kinds of stream processor session share: state changes guarded by the worker's attempt, the
video source, and the stand-in for Kinesis Video fragment positions."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Row

from mlharbor import arns
from mlharbor.services import attempts
from mlharbor.services.attempts import Fence
from mlharbor.services.rekognition import stream_processors as sp
from mlharbor.store.db import Store
from mlharbor.store.tables import stream_processors as table

log = logging.getLogger(__name__)

ACTIVE = frozenset({"STARTING", "RUNNING"})
HEARTBEAT_S = 1.0
FRAGMENT_SECONDS = 2.0  # Kinesis Video's usual fragment length
RECONNECT_FIRST_S, RECONNECT_MAX_S = 1.0, 30.0  # a live source's reconnect backoff
OPEN_TIMEOUT_S, MIN_OPEN_TIMEOUT_S = 10.0, 2.0  # opening a source (and, after that, each read)


def move(store: Store, arn: str, targets: dict[str, str], fence: Fence, **values: Any) -> str | None:
    return attempts.move(store, table, sp.STATES, arn, targets, fence=fence, **values)


def fail(store: Store, arn: str, fence: Fence, message: str) -> None:
    """FAILED with ``message``; a processor being stopped ends STOPPED, as its user asked."""
    log.warning("stream processor %s failed: %s", arn, message)
    targets = {"STARTING": "FAILED", "RUNNING": "FAILED", "STOPPING": "STOPPED"}
    move(store, arn, targets, fence, status_message=message)


def finish_stop(store: Store, arn: str, fence: Fence) -> None:
    move(store, arn, {"STOPPING": "STOPPED"}, fence, status_message=None)


def video_url(row: Row[Any], payload: dict[str, Any]) -> tuple[str, str]:
    """(stream name, URL) of the processor's Kinesis Video stream in the server's video-stream table."""
    named = arns.named_stream(row.input_stream_arn)
    stream = named[2] if named else row.input_stream_arn
    url = payload["video_streams"].get(stream)
    if url is None:
        raise Unusable(f"Stream {stream} under account {row.account_id} not found")
    return stream, url


class Camera:
    """A processor's video source (``engines.video.VideoSource``), reopened when a live one drops. Frame
    positions (``stream_seconds``) keep growing across reopenings, so fragment numbers, offsets and
    durations never go back. Opening raises ``Unusable`` with AWS's "Unable to read video stream" text."""

    def __init__(self, url: str, stream: str, fps: float) -> None:
        self.url, self.stream, self.fps = url, stream, fps
        self.source = self._open(OPEN_TIMEOUT_S)
        self._offset = self._last = 0.0  # seconds added to the current source's positions; last returned

    def _open(self, timeout: float) -> Any:
        from mlharbor.engines.video import VideoError, VideoSource

        source = VideoSource(self.url, fps=self.fps, max_side=1280)
        try:
            source.open(timeout=timeout)
        except VideoError as exc:
            raise Unusable(f"Unable to read video stream {self.stream}: {exc}") from None
        return source

    @property
    def is_file(self) -> bool:
        return bool(self.source.is_file)

    @property
    def dropped(self) -> int:
        return int(self.source.dropped)

    def next(self, timeout: float) -> Any:
        """The newest frame (None after ``timeout``); raises ``engines.video.VideoError`` when it ends."""
        frame = self.source.next(timeout=timeout)
        if frame is None:
            return None
        if self._offset:
            frame = dataclasses.replace(frame, stream_seconds=frame.stream_seconds + self._offset)
        self._last = frame.stream_seconds
        return frame

    def reopen(
        self, ctx: Any, store: Store, arn: str, fence: Fence, stop: Callable[[], bool], error: Exception,
        until: float | None = None,
    ) -> bool:  # fmt: skip
        """After ``error`` ended a live source (camera gone, network down): open it again with backoff while
        the processor keeps its status, its StatusMessage saying why. False if a stop came first (or
        ``until``, a monotonic time, passed)."""
        delay = RECONNECT_FIRST_S
        message = f"Reconnecting to video stream {self.stream}: {error}"
        log.warning("stream processor %s: %s", arn, message)
        same = {"STARTING": "STARTING", "RUNNING": "RUNNING"}
        move(store, arn, same, fence, status_message=message)
        self.source.close()
        while not stop() and (until is None or time.monotonic() < until):
            left = math.inf if until is None else until - time.monotonic()
            try:
                # The open timeout is also the source's read timeout: never below MIN_OPEN_TIMEOUT_S.
                source = self._open(max(MIN_OPEN_TIMEOUT_S, min(OPEN_TIMEOUT_S, left)))
            except Unusable:
                ctx.wait_stop(max(0.0, min(delay, left)))
                delay = min(RECONNECT_MAX_S, delay * 2)
                continue
            self.source, self._offset = source, self._last + 1.0 / self.fps
            move(store, arn, same, fence, status_message=None)
            return True
        return False

    def close(self) -> None:
        self.source.close()


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a frame sits in MLHarbor's stand-in for Kinesis Video fragments (``FRAGMENT_SECONDS``
    slices of the session, numbered from a base that grows with the session's start time)."""

    fragment_number: str
    server_timestamp: float  # the slice's start, as decoded here
    producer_timestamp: float  # the slice's start, as captured
    offset: float  # seconds from the slice's start to the frame

    @classmethod
    def of(cls, frame: Any, base: int) -> Position:
        fragment = int(frame.stream_seconds // FRAGMENT_SECONDS)
        offset = frame.stream_seconds - fragment * FRAGMENT_SECONDS
        return cls(
            str(base + fragment),
            round(frame.received_time - offset, 3),
            round(frame.producer_time - offset, 3),
            round(offset, 3),
        )


def fragment_base() -> int:
    return int(time.time() * 1000) * 100_000


class Unusable(Exception):
    """The session cannot run; ``str()`` is the StatusMessage (AWS's wording where it documents one)."""


class StoppedWhileStarting(Exception):
    """A stop arrived before the session was RUNNING."""
