"""Kinesis Video archived media (``kinesis-video-archived-media``): the persisted fragments of a stream
listed, played back by number, cut into an MP4 clip, or sampled as images. One small function per operation.

Only persisted fragments count: a stream with DataRetentionInHours 0 keeps fragments for live readers only,
so ListFragments lists nothing there and GetClip/GetImages answer NoDataRetentionException (as AWS).
HLS and DASH sessions are not implemented (the front door answers 501).

Decisions where AWS is silent:

- ListFragments without FragmentSelector (and without NextToken) lists every archived fragment (the
  selector was optional when the API came out). ``MaxResults`` defaults to 1,000, the maximum. Fragments come
  in fragment-number order (AWS promises no order). ``NextToken`` is signed, base64-wrapped, bound to the
  stream, and carries the selector: a FragmentSelector sent with it is ignored. A StartTimestamp after
  EndTimestamp is InvalidArgumentException.
- GetMediaForFragmentList sends the fragments in the order given (a number given twice is sent twice). A
  number that is not an archived fragment of the stream gets, in its place, a Tags element with
  ``AWS_KINESISVIDEO_FRAGMENT_NUMBER``, the model's ``AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE`` (4000) and
  ``AWS_KINESISVIDEO_EXCEPTION_MESSAGE``, and GetMedia's ``AWS_KINESISVIDEO_ERROR_CODE`` /
  ``AWS_KINESISVIDEO_ERROR_ID`` (what the parser library reads); the other fragments still follow.
- GetClip's timeline is the producer's: the clip starts at its first fragment and a gap between fragments
  stays a gap (the last frame is held). The clip ends before a fragment whose tracks differ from the
  first one's (a producer that restarted with other settings). G.711 audio is left out (MP4 as FFmpeg
  writes it cannot hold it). The End-in-the-past rule for SERVER_TIMESTAMP is not enforced.
- GetImages: one image per instant Start, Start + SamplingInterval, ... up to End inclusive; SamplingInterval
  defaults to 3,000 ms (its minimum before it became optional); the image is the frame on screen at the
  instant (the last one at or before it). Only WidthPixels or only HeightPixels keeps the aspect ratio
  (AWS's pages disagree: one says ValidationException). Pages hold min(MaxResults, 25) images; NextToken
  must come with the same stream, selector, range and interval.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import av

from mlharbor import errors
from mlharbor.api.services import Handler, blocking
from mlharbor.blobs import BlobNotFound
from mlharbor.context import Call
from mlharbor.engines import clips, mkv
from mlharbor.services.kinesisvideo import fragments, media, streams

LIST_DEFAULT = 1000
CLIP_MAX_FRAGMENTS = 200
CLIP_MAX_BYTES = 100 * 1024 * 1024
CLIP_MAX_SECONDS = 24 * 3600
IMAGES_MAX_SECONDS = 300
IMAGES_MIN_INTERVAL_MS = 200
IMAGES_DEFAULT_INTERVAL_MS = 3000
IMAGES_PAGE = 25
JPEG_DEFAULT_QUALITY = 80
IMAGE_CONTENT_MAX = 6_291_456  # the model's limit on ImageContent (base64 characters)
# A fragment lasts at most 10 s (PutMedia's rule; AWS may allow 20 s): the one holding an instant starts
# no earlier than this before it.
FRAGMENT_LOOKBACK_SECONDS = 30.0
FRAGMENT_NOT_FOUND = 4000
NO_FRAGMENTS = "No fragments found in the requested time range."


# --- shared -------------------------------------------------------------------------------------------
def _stream(call: Call, params: dict[str, Any]) -> Any:
    with call.store.read() as conn:
        row = streams.find(conn, call.account_id, call.region, params)
    if row.status != "ACTIVE":
        raise errors.ResourceNotFoundException(streams.NOT_FOUND)
    return row


def _archived(call: Call, params: dict[str, Any]) -> Any:
    """The stream, which must keep an archive (GetClip, GetImages)."""
    row = _stream(call, params)
    if row.retention_hours == 0:
        raise errors.NoDataRetentionException(
            f"The stream {row.name} has no data retention: its fragments are not archived."
        )
    return row


def _seconds(value: datetime) -> float:
    return value.timestamp()


def _range(selector: dict[str, Any]) -> tuple[float, float]:
    span = selector["TimestampRange"]
    return _seconds(span["StartTimestamp"]), _seconds(span["EndTimestamp"])


def _wrap(call: Call, position: dict[str, Any]) -> str:
    """Kinesis Video's tokens are base64 (``[a-zA-Z0-9+/]+={0,2}``): the signed token travels inside."""
    return base64.b64encode(call.server.pager.encode(call.page_scope(), position).encode()).decode("ascii")


def _unwrap(call: Call, token: str) -> dict[str, Any]:
    try:
        inner = base64.b64decode(token, validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise errors.BadPaginationToken("The pagination token is not valid.") from None
    return call.server.pager.decode(call.page_scope(), inner)


# --- ListFragments ------------------------------------------------------------------------------------
def list_fragments(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _stream(call, params)
    limit = params.get("MaxResults", LIST_DEFAULT)
    if params.get("NextToken"):
        position = _unwrap(call, params["NextToken"])
        if position.get("a") != row.arn:
            raise errors.InvalidArgumentException("The pagination token belongs to another stream.")
        kind, start, end, after = position["k"], position["s"], position["e"], position["n"]
    elif "FragmentSelector" in params:
        kind = params["FragmentSelector"]["FragmentSelectorType"]
        start, end = _range(params["FragmentSelector"])
        if start > end:
            raise errors.InvalidArgumentException("StartTimestamp must not be after EndTimestamp.")
        after = None
    else:
        kind, start, end, after = "SERVER_TIMESTAMP", 0.0, 1e15, None
    with call.store.read() as conn:
        found = fragments.in_range(conn, row.arn, kind, start, end, time.time(), after, limit + 1)
    result: dict[str, Any] = {"Fragments": [_listed(f) for f in found[:limit]]}
    if len(found) > limit:
        position = {"a": row.arn, "k": kind, "s": start, "e": end, "n": found[limit - 1].fragment_number}
        result["NextToken"] = _wrap(call, position)
    return result


def _listed(fragment: fragments.Stored) -> dict[str, Any]:
    return {
        "FragmentNumber": fragment.fragment_number,
        "FragmentSizeInBytes": fragment.size_bytes,
        "ProducerTimestamp": fragment.producer_ts,
        "ServerTimestamp": fragment.server_ts,
        "FragmentLengthInMilliseconds": fragment.duration_ms,
    }


# --- GetMediaForFragmentList --------------------------------------------------------------------------
def get_media_for_fragment_list(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _stream(call, params)
    numbers: list[str] = params["Fragments"]
    with call.store.read() as conn:
        found = fragments.by_numbers(conn, row.arn, sorted(set(numbers)), time.time())
    return {"ContentType": media.CONTENT_TYPE, "Payload": _documents(call, numbers, found)}


async def _documents(
    call: Call, numbers: list[str], found: dict[str, fragments.Stored]
) -> AsyncIterator[bytes]:
    for number in numbers:
        fragment = found.get(number)
        if fragment is None:
            yield _not_found(number)
            continue
        try:
            header, cluster = await asyncio.to_thread(fragments.read, call.server.blobs, fragment)
        except BlobNotFound:  # expired and deleted since the index was read
            yield _not_found(number)
            continue
        yield media.document(fragment, header, cluster, time.time())


def _not_found(number: str) -> bytes:
    """In place of a fragment that is not there: the model's exception tags and GetMedia's error tags."""
    return mkv.tags({
        "AWS_KINESISVIDEO_FRAGMENT_NUMBER": number,
        "AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE": str(FRAGMENT_NOT_FOUND),
        "AWS_KINESISVIDEO_EXCEPTION_MESSAGE": f"Fragment {number} is not found.",
        "AWS_KINESISVIDEO_ERROR_CODE": "Requested fragment is not found",
        "AWS_KINESISVIDEO_ERROR_ID": str(FRAGMENT_NOT_FOUND),
    })  # fmt: skip


# --- GetClip ------------------------------------------------------------------------------------------
@blocking
def get_clip(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _archived(call, params)
    selector = params["ClipFragmentSelector"]
    kind = selector["FragmentSelectorType"]
    start, end = _range(selector)
    if end <= start:
        raise errors.InvalidArgumentException("EndTimestamp must be later than StartTimestamp.")
    if end - start > CLIP_MAX_SECONDS:
        raise errors.InvalidArgumentException("EndTimestamp must be within 24 hours of StartTimestamp.")
    with call.store.read() as conn:
        found = fragments.in_range(conn, row.arn, kind, start, end, time.time(), None, CLIP_MAX_FRAGMENTS)
    chosen, total = [], 0
    for fragment in found:
        total += fragment.size_bytes
        if chosen and total > CLIP_MAX_BYTES:
            break
        chosen.append(fragment)
    if not chosen:
        raise errors.ResourceNotFoundException(NO_FRAGMENTS)
    try:
        payload = clips.remux_mp4(_pieces(call, chosen))
    except clips.ClipError as exc:
        raise _clip_error(exc) from None
    return {"ContentType": "video/mp4", "Payload": payload}


def _pieces(call: Call, chosen: list[fragments.Stored]) -> Iterator[clips.Piece]:
    """The fragments read one at a time, checked against AWS's rules; the clip ends at the first fragment
    whose tracks differ from the first one's."""
    origin = chosen[0].producer_ts
    first: dict[int, mkv.Track] | None = None
    for fragment in chosen:
        try:
            header, cluster = fragments.read(call.server.blobs, fragment)
        except BlobNotFound:  # expired and deleted meanwhile
            continue
        try:
            tracks = clips.header_tracks(header)
        except mkv.MkvError as exc:
            raise clips.InvalidMedia(str(exc)) from None
        if first is None:
            clips.check_clip_tracks(tracks)
            first = tracks
        elif tracks != first:
            return
        yield clips.Piece(header + cluster, fragment.fragment_timecode, fragment.producer_ts - origin)


def _clip_error(exc: clips.ClipError) -> errors.AwsError:
    if isinstance(exc, clips.NoMedia):
        return errors.ResourceNotFoundException(NO_FRAGMENTS)
    if isinstance(exc, clips.UnsupportedMedia):
        return errors.UnsupportedStreamMediaTypeException(str(exc))
    if isinstance(exc, clips.MissingCodecPrivate):
        return errors.MissingCodecPrivateDataException(str(exc))
    if isinstance(exc, clips.InvalidCodecPrivate):
        return errors.InvalidCodecPrivateDataException(str(exc))
    return errors.InvalidMediaFrameException(str(exc))


# --- GetImages ----------------------------------------------------------------------------------------
@blocking
def get_images(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _archived(call, params)
    kind = params["ImageSelectorType"]
    start, end = _seconds(params["StartTimestamp"]), _seconds(params["EndTimestamp"])
    interval = params.get("SamplingInterval", IMAGES_DEFAULT_INTERVAL_MS)
    if end < start:
        raise errors.InvalidArgumentException("EndTimestamp must not be before StartTimestamp.")
    if end - start > IMAGES_MAX_SECONDS:
        raise errors.InvalidArgumentException(
            f"EndTimestamp must be within {IMAGES_MAX_SECONDS} seconds of StartTimestamp."
        )
    if interval < IMAGES_MIN_INTERVAL_MS:
        raise errors.InvalidArgumentException(
            f"SamplingInterval must be at least {IMAGES_MIN_INTERVAL_MS} ms."
        )
    quality = _quality(params)
    count = math.floor((end - start) * 1000 / interval + 1e-6) + 1
    request = [kind, start, end, interval]
    first = 0
    if params.get("NextToken"):
        position = _unwrap(call, params["NextToken"])
        if position.get("a") != row.arn or position.get("q") != request:
            raise errors.InvalidArgumentException("The pagination token belongs to another request.")
        first = position["k"]
    page = min(params.get("MaxResults", IMAGES_PAGE), IMAGES_PAGE)
    instants = [round(start + k * interval / 1000, 6) for k in range(first, min(count, first + page))]
    size = (params.get("WidthPixels"), params.get("HeightPixels"))
    result: dict[str, Any] = {
        "Images": _images(call, row.arn, kind, instants, params["Format"], quality, size)
    }
    if first + page < count:
        result["NextToken"] = _wrap(call, {"a": row.arn, "q": request, "k": first + page})
    return result


def _quality(params: dict[str, Any]) -> int:
    value = params.get("FormatConfig", {}).get("JPEGQuality")
    if value is None:
        return JPEG_DEFAULT_QUALITY
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise errors.InvalidArgumentException("JPEGQuality must be an integer from 1 to 100.")
    return int(value)


def _images(
    call: Call, arn: str, kind: fragments.TimestampKind, instants: list[float], image_format: str,
    quality: int, size: tuple[int | None, int | None],
) -> list[dict[str, Any]]:  # fmt: skip
    if not instants:
        return []
    with call.store.read() as conn:
        nearby = fragments.starting_between(
            conn, arn, kind, instants[0] - FRAGMENT_LOOKBACK_SECONDS, instants[-1], time.time()
        )
    # Each instant goes to the latest-starting fragment that holds it ([start, start + length)).
    holders: dict[str, tuple[fragments.Stored, list[int]]] = {}
    for i, at in enumerate(instants):
        holder = None
        for fragment in nearby:
            begins = fragment.producer_ts if kind == "PRODUCER_TIMESTAMP" else fragment.server_ts
            if begins > at + clips.EPSILON:
                break
            if at < begins + fragment.duration_ms / 1000:
                holder = fragment
        if holder is not None:
            holders.setdefault(holder.fragment_number, (holder, []))[1].append(i)
    images: list[dict[str, Any]] = [{"TimeStamp": at, "Error": "NO_MEDIA"} for at in instants]
    for fragment, indexes in holders.values():
        begins = fragment.producer_ts if kind == "PRODUCER_TIMESTAMP" else fragment.server_ts
        offsets = [instants[i] - begins for i in indexes]
        for i, content in zip(
            indexes, _stills(call, fragment, offsets, image_format, quality, size), strict=True
        ):
            images[i] = {"TimeStamp": instants[i], **content}
    return images


def _stills(
    call: Call, fragment: fragments.Stored, offsets: list[float], image_format: str, quality: int,
    size: tuple[int | None, int | None],
) -> list[dict[str, Any]]:  # fmt: skip
    """ImageContent (or MEDIA_ERROR) for each offset into the fragment."""
    try:
        header, cluster = fragments.read(call.server.blobs, fragment)
    except BlobNotFound:  # expired and deleted meanwhile
        return [{"Error": "NO_MEDIA"}] * len(offsets)
    try:
        frames = clips.frames_at(header + cluster, fragment.fragment_timecode, offsets)
    except clips.ClipError:
        return [{"Error": "MEDIA_ERROR"}] * len(offsets)
    out: list[dict[str, Any]] = []
    encoded: dict[int, dict[str, Any]] = {}  # instants on the same frame share its image
    for frame in frames:
        if id(frame) not in encoded:
            encoded[id(frame)] = _encode(frame, image_format, quality, size)
        out.append(encoded[id(frame)])
    return out


def _encode(
    frame: av.VideoFrame, image_format: str, quality: int, size: tuple[int | None, int | None]
) -> dict[str, Any]:
    dimensions = clips.output_size(frame.width, frame.height, *size)
    content = base64.b64encode(clips.encode_image(frame, image_format, quality, dimensions)).decode("ascii")
    if len(content) > IMAGE_CONTENT_MAX:
        return {"Error": "MEDIA_ERROR"}
    return {"ImageContent": content}


OPERATIONS: dict[str, Handler] = {
    "ListFragments": list_fragments,
    "GetMediaForFragmentList": get_media_for_fragment_list,
    "GetClip": get_clip,
    "GetImages": get_images,
}
