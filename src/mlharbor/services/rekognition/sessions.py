"""What both kinds of stream processor session share: state changes guarded by the worker's attempt, and
the video: the processor's Kinesis Video stream, read through GetMedia (``video_input``)."""

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
RECONNECT_FIRST_S, RECONNECT_MAX_S = 1.0, 30.0  # a live source's reconnect backoff


def move(store: Store, arn: str, targets: dict[str, str], fence: Fence, **values: Any) -> str | None:
    return attempts.move(store, table, sp.STATES, arn, targets, fence=fence, **values)


def fail(store: Store, arn: str, fence: Fence, message: str) -> None:
    """FAILED with ``message``; a processor being stopped ends STOPPED, as its user asked."""
    log.warning("stream processor %s failed: %s", arn, message)
    targets = {"STARTING": "FAILED", "RUNNING": "FAILED", "STOPPING": "STOPPED"}
    move(store, arn, targets, fence, status_message=message)


def finish_stop(store: Store, arn: str, fence: Fence) -> None:
    move(store, arn, {"STOPPING": "STOPPED"}, fence, status_message=None)


def input_stream(row: Row[Any]) -> str:
    """The name of the processor's Kinesis Video stream (its Input ARN's name part)."""
    named = arns.named_stream(row.input_stream_arn)
    return named[2] if named else row.input_stream_arn


class Camera:
    """A processor's Kinesis Video stream as sampled frames (``engines.fragment_video``), reopened when the
    connection to Kinesis Video drops. ``catch_up``: read every sampled frame of the past (a connected home
    session started at an earlier position; a reopening resumes after the last fragment read) rather than
    only the newest (face search, which always looks at the live edge). Opening raises ``Unusable`` with
    AWS's StatusMessage when the stream does not exist."""

    def __init__(
        self, row: Row[Any], payload: dict[str, Any], selector: dict[str, Any] | None = None, *,
        catch_up: bool = False,
    ) -> None:  # fmt: skip
        from mlharbor.services.rekognition import video_input

        self.stream, self.fps, self.catch_up = input_stream(row), payload["fps"], catch_up
        self.connect = video_input.connector(
            payload["kvs"], row.region, row.account_id, self.stream, video_input.start_selector(selector)
        )
        self.source = self._open(None)

    def _open(self, resume_after: str | None) -> Any:
        from mlharbor.engines.fragment_video import FragmentVideoSource, VideoUnusable
        from mlharbor.engines.video import VideoError

        def connect(after: str | None) -> Any:
            return self.connect(after if after is not None else resume_after)

        source = FragmentVideoSource(
            connect, self.stream, fps=self.fps, max_side=1280, catch_up=self.catch_up
        )
        try:
            source.open()
        except VideoUnusable as exc:
            raise Unusable(str(exc)) from None
        except VideoError as exc:
            raise Unusable(f"Unable to read video stream {self.stream}: {exc}") from None
        return source

    @property
    def dropped(self) -> int:
        return int(self.source.dropped)

    def next(self, timeout: float) -> Any:
        """The newest frame (None after ``timeout``); raises ``engines.video.VideoError`` when it ends,
        ``Unusable`` when it can never be read again (the stream was deleted, its video is not H.264)."""
        from mlharbor.engines.fragment_video import VideoUnusable

        try:
            return self.source.next(timeout=timeout)
        except VideoUnusable as exc:
            raise Unusable(str(exc)) from None

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
        resume_after = self.source.last_fragment if self.catch_up else None
        while not stop() and (until is None or time.monotonic() < until):
            left = math.inf if until is None else until - time.monotonic()
            try:
                source = self._open(resume_after)
            except Unusable:
                ctx.wait_stop(max(0.0, min(delay, left)))
                delay = min(RECONNECT_MAX_S, delay * 2)
                continue
            self.source = source
            move(store, arn, same, fence, status_message=None)
            return True
        return False

    def close(self) -> None:
        self.source.close()


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a frame sits in its Kinesis Video stream, as the records report it."""

    fragment_number: str
    server_timestamp: float  # the fragment's, epoch seconds
    producer_timestamp: float  # the fragment's, epoch seconds
    offset: float  # seconds from the fragment's first frame to this one

    @classmethod
    def of(cls, frame: Any) -> Position:
        at = frame.fragment
        return cls(at.fragment_number, at.server_timestamp, at.producer_timestamp, at.offset)


class Unusable(Exception):
    """The session cannot run; ``str()`` is the StatusMessage (AWS's wording where it documents one)."""


class StoppedWhileStarting(Exception):
    """A stop arrived before the session was RUNNING."""
