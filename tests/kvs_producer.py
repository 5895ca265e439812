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

PutMedia. The real API is full duplex over one HTTP/1.1 request: the producer streams the MKV as a
chunked body for as long as the camera runs, and the service answers ``200`` at once and streams
newline-separated JSON ACK events (BUFFERING, RECEIVED, PERSISTED, ERROR, IDLE) while the body is still
being uploaded. ``requests``/``urllib3`` cannot read a response before the body is sent, and
``http.client.HTTPConnection`` gets in the way too: ``getresponse()`` closes the connection object when
the response says ``Connection: close``, and a later ``send()`` would silently open a *new* connection.
So ``PutMedia`` writes the request itself on a plain socket (the writer: the caller's thread) and a
daemon reader thread parses the response: ``http.client.HTTPResponse`` reads the status line and
headers, then the body's framing (chunked, Content-Length or up to the close) is read here, piece by
piece as it arrives, because ``HTTPResponse.readline``/``read`` take a chunked body cut off mid-way for
its clean end. The reader waits on the socket in short polls, so that ``close``/``abort`` wake it, and
silence is an error only once the body is finished (``timeout`` seconds); while uploading, a quiet
server is normal. Plain ``http://`` only: one TLS connection must not be read and written from two
threads at once.

Signing. AWS's streaming PutMedia is signed with SigV4 as if the body were empty: the payload hash in
the canonical request is SHA-256 of b"" (the body is not known when the headers are sent), and no
``X-Amz-Content-SHA256`` header is sent. ``PutMedia`` signs an ``AWSRequest`` with ``data=b""`` using
botocore's ``SigV4Auth`` (which, unlike the S3 signer, adds no content-hash header) and copies every
header botocore produced into the real request byte for byte; ``Transfer-Encoding`` (and botocore's
other hop-by-hop headers, ``Connection``, ``User-Agent``) are never signed.

    data = encode_mkv(seconds=4, fps=10)              # 4 fragments of 1 s
    status, acks = put_media(endpoint, data, stream_name="cam")
    with PutMedia(endpoint, stream_name="cam") as producer:
        for piece in split_live(data, 4096):
            producer.send(piece)
        producer.wait_for(lambda acks: any(a.get("EventType") == "PERSISTED" for a in acks), 10)
        producer.finish()
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import platform
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import av
import botocore
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import numpy
from PIL import Image

# ---------------------------------------------------------------------------------------------------
# MKV

EBML_HEADER = 0x1A45DFA3
SEGMENT = 0x18538067
CLUSTER = 0x1F43B675
TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
REFERENCE_BLOCK = 0xFB
# Elements that end an unknown-size Cluster: the Segment's children, and a new EBML stream.
_LEVEL1 = frozenset(
    {
        0x114D9B74,  # SeekHead
        0x1549A966,  # Info
        0x1654AE6B,  # Tracks
        0x1F43B675,  # Cluster
        0x1C53BB6B,  # Cues
        0x1941A469,  # Attachments
        0x1043A770,  # Chapters
        0x1254C367,  # Tags
        EBML_HEADER,
        SEGMENT,
    }
)
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


def split_live(data: bytes, chunk_bytes: int) -> list[bytes]:
    """``data`` in pieces of ``chunk_bytes`` (the last may be shorter), as a producer would send them."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
    return [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]


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


# ---------------------------------------------------------------------------------------------------
# PutMedia

USER_AGENT = (
    f"mlharbor-tests-kvs-producer/1.0 botocore/{botocore.__version__} Python/{platform.python_version()}"
)
_POLL = 0.1  # seconds between the reader's checks of the stop flag and its idle deadline
_MAX_LINE = 65536
_PIECE = 65536


class _SocketReader(io.RawIOBase):
    """The response side of the socket, for ``http.client.HTTPResponse``: waits in short polls so that
    ``close``/``abort`` wake it, and gives up after ``timeout`` seconds of silence once ``idle_allowed``
    says the request body is finished (while uploading, a quiet server is normal)."""

    def __init__(self, sock: socket.socket, timeout: float, idle_allowed: Callable[[], bool]) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._idle_allowed = idle_allowed
        self.stopped = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        quiet_since = time.monotonic()
        while True:
            if self.stopped.is_set():
                raise ConnectionAbortedError("PutMedia stream closed by the producer")
            try:
                ready, _, _ = select.select([self._sock], [], [], _POLL)
            except (OSError, ValueError) as exc:  # closed under us
                raise ConnectionAbortedError("PutMedia stream closed by the producer") from exc
            if ready:
                try:
                    return self._sock.recv_into(buffer)
                except (BlockingIOError, InterruptedError):
                    continue
            if self._idle_allowed():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > self._timeout:
                raise TimeoutError(f"no response bytes for {self._timeout} s after the body was finished")


class _ResponseSocket:
    """What ``HTTPResponse`` needs of a socket: ``makefile``."""

    def __init__(self, raw: _SocketReader) -> None:
        self._raw = raw

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(self._raw, 64 * 1024)


def _body_pieces(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The response body as it arrives (chunked, Content-Length or up to the close). Unlike
    ``HTTPResponse.readline``/``read``, which take a chunked body cut off mid-way for its end, a body cut
    short raises ``IncompleteRead`` here."""
    fp = response.fp
    assert fp is not None
    if response.chunked:
        while True:
            line = fp.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise http.client.IncompleteRead(b"", None)  # closed mid-response
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while fp.readline(_MAX_LINE).strip():  # trailer fields, up to the blank line
                    pass
                return
            yield from _exactly(fp, size)
            if fp.readline(_MAX_LINE).strip():
                raise http.client.HTTPException("no CRLF after a chunk's data")
    elif response.length is not None:
        yield from _exactly(fp, response.length)
    else:
        while piece := fp.read1(_PIECE):
            yield piece


def _exactly(fp: io.BufferedReader, size: int) -> Iterator[bytes]:
    left = size
    while left:
        piece = fp.read1(min(left, _PIECE))
        if not piece:
            raise http.client.IncompleteRead(b"", left)
        left -= len(piece)
        yield piece


def _event(line: bytes) -> dict:
    text = line.strip()
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        event = {"EventType": "UNPARSEABLE", "Line": text.decode("utf-8", "replace")}
    return event


def _format_timestamp(seconds: float) -> str:
    millis = round(seconds * 1000)
    return f"{millis // 1000:d}.{millis % 1000:03d}"


class PutMedia:
    """One PutMedia request, full duplex: ``send`` MKV pieces while ``acks()`` fills from the response.

    ``start()`` connects and sends the signed headers; the body is HTTP/1.1 chunked, one chunk per
    ``send``; ``finish()`` ends it; ``abort()`` drops the connection mid-body. A daemon thread reads the
    response: ``status``/``headers`` once the head arrives, then each JSON line into ``acks()`` (a non-200
    response's whole body goes to ``error_body()``). ``error`` says what ended the reader early (a
    ``ConnectionAbortedError`` after ``close``/``abort``, ``IncompleteRead`` if the server cut the
    response short, ``TimeoutError`` after ``timeout`` s of silence once the body is finished);
    ``upload_error`` why a ``send`` failed. ``extra_headers`` are added to the request and signed.
    Usable as a context manager (``start`` on entry if needed, ``close`` on exit).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        stream_name: str | None = None,
        stream_arn: str | None = None,
        timecode_type: str = "RELATIVE",
        start_timestamp: float | None = None,
        ack_required: bool = True,
        region: str = "us-east-1",
        access_key: str = "test",
        secret_key: str = "test",
        session_token: str | None = None,
        timeout: float = 30.0,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"PutMedia needs an http:// endpoint, not {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._path = parts.path.rstrip("/") + "/putMedia"
        self._netloc = parts.netloc
        self.stream_name = stream_name
        self.stream_arn = stream_arn
        self.timecode_type = timecode_type
        self.start_timestamp = time.time() if start_timestamp is None else start_timestamp
        self.ack_required = ack_required
        self.region = region
        self._credentials = botocore.credentials.Credentials(access_key, secret_key, session_token)
        self.timeout = timeout
        self._extra_headers = dict(extra_headers or {})

        self._sock: socket.socket | None = None
        self._raw: _SocketReader | None = None
        self._reader: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._acks: list[dict] = []
        self._status: int | None = None
        self._reason: str | None = None
        self._headers: http.client.HTTPMessage | None = None
        self._error_body = b""
        self._error: BaseException | None = None
        self._done = False
        self._finished = False
        self._closed = False
        self.request_headers: list[tuple[str, str]] = []
        self.bytes_sent = 0
        self.upload_error: OSError | None = None  # why the last send failed, if one did

    # -- request ---------------------------------------------------------------------------------------

    def signed_headers(self) -> list[tuple[str, str]]:
        """The request's headers, signed with SigV4 over an empty payload (see the module docstring)."""
        headers: dict[str, str] = {"Host": self._netloc}
        if self.stream_name is not None:
            headers["x-amzn-stream-name"] = self.stream_name
        if self.stream_arn is not None:
            headers["x-amzn-stream-arn"] = self.stream_arn
        headers["x-amzn-fragment-timecode-type"] = self.timecode_type
        headers["x-amzn-producer-start-timestamp"] = _format_timestamp(self.start_timestamp)
        headers["x-amzn-fragment-acknowledgment-required"] = "1" if self.ack_required else "0"
        headers["Content-Type"] = "application/json"
        headers.update(self._extra_headers)
        request = botocore.awsrequest.AWSRequest(
            method="POST", url=f"http://{self._netloc}{self._path}", data=b"", headers=headers
        )
        botocore.auth.SigV4Auth(self._credentials, "kinesisvideo", self.region).add_auth(request)
        # Only botocore's S3 signers add a payload-hash header; streaming PutMedia must not send one.
        assert "X-Amz-Content-SHA256" not in request.headers
        signed = [(name, str(value)) for name, value in request.headers.items()]
        # Hop-by-hop and user-agent headers: botocore never signs them.
        signed += [
            ("User-Agent", USER_AGENT),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive"),
        ]
        return signed

    def start(self) -> None:
        """Connect, send the signed request head (the body follows with ``send``), start the reader."""
        if self._sock is not None:
            raise RuntimeError("PutMedia already started")
        self.request_headers = self.signed_headers()
        head = f"POST {self._path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in self.request_headers
        )
        sock = socket.create_connection((self._host, self._port), timeout=self.timeout)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._raw = _SocketReader(sock, self.timeout, lambda: not self._finished)
        self._reader = threading.Thread(target=self._read, name="putmedia-reader", daemon=True)
        self._reader.start()
        self._sendall((head + "\r\n").encode("latin-1"))

    def _sendall(self, data: bytes) -> None:
        if self._sock is None:
            raise RuntimeError("PutMedia not started")
        with self._write_lock:
            if self._closed:
                raise ConnectionError("PutMedia stream is closed")
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self.upload_error = exc
                raise ConnectionError(f"PutMedia upload failed: {exc!r}") from exc

    def send(self, data: bytes) -> None:
        """One HTTP chunk of ``data``. Empty data is not sent: a zero-length chunk would end the body."""
        if self._finished:
            raise RuntimeError("PutMedia body already finished")
        if not data:
            return
        self._sendall(b"%X\r\n" % len(data) + bytes(data) + b"\r\n")
        self.bytes_sent += len(data)

    def finish(self) -> None:
        """End the body (the terminating zero-length chunk); the response may go on for a while."""
        if self._finished:
            return
        self._sendall(b"0\r\n\r\n")
        self._finished = True

    def abort(self, *, reset: bool = False) -> None:
        """Drop the connection mid-body, as a dying producer would: a FIN, or a TCP RST if ``reset``."""
        self._shut(reset=reset)

    def close(self) -> None:
        """Stop reading and close the connection (without finishing the body if it is not finished)."""
        self._shut(reset=False)

    def _shut(self, *, reset: bool) -> None:
        sock = self._sock
        if sock is None or self._closed:
            return
        self._closed = True
        if self._raw is not None:
            self._raw.stopped.set()
        with contextlib.suppress(OSError):
            # Shutting down wakes a reader or writer blocked on the socket; only then is it closed, so no
            # thread ever touches a file descriptor number that may have been reused.
            sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
        self._join(2.0)
        with self._write_lock:
            if reset:  # close() with a zero linger time sends a TCP RST instead of a FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def __enter__(self) -> PutMedia:
        if self._sock is None:
            self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- response --------------------------------------------------------------------------------------

    def _read(self) -> None:
        assert self._raw is not None
        try:
            response = http.client.HTTPResponse(_ResponseSocket(self._raw), method="POST")  # type: ignore[arg-type]
            response.begin()  # status line and headers (skips any 100 Continue)
            with self._cond:
                self._status, self._reason, self._headers = response.status, response.reason, response.headers
                self._cond.notify_all()
            if response.status != 200:
                body = b"".join(_body_pieces(response))
                with self._cond:
                    self._error_body = body
                return
            pending = b""
            for piece in _body_pieces(response):
                *lines, pending = (pending + piece).split(b"\n")
                events = [_event(line) for line in lines if line.strip()]
                if events:
                    with self._cond:
                        self._acks.extend(events)
                        self._cond.notify_all()
            if pending.strip():
                with self._cond:
                    self._acks.append(_event(pending))
        except Exception as exc:  # kept for the caller: the thread must not die loudly
            if self._closed and not isinstance(exc, ConnectionAbortedError):
                exc = ConnectionAbortedError(f"PutMedia stream closed by the producer ({exc!r})")
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    @property
    def status(self) -> int | None:
        """The response's status code, None until its head has arrived."""
        with self._cond:
            return self._status

    @property
    def reason(self) -> str | None:
        with self._cond:
            return self._reason

    @property
    def headers(self) -> http.client.HTTPMessage | None:
        """The response's headers, None until its head has arrived."""
        with self._cond:
            return self._headers

    @property
    def error(self) -> BaseException | None:
        """What stopped the reader early (a timeout, a reset, a malformed response), if anything."""
        with self._cond:
            return self._error

    @property
    def done(self) -> bool:
        """Whether the response has ended (or the reader gave up)."""
        with self._cond:
            return self._done

    def acks(self) -> list[dict]:
        """A copy of the events received so far, in order: each line's JSON object (a line that is not
        one is kept as ``{"EventType": "UNPARSEABLE", "Line": ...}``)."""
        with self._cond:
            return list(self._acks)

    def error_body(self) -> bytes:
        """A non-200 response's whole body (empty until it has been read)."""
        with self._cond:
            return self._error_body

    def _describe(self) -> str:
        with self._cond:  # re-entrant: callers may hold it already
            return (
                f"status={self._status} done={self._done} error={self._error!r} "
                f"upload_error={self.upload_error!r} error_body={self._error_body[:500]!r} "
                f"acks={self._acks!r}"
            )

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float) -> list[dict]:
        """Wait until ``predicate(acks)`` holds and return the acks; TimeoutError (with the acks in the
        message) after ``timeout`` seconds, or as soon as the response has ended without it holding."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                acks = list(self._acks)
                if predicate(acks):
                    return acks
                if self._done:
                    raise TimeoutError(f"the PutMedia response ended first: {self._describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching ACKs within {timeout} s: {self._describe()}")
                self._cond.wait(min(left, 1.0))

    def wait_status(self, timeout: float) -> int:
        """Wait for the response's head; its status code (TimeoutError if none came)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._status is None:
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    raise TimeoutError(f"no PutMedia response head: {self._describe()}")
                self._cond.wait(min(left, 1.0))
            return self._status

    def wait_done(self, timeout: float) -> None:
        """Wait until the response has been read to its end (TimeoutError after ``timeout`` seconds)."""
        if not self._join(timeout):
            raise TimeoutError(f"the PutMedia response did not end within {timeout} s: {self._describe()}")

    def _join(self, timeout: float) -> bool:
        if self._reader is None:
            return True
        self._reader.join(timeout)
        return not self._reader.is_alive()


def put_media(
    endpoint: str, body: bytes, *, chunk_bytes: int = 8192, pace: float = 0.0, **kwargs: Any
) -> tuple[int, list[dict]]:
    """Send ``body`` as one PutMedia request (``chunk_bytes`` per HTTP chunk, ``pace`` seconds between
    chunks) and read the response to its end: (status, ACK events). ``kwargs`` go to ``PutMedia``.

    An upload cut short by the server (an early error response) is not an error here: the status
    tells. A response that never came, or was cut short, raises ``ConnectionError`` (``TimeoutError`` if
    it did not end within ``timeout``). A non-200 status returns no acks; use ``PutMedia`` itself to
    see the error body.
    """
    producer = PutMedia(endpoint, **kwargs)
    producer.start()
    try:
        try:
            for i, piece in enumerate(split_live(body, chunk_bytes)):
                if producer.done:
                    break
                if pace > 0 and i:
                    time.sleep(pace)
                producer.send(piece)
            if not producer.done:
                producer.finish()
        except ConnectionError:
            pass  # the server answered and closed early; its response says why
        producer.wait_done(producer.timeout)
        status = producer.status
        if status is None or producer.error is not None:
            raise ConnectionError(
                f"no complete PutMedia response: {producer._describe()}"
            ) from producer.error
        return status, producer.acks()
    finally:
        producer.close()
