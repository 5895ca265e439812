"""The live-video source on real H.264 files: pacing, sampling, looping, the latest-frame slot, errors."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy
import pytest

from mlharbor.engines.video import Frame, VideoError, VideoSource
from tests.conftest import wait_until
from tests.engines.video_files import BACKGROUND, BORDER, portrait_frames, write_video

FLOAT_SLACK = 1e-3  # stream times are converted from integer pts


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    red_blue = numpy.zeros((480, 640, 3), numpy.uint8)
    red_blue[:, :320] = (255, 0, 0)
    red_blue[:, 320:] = (0, 0, 255)
    return {
        # 2 s of a moving face at 10 fps.
        "clip": write_video(folder / "clip.mp4", portrait_frames(20), fps=10),
        # 0.5 s at 10 fps, small: for loops.
        "short": write_video(folder / "short.mp4", portrait_frames(5, size=(320, 240)), fps=10),
        # Left half red, right half blue; a space in the name (file:// URLs are percent-encoded).
        "colours": write_video(folder / "red blue.mp4", [red_blue] * 3, fps=10),
        # One frame per second: the decoder spends most of its time waiting to release the next one.
        "slow": write_video(folder / "slow.mp4", portrait_frames(3, size=(64, 64)), fps=1),
        # 6 s of MPEG-TS (the container of many network streams): more than FFmpeg probes when opening.
        "transport_stream": write_video(folder / "clip.ts", portrait_frames(60, size=(320, 240)), fps=10),
    }


def read(
    source: VideoSource, until: Callable[[list[Frame]], bool] = lambda frames: False, timeout: float = 10.0
) -> tuple[list[Frame], VideoError | None]:
    """Frames from ``source`` until ``until(frames)`` holds or next() raises; fails after ``timeout``."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while not until(frames):
        assert time.monotonic() < deadline, f"only {len(frames)} frames in {timeout}s"
        try:
            frame = source.next(timeout=0.5)
        except VideoError as error:
            return frames, error
        if frame is not None:
            frames.append(frame)
    return frames, None


def decoder_threads(url: str) -> list[threading.Thread]:
    """The live decoder threads of sources of ``url`` (threads are named after their source)."""
    return [t for t in threading.enumerate() if t.name == f"video-decoder {url}"]


def mean_difference(a: numpy.ndarray, b: numpy.ndarray) -> float:
    return float(numpy.abs(a.astype(int) - b.astype(int)).mean())


def test_samples_a_file_at_the_requested_rate_until_it_ends(videos):
    before = time.time()
    with VideoSource(str(videos["clip"]), fps=5, loop_files=False) as source:
        after = time.time()
        frames, error = read(source)
        assert str(error) == "end of stream"
        with pytest.raises(VideoError, match="end of stream"):  # and it stays ended
            source.next(timeout=0.1)
    assert source.native_fps == pytest.approx(10)
    assert source.frames_decoded == 20
    # 2 s of video at 5 fps: the samples at 0.0, 0.2, ..., 1.8 (a busy machine may drop a few).
    assert source.frames_delivered == len(frames) >= 6
    assert len(frames) + source.dropped == 10
    times = [f.stream_seconds for f in frames]
    assert times[0] == pytest.approx(0.0, abs=FLOAT_SLACK)
    assert all(b - a >= 0.2 - FLOAT_SLACK for a, b in zip(times, times[1:], strict=False))
    assert times[-1] <= 1.9 + FLOAT_SLACK
    assert all(a.index < b.index for a, b in zip(frames, frames[1:], strict=False))
    for frame in frames:
        assert frame.pixels.shape == (480, 640, 3) and frame.pixels.dtype == numpy.uint8
        corners = frame.pixels[[0, 0, -BORDER, -BORDER], [0, -BORDER, 0, -BORDER]].astype(int)
        assert numpy.abs(corners - BACKGROUND).max() <= 6  # grey survives H.264 within a few levels
        # Captured "now", as by a camera: the open time plus the position in the file.
        assert before - 0.05 <= frame.producer_time - frame.stream_seconds <= after + 0.05
        assert frame.producer_time - 0.05 <= frame.received_time <= frame.producer_time + 2.0
    # The face moved between samples: frames are real, successive pictures.
    assert mean_difference(frames[0].pixels, frames[-1].pixels) > 1.0
    wait_until(lambda: not source.running, timeout=2, what="the decoder thread to exit")


def test_a_file_plays_at_its_native_pace(videos):
    with VideoSource(str(videos["short"]), fps=10) as source:
        started = time.monotonic()
        frames, error = read(
            source, lambda frames: bool(frames) and frames[-1].stream_seconds >= 1.0 - FLOAT_SLACK
        )
        elapsed = time.monotonic() - started
    assert error is None
    assert elapsed >= 0.8  # one second of video takes (about) one second, like a camera


def test_a_looping_file_keeps_going_and_its_time_keeps_increasing(videos):
    with VideoSource(videos["short"].as_uri(), fps=10, loop_files=True) as source:
        frames, error = read(source, lambda frames: bool(frames) and frames[-1].stream_seconds > 1.05)
    assert error is None and source.loops >= 2
    times = [f.stream_seconds for f in frames]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    by_time = {round(f.stream_seconds, 1): f.pixels for f in frames}
    if {0.0, 0.4, 0.5} <= by_time.keys():  # unless a busy machine dropped one of them
        # Second 0.5 is the file's first frame again (loop 1 adds the 0.5 s duration), not its last.
        assert mean_difference(by_time[0.5], by_time[0.0]) < 1.0
        assert mean_difference(by_time[0.5], by_time[0.4]) > mean_difference(by_time[0.5], by_time[0.0])


def test_max_side_shrinks_frames_and_colours_stay_rgb(videos):
    url = videos["colours"].as_uri()
    assert "%20" in url
    with VideoSource(url, max_side=320) as source:
        frame = source.next(timeout=5)
    assert frame is not None and frame.pixels.shape == (240, 320, 3)
    red, blue = frame.pixels[120, 40].astype(int), frame.pixels[120, 280].astype(int)
    assert red[0] > 200 and red[1] < 40 and red[2] < 40
    assert blue[2] > 200 and blue[0] < 40 and blue[1] < 40
    with VideoSource(str(videos["colours"]), max_side=1000) as source:  # never enlarged
        frame = source.next(timeout=5)
    assert frame is not None and frame.pixels.shape == (480, 640, 3)


def test_a_slow_consumer_gets_the_newest_frame_and_older_ones_are_dropped(videos):
    with VideoSource(str(videos["clip"]), fps=10, loop_files=False) as source:
        wait_until(lambda: source.frames_decoded >= 7, timeout=5, interval=0.01, what="seven decoded frames")
        decoded = source.frames_decoded
        frame = source.next(timeout=1)
        assert frame is not None
        # The newest frame, not the oldest: every frame decoded so far was sampled (fps = native fps), but
        # the last one may still be waiting for its time to come...
        assert frame.index >= decoded - 2 >= 5
        assert frame.stream_seconds >= (decoded - 2) * 0.1 - FLOAT_SLACK
        # ... and each one before it was dropped: the source held one frame, never a queue.
        assert source.dropped >= frame.index
        assert source.frames_delivered == 1
        later = source.next(timeout=2)
        assert later is not None and later.index > frame.index


def test_close_stops_the_decoder_at_once_even_while_it_waits_to_pace_a_frame(videos):
    source = VideoSource(str(videos["slow"]), fps=5)
    source.open()
    assert source.next(timeout=5) is not None
    assert source.running and decoder_threads(source.url)  # now waiting ~1 s to release the next frame
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 0.5
    assert not source.running and not decoder_threads(source.url)
    source.close()  # idempotent
    with pytest.raises(VideoError, match="closed"):
        source.next(timeout=0.1)


def damage(source: Path, target: Path, fraction: float) -> Path:
    """A copy of an MP4 whose frame data (mdat) has its middle ``fraction`` overwritten with noise; the index
    (moov, at the end) stays intact, so the file still opens."""
    data = bytearray(source.read_bytes())
    start, end = data.index(b"mdat") + 4, data.index(b"moov") - 4
    size = int((end - start) * fraction)
    middle = (start + end - size) // 2
    data[middle : middle + size] = numpy.random.default_rng(0).bytes(size)
    target.write_bytes(bytes(data))
    return target


def test_a_damaged_file_ends_the_source_without_crashing(videos, tmp_path):
    damaged = damage(videos["short"], tmp_path / "damaged.mp4", fraction=1 / 6)
    with VideoSource(str(damaged), fps=10, loop_files=False) as source:
        frames, error = read(source, timeout=5)
    assert str(error) == "end of stream"
    assert frames and all(f.pixels.shape == (240, 320, 3) for f in frames)


def test_a_looping_file_without_a_decodable_frame_fails_instead_of_spinning(videos, tmp_path):
    noise = damage(videos["short"], tmp_path / "noise.mp4", fraction=1.0)
    with VideoSource(str(noise), fps=10, loop_files=True) as source:
        frames, error = read(source, timeout=5)
    assert not frames
    assert str(error) == f"cannot read {noise}: no decodable video frames"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.mp4", None, "No such file or directory"),
        ("text.mp4", b"not a video " * 500, "Invalid data"),
        ("truncated.mp4", "half", "Invalid data"),  # its index (moov) was at the end
    ],
)
def test_a_file_that_is_not_a_video_fails_to_open(videos, tmp_path, name, content, reason):
    path = tmp_path / name
    if content == "half":
        content = videos["clip"].read_bytes()[: videos["clip"].stat().st_size // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError) as failure:
        VideoSource(str(path)).open(timeout=5)
    assert str(failure.value) == f"cannot open {path}: {failure.value.__cause__.strerror}"
    assert reason in str(failure.value)
    assert not decoder_threads(str(path))


def test_nothing_listening_fails_fast():
    started = time.monotonic()
    with pytest.raises(VideoError, match=r"^cannot open rtsp://127\.0\.0\.1:9/x: Connection refused$"):
        VideoSource("rtsp://127.0.0.1:9/x").open(timeout=5)
    assert time.monotonic() - started < 3


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:
            return  # closed

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for connection in accepted:
        connection.close()


@pytest.fixture
def stalling_http_camera(videos) -> Iterator[str]:
    """An HTTP "camera" that sends 6 s of MPEG-TS video at once, then keeps the connection open, silent."""
    data = videos["transport_stream"].read_bytes()
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        try:
            connection = server.accept()[0]
        except OSError:
            return  # closed
        accepted.append(connection)
        connection.recv(65536)
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n" + data)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/camera.ts"
    server.close()
    for connection in accepted:
        connection.close()


def test_a_network_stream_is_not_paced_and_a_stall_ends_it(stalling_http_camera):
    source = VideoSource(stalling_http_camera, fps=5)
    source.open(timeout=1.0)
    try:
        opened = time.monotonic()
        assert not source.is_file
        # All 6 s arrive at once and are decoded as they come (no pacing): the samples at 0.0, 0.2, ...
        # overwrite each other in the slot, since this test takes none of them.
        wait_until(lambda: source.dropped >= 20, timeout=5, interval=0.01, what="twenty dropped frames")
        assert time.monotonic() - opened < 3.5  # playing those 4 s at their own pace would take 4 s
        newest = source.next(timeout=1)
        assert newest is not None and newest.stream_seconds >= 4.0
        assert source.dropped >= newest.index  # everything sampled before it was dropped
        # Then nothing more comes: the source fails after the read timeout, it does not hang.
        started = time.monotonic()
        _, error = read(source, timeout=3)
        assert time.monotonic() - started < 3
    finally:
        source.close()
    assert str(error) == f"cannot read {stalling_http_camera}: no data within 1 s"


def test_a_camera_that_never_answers_times_out(silent_server):
    url = f"rtsp://admin:secret@127.0.0.1:{silent_server}/stream"
    started = time.monotonic()
    with pytest.raises(VideoError) as failure:
        VideoSource(url).open(timeout=1.0)
    assert time.monotonic() - started < 4
    redacted = f"rtsp://admin:***@127.0.0.1:{silent_server}/stream"  # no password in messages
    assert str(failure.value) == f"cannot open {redacted}: no answer within 1 s"


def test_a_frame_whose_rows_ffmpeg_pads_still_shows_its_face(tmp_path):
    # 410 pixels wide: FFmpeg pads each RGB row from 1,230 to 1,248 bytes. Such a frame used to reach the face
    # detector as a strided view, which dlib read as noise: no face, in any video of that width.
    from mlharbor.engines.faces import DlibEngine

    path = write_video(tmp_path / "narrow.mp4", portrait_frames(3, size=(410, 480)), fps=10)
    with VideoSource(str(path), max_side=1280) as source:
        frame = source.next(timeout=5)
    assert frame is not None and frame.pixels.shape == (480, 410, 3)
    assert frame.pixels.flags["C_CONTIGUOUS"]
    assert len(DlibEngine().detect(frame.pixels)) == 1
