#!/usr/bin/env python3
"""kill -9 soak: random kills during training and streaming; nothing lost, nothing stuck, no orphan
workers, the database intact.

One run against a real ``mlharbor serve`` (started as the other benchmarks start it, on loopback) and
``moto_server`` (its Kinesis endpoint), on one data folder and one database (SQLite by default;
``--database postgresql``: a fresh database on 127.0.0.1:5432, trust auth, dropped afterwards):

* Load: two face search stream processors (cameras ``cam0``/``cam1``, each its own small looping video of
  one face, ``tests/engines/video_files.py``) searching a collection and putting records on moto's Kinesis;
  three custom entity recognizers trained on small generated corpora (created before the first kill, after
  the 2nd and after the 5th); an entities detection job once a recognizer is TRAINED; processor ``p1``
  stopped after the 3rd kill and started again after the 5th. A writer thread keeps making small
  acknowledged writes (CreateCollection, IndexFaces, TagResource): a call that returned is acknowledged.
* ``--kills`` (8) kills at random moments (``--min-gap``..``--max-gap`` seconds apart, seeded), of three
  kinds in a shuffled plan: ``server`` (kill -9 of the server process alone: its workers find their pipe
  closed), ``server+workers`` (kill -9 of the server and every worker at once: the machine "crashed") and
  ``worker`` (kill -9 of one worker: a stream worker, never a third time for one processor, whose third
  death in a row is by design FAILED, or a spaCy worker). After a server kill the server is started again
  on the same data at once; after some rounds the soak waits for recovery before the next kill, after the
  others the next kill may land while the server is still recovering.
* Processes are found without knowing work ids: every process the server starts inherits a marker in its
  environment (``MLHARBOR_SOAK_TAG``); ``multiprocessing``'s command lines tell workers
  (``spawn_main``) from the resource tracker, and what a worker has loaded (``/proc/<pid>/maps``: dlib or
  spaCy), or its name (stream workers name themselves after their processor, the built-in producers that
  put each camera's video into Kinesis Video ``mlharbor-pull``) tell which it is. A monitor thread samples
  them every 0.5 s.

Checks (each PASS or FAIL; the exit status is 1 on any FAIL):

* every acknowledged resource still exists (collections, faces, tags, processors, recognizers, the job);
* every recognizer ends TRAINED (a training whose worker the soak killed 3 times may end IN_ERROR saying so;
  server kills never count), the job COMPLETED with one result line per document, every processor in the
  state last asked for: a
  RUNNING one comes back RUNNING after each restart and records flow again (a record that arrived after
  the restart), within ``--recover-deadline``; nothing stays STARTING/STOPPING longer than
  ``--stuck-deadline`` nor transitional at the end (``--settle`` seconds to get there);
* no orphan: no worker or resource tracker outlives the server that started it by more than
  ``--orphan-deadline`` seconds, no two workers of the live server analyse one camera for longer than
  that, at the end the live server's workers are exactly one per RUNNING processor, and after the final
  clean shutdown (SIGTERM) no marked process is left;
* database integrity: ``PRAGMA integrity_check`` (SQLite, after every restart and at the end), ``amcheck``
  on every B-tree index (PostgreSQL, at the end), and every collection's ``face_count`` equal to its rows.

Usage::

    .venv/bin/python bench/kill_soak.py                          # SQLite, 8 kills, ~3-4 min on 2 cores
    .venv/bin/python bench/kill_soak.py --database postgresql    # the same on a fresh PostgreSQL database
    .venv/bin/python bench/kill_soak.py --kills 3 --seed 7 --keep
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.conftest import aws_env  # noqa: E402
from tests.engines.video_files import PORTRAIT, portrait_frames, write_video  # noqa: E402

import harness  # noqa: E402
from stream import start_moto  # noqa: E402

ACCOUNT, REGION = "000000000000", "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/soak"
BUCKET = "soak"
TAG_VAR = "MLHARBOR_SOAK_TAG"
CAMERAS = ("cam0", "cam1")
PROCESSORS = {"p0": "cam0", "p1": "cam1"}
# Worker process names (services/kinesisvideo/puller.py, services/rekognition/streaming.py).
PULLER_NAME = "mlharbor-pull"
STREAM_WORKER_PREFIX = "mlharbor-sp "
TRAINED = {"TRAINED", "TRAINED_WITH_WARNING"}
RECOGNIZER_FINAL = TRAINED | {"IN_ERROR", "STOPPED"}
JOB_FINAL = {"COMPLETED", "FAILED", "STOPPED"}
PROCESSOR_TRANSITIONAL = {"STARTING", "STOPPING", "UPDATING"}
KIND_PLAN = ["server"] * 4 + ["server+workers"] * 2 + ["worker"] * 2
MAX_STREAM_WORKER_KILLS = 2  # a third death in a row would (by design) make the processor FAILED
INTERRUPTIONS_BEFORE_IN_ERROR = 3  # training / detection jobs: MAX_ATTEMPTS in the services
WRITER_CAPS = {"collection": 30, "face": 20, "tag": 40}  # Rekognition allows 50 tags per resource
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------
# Processes: found by the marker in their environment, never by work id
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # start time in clock ticks: (pid, start) names one process even if the pid is reused
    ppid: int
    role: str  # "server", "tracker" (multiprocessing's resource tracker) or "worker"
    kind: str  # workers: "stream" (dlib loaded), "spacy" (spaCy loaded) or "loading"
    camera: str | None  # stream workers: the camera their processor reads

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start


class ProcessTable:
    def __init__(self, tag: str) -> None:
        self.marker = f"{TAG_VAR}={tag}".encode()
        self._kinds: dict[tuple[int, int], str] = {}

    def scan(self) -> dict[tuple[int, int], Proc]:
        found: dict[tuple[int, int], Proc] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if self.marker not in f.read().split(b"\0"):
                        continue
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
                comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
                fields = stat.rsplit(b")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if fields[0] in (b"Z", b"X"):  # dead, not yet reaped
                continue
            ppid, start = int(fields[1]), int(fields[19])
            if b"resource_tracker" in cmdline:
                role = "tracker"
            elif b"spawn_main" in cmdline:
                role = "worker"
            elif b"mlharbor" in cmdline and b"serve" in cmdline:
                role = "server"
            else:
                role = "other"
            kind, camera = "", None
            if role == "worker" and comm == PULLER_NAME:
                kind = "pull"  # the built-in producer putting a camera's video into Kinesis Video
            elif role == "worker" and comm.startswith(STREAM_WORKER_PREFIX):
                # A stream worker names itself after its processor; it reads its camera through GetMedia.
                kind, camera = "stream", PROCESSORS.get(comm[len(STREAM_WORKER_PREFIX) :])
            elif role == "worker":
                kind = self._kind(pid, start)
            found[(pid, start)] = Proc(pid, start, ppid, role, kind, camera)
        return found

    def _kind(self, pid: int, start: int) -> str:
        kind = self._kinds.get((pid, start))
        if kind is None:
            try:
                with open(f"/proc/{pid}/maps", "rb") as f:
                    maps = f.read()
            except OSError:
                return "loading"
            kind = "stream" if b"dlib" in maps else "spacy" if b"thinc" in maps or b"/spacy/" in maps else ""
            if not kind:
                return "loading"
            self._kinds[(pid, start)] = kind
        return kind


class Monitor(threading.Thread):
    """Samples the marked processes every ``interval`` seconds and records orphans and duplicates."""

    def __init__(self, table: ProcessTable, orphan_deadline: float, interval: float = 0.5) -> None:
        super().__init__(name="soak-monitor", daemon=True)
        self.table, self.deadline, self.interval = table, orphan_deadline, interval
        self.lock = threading.Lock()
        self.latest: dict[tuple[int, int], Proc] = {}
        self.orphaned_at: dict[tuple[int, int], float] = {}
        self.orphan_lifetimes: dict[tuple[int, int], tuple[Proc, float]] = {}  # longest seen per orphan
        self.duplicates_since: dict[str, float] = {}
        self.violations: list[str] = []
        self._reported: set[Any] = set()
        self._halt = threading.Event()
        self.samples = 0

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def sample(self) -> dict[tuple[int, int], Proc]:
        procs = self.table.scan()
        now = time.monotonic()
        servers = {p.pid for p in procs.values() if p.role == "server"}
        with self.lock:
            self.samples += 1
            self.latest = procs
            for key, p in procs.items():
                if p.role not in ("worker", "tracker") or p.ppid in servers:
                    continue
                since = self.orphaned_at.setdefault(key, now)
                self.orphan_lifetimes[key] = (p, now - since)
                if now - since > self.deadline and key not in self._reported:
                    self._reported.add(key)
                    self.violations.append(
                        f"{p.role} pid {p.pid} ({p.kind or 'tracker'}{', ' + p.camera if p.camera else ''}) "
                        f"still alive {now - since:.0f} s after the server that started it died"
                    )
            by_camera = Counter(
                p.camera for p in procs.values() if p.role == "worker" and p.camera and p.ppid in servers
            )
            for camera in CAMERAS:
                if by_camera[camera] > 1:
                    since = self.duplicates_since.setdefault(camera, now)
                    if now - since > self.deadline and ("dup", camera, since) not in self._reported:
                        self._reported.add(("dup", camera, since))
                        self.violations.append(
                            f"{by_camera[camera]} workers of the live server analysed {camera} for more than "
                            f"{self.deadline:.0f} s"
                        )
                else:
                    self.duplicates_since.pop(camera, None)
        return procs

    def max_orphan_s(self) -> float:
        with self.lock:
            return max((age for _, age in self.orphan_lifetimes.values()), default=0.0)


# ------------------------------------------------------------------------------------------------
# Kinesis: records per processor
# ------------------------------------------------------------------------------------------------


class Output:
    def __init__(self, kinesis: Any, name: str) -> None:
        self.kinesis, self.name = kinesis, name
        kinesis.create_stream(StreamName=name, ShardCount=1)
        self.arn = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
        shard = kinesis.list_shards(StreamName=name)["Shards"][0]["ShardId"]
        self.iterator = kinesis.get_shard_iterator(
            StreamName=name, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        self.count = 0
        self.last_arrival = 0.0
        self.matched = 0

    def read(self) -> None:
        while True:
            response = self.kinesis.get_records(ShardIterator=self.iterator, Limit=1000)
            self.iterator = response["NextShardIterator"]
            for r in response["Records"]:
                self.count += 1
                self.last_arrival = max(self.last_arrival, r["ApproximateArrivalTimestamp"].timestamp())
                if any(f.get("MatchedFaces") for f in json.loads(r["Data"]).get("FaceSearchResponse", [])):
                    self.matched += 1
            if not response["Records"]:
                return


# ------------------------------------------------------------------------------------------------
# The soak
# ------------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Kill:
    number: int
    kind: str
    at: float  # time.time()
    victims: list[str]
    restart_s: float | None = None
    recovered_s: float | None = None  # kill -> processors RUNNING with fresh records (None: not waited)
    note: str = ""


@dataclass
class Recognizer:
    name: str
    arn: str
    created_at: float
    interruptions: int = 0  # kills of a spaCy worker alone while it trained (an upper bound)
    final: str = ""
    message: str = ""


@dataclass
class Acked:
    collections: set[str] = field(default_factory=set)
    faces: dict[str, str] = field(default_factory=dict)  # FaceId -> collection
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # processor name -> tags
    unknown: Counter[str] = field(default_factory=Counter)  # calls whose outcome is unknown (kills)


class Soak:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.rng = random.Random(args.seed)
        self.tag = uuid.uuid4().hex
        self.checks: list[Check] = []
        self.kills: list[Kill] = []
        self.recognizers: list[Recognizer] = []
        self.job_id: str | None = None
        self.job_docs = 0
        self.job_interruptions = 0
        self.acked = Acked()
        self.desired = {name: "RUNNING" for name in PROCESSORS}
        self.stream_kills: Counter[str] = Counter()
        self.status_since: dict[str, tuple[str, float]] = {}  # processor -> (status, since)
        self.stuck: list[str] = []
        self.integrity_failures: list[str] = []
        self.integrity_runs = 0
        self.server: harness.Server | None = None
        self.server_lock = threading.Lock()
        self.clients: dict[tuple[int, str, str], Any] = {}  # (thread, service, url) -> boto3 client
        self.writer_rng = random.Random(args.seed + 1)
        self.resource_checks: list[tuple[str, list[str]]] = []
        self.aim: dict[int, str] = {1: "training"}  # kill number -> what it should land in
        self.table: ProcessTable | None = None
        self.moto: subprocess.Popen[bytes] | None = None
        self.pg_name: str | None = None
        self.database_url = ""
        self.began = time.monotonic()

    # --- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        a = self.args
        moto_url, self.moto = start_moto(self.workdir)
        self.videos = {}
        for camera in CAMERAS:  # one file per camera: a worker's open file names its processor
            self.videos[camera] = write_video(
                self.workdir / f"{camera}.mp4", portrait_frames(20, size=(320, 240)), fps=10
            )
        self.table = ProcessTable(self.tag)
        self.monitor = Monitor(self.table, a.orphan_deadline)
        data_dir = self.workdir / "mlharbor-data"
        if a.database == "postgresql":
            self.database_url = create_pg_database(a.pg_admin_url, self)
        else:
            self.database_url = f"sqlite:///{data_dir / 'mlharbor.db'}"
        self.sqlite_path = data_dir / "mlharbor.db" if a.database == "sqlite" else None
        self.serve_args = ["--database-url", self.database_url]
        for camera, path in self.videos.items():
            self.serve_args += ["--video-stream", f"{camera}={path}"]
        self.env = {**aws_env(moto_url, self.workdir), TAG_VAR: self.tag}
        import boto3

        self.kinesis = boto3.client("kinesis", endpoint_url=moto_url, region_name=REGION,
                                    aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
        self.start_server(restart=False)
        self.monitor.start()
        rek = self.client("rekognition")
        rek.create_collection(CollectionId="soak")
        self.acked.collections.add("soak")
        self.portrait = small_portrait()
        for face in rek.index_faces(CollectionId="soak", Image={"Bytes": self.portrait})["FaceRecords"]:
            self.acked.faces[face["Face"]["FaceId"]] = "soak"
        self.outputs: dict[str, Output] = {}
        self.arns: dict[str, str] = {}
        for name, camera in PROCESSORS.items():
            self.outputs[name] = Output(self.kinesis, f"soak-{name}-{self.tag[:6]}")
            self.arns[name] = rek.create_stream_processor(
                Name=name,
                Input={
                    "KinesisVideoStream": {
                        "Arn": f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{camera}/1"
                    }
                },
                Output={"KinesisDataStream": {"Arn": self.outputs[name].arn}},
                Settings={"FaceSearch": {"CollectionId": "soak", "FaceMatchThreshold": 80.0}},
                RoleArn=ROLE,
            )["StreamProcessorArn"]
            self.acked.tags[name] = {}
            rek.start_stream_processor(Name=name)
        self.create_recognizer()
        started = time.time()
        recovered = self.wait_recovered(started, self.args.recover_deadline)
        log(f"setup done: processors RUNNING with records after {recovered:.1f} s" if recovered is not None
            else "setup: processors did not come up")  # fmt: skip
        self.check_now(
            "setup: processors RUNNING with records", recovered is not None,
            f"{recovered:.1f} s" if recovered is not None else f"not within {a.recover_deadline:.0f} s",
        )  # fmt: skip

    # --- the server ---------------------------------------------------------------------------------
    def start_server(self, restart: bool) -> float:
        began = time.monotonic()
        server = harness.start_server(self.workdir, self.env, self.serve_args, restart=restart)
        with self.server_lock:
            self.server = server
        return time.monotonic() - began

    def client(self, service: str) -> Any:
        """A boto3 client of the current server for this thread."""
        import boto3
        from botocore.config import Config

        with self.server_lock:
            assert self.server is not None
            url = self.server.url
        key = (threading.get_ident(), service, url)
        if key not in self.clients:
            self.clients[key] = boto3.session.Session().client(
                service, endpoint_url=url, region_name=REGION, aws_access_key_id="test",
                aws_secret_access_key="test",
                config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=20),
            )  # fmt: skip
        return self.clients[key]

    # --- load ---------------------------------------------------------------------------------------
    def create_recognizer(self) -> None:
        from tests.services.comprehend.corpus import upload

        n = len(self.recognizers)
        data_dir = self.workdir / "mlharbor-data"
        config = upload(data_dir, BUCKET, f"corpus-{n}", docs=self.args.train_docs, seed=10 + n,
                        types=("PERSON", "CITY"))  # fmt: skip
        name = f"soak-r{n}"
        arn = self.client("comprehend").create_entity_recognizer(
            RecognizerName=name, LanguageCode="en", DataAccessRoleArn=ROLE, InputDataConfig=config
        )["EntityRecognizerArn"]
        self.recognizers.append(Recognizer(name, arn, time.time()))
        log(f"recognizer {name} created")
        self.aim[len(self.kills) + 1] = "training"  # the next kill lands during its training

    def start_job(self) -> bool:
        trained = [r for r in self.recognizers if self.recognizer_status(r)[0] in TRAINED]
        if not trained:
            return False
        from tests.engines.ner_data import make_corpus

        texts = [
            e.text.replace("\n", " ") for e in make_corpus(self.args.job_docs, seed=99, value_split="test")
        ]
        self.job_docs = len(texts)
        path = self.workdir / "mlharbor-data" / "s3" / BUCKET / "job-input" / "documents.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(texts) + "\n")
        self.job_id = self.client("comprehend").start_entities_detection_job(
            JobName="soak-job", EntityRecognizerArn=trained[0].arn, LanguageCode="en", DataAccessRoleArn=ROLE,
            InputDataConfig={"S3Uri": f"s3://{BUCKET}/job-input/", "InputFormat": "ONE_DOC_PER_LINE"},
            OutputDataConfig={"S3Uri": f"s3://{BUCKET}/job-output/"},
        )["JobId"]  # fmt: skip
        log(f"detection job {self.job_id} started on {trained[0].name} ({self.job_docs} documents)")
        self.aim.setdefault(len(self.kills) + 1, "job")
        return True

    def writer(self, stop: threading.Event) -> None:
        """Small acknowledged writes, one every ~0.7 s, until ``stop``."""
        n = 0
        while not stop.wait(0.7):
            choices = [k for k, cap in WRITER_CAPS.items() if self._written(k) < cap]
            if not choices:
                return
            what = self.writer_rng.choice(choices)
            n += 1
            try:
                rek = self.client("rekognition")
                if what == "collection":
                    rek.create_collection(CollectionId=f"soak-w{n}")
                    self.acked.collections.add(f"soak-w{n}")
                elif what == "face":
                    response = rek.index_faces(CollectionId="soak", Image={"Bytes": self.portrait},
                                               ExternalImageId=f"w{n}")  # fmt: skip
                    for face in response["FaceRecords"]:
                        self.acked.faces[face["Face"]["FaceId"]] = "soak"
                else:
                    name = self.writer_rng.choice(sorted(PROCESSORS))
                    rek.tag_resource(ResourceArn=self.arns[name], Tags={f"k{n}": f"v{n}"})
                    self.acked.tags[name][f"k{n}"] = f"v{n}"
            except Exception as exc:  # a kill landed during the call: its outcome is unknown
                self.acked.unknown[f"{what}: {type(exc).__name__}"] += 1

    def _written(self, what: str) -> int:
        if what == "collection":
            return len(self.acked.collections)
        if what == "face":
            return len(self.acked.faces)
        return sum(len(t) for t in self.acked.tags.values())

    # --- observation --------------------------------------------------------------------------------
    def recognizer_status(self, r: Recognizer) -> tuple[str, str]:
        props = self.client("comprehend").describe_entity_recognizer(EntityRecognizerArn=r.arn)[
            "EntityRecognizerProperties"
        ]
        return props["Status"], props.get("Message") or ""

    def processor_statuses(self) -> dict[str, str]:
        rek = self.client("rekognition")
        statuses = {}
        now = time.monotonic()
        for name in PROCESSORS:
            status = rek.describe_stream_processor(Name=name)["Status"]
            statuses[name] = status
            previous = self.status_since.get(name)
            if previous is None or previous[0] != status:
                self.status_since[name] = (status, now)
            elif status in PROCESSOR_TRANSITIONAL and now - previous[1] > self.args.stuck_deadline:
                note = f"{name} {status} for more than {self.args.stuck_deadline:.0f} s"
                if note not in self.stuck:
                    self.stuck.append(note)
        return statuses

    def wait_recovered(self, since: float, deadline: float) -> float | None:
        """Seconds until every processor is in its desired state, the RUNNING ones with a record that
        arrived after ``since`` (time.time()); None if not within ``deadline``."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                statuses = self.processor_statuses()
                for name, output in self.outputs.items():
                    if self.desired[name] == "RUNNING":
                        output.read()
                if all(
                    statuses[n] == self.desired[n]
                    and (self.desired[n] != "RUNNING" or self.outputs[n].last_arrival > since)
                    for n in PROCESSORS
                ):
                    return time.time() - since
            except Exception:  # the server may still be starting
                pass
            time.sleep(0.5)
        return None

    def check_integrity(self, when: str) -> None:
        if self.sqlite_path is None or not self.sqlite_path.exists():
            return
        self.integrity_runs += 1
        try:
            with sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=10) as conn:
                result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        except sqlite3.Error as exc:
            result = [f"{type(exc).__name__}: {exc}"]
        if result != ["ok"]:
            self.integrity_failures.append(f"{when}: {'; '.join(result[:5])}")

    def check_now(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    # --- kills --------------------------------------------------------------------------------------
    def live_workers(self) -> list[Proc]:
        procs = self.monitor.sample()
        with self.server_lock:
            server_pid = self.server.proc.pid if self.server else None
        return [p for p in procs.values() if p.role == "worker" and p.ppid == server_pid]

    def kill(self, number: int, kind: str, aim: str | None = None) -> Kill:
        assert self.server is not None
        # Which trainings and job a kill may interrupt (an upper bound: SUBMITTED may just have started).
        training = [r for r in self.recognizers if self.recognizer_status(r)[0] in ("TRAINING", "SUBMITTED")]
        job_active = self.job_id is not None and self.job_status()[0] in ("IN_PROGRESS", "SUBMITTED")
        if kind == "worker":
            victim = self.pick_worker(aim)
            if victim is None:
                kind = "server"  # nothing eligible running: kill the server instead
            else:
                os.kill(victim.pid, signal.SIGKILL)
                if victim.kind == "stream":
                    name = next(n for n, c in PROCESSORS.items() if c == victim.camera)
                    self.stream_kills[name] += 1
                    what = f"stream worker pid {victim.pid} ({name})"
                else:
                    for r in training:
                        r.interruptions += 1
                    self.job_interruptions += job_active
                    what = f"spaCy worker pid {victim.pid}"
                log(f"kill {number}: kill -9 {what}")
                return Kill(number, kind, time.time(), [what])
        victims = [f"server pid {self.server.proc.pid}"]
        workers = [p for p in self.monitor.sample().values() if p.ppid == self.server.proc.pid]
        self.server.proc.kill()
        if kind == "server+workers":
            for p in workers:
                with contextlib.suppress(OSError):
                    os.kill(p.pid, signal.SIGKILL)
                victims.append(f"{p.role} pid {p.pid} ({p.kind or 'tracker'})")
        at = time.time()
        self.server.proc.wait()
        # A server that goes down is not the work's fault: it never uses up a training's or a job's retries
        # (its workers die with it), so only kills of a spaCy worker alone count as interruptions.
        log(f"kill {number}: kill -9 {', '.join(victims)}")
        record = Kill(number, kind, at, victims)
        try:
            record.restart_s = self.start_server(restart=True)
        except RuntimeError:
            record.note = "restart failed"
            self.kills.append(record)
            raise
        log(f"  server restarted in {record.restart_s:.1f} s ({self.server.url})")
        self.check_integrity(f"after kill {number}")
        return record

    def pick_worker(self, prefer: str | None) -> Proc | None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            eligible = [
                p for p in self.live_workers()
                if p.kind == "spacy"
                or (p.kind == "stream" and p.camera is not None
                    and self.stream_kills[_processor_of(p.camera)] < MAX_STREAM_WORKER_KILLS)
            ]  # fmt: skip
            preferred = [p for p in eligible if p.kind == "spacy"] if prefer in ("training", "job") else []
            if preferred or eligible:
                return self.rng.choice(preferred or eligible)
            time.sleep(0.5)
        return None

    def job_status(self) -> tuple[str, str]:
        assert self.job_id is not None
        props = self.client("comprehend").describe_entities_detection_job(JobId=self.job_id)[
            "EntitiesDetectionJobProperties"
        ]
        return props["JobStatus"], props.get("Message") or ""

    # --- the run ------------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.args
        stop_writer = threading.Event()
        writer = threading.Thread(target=self.writer, args=(stop_writer,), name="soak-writer", daemon=True)
        writer.start()
        plan: list[str] = []
        while len(plan) < a.kills:  # every kind early on, in a seeded order
            plan += self.rng.sample(KIND_PLAN, len(KIND_PLAN))
        plan = plan[: a.kills]
        try:
            for number, kind in enumerate(plan, 1):
                aim = self.aim.get(number)
                if aim is not None and not self.wait_for(aim, a.recover_deadline):
                    aim = None
                if aim is None:
                    time.sleep(self.rng.uniform(a.min_gap, a.max_gap))
                self.processor_statuses()
                record = self.kill(number, kind, aim)
                record.note = f"during {aim}" if aim else ""
                self.kills.append(record)
                self.after_kill(number)
                if self.rng.random() < 0.6 or number == len(plan):
                    record.recovered_s = self.wait_recovered(record.at, a.recover_deadline)
                    got = "never" if record.recovered_s is None else f"{record.recovered_s:.1f} s"
                    log(f"  processors back in their desired states with fresh records: {got}")
                    if record.recovered_s is None:
                        record.note = (record.note + "; " if record.note else "") + "did not recover"
                    self.check_resources(f"after kill {number}")
                if time.monotonic() - self.began > a.max_minutes * 60:
                    self.check_now(
                        "time bound", False, f"stopped after kill {number}: over {a.max_minutes} min"
                    )
                    break
        finally:
            stop_writer.set()
            writer.join(timeout=30)

    def after_kill(self, number: int) -> None:
        """The scripted desired-state changes, between kills."""
        rek = self.client("rekognition")
        try:
            if number in (2, 5):
                self.create_recognizer()
            if number == 3:
                rek.stop_stream_processor(Name="p1")
                self.desired["p1"] = "STOPPED"
                log("p1: StopStreamProcessor acknowledged")
            if number == 5 and self.wait_status("p1", "STOPPED", 30):
                rek.start_stream_processor(Name="p1")
                self.desired["p1"] = "RUNNING"
                log("p1: StartStreamProcessor acknowledged")
            if number >= 4 and self.job_id is None:
                self.start_job()
        except Exception as exc:  # the server may still be starting: try at the next round
            log(f"  (scripted step after kill {number} not done now: {type(exc).__name__}: {exc})")

    def wait_for(self, aim: str, timeout: float) -> bool:
        """Wait until a recognizer is TRAINING (``aim`` "training") or the job IN_PROGRESS ("job"), then
        a random 0.3-4 s (0.2-1.5 s) more: the kill lands inside that work, somewhere."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if aim == "training":
                    statuses = {self.recognizer_status(r)[0] for r in self.recognizers}
                    busy, pending = "TRAINING" in statuses, "SUBMITTED" in statuses
                else:
                    status = self.job_status()[0] if self.job_id is not None else "COMPLETED"
                    busy, pending = status == "IN_PROGRESS", status == "SUBMITTED"
                if busy:  # a job is quicker than a training: land early in it
                    time.sleep(
                        self.rng.uniform(0.3, 4.0) if aim == "training" else self.rng.uniform(0.2, 1.5)
                    )
                    return True
                if not pending:
                    return False  # it already finished: an ordinary random moment instead
            except Exception:  # the server may still be starting
                pass
            time.sleep(0.2)
        return False

    def wait_status(self, name: str, wanted: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.processor_statuses()[name] == wanted:
                    return True
            except Exception:
                pass
            time.sleep(0.3)
        return False

    def check_resources(self, when: str) -> None:
        """Every acknowledged resource is still there (recorded as one check per kind at the end)."""
        missing = self.missing_resources()
        self.resource_checks.append((when, missing))
        if missing:
            log(f"  MISSING after {when}: {missing}")

    def missing_resources(self) -> list[str]:
        rek, comprehend = self.client("rekognition"), self.client("comprehend")
        missing: list[str] = []
        collections = set(_paged(rek.list_collections, "CollectionIds"))
        missing += [f"collection {c}" for c in sorted(self.acked.collections - collections)]
        faces = {f["FaceId"] for f in _paged(lambda **kw: rek.list_faces(CollectionId="soak", **kw), "Faces")}
        missing += [f"face {f}" for f in sorted(set(self.acked.faces) - faces)]
        for name in PROCESSORS:
            tags = rek.list_tags_for_resource(ResourceArn=self.arns[name])["Tags"]
            lost = {k: v for k, v in self.acked.tags[name].items() if tags.get(k) != v}
            missing += [f"tag {k} of {name}" for k in sorted(lost)]
            try:
                rek.describe_stream_processor(Name=name)
            except Exception as exc:
                missing.append(f"processor {name} ({type(exc).__name__})")
        for r in self.recognizers:
            try:
                comprehend.describe_entity_recognizer(EntityRecognizerArn=r.arn)
            except Exception as exc:
                missing.append(f"recognizer {r.name} ({type(exc).__name__})")
        if self.job_id is not None:
            try:
                self.job_status()
            except Exception as exc:
                missing.append(f"job {self.job_id} ({type(exc).__name__})")
        return missing

    # --- the end ------------------------------------------------------------------------------------
    def finish(self) -> None:
        a = self.args
        log(f"settling (up to {a.settle:.0f} s): trainings, the job, processors ...")
        end = time.monotonic() + a.settle
        last_kill = self.kills[-1].at if self.kills else time.time()
        rec: dict[str, tuple[str, str]] = {r.name: ("?", "") for r in self.recognizers}
        job = ("?", "")
        while True:
            try:
                if self.job_id is None and time.monotonic() < end:
                    self.start_job()
                rec = {r.name: self.recognizer_status(r) for r in self.recognizers}
                job = self.job_status() if self.job_id else ("", "")
                recovered = self.wait_recovered(last_kill, 0.1) is not None
                done = all(s in RECOGNIZER_FINAL for s, _ in rec.values()) and (
                    self.job_id is not None and job[0] in JOB_FINAL
                )
                if (done and recovered) or time.monotonic() > end:
                    break
            except Exception as exc:
                log(f"  ({type(exc).__name__}: {exc})")
            time.sleep(1.0)
        settle_s = a.settle - max(0.0, end - time.monotonic())
        log(f"settled after {settle_s:.0f} s")

        # Recognizers: TRAINED, or IN_ERROR after the soak interrupted them MAX_ATTEMPTS times.
        for r in self.recognizers:
            r.final, r.message = rec[r.name]
            justified = (
                r.final == "IN_ERROR" and "interrupted" in r.message
                and r.interruptions >= INTERRUPTIONS_BEFORE_IN_ERROR
            )  # fmt: skip
            ok = r.final in TRAINED or justified
            self.check_now(
                f"recognizer {r.name} ends trained", ok,
                f"{r.final}{' (' + r.message + ')' if r.message else ''}; interrupted by up to "
                f"{r.interruptions} kill(s)",
            )  # fmt: skip
        # The job: COMPLETED with one result line per document (or FAILED after 3 interruptions).
        if self.job_id is None:
            self.check_now("detection job completes", False, "never started: no recognizer was TRAINED")
        else:
            status, message = job
            lines, where = self.job_output_lines()
            justified = (
                status == "FAILED"
                and "interrupted" in message
                and (self.job_interruptions >= INTERRUPTIONS_BEFORE_IN_ERROR)
            )
            ok = (status == "COMPLETED" and lines == self.job_docs) or justified
            self.check_now(
                "detection job completes", ok,
                f"{status}{' (' + message + ')' if message else ''}; {lines} result lines for "
                f"{self.job_docs} documents ({where}); interrupted by up to {self.job_interruptions} kill(s)",
            )  # fmt: skip

        # Processors: in the state last asked for; RUNNING ones with records after the last kill.
        statuses = self.processor_statuses()
        for name in PROCESSORS:
            out = self.outputs[name]
            with contextlib.suppress(Exception):
                out.read()
            fresh = out.last_arrival > last_kill
            ok = statuses[name] == self.desired[name] and (self.desired[name] != "RUNNING" or fresh)
            self.check_now(
                f"processor {name} in its desired state", ok,
                f"{statuses[name]} (asked: {self.desired[name]}); {out.count} records, {out.matched} with a "
                f"match; last record {out.last_arrival - last_kill:+.1f} s after the last kill; worker kills "
                f"{self.stream_kills[name]}",
            )  # fmt: skip
        waited = [k for k in self.kills if k.recovered_s is not None or "did not recover" in k.note]
        failed = [k.number for k in waited if k.recovered_s is None]
        self.check_now(
            "processors came back after kills", bool(waited) and not failed,
            f"waited after kills {[k.number for k in waited]}: "
            + (f"not recovered after {failed}" if failed else
               "max " + f"{max(k.recovered_s or 0 for k in waited):.1f} s to RUNNING with fresh records"),
        )  # fmt: skip

        # Nothing lost.
        final_missing = self.missing_resources()
        during = [(w, m) for w, m in self.resource_checks if m]
        unknown = (
            f"; outcome unknown (cut by a kill): {dict(self.acked.unknown)}" if self.acked.unknown else ""
        )
        self.check_now(
            "acknowledged resources all exist", not final_missing and not during,
            f"{len(self.acked.collections)} collections, {len(self.acked.faces)} faces, "
            f"{sum(len(t) for t in self.acked.tags.values())} tags, {len(PROCESSORS)} processors, "
            f"{len(self.recognizers)} recognizers, {1 if self.job_id else 0} job; checked after "
            f"{len(self.resource_checks)} kills and at the end"
            + (f"; MISSING at the end: {final_missing[:5]}" if final_missing else "")
            + (f"; MISSING during: {during[:3]}" if during else "")
            + unknown,
        )  # fmt: skip
        self.check_now(
            "nothing stuck in a transitional state", not self.stuck and all(
                s not in PROCESSOR_TRANSITIONAL for s in statuses.values()
            ) and all(r.final in RECOGNIZER_FINAL for r in self.recognizers),
            "; ".join(self.stuck) or f"none beyond {a.stuck_deadline:.0f} s; final: "
            + ", ".join(f"{n} {s}" for n, s in statuses.items())
            + ", " + ", ".join(f"{r.name} {r.final}" for r in self.recognizers),
        )  # fmt: skip

        # Workers of the live server: exactly one per RUNNING processor, nothing else.
        self.check_wanted_workers(statuses)

        # Stop everything through the API, then a clean shutdown: no marked process may remain.
        rek = self.client("rekognition")
        for name in PROCESSORS:
            if statuses[name] == "RUNNING":
                rek.stop_stream_processor(Name=name)
        stopped = all(self.wait_status(n, "STOPPED", 30) for n in PROCESSORS)
        self.check_now("processors stop after the soak", stopped,
                       ", ".join(f"{n} {s}" for n, s in self.processor_statuses().items()))  # fmt: skip
        assert self.server is not None
        self.server.proc.send_signal(signal.SIGTERM)
        try:
            self.server.proc.wait(timeout=30)
            clean = f"server exited with {self.server.proc.returncode}"
        except subprocess.TimeoutExpired:
            clean = "server did not exit within 30 s of SIGTERM (killed)"
            self.server.proc.kill()
            self.server.proc.wait()
        left: list[Proc] = []
        end = time.monotonic() + 10
        while time.monotonic() < end:
            left = list(self.monitor.sample().values())
            if not left:
                break
            time.sleep(0.25)
        self.monitor.stop()
        self.check_now(
            "no process left after a clean shutdown", not left and "exited with 0" in clean,
            f"{clean}; " + (f"left: {[(p.pid, p.role, p.kind) for p in left]}" if left else "none left"),
        )  # fmt: skip
        for p in left:  # leave nothing behind on this machine
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGKILL)
        self.check_now(
            "no orphan workers", not self.monitor.violations,
            "; ".join(self.monitor.violations[:5])
            or f"longest a worker outlived its server: {self.monitor.max_orphan_s():.1f} s "
            f"(deadline {a.orphan_deadline:.0f} s); {self.monitor.samples} samples",
        )  # fmt: skip

        # Database integrity.
        self.check_integrity("at the end")
        if self.sqlite_path is not None:
            self.check_now(
                "SQLite PRAGMA integrity_check", not self.integrity_failures and self.integrity_runs > 0,
                "; ".join(self.integrity_failures[:3]) or f"ok ({self.integrity_runs} runs)",
            )  # fmt: skip
        else:
            ok, detail = pg_integrity(self.database_url)
            self.check_now("PostgreSQL amcheck (every B-tree index)", ok, detail)
        ok, detail = face_counts(self.database_url)
        self.check_now("collections' face_count match their rows", ok, detail)

    def check_wanted_workers(self, statuses: dict[str, str]) -> None:
        """At the end, with everything settled: the live server's workers are one per RUNNING processor."""
        deadline = time.monotonic() + self.args.orphan_deadline
        while True:
            workers = self.live_workers()
            cameras = Counter(p.camera for p in workers if p.kind == "stream")
            wanted = Counter(PROCESSORS[n] for n, s in statuses.items() if s == "RUNNING")
            pullers = [p for p in workers if p.kind == "pull"]
            others = [p for p in workers if p.kind not in ("stream", "pull")]
            ok = cameras == wanted and not others and len(pullers) == len(CAMERAS)
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.check_now(
            "live server's workers are the wanted ones", ok,
            f"stream workers per camera {dict(cameras)} (wanted {dict(wanted)}); {len(pullers)} pullers "
            f"(one per camera); other workers {[(p.pid, p.kind) for p in others]}",
        )  # fmt: skip

    def job_output_lines(self) -> tuple[int, str]:
        root = self.workdir / "mlharbor-data" / "s3" / BUCKET / "job-output"
        archives = sorted(root.glob("**/output.tar.gz"))
        if not archives:
            return 0, "no output.tar.gz"
        with tarfile.open(archives[-1]) as tar:
            member = tar.extractfile("output")
            data = member.read() if member is not None else b""
        keys = set()
        for line in io.BytesIO(data).read().splitlines():
            record = json.loads(line)
            keys.add((record.get("File"), record.get("Line")))
        return len(keys), archives[-1].relative_to(root).as_posix()

    def cleanup(self) -> None:
        if self.server is not None:
            harness.stop_process(self.server.proc)
        for p in self.table.scan().values() if self.table is not None else []:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGKILL)
        if self.moto is not None:
            harness.stop_process(self.moto)
        if self.pg_name is not None and not self.args.keep:
            drop_pg_database(self.args.pg_admin_url, self.pg_name)


def _processor_of(camera: str) -> str:
    return next(n for n, c in PROCESSORS.items() if c == camera)


def _paged(call: Callable[..., dict[str, Any]], key: str) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        response = call(**({"NextToken": token} if token else {}), MaxResults=1000)
        items += response[key]
        token = response.get("NextToken")
        if not token:
            return items


def small_portrait() -> bytes:
    from PIL import Image

    image = Image.open(PORTRAIT).convert("RGB")
    image.thumbnail((320, 320))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------
# Databases
# ------------------------------------------------------------------------------------------------


def create_pg_database(admin_url: str, soak: Soak) -> str:
    import psycopg

    name = f"mlharbor_soak_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    soak.pg_name = name
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_integrity(database_url: str) -> tuple[bool, str]:
    """amcheck's bt_index_parent_check (heap all indexed) on every B-tree index of the public schema."""
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            indexes = conn.execute(
                "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = c.relam "
                "WHERE n.nspname = 'public' AND am.amname = 'btree'"
            ).fetchall()
            for (index,) in indexes:
                conn.execute("SELECT bt_index_parent_check(%s::regclass, true)", (index,))
            tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
            rows = sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for (t,) in tables)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"{len(indexes)} indexes ok; {len(tables)} tables, {rows} rows readable"


def face_counts(database_url: str) -> tuple[bool, str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.arn, c.face_count, "
                    "(SELECT count(*) FROM faces f WHERE f.collection_arn = c.arn) FROM face_collections c"
                )
            ).all()
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        engine.dispose()
    wrong = [
        f"{arn.rsplit('/', 1)[-1]}: {count} recorded, {real} rows"
        for arn, count, real in rows
        if count != real
    ]
    return not wrong, "; ".join(wrong[:5]) or f"{len(rows)} collections consistent"


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--min-gap", type=float, default=4.0, help="seconds between kills, at least")
    parser.add_argument("--max-gap", type=float, default=14.0, help="seconds between kills, at most")
    parser.add_argument("--recover-deadline", type=float, default=90.0)
    parser.add_argument("--stuck-deadline", type=float, default=90.0)
    parser.add_argument("--orphan-deadline", type=float, default=15.0)
    parser.add_argument("--settle", type=float, default=150.0, help="seconds for everything to finish")
    parser.add_argument("--train-docs", type=int, default=150, help="documents per recognizer")
    parser.add_argument("--job-docs", type=int, default=6000, help="documents of the detection job")
    parser.add_argument("--max-minutes", type=float, default=8.0, help="stop killing after this long")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (and the database)")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 30)
    if args.kills < 1 or args.min_gap < 0 or args.max_gap < args.min_gap:
        parser.error("--kills must be >= 1 and 0 <= --min-gap <= --max-gap")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mlharbor-soak-"))
    log(f"kill soak: {args.kills} kills, seed {args.seed}, database {args.database}, work folder {workdir}")
    soak = Soak(args, workdir)
    began = time.monotonic()
    try:
        soak.setup()
        soak.run()
        soak.finish()
    except Exception as exc:  # the soak itself could not go on: that is a failure too
        import traceback

        traceback.print_exc()
        soak.check_now("soak ran to the end", False, f"{type(exc).__name__}: {exc}")
    finally:
        soak.cleanup()
    elapsed = time.monotonic() - began

    print("\n=== Kills ===")
    harness.print_table(
        ["#", "kind", "victims", "restart s", "recovered s", "note"],
        [[str(k.number), k.kind, "; ".join(k.victims), harness.fmt(k.restart_s, ".1f"),
          harness.fmt(k.recovered_s, ".1f") if k.recovered_s is not None else "-", k.note]
         for k in soak.kills] or [["-", "-", "-", "-", "-", "-"]],
        right={0, 3, 4},
    )  # fmt: skip
    soak.check_now("kills performed", len(soak.kills) == args.kills, f"{len(soak.kills)} of {args.kills}")
    print("\n=== Checks ===")
    harness.print_table(
        ["check", "result", "detail"],
        [[c.name, "PASS" if c.ok else "FAIL", c.detail] for c in soak.checks],
        set(),
    )
    errors = []
    log_path = workdir / "mlharbor.log"
    if log_path.exists():
        text = log_path.read_text(errors="replace")
        errors = [line for line in text.splitlines() if re.search(r"\bERROR\b|Traceback", line)]
    print(
        f"\nserver log: {len(errors)} ERROR/Traceback line(s) over all incarnations (for reading, not judged)"
    )
    for line in errors[-5:]:
        print(f"  {line[:200]}")
    failed = [c.name for c in soak.checks if not c.ok]
    print(
        f"\n{'FAIL' if failed else 'PASS'}: {len(soak.checks) - len(failed)}/{len(soak.checks)} checks "
        f"passed in {elapsed:.0f} s (seed {args.seed}, database {args.database})"
    )
    if args.keep:
        print(f"files kept in {workdir}" + (f"; database {soak.pg_name}" if soak.pg_name else ""))
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
