"""Sampled RGB frames from a Kinesis Video stream read with GetMedia: the frame source of stream processors.

GetMedia answers with fragments, each a small MKV document with Kinesis Video's tags (fragment number,
server and producer timestamps before the Cluster, a continuation token after it). FFmpeg's demuxer sees
none of those tags and stops at the second EBML header, so the bytes go through MLHarbor's own push parser
(``engines.mkv``) and each H.264 frame is decoded with a PyAV codec context as soon as its block arrives:
at the live edge MLHarbor's GetMedia sends the fragment being received frame by frame, and the frame is
analysed then, not when its fragment closes. Every frame therefore knows its fragment's number, its
timestamps and its offset in the fragment, which is what Rekognition's records report.

Like ``engines.video.VideoSource`` (same ``open``/``next``/``close``): one decoder thread, sampling on a
grid of ``1/fps`` seconds of producer time, and a single latest-frame slot, so a slow consumer gets the
newest frame. Except when reading the past: a frame more than ``catch_up_seconds`` behind the wall clock
waits for the consumer instead of replacing an unread one (``catch_up=True``: a connected home session
started at an earlier position must not skip video), and the live edge again overwrites.

Where the bytes come from is the caller's: ``connect(after)`` returns an iterable of byte chunks for the
stream's fragments after fragment ``after`` (None: the caller's start position), and ``close()``-able. When
an answer ends (GetMedia ends one that has caught up and stays quiet), the source connects again after the
last complete fragment; frames it already published are decoded again (the decoder needs them) but not
published twice. ``connect`` raises ``VideoUnusable`` when the stream can never be read (gone, not H.264)
and any other exception for a failure worth retrying (both end the source; the caller decides).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import av
import av.error

from mlharbor.engines import mkv
from mlharbor.engines.video import FragmentPosition, Frame, VideoError, to_rgb

log = logging.getLogger(__name__)

H264 = "V_MPEG4/ISO/AVC"
_EPSILON = 1e-3
_JOIN_SECONDS = 1.0


class VideoUnusable(VideoError):
    """The stream can never be read as it is (gone, not H.264): fail rather than reconnect."""


class Answer(Protocol):
    def __iter__(self) -> Any: ...

    def close(self) -> None: ...


Connect = Callable[[str | None], Answer]


class FragmentVideoSource:
    is_file = False

    def __init__(
        self, connect: Connect, name: str, *, fps: float = 5.0, max_side: int | None = None,
        catch_up: bool = False, catch_up_seconds: float = 3.0,
    ) -> None:  # fmt: skip
        self._connect, self._name = connect, name
        self.fps, self.max_side = fps, max_side
        self.catch_up, self.catch_up_seconds = catch_up, catch_up_seconds
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._error: str | None = None
        self._unusable = False
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._answer: Answer | None = None
        self.dropped = 0
        self.frames_decoded = 0
        self._sampled = 0
        self._next_sample: float | None = None
        self._first_time: float | None = None
        self._published_until: float | None = None  # producer time of the last published frame
        self.last_fragment: str | None = None  # the last fragment read to its end (its continuation token)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def open(self, timeout: float = 10.0) -> None:
        """Connect (in the caller's thread: a missing stream fails right here), then start the decoder."""
        del timeout  # the connection's own timeouts bound it
        self._answer = self._connect_or_raise(None)
        self._thread = threading.Thread(target=self._run, name=f"kvs-decoder {self._name}", daemon=True)
        self._thread.start()

    def next(self, timeout: float) -> Frame | None:
        with self._cond:
            self._cond.wait_for(
                lambda: self._slot is not None or self._error is not None or self._closed,
                timeout=max(0.0, timeout),
            )
            frame, self._slot = self._slot, None
            if frame is not None:
                self._cond.notify_all()  # a catching-up decoder waits for the slot to empty
                return frame
            if self._closed:
                raise VideoError(f"{self._name} is closed")
            if self._error is not None:
                raise (VideoUnusable if self._unusable else VideoError)(self._error)
            return None

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._closed = True
            self._slot = None
            self._cond.notify_all()
        answer = self._answer
        if answer is not None:
            # Wakes a decoder blocked reading the answer; closing a half-dead connection may fail any way.
            with contextlib.suppress(Exception):
                answer.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_SECONDS)

    def __enter__(self) -> FragmentVideoSource:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the decoder thread --------------------------------------------------------------------------
    def _connect_or_raise(self, after: str | None) -> Answer:
        try:
            return self._connect(after)
        except VideoError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller's client: any failure is "cannot read now"
            raise VideoError(f"cannot read {self._name}: {exc}") from None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                assert self._answer is not None
                self._read(self._answer)
                if self._stop.is_set():
                    break
                self._answer.close()
                self._answer = self._connect_or_raise(self.last_fragment)
        except VideoError as exc:
            self._fail(str(exc), unusable=isinstance(exc, VideoUnusable))
        except Exception as exc:  # noqa: BLE001 - any other failure ends the source with its reason
            if not self._stop.is_set():
                log.warning("reading %s failed", self._name, exc_info=True)
                self._fail(f"cannot read {self._name}: {exc}")

    def _fail(self, message: str, unusable: bool = False) -> None:
        with self._cond:
            self._error, self._unusable = message, unusable
            self._cond.notify_all()

    def _read(self, answer: Answer) -> None:
        """One GetMedia answer, to its end."""
        parser = mkv.MkvParser(tags=True)
        decoder: Any = None
        private: bytes | None = None
        track: int | None = None
        scale = mkv.DEFAULT_TIMECODE_SCALE
        fragment: dict[str, str] = {}
        cluster_tc = 0
        for chunk in answer:
            if self._stop.is_set():
                return
            for event in parser.feed(chunk):
                if isinstance(event, mkv.Header):
                    track, codec = _video_track(event, self._name)
                    scale = event.timecode_scale
                    if decoder is None or codec.codec_private != private:
                        decoder, private = _decoder(codec), codec.codec_private
                elif isinstance(event, mkv.Tags):
                    if "AWS_KINESISVIDEO_FRAGMENT_NUMBER" in event.values:
                        fragment = event.values
                    elif "AWS_KINESISVIDEO_CONTINUATION_TOKEN" in event.values:
                        self.last_fragment = event.values["AWS_KINESISVIDEO_CONTINUATION_TOKEN"]
                    elif "AWS_KINESISVIDEO_ERROR_CODE" in event.values:
                        log.warning("%s: GetMedia reports %s", self._name, event.values)
                elif isinstance(event, mkv.ClusterStart):
                    cluster_tc = event.timecode
                elif isinstance(event, mkv.Frame) and event.track == track and decoder is not None:
                    offset = (event.timecode - cluster_tc) * scale / 1e9
                    if not self._decode(decoder, event, fragment, offset):
                        return

    def _decode(self, decoder: Any, block: mkv.Frame, fragment: dict[str, str], offset: float) -> bool:
        packet = av.Packet(block.data)
        packet.pts = packet.dts = block.timecode
        try:
            decoded = decoder.decode(packet)
        except av.error.FFmpegError as exc:
            log.debug("%s: skipping a frame the decoder refused: %s", self._name, exc)
            return True
        for picture in decoded:
            self.frames_decoded += 1
            if not self._publish(picture, fragment, offset):
                return False
        return True

    def _publish(self, picture: Any, fragment: dict[str, str], offset: float) -> bool:
        producer_start = float(fragment.get("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", "0"))
        producer = producer_start + offset
        if self._published_until is not None and producer <= self._published_until + _EPSILON / 10:
            return True  # seen before a reconnection
        if self._next_sample is not None and producer + _EPSILON < self._next_sample:
            return True
        period = 1.0 / self.fps
        due = producer if self._next_sample is None else self._next_sample + period
        self._next_sample = due if due > producer + _EPSILON else producer + period
        if self._first_time is None:
            self._first_time = producer
        received = time.time()
        frame = Frame(
            pixels=to_rgb(picture, self.max_side),
            index=self._sampled,
            stream_seconds=round(producer - self._first_time, 6),
            producer_time=producer,
            received_time=received,
            fragment=FragmentPosition(
                fragment_number=fragment.get("AWS_KINESISVIDEO_FRAGMENT_NUMBER", ""),
                server_timestamp=float(fragment.get("AWS_KINESISVIDEO_SERVER_TIMESTAMP", "0")),
                producer_timestamp=producer_start,
                offset=round(offset, 3),
            ),
        )
        self._sampled += 1
        self._published_until = producer
        behind = self.catch_up and received - producer > self.catch_up_seconds
        with self._cond:
            if behind:  # reading the past: hand every sampled frame over
                self._cond.wait_for(lambda: self._slot is None or self._closed)
            if self._closed:
                return False
            if self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self._cond.notify_all()
        return True


def _video_track(header: mkv.Header, name: str) -> tuple[int, mkv.Track]:
    videos = [t for t in header.tracks.values() if t.type == 1 or t.codec_id.startswith("V_")]
    if not videos:
        raise VideoUnusable(f"Stream {name} has no video track")
    video = videos[0]
    if video.codec_id != H264:
        raise VideoUnusable(f"Stream {name} is not H.264 (its codec is {video.codec_id})")
    return video.number, video


def _decoder(track: mkv.Track) -> Any:
    decoder = av.CodecContext.create("h264", "r")
    if track.codec_private:
        decoder.extradata = track.codec_private
    decoder.thread_type = "NONE"  # frame threads would hold frames back: decode each as it arrives
    return decoder


def chunks_of(stream: Any) -> Iterable[bytes]:
    """Byte chunks of an HTTP response body as they arrive (a botocore StreamingBody's urllib3 response
    yields each chunk of a chunked answer at once; ``read(n)`` would wait for n bytes)."""
    raw = getattr(stream, "_raw_stream", stream)
    if hasattr(raw, "stream"):
        return raw.stream(None, decode_content=False)  # type: ignore[no-any-return]
    return iter(lambda: stream.read(65536), b"")
