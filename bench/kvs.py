#!/usr/bin/env python3
"""Kinesis Video Streams: ingest capacity, ingest MB/s, PERSISTED and live GetMedia latency, and the face
search stream processor reading KVS against the file path it replaces.

Every part runs against real ``mlharbor serve`` processes this script starts (temp data folder, SQLite).

Media. One H.264 MKV is encoded up front with PyAV (``--width``x``--height`` at ``--fps``, libx264 with a
``--kbps`` bitrate, a keyframe and so a Cluster = one fragment every ``--fragment-seconds``, the moving
test pattern of ``tests/kvs_producer.py`` with a little noise, FFmpeg's live matroska muxer as
``encode_mkv``). Producers replay its bytes: the EBML header, Segment, Info and Tracks once, then each
Cluster rebuilt with its Timecode shifted by the clip's length on every loop (so timecodes keep growing and
a producer can stream longer than the clip), one block (frame) at a time at the frame's time, paced on the
monotonic clock from frame 0. Each producer is one PutMedia request (RELATIVE timecodes,
``x-amzn-producer-start-timestamp`` = the wall-clock time of frame 0) signed like ``PutMedia`` in
``tests/kvs_producer.py`` (whose ``signed_headers`` this uses) and spoken over a raw asyncio connection
(uvloop when installed), so thousands of frames a second cost little and each ACK line is timestamped when
it arrives. Timestamps are ``time.monotonic()`` in this process.

Cores. On a machine with 2+ cores the server of parts 1-4 is pinned to core 0 (every thread, after it
started: threads made later inherit it) and this process (all producers, readers and the raw-write peer)
to core 1, so "per core" means the server's one core; the producers share theirs, and their CPU use is
printed. Part 5 runs unpinned (face search needs the cores).

1. Ingest capacity: N producers at once, each one real-time stream on its own Kinesis Video stream, started
   spread over one fragment's length, for ``--seconds``. A level is sustained when every producer got
   ``200``, no ERROR, every fragment it sent PERSISTED within ``--persist-deadline`` of its last byte, and
   never fell more than ``--max-lateness`` behind real time (a frame sent that late, or held back by a
   server that stops reading). N doubles from ``--start-streams`` until a level fails, then bisects. Each
   level gets a fresh server. Target: ≥ 50 streams on the server's one core.
2. Ingest MB/s: ``--bulk-producers`` producers push ``--bulk-mb`` MB of the same fragments as fast as the
   connection takes them (whole Clusters, no pacing); MB/s = MKV bytes ÷ (first byte sent → last
   PERSISTED). Peer, same run, same folder (inside the server's data folder), same concurrency: each of
   ``--bulk-producers`` threads writes its share of the same fragments as files, one file per fragment,
   fsync'd (what durability costs at minimum). ``--bulk-rounds`` rounds of peer then server (new streams
   each round, one server), and the peer once more at the end; the best run of each side counts, since
   on a shared VM the same run's speed varies by 2x from one moment to the next. Nothing is deleted until
   the part ends: on ext4 without a journal (as here) a file created within a minute of mass deletes
   scans past every recently deleted inode, which taxed whichever side ran after a deletion. Each run's
   CPU per MB is printed too (server: the whole process; peer: its threads). Target: ≥ 0.5 × the peer.
3. PERSISTED latency: at ``--latency-streams`` real-time streams, per fragment, its last byte sent → its
   PERSISTED ACK received, p50/p99 (the Clusters have known sizes, so the server knows a fragment ended
   at its last byte). Target p99 ≤ 50 ms.
4. Live GetMedia latency, same run as 3: a reader (raw GetMedia, StartSelector NOW, parsed with
   ``engines.mkv``) on one of the streams, started mid-stream; per frame, the block's arrival at the reader
   minus the moment the producer sent it, matched by the frame's timecode; frames sent before the reader's
   first byte arrived are left out (they come in a burst when it connects). Target p99 ≤ 50 ms.
5. Frame → face-search record, p50/p99: a face-search processor on a video of a face indexed in a
   collection, writing to a Kinesis stream in ``moto_server``, polled with GetRecords, pausing ``--poll-ms``
   (10 ms) after an empty answer: ~16 ms between polls, which the latencies include up to once (printed,
   with the cores polling costs, moto_server + the poller: back-to-back polling took ~0.7 of a core and
   slowed the processor it measures on 2 cores). Latency per record = when it
   was read minus ``ProducerTimestamp + FrameOffsetInSeconds`` of its ``InputInformation.KinesisVideo``
   (epoch seconds), over ``--face-seconds`` after a warm-up. Peer, same run: commit 947b175 (before stream
   processors read Kinesis Video; checked out into a temporary git worktree, removed at the end) serving
   ``--video-stream cam=<the MKV file>`` (its file source plays it at its own pace and loops it); ours:
   today's server with a producer PutMedia-ing the same MKV bytes in real time into a Kinesis Video stream
   the processor reads (the producer runs in this process: how late it ever sent a frame is printed, as
   that lateness counts in the latency). Each path gets a fresh server per run; ``--face-runs`` runs per
   path, alternating file / KVS, pooled (p99 over a minute of 5 records/s varies by ±30% run to run on 2
   cores; per-run numbers and the machine's CPU use are printed). Target: ours p99 ≤ 1.2 × the file path's
   p99. If ours fails or sends no records the part reads "NOT measured" with the reason.

Usage::

    .venv/bin/python bench/kvs.py              # ~17 min on 2 cores
    .venv/bin/python bench/kvs.py --quick      # smoke run (~3 min): short levels, N ≤ 20, 40 MB
    .venv/bin/python bench/kvs.py --parts 1,3  # only some parts
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.conftest import aws_env  # noqa: E402
from tests.engines.video_files import portrait_frames  # noqa: E402
from tests.kvs_producer import PutMedia, encode_mkv, synthetic_frame  # noqa: E402

from harness import (  # noqa: E402
    Server,
    aws_client,
    fmt,
    print_table,
    ratio,
    start_server,
    stop_process,
    verdict,
)
from mlharbor.engines import mkv  # noqa: E402

ACCOUNT, REGION = "000000000000", "us-east-1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PEER_COMMIT = "947b175"  # stream processors still read a local file (--video-stream cam=FILE) there

STREAMS_PER_CORE_TARGET = 50
MB_RATIO_TARGET = 0.5
PERSISTED_P99_TARGET_MS = 50.0
LIVE_P99_TARGET_MS = 50.0
FACE_RATIO_TARGET = 1.2  # ours p99 ÷ the file path's p99, at most


def not_measured(reason: str) -> str:
    """The verdict of a part that could not be measured: never a pass."""
    return f"NOT measured: {reason}"


def percentiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """(p50, p99, max), or Nones when there is nothing."""
    if not values:
        return None, None, None
    p50, p99 = numpy.percentile(values, [50, 99])
    return float(p50), float(p99), max(values)


# --- media --------------------------------------------------------------------------------------------------
def encode_clip(seconds: float, fps: int, size: tuple[int, int], fragment_seconds: float, kbps: int) -> bytes:
    """A live MKV like ``encode_mkv``'s (one Cluster per keyframe, known-size Clusters, ms timecodes from 0),
    at a target bitrate: moving test pattern plus a little noise, libx264 ABR capped by a VBV of 1 s."""
    import av
    from tests.kvs_producer import _LiveWriter

    width, height = size
    gop = max(1, round(fps * fragment_seconds))
    sink = _LiveWriter()
    options = {"live": "1", "dash": "1", "cluster_time_limit": str(2**31 - 1),
               "cluster_size_limit": str(2**31 - 1)}  # fmt: skip
    noise = numpy.random.default_rng(1).normal(0, 3, (8, height, width, 3)).astype(numpy.int16)
    rate = f"bitrate={kbps}:vbv-maxrate={kbps}:vbv-bufsize={kbps}"
    with av.open(sink, mode="w", format="matroska", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "bf": "0", "tune": "zerolatency", "preset": "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:{rate}",
        })  # fmt: skip
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.gop_size, stream.codec_context.max_b_frames = gop, 0
        for i in range(round(seconds * fps)):
            pixels = numpy.clip(synthetic_frame(i, size, fps).astype(numpy.int16) + noise[i % 8], 0, 255)
            frame = av.VideoFrame.from_ndarray(pixels.astype(numpy.uint8), format="rgb24")
            frame.pts, frame.time_base = round(i * 1000 / fps), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return sink.getvalue()


@dataclass(frozen=True)
class Cluster:
    """One fragment as a producer sends it: ``pieces`` are (frame time in ms from frame 0 of the session,
    bytes), the first holding the Cluster's header and first block; ``raw`` is all of it."""

    timecode: int
    pieces: list[tuple[int, bytes]]
    raw: bytes


class Media:
    """An MKV clip taken apart (``engines.mkv``) so it can be replayed, looped, with growing timecodes."""

    def __init__(self, data: bytes, fps: int) -> None:
        self.data = data
        parser = mkv.MkvParser()
        self.prefix = b""
        self.clusters: list[tuple[int, list[tuple[int, bytes]]]] = []  # (timecode, [(absolute tc, block)])
        for event in parser.feed(data) + parser.end():
            if isinstance(event, mkv.Header):
                if event.timecode_scale != mkv.DEFAULT_TIMECODE_SCALE:
                    raise ValueError("the clip's timecodes are not milliseconds")
                self.prefix = event.raw
            elif isinstance(event, mkv.ClusterStart):
                self.clusters.append((event.timecode, []))
            elif isinstance(event, mkv.Frame):
                self.clusters[-1][1].append((event.timecode, event.raw))
        frames = sum(len(blocks) for _, blocks in self.clusters)
        self.frames = frames
        self.duration_ms = round(frames * 1000 / fps)
        self.seconds = self.duration_ms / 1000
        self.cluster_bytes = sum(len(b) for _, blocks in self.clusters for _, b in blocks)
        self._loops: dict[int, list[Cluster]] = {}
        self._lock = threading.Lock()

    @property
    def mbit_per_s(self) -> float:
        return len(self.data) * 8 / self.seconds / 1e6

    def loop(self, k: int) -> list[Cluster]:
        """The clip's Clusters for its ``k``-th play: timecodes shifted by ``k`` clip lengths."""
        with self._lock:
            found = self._loops.get(k)
            if found is None:
                found = self._loops[k] = [self._cluster(tc, blocks, k) for tc, blocks in self.clusters]
            return found

    def _cluster(self, timecode: int, blocks: list[tuple[int, bytes]], k: int) -> Cluster:
        shift = k * self.duration_ms
        timecode_element = mkv.uint_element(mkv.TIMECODE, timecode + shift)
        payload = timecode_element + b"".join(raw for _, raw in blocks)
        raw = mkv.element(mkv.CLUSTER, payload)
        at = len(raw) - len(payload) + len(timecode_element)
        pieces = [(blocks[0][0] + shift, raw[: at + len(blocks[0][1])])]
        at += len(blocks[0][1])
        for tc, block in blocks[1:]:
            pieces.append((tc + shift, raw[at : at + len(block)]))
            at += len(block)
        return Cluster(timecode + shift, pieces, raw)

    def forget_loops(self) -> None:
        with self._lock:
            self._loops.clear()


# --- HTTP over asyncio streams --------------------------------------------------------------------------
async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def body_pieces(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The response body as it arrives; ``asyncio.IncompleteReadError`` if it is cut short."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise asyncio.IncompleteReadError(line, None)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readline()).strip():
                    pass
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while piece := await reader.read(65536):
            yield piece


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 20)
    with contextlib.suppress(OSError):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


def run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- a producer ---------------------------------------------------------------------------------------------
@dataclass
class Fragment:
    timecode: int
    sent: float | None = None  # the Cluster's last byte handed to the socket
    acks: dict[str, float] = field(default_factory=dict)  # EventType → when it arrived


class Producer:
    """One PutMedia request replaying ``media``: paced (a frame at its time) for ``seconds``, or unpaced
    (whole Clusters as fast as the connection takes them) for ``loops`` plays of the clip."""

    def __init__(
        self, url: str, stream: str, media: Media, *, paced: bool = True, seconds: float | None = None,
        loops: int | None = None, keep_frames: bool = False, stop: threading.Event | None = None,
    ) -> None:  # fmt: skip
        self.url, self.stream, self.media = url, stream, media
        self.paced, self.seconds, self.loops, self.keep_frames, self.stop = (
            paced,
            seconds,
            loops,
            keep_frames,
            stop,
        )
        self.fragments: dict[int, Fragment] = {}
        self.frame_sent: dict[int, float] = {}  # frame timecode → when its block was handed to the socket
        self.status: int | None = None
        self.error: str | None = None
        self.errors: list[dict[str, Any]] = []  # ERROR ACKs
        self.max_late = 0.0
        self.bytes_sent = 0
        self.started = self.finished = 0.0

    async def run(self, t0: float, drain_timeout: float = 30.0) -> None:
        """Frame 0 is due at monotonic ``t0``."""
        delay = t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.started = time.monotonic()
        wall0 = time.time() - (time.monotonic() - t0)
        writer = None
        try:
            reader, writer = await connect(self.url)
            put = PutMedia(self.url, stream_name=self.stream, start_timestamp=wall0)
            head = "POST /putMedia HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in put.signed_headers())
            writer.write(head.encode("latin-1") + b"\r\n")
            self._chunk(writer, self.media.prefix)
            acks = asyncio.create_task(self._acks(reader))
            try:
                await self._send(writer, t0, acks)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            except (OSError, ConnectionError) as exc:
                if not acks.done():
                    self.error = f"upload failed: {exc!r}"
            try:
                await asyncio.wait_for(acks, drain_timeout)
            except TimeoutError:
                self.error = self.error or f"the response did not end within {drain_timeout:g} s"
        except Exception as exc:
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        finally:
            self.finished = time.monotonic()
            if writer is not None:
                writer.close()

    def _chunk(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.writelines((b"%X\r\n" % len(data), data, b"\r\n"))
        self.bytes_sent += len(data)

    async def _send(self, writer: asyncio.StreamWriter, t0: float, acks: asyncio.Task[None]) -> None:
        k = 0
        while self.loops is None or k < self.loops:
            for cluster in self.media.loop(k):
                if self.seconds is not None and cluster.pieces[0][0] >= self.seconds * 1000:
                    return
                if acks.done() or (self.stop is not None and self.stop.is_set()):
                    return
                fragment = self.fragments[cluster.timecode] = Fragment(cluster.timecode)
                if not self.paced:
                    self._chunk(writer, cluster.raw)
                    await writer.drain()
                    fragment.sent = time.monotonic()
                    continue
                for due_ms, piece in cluster.pieces:
                    due = t0 + due_ms / 1000
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self._chunk(writer, piece)
                    await writer.drain()  # at once unless the server stopped reading
                    now = time.monotonic()
                    self.max_late = max(self.max_late, now - due)
                    if self.keep_frames:
                        self.frame_sent[due_ms] = now
                fragment.sent = time.monotonic()
            k += 1

    async def _acks(self, reader: asyncio.StreamReader) -> None:
        self.status, headers = await read_head(reader)
        if self.status != 200:
            body = b"".join([piece async for piece in body_pieces(reader, headers)])
            self.error = f"HTTP {self.status}: {body[:300]!r}"
            return
        pending = b""
        async for piece in body_pieces(reader, headers):
            now = time.monotonic()
            *lines, pending = (pending + piece).split(b"\n")
            for line in lines:
                if line.strip():
                    self._ack(json.loads(line), now)

    def _ack(self, ack: dict[str, Any], now: float) -> None:
        kind = ack.get("EventType")
        if kind == "ERROR":
            self.errors.append(ack)
        fragment = self.fragments.get(ack.get("FragmentTimecode", -1))
        if fragment is not None and kind is not None:
            fragment.acks.setdefault(kind, now)

    # --- judging --------------------------------------------------------------------------------------
    def persisted_latencies(self) -> list[float]:
        return [
            f.acks["PERSISTED"] - f.sent for f in self.fragments.values() if f.sent and "PERSISTED" in f.acks
        ]

    def problem(self, deadline: float, max_late: float | None) -> str | None:
        """Why this producer was not sustained, or None."""
        if self.error is not None:
            return self.error
        if self.errors:
            return f"ERROR ACK {self.errors[0]}"
        sent = [f for f in self.fragments.values() if f.sent is not None]
        if not sent:
            return "no fragment was sent"
        missing = [f for f in sent if "PERSISTED" not in f.acks]
        if missing:
            return f"{len(missing)} of {len(sent)} fragments never PERSISTED"
        slow = [f.acks["PERSISTED"] - f.sent for f in sent if f.acks["PERSISTED"] - f.sent > deadline]  # type: ignore[operator]
        if slow:
            return f"{len(slow)} fragments PERSISTED later than {deadline:g} s (worst {max(slow):.2f} s)"
        if max_late is not None and self.max_late > max_late:
            return f"fell {self.max_late:.2f} s behind real time"
        return None


class LiveReader:
    """GetMedia with StartSelector NOW over a raw connection; when each frame's block arrived."""

    def __init__(self, url: str, stream: str) -> None:
        self.url, self.stream = url, stream
        self.frames: list[tuple[int, float]] = []  # (frame timecode, arrival)
        self.first_byte: float | None = None
        self.error: str | None = None
        self.ended = False

    def _request(self) -> bytes:
        import botocore.auth
        import botocore.awsrequest
        import botocore.credentials

        body = json.dumps({"StreamName": self.stream, "StartSelector": {"StartSelectorType": "NOW"}})
        netloc = urlsplit(self.url).netloc
        request = botocore.awsrequest.AWSRequest(
            method="POST", url=f"http://{netloc}/getMedia", data=body.encode(),
            headers={"Content-Type": "application/json", "Host": netloc},
        )  # fmt: skip
        credentials = botocore.credentials.Credentials("test", "test")
        botocore.auth.SigV4Auth(credentials, "kinesisvideo", REGION).add_auth(request)
        head = "POST /getMedia HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body.encode()

    async def run(self) -> None:
        writer = None
        try:
            reader, writer = await connect(self.url)
            writer.write(self._request())
            status, headers = await read_head(reader)
            if status != 200:
                body = b"".join([piece async for piece in body_pieces(reader, headers)])
                self.error = f"GetMedia HTTP {status}: {body[:300]!r}"
                return
            parser = mkv.MkvParser(tags=True)
            async for piece in body_pieces(reader, headers):
                now = time.monotonic()
                if self.first_byte is None:
                    self.first_byte = now
                for event in parser.feed(piece):
                    if isinstance(event, mkv.Frame):
                        self.frames.append((event.timecode, now))
            self.ended = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if writer is not None:
                writer.close()


# --- processes and cores ------------------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):  # a child belongs to the thread that made it
                with contextlib.suppress(OSError):
                    for child in Path(f"/proc/{parent}/task/{task}/children").read_text().split():
                        found.append(int(child))
                        todo.append(int(child))
    return found


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` and of its descendants onto ``cores`` (threads they start later inherit)."""
    for process in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{process}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cores)


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live descendants."""
    total = 0.0
    for process in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


@dataclass
class Cores:
    server: set[int] | None  # None: not pinned (a 1-core machine)
    client: set[int] | None
    all: set[int]

    @classmethod
    def plan(cls) -> Cores:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls(None, None, set(cores))
        return cls({cores[0]}, {cores[1]}, set(cores))

    def describe(self) -> str:
        if self.server is None:
            return "one core: server and producers share it (nothing pinned)"
        client = min(self.client or self.all)
        return (f"server pinned to core {min(self.server)}, this process (all producers, readers, the "
                f"raw-write peer) to core {client}: the producers share one core")  # fmt: skip

    @contextlib.contextmanager
    def client_pinned(self) -> Any:
        if self.client is not None:
            os.sched_setaffinity(0, self.client)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.all)


def kvs_server(workdir: Path, cores: Cores, env: dict[str, str] | None = None) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_server(workdir, env)
    if cores.server is not None:
        pin(server.proc.pid, cores.server)
    return server


def create_streams(server: Server, names: list[str], retention_hours: int = 1) -> None:
    kvs = aws_client(server, "kinesisvideo")
    for name in names:
        kvs.create_stream(StreamName=name, DataRetentionInHours=retention_hours)
    for name in names:
        deadline = time.monotonic() + 10
        while kvs.describe_stream(StreamName=name)["StreamInfo"]["Status"] != "ACTIVE":
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream {name} did not become ACTIVE")
            time.sleep(0.05)


# --- parts 1, 3, 4: real-time streams -----------------------------------------------------------------------
@dataclass
class Level:
    streams: int
    problems: list[str]
    persisted_ms: list[float]
    fragments: int
    max_late: float
    server_cpu: float  # cores
    client_cpu: float  # cores
    live_ms: list[float] = field(default_factory=list)
    reader_problem: str | None = None
    live_frames: int = 0

    @property
    def sustained(self) -> bool:
        return not self.problems


async def _realtime(
    url: str, server_pid: int, names: list[str], media: Media, args: argparse.Namespace, readers: int
) -> Level:
    spread = args.fragment_seconds / max(1, len(names))
    producers = [
        Producer(url, name, media, seconds=args.seconds, keep_frames=i < readers)
        for i, name in enumerate(names)
    ]
    base = time.monotonic() + 0.5
    tasks = [
        asyncio.create_task(p.run(base + i * spread, drain_timeout=args.persist_deadline + 20))
        for i, p in enumerate(producers)
    ]
    live = [LiveReader(url, name) for name in names[:readers]]
    live_tasks: list[asyncio.Task[None]] = []
    cpu0, client0, wall0 = cpu_seconds(server_pid), time.process_time(), time.monotonic()
    if live:
        # Mid-stream: the reader joins a stream that has been running for a fragment and a half.
        await asyncio.sleep(max(0.0, base + 1.5 * args.fragment_seconds - time.monotonic()))
        live_tasks = [asyncio.create_task(r.run()) for r in live]
    await asyncio.gather(*tasks)
    wall = time.monotonic() - wall0
    server_cpu = (cpu_seconds(server_pid) - cpu0) / wall
    client_cpu = (time.process_time() - client0) / wall
    for task in live_tasks:
        task.cancel()
    await asyncio.gather(*live_tasks, return_exceptions=True)

    problems = []
    for p in producers:
        why = p.problem(args.persist_deadline, args.max_lateness)
        if why is not None:
            problems.append(f"{p.stream}: {why}")
    persisted = [x * 1000 for p in producers for x in p.persisted_latencies()]
    level = Level(
        streams=len(names), problems=problems, persisted_ms=persisted,
        fragments=sum(len(p.fragments) for p in producers), max_late=max(p.max_late for p in producers),
        server_cpu=server_cpu, client_cpu=client_cpu,
    )  # fmt: skip
    for reader, producer in zip(live, producers, strict=False):
        if reader.error is not None:
            level.reader_problem = f"the GetMedia reader failed: {reader.error}"
        elif reader.first_byte is None:
            level.reader_problem = "the GetMedia reader got no bytes"
        matched = [
            (arrived - producer.frame_sent[tc]) * 1000
            for tc, arrived in reader.frames
            if tc in producer.frame_sent and producer.frame_sent[tc] >= reader.first_byte  # type: ignore[operator]
        ]
        level.live_ms += matched
        level.live_frames += len(reader.frames)
        sent_after = sum(
            1 for t in producer.frame_sent.values() if reader.first_byte and t >= reader.first_byte
        )
        if level.reader_problem is None and len(matched) < sent_after:
            level.reader_problem = (f"the reader got {len(matched)} of the {sent_after} frames sent after it "
                                    f"connected")  # fmt: skip
    return level


def realtime_level(
    workdir: Path, cores: Cores, media: Media, args: argparse.Namespace, streams: int, readers: int = 0
) -> Level:
    server = kvs_server(workdir, cores)
    try:
        names = [f"cam{i}" for i in range(streams)]
        create_streams(server, names)
        return run_async(_realtime(server.url, server.proc.pid, names, media, args, readers))
    finally:
        stop_process(server.proc)
        shutil.rmtree(workdir, ignore_errors=True)
        media.forget_loops()


def part_capacity(
    tmp: Path, cores: Cores, media: Media, args: argparse.Namespace
) -> tuple[int, Level | None]:
    print(f"\n== 1. Ingest capacity: real-time {media.mbit_per_s:.2f} Mbit/s streams, {args.seconds:g} s per "
          f"level, PERSISTED deadline {args.persist_deadline:g} s, lateness ≤ {args.max_lateness:g} s ==",
          flush=True)  # fmt: skip
    results: dict[int, Level] = {}

    def run(n: int) -> bool:
        level = realtime_level(tmp / f"level-{n}", cores, media, args, n)
        results[n] = level
        p50, p99, worst = percentiles(level.persisted_ms)
        state = "sustained" if level.sustained else f"NOT sustained ({len(level.problems)} producers: "
        state += "" if level.sustained else f"{level.problems[0]})"
        print(f"  N={n:4d}: {state}; PERSISTED p50 {fmt(p50, '.0f')} p99 {fmt(p99, '.0f')} max "
              f"{fmt(worst, '.0f')} ms; max lateness {level.max_late * 1000:.0f} ms; server "
              f"{level.server_cpu:.0%} of its core, producers {level.client_cpu:.0%} of theirs",
              flush=True)  # fmt: skip
        return level.sustained

    lo, hi, n = 0, None, args.start_streams
    while n <= args.max_streams:
        if run(n):
            lo, n = n, n * 2
        else:
            hi = n
            break
    if hi is None and lo < args.max_streams and args.max_streams not in results:
        if run(args.max_streams):
            lo = args.max_streams
        else:
            hi = args.max_streams
    while hi is not None and hi - lo > max(args.resolution, lo * 0.1):
        mid = (lo + hi) // 2
        if run(mid):
            lo = mid
        else:
            hi = mid
    rows = []
    for n in sorted(results):
        level = results[n]
        p50, p99, worst = percentiles(level.persisted_ms)
        rows.append([str(n), "yes" if level.sustained else "no", str(level.fragments), fmt(p50, ".0f"),
                     fmt(p99, ".0f"), fmt(worst, ".0f"), f"{level.max_late * 1000:.0f}",
                     f"{level.server_cpu:.0%}", f"{level.client_cpu:.0%}"])  # fmt: skip
    print()
    print_table(["streams", "sustained", "fragments", "PERSISTED p50 ms", "p99 ms", "max ms", "max late ms",
                 "server CPU", "producers CPU"], rows, right={0, 2, 3, 4, 5, 6, 7, 8})  # fmt: skip
    failing = results.get(hi) if hi is not None else None
    return lo, failing


# --- part 2: bulk ingest vs raw file writes -----------------------------------------------------------------
async def _bulk(url: str, names: list[str], media: Media, loops: int) -> tuple[list[Producer], float]:
    producers = [Producer(url, name, media, paced=False, loops=loops) for name in names]
    start = time.monotonic()
    await asyncio.gather(*(p.run(start, drain_timeout=120) for p in producers))
    return producers, start


def raw_writes(folder: Path, media: Media, writers: int, loops: int) -> tuple[float, int, float]:
    """(seconds, bytes, CPU seconds of this process): ``writers`` threads, each writing ``loops`` plays of
    the clip's fragments as files (one per fragment, fsync'd), as the server stores them: header + Cluster."""
    folder.mkdir(parents=True, exist_ok=True)
    documents = [media.prefix + c.raw for k in range(loops) for c in media.loop(k)]
    total = sum(len(d) for d in documents) * writers

    def write(w: int) -> None:
        for i, data in enumerate(documents):
            fd = os.open(folder / f"{w}-{i}.mkv", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # The files stay until the part ends: deleting them here would slow the next run's file creations
    # (ext4 without a journal, as here, skips inodes deleted in the last minute, scanning past each
    # one), which taxed whichever ran next, the server, by ~20% of its CPU.
    return seconds, total, cpu


def part_bulk(tmp: Path, cores: Cores, media: Media, args: argparse.Namespace) -> dict[str, Any]:
    k, rounds = args.bulk_producers, args.bulk_rounds
    loops = max(1, round(args.bulk_mb * 1e6 / k / len(media.data)))
    print(f"\n== 2. Ingest MB/s: {k} producers × {loops} plays of the clip "
          f"({k * loops * len(media.data) / 1e6:.0f} MB), unpaced; peer: {k} threads writing the same "
          f"fragments as fsync'd files in the server's data folder; {rounds} rounds, peer and server "
          f"alternating, the best run of each counts ==", flush=True)  # fmt: skip
    server = kvs_server(tmp / "bulk", cores)
    result: dict[str, Any] = {"problem": None, "runs": [], "peer_runs": []}
    problems: list[str] = []
    try:
        peer_dir = server.data_dir / "raw-peer"
        names = [[f"bulk{r}-{i}" for i in range(k)] for r in range(rounds)]
        create_streams(server, [name for group in names for name in group])

        def peer(label: str) -> None:
            seconds, total, cpu = raw_writes(peer_dir / label, media, k, loops)
            result["peer_runs"].append(total / seconds / 1e6)
            print(f"  peer (raw fsync'd files): {total / 1e6:.0f} MB in {seconds:.2f} s = "
                  f"{total / seconds / 1e6:.1f} MB/s, CPU {cpu / total * 1e9:.2f} ms/MB",
                  flush=True)  # fmt: skip

        for r in range(rounds):
            peer(f"before-{r}")
            cpu0 = cpu_seconds(server.proc.pid)
            producers, start = run_async(_bulk(server.url, names[r], media, loops))
            cpu = cpu_seconds(server.proc.pid) - cpu0
            problems += [f"{p.stream}: {why}" for p in producers if (why := p.problem(1e9, None))]
            ends = [f.acks["PERSISTED"] for p in producers for f in p.fragments.values()
                    if "PERSISTED" in f.acks]  # fmt: skip
            body = sum(p.bytes_sent for p in producers)
            seconds = (max(ends) - start) if ends else None
            result["runs"].append(body / seconds / 1e6 if seconds else None)
            print(f"  server: {body / 1e6:.0f} MB in {fmt(seconds, '.2f')} s = "
                  f"{fmt(result['runs'][-1], '.1f')} MB/s (first byte → last PERSISTED), "
                  f"CPU {cpu / body * 1e9:.2f} ms/MB", flush=True)  # fmt: skip
        peer("after")
        measured = [x for x in result["runs"] if x is not None]
        result["mb_s"] = max(measured) if len(measured) == rounds else None
        result["peer_mb_s"] = max(result["peer_runs"])
        result["problem"] = "; ".join(problems[:3]) or (
            None if result["mb_s"] is not None else "a server run got no PERSISTED ACK"
        )
        if result["problem"]:
            print(f"  problems: {result['problem']}", flush=True)
    finally:
        stop_process(server.proc)
        shutil.rmtree(tmp / "bulk", ignore_errors=True)
        media.forget_loops()
    return result


# --- part 5: face search, KVS vs the file path --------------------------------------------------------------
def start_moto(workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(workdir / "moto.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            opener.open(f"{url}/moto-api/", timeout=1).close()
            return url, proc
        except OSError:
            time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError("moto_server did not start")


class RecordPoller(threading.Thread):
    """GetRecords on one shard back to back (``interval`` s apart when empty); each record with when it
    was read (epoch seconds)."""

    def __init__(self, kinesis: Any, stream: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.kinesis, self.interval = kinesis, interval
        shard = kinesis.list_shards(StreamName=stream)["Shards"][0]["ShardId"]
        self.iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard, ShardIteratorType="LATEST"
        )["ShardIterator"]
        self.records: list[tuple[float, dict[str, Any]]] = []
        self.polls, self.error = 0, None
        self.stopping = threading.Event()
        self.began = self.ended = 0.0

    def cpu_now(self) -> float:
        """This thread's CPU seconds so far (0 before it started or after it ended)."""
        if self.ident is None or not self.is_alive():
            return 0.0
        with contextlib.suppress(OSError):
            return time.clock_gettime(time.pthread_getcpuclockid(self.ident))
        return 0.0

    def run(self) -> None:
        self.began = time.monotonic()
        try:
            while not self.stopping.is_set():
                response = self.kinesis.get_records(ShardIterator=self.iterator, Limit=10000)
                now = time.time()
                self.polls += 1
                self.iterator = response["NextShardIterator"]
                for record in response["Records"]:
                    self.records.append((now, json.loads(record["Data"])))
                if not response["Records"]:
                    time.sleep(self.interval)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        self.ended = time.monotonic()

    @property
    def poll_ms(self) -> float:
        return (self.ended - self.began) / max(1, self.polls) * 1000


class BackgroundProducer:
    """A paced ``Producer`` on its own event loop in a thread, until ``stop()``."""

    def __init__(self, url: str, stream: str, media: Media) -> None:
        self.stopping = threading.Event()
        self.producer = Producer(url, stream, media, stop=self.stopping)
        self.thread = threading.Thread(target=lambda: run_async(self.producer.run(time.monotonic() + 0.1)),
                                       daemon=True)  # fmt: skip

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(60)


@dataclass
class FaceRun:
    latencies_ms: list[float] = field(default_factory=list)
    records: int = 0
    matched: int = 0
    poll_ms: float | None = None
    problem: str | None = None
    note: str = ""
    cpu_busy: float | None = None  # the machine's CPU use during the window (all cores)
    polling_cpu: float | None = None  # cores spent polling: moto_server + the poller thread


def face_run(
    server: Server,
    moto: tuple[str, int],
    input_arn: str,
    args: argparse.Namespace,
    first_record_timeout: float,
) -> FaceRun:
    """A face-search processor on ``input_arn``: records read from moto for ``seconds`` after ``warmup``."""
    import boto3

    moto_url, moto_pid = moto
    seconds, warmup = args.face_seconds, args.face_warmup
    run = FaceRun()
    kinesis = boto3.client("kinesis", endpoint_url=moto_url, region_name=REGION,
                           aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    output = f"faces-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=output, ShardCount=1)
    while (
        kinesis.describe_stream_summary(StreamName=output)["StreamDescriptionSummary"]["StreamStatus"]
        != "ACTIVE"
    ):
        time.sleep(0.05)
    output_arn = kinesis.describe_stream_summary(StreamName=output)["StreamDescriptionSummary"]["StreamARN"]
    rek = aws_client(server, "rekognition")
    rek.create_collection(CollectionId="bench")
    rek.index_faces(
        CollectionId="bench", Image={"Bytes": (ROOT / "tests" / "data" / "grace_hopper.jpg").read_bytes()}
    )
    poller = RecordPoller(kinesis, output, args.poll_ms / 1000)
    rek.create_stream_processor(
        Name="faces", Input={"KinesisVideoStream": {"Arn": input_arn}},
        Output={"KinesisDataStream": {"Arn": output_arn}},
        Settings={"FaceSearch": {"CollectionId": "bench", "FaceMatchThreshold": 80.0}},
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/bench",
    )  # fmt: skip
    poller.start()
    try:
        rek.start_stream_processor(Name="faces")
        deadline = time.monotonic() + first_record_timeout
        while not poller.records:
            described = rek.describe_stream_processor(Name="faces")
            if described["Status"] == "FAILED":
                run.problem = f"the processor FAILED: {described.get('StatusMessage')}"
                return run
            if poller.error is not None:
                run.problem = f"reading Kinesis failed: {poller.error}"
                return run
            if time.monotonic() > deadline:
                run.problem = (f"no record within {first_record_timeout:g} s of StartStreamProcessor (status "
                               f"{described['Status']}, {described.get('StatusMessage')!r})")  # fmt: skip
                return run
            time.sleep(0.1)
        time.sleep(warmup)
        busy0, total0 = machine_busy()
        moto0, poller0 = cpu_seconds(moto_pid), poller.cpu_now()
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        busy1, total1 = machine_busy()
        run.cpu_busy = (busy1 - busy0) / max(1, total1 - total0)
        run.polling_cpu = (cpu_seconds(moto_pid) - moto0 + poller.cpu_now() - poller0) / (end - start)
        time.sleep(2.0)  # the window's last records arrive
        described = rek.describe_stream_processor(Name="faces")
        if described["Status"] != "RUNNING":
            run.note = f"status after the window: {described['Status']} {described.get('StatusMessage')!r}"
    finally:
        poller.stopping.set()
        poller.join(10)
        with contextlib.suppress(Exception):
            rek.stop_stream_processor(Name="faces")
    if poller.error is not None:
        run.problem = f"reading Kinesis failed: {poller.error}"
    for read_at, record in poller.records:
        video = record["InputInformation"]["KinesisVideo"]
        frame_at = video["ProducerTimestamp"] + video["FrameOffsetInSeconds"]
        if start <= frame_at < end:
            run.records += 1
            run.latencies_ms.append((read_at - frame_at) * 1000)
            run.matched += any(face["MatchedFaces"] for face in record.get("FaceSearchResponse", []))
    run.poll_ms = poller.poll_ms
    if not run.latencies_ms and run.problem is None:
        run.problem = (
            f"no record of a frame in the {seconds:g} s window ({len(poller.records)} records in all)"
        )
    elif run.problem is None and not run.matched:
        run.problem = "no record matched the indexed face: the processor did not search what it should"
    return run


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine so far (/proc/stat)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def file_path_run(tmp: Path, worktree: Path, video: Path, env: dict[str, str], moto: tuple[str, int],
                  args: argparse.Namespace) -> FaceRun:  # fmt: skip
    """The server as of PEER_COMMIT, playing the MKV file as camera "cam"."""
    tmp.mkdir()
    server = start_server(
        tmp, {**env, "PYTHONPATH": str(worktree / "src")}, ["--video-stream", f"cam={video}"]
    )
    try:
        arn = f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/cam/1"
        return face_run(server, moto, arn, args, 60)
    finally:
        stop_process(server.proc)


def kvs_path_run(
    tmp: Path, media: Media, env: dict[str, str], moto: tuple[str, int] | None, args: argparse.Namespace
) -> FaceRun:
    """Today's server; a producer streams the MKV into Kinesis Video and the processor reads it (GetMedia).
    Records go to (and are polled on) ``moto``, or, when None, the server's own Kinesis."""
    tmp.mkdir(parents=True)
    server = start_server(tmp, env)
    producer = None
    try:
        create_streams(server, ["cam"])
        arn = aws_client(server, "kinesisvideo").describe_stream(StreamName="cam")["StreamInfo"]["StreamARN"]
        producer = BackgroundProducer(server.url, "cam", media)
        producer.start()
        run = face_run(server, moto or (server.url, server.proc.pid), arn, args, 60)
        if moto is None:
            run.polling_cpu = None  # face_run would count the whole server (the processor's worker too)
        p = producer.producer
        run.note += f" producer at most {p.max_late * 1000:.0f} ms late"
        if p.error or p.errors:
            run.note += f"; producer: {p.error or p.errors[0]}"
        return run
    finally:
        if producer is not None:
            producer.stop()
        stop_process(server.proc)


def pooled(runs: list[FaceRun]) -> FaceRun:
    problems = [f"run {i + 1}: {r.problem}" for i, r in enumerate(runs) if r.problem]
    polls = [r.poll_ms for r in runs if r.poll_ms is not None]
    return FaceRun(
        latencies_ms=[x for r in runs for x in r.latencies_ms], records=sum(r.records for r in runs),
        matched=sum(r.matched for r in runs), poll_ms=statistics.mean(polls) if polls else None,
        problem="; ".join(problems) or None,
    )  # fmt: skip


def part_faces(tmp: Path, args: argparse.Namespace) -> tuple[FaceRun, FaceRun]:
    fps = args.face_fps
    print(f"\n== 5. Frame → face-search record: {args.face_runs} run(s) per path, alternating, each a "
          f"{args.face_seconds:g} s window after {args.face_warmup:g} s warm-up; processor at the server's "
          f"default analysis rate; video 640x480 {fps} fps, {args.fragment_seconds:g} s fragments ==",
          flush=True)  # fmt: skip
    data = encode_mkv(portrait_frames(round(args.face_clip_seconds * fps)), fps=fps, size=(640, 480),
                      fragment_seconds=args.fragment_seconds)  # fmt: skip
    video = tmp / "face.mkv"
    video.write_bytes(data)
    media = Media(data, fps)
    moto_url, moto = start_moto(tmp)
    env = aws_env(moto_url, tmp)
    env.pop("AWS_ENDPOINT_URL_KINESIS_VIDEO", None)
    worktree = tmp / "peer-worktree"
    file_runs: list[FaceRun] = []
    kvs_runs: list[FaceRun] = []
    try:
        add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), PEER_COMMIT]
        added = subprocess.run(add, capture_output=True, text=True)
        for i in range(args.face_runs):
            if added.returncode != 0:
                file_runs.append(
                    FaceRun(problem=f"git worktree add {PEER_COMMIT} failed: {added.stderr.strip()}")
                )
            else:
                try:
                    file_runs.append(
                        file_path_run(
                            tmp / f"file-path-{i}", worktree, video, env, (moto_url, moto.pid), args
                        )
                    )
                except Exception as exc:
                    file_runs.append(FaceRun(problem=f"{type(exc).__name__}: {exc}"))
            report_face(f"run {i + 1}, file path ({PEER_COMMIT}, --video-stream cam=face.mkv)", file_runs[-1])
            try:
                kvs_runs.append(kvs_path_run(tmp / f"kvs-path-{i}", media, env, (moto_url, moto.pid), args))
            except Exception as exc:
                kvs_runs.append(FaceRun(problem=f"{type(exc).__name__}: {exc}"))
            report_face(f"run {i + 1}, Kinesis Video path (PutMedia → GetMedia)", kvs_runs[-1])
    finally:
        stop_process(moto)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True
        )
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)
    file_run, kvs_run = pooled(file_runs), pooled(kvs_runs)
    report_face("pooled, file path", file_run)
    report_face("pooled, Kinesis Video path", kvs_run)
    return file_run, kvs_run


def report_face(label: str, run: FaceRun) -> None:
    p50, p99, worst = percentiles(run.latencies_ms)
    print(f"  {label}: {run.records} records ({run.matched} with a match), latency p50 {fmt(p50, '.0f')} "
          f"p99 {fmt(p99, '.0f')} max {fmt(worst, '.0f')} ms; GetRecords every {fmt(run.poll_ms, '.1f')} ms"
          + (f"; machine CPU {run.cpu_busy:.0%} busy" if run.cpu_busy is not None else "")
          + (f" (polling: {run.polling_cpu:.2f} cores)" if run.polling_cpu is not None else "")
          + (f"; problem: {run.problem}" if run.problem else "")
          + (f"; {run.note.strip()}" if run.note else ""),
          flush=True)  # fmt: skip


# --- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="1,2,3,4,5", help="which parts to run (3 and 4 run together)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--kbps", type=int, default=2000, help="the clip's bitrate (kbit/s)")
    parser.add_argument("--fragment-seconds", type=float, default=2.0, help="fragment (Cluster) length")
    parser.add_argument(
        "--clip-seconds", type=float, default=20.0, help="length of the encoded clip (looped)"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each real-time level")
    parser.add_argument("--start-streams", type=int, default=10)
    parser.add_argument("--max-streams", type=int, default=640)
    parser.add_argument("--resolution", type=int, default=5, help="bisect until the bounds are this close")
    parser.add_argument("--persist-deadline", type=float, default=1.0, help="s, last byte → PERSISTED")
    parser.add_argument("--max-lateness", type=float, default=0.5, help="s a producer may fall behind")
    parser.add_argument("--bulk-producers", type=int, default=4)
    parser.add_argument("--bulk-mb", type=float, default=400.0, help="MB each bulk run sends")
    parser.add_argument("--bulk-rounds", type=int, default=3, help="runs of server and peer, alternating")
    parser.add_argument("--latency-streams", type=int, default=10)
    parser.add_argument("--face-seconds", type=float, default=60.0)
    parser.add_argument("--face-runs", type=int, default=2, help="runs per path, alternating, pooled")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="GetRecords pause when nothing came")
    parser.add_argument("--face-warmup", type=float, default=5.0)
    parser.add_argument("--face-fps", type=int, default=25)
    parser.add_argument("--face-clip-seconds", type=float, default=8.0)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 6 s levels, N ≤ 20, 40 MB, 10 s faces"
    )
    args = parser.parse_args()
    if args.quick:
        args.clip_seconds, args.seconds, args.max_streams, args.bulk_mb = 6.0, 6.0, 20, 40.0
        args.face_seconds, args.face_warmup, args.start_streams, args.face_runs = 10.0, 3.0, 5, 1
    parts = {int(p) for p in args.parts.split(",") if p.strip()}

    cores = Cores.plan()
    print(f"machine: {os.cpu_count()} cores; {cores.describe()}", flush=True)
    started = time.monotonic()
    data = encode_clip(
        args.clip_seconds, args.fps, (args.width, args.height), args.fragment_seconds, args.kbps
    )
    media = Media(data, args.fps)
    print(f"clip: {args.width}x{args.height} {args.fps} fps H.264, {media.seconds:g} s, "
          f"{len(data) / 1e6:.1f} MB = "
          f"{media.mbit_per_s:.2f} Mbit/s, {len(media.clusters)} fragments of {args.fragment_seconds:g} s "
          f"(encoded in {time.monotonic() - started:.1f} s)", flush=True)  # fmt: skip

    capacity: tuple[int, Level | None] | None = None
    bulk: dict[str, Any] | None = None
    moderate: Level | None = None
    faces: tuple[FaceRun, FaceRun] | None = None
    with tempfile.TemporaryDirectory(prefix="mlharbor-kvs-") as tmp_name:
        tmp = Path(tmp_name)
        with cores.client_pinned():
            if 1 in parts:
                capacity = part_capacity(tmp, cores, media, args)
            if 2 in parts:
                bulk = part_bulk(tmp, cores, media, args)
            if parts & {3, 4}:
                print(
                    f"\n== 3-4. PERSISTED and live GetMedia latency: {args.latency_streams} real-time "
                    f"streams for {args.seconds:g} s, a GetMedia (NOW) reader on one of them ==",
                    flush=True,
                )
                moderate = realtime_level(
                    tmp / "latency", cores, media, args, args.latency_streams, readers=1
                )
                p50, p99, worst = percentiles(moderate.persisted_ms)
                l50, l99, lworst = percentiles(moderate.live_ms)
                print(f"  PERSISTED: {len(moderate.persisted_ms)} fragments, p50 {fmt(p50, '.1f')} p99 "
                      f"{fmt(p99, '.1f')} max {fmt(worst, '.1f')} ms; server {moderate.server_cpu:.0%} of "
                      f"its core, producers {moderate.client_cpu:.0%} of theirs", flush=True)  # fmt: skip
                print(
                    f"  live GetMedia: {len(moderate.live_ms)} frames matched, p50 {fmt(l50, '.1f')} p99 "
                    f"{fmt(l99, '.1f')} max {fmt(lworst, '.1f')} ms"
                    + (f"; {moderate.reader_problem}" if moderate.reader_problem else ""),
                    flush=True,
                )
                if moderate.problems:
                    print(f"  problems: {'; '.join(moderate.problems[:3])}", flush=True)
        if 5 in parts:
            faces = part_faces(tmp, args)

    print("\n=== Targets ===")
    if capacity is not None:
        best, failing = capacity
        per_core = best if cores.server is not None else None
        problem = (
            None
            if cores.server is not None
            else "the server could not be pinned to one core (1-core machine)"
        )
        note = ""
        if failing is not None:
            note = f"; first level not sustained: {failing.streams} streams ({failing.problems[0]})"
            if failing.client_cpu > 0.9:
                note += f" — producers used {failing.client_cpu:.0%} of their core: limited by the producers"
        elif best >= args.max_streams:
            note = f"; every level up to --max-streams {args.max_streams} was sustained (a lower bound)"
        judged = verdict(per_core, STREAMS_PER_CORE_TARGET, problem=problem)
        print(f"1. real-time {media.mbit_per_s:.1f} Mbit/s streams one server core sustains: "
              f"{fmt(per_core, '.0f')} per core (target ≥ {STREAMS_PER_CORE_TARGET}: {judged})"
              f"{note}")  # fmt: skip
    if bulk is not None:
        versus = ratio(bulk.get("mb_s"), bulk.get("peer_mb_s"), numerator_name="MLHarbor's ingest MB/s",
                       denominator_name="the raw-write peer's MB/s", failed=bulk.get("problem"))  # fmt: skip
        print(f"2. ingest MB/s ÷ raw fsync'd file writes: {fmt(bulk.get('mb_s'), '.1f')} / "
              f"{fmt(bulk.get('peer_mb_s'), '.1f')} = {fmt(versus)} "
              f"(target ≥ {MB_RATIO_TARGET}: {verdict(versus, MB_RATIO_TARGET)})")  # fmt: skip
    if moderate is not None:
        load = f"{args.latency_streams} real-time streams"
        p50, p99, _ = percentiles(moderate.persisted_ms)
        problem = "; ".join(moderate.problems[:2]) or None
        if 3 in parts:
            print(f"3. PERSISTED ACK after a fragment's last byte at {load}: p50 {fmt(p50, '.1f')} ms, p99 "
                  f"{fmt(p99, '.1f')} ms (target p99 ≤ {PERSISTED_P99_TARGET_MS:.0f} ms: "
                  f"{verdict(p99, PERSISTED_P99_TARGET_MS, at_most=True, problem=problem)})")  # fmt: skip
        if 4 in parts:
            l50, l99, _ = percentiles(moderate.live_ms)
            problem = moderate.reader_problem or problem
            print(f"4. live GetMedia, producer → reader per frame at {load}: p50 {fmt(l50, '.1f')} ms, p99 "
                  f"{fmt(l99, '.1f')} ms (target p99 ≤ {LIVE_P99_TARGET_MS:.0f} ms: "
                  f"{verdict(l99, LIVE_P99_TARGET_MS, at_most=True, problem=problem)})")  # fmt: skip
    if faces is not None:
        file_run, kvs_run = faces
        _, file_p99, _ = percentiles(file_run.latencies_ms)
        _, kvs_p99, _ = percentiles(kvs_run.latencies_ms)
        peer_failed = f"the file path (peer) failed: {file_run.problem}" if file_run.problem else None
        versus = ratio(kvs_p99, file_p99, numerator_name="the KVS path's p99",
                       denominator_name="the file path's p99", failed=peer_failed)  # fmt: skip
        judged = (not_measured(f"our processor on Kinesis Video: {kvs_run.problem}") if kvs_run.problem
                  else verdict(versus, FACE_RATIO_TARGET, at_most=True))  # fmt: skip
        print(f"5. frame → face-search record p99, Kinesis Video ÷ file: {fmt(kvs_p99, '.0f')} / "
              f"{fmt(file_p99, '.0f')} ms = {fmt(versus)} "
              f"(target ≤ {FACE_RATIO_TARGET}: {judged})")  # fmt: skip


if __name__ == "__main__":
    main()
