"""Matroska (EBML) the way Kinesis Video speaks it: a push parser for PutMedia bodies and GetMedia
streams, and the few writers GetMedia needs.

Why not a library: ebmlite (PyPI) parses seekable files lazily; PutMedia needs a *push* parser that
takes the body piece by piece as it arrives, never holds more than the element being read, and
handles unknown-size Segments and Clusters (the KVS producer SDK writes both). What is needed is
small: variable-length integers, element headers and a handful of Matroska IDs.

Kinesis Video's rules for the layout: one EBML header and one Segment (a producer that restarts its
muxer sends a new EBML header and Segment, which replaces the tracks); Info and Tracks before the first
Cluster; each Cluster is one fragment and starts with its Timecode. An unknown-size Cluster ends where
the next top-level element (or the body) begins.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

EBML = 0x1A45DFA3
SEGMENT = 0x18538067
SEEK_HEAD = 0x114D9B74
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
DEFAULT_DURATION = 0x23E383
CLUSTER = 0x1F43B675
TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
REFERENCE_BLOCK = 0xFB
CUES = 0x1C53BB6B
TAGS = 0x1254C367
TAG = 0x7373
SIMPLE_TAG = 0x67C8
TAG_NAME = 0x45A3
TAG_STRING = 0x4487
CHAPTERS = 0x1043A770
ATTACHMENTS = 0x1941A469

# Children of a Segment: one of these ends an unknown-size Cluster.
TOP_LEVEL = frozenset({SEEK_HEAD, INFO, TRACKS, CLUSTER, CUES, TAGS, CHAPTERS, ATTACHMENTS, EBML, SEGMENT})
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"
DEFAULT_TIMECODE_SCALE = 1_000_000  # ns per timecode tick: milliseconds
# Header elements (EBML header, Info, Tracks, Tags, ...) are small; a bigger one is not a video stream.
MAX_HEADER_ELEMENT = 1024 * 1024


class MkvError(ValueError):
    """The bytes are not Matroska Kinesis Video can take. ``events`` (from ``MkvParser.feed``): what the
    same piece of data completed before the bad bytes (a fragment that ended just before them is whole)."""

    events: list[Event] = []  # (never mutated: feed gives the instance its own list)


@dataclass(frozen=True, slots=True)
class Track:
    number: int
    type: int  # 1 video, 2 audio
    codec_id: str
    codec_private: bytes = b""
    default_duration_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Header:
    """A Segment's header, sent when its first Cluster starts. ``raw`` is what a reader needs before any
    Cluster: the EBML header, a Segment of unknown size, Info and Tracks."""

    raw: bytes
    timecode_scale: int
    tracks: dict[int, Track]


@dataclass(frozen=True, slots=True)
class ClusterStart:
    timecode: int  # in timecode-scale ticks


# Not frozen: a frozen dataclass's __init__ costs ~3x, and a stream makes one Frame per frame.
@dataclass(slots=True)
class Frame:
    track: int
    timecode: int  # absolute: the cluster's timecode plus the block's own
    keyframe: bool
    raw: bytes  # the whole SimpleBlock or BlockGroup element
    data_offset: int  # where the frame's bytes start in ``raw``
    data_end: int  # and where they end (a BlockGroup has more elements after its Block)

    @property
    def data(self) -> bytes:
        """The coded frame (no lacing: what video producers send)."""
        return self.raw[self.data_offset : self.data_end]


@dataclass(frozen=True, slots=True)
class ClusterEnd:
    """A complete Cluster, rewritten with its known size: ``head`` (its ID and size) then ``parts`` (its
    elements as received), kept apart so whoever stores it copies the bytes once."""

    head: bytes
    parts: tuple[bytes, ...]

    @property
    def raw(self) -> bytes:
        return b"".join((self.head, *self.parts))

    def document(self, header: bytes) -> bytes:
        """``header`` (EBML .. Tracks) and this Cluster: a one-fragment MKV, in one copy."""
        return b"".join((header, self.head, *self.parts))


@dataclass(frozen=True, slots=True)
class Tags:
    """A Tags element between Clusters (only with ``MkvParser(tags=True)``): GetMedia's fragment metadata."""

    values: dict[str, str]


Event = Header | ClusterStart | Frame | ClusterEnd | Tags


def read_vint(
    buf: bytes | bytearray | memoryview, pos: int, *, keep_marker: bool = False
) -> tuple[int, int] | None:
    """(value, length) of the variable-length integer at ``pos``, or None if it is not all there yet.
    Element IDs keep their length marker; sizes drop it. A size whose value bits are all ones is
    "unknown" and comes back as -1."""
    if pos >= len(buf):
        return None
    first = buf[pos]
    if first == 0:
        raise MkvError("invalid EBML variable-length integer")
    length = 9 - first.bit_length()
    if pos + length > len(buf):
        return None
    value = first if keep_marker else first & (0xFF >> length)
    for byte in buf[pos + 1 : pos + length]:
        value = (value << 8) | byte
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return -1, length
    return value, length


def _element_header(buf: bytearray, pos: int) -> tuple[int, int, int] | None:
    """(id, size or -1, header length) of the element at ``pos``, or None if incomplete."""
    # Fast path for what every block in a Cluster has: a one-byte ID and a one- to three-byte size (the
    # parser's cost is per element, and a video stream is mostly blocks).
    if pos + 4 <= len(buf) and buf[pos] & 0x80:
        first = buf[pos + 1]
        if first & 0x80 and first != 0xFF:
            return buf[pos], first & 0x7F, 2
        if first & 0x40 and not (first == 0x7F and buf[pos + 2] == 0xFF):
            return buf[pos], ((first & 0x3F) << 8) | buf[pos + 2], 3
        if first & 0x20 and not (first == 0x3F and buf[pos + 2] == 0xFF and buf[pos + 3] == 0xFF):
            return buf[pos], ((first & 0x1F) << 16) | (buf[pos + 2] << 8) | buf[pos + 3], 4
    ident = read_vint(buf, pos, keep_marker=True)
    if ident is None:
        return None
    if ident[1] > 4:
        raise MkvError("invalid EBML element ID")
    size = read_vint(buf, pos + ident[1])
    if size is None:
        return None
    return ident[0], size[0], ident[1] + size[1]


def _uint(data: bytes | memoryview) -> int:
    return int.from_bytes(data, "big") if data else 0


def children(data: bytes | memoryview) -> list[tuple[int, memoryview]]:
    """The (id, payload) of each element inside a known-size element's payload."""
    view = memoryview(data)
    return [(ident, view[start:end]) for ident, start, end in _spans(view, 0)]


def _tracks(payload: memoryview) -> dict[int, Track]:
    tracks: dict[int, Track] = {}
    for ident, entry in children(payload):
        if ident != TRACK_ENTRY:
            continue
        values = dict(children(entry))
        number = _uint(values.get(TRACK_NUMBER, b""))
        if number == 0:
            raise MkvError("a track has no TrackNumber")
        duration = values.get(DEFAULT_DURATION)
        tracks[number] = Track(
            number=number,
            type=_uint(values.get(TRACK_TYPE, b"")),
            codec_id=bytes(values.get(CODEC_ID, b"")).decode("ascii", "replace").rstrip("\x00"),
            codec_private=bytes(values.get(CODEC_PRIVATE, b"")),
            default_duration_ns=_uint(duration) if duration is not None else None,
        )
    return tracks


def simple_tags(payload: bytes | memoryview) -> dict[str, str]:
    """TagName -> TagString of every SimpleTag in a Tags element's payload."""
    values: dict[str, str] = {}
    for tag_id, tag in children(payload):
        if tag_id != TAG:
            continue
        for simple_id, simple in children(tag):
            if simple_id == SIMPLE_TAG:
                parts = dict(children(simple))
                name, value = parts.get(TAG_NAME), parts.get(TAG_STRING)
                if name is not None and value is not None:
                    values[bytes(name).decode("utf-8", "replace")] = bytes(value).decode("utf-8", "replace")
    return values


_BLOCK_HEAD = struct.Struct(">hB")  # a block's timecode (relative to its Cluster's) and flags


def _block(raw: memoryview, offset: int) -> tuple[int, int, int, int]:
    """(track, relative timecode, flags, data offset) of a (Simple)Block with its payload at ``offset``."""
    track = read_vint(raw, offset)
    if track is None or offset + track[1] + 3 > len(raw):
        raise MkvError("truncated block")
    at = offset + track[1]
    relative = struct.unpack_from(">h", raw, at)[0]
    return track[0], relative, raw[at + 2], at + 3


@dataclass
class MkvParser:
    """Feed bytes as they arrive; get the events they complete. Holds at most one element's bytes
    (plus the Cluster being assembled, which the caller limits through ``cluster_bytes``)."""

    max_element: int = 50 * 1024 * 1024
    _buf: bytearray = field(default_factory=bytearray)
    _state: str = "top"  # top | segment | cluster
    _ebml: bytes | None = None
    _info: bytes = b""
    _tracks_raw: bytes | None = None
    _scale: int = DEFAULT_TIMECODE_SCALE
    _tracks: dict[int, Track] = field(default_factory=dict)
    _header_sent: bool = False
    _cluster: list[bytes] = field(default_factory=list)
    _cluster_left: int | None = None
    _cluster_timecode: int | None = None
    cluster_bytes: int = 0  # bytes of the Cluster being assembled so far
    tags: bool = False  # emit Tags events (a GetMedia reader wants them; PutMedia ignores the producer's)
    segments: int = 0

    @property
    def in_cluster(self) -> bool:
        return self._state == "cluster"

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        pos = 0
        try:
            while True:
                step = self._step(pos, events)
                if step is None:
                    break
                pos = step
        except MkvError as exc:
            # Whatever came before the bad bytes in this piece still counts: without this, a Cluster that
            # ended whole just before them would be lost with the error.
            exc.events = events
            raise
        finally:
            del self._buf[:pos]
        return events

    def end(self) -> list[Event]:
        """The body ended: an unknown-size Cluster in progress is complete; anything else is cut short."""
        if self._buf:
            raise MkvError("the body ended inside an element")
        if self._state == "cluster":
            if self._cluster_left not in (None, 0):
                raise MkvError("the body ended inside a Cluster")
            return [self._end_cluster()]
        return []

    # --- the state machine ----------------------------------------------------------------------------
    def _step(self, pos: int, events: list[Event]) -> int | None:
        """Handle the element at ``pos``; return where the next one starts, or None to wait for bytes."""
        if self._state == "cluster" and self._cluster_left == 0:
            events.append(self._end_cluster())
            return pos
        head = _element_header(self._buf, pos)
        if head is None:
            return None
        ident, size, hlen = head
        if self._state == "top":
            return self._top(pos, ident, size, hlen)
        if self._state == "segment":
            return self._segment_child(pos, ident, size, hlen, events)
        return self._cluster_child(pos, ident, size, hlen, events)

    def _whole(self, pos: int, size: int, hlen: int, limit: int) -> memoryview | None:
        if size < 0:
            raise MkvError("an element of unknown size where only Segment and Cluster may be")
        if size > limit:
            raise MkvError(f"an element of {size} bytes is larger than allowed ({limit})")
        if len(self._buf) - pos < hlen + size:
            return None
        return memoryview(self._buf)[pos : pos + hlen + size]

    def _top(self, pos: int, ident: int, size: int, hlen: int) -> int | None:
        if ident == EBML:
            element = self._whole(pos, size, hlen, MAX_HEADER_ELEMENT)
            if element is None:
                return None
            self._ebml = bytes(element)
            return pos + hlen + size
        if ident == SEGMENT and self._ebml is not None:
            # A new Segment starts a new header: its Info and Tracks replace the previous ones.
            self._state, self._header_sent, self._info, self._tracks_raw = "segment", False, b"", None
            self._scale, self._tracks = DEFAULT_TIMECODE_SCALE, {}
            self.segments += 1
            return pos + hlen  # its children follow; its size (often unknown) is not needed
        raise MkvError("the stream does not start with an EBML header and a Segment")

    def _segment_child(self, pos: int, ident: int, size: int, hlen: int, events: list[Event]) -> int | None:
        if ident in (EBML, SEGMENT):
            self._state, self._ebml = "top", None
            return pos
        if ident == CLUSTER:
            if self._tracks_raw is None:
                raise MkvError("a Cluster came before the Tracks")
            if not self._header_sent:
                events.append(self._header())
                self._header_sent = True
            self._state, self._cluster, self._cluster_timecode = "cluster", [], None
            self._cluster_left = None if size < 0 else size
            self.cluster_bytes = hlen
            return pos + hlen
        element = self._whole(pos, size, hlen, MAX_HEADER_ELEMENT)
        if element is None:
            return None
        payload = element[hlen:]
        if ident == INFO:
            self._info = bytes(element)
            scale = dict(children(payload)).get(TIMECODE_SCALE)
            self._scale = _uint(scale) if scale is not None else DEFAULT_TIMECODE_SCALE
            if self._scale <= 0:
                raise MkvError("TimecodeScale must be positive")
        elif ident == TRACKS:
            self._tracks_raw = bytes(element)
            self._tracks = _tracks(payload)
        elif ident == TAGS and self.tags:
            events.append(Tags(simple_tags(payload)))
        # SeekHead, Void, Cues, Tags, Chapters, Attachments: nothing a fragment needs.
        return pos + hlen + size

    def _cluster_child(self, pos: int, ident: int, size: int, hlen: int, events: list[Event]) -> int | None:
        if self._cluster_left is None and ident in TOP_LEVEL:
            events.append(self._end_cluster())
            return pos
        # (_whole's checks, inline: this runs once per frame)
        if size < 0 or size > self.max_element:
            self._whole(pos, size, hlen, self.max_element)  # raises the right MkvError
        total = hlen + size
        if len(self._buf) - pos < total:
            return None
        if self._cluster_left is not None:
            if total > self._cluster_left:
                raise MkvError("an element crosses the end of its Cluster")
            self._cluster_left -= total
        with memoryview(self._buf) as view:  # released at once: a bytearray with a view cannot grow
            raw = bytes(view[pos : pos + total])
        if ident == TIMECODE:
            self._cluster_timecode = _uint(raw[hlen:])
            events.append(ClusterStart(self._cluster_timecode))
        elif ident in (SIMPLE_BLOCK, BLOCK_GROUP):
            if self._cluster_timecode is None:
                raise MkvError("a block came before its Cluster's Timecode")
            events.append(self._frame(ident, raw, hlen))
        self._cluster.append(raw)
        self.cluster_bytes += total
        return pos + total

    def _frame(self, ident: int, raw: bytes, hlen: int) -> Frame:
        assert self._cluster_timecode is not None
        if ident == SIMPLE_BLOCK:
            if len(raw) >= hlen + 4 and raw[hlen] & 0x80 and raw[hlen] != 0xFF:  # tracks 1-126: all real ones
                relative, flags = _BLOCK_HEAD.unpack_from(raw, hlen + 1)
                track, offset = raw[hlen] & 0x7F, hlen + 4
            else:
                track, relative, flags, offset = _block(memoryview(raw), hlen)
            return Frame(track, self._cluster_timecode + relative, bool(flags & 0x80), raw, offset, len(raw))
        view = memoryview(raw)
        block, referenced = None, False
        for child_id, start, end in _spans(view, hlen):
            if child_id == BLOCK:
                block = (start, end)
            elif child_id == REFERENCE_BLOCK:
                referenced = True
        if block is None:
            raise MkvError("a BlockGroup without a Block")
        track, relative, _flags, offset = _block(view[: block[1]], block[0])
        return Frame(track, self._cluster_timecode + relative, not referenced, raw, offset, block[1])

    def _header(self) -> Header:
        assert self._ebml is not None and self._tracks_raw is not None
        raw = self._ebml + _id_bytes(SEGMENT) + UNKNOWN_SIZE + self._info + self._tracks_raw
        return Header(raw, self._scale, dict(self._tracks))

    def _end_cluster(self) -> ClusterEnd:
        if self._cluster_timecode is None:
            raise MkvError("a Cluster without a Timecode")
        self._state, self._cluster_left = "segment", None
        parts, self._cluster = self._cluster, []
        return ClusterEnd(_id_bytes(CLUSTER) + _size(sum(map(len, parts))), tuple(parts))


def _spans(view: memoryview, pos: int) -> list[tuple[int, int, int]]:
    """(id, payload start, payload end) of each element from ``pos`` to the end of ``view``."""
    out: list[tuple[int, int, int]] = []
    while pos < len(view):
        head = _element_header(bytearray(view[pos : pos + 12]), 0)
        if head is None or head[1] < 0 or pos + head[2] + head[1] > len(view):
            raise MkvError("truncated or unknown-size element inside another element")
        out.append((head[0], pos + head[2], pos + head[2] + head[1]))
        pos += head[2] + head[1]
    return out


# --- writing --------------------------------------------------------------------------------------------
def _id_bytes(ident: int) -> bytes:
    return ident.to_bytes((ident.bit_length() + 7) // 8, "big")


def _size(n: int) -> bytes:
    for length in range(1, 9):
        if n < (1 << (7 * length)) - 1:
            return (n | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError("element too large")


def element(ident: int, payload: bytes) -> bytes:
    return _id_bytes(ident) + _size(len(payload)) + payload


def uint_element(ident: int, value: int) -> bytes:
    return element(ident, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def string_element(ident: int, value: str) -> bytes:
    return element(ident, value.encode("utf-8"))


def tags(pairs: dict[str, str]) -> bytes:
    """A Tags element with one SimpleTag per pair (Kinesis Video's fragment metadata)."""
    simple = b"".join(
        element(SIMPLE_TAG, string_element(TAG_NAME, name) + string_element(TAG_STRING, value))
        for name, value in pairs.items()
    )
    return element(TAGS, element(TAG, simple))


def cluster_start_unknown(timecode: int) -> bytes:
    """The start of a Cluster whose end is not known yet (a live fragment), with its Timecode."""
    return _id_bytes(CLUSTER) + UNKNOWN_SIZE + uint_element(TIMECODE, timecode)
