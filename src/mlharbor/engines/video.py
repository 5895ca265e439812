"""Live video in, sampled RGB frames out: the frame source of Rekognition stream processors.

A stream processor analyses a camera at a fixed rate (a few frames per second) and must always look at the
*present*: when analysis is slower than the camera, old frames are worth nothing. ``VideoSource`` therefore
never queues frames. Design:

- ``open()`` opens the container with PyAV in the caller's thread, so a bad URL fails right there with a
  ``VideoError``, then starts ONE daemon decoder thread. Opening and every read are bounded: PyAV's
  interrupt-callback timeout (``av.open(timeout=(open, read))``) plus FFmpeg's own socket timeouts
  (``timeout`` for RTSP, which runs over TCP here, ``rw_timeout`` for other network protocols, both in
  microseconds), so a silent camera cannot hang a worker.
- The decoder thread decodes every packet (decoding is cheap and must not fall behind the live edge) but
  converts to RGB only the frames it *samples*: a frame is sampled when its stream time reaches the next
  sample time. Sample times form a grid of period ``1/fps`` (no drift: a 30 fps camera sampled at 5 fps
  gives every 6th frame); a frame that comes a period or more late (a stall) restarts the grid one period
  after it. So at most ``fps`` frames per second of video, and no burst of catch-up frames after a stall.
- A sampled frame goes into a single latest-frame slot guarded by a condition variable; an unconsumed frame
  there is overwritten (and counted in ``dropped``). ``next()`` takes the slot. Memory is bounded by one
  frame whatever the consumer does, and a slow consumer always gets the newest frame.
- Local files (a path or ``file://`` URL) behave like a camera, so tests, benchmarks and demos exercise the
  same timing as production: frames are released at their native pace (pts relative to the first frame,
  against a monotonic clock started at ``open()``), and with ``loop_files`` the file restarts at EOF while
  ``stream_seconds`` keeps increasing (loop k adds k times the file's duration). Pacing waits on an
  ``Event``, so ``close()`` stops the thread at once. Network sources are never paced: they come at their
  own pace, and the decoder reads as fast as they arrive.
- Errors in the decoder thread end the source: the first one is remembered and ``next()`` raises it as a
  ``VideoError`` with a short message (after returning a frame still waiting in the slot). A packet the
  codec rejects is skipped (counted in ``decode_errors``), as a lossy network would need; only a long run
  of them ends the source. Reconnecting a dropped camera is the caller's decision, not this module's.

Timestamps: ``stream_seconds`` is the position since ``open()`` (pts of the frame minus pts of the first
frame, plus loop offsets; a timestamp that jumps backwards, e.g. a wrapping MPEG-TS clock, is re-anchored
so it keeps increasing). ``producer_time`` is the capture time on the wall clock: the container's own
real-time clock when it has one (``start_time_realtime``, which RTSP sets from the camera's RTCP sender
reports), else ``open_time + stream_seconds`` (but never after ``received_time``: a network source may
send faster than real time, e.g. catching up after a stall). ``received_time`` is when the frame left the
decoder here. ``Frame.index`` numbers the *sampled* frames, so a consumer sees a gap where frames were
dropped.

Limits: ``close()`` cannot interrupt a network read already in progress (PyAV does not expose that); it
waits briefly, and a thread still stuck in a read exits by itself within the read timeout, closing its
container. Always ``close()`` a source (or use it as a context manager): a looping file plays forever.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import av
import av.error
import numpy

log = logging.getLogger(__name__)

# Frame times are float seconds converted from integer pts; a sample time this close counts as reached.
_EPSILON = 1e-3
# A run of this many packets that the codec rejects (and no good frame in between) ends the source.
_MAX_CONSECUTIVE_DECODE_ERRORS = 100
# How long close() waits for the decoder thread (it exits in milliseconds unless stuck in a network read).
_JOIN_SECONDS = 1.0
# Used as a frame's duration when neither the frame nor the stream tells it.
_DEFAULT_FRAME_SECONDS = 0.04
NETWORK_TIMEOUT_OPTIONS = {"rtsp": "timeout", "rtsps": "timeout"}


@dataclass(frozen=True, eq=False)  # eq=False: frames compare by identity (== on arrays is elementwise)
class Frame:
    """One sampled frame."""

    pixels: numpy.ndarray  # RGB uint8, H x W x 3 (shrunk so the longer side <= max_side when given)
    # 0-based sample number: how many frames this source sampled (put in its slot) before this one. The
    # frames a consumer gets have consecutive indexes unless frames were dropped in between.
    index: int
    stream_seconds: float  # position in the source since open(); increases across loops of a file
    producer_time: float  # epoch seconds the frame was captured (see the module docstring)
    received_time: float  # epoch seconds it was decoded here
    # Where the frame sits in its Kinesis Video stream (frames read from GetMedia; None for other sources).
    fragment: FragmentPosition | None = None


@dataclass(frozen=True)
class FragmentPosition:
    fragment_number: str
    server_timestamp: float  # epoch seconds the fragment began to arrive at Kinesis Video
    producer_timestamp: float  # epoch seconds of the fragment's first frame, as the producer stamped it
    offset: float  # seconds from the fragment's first frame to this one


class VideoError(Exception):
    """The source cannot be opened or read; str() is a short human message, e.g.
    'cannot open rtsp://x: Connection refused'."""


def redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    parts = urlsplit(url)
    if not parts.scheme or parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def reason_of(exc: BaseException) -> str:
    """A short reason from an exception: FFmpeg's strerror without the repeated file name."""
    if isinstance(exc, VideoError):
        return str(exc)
    strerror = getattr(exc, "strerror", None)
    if isinstance(strerror, str) and strerror:
        return strerror
    return str(exc) or type(exc).__name__


def local_path(url: str) -> str | None:
    """The filesystem path of a FILE source, or None for a network source."""
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None  # file://host/share: let FFmpeg try it as given
        return unquote(parts.path)
    if url.startswith("file:"):
        return unquote(url[len("file:") :])
    if "://" in url:
        return None
    return url


def open_container(url: str, timeout: float) -> Any:
    """Open ``url`` (a file path or URL) for reading with PyAV, every step bounded by ``timeout`` seconds:
    PyAV's interrupt timeout for opening, probing and each later read, FFmpeg's own socket timeouts, RTSP
    over TCP. Raises ``VideoError`` with a short reason."""
    timeout = max(0.1, float(timeout))
    path = local_path(url)
    options: dict[str, str] = {}
    if path is not None:
        # "file:" makes FFmpeg take the rest literally (a ':' in a path is not a protocol).
        target = "file:" + os.path.abspath(path)
    else:
        target = url
        scheme = urlsplit(url).scheme.lower()
        micros = str(int(timeout * 1_000_000))
        if scheme in NETWORK_TIMEOUT_OPTIONS:
            options["rtsp_transport"] = "tcp"
            options[NETWORK_TIMEOUT_OPTIONS[scheme]] = micros
        else:
            options["rw_timeout"] = micros
    started = time.monotonic()
    try:
        # PyAV's timeout is an interrupt callback: it bounds opening, probing and every later read.
        return av.open(target, mode="r", options=options, timeout=(timeout, timeout))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        reason = reason_of(exc)
        if isinstance(exc, av.error.ExitError) or time.monotonic() - started >= 0.9 * timeout:
            reason = f"no answer within {timeout:g} s"
        raise VideoError(f"cannot open {redact(url)}: {reason}") from exc


class VideoSource:
    """Frames of a video file or stream, sampled to ``fps`` and always the newest; see the module docstring.

    Use as ``with VideoSource(url, fps=5) as source: frame = source.next(timeout=1.0)``.
    """

    def __init__(
        self, url: str, *, fps: float = 5.0, max_side: int | None = None, loop_files: bool = True
    ) -> None:
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be a positive number, not {fps!r}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be at least 1, not {max_side!r}")
        self.url = url
        self.fps = float(fps)
        self.max_side = max_side
        self.loop_files = loop_files
        self._path = local_path(url)
        self._name = redact(url)
        # Counters (written by the decoder thread, or under the lock; read freely).
        self.frames_decoded = 0
        self.frames_delivered = 0
        self.dropped = 0
        self.decode_errors = 0
        self.loops = 0
        self._native_fps: float | None = None
        # Hand-over between the decoder thread and next().
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._error: str | None = None
        self._ended = False
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._container: Any = None
        self._stream: Any = None
        # Decoder-thread state: clocks, timestamps, sampling.
        self._read_timeout = 10.0
        self._open_time = 0.0
        self._open_mono = 0.0
        self._frame_seconds = _DEFAULT_FRAME_SECONDS
        self._base_raw: float | None = None  # raw time of the first frame
        self._offset = 0.0  # added to (raw - base): loops and re-anchoring
        self._last_raw: float | None = None
        self._last_t: float | None = None
        self._loop_end = 0.0  # stream time where the current loop of a file ends
        self._next_sample: float | None = None
        self._sampled = 0

    # -- public ------------------------------------------------------------------------------------------

    @property
    def is_file(self) -> bool:
        """True for a local file (paced like a camera, looped when ``loop_files``)."""
        return self._path is not None

    @property
    def native_fps(self) -> float | None:
        """The stream's own frame rate as the container states it (None before open() or if unknown)."""
        return self._native_fps

    @property
    def running(self) -> bool:
        """True while the decoder thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def open(self, timeout: float = 10.0) -> None:
        """Open the container (raise VideoError on failure, within about `timeout`), then start ONE daemon
        decoder thread."""
        if self._closed:
            raise VideoError(f"{self._name} is closed")
        if self._thread is not None:
            raise RuntimeError("VideoSource.open() was already called")
        container = self._open_container(timeout)
        try:
            streams = container.streams.video
            if not streams:
                raise VideoError(f"cannot open {self._name}: no video stream")
            stream = streams[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self._native_fps = float(rate) if rate and float(rate) > 0 else None
            if self._native_fps:
                self._frame_seconds = 1.0 / self._native_fps
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        self._open_time, self._open_mono = time.time(), time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"video-decoder {self._name}", daemon=True)
        self._thread.start()

    def next(self, timeout: float) -> Frame | None:
        """The newest sampled frame not yet returned, waiting up to `timeout` seconds; None on timeout.

        Raises VideoError once the decoder has failed, or when a non-looping source has ended and every
        frame was returned (a frame still in the slot is returned first)."""
        if self._thread is None:
            raise VideoError(f"{self._name} is not open")
        with self._cond:
            self._cond.wait_for(
                lambda: self._slot is not None or self._error is not None or self._ended or self._closed,
                timeout=max(0.0, timeout),
            )
            frame, self._slot = self._slot, None
            if frame is not None:
                self.frames_delivered += 1
                return frame
            if self._closed:
                raise VideoError(f"{self._name} is closed")
            if self._error is not None:
                raise VideoError(self._error)
            if self._ended:
                raise VideoError("end of stream")
            return None

    def close(self) -> None:
        """Stop the decoder thread promptly (well under 0.2 s even while it is pacing/sleeping), close the
        container. Idempotent."""
        self._stop.set()
        with self._cond:
            self._closed = True
            self._slot = None
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_SECONDS)
            if thread.is_alive():
                # Blocked in a network read: it exits (and closes its container) when the read returns.
                log.warning(
                    "video decoder for %s still in a read; it stops within its read timeout", self._name
                )

    def __enter__(self) -> VideoSource:
        if self._thread is None:
            self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoSource({self._name!r}, fps={self.fps:g}, max_side={self.max_side})"

    # -- opening -----------------------------------------------------------------------------------------

    def _open_container(self, timeout: float) -> Any:
        self._read_timeout = max(0.1, float(timeout))
        return open_container(self.url, self._read_timeout)

    def _close_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # closing must not raise
                log.debug("closing %s failed", self._name, exc_info=True)

    # -- decoder thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                decoded = self.frames_decoded
                self._play()
                if self._stop.is_set():
                    return
                if not (self.is_file and self.loop_files):
                    break
                if self.frames_decoded == decoded:
                    raise VideoError(f"cannot read {self._name}: no decodable video frames")
                self._restart_file()
            with self._cond:
                self._ended = True
                self._cond.notify_all()
        except Exception as exc:  # any failure ends the source; next() reports it
            if not self._stop.is_set():
                expected = isinstance(exc, VideoError | av.error.FFmpegError | OSError)
                reason = reason_of(exc)
                if isinstance(exc, av.error.ExitError | TimeoutError):  # PyAV's or FFmpeg's read timeout
                    reason = f"no data within {self._read_timeout:g} s"
                message = f"cannot read {self._name}: {reason}"
                if isinstance(exc, VideoError):
                    message = str(exc)
                log.info("video source failed: %s", message, exc_info=not expected)
                with self._cond:
                    self._error = message
                    self._cond.notify_all()
        finally:
            self._close_container()

    def _play(self) -> None:
        """Demux and decode to the end of the container (or until stopped)."""
        consecutive_errors = 0
        for packet in self._container.demux(self._stream):
            if self._stop.is_set():
                return
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                # A damaged packet (lossy network, corrupt file): skip it, as players do.
                self.decode_errors += 1
                consecutive_errors += 1
                if consecutive_errors >= _MAX_CONSECUTIVE_DECODE_ERRORS:
                    raise
                continue
            for frame in frames:
                consecutive_errors = 0
                if not self._handle(frame):
                    return

    def _restart_file(self) -> None:
        """Seek back to the start; the next loop continues where this one ended in stream time."""
        self._container.seek(0)  # also flushes the decoder, which the EOF drain left finished
        self.loops += 1
        self._offset = self._loop_end
        self._last_raw = None

    def _stream_time(self, frame: Any) -> float:
        raw = frame.time
        if raw is None:  # no pts: assume the frame follows the previous one
            raw = 0.0 if self._last_raw is None else self._last_raw + self._frame_seconds
        if self._base_raw is None:
            self._base_raw = raw
        t = self._offset + raw - self._base_raw
        if self._last_t is not None and t < self._last_t:
            # Loop restart, wrapping or discontinuous clock: continue right after the previous frame.
            shift = self._last_t + self._frame_seconds - t
            self._offset += shift
            t += shift
        if frame.duration and frame.time_base:
            duration = float(frame.duration * frame.time_base)
            if duration > 0:
                self._frame_seconds = duration
        t = round(t, 6)  # microseconds: no 0.39999999999999997 in logs and results
        self._last_raw, self._last_t = raw, t
        self._loop_end = max(self._loop_end, t + self._frame_seconds)
        return t

    def _handle(self, frame: Any) -> bool:
        """Pace, sample, convert and publish one decoded frame; False when stopped."""
        self.frames_decoded += 1
        t = self._stream_time(frame)
        if self.is_file:
            delay = self._open_mono + t - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return False
        if self._next_sample is not None and t + _EPSILON < self._next_sample:
            return True
        # The next sample is due one period after this one's due time (a fixed grid: no drift), unless
        # this frame came a period or more late (a stall): then one period after it (no catch-up burst).
        period = 1.0 / self.fps
        due = t if self._next_sample is None else self._next_sample + period
        self._next_sample = due if due > t + _EPSILON else t + period
        received = time.time()
        pixels = to_rgb(frame, self.max_side)
        # Not after it arrived: a network source may send faster than real time (a burst after a stall).
        producer = min(self._open_time + t, received)
        if not self.is_file:
            realtime = self._container.start_time_realtime  # microseconds since the epoch at pts 0
            if realtime is not None and frame.time is not None:
                producer = realtime / 1_000_000 + frame.time
        published = Frame(
            pixels=pixels,
            index=self._sampled,
            stream_seconds=t,
            producer_time=producer,
            received_time=received,
        )
        self._sampled += 1
        with self._cond:
            if self._closed:
                return False
            if self._slot is not None:
                self.dropped += 1
            self._slot = published
            self._cond.notify_all()
        return True


@functools.lru_cache(maxsize=64)
def _target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    longer = max(width, height)
    if max_side is None or longer <= max_side:
        return width, height
    scale = max_side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_rgb(frame: Any, max_side: int | None) -> numpy.ndarray:
    """A decoded PyAV frame as RGB pixels, shrunk so its longer side is at most ``max_side``."""
    target = _target_size(frame.width, frame.height, max_side)
    if target != (frame.width, frame.height):
        width, height = target
        frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    # FFmpeg pads each row to an aligned size (a 410-pixel-wide frame has 1,248-byte rows): the array is a
    # strided view then, which dlib would read as noise. Packed here, once (no copy when already packed).
    return numpy.ascontiguousarray(frame.to_ndarray(format="rgb24"))
