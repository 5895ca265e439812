"""What the tests (and bench/scale.py) of several servers and of the Ray runtime share: reading a processor's
records from MLHarbor's Kinesis, and finding the Ray node that runs a processor's worker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

ACCOUNT, REGION = "000000000000", "us-east-1"
DATA = Path(__file__).parent / "data"
WORKER_PREFIX = "mlharbor-sp "  # a stream worker names its thread (on Ray, the actor's) this, then its name


def face_search_processor(
    rek: Any, name: str, camera: str, output_arn: str, collection: str, **extra: Any
) -> str:
    """CreateStreamProcessor for a face search of ``collection`` on video stream ``camera``, records to the
    Kinesis stream ``output_arn``; returns ``name``."""
    rek.create_stream_processor(
        Name=name,
        Input={"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{camera}/1"}},
        Output={"KinesisDataStream": {"Arn": output_arn}},
        Settings={"FaceSearch": {"CollectionId": collection, "FaceMatchThreshold": 70.0}},
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/rekognition",
        **extra,
    )
    return name


class Records:
    """Everything put on one Kinesis stream so far (one shard), decoded; ``kinesis`` may be swapped for a
    client of another server (the iterator is valid on every server of a deployment)."""

    def __init__(self, kinesis: Any, name: str) -> None:
        self.kinesis, self.items = kinesis, []
        shard = kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
        self.iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]

    def read(self) -> list[dict[str, Any]]:
        response = self.kinesis.get_records(ShardIterator=self.iterator, Limit=1000)
        self.iterator = response["NextShardIterator"]
        self.items += [json.loads(r["Data"]) for r in response["Records"]]
        return self.items

    def after(self, moment: float) -> bool:
        """Whether a record of a frame the server received after ``moment`` (epoch seconds) arrived."""
        return any(r["InputInformation"]["KinesisVideo"]["ServerTimestamp"] > moment for r in self.read())


def worker_threads(pids: list[int], processor: str) -> list[Path]:
    """The threads among ``pids``' that run ``processor``'s stream worker (their /proc task folders)."""
    found = []
    for pid in pids:
        for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
            try:
                thread = comm.read_text().strip()
            except OSError:
                continue
            if thread.startswith(WORKER_PREFIX) and processor.startswith(thread.removeprefix(WORKER_PREFIX)):
                found.append(comm.parent)
    return found


def node_of(cluster: Any, processor: str) -> str | None:
    """The Ray worker node (``tests.runtime.ray_cluster``) whose processes run the processor's worker."""
    return next(
        (name for name, node in cluster.workers.items() if worker_threads(node.pids(), processor)), None
    )


class Deployment:
    """Two servers on one PostgreSQL database and one data folder (standing in for a shared object store),
    each pulling the same camera into Kinesis Video (only one of them does, holding its lease); ``args`` and
    ``env`` go to every server (e.g. ``--runtime ray://...``)."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        from tests.conftest import postgres_database
        from tests.engines.video_files import portrait_frames, write_video

        self.tmp, self.env = tmp, env
        self.database_url, self.drop = postgres_database()
        self.data_dir = tmp / "data"
        video = write_video(tmp / "hopper.mp4", portrait_frames(20), fps=10)
        self.args = (*args, "--video-stream", f"cam={video}")
        self.servers: list[Any] = []
        self.start()
        self.start()

    def start(self) -> Any:
        from tests.conftest import start_server

        folder = self.tmp / f"server-{len(self.servers)}"
        folder.mkdir()
        server = start_server(folder, self.database_url, *self.args, env=self.env, data_dir=self.data_dir)
        self.servers.append(server)
        return server

    @property
    def alive(self) -> list[Any]:
        return [s for s in self.servers if s.process.poll() is None]

    def other(self, server: Any) -> Any:
        return next(s for s in self.alive if s is not server)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        url = self.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def owners(self, kind: str) -> list[Any]:
        """The servers holding the leases of ``kind``'s work (by the pid in the owner id ``host:pid:…``)."""
        rows = self.query("SELECT owner FROM work_leases WHERE kind = %s ORDER BY work_id", kind)
        by_pid = {s.process.pid: s for s in self.servers}
        return [by_pid[pid] for pid in (int(owner.split(":")[1]) for (owner,) in rows) if pid in by_pid]

    def kill(self, server: Any) -> None:
        server.process.kill()  # kill -9: no shutdown of any kind, its leases just stop being renewed
        server.process.wait()

    def close(self) -> None:
        from tests.conftest import stop_server

        for server in self.alive:
            stop_server(server)
        self.drop()


def start_face_search(rek: Any, kinesis: Any, *, start_with: Any = None) -> tuple[str, Records]:
    """A face search processor on the camera ``cam``, searching a new collection with Grace Hopper's face
    and writing to a new Kinesis stream; created through ``rek``, started through ``start_with`` (another
    server's client; default ``rek``). Returns its name and its records."""
    suffix = uuid.uuid4().hex[:12]
    collection, output, name = f"staff-{suffix}", f"results-{suffix}", f"sp-{suffix}"
    rek.create_collection(CollectionId=collection)
    rek.index_faces(CollectionId=collection, Image={"Bytes": (DATA / "grace_hopper.jpg").read_bytes()})
    kinesis.create_stream(StreamName=output, ShardCount=1)
    stream_arn = kinesis.describe_stream_summary(StreamName=output)["StreamDescriptionSummary"]["StreamARN"]
    face_search_processor(rek, name, "cam", stream_arn, collection)
    (start_with or rek).start_stream_processor(Name=name)
    return name, Records(kinesis, output)
