"""Video streams (Kinesis Video): the account's streams, and for each one its fragments on a timeline, the
archive played back from any point, the live edge as a still refreshed every second, and the frame a
stream processor's record names (FragmentNumber and FrameOffsetInSeconds, or a timestamp).

Pages read ``video_streams`` and ``video_fragments`` directly, always for the signed-in account and
region. The media routes (``clip.mp4``, ``frame.jpg``) use what GetClip and GetImages use
(``archive.get_clip``, ``engines/clips``), with their limits, in a worker thread: remuxing and decoding
never run on the event loop. A stream of another account is 404, on the pages and the media routes alike.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Integer, cast, func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mlharbor import errors
from mlharbor.blobs import BlobNotFound
from mlharbor.console import timeline
from mlharbor.console.session import Who
from mlharbor.console.web import Paging, console_of, data, error, page, render
from mlharbor.context import Call, Server
from mlharbor.engines import clips
from mlharbor.services.kinesisvideo import archive, fragments, streams
from mlharbor.store import tables as t

log = logging.getLogger(__name__)

WINDOWS = {"10m": 600, "1h": 3600, "24h": 86400}  # the timeline's choices: the last ... before now
DEFAULT_WINDOW = "10m"
COLUMNS = 500  # timeline resolution: fragments are grouped per 1/COLUMNS of the window in the database
CLIP_SECONDS = 60.0  # a clip played from a point of the timeline lasts this long (at most)
LIVE_CLIP_SECONDS = 30.0
MAX_WIDTH = 1920  # frame.jpg?width= at most this
# frame.jpg?width= is rounded up to one of these (the page asks for 960), so the stills cache is shared.
WIDTHS = (160, 320, 640, 960, 1280, MAX_WIDTH)
LATEST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the last second a datetime can hold
JPEG_QUALITY = 85
FRAME_CACHE = 64  # encoded stills kept (per server): the live edge asked for every second is one decode
_KINDS = {"server": "SERVER_TIMESTAMP", "producer": "PRODUCER_TIMESTAMP"}


class Refused(Exception):
    """A media request that cannot be answered: its JSON error."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _unavailable(what: str, exc: Exception) -> Refused:
    """The object store (S3) failed to answer: logged, and a 503 for the page."""
    log.warning("console: reading %s from the object store failed: %r", what, exc)
    return Refused("ServiceUnavailableException", "The object store cannot be read right now.", 503)


def _owner(who: Who) -> Any:
    return (t.video_streams.c.account_id == who.account_id) & (t.video_streams.c.region == who.region)


def _latest_fragment_at(now: float) -> Any:
    """The server time of a stream's newest fragment (walks the (stream_arn, server_ts) index backwards)."""
    vf = t.video_fragments
    return (
        select(vf.c.server_ts)
        .where(vf.c.stream_arn == t.video_streams.c.arn, vf.c.expires_at > now)
        .order_by(vf.c.server_ts.desc())
        .limit(1)
        .scalar_subquery()
    )


# --- the list ----------------------------------------------------------------------------------------------
async def video_list(request: Request, who: Who) -> Response:
    paging = Paging.of(request)
    vs = t.video_streams
    query = (
        select(
            vs.c.name, vs.c.status, vs.c.media_type, vs.c.retention_hours, vs.c.created_at,
            _latest_fragment_at(time.time()).label("latest"),
        )
        .where(_owner(who))
        .order_by(vs.c.name)
        .offset(paging.offset)
        .limit(paging.limit)
    )  # fmt: skip
    with console_of(request).server.store.read() as conn:
        rows, more = paging.split(conn.execute(query).all())
    return render(request, who, "videos.html", section="videos", streams=rows, paging=paging, more=more)


# --- one stream --------------------------------------------------------------------------------------------
def _find(server: Server, who: Who, name: str) -> Any:
    with server.store.read() as conn:
        try:
            return streams.find(conn, who.account_id, who.region, {"StreamName": name})
        except errors.AwsError:
            return None


def _spans(server: Server, arn: str, start: float, end: float, now: float) -> list[timeline.Span]:
    """The fragments starting in [start - lookback, end], grouped by the database into COLUMNS columns
    (a day of 1 s fragments is 86,400 rows: never read one by one), then merged where they touch."""
    vf = t.video_fragments
    width = (end - start) / COLUMNS
    position = (vf.c.server_ts - start) / width
    column = func.floor(position) if server.store.dialect == "postgresql" else cast(position, Integer)
    query = (
        select(
            column.label("col"),
            func.min(vf.c.server_ts),
            func.max(vf.c.server_ts + vf.c.duration_ms / 1000.0),
            func.count(),
            func.sum(vf.c.size_bytes),
        )
        .where(
            vf.c.stream_arn == arn,
            vf.c.server_ts >= start - archive.FRAGMENT_LOOKBACK_SECONDS,
            vf.c.server_ts <= end,
            vf.c.expires_at > now,
        )
        .group_by("col")
    )
    with server.store.read() as conn:
        rows = conn.execute(query).all()
    spans = [timeline.Span(float(r[1]), float(r[2]), int(r[3]), int(r[4] or 0)) for r in rows]
    # Fragments over about 4 px wide stay bars of their own; narrower ones are drawn as what they cover.
    return [
        s
        for s in timeline.merge(spans, width / 2, distinct=4 * (end - start) / timeline.WIDTH)
        if s.end > start
    ]


def _stream_view(server: Server, row: Any, window: str) -> dict[str, Any]:
    now = time.time()
    start = now - WINDOWS[window]
    spans = _spans(server, row.arn, start, now, now)
    with server.store.read() as conn:
        latest = fragments.latest(conn, row.arn, now)
    covered = sum(min(s.end, now) - max(s.start, start) for s in spans)
    return {
        "timeline": timeline.svg(spans, start, now),
        "window_start": start,
        "window_end": now,
        "fragment_count": sum(s.count for s in spans),
        "fragment_bytes": sum(s.size for s in spans),
        "covered": covered,
        "gaps": max(0, len(spans) - 1),
        "latest": latest,
    }


async def video_page(request: Request, who: Who) -> Response:
    server = console_of(request).server
    name = request.path_params["name"]
    row = _find(server, who, name)
    if row is None:
        response = render(request, who, "video.html", section="videos", missing=name)
        response.status_code = 404
        return response
    window = request.query_params.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    view = await run_in_threadpool(_stream_view, server, row, window)
    return render(
        request, who, "video.html", section="videos", stream=row, window=window, windows=list(WINDOWS),
        clip_seconds=int(CLIP_SECONDS), live_seconds=int(LIVE_CLIP_SECONDS), **view,
    )  # fmt: skip


# --- media -------------------------------------------------------------------------------------------------
def instant(text: str) -> float:
    """A time as epoch seconds (milliseconds when it is that large, as some records carry) or ISO 8601
    (UTC unless it says otherwise), from 1970 to the end of year 9999 (UTC)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            value = moment.timestamp()
        except (ValueError, OverflowError):
            raise Refused("InvalidArgumentException", f"Not a time: {text[:64]!r}.") from None
    else:
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise Refused("InvalidArgumentException", f"Not a time: {text[:64]!r}.")
        value = value / 1000 if value > 1e11 else value
    if not 0 <= value <= LATEST_TIME:
        raise Refused(
            "InvalidArgumentException", f"Time out of range: {text[:64]!r} (1970 to the end of 9999, UTC)."
        )
    return value


def _number(request: Request, name: str, default: float | None = None) -> float | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise Refused("InvalidArgumentException", f"{name} must be a number.") from None
    if value != value or value < 0 or value == float("inf"):
        raise Refused("InvalidArgumentException", f"{name} must be a number of at least 0.")
    return value


def _kind(request: Request) -> fragments.TimestampKind:
    kind = _KINDS.get(request.query_params.get("kind", "server").lower())
    if kind is None:
        raise Refused("InvalidArgumentException", "kind must be server or producer.")
    return kind  # type: ignore[return-value]


def _call(server: Server, who: Who, operation: str) -> Call:
    return Call(
        server, "kinesis-video-archived-media", operation, who.account_id, who.region, str(uuid.uuid4())
    )


def _when(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):  # past year 9999 (or before 1970 on some platforms)
        raise Refused("InvalidArgumentException", f"Time out of range: {seconds!r}.") from None


def _clip(server: Server, who: Who, name: str, kind: fragments.TimestampKind, start: float | None,
          end: float | None, last: float | None) -> bytes:  # fmt: skip
    """GetClip's MP4 from ``start`` (moved back to the start of the fragment holding it, so the clip shows
    that instant) to ``end``, or of the ``last`` seconds before now."""
    call = _call(server, who, "GetClip")
    if last is not None:
        end = time.time()
        start = end - last
    assert start is not None and end is not None
    row = _find(server, who, name)
    if row is None:
        raise Refused("ResourceNotFoundException", streams.NOT_FOUND, 404)
    with server.store.read() as conn:
        holding = fragments.at_time(conn, row.arn, kind, start, time.time())
    if holding is not None:
        begins = holding.producer_ts if kind == "PRODUCER_TIMESTAMP" else holding.server_ts
        start = min(start, begins)
    params = {
        "StreamName": name,
        "ClipFragmentSelector": {
            "FragmentSelectorType": kind,
            "TimestampRange": {"StartTimestamp": _when(start), "EndTimestamp": _when(end)},
        },
    }
    try:
        return archive.get_clip(call, params)["Payload"]
    except (BotoCoreError, ClientError) as exc:
        raise _unavailable(f"a clip of {name}", exc) from None


async def clip(request: Request, who: Who) -> Response:
    """GET /console/videos/{name}/clip.mp4?start=&end=[&kind=server|producer] or ?last=SECONDS."""
    try:
        kind = _kind(request)
        last = _number(request, "last")
        if last is not None:
            start = end = None
            last = min(max(last, 1.0), archive.CLIP_MAX_SECONDS)
        else:
            text = request.query_params.get("start", "")
            if not text:
                raise Refused("InvalidArgumentException", "start (or last) is required.")
            start = instant(text)
            end_text = request.query_params.get("end", "")
            end = instant(end_text) if end_text else min(start + CLIP_SECONDS, LATEST_TIME)
        payload = await run_in_threadpool(
            _clip, console_of(request).server, who, request.path_params["name"], kind, start, end, last
        )
    except Refused as exc:
        return error(exc.code, exc.message, exc.status)
    except errors.AwsError as exc:
        return error(exc.code, exc.message, exc.status)
    except (OverflowError, ValueError) as exc:  # a time no datetime holds (_when refuses those already)
        return error("InvalidArgumentException", f"Cannot make that clip: {exc}.", 400)
    # ?last= names a different clip every time (the seconds before now): never replayed from a cache.
    cache = "no-store" if last is not None else "private, max-age=60"
    return Response(payload, media_type="video/mp4", headers={"Cache-Control": cache})


class _Stills:
    """The last stills encoded (per server): the live edge asked for every second by every open page is one
    decode per new fragment."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: OrderedDict[tuple[Any, ...], tuple[bytes, dict[str, str]]] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> tuple[bytes, dict[str, str]] | None:
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
            return hit

    def put(self, key: tuple[Any, ...], value: tuple[bytes, dict[str, str]]) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > FRAME_CACHE:
                self.items.popitem(last=False)


def _stills(server: Server) -> _Stills:
    return server.extras.setdefault("console.video_stills", _Stills())


def _frame(server: Server, who: Who, name: str, query: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A JPEG of the frame ``query`` names: the latest one, the one at an instant, or the one at an offset
    into a fragment; and headers saying where it is."""
    row = _find(server, who, name)
    if row is None:
        raise Refused("ResourceNotFoundException", streams.NOT_FOUND, 404)
    now = time.time()
    with server.store.read() as conn:
        if query.get("fragment"):
            found = fragments.by_numbers(conn, row.arn, [query["fragment"]], now).get(query["fragment"])
            if found is None:
                raise Refused("ResourceNotFoundException", f"Fragment {query['fragment']} is not found.", 404)
            offset = query.get("offset") or 0.0
        elif query.get("at") is None:
            found = fragments.latest(conn, row.arn, now)
            offset = 1e9  # the last frame of the newest fragment
            if found is None:
                raise Refused("ResourceNotFoundException", archive.NO_FRAGMENTS, 404)
        else:
            kind, at = query["kind"], query["at"]
            found = fragments.at_time(conn, row.arn, kind, at, now)
            if found is None:
                raise Refused("ResourceNotFoundException", archive.NO_FRAGMENTS, 404)
            begins = found.producer_ts if kind == "PRODUCER_TIMESTAMP" else found.server_ts
            offset = max(0.0, at - begins)
    width = query.get("width")  # one of WIDTHS, or None
    key = (found.stream_arn, found.fragment_number, round(offset, 3), width)
    cached = _stills(server).get(key)
    if cached is not None:
        return cached
    try:
        header, cluster = fragments.read(server.blobs, found)
    except BlobNotFound:
        raise Refused("ResourceNotFoundException", archive.NO_FRAGMENTS, 404) from None
    except (BotoCoreError, ClientError) as exc:
        raise _unavailable(f"fragment {found.fragment_number}", exc) from None
    try:
        (picture,) = clips.frames_at(header + cluster, found.fragment_timecode, [offset])
    except clips.ClipError as exc:
        raise Refused("InvalidMediaFrameException", str(exc), 422) from None
    size = clips.output_size(picture.width, picture.height, int(width) if width else None, None)
    content = clips.encode_image(picture, "JPEG", JPEG_QUALITY, size)
    shown = offset
    if picture.pts is not None and picture.time_base is not None:
        shown = max(0.0, float((picture.pts - found.fragment_timecode) * picture.time_base))
    headers = {
        "X-Fragment-Number": found.fragment_number,
        "X-Frame-Offset": f"{shown:.3f}",
        "X-Producer-Timestamp": f"{found.producer_ts + shown:.3f}",
        "X-Server-Timestamp": f"{found.server_ts + shown:.3f}",
    }
    _stills(server).put(key, (content, headers))
    return content, headers


def _bucket(width: float) -> int:
    """A requested width rounded up to one of WIDTHS (at most MAX_WIDTH): few sizes, so stills are shared."""
    return next((w for w in WIDTHS if w >= width), MAX_WIDTH)


async def frame(request: Request, who: Who) -> Response:
    """GET /console/videos/{name}/frame.jpg?at=latest | at=TIME[&kind=server|producer][&offset=S]
    | fragment=NUMBER[&offset=S] (FrameOffsetInSeconds), [&width=PX (rounded up to one of WIDTHS)]."""
    try:
        query: dict[str, Any] = {"offset": _number(request, "offset")}
        width = _number(request, "width")
        query["width"] = _bucket(width) if width else None
        number = request.query_params.get("fragment", "").strip()
        at = request.query_params.get("at", "latest").strip() or "latest"
        if number:
            if not (number.isascii() and number.isdigit() and len(number) <= 128):
                raise Refused("InvalidArgumentException", "FragmentNumber must be digits.")
            query["fragment"] = number
        elif at != "latest":
            query["kind"] = _kind(request)
            query["at"] = instant(at) + (query["offset"] or 0.0)
        content, headers = await run_in_threadpool(
            _frame, console_of(request).server, who, request.path_params["name"], query
        )
    except Refused as exc:
        return error(exc.code, exc.message, exc.status)
    return Response(content, media_type="image/jpeg", headers=headers)


ROUTES: list[BaseRoute] = [
    Route("/console/videos", page(video_list)),
    Route("/console/videos/{name}", page(video_page)),
    Route("/console/videos/{name}/clip.mp4", data(clip)),
    Route("/console/videos/{name}/frame.jpg", data(frame)),
]
