"""The push parser reads MKV however it is cut into pieces, and a frame's bytes are the coded frame whether
the producer wrote SimpleBlocks or BlockGroups (which carry more elements after their Block)."""

from __future__ import annotations

import struct

import av

from mlharbor.engines import mkv
from tests.kvs_producer import encode_mkv


def parse(data: bytes, piece: int) -> list[mkv.Event]:
    parser = mkv.MkvParser()
    events: list[mkv.Event] = []
    for at in range(0, len(data), piece):
        events += parser.feed(data[at : at + piece])
    return events + parser.end()


def as_block_groups(data: bytes) -> bytes:
    """The same video with each SimpleBlock rewritten as a BlockGroup (Block, BlockDuration, and a
    ReferenceBlock on frames that are not keyframes), Clusters and all else unchanged."""
    events = parse(data, len(data))
    header = next(e for e in events if isinstance(e, mkv.Header))
    out, cluster, timecode = [header.raw], [], 0
    for event in events:
        if isinstance(event, mkv.ClusterStart):
            timecode, cluster = event.timecode, [mkv.uint_element(mkv.TIMECODE, event.timecode)]
        elif isinstance(event, mkv.Frame):
            head = bytes([0x80 | event.track]) + struct.pack(">hB", event.timecode - timecode, 0)
            block = head + event.data
            group = mkv.element(mkv.BLOCK, block) + mkv.uint_element(0x9B, 100)
            if not event.keyframe:
                group += mkv.element(mkv.REFERENCE_BLOCK, b"\xff\x9c")  # -100 ms
            cluster.append(mkv.element(mkv.BLOCK_GROUP, group))
        elif isinstance(event, mkv.ClusterEnd):
            out.append(mkv.element(mkv.CLUSTER, b"".join(cluster)))
    return b"".join(out)


def decoded(events: list[mkv.Event]) -> int:
    header = next(e for e in events if isinstance(e, mkv.Header))
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = header.tracks[1].codec_private
    count = 0
    for event in events:
        if isinstance(event, mkv.Frame):
            count += len(decoder.decode(av.Packet(event.data)))
    return count + len(decoder.decode(None))


def test_frames_are_the_same_however_the_bytes_arrive_and_however_blocks_are_written():
    video = encode_mkv(seconds=2, fps=10, fragment_seconds=1)
    whole = parse(video, len(video))
    frames = [(e.timecode, e.keyframe, e.data) for e in whole if isinstance(e, mkv.Frame)]
    assert len(frames) == 20 and [f[1] for f in frames].count(True) == 2
    for piece in (1, 7, 4096):
        again = [(e.timecode, e.keyframe, e.data) for e in parse(video, piece) if isinstance(e, mkv.Frame)]
        assert again == frames
    grouped = parse(as_block_groups(video), 333)
    assert [(e.timecode, e.keyframe, e.data) for e in grouped if isinstance(e, mkv.Frame)] == frames
    assert decoded(grouped) == 20
