#!/usr/bin/env python3
"""Face-search stream processors: throughput, latency, memory, real-time capacity and Stop latency.

One run against a freshly started ``mlharbor serve`` and ``moto_server`` (its Kinesis endpoint):

* Video: a 640×480 H.264 file with one face per frame (Grace Hopper's portrait moving slowly over a grey
  background, ``tests/engines/video_files.py``), played by the server as a looping live camera at its
  native rate (``--video-fps``, default 30) for every ``--video-stream camN``.
* Collection: 10k faces (``--faces``): Grace Hopper indexed through IndexFaces, the rest synthetic dlib-like
  descriptors written straight into the server's database (indexing 10k real photos through the API would
  take half an hour; the search cost depends on the count, not on where the vectors came from).
* Throughput ("unthrottled"): one processor with the analysis rate raised to the video's frame rate;
  analysed frames per second from the records on the Kinesis stream over ``--seconds``, and per core from
  the worker process's CPU time (``/proc``).
* Latency: per record, Kinesis's ApproximateArrivalTimestamp minus the frame's decode time
  (``ServerTimestamp + FrameOffsetInSeconds``): frame decoded → record accepted by Kinesis, p50/p99.
* Capacity: 1, 2, … processors at the default 5 frames/s on separate cameras, ``--seconds`` each; a level is
  real-time when every processor delivers ≥ 95% of 5 records/s with latency p99 ≤ 1 s. RSS of each
  worker process from ``/proc``.
* Stop: StopStreamProcessor → Describe shows STOPPED (polled every 5 ms), over ``--stops`` stops.
* Peer, same run (issue 12): today's engine on the same decoded frames, in this process on one core (one
  BLAS thread, as the worker), once the throughput server has stopped: ``--peer-frames`` frames of the same
  video decoded up front (not timed), then per frame exactly the stream worker's per-frame work
  (``FaceSearchSession._search``: detect, measure, describe with the worker's descriptor reuse, search the
  same 10k-face collection in the same database). Frames per CPU second; the ratio server ÷ peer (both per
  core) is what decoding, the worker loop, records and Kinesis output cost on top of the engine.

Targets (issue 6): ≥ 15 frames/s per core unthrottled, latency p99 ≤ 200 ms, ≥ 4 real-time processors on
2 cores, Stop ≤ 0.5 s; (issue 12) frames/s per core ≥ 0.8 × the in-process peer's.

Usage::

    .venv/bin/python bench/stream.py                 # ~4 min
    .venv/bin/python bench/stream.py --seconds 10 --max-processors 4
    .venv/bin/python bench/stream.py --quick         # smoke run (~1.5 min): 2k faces, 5 s, ≤ 2 processors
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.conftest import aws_env  # noqa: E402
from tests.engines.video_files import portrait_frames, write_video  # noqa: E402

from harness import aws_client, fmt, print_table, ratio, start_server, stop_process, verdict  # noqa: E402

ACCOUNT, REGION = "000000000000", "us-east-1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FRAMES_PER_CORE_TARGET = 15.0
P99_TARGET_MS = 200.0
REAL_TIME_TARGET = 4
STOP_TARGET_MS = 500.0
PEER_RATIO_TARGET = 0.8  # server frames/s per core ÷ the in-process engine's


def start_moto(workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            return url, proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("moto_server did not start")


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(p) for p in out.split()]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def add_synthetic_faces(database_url: str, collection_id: str, count: int) -> None:
    """``count`` dlib-like descriptors (norm 1.43, ~0.9 apart) written as face rows of the collection."""
    from sqlalchemy import insert, update

    from mlharbor.store.db import Store
    from mlharbor.store.tables import face_collections, faces

    rng = numpy.random.default_rng(3)
    centre = rng.standard_normal(128)
    centre /= numpy.linalg.norm(centre)
    spread = rng.standard_normal((count, 128))
    spread /= numpy.linalg.norm(spread, axis=1, keepdims=True)
    vectors = numpy.sqrt(0.8) * centre + numpy.sqrt(0.2) * spread
    vectors = (vectors * (1.43 / numpy.linalg.norm(vectors, axis=1, keepdims=True))).astype("<f4")
    store = Store(database_url)
    arn = f"arn:aws:rekognition:{REGION}:{ACCOUNT}:collection/{collection_id}"
    box = {"Width": 0.3, "Height": 0.4, "Left": 0.3, "Top": 0.2}
    with store.begin() as conn:
        conn.execute(insert(faces), [
            {"collection_arn": arn, "face_id": str(uuid.uuid4()), "image_id": str(uuid.uuid4()),
             "external_image_id": None, "confidence": 99.0, "box": box, "model_version": "dlib-20-resnet-v1",
             "created_at": time.time(), "descriptor": v.tobytes()}
            for v in vectors
        ])  # fmt: skip
        conn.execute(
            update(face_collections)
            .where(face_collections.c.arn == arn)
            .values(face_count=face_collections.c.face_count + count, version=face_collections.c.version + 1)
        )
    store.dispose()


class Output:
    """One Kinesis stream in moto and everything read from it."""

    def __init__(self, kinesis: Any) -> None:
        self.kinesis, self.name = kinesis, f"bench-{uuid.uuid4().hex[:8]}"
        kinesis.create_stream(StreamName=self.name, ShardCount=1)
        self.arn = kinesis.describe_stream_summary(StreamName=self.name)["StreamDescriptionSummary"][
            "StreamARN"
        ]
        shard = kinesis.list_shards(StreamName=self.name)["Shards"][0]["ShardId"]
        self.iterator = kinesis.get_shard_iterator(
            StreamName=self.name, ShardId=shard, ShardIteratorType="LATEST"
        )["ShardIterator"]
        self.records: list[tuple[float, dict[str, Any]]] = []  # (arrival, record)

    def read(self) -> None:
        while True:
            response = self.kinesis.get_records(ShardIterator=self.iterator, Limit=10000)
            self.iterator = response["NextShardIterator"]
            for r in response["Records"]:
                self.records.append((r["ApproximateArrivalTimestamp"].timestamp(), json.loads(r["Data"])))
            if not response["Records"]:
                return

    def window(self, start: float, end: float) -> tuple[int, list[float]]:
        """Records whose frame was decoded in [start, end), and their latencies in ms."""
        count, latencies = 0, []
        for arrival, record in self.records:
            video = record["InputInformation"]["KinesisVideo"]
            decoded = video["ServerTimestamp"] + video["FrameOffsetInSeconds"]
            if start <= decoded < end:
                count += 1
                latencies.append((arrival - decoded) * 1000)
        return count, latencies


def create_processor(rek: Any, name: str, camera: str, output: Output) -> None:
    rek.create_stream_processor(
        Name=name,
        Input={"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{camera}/1"}},
        Output={"KinesisDataStream": {"Arn": output.arn}},
        Settings={"FaceSearch": {"CollectionId": "bench", "FaceMatchThreshold": 80.0}},
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/bench",
    )


def wait_status(rek: Any, name: str, wanted: str, timeout: float = 60.0, interval: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if rek.describe_stream_processor(Name=name)["Status"] == wanted:
            return time.monotonic() - start
        time.sleep(interval)
    raise RuntimeError(f"{name} did not reach {wanted}: {rek.describe_stream_processor(Name=name)}")


def run_level(
    server: Any, rek: Any, kinesis: Any, count: int, seconds: float, tag: str
) -> list[dict[str, Any]]:
    """``count`` processors running together for ``seconds``; per processor: records/s, latency, RSS, CPU."""
    outputs, names = [], []
    for i in range(count):
        output = Output(kinesis)
        name = f"{tag}-{i}-{uuid.uuid4().hex[:6]}"
        create_processor(rek, name, f"cam{i}", output)
        rek.start_stream_processor(Name=name)
        outputs.append(output)
        names.append(name)
    for name in names:
        wait_status(rek, name, "RUNNING")
    time.sleep(3.0)  # warm-up: engine loaded, collection loaded, first frames through
    workers = children(server.proc.pid)
    cpu_before = {pid: cpu_seconds(pid) for pid in workers}
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    cpu = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in workers if Path(f"/proc/{pid}").exists()}
    rss = {pid: rss_mb(pid) for pid in cpu}
    time.sleep(1.5)  # records of the window's last frames arrive
    results = []
    for output in outputs:
        output.read()
        frames, latencies = output.window(start, end)
        results.append({"frames": frames, "rate": frames / (end - start), "latencies": latencies})
    total_cpu = sum(cpu.values())
    for name in names:
        rek.stop_stream_processor(Name=name)
    for name in names:
        wait_status(rek, name, "STOPPED")
        rek.delete_stream_processor(Name=name)
    for r in results:
        r["cpu"] = total_cpu / count / (end - start)  # cores per processor (workers only)
        r["rss"] = statistics.mean(rss.values()) if rss else 0.0
    return results


def peer(video: Path, database_url: str, data_dir: Path, count: int, threshold: float) -> dict[str, float]:
    """The stream worker's per-frame work on the same decoded frames, in this process on one core."""
    import types

    import av
    from threadpoolctl import threadpool_limits

    from mlharbor.engines.faces import DlibEngine
    from mlharbor.services.rekognition import collections as coll
    from mlharbor.services.rekognition.face_search import FaceSearchSession, Tracks
    from mlharbor.store.db import Store

    pixels: list[numpy.ndarray] = []
    with av.open(str(video)) as container:  # decoded up front, as the worker's decoding thread does
        pixels = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    pixels = (pixels * (count // len(pixels) + 1))[:count]
    store = Store(database_url)
    with store.read() as conn:
        collection = coll.find(conn, ACCOUNT, REGION, "bench")
    assert collection is not None, "the benchmark's collection is gone"
    # What FaceSearchSession._search reads from the session: the worker's own code runs per frame.
    session = types.SimpleNamespace(
        engine=DlibEngine(), tracks=Tracks(), store=store, collection=collection, threshold=threshold,
        indexes=coll.Indexes(data_dir / "face-vectors", snapshot_min_faces=2**62),
    )  # fmt: skip
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[-1]})
    try:
        with threadpool_limits(1):
            for p in pixels[:5]:  # warm-up: index loaded, buffers allocated
                FaceSearchSession._search(session, p)  # type: ignore[arg-type]
            session.tracks = Tracks()
            faces = matched = 0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for p in pixels:
                found = FaceSearchSession._search(session, p)  # type: ignore[arg-type]
                faces += len(found)
                matched += sum(1 for f in found if f["MatchedFaces"])
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        os.sched_setaffinity(0, set(cores))
        store.dispose()
    return {"frames": len(pixels), "cpu_s": cpu, "wall_s": wall, "faces": faces, "matched": matched}


def measure_peer(video: Path, data_dir: Path, frames: int) -> tuple[float | None, str | None]:
    """The peer's frames per CPU second, or None and why it failed."""
    print(f"peer: the worker's per-frame work in this process, one core, {frames} frames ...", flush=True)
    try:
        engine = peer(video, f"sqlite:///{data_dir / 'mlharbor.db'}", data_dir, frames, 80.0)
    except Exception as exc:  # the peer failed: the ratio says so
        problem = f"the peer failed: {type(exc).__name__}: {exc}"
        print(f"  {problem}", flush=True)
        return None, problem
    per_core = engine["frames"] / engine["cpu_s"] if engine["cpu_s"] > 0 else None
    print(
        f"  {engine['frames'] / engine['wall_s']:.1f} frames/s, {fmt(per_core, '.1f')} per CPU second; "
        f"{engine['faces']} faces, {engine['matched']} with a match",
        flush=True,
    )
    if not engine["matched"]:
        return per_core, "the peer matched no face: it did not search what the server searched"
    return per_core, None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--video-fps", type=int, default=30)
    parser.add_argument("--max-processors", type=int, default=6)
    parser.add_argument("--stops", type=int, default=10)
    parser.add_argument("--peer-frames", type=int, default=180, help="frames the in-process peer analyses")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2,000 faces, 5 s windows, up to 2 processors, 3 stops, 60 peer frames",
    )
    args = parser.parse_args()
    if args.quick:
        args.faces, args.seconds, args.max_processors, args.stops, args.peer_frames = 2000, 5.0, 2, 3, 60

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        video = write_video(tmp / "face.mp4", portrait_frames(args.video_fps * 6), fps=args.video_fps)
        moto_url, moto = start_moto(tmp)
        env = {  # moto as the Kinesis endpoint, nothing of the developer's AWS setup
            **aws_env(moto_url, tmp),
            "MLHARBOR_VIDEO_STREAM": " ".join(f"cam{i}={video}" for i in range(args.max_processors)),
        }
        import boto3

        kinesis = boto3.client("kinesis", endpoint_url=moto_url, region_name=REGION,
                               aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
        rows: list[list[str]] = []
        try:
            # Throughput: the analysis rate raised to the video's, so the worker runs flat out.
            fast_dir = tmp / "fast"
            fast_dir.mkdir()
            server = start_server(fast_dir, {**env, "MLHARBOR_STREAM_ANALYSIS_FPS": str(args.video_fps)})
            try:
                rek = aws_client(server, "rekognition")
                rek.create_collection(CollectionId="bench")
                hopper = (ROOT / "tests" / "data" / "grace_hopper.jpg").read_bytes()
                rek.index_faces(CollectionId="bench", Image={"Bytes": hopper})
                add_synthetic_faces(f"sqlite:///{server.data_dir / 'mlharbor.db'}", "bench", args.faces - 1)
                print(
                    f"collection: {rek.describe_collection(CollectionId='bench')['FaceCount']} faces",
                    flush=True,
                )
                [fast] = run_level(server, rek, kinesis, 1, args.seconds, "fast")
                fast_p50, fast_p99 = (
                    numpy.percentile(fast["latencies"], [50, 99]) if fast["latencies"] else (None, None)
                )
                per_core = fast["rate"] / fast["cpu"] if fast["cpu"] > 0 else None
                print(f"unthrottled: {fast['rate']:.1f} frames/s using {fast['cpu']:.2f} cores "
                      f"→ {fmt(per_core, '.1f')} frames/s per core; latency p50 {fmt(fast_p50, '.0f')} ms "
                      f"p99 {fmt(fast_p99, '.0f')} ms", flush=True)  # fmt: skip
            finally:
                stop_process(server.proc)
            peer_per_core, peer_problem = measure_peer(video, server.data_dir, args.peer_frames)

            real_dir = tmp / "real"
            real_dir.mkdir()
            server = start_server(real_dir, env)
            try:
                rek = aws_client(server, "rekognition")
                rek.create_collection(CollectionId="bench")
                rek.index_faces(CollectionId="bench", Image={"Bytes": hopper})
                add_synthetic_faces(f"sqlite:///{server.data_dir / 'mlharbor.db'}", "bench", args.faces - 1)
                best = 0
                for count in range(1, args.max_processors + 1):
                    level = run_level(server, rek, kinesis, count, args.seconds, f"rt{count}")
                    latencies = [x for r in level for x in r["latencies"]]
                    p50, p99 = numpy.percentile(latencies, [50, 99]) if latencies else (0, 0)
                    worst = min(r["rate"] for r in level)
                    real_time = worst >= 0.95 * 5.0 and p99 <= 1000
                    best = count if real_time else best
                    rss, cores = f"{level[0]['rss']:.0f}", f"{level[0]['cpu']:.2f}"
                    yes = "yes" if real_time else "no"
                    rows.append([str(count), f"{worst:.2f}", f"{p50:.0f}", f"{p99:.0f}", rss, cores, yes])
                    print(
                        f"  {count} processor(s): slowest {worst:.2f} records/s, p99 {p99:.0f} ms", flush=True
                    )
                    if not real_time:
                        break
                stops = []
                output = Output(kinesis)
                create_processor(rek, "stopper", "cam0", output)
                for _ in range(args.stops):
                    rek.start_stream_processor(Name="stopper")
                    wait_status(rek, "stopper", "RUNNING")
                    time.sleep(1.0)
                    start = time.monotonic()
                    rek.stop_stream_processor(Name="stopper")
                    stops.append(
                        (time.monotonic() - start + wait_status(rek, "stopper", "STOPPED", interval=0.005))
                        * 1000
                    )
            finally:
                stop_process(server.proc)
        finally:
            stop_process(moto)

    print()
    header = ["processors at 5 fps", "slowest rec/s", "p50 ms", "p99 ms", "RSS MB/worker", "cores/worker"]
    print_table([*header, "real-time"], rows, right={0, 1, 2, 3, 4, 5})
    print("\n=== Targets ===")
    no_records = None if fast["latencies"] else "no record of the measured window reached Kinesis"
    print(f"unthrottled frames/s per core: {fmt(per_core, '.1f')} (target ≥ {FRAMES_PER_CORE_TARGET:.0f}: "
          f"{verdict(per_core, FRAMES_PER_CORE_TARGET, problem=no_records)})")  # fmt: skip
    versus = ratio(
        per_core, peer_per_core, numerator_name="the server's frames/s per core",
        denominator_name="the peer's frames/s per core", failed=peer_problem or no_records,
    )  # fmt: skip
    print(f"server ÷ in-process peer, frames/s per core: {fmt(per_core, '.1f')} / "
          f"{fmt(peer_per_core, '.1f')} = {fmt(versus)} "
          f"(target ≥ {PEER_RATIO_TARGET}: {verdict(versus, PEER_RATIO_TARGET)})")  # fmt: skip
    print(f"latency p99 (frame decoded → Kinesis), unthrottled: {fmt(fast_p99, '.0f')} ms "
          f"(target ≤ {P99_TARGET_MS:.0f} ms: {verdict(fast_p99, P99_TARGET_MS, at_most=True)})")  # fmt: skip
    capped = (
        f"only {args.max_processors} processor(s) were tried (--max-processors) and all were real-time"
        if best == args.max_processors and best < REAL_TIME_TARGET
        else None
    )
    print(f"real-time processors on {os.cpu_count()} cores: {best} (target ≥ {REAL_TIME_TARGET}: "
          f"{verdict(best, REAL_TIME_TARGET, problem=capped)})")  # fmt: skip
    stop_p50 = statistics.median(stops) if stops else None
    stop_max = max(stops) if stops else None
    print(f"StopStreamProcessor → STOPPED: p50 {fmt(stop_p50, '.0f')} ms, max {fmt(stop_max, '.0f')} ms "
          f"(target ≤ {STOP_TARGET_MS:.0f} ms: "
          f"{verdict(stop_max, STOP_TARGET_MS, at_most=True)})")  # fmt: skip


if __name__ == "__main__":
    main()
