"""GetMedia (``kinesis-video-media``): a stream's fragments as one long MKV, from a start selector onwards,
then live.

Every fragment goes out as a complete MKV document, as AWS sends it: the EBML header, a Segment, Info and
Tracks, a Tags element with the fragment's number and its server and producer timestamps, the Cluster,
then a Tags element with ``AWS_KINESISVIDEO_MILLIS_BEHIND_NOW`` and ``AWS_KINESISVIDEO_CONTINUATION_TOKEN``
(the fragment's number: a reader resumes after it with the CONTINUATION_TOKEN selector).

Fragments come from the index and the object store. At the live edge, a reader on the server that holds the
producer's connection gets the fragment being received frame by frame as the frames arrive (its Cluster
then has an unknown size, ended by the next fragment's EBML header); elsewhere a reader gets each fragment
once it is stored, finding it by polling the index. A reader that has caught up and gets nothing new for
``video_get_media_idle_seconds`` is answered to the end, and resumes with its continuation token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from mlharbor.blobs import BlobNotFound
from mlharbor.context import Call
from mlharbor.engines import mkv
from mlharbor.errors import InvalidArgumentException, ResourceNotFoundException
from mlharbor.services.kinesisvideo import fragments, streams
from mlharbor.services.kinesisvideo.live import Live, LiveFragment, hub

CONTENT_TYPE = "video/webm"
POLL_SECONDS = 0.25  # a reader on another server finds a new fragment within this


def _stamp(seconds: float) -> str:
    return f"{seconds:.3f}"


def leading_tags(number: str, server_ts: float, producer_ts: float) -> bytes:
    return mkv.tags({
        "AWS_KINESISVIDEO_FRAGMENT_NUMBER": number,
        "AWS_KINESISVIDEO_SERVER_TIMESTAMP": _stamp(server_ts),
        "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP": _stamp(producer_ts),
    })  # fmt: skip


def trailing_tags(number: str, server_ts: float, now: float) -> bytes:
    return mkv.tags({
        "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW": str(max(0, round((now - server_ts) * 1000))),
        "AWS_KINESISVIDEO_CONTINUATION_TOKEN": number,
    })  # fmt: skip


def document(fragment: fragments.Stored, header: bytes, cluster: bytes, now: float) -> bytes:
    """One stored fragment as GetMedia and GetMediaForFragmentList send it."""
    return b"".join((
        header,
        leading_tags(fragment.fragment_number, fragment.server_ts, fragment.producer_ts),
        cluster,
        trailing_tags(fragment.fragment_number, fragment.server_ts, now),
    ))  # fmt: skip


def error_document(code: str, error_id: int) -> bytes:
    """What AWS puts in the stream instead of a fragment it cannot give (its number is unknown or gone)."""
    return mkv.tags({"AWS_KINESISVIDEO_ERROR_CODE": code, "AWS_KINESISVIDEO_ERROR_ID": str(error_id)})


def _before(number: str) -> str:
    """A cursor just before ``number``: the fragment itself is the next one after it."""
    return str(int(number) - 1).zfill(fragments.DIGITS)


def _start_cursor(call: Call, arn: str, selector: dict[str, Any], now: float) -> tuple[str | None, bool]:
    """(the fragment number to read after, whether to start with the fragment being received now)."""
    kind = selector["StartSelectorType"]
    with call.store.read() as conn:
        if kind == "EARLIEST":
            return None, False
        if kind == "NOW":
            latest = fragments.latest(conn, arn, now)
            return (latest.fragment_number if latest else None), True
        if kind in ("FRAGMENT_NUMBER", "CONTINUATION_TOKEN"):
            field = "AfterFragmentNumber" if kind == "FRAGMENT_NUMBER" else "ContinuationToken"
            value = selector.get(field)
            if value is None:
                raise InvalidArgumentException(f"StartSelectorType {kind} needs {field}.")
            if not (value.isascii() and value.isdigit() and len(value) <= 128):  # the model: ^[0-9]+$, 1-128
                raise InvalidArgumentException(f"The {field} {value!r} is not a fragment number.")
            # Numbers are compared as 47-digit strings: a longer one (the model allows 128 digits) would
            # compare by its first digits, so one beyond every fragment is capped rather than cut.
            return str(min(int(value), 10**fragments.DIGITS - 1)).zfill(fragments.DIGITS), False
        at = selector.get("StartTimestamp")
        if at is None:
            raise InvalidArgumentException(f"StartSelectorType {kind} needs StartTimestamp.")
        found = fragments.at_time(conn, arn, kind, at.timestamp(), now)
        if found is not None:
            return _before(found.fragment_number), False
        latest = fragments.latest(conn, arn, now)
        return (latest.fragment_number if latest else None), False


def get_media(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        row = streams.find(conn, call.account_id, call.region, params)
    if row.status != "ACTIVE":
        raise ResourceNotFoundException(streams.NOT_FOUND)
    now = time.time()
    cursor, take_live = _start_cursor(call, row.arn, params["StartSelector"], now)
    idle = call.server.settings.video_get_media_idle_seconds
    return {"ContentType": CONTENT_TYPE, "Payload": _tail(call, row.arn, cursor, take_live, idle)}


async def _tail(
    call: Call, arn: str, cursor: str | None, take_live: bool, idle: float
) -> AsyncIterator[bytes]:
    live = hub(call.server)
    quiet_since = time.monotonic()
    while True:
        now = time.time()
        with call.store.read() as conn:
            if not streams.exists(conn, arn):
                return
            following = fragments.after(conn, arn, cursor, now, limit=1)
        current = live.receiving(arn)
        if following:
            fragment = following[0]
            try:
                header, cluster = await asyncio.to_thread(fragments.read, call.server.blobs, fragment)
            except BlobNotFound:
                # It expired, and the retention pass deleted it, since the index was read: as gone as if it
                # had expired a moment earlier (the reader goes on with the next one, not a cut response).
                cursor = fragment.fragment_number
                continue
            yield document(fragment, header, cluster, time.time())
            cursor, quiet_since = fragment.fragment_number, time.monotonic()
            continue
        if (
            current is not None
            and (cursor is None or current.number > cursor)
            and (take_live or not live.pending_after(arn, cursor))
        ):
            async for piece in _live_fragment(live, arn, current):
                yield piece
            cursor, quiet_since, take_live = current.number, time.monotonic(), False
            continue
        take_live = False
        left = idle - (time.monotonic() - quiet_since)
        if left < 0:
            return
        yield b""  # lets the gateway see a reader that went away
        # No longer than the idle time left: the response ends when it is up, not at the next poll.
        await live.wait(arn, min(POLL_SECONDS, left + 0.001))


async def _live_fragment(live: Live, arn: str, fragment: LiveFragment) -> AsyncIterator[bytes]:
    """The fragment being received, frame by frame as the producer sends it."""
    yield b"".join((
        fragment.header,
        leading_tags(fragment.number, fragment.server_ts, fragment.producer_ts),
        mkv.cluster_start_unknown(fragment.timecode),
    ))  # fmt: skip
    sent = 0
    while True:
        if sent < len(fragment.frames):
            frames = fragment.frames[sent:]
            sent += len(frames)
            yield b"".join(frames)
            continue
        if fragment.done:
            break
        yield b""
        await live.wait(arn, POLL_SECONDS)
    if not fragment.dropped:
        yield trailing_tags(fragment.number, fragment.server_ts, time.time())


OPERATIONS = {"GetMedia": get_media}
