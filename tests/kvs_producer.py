"""A Kinesis Video Streams producer for tests and benchmarks: live MKV made with PyAV, and PutMedia.

boto3 has no PutMedia (the real producers are the C++/Java SDKs and GStreamer's ``kvssink``), so this
module plays the producer's part.

MKV. ``encode_mkv`` encodes H.264 (libx264, yuv420p, no B-frames, a keyframe every ``fragment_seconds``
and nowhere else: ``scenecut=0``) into Matroska written to a non-seekable in-memory writer, so FFmpeg's
muxer writes a *live* stream: an unknown-size Segment, no Cues, no SeekHead back-patching. Kinesis Video
makes one fragment of each Cluster and wants every Cluster to start with an I-frame. FFmpeg's matroska
muxer does not do that by default: it cuts a Cluster at a keyframe only once the Cluster holds more than
4 KiB, and anywhere (mid-GOP) once it is longer than ``cluster_time_limit`` (1 s on a non-seekable
output) or bigger than ``cluster_size_limit`` (32 KiB). Its ``dash=1`` option switches video to exactly
"a new Cluster at every keyframe and only there" (the WebM DASH rule), whatever the sizes and
durations, so that is what ``encode_mkv`` sets (with ``live=1``). Clusters still have known sizes (the
muxer buffers each one and writes it whole), each starts with a CRC-32 element (FFmpeg's default,
``write_crc32``) before its Timecode, and block timestamps are milliseconds from 0. ``clusters``,
``parse_clusters`` and ``keyframe_layout`` walk the bytes (EBML) to check that layout.

PutMedia. The client is the server's own (``mlharbor.services.kinesisvideo.producer``: ``PutMedia``,
``put_media``, ``split_live``, re-exported here), the one the built-in producer (``--video-stream``)
uses; its docstring explains the full-duplex request and the signing.

    data = encode_mkv(seconds=4, fps=10)              # 4 fragments of 1 s
    status, acks = put_media(endpoint, data, stream_name="cam")
    with PutMedia(endpoint, stream_name="cam") as producer:
        for piece in split_live(data, 4096):
            producer.send(piece)
        producer.wait_for(lambda acks: any(a.get("EventType") == "PERSISTED" for a in acks), 10)
        producer.finish()
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy
from PIL import Image

from mlharbor.engines import mkv
from mlharbor.services.kinesisvideo.producer import (  # noqa: F401  (re-exported: tests import them from here)
    USER_AGENT,
    PutMedia,
    _format_timestamp,
    put_media,
    split_live,
)


class LiveCamera:
    """A producer pushing an MKV (``encode_mkv``) to ``endpoint``'s stream in real time, each fragment when
    its first frame is due, from a thread: ``with LiveCamera(url, "cam", video): ...``."""

    def __init__(self, endpoint: str, stream: str, video: bytes) -> None:
        self.video, self.started = video, time.time()
        self.putter = PutMedia(endpoint, stream_name=stream, start_timestamp=self.started)
        self.thread = threading.Thread(target=self._push, daemon=True)
        self.stop = threading.Event()

    def _push(self) -> None:
        marks = clusters(self.video)
        self.putter.start()
        self.putter.send(self.video[: marks[0][0]])
        ends = [offset for offset, _ in marks[1:]] + [len(self.video)]
        for (offset, timecode), end in zip(marks, ends, strict=True):
            if self.stop.wait(max(0.0, self.started + timecode / 1000 - time.time())):
                return
            self.putter.send(self.video[offset:end])
        self.putter.finish()

    def __enter__(self) -> LiveCamera:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.putter.close()


# ---------------------------------------------------------------------------------------------------
# MKV

# The element IDs are MLHarbor's (engines/mkv.py); the walker below is the tests' own, so what the server
# writes is checked by code other than the server's parser.
EBML_HEADER, SEGMENT, CLUSTER, TIMECODE = mkv.EBML, mkv.SEGMENT, mkv.CLUSTER, mkv.TIMECODE
SIMPLE_BLOCK, BLOCK_GROUP, BLOCK = mkv.SIMPLE_BLOCK, mkv.BLOCK_GROUP, mkv.BLOCK
REFERENCE_BLOCK = mkv.REFERENCE_BLOCK
_LEVEL1 = mkv.TOP_LEVEL  # what ends an unknown-size Cluster: the Segment's children, a new EBML stream
BACKGROUND = (128, 128, 128)


class _LiveWriter:
    """A write-only sink: without ``seek``/``tell`` PyAV gives FFmpeg a non-seekable output."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def fit_image(image: numpy.ndarray, size: tuple[int, int]) -> numpy.ndarray:
    """``image`` (RGB H x W x 3 uint8) scaled to fit inside ``size`` (width, height), centred on grey."""
    width, height = size
    photo = Image.fromarray(numpy.ascontiguousarray(image[..., :3]).astype(numpy.uint8), "RGB")
    scale = min(width / photo.width, height / photo.height)
    scaled = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    if scaled != photo.size:
        photo = photo.resize(scaled, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    canvas.paste(photo, ((width - photo.width) // 2, (height - photo.height) // 2))
    return numpy.asarray(canvas)


def synthetic_frame(index: int, size: tuple[int, int], fps: int = 10) -> numpy.ndarray:
    """A frame that differs from its neighbours: a drifting colour gradient and a white square moving
    across it (about 60 px a second), so P-frames carry real motion."""
    width, height = size
    x = numpy.arange(width, dtype=numpy.int32)[None, :]
    y = numpy.arange(height, dtype=numpy.int32)[:, None]
    frame = numpy.empty((height, width, 3), numpy.uint8)
    frame[..., 0] = (x + 3 * index) % 256
    frame[..., 1] = (y * 255 // max(1, height - 1)).astype(numpy.uint8)
    frame[..., 2] = ((x + y) // 2 + 5 * index) % 256
    side = max(4, min(width, height) // 6)
    travel = max(1, width - side)
    step = (index * 60 // max(1, fps)) % (2 * travel)
    left = step if step < travel else 2 * travel - step
    top = (height - side) // 2
    frame[top : top + side, left : left + side] = 255
    return frame


def encode_mkv(
    frames: Iterable[numpy.ndarray] | None = None,
    *,
    seconds: float = 4.0,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    fragment_seconds: float = 1.0,
    image: numpy.ndarray | None = None,
    muxer_options: dict[str, str] | None = None,
) -> bytes:
    """A live Matroska stream of H.264 video, one Cluster (Kinesis Video fragment) per keyframe.

    ``frames`` (RGB uint8 H x W x 3; resized and padded to ``size`` when they differ) are shown at ``fps``;
    without them ``round(seconds * fps)`` frames are made: ``image`` (RGB, fitted to ``size`` on grey) in
    every frame, or else moving synthetic content. Frame i has pts ``round(i * 1000 / fps)`` ms, so
    Cluster timecodes are milliseconds from 0, and a keyframe (IDR) starts every ``fragment_seconds``.
    ``muxer_options`` add to or override FFmpeg's matroska muxer options (e.g. ``{"write_crc32": "0"}``:
    by default FFmpeg puts a CRC-32 element first in each level-1 element, Clusters included).
    """
    width, height = size
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"yuv420p needs a positive, even width and height, not {width}x{height}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, not {fps}")
    gop = max(1, round(fps * fragment_seconds))
    if frames is None:
        count = max(1, round(seconds * fps))
        if image is not None:
            still = fit_image(image, size)
            frames = (still for _ in range(count))
        else:
            frames = (synthetic_frame(i, size, fps) for i in range(count))

    sink = _LiveWriter()
    time_base = Fraction(1, 1000)
    options = {
        "live": "1",
        # A new Cluster at every video keyframe and nowhere else (see the module docstring).
        "dash": "1",
        "cluster_time_limit": str(2**31 - 1),
        "cluster_size_limit": str(2**31 - 1),
        **(muxer_options or {}),
    }
    with av.open(sink, mode="w", format="matroska", options=options) as container:
        stream = container.add_stream(
            "libx264",
            rate=fps,
            options={
                "bf": "0",
                "tune": "zerolatency",
                "preset": "veryfast",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0",
            },
        )
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        for i, pixels in enumerate(frames):
            if pixels.shape != (height, width, 3) or pixels.dtype != numpy.uint8:
                pixels = fit_image(pixels, size)
            frame = av.VideoFrame.from_ndarray(numpy.ascontiguousarray(pixels), format="rgb24")
            frame.pts, frame.time_base = round(i * 1000 / fps), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return sink.getvalue()


def _read_id(data: bytes, pos: int) -> tuple[int, int] | None:
    """(element id with its marker bits, length) at ``pos``, or None if the data ends first."""
    if pos >= len(data):
        return None
    first = data[pos]
    length = 1
    while length <= 4 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 4:
        raise ValueError(f"invalid EBML id at offset {pos}")
    if pos + length > len(data):
        return None
    return int.from_bytes(data[pos : pos + length], "big"), length


def _read_size(data: bytes, pos: int) -> tuple[int | None, int] | None:
    """(element size, or None for "unknown" (all value bits set), length) at ``pos``, or None at the end."""
    if pos >= len(data):
        return None
    first = data[pos]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        raise ValueError(f"invalid EBML size at offset {pos}")
    if pos + length > len(data):
        return None
    value = int.from_bytes(data[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    return (None if value == (1 << (7 * length)) - 1 else value), length


def _header(data: bytes, pos: int) -> tuple[int, int | None, int] | None:
    """(id, size or None, offset of the element's body) at ``pos``, or None if the header is cut off."""
    got_id = _read_id(data, pos)
    if got_id is None:
        return None
    element, id_len = got_id
    got_size = _read_size(data, pos + id_len)
    if got_size is None:
        return None
    size, size_len = got_size
    return element, size, pos + id_len + size_len


@dataclass
class ClusterInfo:
    offset: int  # of the Cluster's ID in the data
    timecode: int | None  # the Cluster's Timecode (ms with the default TimecodeScale)
    size: int | None  # body size, None for an unknown-size Cluster
    blocks: list[tuple[int, bool]] = field(default_factory=list)  # (relative timecode, keyframe)


def parse_clusters(data: bytes) -> list[ClusterInfo]:
    """Every top-level Cluster of a Matroska stream, with its blocks.

    Handles known- and unknown-size Segments and Clusters (an unknown-size Cluster ends at the next
    level-1 element or EBML header) and several concatenated EBML streams. Data cut off mid-element
    ends the walk: a last partial Cluster is listed with the blocks that are complete.
    """
    found: list[ClusterInfo] = []
    pos = 0
    while True:
        head = _header(data, pos)
        if head is None:
            return found
        element, size, body = head
        if element == SEGMENT:
            pos = body  # walk into it, known size or not
            continue
        if element == CLUSTER:
            info = ClusterInfo(offset=pos, timecode=None, size=size)
            found.append(info)
            end = len(data) if size is None else min(len(data), body + size)
            pos = _walk_cluster(data, body, end, info, unknown=size is None)
            if size is not None:
                pos = body + size
            continue
        if size is None:
            raise ValueError(f"element 0x{element:X} at offset {pos} has an unknown size")
        pos = body + size


def _walk_cluster(data: bytes, pos: int, end: int, info: ClusterInfo, *, unknown: bool) -> int:
    while pos < end:
        head = _header(data, pos)
        if head is None:
            return len(data)
        element, size, body = head
        if unknown and element in _LEVEL1:
            return pos
        if size is None:
            raise ValueError(f"element 0x{element:X} at offset {pos} in a Cluster has an unknown size")
        if body + size > len(data):
            return len(data)
        payload = data[body : body + size]
        if element == TIMECODE:
            info.timecode = int.from_bytes(payload, "big")
        elif element == SIMPLE_BLOCK:
            info.blocks.append(_block(payload, keyframe=None))
        elif element == BLOCK_GROUP:
            info.blocks.extend(_block_group(payload))
        pos = body + size
    return pos


def _block(payload: bytes, keyframe: bool | None) -> tuple[int, bool]:
    # Track number (a vint), a signed 16-bit timecode relative to the Cluster's, then flags
    # (SimpleBlock: 0x80 = keyframe).
    got = _read_size(payload, 0)
    if got is None or got[1] + 3 > len(payload):
        raise ValueError("truncated block")
    at = got[1]
    (relative,) = struct.unpack_from(">h", payload, at)
    flags = payload[at + 2]
    return relative, bool(flags & 0x80) if keyframe is None else keyframe


def _block_group(payload: bytes) -> list[tuple[int, bool]]:
    # A Block in a BlockGroup is a keyframe when the group has no ReferenceBlock.
    block: bytes | None = None
    referenced = False
    pos = 0
    while (head := _header(payload, pos)) is not None:
        element, size, body = head
        if size is None:
            break
        if element == BLOCK:
            block = payload[body : body + size]
        elif element == REFERENCE_BLOCK:
            referenced = True
        pos = body + size
    return [] if block is None else [_block(block, keyframe=not referenced)]


def clusters(data: bytes) -> list[tuple[int, int]]:
    """(byte offset, Cluster timecode) of each top-level Cluster of a Matroska stream."""
    return [(c.offset, c.timecode if c.timecode is not None else -1) for c in parse_clusters(data)]


def keyframe_layout(data: bytes) -> tuple[int, int, bool]:
    """(Clusters, keyframes, whether every Cluster starts with a keyframe) of a Matroska stream."""
    found = parse_clusters(data)
    keyframes = sum(key for c in found for _, key in c.blocks)
    return len(found), keyframes, all(c.blocks and c.blocks[0][1] for c in found)
