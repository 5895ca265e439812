#!/usr/bin/env python3
"""Connected home sessions with the built-in PERSON detector: cost per frame against the detector alone,
and how fast a person becomes a notification.

One run against a freshly started ``mlharbor serve`` (no label model: PERSON only, built in) and
``moto_server`` (its SNS, SQS and S3 endpoint):

* Peer: ``PersonDetector.detect`` in this process on the same decoded 640×480 frames (one OpenCV thread, as
  in the server's workers): milliseconds per frame, so frames per second per core it allows.
* Throughput: a session on an empty yard (nothing to find, so every frame is analysed in full; a session
  stops analysing once every requested label was seen) with the analysis rate raised to the video's frame
  rate, ``--seconds`` long: frames analysed (``results.json``) per second of session, and per core from the
  worker's CPU time (``/proc``), against the peer.
* Detection latency: ``--sessions`` sessions at the default 5 fps on a driveway where figures walk;
  per session, the frame's capture time (``producerTimestamp + frameOffsetMillis`` of the LABEL_DETECTED
  message) → the message received from an SQS queue subscribed to the topic; and StartStreamProcessor →
  message (worker start, detector load and the first detection included).

Usage::

    .venv/bin/python bench/connected_home.py                # ~2 min
    .venv/bin/python bench/connected_home.py --seconds 10 --sessions 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.conftest import aws_env  # noqa: E402
from tests.engines.video_files import walker_frames, write_video  # noqa: E402
from tests.services.rekognition.aws_peers import Inbox, moto  # noqa: E402

from harness import aws_client, fmt, ratio, start_server, stop_process  # noqa: E402
from stream import ACCOUNT, REGION, children, cpu_seconds, start_moto, wait_status  # noqa: E402


def peer_ms_per_frame(video: Path, frames: int = 30) -> float:
    """The detector alone, in this process, on the video's decoded frames."""
    import av

    from mlharbor.engines.people import PersonDetector

    detector = PersonDetector()
    with av.open(str(video)) as container:
        decoded = container.decode(video=0)
        pixels = [next(decoded).to_ndarray(format="rgb24") for _ in range(frames)]
    detector.detect(pixels[0], {"PERSON"})  # warm-up
    start = time.perf_counter()
    for p in pixels:
        detector.detect(p, {"PERSON"})
    return (time.perf_counter() - start) / len(pixels) * 1000


def create(rek: Any, name: str, camera: str, bucket: str, topic: str) -> None:
    rek.create_stream_processor(
        Name=name,
        Input={"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{camera}/1"}},
        Output={"S3Destination": {"Bucket": bucket, "KeyPrefix": "bench"}},
        Settings={"ConnectedHome": {"Labels": ["PERSON"], "MinConfidence": 80.0}},
        NotificationChannel={"SNSTopicArn": topic},
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/bench",
    )


def messages(
    inbox: Inbox, name: str, count: int, timeout: float = 60.0
) -> list[tuple[float, dict[str, Any]]]:
    """The first ``count`` notifications of processor ``name``, with the time each was read."""
    deadline = time.monotonic() + timeout
    while len(received := inbox.timed(name)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {len(received)} of {count} notifications")
        time.sleep(0.01)
    return received[:count]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=20, help="length of the throughput session (≤ 120)")
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--video-fps", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fps = args.video_fps
        yard = write_video(tmp / "yard.mp4", walker_frames(fps * 4, walkers=()), fps=fps)
        driveway = write_video(tmp / "driveway.mp4", walker_frames(fps * 4), fps=fps)
        peer_ms = peer_ms_per_frame(yard)
        print(f"peer (detector alone, one thread): {peer_ms:.1f} ms per 640×480 frame "
              f"→ {1000 / peer_ms:.1f} frames/s per core", flush=True)  # fmt: skip
        moto_url, moto_server = start_moto(tmp)
        try:
            inbox, s3, bucket = Inbox(moto_url), moto("s3", moto_url), "bench-results"
            s3.create_bucket(Bucket=bucket)
            env = {**aws_env(moto_url, tmp), "MLHARBOR_OBJECT_STORE": "s3",
                   "MLHARBOR_VIDEO_STREAM": f"yard={yard} driveway={driveway}"}  # fmt: skip
            (tmp / "fast").mkdir()
            server = start_server(tmp / "fast", {**env, "MLHARBOR_STREAM_ANALYSIS_FPS": str(fps)})
            try:
                rek = aws_client(server, "rekognition")
                create(rek, "yard", "yard", bucket, inbox.topic)
                session = rek.start_stream_processor(
                    Name="yard", StopSelector={"MaxDurationInSeconds": args.seconds}
                )["SessionId"]
                time.sleep(3.0)  # the worker started and warmed up
                workers = children(server.proc.pid)
                before, start = {p: cpu_seconds(p) for p in workers}, time.monotonic()
                time.sleep(args.seconds / 2)
                cores = sum(cpu_seconds(p) - before[p] for p in workers) / (time.monotonic() - start)
                wait_status(rek, "yard", "STOPPED", timeout=args.seconds + 60)
                key = f"bench/yard/{session}/results.json"
                results = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                rate = results["framesAnalysed"] / args.seconds
                per_core = rate / cores if cores > 0 else None
                # Per core, as a share of the peer's frames/s per core (1000 / its ms per frame).
                share = ratio(
                    per_core, 1000 / peer_ms if peer_ms > 0 else None,
                    numerator_name="the session's frames/s per core",
                    denominator_name="the detector's frames/s per core",
                )  # fmt: skip
                print(f"empty yard, unthrottled: {rate:.1f} frames/s on {cores:.2f} cores → "
                      f"{fmt(per_core, '.1f')} frames/s per core ({fmt(share, '.0%')} of the peer"
                      f"{': ' + share.problem if share.problem else ''})")  # fmt: skip
            finally:
                stop_process(server.proc)

            (tmp / "real").mkdir()
            server = start_server(tmp / "real", env)
            try:
                rek = aws_client(server, "rekognition")
                create(rek, "driveway", "driveway", bucket, inbox.topic)
                captured, started = [], []
                for k in range(args.sessions):
                    start = time.time()
                    rek.start_stream_processor(Name="driveway", StopSelector={"MaxDurationInSeconds": 2})
                    received, message = messages(inbox, "driveway", 2 * k + 1)[2 * k]
                    assert message["eventNamespace"]["type"] == "LABEL_DETECTED", message
                    mapping = message["labels"][0]["videoMapping"]["kinesisVideoMapping"]
                    frame_ms = mapping["producerTimestamp"] + mapping["frameOffsetMillis"]
                    captured.append(received * 1000 - frame_ms)
                    started.append((received - start) * 1000)
                    messages(inbox, "driveway", 2 * k + 2)  # STREAM_PROCESSING_COMPLETE
                    wait_status(rek, "driveway", "STOPPED")
            finally:
                stop_process(server.proc)
        finally:
            stop_process(moto_server)

    print(f"person on camera → LABEL_DETECTED received: p50 {statistics.median(captured):.0f} ms, "
          f"max {max(captured):.0f} ms over {len(captured)} sessions")  # fmt: skip
    print(f"StartStreamProcessor → LABEL_DETECTED received: p50 {statistics.median(started):.0f} ms, "
          f"max {max(started):.0f} ms (worker start and detector load included)")  # fmt: skip


if __name__ == "__main__":
    main()
