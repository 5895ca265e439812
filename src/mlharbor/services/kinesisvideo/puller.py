"""The built-in Kinesis Video producer: every ``--video-stream NAME=URL`` (or ``[video_streams]`` entry) is
pulled by the server and put into the Kinesis Video stream NAME through this server's own PutMedia.

So a camera named on the command line gets what any producer's stream gets: fragments with numbers and
timestamps, the archive, GetMedia, playback; and a stream processor reads it as Rekognition reads a stream
(GetMedia), whoever produced it.

The kind (``PullKind``, supervised like all long work): for each configured stream, make sure the Kinesis
Video stream exists in ``video_stream_account``/``video_stream_region`` (created with
``video_stream_retention_hours`` of retention and MediaType ``video/h264`` when missing; an existing stream
is left as it is), and that one puller worker runs for it, on whichever server of the deployment holds its
lease. A worker that ended is started again after 1, 2, 4 ... 30 s of backoff for deaths in a row; one that
ran ``STABLE_RUN_S`` first counts as a first death. Stream names must be
valid Kinesis Video names (``[a-zA-Z0-9_.-]{1,256}``); others are logged and skipped. At shutdown
(``stop``, a hook that runs while the server still answers requests) the pullers end their PutMedia
requests cleanly, so the last fragment is stored and uvicorn's graceful shutdown has no request to wait for.

The worker (``pull_worker``) opens the URL with PyAV (a path or ``file://`` URL, RTSP over TCP, HTTP;
every read bounded like ``engines/video.py``) in a reader thread and:

- **remuxes** H.264 (no decoding): packets, timestamps rewritten, go to FFmpeg's matroska muxer; a GOP
  longer than ``MAX_GOP_SECONDS`` (PutMedia's limit is 10 s per fragment) or a packet without timestamps
  switches the worker, for good, to
- **transcoding**: decode, then libx264 (yuv420p, no B-frames, ``tune=zerolatency``) with a keyframe
  forced every ``KEYFRAME_SECONDS`` of video time. Any other codec, and H.264 without its parameter sets
  (no CodecPrivate to give), is transcoded from the start. Only the first video track is sent.

The muxer is there for what it does to the bitstream (CodecPrivate from the parameter sets, Annex B NAL
units from an RTSP or MPEG-TS source made length-prefixed); its layout is not what is sent. With
``dash=1`` it would make a Cluster per keyframe, but it writes a Cluster only once it is complete, so a
reader would get video a whole fragment late and in bursts. So it writes ``live=1`` Matroska with a
Cluster per frame (each comes out as the next frame goes in), and ``_Framer`` rewrites that as the Kinesis
Video producer SDK streams it: the header once, then at a keyframe a Cluster of unknown size (one
fragment, starting at a keyframe; a keyframe less than ``MIN_FRAGMENT_SECONDS`` after the fragment began
stays inside it) whose SimpleBlocks are sent one by one as the frames come. GetMedia readers at the live
edge get each frame about one frame after it was read.

Local files are paced at their native speed and looped (as ``engines/video.py`` plays them), with
timestamps that keep increasing across loops; network sources come at their own pace, but are held back
when their producer timestamps would run more than ``NETWORK_LEAD_S`` ahead of the wall clock (a static
file served over HTTP). Timestamp jumps (backwards, or forwards by more than ``JUMP_SECONDS``) are
re-anchored.

Timecodes are RELATIVE: a PutMedia request's Clusters count milliseconds from its first keyframe, and
``x-amzn-producer-start-timestamp`` is the wall-clock time that keyframe was read (never earlier than the
end of the previous request's media, so producer timestamps only grow): a frame's producer time is when
the server read it, offset by the source's own frame times. ABSOLUTE (the producer SDK's default) would put
the same epoch milliseconds in every Cluster and gain nothing; RELATIVE keeps each request's Matroska what
FFmpeg writes, timecodes from 0, and leaves the choice of the clock to one header. (A camera's own clock,
RTSP's RTCP sender reports, is not used: a camera set to the wrong time would put fragments in the past or
the future, and PutMedia refuses a fragment that starts before the previous one ended.)

ACKs are watched: an ERROR (or the request ending,
or a non-200 answer) drops the connection and a new one starts, after backoff, at the next keyframe
(remux) or the next frame (transcode, which forces a keyframe there). Requests are renewed at a keyframe
after ``rotate_seconds`` (the server ends them after ``video_max_connection_seconds``). A source that fails
is reopened with backoff (0.5 s doubling to 10 s). The worker stops within a fraction of a second of a stop
request, ending its request cleanly; a send blocked on an unresponsive server is cut after one second.

The worker names its process ``mlharbor-pull`` (Linux), so tools (and the tests' ``worker_pids``) can tell
pullers from other workers.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import struct
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from mlharbor.runtime import WorkContext
from mlharbor.runtime.process_name import name_process
from mlharbor.services.kinesisvideo.pullers import DEFAULT_ROTATE_SECONDS, Backoff

if TYPE_CHECKING:
    from mlharbor.services.kinesisvideo.producer import PutMedia

log = logging.getLogger("mlharbor.kinesisvideo.puller")

PROCESS_NAME = "mlharbor-pull"  # the worker's process name (/proc/<pid>/comm)

KEYFRAME_SECONDS = 2.0  # transcoding: a keyframe, so a new fragment, at least this often (video time)
MAX_GOP_SECONDS = 9.5  # remuxing: a fragment about to get longer than this switches to transcoding
# A keyframe starts a fragment only this long after the previous fragment started: an all-intra source
# would otherwise make a fragment of every frame (AWS allows 5 fragments a second per stream).
MIN_FRAGMENT_SECONDS = 1.0
JUMP_SECONDS = 5.0  # a timestamp this far past the expected one is a discontinuity, not a gap
NETWORK_LEAD_S = 1.0  # how far a network source's producer time may run ahead of the wall clock
OPEN_TIMEOUT_S = 10.0  # opening a source, and every read from it
QUEUE_UNITS = 16  # packets or frames read ahead of the sender
POLL_S = 0.1  # how often the sender looks at its stop flag and the ACKs while the source is quiet
HEARTBEAT_S = 1.0
FINISH_WAIT_S = 5.0  # for a renewed or failed request's last ACKs
STOP_FINISH_WAIT_S = 0.3  # the same when stopping
STOP_CUT_S = 1.0  # after a stop request, a send still blocked this long has its connection cut
PUT_MEDIA_TIMEOUT_S = 10.0  # connecting, a blocked send, a silent server after the body ended
DEFAULT_FRAME_SECONDS = 0.04

# FFmpeg's matroska muxer, live (nothing seeks back), a Cluster per frame (so each frame comes out as the
# next one goes in: the muxer writes a Cluster only once it is closed), every write handed over at once.
MUXER_OPTIONS = {
    "live": "1",
    "cluster_size_limit": "1",
    "cluster_time_limit": "0",
    "write_crc32": "0",
    "flush_packets": "1",
}
CLUSTER_OF_UNKNOWN_SIZE = b"\x1f\x43\xb6\x75" + b"\x01\xff\xff\xff\xff\xff\xff\xff"
MILLISECONDS = Fraction(1, 1000)


SOURCE_BACKOFF = Backoff(0.5, 10.0)
UPLOAD_BACKOFF = Backoff(0.25, 10.0)


# --- The worker: reading the source ---------------------------------------------------------------------
class SourceError(Exception):
    """The source cannot be opened or read (str: a short reason)."""


class _NeedsTranscoding(Exception):
    """Remuxing cannot go on (a GOP too long for a fragment, packets without timestamps)."""


@dataclass(frozen=True)
class _Opened:
    remux: bool
    template: Any  # remux: an output stream holding a copy of the source's codec parameters
    holder: Any  # ... and the container it belongs to (kept alive with it)
    width: int
    height: int
    fps: float | None
    codec: str
    is_file: bool


@dataclass(frozen=True, slots=True)
class _Unit:
    """A packet (remux) or a decoded frame (transcode), with times in seconds on the source's continuous
    timeline (which grows across loops of a file and over discontinuities)."""

    item: Any
    t: float  # presentation time
    d: float  # decode time (pacing)
    key: bool
    duration: float


_END = object()


class _Timeline:
    """Source timestamps → one timeline that only grows: a loop of a file is shifted by the file's duration
    (its first frame shows where the previous loop's last frame ended), and a decode time that goes backwards
    (or jumps more than ``JUMP_SECONDS`` forwards) continues right after the previous frame."""

    def __init__(self, frame_seconds: float) -> None:
        self.frame_seconds = frame_seconds
        self._shift: float | None = None  # added to source times
        self._offset = 0.0  # where the current loop starts showing
        self._last: float | None = None  # the last decode time placed
        self.end = 0.0  # where what was placed so far ends showing

    def restart(self) -> None:
        """A file starts again: its first frame shows at the end."""
        self._shift = None
        self._offset = self.end

    def place(self, dts: float | None, pts: float | None, duration: float | None) -> tuple[float, float]:
        """(decode time, presentation time) on the timeline; a missing time is taken from the other or,
        both missing, follows the previous frame."""
        step = duration if duration and duration > 0 else self.frame_seconds
        if dts is None and pts is None:
            at = self.end if self._last is None else max(self.end, self._last + step)
            self._last = at
            self.end = at + step
            return at, at
        pts = dts if pts is None else pts
        dts = pts if dts is None else dts
        if self._shift is None:
            self._shift = self._offset - pts
        at = dts + self._shift
        if self._last is not None and (at <= self._last or at > self._last + step + JUMP_SECONDS):
            self._shift += self._last + step - at
            at = self._last + step
        self._last = at
        shown = pts + self._shift
        self.end = max(self.end, shown + step)
        return at, shown


def _open_container(url: str, timeout: float) -> Any:
    """Open ``url`` for reading, bounded as stream processors' sources are (``engines.video``)."""
    from mlharbor.engines.video import VideoError, open_container

    try:
        return open_container(url, timeout)
    except VideoError as exc:
        raise SourceError(str(exc)) from exc


class _Source:
    """One opening of the URL. A daemon thread opens it, says how it will be sent (``_Opened``), then puts
    units in a small queue: packets when remuxing, frames when transcoding. The thread owns the container
    (PyAV objects are not shared while it reads); ``get`` raises ``SourceError`` once the thread failed,
    after the units it read. A thread stuck in a network read ends within the read timeout."""

    def __init__(self, url: str, transcode: bool, timeout: float = OPEN_TIMEOUT_S) -> None:
        from mlharbor.engines.video import local_path, redact

        self.url = url
        self.name = redact(url)
        self.is_file = local_path(url) is not None
        self._transcode = transcode
        self._timeout = timeout
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_UNITS)
        self._stop = threading.Event()
        self._error: str | None = None
        self._switch: _NeedsTranscoding | None = None
        self._thread = threading.Thread(target=self._run, name="video-pull-reader", daemon=True)
        self._thread.start()

    def get(self, timeout: float) -> Any:
        """The next ``_Opened`` or ``_Unit``; None if nothing came within ``timeout``; ``SourceError`` at
        the end (a network source that ended, a failure)."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END:
            self._queue.put(_END)  # so a later get says the same
            if self._switch is not None:
                raise self._switch
            raise SourceError(self._error or f"{self.name} ended")
        return item

    def close(self) -> None:
        self._stop.set()

    # -- the reader thread -------------------------------------------------------------------------------
    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        import av.error

        container = None
        try:
            container = _open_container(self.url, self._timeout)
            self._read(container)
        except _NeedsTranscoding as exc:
            self._switch = exc
        except Exception as exc:
            if not isinstance(exc, SourceError | av.error.FFmpegError | OSError):
                log.exception("reading %s failed", self.name)
            self._error = _describe(exc, self.name, self._timeout)
        finally:
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()
            self._put(_END)

    def _read(self, container: Any) -> None:
        import io

        import av

        if not container.streams.video:
            raise SourceError(f"cannot read {self.name}: no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate and float(rate) > 0 else None
        codec = stream.codec_context.name
        remux = not self._transcode and codec == "h264" and bool(stream.codec_context.extradata)
        template = holder = None
        if remux:
            # A copy of the codec parameters the sender can use while this thread goes on demuxing.
            holder = av.open(io.BytesIO(), "w", format="matroska")
            template = holder.add_stream_from_template(stream)
        else:
            stream.thread_type = "AUTO"
        opened = _Opened(remux, template, holder, stream.width, stream.height, fps, codec, self.is_file)
        if not self._put(opened):
            return
        timeline = _Timeline(1.0 / fps if fps else DEFAULT_FRAME_SECONDS)
        base = stream.time_base
        while not self._stop.is_set():
            placed = timeline.end
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return
                if remux:
                    if packet.size == 0:
                        continue  # the demuxer's end-of-file marker
                    if packet.pts is None:
                        raise _NeedsTranscoding(f"{self.name} has H.264 packets without timestamps")
                    duration = float(packet.duration * base) if packet.duration else None
                    dts, pts = timeline.place(
                        None if packet.dts is None else float(packet.dts * base),
                        None if packet.pts is None else float(packet.pts * base),
                        duration,
                    )
                    unit = _Unit(packet, pts, dts, packet.is_keyframe, duration or timeline.frame_seconds)
                    if not self._put(unit):
                        return
                    continue
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    continue  # a damaged packet: skipped, as players do
                for frame in frames:
                    duration = float(frame.duration * frame.time_base) if frame.duration else None
                    at, _ = timeline.place(frame.time, frame.time, duration)
                    if not self._put(_Unit(frame, at, at, True, duration or timeline.frame_seconds)):
                        return
            if not self.is_file:
                self._error = f"{self.name} ended"
                return
            if timeline.end == placed:
                raise SourceError(f"cannot read {self.name}: no video frames")
            container.seek(0)  # and again: a file plays like a camera, forever
            timeline.restart()


def _describe(exc: BaseException, name: str, timeout: float) -> str:
    import av.error

    if isinstance(exc, SourceError):
        return str(exc)
    if isinstance(exc, av.error.ExitError | TimeoutError):
        return f"cannot read {name}: no data within {timeout:g} s"
    from mlharbor.engines.video import reason_of

    return f"cannot read {name}: {reason_of(exc)}"


# --- The worker: one PutMedia request ---------------------------------------------------------------------
class UploadError(Exception):
    """The PutMedia request failed or was ended (str: why)."""


class _Sink:
    """Where the muxer writes: kept until the sender takes it (write-only, so the muxer writes live MKV)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class _Framer:
    """FFmpeg's Matroska (a Cluster per frame) → what Kinesis Video producers send: the header (EBML,
    Segment of unknown size, Info, Tracks) once, then at every keyframe a Cluster of unknown size with its
    Timecode, and each frame as a SimpleBlock (its timecode relative to the Cluster's) as soon as FFmpeg
    has written it. A Cluster ends where the next one begins, or with the request's body."""

    def __init__(self, starts: set[int]) -> None:
        from mlharbor.engines import mkv

        self._mkv = mkv
        self._parser = mkv.MkvParser()
        self._header_sent = False
        self._cluster: int | None = None  # the open Cluster's timecode
        self._starts = starts  # timecodes of the keyframes that start a Cluster (the sender decides)

    def feed(self, data: bytes) -> bytes:
        mkv = self._mkv
        out: list[bytes] = []
        for event in self._parser.feed(data) if data else []:
            if isinstance(event, mkv.Header) and not self._header_sent:
                out.append(event.raw)
                self._header_sent = True
            elif isinstance(event, mkv.Frame):
                if self._cluster is None or (event.keyframe and event.timecode in self._starts):
                    self._starts.discard(event.timecode)
                    self._cluster = event.timecode
                    out.append(CLUSTER_OF_UNKNOWN_SIZE + mkv.uint_element(mkv.TIMECODE, event.timecode))
                out.append(self._block(event, event.timecode - self._cluster))
        return b"".join(out)

    def _block(self, frame: Any, relative: int) -> bytes:
        # FFmpeg writes a video frame without a duration as a SimpleBlock (track, timecode, flags, data);
        # its flags (keyframe, discardable) are kept, its timecode made relative to our Cluster.
        raw, at = frame.raw, frame.data_offset
        if raw[0] != self._mkv.SIMPLE_BLOCK:
            raise ValueError("FFmpeg's muxer wrote a BlockGroup")
        head = bytes([0x80 | frame.track]) + struct.pack(">h", relative) + raw[at - 1 : at]
        return self._mkv.element(self._mkv.SIMPLE_BLOCK, head + raw[at:])


class _Upload:
    """One PutMedia request and the muxer (and, when transcoding, the encoder) writing into it. Times are
    relative to ``t0``, the source time of its first frame (a keyframe), which is ``start_timestamp`` on
    the wall clock."""

    def __init__(self, payload: dict[str, Any], opened: _Opened, t0: float, start_timestamp: float) -> None:
        import av

        from mlharbor.services.kinesisvideo.producer import PutMedia

        self.opened = opened
        self.t0 = t0
        self.start_timestamp = start_timestamp
        self.started = time.monotonic()
        self.end = t0  # source time where the media sent so far ends
        self.cluster_t = t0  # source time of the current fragment's first frame
        self.last_key: float | None = None
        self.received = 0
        self.persisted = 0
        self._seen = 0
        self._sink = _Sink()
        self._starts: set[int] = set()
        self._framer = _Framer(self._starts)
        self.producer: PutMedia = PutMedia(
            payload["endpoint"],
            stream_name=payload["stream_name"],
            timecode_type="RELATIVE",
            start_timestamp=start_timestamp,
            region=payload["region"],
            access_key=payload["access_key"],
            secret_key=payload["secret_key"],
            timeout=PUT_MEDIA_TIMEOUT_S,
        )
        self.container = av.open(self._sink, "w", format="matroska", options=MUXER_OPTIONS)
        try:
            if opened.remux:
                self.stream = self.container.add_stream_from_template(opened.template)
            else:
                self.stream = self._encoder()
            self.producer.start()
        except OSError as exc:
            self._discard()
            raise UploadError(f"cannot connect to {payload['endpoint']}: {exc}") from exc
        except BaseException:
            self._discard()
            raise

    def _encoder(self) -> Any:
        fps = self.opened.fps or 1.0 / DEFAULT_FRAME_SECONDS
        stream = self.container.add_stream(
            "libx264",
            rate=Fraction(fps).limit_denominator(1001),
            options={
                "preset": "veryfast",
                "tune": "zerolatency",  # no look-ahead, no B-frames: a frame in, a packet out
                # Keyframes are forced by time (below), never chosen by the encoder.
                "x264-params": "keyint=infinite:scenecut=0:open-gop=0",
                "forced-idr": "1",
            },
        )
        stream.width, stream.height = _even(self.opened.width), _even(self.opened.height)
        stream.pix_fmt = "yuv420p"
        stream.time_base = MILLISECONDS
        return stream

    @property
    def age(self) -> float:
        return time.monotonic() - self.started

    def producer_time(self, t: float) -> float:
        """The producer (wall-clock) time of source time ``t``."""
        return self.start_timestamp + (t - self.t0)

    @property
    def producer_end(self) -> float:
        """Producer time where the media sent so far ends."""
        return self.producer_time(self.end)

    def _ms(self, t: float) -> int:
        return round((t - self.t0) * 1000)

    def put(self, unit: _Unit) -> None:
        if self.opened.remux:
            packet = unit.item
            if unit.key and unit.t - self.cluster_t >= MIN_FRAGMENT_SECONDS - 1e-3:
                self._start_fragment(unit.t)
            packet.stream = self.stream
            packet.time_base = MILLISECONDS
            packet.pts, packet.dts = self._ms(unit.t), self._ms(unit.d)
            self._mux(packet)
        else:
            self._encode(unit)
        self.end = max(self.end, unit.t + unit.duration)
        self._send(self._framer.feed(self._sink.take()))

    def _encode(self, unit: _Unit) -> None:
        import av

        frame = unit.item
        width, height = self.stream.width, self.stream.height
        if frame.width != width or frame.height != height or frame.format.name != "yuv420p":
            frame = frame.reformat(width=width, height=height, format="yuv420p")
        frame.pts, frame.time_base = self._ms(unit.t), MILLISECONDS
        key = self.last_key is None or unit.t - self.last_key >= KEYFRAME_SECONDS - 1e-3
        frame.pict_type = av.video.frame.PictureType.I if key else av.video.frame.PictureType.NONE
        if key:
            self.last_key = unit.t
            self._start_fragment(unit.t)
        for packet in self.stream.encode(frame):
            self._mux(packet)

    def _start_fragment(self, t: float) -> None:
        self.cluster_t = t
        self._starts.add(self._ms(t))

    def _mux(self, packet: Any) -> None:
        # No duration: FFmpeg's muxer then writes every frame as a SimpleBlock, which is what Kinesis Video
        # producers send and its readers expect. A frame whose duration differs from the track's default
        # (a variable frame rate, a duration left in another time base) would become a BlockGroup with a
        # BlockDuration. Fragment durations come from the frames' timecodes anyway.
        packet.duration = 0
        self.container.mux(packet)

    def _send(self, data: bytes) -> None:
        if data:
            try:
                self.producer.send(data)
            except ConnectionError as exc:
                self.check()  # an answer that says why comes first
                raise UploadError(str(exc)) from exc

    def check(self) -> None:
        """Count the new ACKs; UploadError on an ERROR, a refusal or the request's end."""
        acks = self.producer.acks(self._seen)
        self._seen += len(acks)
        for ack in acks:
            kind = ack.get("EventType")
            if kind == "RECEIVED":
                self.received += 1
            elif kind == "PERSISTED":
                self.persisted += 1
            elif kind == "ERROR":
                number = ack.get("FragmentNumber")
                raise UploadError(f"PutMedia ERROR {ack.get('ErrorId')} on fragment {number}")
        status = self.producer.status
        if status is not None and status != 200:
            with contextlib.suppress(TimeoutError):
                self.producer.wait_done(1.0)  # for the error body
            body = self.producer.error_body()[:300].decode("utf-8", "replace")
            raise UploadError(f"PutMedia answered {status}: {body}")
        if self.producer.done:
            error = self.producer.error
            raise UploadError("the server ended the PutMedia request" + (f" ({error!r})" if error else ""))

    def finish(self, wait: float) -> None:
        """End the request cleanly: the fragment being built is sent, then the body's end, and the last
        ACKs are read for up to ``wait`` seconds. Never raises."""
        try:
            if not self.opened.remux:
                for packet in self.stream.encode(None):
                    self._mux(packet)
            self.container.close()
            self._send(self._framer.feed(self._sink.take()))
            self.producer.finish()
            with contextlib.suppress(TimeoutError):
                self.producer.wait_done(wait)
            with contextlib.suppress(UploadError):
                self.check()
        except Exception as exc:
            log.debug("ending the PutMedia request failed: %r", exc)
        finally:
            self._discard()

    def abort(self) -> None:
        """Drop the request at once (from any thread)."""
        self.producer.abort()

    def _discard(self) -> None:
        self.producer.close()
        with contextlib.suppress(Exception):
            self.container.close()


def _even(n: int) -> int:
    return max(2, n - n % 2)


# --- The worker ---------------------------------------------------------------------------------------------
def pull_worker(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Pull ``payload["url"]`` into the Kinesis Video stream ``payload["stream_name"]`` until stopped."""
    name_process(PROCESS_NAME)
    from mlharbor.logs import setup_logging

    setup_logging(payload.get("log_format", "text"))
    return Puller(ctx, payload).run()


class Puller:
    """The worker's loop: open the source (``_Source``), send what it gives through one PutMedia request at
    a time (``_Upload``), reopen or reconnect with backoff, until the executor asks it to stop."""

    def __init__(self, ctx: WorkContext, payload: dict[str, Any]) -> None:
        from mlharbor.engines.video import redact

        self.ctx = ctx
        self.payload = payload
        self.name = payload["stream_name"]
        self.source_name = redact(payload["url"])
        self.rotate_seconds = float(payload.get("rotate_seconds", DEFAULT_ROTATE_SECONDS))
        self.transcode = False  # once a source needed it, for good
        self.upload: _Upload | None = None
        self.upload_failures = 0
        self.retry_at = 0.0  # monotonic: no new request before
        self.producer_end = 0.0  # wall-clock end of the media sent in earlier requests
        self.requests = 0
        self._received = 0  # fragments RECEIVED in earlier requests
        self._persisted = 0
        self.state = "starting"
        self.last_error: str | None = None
        self._beat_at = 0.0
        self._mode: str | None = None  # how the source was last sent
        self._replay = False  # the source was opened again after it ended normally
        self._done = threading.Event()
        self._lock = threading.Lock()  # guards ``upload`` for the stop watcher

    @property
    def received(self) -> int:
        """Fragments the server has received (all requests)."""
        upload = self.upload
        return self._received + (upload.received if upload is not None else 0)

    @property
    def persisted(self) -> int:
        upload = self.upload
        return self._persisted + (upload.persisted if upload is not None else 0)

    def run(self) -> dict[str, Any]:
        threading.Thread(target=self._watch_stop, name="video-pull-stop", daemon=True).start()
        failures = 0
        try:
            while not self.ctx.stop_requested():
                source = _Source(self.payload["url"], self.transcode)
                try:
                    received = self.received
                    self._pump(source)
                except _NeedsTranscoding as exc:
                    log.info("video stream %s: %s; transcoding to H.264 from now on", self.name, exc)
                    self.transcode = True
                    failures = 0
                    continue
                except SourceError as exc:
                    # A source that gave fragments before it ended (a network file, a camera that dropped)
                    # is simply opened again; one that gives nothing is a problem, logged once.
                    failures = 0 if self.received > received else failures + 1
                    level = logging.WARNING if failures == 1 else logging.INFO
                    if failures == 0 and str(exc).endswith(" ended"):
                        level = logging.DEBUG  # a network file played to its end: played again
                        self._replay = True
                    self._trouble("source", str(exc), level)
                finally:
                    self._end_upload(STOP_FINISH_WAIT_S if self.ctx.stop_requested() else FINISH_WAIT_S)
                    source.close()
                if self.ctx.stop_requested():
                    break
                self._beat(force=True)
                self.ctx.wait_stop(SOURCE_BACKOFF.delay(max(1, failures)))
        finally:
            self._done.set()
        return {"stopped": True, **self._progress()}

    def _watch_stop(self) -> None:
        """After a stop request, cut a request whose send is still blocked a second later."""
        while not self.ctx.wait_stop(1.0):
            if self._done.is_set():
                return
        if not self._done.wait(STOP_CUT_S):
            with self._lock:
                upload = self.upload
            if upload is not None:
                upload.abort()

    def _pump(self, source: _Source) -> None:
        """Send what ``source`` gives until it fails or a stop is requested."""
        opened: _Opened | None = None
        anchor = 0.0  # a file: the monotonic time of source time 0
        while not self.ctx.stop_requested():
            self._beat()
            self._check_upload()
            item = source.get(POLL_S)
            if item is None:
                continue
            if isinstance(item, _Opened):
                opened = item
                anchor = -1.0
                mode = "remuxing H.264" if item.remux else f"transcoding {item.codec} to H.264"
                # Not said again at every replay of a network file.
                level = logging.DEBUG if self._replay and mode == self._mode else logging.INFO
                self._replay, self._mode = False, mode
                log.log(
                    level,
                    "video stream %s: reading %s (%dx%d, %s fps), %s",
                    self.name,
                    self.source_name,
                    item.width,
                    item.height,
                    f"{item.fps:g}" if item.fps else "unknown",
                    mode,
                )
                self.state = "streaming"
                continue
            assert opened is not None
            if opened.is_file:  # played at its own pace, like a camera
                if anchor < 0:
                    anchor = time.monotonic() - item.d
                wait = anchor + item.d - time.monotonic()
            elif self.upload is not None:  # never stamped more than NETWORK_LEAD_S into the future
                wait = self.upload.producer_time(item.t) - NETWORK_LEAD_S - time.time()
            else:
                wait = 0.0
            if wait > 0 and self.ctx.wait_stop(wait):
                return
            self._send(opened, item)

    def _send(self, opened: _Opened, unit: _Unit) -> None:
        upload = self.upload
        if upload is not None and self._renew_due(upload, unit):
            self._end_upload(FINISH_WAIT_S)
            upload = None
        if upload is None:
            if time.monotonic() < self.retry_at or (opened.remux and not unit.key):
                return  # dropped: a live source does not wait, and a request starts at a keyframe
            upload = self._start_upload(opened, unit)
            if upload is None:
                return
        elif opened.remux and not unit.key and unit.t + unit.duration - upload.cluster_t > MAX_GOP_SECONDS:
            raise _NeedsTranscoding(
                f"{self.source_name} has keyframes more than {MAX_GOP_SECONDS:g} s apart (a Kinesis Video "
                "fragment lasts at most 10 s)"
            )
        try:
            upload.put(unit)
        except UploadError as exc:
            self._upload_failed(str(exc))

    def _renew_due(self, upload: _Upload, unit: _Unit) -> bool:
        return upload.age >= self.rotate_seconds and (unit.key or not upload.opened.remux)

    def _start_upload(self, opened: _Opened, unit: _Unit) -> _Upload | None:
        # The first frame's producer time is when it was read (it was taken just before), never before the
        # end of what earlier requests sent: producer timestamps only grow.
        start = max(time.time(), self.producer_end)
        try:
            upload = _Upload(self.payload, opened, unit.t, start)
        except UploadError as exc:
            self._upload_failed(str(exc))
            return None
        with self._lock:
            self.upload = upload
        self.requests += 1
        return upload

    def _check_upload(self) -> None:
        upload = self.upload
        if upload is None:
            return
        before = upload.received
        try:
            upload.check()
        except UploadError as exc:
            self._upload_failed(str(exc))
            return
        if upload.received > before and self.upload_failures:
            self.upload_failures = 0
            self.last_error = None
            self.state = "streaming"
            log.info("video stream %s: fragments are being received again", self.name)

    def _upload_failed(self, reason: str) -> None:
        self._end_upload(0.0, abort=True)
        self.upload_failures += 1
        delay = UPLOAD_BACKOFF.delay(self.upload_failures)
        self.retry_at = time.monotonic() + delay
        level = logging.WARNING if self.upload_failures == 1 else logging.INFO
        self._trouble("upload", f"{reason}; a new PutMedia request in {delay:g} s", level)

    def _end_upload(self, wait: float, *, abort: bool = False) -> None:
        """Retire the current request: ended cleanly (its last ACKs read for up to ``wait`` s) or dropped."""
        with self._lock:
            upload = self.upload
        if upload is None:
            return
        if abort:
            upload.abort()
        upload.finish(wait)
        with self._lock:
            self.upload = None
            self._received += upload.received
            self._persisted += upload.persisted
        self.producer_end = max(self.producer_end, upload.producer_end)

    def _trouble(self, kind: str, message: str, level: int) -> None:
        """Note a problem; a lasting one (a camera that is down) is logged at WARNING once, then at INFO."""
        self.state = f"{kind} error"
        self.last_error = message
        log.log(level, "video stream %s: %s", self.name, message)

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._beat_at < HEARTBEAT_S:
            return
        self._beat_at = now
        self.ctx.heartbeat(self._progress())

    def _progress(self) -> dict[str, Any]:
        return {
            "stream": self.name,
            "state": self.state,
            "transcoding": self.transcode,
            "requests": self.requests,
            "fragments": self.received,
            "persisted": self.persisted,
            "error": self.last_error,
        }
