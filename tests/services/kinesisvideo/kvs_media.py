"""Helpers for the PutMedia and GetMedia tests: an MKV split into its fragments for a producer to send
piece by piece, and GetMedia's output read as it arrives and walked into fragments with their tags."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import av

from mlharbor.engines import mkv
from tests.conftest import unique
from tests.kvs_producer import clusters, encode_mkv

# What ends an unknown-size Cluster (a live fragment in GetMedia's output): the next level-1 element.
_LEVEL1 = mkv.TOP_LEVEL
FRAGMENT_NUMBER = "AWS_KINESISVIDEO_FRAGMENT_NUMBER"
CONTINUATION_TOKEN = "AWS_KINESISVIDEO_CONTINUATION_TOKEN"


FRAMES = 5  # per fragment of ``encode``


# --- producing ----------------------------------------------------------------------------------------------
@cache
def encode(fragments: int = 4, *, crc: bool = True) -> bytes:
    """The tests' video: 320x240 at 10 fps in fragments of 0.5 s (``FRAMES`` frames each)."""
    options = None if crc else {"write_crc32": "0"}
    return encode_mkv(seconds=fragments / 2, fps=10, fragment_seconds=0.5, muxer_options=options)


def new_stream(kvs: Any, retention: int = 1) -> str:
    name = unique("cam")
    kvs.create_stream(StreamName=name, DataRetentionInHours=retention)
    return name


def split_fragments(data: bytes) -> tuple[bytes, list[bytes]]:
    """(everything before the first Cluster, each Cluster's bytes) of a one-Segment MKV from encode_mkv."""
    offsets = [offset for offset, _ in clusters(data)] + [len(data)]
    return data[: offsets[0]], [data[a:b] for a, b in zip(offsets, offsets[1:], strict=False)]


def block_ends(cluster: bytes) -> list[int]:
    """Where each (Simple)Block of a known-size Cluster ends, as offsets into ``cluster``."""
    ident, size, body = _head(cluster, 0) or (0, -1, 0)
    assert ident == mkv.CLUSTER and size >= 0
    ends = []
    for child, _, end in _elements(cluster, body, body + size):
        if child in (mkv.SIMPLE_BLOCK, mkv.BLOCK_GROUP):
            ends.append(end)
    return ends


def acks_of(acks: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [a for a in acks if a.get("EventType") == kind]


def numbers(acks: list[dict[str, Any]], kind: str = "PERSISTED") -> list[str]:
    return [a["FragmentNumber"] for a in acks_of(acks, kind)]


# --- reading ----------------------------------------------------------------------------------------------
@dataclass
class Document:
    """One fragment of GetMedia's output: an MKV document (or an error's Tags element on its own)."""

    start: int
    end: int = 0
    elements: list[str] = field(default_factory=list)  # level-1 names in order: EBML, Info, Tags, ...
    leading: dict[str, str] = field(default_factory=dict)  # tags before the Cluster
    trailing: dict[str, str] = field(default_factory=dict)  # tags after the Cluster
    timecode: int | None = None
    cluster_size_known: bool | None = None
    frames: int = 0

    @property
    def number(self) -> str | None:
        return self.leading.get(FRAGMENT_NUMBER)

    @property
    def complete(self) -> bool:
        return CONTINUATION_TOKEN in self.trailing


_NAMES = {mkv.EBML: "EBML", mkv.INFO: "Info", mkv.TRACKS: "Tracks", mkv.TAGS: "Tags", mkv.CLUSTER: "Cluster",
          mkv.SEEK_HEAD: "SeekHead"}  # fmt: skip


def _head(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(id, size or -1 for unknown, where the payload starts) at ``pos``, or None if cut off there."""
    ident = mkv.read_vint(data, pos, keep_marker=True)
    if ident is None:
        return None
    size = mkv.read_vint(data, pos + ident[1])
    if size is None:
        return None
    return ident[0], size[0], pos + ident[1] + size[1]


def _elements(data: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while pos < end and (head := _head(data, pos)) is not None:
        ident, size, body = head
        assert size >= 0 and body + size <= end, "a truncated element inside a complete one"
        out.append((ident, body, body + size))
        pos = body + size
    return out


def _tags(data: bytes, body: int, end: int) -> dict[str, str]:
    found = {}
    for tag, tag_body, tag_end in _elements(data, body, end):
        if tag != mkv.TAG:
            continue
        for simple, simple_body, simple_end in _elements(data, tag_body, tag_end):
            if simple == mkv.SIMPLE_TAG:
                values = {i: data[b:e].decode() for i, b, e in _elements(data, simple_body, simple_end)}
                found[values[mkv.TAG_NAME]] = values.get(mkv.TAG_STRING, "")
    return found


def walk(data: bytes) -> list[Document]:
    """GetMedia's output split into its documents; the last may be cut off (then not ``complete``)."""
    docs: list[Document] = []
    doc: Document | None = None
    pos = 0
    while (head := _head(data, pos)) is not None:
        ident, size, body = head
        if ident == mkv.SEGMENT:
            pos = body  # its children follow (its size is unknown)
            continue
        if ident == mkv.CLUSTER:
            assert doc is not None, "a Cluster outside a document"
            doc.elements.append("Cluster")
            doc.cluster_size_known = size >= 0
            end = len(data) if size < 0 else min(len(data), body + size)
            pos = body
            while pos < end and (child := _head(data, pos)) is not None:
                child_id, child_size, child_body = child
                if size < 0 and child_id in _LEVEL1:
                    break
                if child_body + child_size > len(data):
                    return docs
                if child_id == mkv.TIMECODE:
                    doc.timecode = int.from_bytes(data[child_body : child_body + child_size], "big")
                elif child_id in (mkv.SIMPLE_BLOCK, mkv.BLOCK_GROUP):
                    doc.frames += 1
                pos = child_body + child_size
            doc.end = pos
            if size >= 0 and pos < body + size:
                return docs  # cut off inside the Cluster
            continue
        if size < 0 or body + size > len(data):
            return docs  # cut off
        if ident == mkv.EBML or (ident == mkv.TAGS and (doc is None or doc.trailing)):
            doc = Document(start=pos)  # an error document is a Tags element alone
            docs.append(doc)
        assert doc is not None, f"element 0x{ident:X} outside a document"
        doc.elements.append(_NAMES.get(ident, f"0x{ident:X}"))
        if ident == mkv.TAGS:
            (doc.trailing if "Cluster" in doc.elements else doc.leading).update(
                _tags(data, body, body + size)
            )
        pos = doc.end = body + size
    return docs


def complete(docs: list[Document]) -> list[Document]:
    return [d for d in docs if d.complete]


@dataclass
class Media:
    data: bytes
    docs: list[Document]
    ended: bool  # the server ended the response (rather than the reader stopping)
    content_type: str
    last_data: float  # time.monotonic() when the last bytes came
    done: float  # time.monotonic() when the response ended or the reader stopped

    @property
    def numbers(self) -> list[str | None]:
        return [d.number for d in complete(self.docs)]

    def complete_bytes(self) -> bytes:
        """The output up to the end of its last complete fragment."""
        done = complete(self.docs)
        return self.data[: done[-1].end] if done else b""


class MediaReader:
    """A GetMedia response, open (its headers have arrived) and read as it arrives."""

    def __init__(self, client: Any, selector: dict[str, Any], **stream: str) -> None:
        self.response = client.get_media(StartSelector=selector, **stream)
        self.data = bytearray()
        self.last_data = time.monotonic()

    def read(
        self,
        *,
        until: Callable[[list[Document]], bool] | None = None,
        count: int | None = None,
        timeout: float = 20.0,
    ) -> Media:
        """What has come so far, once ``count`` complete fragments (or ``until(docs)``) are there, or the
        whole response if neither is given. The response stays open (``close`` it, or use ``with``)."""
        if count is not None:
            until = lambda docs: len(complete(docs)) >= count  # noqa: E731
        body = self.response["Payload"]
        raw = body._raw_stream  # urllib3's response: read1 returns what has arrived, not a full buffer
        deadline = time.monotonic() + timeout
        ended = False
        while not (until is not None and until(walk(bytes(self.data)))):
            piece = raw.read1(65536)
            if not piece:
                ended = True
                break
            self.data += piece
            self.last_data = time.monotonic()
            assert self.last_data < deadline, (
                f"GetMedia: not there after {timeout} s: {walk(bytes(self.data))}"
            )
        data = bytes(self.data)
        return Media(data, walk(data), ended, self.response["ContentType"], self.last_data, time.monotonic())

    def close(self) -> None:
        self.response["Payload"].close()

    def __enter__(self) -> MediaReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_media(
    client: Any,
    selector: dict[str, Any],
    *,
    until: Callable[[list[Document]], bool] | None = None,
    count: int | None = None,
    timeout: float = 20.0,
    **stream: str,
) -> Media:
    """GetMedia from ``selector``, read until ``count`` complete fragments (or ``until(docs)``), or to its
    end if neither is given."""
    reader = MediaReader(client, selector, **stream)
    try:
        return reader.read(until=until, count=count, timeout=timeout)
    finally:
        reader.close()


def decoded_frames(data: bytes) -> int:
    """How many video frames PyAV (FFmpeg) decodes from ``data``."""
    with av.open(io.BytesIO(data), format="matroska") as container:
        return sum(1 for _ in container.decode(video=0))


# --- editing an MKV (encoded with write_crc32=0: no CRC-32 element goes stale) -------------------------
def rewrite(
    data: bytes, edit: Callable[[int, int, list[tuple[int, bytes]]], list[tuple[int, bytes]]]
) -> bytes:
    """``data`` with each level-1 element in its Segment rebuilt from ``edit(id, cluster index or -1,
    [(child id, child payload)])``: how tests make MKV that no encoder writes."""
    out = []
    pos, index = 0, 0
    while (head := _head(data, pos)) is not None:
        ident, size, body = head
        if ident == mkv.SEGMENT:
            out.append(data[pos:body])  # an unknown-size Segment: its children follow
            pos = body
            continue
        assert size >= 0 and body + size <= len(data)
        if ident in (mkv.TRACKS, mkv.CLUSTER):
            kids = [(kid, data[b:e]) for kid, b, e in _elements(data, body, body + size)]
            kids = edit(ident, index if ident == mkv.CLUSTER else -1, kids)
            out.append(mkv.element(ident, b"".join(mkv.element(kid, payload) for kid, payload in kids)))
            index += ident == mkv.CLUSTER
        else:
            out.append(data[pos : body + size])
        pos = body + size
    return b"".join(out)


def with_timecodes(data: bytes, timecodes: list[int]) -> bytes:
    """Each Cluster's Timecode replaced (its blocks keep their relative times)."""

    def edit(ident: int, index: int, kids: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if ident != mkv.CLUSTER:
            return kids
        return [(k, timecodes[index].to_bytes(8, "big") if k == mkv.TIMECODE else p) for k, p in kids]

    return rewrite(data, edit)


def with_tracks(data: bytes, count: int) -> bytes:
    """The Tracks element declaring ``count`` copies of the video track (numbers 1..count)."""

    def edit(ident: int, index: int, kids: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if ident != mkv.TRACKS:
            return kids
        (entry,) = [p for k, p in kids if k == mkv.TRACK_ENTRY]
        copies = []
        for number in range(1, count + 1):
            fields = [(k, bytes([number]) if k in (mkv.TRACK_NUMBER, TRACK_UID) else p)
                      for k, p in _children(entry)]  # fmt: skip
            copies.append((mkv.TRACK_ENTRY, b"".join(mkv.element(k, p) for k, p in fields)))
        return copies

    return rewrite(data, edit)


def on_track(data: bytes, cluster: int, track: int) -> bytes:
    """The blocks of Cluster number ``cluster`` moved to ``track`` (one that Tracks may not declare)."""

    def edit(ident: int, index: int, kids: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if ident != mkv.CLUSTER or index != cluster:
            return kids
        assert all(p[0] == 0x81 for k, p in kids if k == mkv.SIMPLE_BLOCK)  # track 1, a one-byte vint
        return [(k, bytes([0x80 | track]) + p[1:] if k == mkv.SIMPLE_BLOCK else p) for k, p in kids]

    return rewrite(data, edit)


TRACK_UID = 0x73C5


def _children(payload: bytes) -> list[tuple[int, bytes]]:
    return [(kid, payload[b:e]) for kid, b, e in _elements(payload, 0, len(payload))]


def with_unknown_sizes(data: bytes) -> bytes:
    """Every Cluster written with an unknown size, as the Kinesis Video producer SDK writes them: each one
    ends where the next begins (the last one where the body ends)."""
    out = []
    pos = 0
    while (head := _head(data, pos)) is not None:
        ident, size, body = head
        if ident == mkv.SEGMENT:
            out.append(data[pos:body])
            pos = body
            continue
        if ident == mkv.CLUSTER:
            out.append(mkv.CLUSTER.to_bytes(4, "big") + mkv.UNKNOWN_SIZE)
            out.append(data[body : body + size])
        else:
            out.append(data[pos : body + size])
        pos = body + size
    return b"".join(out)
