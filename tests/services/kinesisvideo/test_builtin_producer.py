"""The built-in Kinesis Video producer: ``--video-stream NAME=URL`` is pulled by the server into the Kinesis
Video stream NAME through its own PutMedia (``services/kinesisvideo/puller.py``).

End to end with real servers: a looping H.264 file is remuxed into 1 s fragments whose producer timestamps
follow the wall clock, a killed puller comes back and fragments keep coming, an MPEG-4 part 2 file is
transcoded into H.264 with a keyframe every 2 s, and a server that shuts down stops its puller at once.
Then the reconcile pass on its own (a fake executor and clock): restart backoff, and no pass stopping
another kind's workers.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import pytest

from mlharbor.app import build_server
from mlharbor.config import load_settings
from mlharbor.context import Call
from mlharbor.engines import mkv
from mlharbor.runtime.leases import Leases
from mlharbor.runtime.supervisor import Supervisor
from mlharbor.services.kinesisvideo import operations, puller, pullers, streams
from tests.conftest import RunningServer, wait_until, worker_pids
from tests.kvs_producer import encode_mkv, parse_clusters, split_live, synthetic_frame
from tests.runtime.fake_executor import FakeExecutor

ACCOUNT = "000000000000"
SIZE = (320, 240)


def video_file(
    path: Path, *, seconds: float, fps: int = 10, gop_seconds: float = 1.0, codec: str = "libx264"
) -> str:
    """A short test video: moving synthetic frames, a keyframe every ``gop_seconds``."""
    gop = max(1, round(fps * gop_seconds))
    options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"} if codec == "libx264" else {}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, SIZE, fps), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def fragments(server: RunningServer, name: str = "cam") -> list[dict[str, Any]]:
    """Every fragment of the stream (ListFragments, all pages), in ingestion order."""
    archived = server.client("kinesis-video-archived-media")
    now = datetime.now(UTC)
    selector = {
        "FragmentSelectorType": "SERVER_TIMESTAMP",
        "TimestampRange": {
            "StartTimestamp": now - timedelta(hours=1),
            "EndTimestamp": now + timedelta(hours=1),
        },
    }
    found: list[dict[str, Any]] = []
    token = None
    while True:
        page = archived.list_fragments(
            StreamName=name, **({"NextToken": token} if token else {"FragmentSelector": selector})
        )
        found += page["Fragments"]
        token = page.get("NextToken")
        if not token:
            return sorted(found, key=lambda f: int(f["FragmentNumber"]))


def media(server: RunningServer, clusters: int, name: str = "cam") -> bytes:
    """GetMedia from the earliest fragment, read until ``clusters`` whole fragments (and a bit) arrived."""
    payload = server.client("kinesis-video-media").get_media(
        StreamName=name, StartSelector={"StartSelectorType": "EARLIEST"}
    )["Payload"]
    data = b""
    try:
        while len(parse_clusters(data)) <= clusters:
            piece = payload.read(4096)
            assert piece, "GetMedia ended early"
            data += piece
    finally:
        payload.close()
    return data


def check_media(data: bytes, clusters: int) -> None:
    """Every fragment starts with a keyframe, every frame is a SimpleBlock, and each decodes on its own as
    a Kinesis Video reader decodes it (the block's bytes into an H.264 decoder made from CodecPrivate), as
    320x240 pictures; FFmpeg's demuxer reads it too."""
    complete = parse_clusters(data)[:clusters]
    assert all(c.blocks and c.blocks[0][1] for c in complete), [c.blocks[:1] for c in complete]
    decoder, frames, pictures = None, 0, []
    for event in mkv.MkvParser().feed(data):
        if isinstance(event, mkv.Header):  # one per fragment in GetMedia's answer
            [track] = event.tracks.values()
            assert track.codec_id == "V_MPEG4/ISO/AVC"
            if decoder is None:
                decoder = av.CodecContext.create("h264", "r")
                decoder.extradata = track.codec_private
                decoder.thread_type = "NONE"
        elif isinstance(event, mkv.Frame):
            assert event.raw[0] == mkv.SIMPLE_BLOCK and decoder is not None
            frames += 1
            pictures += decoder.decode(av.Packet(event.raw[event.data_offset :]))
    assert decoder is not None
    pictures += decoder.decode(None)
    assert frames >= clusters * 5 and len(pictures) == frames
    assert {(p.width, p.height) for p in pictures} == {SIZE}
    with av.open(io.BytesIO(data), format="matroska") as container:
        assert next(container.decode(video=0)).width == SIZE[0]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_looping_file_becomes_fragments_that_keep_coming_after_the_puller_is_killed(make_server, tmp_path):
    video = video_file(tmp_path / "cam.mp4", seconds=2)
    # PutMedia connections last at most 4 s here, so the puller renews its request every 3 s.
    server = make_server("--video-stream", f"cam={video}", env={"MLHARBOR_VIDEO_MAX_CONNECTION_SECONDS": "4"})
    pid = server.process.pid
    [worker] = wait_until(lambda: worker_pids(pid, pullers=True), what="the puller")
    assert worker_pids(pid) == []  # no other kind of worker

    info = server.client("kinesisvideo").describe_stream(StreamName="cam")["StreamInfo"]
    assert info["StreamARN"].startswith(f"arn:aws:kinesisvideo:us-east-1:{ACCOUNT}:stream/cam/")
    assert (info["Status"], info["MediaType"], info["DataRetentionInHours"]) == ("ACTIVE", "video/h264", 24)

    # Seven 1 s fragments: the 2 s file played three and a half times, at its own pace, in three requests.
    found = wait_until(lambda: (f := fragments(server)) and len(f) >= 7 and f, timeout=30, what="7 fragments")
    produced = [f["ProducerTimestamp"].timestamp() for f in found]
    arrived = [f["ServerTimestamp"].timestamp() for f in found]
    steps = [b - a for a, b in zip(produced, produced[1:], strict=False)]
    assert all(0.95 <= step <= 1.05 for step in steps), steps  # loops continue the timeline
    assert all(950 <= f["FragmentLengthInMilliseconds"] <= 1050 for f in found), found
    # Producer time follows the wall clock: each fragment's first frame is sent as soon as it is read.
    lags = [a - p for a, p in zip(arrived, produced, strict=False)]
    assert all(-0.05 <= lag <= 1.0 for lag in lags) and max(lags) - min(lags) < 0.5, lags
    check_media(media(server, clusters=3), clusters=3)
    # Nothing stopped the puller meanwhile (the other kinds' passes stop only their own workers).
    assert worker_pids(pid, pullers=True) == [worker]

    assert "PutMedia" not in server.log()  # no ERROR, no refused or broken request

    killed_at = time.time()
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: worker_pids(pid, pullers=True) not in ([], [worker]), timeout=20, what="a new puller")
    later = wait_until(
        lambda: (
            (f := [x for x in fragments(server) if x["ServerTimestamp"].timestamp() > killed_at + 0.5])
            and len(f) >= 2
            and f
        ),
        timeout=30,
        what="fragments after the kill",
    )
    assert min(f["ProducerTimestamp"].timestamp() for f in later) > max(produced)
    assert "Traceback" not in server.log()


def test_a_non_h264_source_is_transcoded_and_shutdown_stops_the_puller(make_server, tmp_path):
    video = video_file(tmp_path / "cam.avi", seconds=3, codec="mpeg4", gop_seconds=3)
    server = make_server("--video-stream", f"cam=file://{video}")
    pid = server.process.pid
    [worker] = wait_until(lambda: worker_pids(pid, pullers=True), what="the puller")

    found = wait_until(lambda: (f := fragments(server)) and len(f) >= 2 and f, timeout=30, what="2 fragments")
    # A keyframe (so a fragment) every 2 s of video, whatever the source's own keyframes.
    assert all(1900 <= f["FragmentLengthInMilliseconds"] <= 2050 for f in found), found
    check_media(media(server, clusters=2), clusters=2)
    assert "transcoding mpeg4 to H.264" in server.log()

    stopping = time.monotonic()
    server.process.terminate()
    server.process.wait(timeout=15)
    # The puller ended its request while the server still served it: no wait for uvicorn's timeout.
    assert time.monotonic() - stopping < 8.0
    assert server.process.returncode == 0
    wait_until(lambda: gone(worker), timeout=5, what="the puller gone")
    assert "Traceback" not in server.log()


# --- The reconcile pass on its own -------------------------------------------------------------------------
@pytest.fixture
def quiet_server(tmp_path):  # type: ignore[no-untyped-def]
    """A server object (not serving, nothing started) with a fake executor; streams "cam", "stream-1" and
    one whose name Kinesis Video refuses."""
    settings = load_settings(
        data_dir=tmp_path / "data",
        video_stream=["cam=/videos/cam.mp4", "stream-1=rtsp://camera/1", "front door=/videos/door.mp4"],
    )
    server = build_server(settings)
    server.executor.shutdown(1.0)
    server.executor = server.supervisor.executor = FakeExecutor()  # type: ignore[union-attr]
    server.url = "http://127.0.0.1:9"
    yield server
    server.store.dispose()


def test_other_kinds_leave_pullers_alone_and_pullers_leave_theirs(quiet_server):
    server, executor = quiet_server, quiet_server.executor
    server.supervisor.run_once()
    mine = sorted(work_id for work_id, _, _ in executor.submitted)
    assert mine == [
        f"video-pull|{ACCOUNT}:us-east-1:cam|puller",
        f"video-pull|{ACCOUNT}:us-east-1:stream-1|puller",
    ]
    theirs = [
        f"stream|arn:aws:rekognition:us-east-1:{ACCOUNT}:streamprocessor/sp|s1/inc/attempt-1",
        f"training|arn:aws:comprehend:us-east-1:{ACCOUNT}:entity-recognizer/r|inc/attempt-1",
        f"detection|arn:aws:comprehend:us-east-1:{ACCOUNT}:entities-detection-job/j|inc/attempt-1",
        f"endpoint|arn:aws:comprehend:us-east-1:{ACCOUNT}:entity-recognizer-endpoint/e|inc/gen-1/unit-0",
        f"video-pull|{ACCOUNT}:us-east-1:gone|puller",  # a stream no longer configured
    ]
    for work_id in theirs:
        executor.submit(work_id, "x:y", {})
    server.supervisor.run_once()  # no rows, no lease: each kind stops the workers nobody wants
    assert sorted(executor.stops) == sorted(theirs)


def test_the_pass_creates_the_stream_and_restarts_pullers_with_backoff(quiet_server, caplog):
    server, executor = quiet_server, quiet_server.executor
    now = [0.0]
    kind = pullers.PullKind(server)
    leases = Leases(server.store, "test", 3.0, clock=lambda: now[0], exclusive=True)
    supervisor = Supervisor(leases, executor, [kind])
    with caplog.at_level(logging.ERROR, logger="mlharbor.kinesisvideo.puller"):
        supervisor.run_once()
        supervisor.run_once()
    assert [r.getMessage() for r in caplog.records] == [
        "video stream front door cannot be pulled into Kinesis Video: 'front door' is not a Kinesis Video "
        "stream name ([a-zA-Z0-9_.-], 1 to 256 characters)"
    ]  # logged once, not at every pass
    [(work_id, target, payload)] = [s for s in executor.submitted if ":cam|" in s[0]]
    assert target == pullers.TARGET
    assert payload["stream_name"] == "cam" and payload["url"] == "/videos/cam.mp4"
    assert (payload["endpoint"], payload["access_key"], payload["region"]) == (
        "http://127.0.0.1:9",
        "test",
        "us-east-1",
    )
    with server.store.read() as conn:
        row = streams.find(conn, ACCOUNT, "us-east-1", {"StreamName": "cam"})
    assert (row.retention_hours, row.media_type) == (24, "video/h264")

    def cam_starts() -> int:
        return len([s for s in executor.submitted if ":cam|" in s[0]])

    def after(seconds: float, ran: float) -> None:
        """The running puller dies after ``ran`` s; one pass just before its restart is due, one at it."""
        [current] = [w for w in executor.running() if ":cam|" in w]
        executor.end(current, ran=ran)
        starts = cam_starts()
        supervisor.run_once()  # notices the death at now[0]
        start = now[0]
        now[0] = start + seconds - 0.01
        supervisor.run_once()
        assert cam_starts() == starts
        now[0] = start + seconds
        supervisor.run_once()
        assert cam_starts() == starts + 1

    after(1.0, ran=1.0)
    after(2.0, ran=1.0)  # deaths in a row: twice as long
    after(4.0, ran=1.0)
    after(1.0, ran=pullers.STABLE_RUN_S)  # after a healthy run: the first death again
    assert cam_starts() == 5

    # A stream deleted by someone is created again by the next pass.
    call = Call(server, "kinesisvideo", "DeleteStream", ACCOUNT, "us-east-1", str(uuid.uuid4()))
    operations.delete_stream(call, {"StreamARN": row.arn})
    supervisor.run_once()
    with server.store.read() as conn:
        assert streams.find(conn, ACCOUNT, "us-east-1", {"StreamName": "cam"}).arn != row.arn

    # Shutdown: the pullers are asked to stop and no pass starts one again.
    running = supervisor.local(pullers.KIND)
    kind.stop(supervisor, timeout=0.05)
    assert sorted(executor.stops) == sorted(running)
    for work_id in running:
        executor.end(work_id)
    submitted = len(executor.submitted)
    now[0] += 100
    supervisor.run_once()
    assert len(executor.submitted) == submitted


def test_backoff_and_the_timeline_of_a_looping_file_with_b_frames():
    assert [puller.SOURCE_BACKOFF.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert [pullers.RESTART_BACKOFF.delay(n) for n in (1, 2, 3, 6, 7)] == [1, 2, 4, 30, 30]

    # A 1 s file at 10 fps with B-frames: decode times start 0.2 s before presentation times.
    packets = [(-0.2, 0.0), (-0.1, 0.3), (0.0, 0.1), (0.1, 0.2), (0.2, 0.6), (0.3, 0.4), (0.4, 0.5),
               (0.5, 0.9), (0.6, 0.7), (0.7, 0.8)]  # fmt: skip
    timeline = puller._Timeline(0.1)
    placed = []
    for _loop in range(3):
        placed += [timeline.place(dts, pts, 0.1) for dts, pts in packets]
        timeline.restart()
    decode = [round(d, 6) for d, _ in placed]
    shown = [round(p, 6) for _, p in placed]
    assert decode == sorted(decode) and len(set(decode)) == len(decode)  # strictly growing
    assert sorted(shown) == [round(i / 10, 6) for i in range(30)]  # 3 s, no gap, no overlap
    assert shown[10] == 1.0 and shown[20] == 2.0  # each loop's keyframe where the previous loop ended

    # A clock that goes back (a camera's restart) or jumps far ahead continues after the last frame.
    timeline = puller._Timeline(0.1)
    times = [timeline.place(t, t, None)[1] for t in (50.0, 50.1, 3.0, 3.1, 900.0, 900.1)]
    assert [round(t, 6) for t in times] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    # No timestamps at all: one frame after another.
    timeline = puller._Timeline(0.04)
    assert [round(timeline.place(None, None, None)[0], 6) for _ in range(3)] == [0.0, 0.04, 0.08]


def test_the_framer_sends_each_frame_at_once_in_a_cluster_per_fragment():
    data = encode_mkv(seconds=3, fps=10, fragment_seconds=1.0)  # FFmpeg's layout: whole known-size Clusters
    framer = puller._Framer({1000, 2000})  # the keyframes the sender chose to start fragments
    pieces = split_live(data, 512)
    sent = [framer.feed(piece) for piece in pieces]
    out = b"".join(sent)
    # The first frame went out before the rest of its (FFmpeg) Cluster had come in.
    first = next(i for i, chunk in enumerate(sent) if puller.CLUSTER_OF_UNKNOWN_SIZE in chunk)
    assert first < len(pieces) // 3 - 2
    assert out.count(puller.CLUSTER_OF_UNKNOWN_SIZE) == 3
    assert [(c.timecode, c.size, len(c.blocks), c.blocks[0]) for c in parse_clusters(out)] == [
        (0, None, 10, (0, True)),
        (1000, None, 10, (0, True)),
        (2000, None, 10, (0, True)),
    ]
    before = [e for e in mkv.MkvParser().feed(data) if isinstance(e, mkv.Frame)]
    after = [e for e in mkv.MkvParser().feed(out) if isinstance(e, mkv.Frame)]
    assert [(e.timecode, e.keyframe, e.raw[e.data_offset :]) for e in after] == [
        (e.timecode, e.keyframe, e.raw[e.data_offset :]) for e in before
    ]
    assert all(e.raw[0] == mkv.SIMPLE_BLOCK for e in after)

    # A keyframe the sender did not choose (too soon after the fragment began) stays inside its Cluster.
    out = puller._Framer({2000}).feed(data)
    layout = [(c.timecode, len(c.blocks), [k for _, k in c.blocks].count(True)) for c in parse_clusters(out)]
    assert layout == [(0, 20, 2), (2000, 10, 1)]
