"""PutMedia: a producer streams MKV into a Kinesis Video stream and reads ACKs on the same connection.

The request's headers name the stream and how to read its timecodes; the body is one long MKV (EBML header,
a Segment, Info, Tracks, then Clusters, each one fragment). The answer is ``200`` at once, then one JSON
ACK per line while the body is still arriving (full duplex over HTTP/1.1, which uvicorn supports):

- ``BUFFERING`` when a fragment's Cluster starts (its number is given here),
- ``RECEIVED`` when its last byte has arrived,
- ``PERSISTED`` once it is durable: its object written (fsynced) and its index row committed. A stream
  with DataRetentionInHours 0 keeps fragments only for live readers, and gets no PERSISTED (as AWS),
- ``ERROR`` with AWS's ErrorId, after which the request ends (fragments already RECEIVED are still stored
  and ACKed first: the ERROR goes through the persister's queue, behind them),
- ``IDLE`` while the connection is open but no data comes; after ``video_idle_close_seconds`` the request
  is ended.

Three tasks share the connection: the reader parses the body and answers BUFFERING/RECEIVED, the persister
stores complete fragments one at a time (in order, in a thread: the object store and the database block),
and the writer sends whatever ACK comes next. A producer that disconnects loses only the fragment it was
sending. Problems found in the headers are ordinary HTTP errors, raised before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from mlharbor import errors
from mlharbor.context import Call
from mlharbor.engines import mkv
from mlharbor.services.kinesisvideo import fragments, streams
from mlharbor.services.kinesisvideo.live import Live, LiveFragment, hub

log = logging.getLogger("mlharbor.kinesisvideo.ingest")

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_FRAGMENT_BYTES = 50 * 1024 * 1024
MAX_FRAGMENT_SECONDS = 10.0
MAX_TRACKS = 3

# ErrorIds of ERROR ACKs (AWS's PutMedia documentation; the producer SDK's client/Include.h).
ERROR_READING = 4000
FRAGMENT_TOO_LARGE = 4001
FRAGMENT_TOO_LONG = 4002
CONNECTION_TOO_LONG = 4003
TIMECODE_BACKWARDS = 4004
INVALID_MKV = 4006
INVALID_PRODUCER_TIMESTAMP = 4007
STREAM_NOT_ACTIVE = 4008
TRACK_NOT_IN_HEADER = 4010
TRACK_WITHOUT_FRAMES = 4011
TOO_MANY_TRACKS = 4012
FAILED_TO_PERSIST = 5001


class IngestError(Exception):
    def __init__(self, error_id: int, message: str) -> None:
        super().__init__(message)
        self.error_id = error_id


@dataclass(frozen=True)
class Limits:
    idle_ack_seconds: float
    idle_close_seconds: float
    max_connection_seconds: float


@dataclass
class _Fragment:
    number: str
    timecode: int
    producer_ts: float
    server_ts: float
    first_frame_tc: int | None = None
    last_frame_tc: int | None = None
    frames: int = 0
    tracks_seen: set[int] = field(default_factory=set)


def _header(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _parse_request(headers: dict[str, list[str]]) -> tuple[dict[str, str], str, Decimal | None]:
    name, arn = _header(headers, "x-amzn-stream-name"), _header(headers, "x-amzn-stream-arn")
    if (name is None) == (arn is None):
        raise errors.InvalidArgumentException(
            "Exactly one of x-amzn-stream-name or x-amzn-stream-arn is required."
        )
    timecode_type = _header(headers, "x-amzn-fragment-timecode-type")
    if timecode_type not in ("ABSOLUTE", "RELATIVE"):
        raise errors.InvalidArgumentException("x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE.")
    raw_start = _header(headers, "x-amzn-producer-start-timestamp")
    start: Decimal | None = None
    if raw_start is not None:
        try:
            start = Decimal(raw_start)
        except InvalidOperation:
            start = None
        if start is None or not start.is_finite() or start < 0:
            raise errors.InvalidArgumentException(
                "x-amzn-producer-start-timestamp must be epoch seconds (for example 1700000000.123)."
            )
    elif timecode_type == "RELATIVE":
        raise errors.InvalidArgumentException("RELATIVE timecodes need x-amzn-producer-start-timestamp.")
    stream = {"StreamName": name} if name is not None else {"StreamARN": arn}
    return stream, timecode_type, start  # type: ignore[return-value]


async def put_media(call: Call, headers: dict[str, list[str]], receive: Receive, send: Send) -> None:
    settings = call.server.settings
    live = hub(call.server)
    limits = Limits(
        settings.video_idle_ack_seconds,
        settings.video_idle_close_seconds,
        settings.video_max_connection_seconds,
    )
    stream_params, timecode_type, start = _parse_request(headers)
    with call.store.read() as conn:
        try:
            row = streams.find(conn, call.account_id, call.region, stream_params)
        except errors.ResourceNotFoundException:
            row = None
        if row is None or row.status != "ACTIVE":
            raise errors.ResourceNotFoundException(streams.NOT_FOUND)
        last = fragments.last_number(conn, row.arn)
    if not live.claim(row.arn):
        raise errors.ConnectionLimitExceededException(
            f"Stream {row.name} already has a PutMedia connection; only one is allowed per stream."
        )
    try:
        session = _Session(call, row, timecode_type, start, last, live, limits)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-amzn-requestid", call.request_id.encode()),
                # The request ends when the response does; what is left of the body is not read.
                (b"connection", b"close"),
            ],
        })  # fmt: skip
        await session.run(receive, send)
    finally:
        live.release(row.arn)


class _Session:
    def __init__(
        self, call: Call, row: Any, timecode_type: str, start: Decimal | None, last: str | None,
        live: Live, limits: Limits,
    ) -> None:  # fmt: skip
        self.call = call
        self.arn: str = row.arn
        self.incarnation: str = row.incarnation
        self.retention_hours: int = row.retention_hours
        self.absolute = timecode_type == "ABSOLUTE"
        self.start = float(start) if start is not None else 0.0
        self.last_number = last
        self.live = live
        self.limits = limits
        self.parser = mkv.MkvParser(max_element=MAX_FRAGMENT_BYTES)
        self.header: mkv.Header | None = None
        self.max_fragment_ticks = 0.0
        self.fragment: _Fragment | None = None
        self.previous_end: float | None = None  # producer time of the previous fragment's last frame
        self.acks: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        # Complete fragments to store, and an ERROR ACK to send once those before it are stored.
        self.to_store: asyncio.Queue[tuple[_Fragment, bytes] | dict[str, Any] | None] = asyncio.Queue()
        self.opened = time.monotonic()
        self.frame_step = 0.0  # seconds between frames, as last measured (see _store)
        self.reader: asyncio.Task[None] | None = None
        self.last_data = self.opened

    # --- the three tasks ------------------------------------------------------------------------------
    async def run(self, receive: Receive, send: Send) -> None:
        reader = self.reader = asyncio.create_task(self._read(receive))
        persister = asyncio.create_task(self._persist())
        connected = True
        try:
            while True:
                try:
                    ack = await asyncio.wait_for(self.acks.get(), self.limits.idle_ack_seconds)
                except TimeoutError:
                    idle = time.monotonic() - self.last_data
                    if idle >= self.limits.idle_close_seconds and not reader.done():
                        reader.cancel()
                    if reader.done() or idle < self.limits.idle_ack_seconds:
                        continue
                    ack = {"EventType": "IDLE"}
                if ack is None:
                    break
                if connected:
                    connected = await _send(
                        send, (json.dumps(ack, separators=(",", ":")) + "\n").encode(), True
                    )
            if connected:
                await _send(send, b"", False)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await persister

    async def _read(self, receive: Receive) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self._drop()
                    break
                self.last_data = time.monotonic()
                if self.last_data - self.opened > self.limits.max_connection_seconds:
                    raise IngestError(CONNECTION_TOO_LONG, "The connection has been open too long.")
                ended = not message.get("more_body", False)
                self._feed(message.get("body", b""), ended)
                if ended:
                    break
        except asyncio.CancelledError:
            self._drop()  # idle too long, or the server is stopping
        except IngestError as exc:
            self._error(exc.error_id, str(exc))
        finally:
            self.to_store.put_nowait(None)

    async def _persist(self) -> None:
        """Store complete fragments in arrival order; a stream deleted meanwhile ends the request."""
        failed = False
        while (item := await self.to_store.get()) is not None:
            if isinstance(item, dict):  # the reader's ERROR: every fragment received before it is done
                if not failed:
                    self.acks.put_nowait(item)
                continue
            fragment, data = item
            if failed:
                self.live.stored(self.arn, fragment.number)
                continue
            try:
                stored = await asyncio.to_thread(self._store, fragment, data)
            except Exception:
                log.exception("storing fragment %s of %s failed", fragment.number, self.arn)
                stored = None
            self.live.stored(self.arn, fragment.number)
            if not stored:
                error_id = FAILED_TO_PERSIST if stored is None else STREAM_NOT_ACTIVE
                self.acks.put_nowait(self._ack("ERROR", fragment, ErrorId=error_id))
                failed = True
                if self.reader is not None:
                    self.reader.cancel()  # nothing more can be stored: stop taking the body
                continue
            if self.retention_hours > 0:
                self.acks.put_nowait(self._ack("PERSISTED", fragment))
        self.acks.put_nowait(None)

    # --- parsing events -------------------------------------------------------------------------------------
    def _feed(self, data: bytes, ended: bool) -> None:
        events: list[mkv.Event] = []
        try:
            events = self.parser.feed(data)
            if ended:
                events += self.parser.end()
        except mkv.MkvError as exc:
            # The fragments completed before the bad bytes are stored (and ACKed) before the ERROR.
            self._handle(events + exc.events)
            raise IngestError(INVALID_MKV, str(exc)) from None
        self._handle(events)

    def _handle(self, events: list[mkv.Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is mkv.Frame:  # most events are frames: test for them first
                self._on_frame(event)  # type: ignore[arg-type]
            elif kind is mkv.ClusterStart:
                self._on_cluster(event)  # type: ignore[arg-type]
            elif kind is mkv.ClusterEnd:  # (Tags events are off: a producer's tags are not kept)
                self._on_cluster_end(event)  # type: ignore[arg-type]
            elif kind is mkv.Header:
                self._on_header(event)  # type: ignore[arg-type]
        if self.fragment is not None and self.parser.cluster_bytes > MAX_FRAGMENT_BYTES:
            raise IngestError(FRAGMENT_TOO_LARGE, f"A fragment is larger than {MAX_FRAGMENT_BYTES} bytes.")

    def _on_header(self, header: mkv.Header) -> None:
        if len(header.tracks) > MAX_TRACKS:
            raise IngestError(
                TOO_MANY_TRACKS, f"The stream has {len(header.tracks)} tracks; at most {MAX_TRACKS}."
            )
        if not header.tracks:
            raise IngestError(INVALID_MKV, "The Tracks element declares no track.")
        self.header = header
        # FRAGMENT_TOO_LONG in timecode ticks, so that the per-frame check is one comparison.
        self.max_fragment_ticks = MAX_FRAGMENT_SECONDS * 1e9 / header.timecode_scale

    def _seconds(self, timecode: int) -> float:
        assert self.header is not None
        return timecode * self.header.timecode_scale / 1e9

    def _on_cluster(self, event: mkv.ClusterStart) -> None:
        assert self.header is not None
        producer_ts = self._seconds(event.timecode) + (0.0 if self.absolute else self.start)
        now = time.time()
        self.last_number = fragments.next_number(self.last_number, now)
        self.fragment = _Fragment(self.last_number, event.timecode, producer_ts, now)
        if self.previous_end is not None and producer_ts < self.previous_end:
            raise IngestError(TIMECODE_BACKWARDS, "The fragment starts before the previous one ended.")
        self.acks.put_nowait(self._ack("BUFFERING", self.fragment))
        self.live.begin(
            self.arn, LiveFragment(self.last_number, self.header.raw, producer_ts, now, event.timecode)
        )

    def _on_frame(self, frame: mkv.Frame) -> None:
        assert self.header is not None and self.fragment is not None
        if frame.track not in self.header.tracks:
            raise IngestError(
                TRACK_NOT_IN_HEADER, f"A frame is on track {frame.track}, which Tracks does not declare."
            )
        fragment = self.fragment
        timecode = frame.timecode
        if fragment.first_frame_tc is None:
            fragment.first_frame_tc = timecode
        if fragment.last_frame_tc is None or timecode > fragment.last_frame_tc:
            fragment.last_frame_tc = timecode
            if timecode - fragment.timecode > self.max_fragment_ticks:
                raise IngestError(
                    FRAGMENT_TOO_LONG, f"A fragment is longer than {MAX_FRAGMENT_SECONDS:g} seconds."
                )
        fragment.frames += 1
        fragment.tracks_seen.add(frame.track)
        self.live.frame(self.arn, frame.raw)

    def _on_cluster_end(self, event: mkv.ClusterEnd) -> None:
        assert self.header is not None and self.fragment is not None
        fragment, self.fragment = self.fragment, None
        missing = set(self.header.tracks) - fragment.tracks_seen
        if missing:
            self.fragment = fragment  # reported with the fragment's number, then dropped
            raise IngestError(TRACK_WITHOUT_FRAMES, f"Track {min(missing)} has no frames in the fragment.")
        if fragment.last_frame_tc is not None:
            self.previous_end = fragment.producer_ts + self._seconds(
                fragment.last_frame_tc - fragment.timecode
            )
        self.acks.put_nowait(self._ack("RECEIVED", fragment))
        self.live.end(self.arn)
        self.to_store.put_nowait((fragment, event.document(self.header.raw)))

    def _error(self, error_id: int, message: str) -> None:
        log.info("PutMedia on %s: ERROR %d: %s", self.arn, error_id, message)
        ack: dict[str, Any] = {"EventType": "ERROR", "ErrorId": error_id}
        if self.fragment is not None:
            ack.update(FragmentTimecode=self.fragment.timecode, FragmentNumber=self.fragment.number)
        self._drop()
        self.to_store.put_nowait(ack)

    def _drop(self) -> None:
        if self.fragment is not None:
            self.fragment = None
            self.live.end(self.arn, dropped=True)

    def _ack(self, event_type: str, fragment: _Fragment, **extra: Any) -> dict[str, Any]:
        return {
            "EventType": event_type, "FragmentTimecode": fragment.timecode, "FragmentNumber": fragment.number,
            **extra,
        }  # fmt: skip

    # --- storing (in a worker thread) -----------------------------------------------------------------------
    def _store(self, fragment: _Fragment, data: bytes) -> bool:
        assert self.header is not None
        settings = self.call.server.settings
        uri = fragments.blob_uri(settings.video_bucket, self.arn, fragment.number)
        span = 0.0
        if fragment.last_frame_tc is not None:
            span = self._seconds(fragment.last_frame_tc - fragment.timecode)
        # A fragment lasts from its first frame to the end of its last: one frame's duration past the last
        # timecode (the tracks' DefaultDuration, else the fragment's own frame spacing, else the previous
        # fragment's: a fragment of one frame has no spacing of its own).
        tracks = sorted(self.header.tracks.values(), key=lambda t: t.type != 1)  # video tracks first
        declared = [t.default_duration_ns for t in tracks if t.default_duration_ns]
        if declared:
            self.frame_step = declared[0] / 1e9
        elif fragment.frames > 1:
            self.frame_step = span / (fragment.frames - 1)
        step = self.frame_step
        persisted = self.retention_hours > 0
        keep = self.retention_hours * 3600.0 if persisted else settings.video_live_buffer_seconds
        stored = fragments.Stored(
            stream_arn=self.arn, fragment_number=fragment.number, producer_ts=round(fragment.producer_ts, 3),
            server_ts=round(fragment.server_ts, 3), fragment_timecode=fragment.timecode,
            duration_ms=round((span + step) * 1000), size_bytes=len(data), header_len=len(self.header.raw),
            frames=fragment.frames, blob_uri=str(uri), persisted=persisted,
            expires_at=fragment.server_ts + keep,
        )  # fmt: skip
        self.call.server.blobs.put(uri, data)
        with self.call.store.begin() as conn:
            recorded = fragments.record(conn, stored, self.incarnation)
        if not recorded:
            self.call.server.blobs.delete(uri)
        return recorded


async def _send(send: Send, body: bytes, more: bool) -> bool:
    """False once the producer has gone (then nothing more is sent, but storing goes on)."""
    try:
        await send({"type": "http.response.body", "body": body, "more_body": more})
    except (OSError, RuntimeError):
        return False
    return True
