"""Archived Kinesis Video as clips and stills: MKV fragments remuxed into one classic MP4 (GetClip), and the
frame shown at a given instant, encoded as JPEG or PNG (GetImages).

Each stored fragment is a complete MKV document (EBML header, Segment, Info, Tracks, one Cluster), so each
one is opened on its own with PyAV. Why not one long MKV of all of them: fragments of different PutMedia
sessions have different headers (a producer that restarts may change resolution or SPS) and their Cluster
timecodes restart (RELATIVE producers start every session at 0), so a concatenation would go back in
time. Opening fragments one by one costs a few milliseconds each and lets every packet be placed on the
clip's timeline by its fragment's producer timestamp.

Remuxing, never re-encoding: GetClip copies H.264/H.265 packets (and AAC audio) into the MP4 as they are,
so a clip costs what reading the fragments costs, and its pictures are the producer's, bit for bit. MKV
has no decoding timestamps; they are made up per fragment from the sorted presentation times (the usual
remuxer's rule), which gives the MP4 muxer increasing DTS with and without B-frames. The MP4 is written
to a temporary file because FFmpeg's ``faststart`` (the ``moov`` box before the media, so a player can
start before the download ends) rewrites the file by name.

Stills decode the fragment holding the instant from its keyframe (every fragment starts with one) up to
the instant, and keep the last frame at or before it: what a viewer saw at that moment.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
from PIL import Image

from mlharbor.engines import mkv

H264 = "V_MPEG4/ISO/AVC"
H265 = "V_MPEGH/ISO/HEVC"
AAC = "A_AAC"
G711 = "A_MS/ACM"
VIDEO_CODECS = frozenset({H264, H265})
AUDIO_CODECS = frozenset({AAC, G711})  # G.711: accepted, left out of the MP4 (FFmpeg's mp4 muxer refuses it)
_MICROSECONDS = Fraction(1, 1_000_000)
# Instants are float epoch seconds (about 2e-7 s apart at today's epoch); frame times are whole milliseconds.
# A frame this close after an instant counts as shown at it.
EPSILON = 0.0005


class ClipError(Exception):
    """The media cannot be made into a clip or an image. Subclasses name the AWS condition."""


class UnsupportedMedia(ClipError):
    pass


class MissingCodecPrivate(ClipError):
    pass


class InvalidCodecPrivate(ClipError):
    pass


class InvalidMedia(ClipError):
    pass


class NoMedia(ClipError):
    """Nothing to put in the clip (its fragments were deleted while it was being made)."""


def header_tracks(header: bytes) -> dict[int, mkv.Track]:
    """The tracks a stored fragment's header (EBML .. Tracks) declares, by track number in Tracks order."""
    parser = mkv.MkvParser()
    for event in parser.feed(header + mkv.cluster_start_unknown(0)):
        if isinstance(event, mkv.Header):
            return event.tracks
    raise mkv.MkvError("the header has no Tracks")


def video_track(tracks: dict[int, mkv.Track]) -> mkv.Track | None:
    """Track 1 if it is there (the track AWS's rules name), else the first video track."""
    if 1 in tracks:
        return tracks[1]
    return next((t for t in tracks.values() if t.type == 1), None)


def check_clip_tracks(tracks: dict[int, mkv.Track]) -> None:
    """AWS's rules for MP4 output: track 1 H.264 or H.265 with its codec private data (avcC / hvcC),
    other tracks AAC (with its AudioSpecificConfig) or G.711."""
    video = video_track(tracks)
    if video is None or video.codec_id not in VIDEO_CODECS:
        found = video.codec_id if video else "no video track"
        raise UnsupportedMedia(f"Track 1 must be {H264} or {H265}, not {found}.")
    if not video.codec_private:
        raise MissingCodecPrivate("The video track has no codec private data.")
    if not _valid_private(video):
        raise InvalidCodecPrivate(
            f"The video track's codec private data is not a valid {video.codec_id} record."
        )
    for track in tracks.values():
        if track is video:
            continue
        if track.codec_id not in AUDIO_CODECS:
            raise UnsupportedMedia(f"Track {track.number} must be {AAC} or {G711}, not {track.codec_id}.")
        if track.codec_id == AAC and not track.codec_private:
            raise MissingCodecPrivate(f"The AAC track {track.number} has no codec private data.")


def _valid_private(track: mkv.Track) -> bool:
    data = track.codec_private
    # AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3) is at least 7 bytes, HEVC's 23; both start
    # with configurationVersion 1.
    return data[0] == 1 and len(data) >= (7 if track.codec_id == H264 else 23)


@dataclass(frozen=True, slots=True)
class Piece:
    """One fragment for a clip: its MKV document, its Cluster's Timecode (in the track's time base) and
    where that Timecode lies on the clip's timeline (seconds)."""

    document: bytes
    timecode: int
    at: float


@dataclass(slots=True)
class _Packet:
    packet: av.Packet
    output: int  # index of the output stream
    pts: int  # microseconds on the clip's timeline
    duration: int


def remux_mp4(pieces: Iterable[Piece]) -> bytes:
    """A classic (non-fragmented, ``moov`` first) MP4 of the pieces' video (and AAC audio), in order.

    The first piece's tracks make the MP4's tracks; later pieces must have the same (the caller checks).
    A piece that starts before the previous one ended is moved to that end, so time never goes back.
    """
    with tempfile.TemporaryDirectory(prefix="mlharbor-clip-") as folder:
        path = os.path.join(folder, "clip.mp4")
        with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            outputs: dict[int, av.stream.Stream] = {}
            last_dts: dict[int, int] = {}
            clip_end = 0
            wrote = False
            for piece in pieces:
                packets = _demux(piece, out, outputs)
                if not packets:
                    continue
                shift = max(0, clip_end - min(p.pts for p in packets))
                for item in packets:
                    item.pts += shift
                    clip_end = max(clip_end, item.pts + item.duration)
                for index in {p.output for p in packets}:
                    _time(outputs[index], [p for p in packets if p.output == index], last_dts)
                out.mux([p.packet for p in packets])
                wrote = True
            if not wrote:
                raise NoMedia("The fragments hold no frames.")
        with open(path, "rb") as file:
            return file.read()


def _time(stream: av.stream.Stream, items: list[_Packet], last_dts: dict[int, int]) -> None:
    """Set one stream's packets (in decoding order) for the muxer: DTS from the sorted presentation times,
    moved back by the reordering delay so that no DTS comes after its PTS, and always increasing."""
    ordered = sorted(p.pts for p in items)
    delay = max(0, max(s - p.pts for s, p in zip(ordered, items, strict=True)))
    for dts, item in zip(ordered, items, strict=True):
        dts = max(dts - delay, last_dts.get(item.output, -1) + 1)
        last_dts[item.output] = dts
        packet = item.packet
        packet.stream = stream
        packet.time_base = _MICROSECONDS
        packet.pts, packet.dts, packet.duration = max(item.pts, dts), dts, item.duration


def _demux(
    piece: Piece, out: av.container.OutputContainer, outputs: dict[int, av.stream.Stream]
) -> list[_Packet]:
    """The piece's packets with times on the clip's timeline; output streams made from the first piece."""
    try:
        with av.open(io.BytesIO(piece.document), format="matroska") as source:
            selected = [s for s in source.streams if _copied(s)]
            if not outputs:
                for index, stream in enumerate(selected):
                    outputs[index] = out.add_stream_from_template(stream)
            packets: list[_Packet] = []
            by_input = {s.index: i for i, s in enumerate(selected) if i in outputs}
            for packet in source.demux(selected):
                if packet.pts is None or packet.size == 0 or packet.stream.index not in by_input:
                    continue
                base = packet.stream.time_base
                offset = float((packet.pts - piece.timecode) * base)
                duration = float((packet.duration or 0) * base)
                packets.append(_Packet(packet, by_input[packet.stream.index],
                                       round((piece.at + offset) * 1e6), round(duration * 1e6)))  # fmt: skip
    except av.error.FFmpegError as exc:
        raise InvalidMedia(f"A fragment could not be read: {exc}") from None
    _fill_durations(packets)
    return packets


def _copied(stream: av.stream.Stream) -> bool:
    return stream.type == "video" or (stream.type == "audio" and stream.codec_context.name == "aac")


def _fill_durations(packets: list[_Packet]) -> None:
    """Packets without a duration last until the next one of their stream (the last: as long as the one
    before it, else 1/30 s)."""
    following: dict[int, int] = {}
    previous: dict[int, int] = {}
    for item in sorted(packets, key=lambda p: p.pts, reverse=True):
        if item.duration <= 0 and item.output in following:
            item.duration = following[item.output] - item.pts
        following[item.output] = item.pts
    for item in sorted(packets, key=lambda p: p.pts):
        if item.duration <= 0:
            item.duration = previous.get(item.output, 33_333)
        previous[item.output] = item.duration


def frames_at(document: bytes, timecode: int, offsets: Sequence[float]) -> list[av.VideoFrame]:
    """For each offset (seconds after the Cluster's Timecode ``timecode``), the video frame on screen then:
    the last one at or before it (the first frame for an offset before it). Decodes only as far as the
    last offset needs. ClipError if the document has no video or it does not decode."""
    wanted = sorted(range(len(offsets)), key=lambda i: offsets[i])
    chosen: list[av.VideoFrame | None] = [None] * len(offsets)
    try:
        with av.open(io.BytesIO(document), format="matroska") as source:
            if not source.streams.video:
                raise InvalidMedia("The fragment has no video track.")
            stream = source.streams.video[0]
            base = stream.time_base
            shown: av.VideoFrame | None = None
            position = 0
            for frame in source.decode(stream):
                if frame.pts is None:
                    continue
                at = float((frame.pts - timecode) * base)
                while (
                    position < len(wanted) and shown is not None and offsets[wanted[position]] < at - EPSILON
                ):
                    chosen[wanted[position]] = shown
                    position += 1
                if position == len(wanted):
                    break
                shown = frame
            while position < len(wanted) and shown is not None:
                chosen[wanted[position]] = shown
                position += 1
    except av.error.FFmpegError as exc:
        raise InvalidMedia(f"The fragment could not be decoded: {exc}") from None
    if any(frame is None for frame in chosen):
        raise InvalidMedia("The fragment holds no video frame.")
    return chosen  # type: ignore[return-value]


def output_size(width: int, height: int, want_width: int | None, want_height: int | None) -> tuple[int, int]:
    """The image size GetImages makes: both given, exactly that (stretched); one given, the other from the
    frame's aspect ratio; neither, the frame's own size."""
    if want_width and want_height:
        return want_width, want_height
    if want_width:
        return want_width, max(1, round(height * want_width / width))
    if want_height:
        return max(1, round(width * want_height / height)), want_height
    return width, height


def encode_image(frame: av.VideoFrame, image_format: str, quality: int, size: tuple[int, int]) -> bytes:
    """The frame as JPEG (``quality`` 1-100) or PNG, scaled to ``size`` (width, height)."""
    width, height = size
    picture: Image.Image = frame.to_image(width=width, height=height)
    buffer = io.BytesIO()
    if image_format == "JPEG":
        picture.save(buffer, format="JPEG", quality=quality)
    else:
        picture.save(buffer, format="PNG")
    return buffer.getvalue()
