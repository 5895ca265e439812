#!/usr/bin/env python3
"""Inference throughput: DetectEntities on an endpoint and an entities detection job vs raw spaCy.

One run, against one freshly started MLHarbor server (``python -m mlharbor serve``, throttle lifted and
``MLHARBOR_INFERENCE_UNIT_LIMITS=false``, so AWS's 100 characters/s per inference unit does not apply):

1. Train: a generated corpus (``make_corpus``, PERSON/PRODUCT/CITY/COMPANY, ``--train-docs`` documents)
   goes into the server's local object store as ``tests.services.comprehend.corpus.upload`` writes it
   (that helper itself refuses COMPANY's multi-line documents, so their newlines become spaces here);
   CreateEntityRecognizer through boto3, DescribeEntityRecognizer until TRAINED. The model artifact is
   found under ``<data_dir>/s3/``.
2. Texts: ~1 KB documents made of whole generated sentences (``make_corpus(..., value_split="test")``,
   entity values never seen in training) joined with spaces up to 1,000 characters, so every text ends
   at a sentence end. ``--texts`` distinct ones for DetectEntities, ``--batch-docs`` more for the job.
3. DetectEntities: CreateEndpoint with ``DesiredInferenceUnits = --units`` (the server runs
   ``min(units, cpu count)`` serving processes), wait IN_SERVICE, then for each ``--clients`` level a
   warmup and a measured window (``--seconds``). The load generator signs every text's request once per
   phase with botocore's SigV4 and replays the raw bytes over persistent HTTP/1.1 connections with
   asyncio streams (uvloop when installed), one request in flight per connection, cycling through the
   texts. Only 200 responses count; everything else is reported. Characters are ``len(text)`` (code
   points, what Comprehend meters). Client and server CPU (API process and worker processes apart)
   are measured over the window from /proc, and so is everything else the machine ran meanwhile
   ("other processes": /proc/stat busy time minus ours), which says whether a number was disturbed.
4. The physical baseline, in this process while the server is idle: the same artifact loaded with
   ``training.load_model(LocalBlobStore(data_dir / "s3"), uri)``; ``nlp(text)`` one document at a time
   over the DetectEntities texts (latency p50/p99, characters/s), ``nlp.pipe`` over them, and
   ``nlp.pipe(batch_docs, batch_size=B)`` over the job's documents (docs/s), B the fastest of a sweep
   (32..1000) on the first 1,000 of them unless ``--pipe-batch-size`` is given. Also
   ``NerModel.predict`` (the scored path the server runs) as a diagnostic.
5. Batch: StartEntitiesDetectionJob over one ONE_DOC_PER_LINE file of ``--batch-docs`` lines under an
   input prefix, DescribeEntitiesDetectionJob polled (250 ms) until COMPLETED; docs/s from SubmitTime to
   EndTime as Describe reports them, and from the Start call to the first Describe showing COMPLETED as
   the client sees it. The output archive must hold one result line per input line.

Targets: DetectEntities >= 50,000 characters/s per serving core with p99 <= 30 ms for 1 KB texts (one
client: p99 at higher concurrency includes queueing behind the other clients' documents); the batch
job >= 0.8x raw ``nlp.pipe`` docs/s. Ratios MLHarbor / raw spaCy are printed for both.

Usage::

    .venv/bin/python bench/inference.py                 # 1,000 training docs, 20 s windows, 5,000 job docs
    .venv/bin/python bench/inference.py --quick         # ~2 minutes: smaller corpus, 5 s windows, 500 docs
    .venv/bin/python bench/inference.py --units 2 --seconds 30 --batch-docs 10000 --json out.json --keep
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import sys
import tarfile
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import spacy
from botocore.exceptions import ClientError

import harness  # bench/harness.py: server start/stop shared by the benchmarks
from api_throughput import ApiCall, Target, _loop_factory, _read_response, presign
from mlharbor.engines.annotated import Example

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.* (the corpus generators) live at the repository root

REGION = "us-east-1"
ACCOUNT = "000000000000"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/x"
BUCKET = "bench"
TYPES = ("PERSON", "PRODUCT", "CITY", "COMPANY")
TEXT_CHARS = 1000
DETECT_TARGET = "Comprehend_20171127.DetectEntities"
SAMPLE_BODY_CHARS = 300

# Targets
# nlp.pipe batch sizes tried for the batch baseline (spaCy's default is nlp.batch_size = 1000)
PIPE_BATCH_SIZES = (32, 64, 128, 256, 1000)
# The batch size the job's worker uses (documents per predict_iter call), for a diagnostic only.
JOB_BATCH_DOCUMENTS = 256

CHARS_PER_CORE_TARGET = 50_000.0
P99_TARGET_MS = 30.0
BATCH_RATIO_TARGET = 0.8


# ------------------------------------------------------------------------------------------------
# Texts
# ------------------------------------------------------------------------------------------------


def make_texts(count: int, seed: int, target_chars: int = TEXT_CHARS) -> list[str]:
    """``count`` distinct documents of whole generated sentences, each at most ``target_chars`` long."""
    from tests.engines.ner_data import make_corpus

    texts: list[str] = []
    current: list[str] = []
    size = 0
    chunk = 0
    while len(texts) < count:
        # Sentences from the "test" value pool: the recognizer has never seen these entity values.
        sentences = make_corpus(2000, seed=seed * 1000 + chunk, types=TYPES, value_split="test")
        chunk += 1
        for example in sentences:
            sentence = example.text.replace("\n", " ")
            add = len(sentence) + (1 if current else 0)
            if current and size + add > target_chars:
                texts.append(" ".join(current))
                current, size, add = [], 0, len(sentence)
                if len(texts) == count:
                    break
            current.append(sentence)
            size += add
    return texts


# ------------------------------------------------------------------------------------------------
# Server, API helpers, process CPU
# ------------------------------------------------------------------------------------------------


Server = harness.Server


def start_server(workdir: Path) -> Server:
    """A server with AWS's per-inference-unit throughput cap switched off."""
    return harness.start_server(workdir, env={"MLHARBOR_INFERENCE_UNIT_LIMITS": "false"})


client_for = harness.comprehend_client


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user+system) of one process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and each live descendant, by pid."""
    by_parent: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                by_parent.setdefault(stat[0], []).append(int(entry))
                cpu[int(entry)] = stat[1]
    tree: dict[int, float] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in cpu:
            tree[pid] = cpu[pid]
            stack.extend(by_parent.get(pid, []))
    return tree


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _allowed_cpus(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def worker_pids(server: Server) -> list[int]:
    """The server's worker processes (its descendants, without multiprocessing's resource tracker)."""
    return sorted(
        pid
        for pid in process_tree(server.proc.pid)
        if pid != server.proc.pid and "resource_tracker" not in _cmdline(pid)
    )


@dataclass
class CpuUse:
    """CPU over a window, as a share of one core (100% = one core busy)."""

    wall_s: float
    client_pct: float  # this benchmark process (the load generator, or the Describe poller)
    api_pct: float  # the API process (uvicorn, all its threads)
    workers_pct: float  # all descendant processes (serving workers, job workers)
    busy_workers: int  # descendants that used more than 5% of a core
    other_pct: float  # everything else on the machine (/proc/stat busy time minus the above)
    capacity_pct: float  # 100% x CPUs

    @property
    def server_pct(self) -> float:
        return self.api_pct + self.workers_pct


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    busy = values[0] + values[1] + values[2] + sum(values[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Per-process CPU of the server tree over a window. ``sample()`` while it runs keeps the CPU of a
    worker that ends inside the window (it is gone from /proc by the end)."""

    def __init__(self, server: Server) -> None:
        self.root = server.proc.pid
        self.wall0 = time.perf_counter()
        self.client0 = time.process_time()
        self.busy0 = machine_busy_s()
        self.tree0 = process_tree(self.root)
        self.last = dict(self.tree0)

    def sample(self) -> None:
        self.last.update(process_tree(self.root))

    def stop(self) -> CpuUse:
        self.sample()
        wall = max(time.perf_counter() - self.wall0, 1e-9)
        client = time.process_time() - self.client0
        busy = machine_busy_s() - self.busy0
        api = self.last.get(self.root, 0.0) - self.tree0.get(self.root, 0.0)
        deltas = [cpu - self.tree0.get(pid, 0.0) for pid, cpu in self.last.items() if pid != self.root]
        other = max(0.0, busy - client - api - sum(deltas))
        return CpuUse(
            wall,
            100.0 * client / wall,
            100.0 * api / wall,
            100.0 * sum(deltas) / wall,
            sum(1 for d in deltas if d / wall > 0.05),
            100.0 * other / wall,
            100.0 * len(os.sched_getaffinity(0)),
        )


def _s3_path(data_dir: Path, uri: str) -> Path:
    assert uri.startswith("s3://"), uri
    return data_dir / "s3" / uri[len("s3://") :]


def put_object(data_dir: Path, key: str, data: bytes) -> str:
    path = data_dir / "s3" / BUCKET / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"s3://{BUCKET}/{key}"


# ------------------------------------------------------------------------------------------------
# 1. Training
# ------------------------------------------------------------------------------------------------


@dataclass
class Training:
    arn: str
    name: str
    seconds: float
    status: str
    artifact_uri: str | None
    f1: float | None


def upload(data_dir: Path, prefix: str, docs: int, seed: int = 1) -> dict[str, Any]:
    """tests.services.comprehend.corpus.upload, for all four types.

    That helper asserts one-line documents, which holds for its default types only: with COMPANY,
    make_corpus also draws multi-line letters/minutes. Their newlines become spaces here (same length,
    so the offsets hold), as bench/train_recognizer.py does.
    """
    from tests.engines.ner_data import make_corpus
    from tests.services.comprehend.corpus import annotations_csv, put_object

    examples = [
        Example(e.text.replace("\n", " ").replace("\r", " "), e.spans, source=e.source)
        for e in make_corpus(docs, seed=seed, types=TYPES, value_split="train")
    ]
    text = "\n".join(e.text for e in examples).encode() + b"\n"
    documents = put_object(data_dir, BUCKET, f"{prefix}/documents.txt", text)
    annotations = annotations_csv(examples, "documents.txt")
    return {
        "EntityTypes": [{"Type": t} for t in TYPES],
        "Documents": {"S3Uri": documents},
        "Annotations": {"S3Uri": put_object(data_dir, BUCKET, f"{prefix}/annotations.csv", annotations)},
    }


def train(client: Any, server: Server, docs: int, timeout: float) -> Training:
    config = upload(server.data_dir, "train", docs)
    name = f"bench-inference-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    arn = client.create_entity_recognizer(
        RecognizerName=name, LanguageCode="en", DataAccessRoleArn=ROLE, InputDataConfig=config
    )["EntityRecognizerArn"]
    while True:
        props = client.describe_entity_recognizer(EntityRecognizerArn=arn)["EntityRecognizerProperties"]
        if props["Status"] in ("TRAINED", "TRAINED_WITH_WARNING", "IN_ERROR", "STOPPED"):
            break
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"{arn} not trained after {timeout:.0f} s (status {props['Status']})")
        time.sleep(0.25)
    seconds = time.perf_counter() - began
    if props["Status"] not in ("TRAINED", "TRAINED_WITH_WARNING"):
        raise RuntimeError(f"training ended {props['Status']}: {props.get('Message')}")
    f1 = props.get("RecognizerMetadata", {}).get("EvaluationMetrics", {}).get("F1Score")
    return Training(arn, name, seconds, props["Status"], find_artifact(server.data_dir, name), f1)


def find_artifact(data_dir: Path, name: str) -> str | None:
    models = "mlharbor-models"
    expected = f"{models}/comprehend/{ACCOUNT}/{REGION}/entity-recognizer/{name}/-/attempt-0/model.tar.gz"
    if (data_dir / "s3" / expected).is_file():
        return f"s3://{expected}"
    found = sorted((data_dir / "s3" / models).glob(f"**/{name}/**/model.tar.gz"))
    found = found or sorted((data_dir / "s3" / models).glob("**/model.tar.gz"))
    if not found:
        return None
    return "s3://" + found[-1].relative_to(data_dir / "s3").as_posix()


# ------------------------------------------------------------------------------------------------
# 2./3. Endpoint and DetectEntities load
# ------------------------------------------------------------------------------------------------


def create_endpoint(client: Any, model_arn: str, units: int, timeout: float) -> tuple[str, float]:
    began = time.perf_counter()
    arn = client.create_endpoint(
        EndpointName=f"bench-inference-{uuid.uuid4().hex[:8]}",
        ModelArn=model_arn,
        DesiredInferenceUnits=units,
    )["EndpointArn"]
    while True:
        props = client.describe_endpoint(EndpointArn=arn)["EndpointProperties"]
        if props["Status"] == "IN_SERVICE":
            return arn, time.perf_counter() - began
        if props["Status"] not in ("CREATING", "UPDATING") or time.perf_counter() - began > timeout:
            raise RuntimeError(f"endpoint {props['Status']}: {props.get('Message')}")
        time.sleep(0.1)


def delete_endpoint(client: Any, arn: str, timeout: float = 30.0) -> float | None:
    began = time.perf_counter()
    client.delete_endpoint(EndpointArn=arn)
    while time.perf_counter() - began < timeout:
        try:
            client.describe_endpoint(EndpointArn=arn)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException":
                return time.perf_counter() - began
            raise
        time.sleep(0.1)
    return None


StatusKey = tuple[int, str | None]


@dataclass
class Phase:
    clients: int
    warmup_s: float
    window_s: float
    ok: int = 0
    chars: int = 0
    entities: int = 0
    latencies: list[float] = field(default_factory=list)  # 200 responses only, seconds
    statuses: Counter[StatusKey] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[StatusKey, str] = field(default_factory=dict)
    cpu: CpuUse | None = None

    @property
    def chars_per_s(self) -> float:
        return self.chars / self.window_s

    @property
    def docs_per_s(self) -> float:
        return self.ok / self.window_s

    def pct_ms(self, q: float) -> float | None:
        return percentile(self.latencies, q)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted seconds, in milliseconds."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank] * 1000.0


def _error_type(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return "non-JSON body"
    etype = doc.get("__type") if isinstance(doc, dict) else None
    return etype.rsplit("#", 1)[-1] if isinstance(etype, str) else "?"


async def _client(
    host: str,
    port: int,
    payloads: list[tuple[bytes, int]],
    first: int,
    t_measure: float,
    t_end: float,
    phase: Phase,
) -> None:
    perf = time.perf_counter
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    index = first
    try:
        while perf() < t_end:
            payload, chars = payloads[index % len(payloads)]
            index += 1
            start = perf()
            if writer is None or reader is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError as exc:
                    phase.errors[f"connect: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                    continue
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                writer.write(payload)
                status, _head, _lower, body, keep = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                if perf() >= t_measure:
                    phase.errors[type(exc).__name__] += 1
                writer.close()
                reader = writer = None
                continue
            end = perf()
            if t_measure <= end <= t_end:
                key: StatusKey = (status, None if status == 200 else _error_type(body))
                phase.statuses[key] += 1
                if status == 200:
                    phase.ok += 1
                    phase.chars += chars
                    phase.entities += body.count(b'"BeginOffset"')
                    phase.latencies.append(end - start)
                elif key not in phase.samples:
                    phase.samples[key] = body[:SAMPLE_BODY_CHARS].decode(errors="replace")
            if not keep:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _run_phase(
    server: Server, endpoint_arn: str, texts: list[str], clients: int, warmup: float, seconds: float
) -> Phase:
    target = Target("mlharbor", server.url, server.proc)
    host, port = target.host_port
    # Signed right before the phase (a SigV4 signature is good for 5 minutes; the bodies never change).
    payloads = [
        (
            presign(
                target,
                ApiCall(
                    "DetectEntities",
                    "comprehend",
                    DETECT_TARGET,
                    json.dumps({"Text": text, "EndpointArn": endpoint_arn}).encode(),
                    (200, None),
                ),
            ),
            len(text),
        )
        for text in texts
    ]
    phase = Phase(clients, warmup, seconds)
    now = time.perf_counter()
    t_measure, t_end = now + warmup, now + warmup + seconds
    meter: list[CpuMeter] = []

    async def monitor() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        meter.append(CpuMeter(server))
        while (left := t_end - time.perf_counter()) > 0:
            await asyncio.sleep(min(left, 1.0))
            if time.perf_counter() < t_end:
                meter[0].sample()
        phase.cpu = meter[0].stop()

    tasks = [
        _client(host, port, payloads, i * len(payloads) // clients, t_measure, t_end, phase)
        for i in range(clients)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(monitor(), *tasks), timeout=warmup + seconds + 60.0)
    except TimeoutError:
        phase.errors["phase timed out (server stopped answering)"] += 1
    phase.latencies.sort()
    return phase


def run_phase(
    server: Server, endpoint_arn: str, texts: list[str], clients: int, warmup: float, seconds: float
) -> Phase:
    _, factory = _loop_factory("auto")
    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
        return runner.run(_run_phase(server, endpoint_arn, texts, clients, warmup, seconds))


# ------------------------------------------------------------------------------------------------
# 4. Raw spaCy baseline
# ------------------------------------------------------------------------------------------------


@dataclass
class Baseline:
    load_s: float
    single_docs: int
    single_chars_per_s: float
    single_p50_ms: float
    single_p99_ms: float
    single_entities_per_doc: float
    single_cpu_pct: float  # this process's CPU over the single-document loop (100% = one core)
    predict_chars_per_s: float  # NerModel.predict([text]): the scored path the server runs, per document
    predict_p50_ms: float
    pipe_batch32_chars_per_s: float  # nlp.pipe over the DetectEntities texts, batch 32 (the server's max)
    batch_docs: int = 0
    batch_pipe_batch_size: int = 0
    batch_pipe_docs_per_s: float = 0.0
    batch_pipe_chars_per_s: float = 0.0
    batch_pipe_entities: int = 0
    batch_pipe_cpu_pct: float = 0.0
    # nlp.pipe docs/s by batch size on the first sweep_docs job documents; the best size is the baseline.
    sweep_docs: int = 0
    sweep: dict[int, float] = field(default_factory=dict)
    # NerModel.predict_iter (the scored path the job's worker runs) at the job's batch size, same sample.
    job_path_batch_size: int = 0
    job_path_docs_per_s: float = 0.0
    server_idle_cpu_pct: float = 0.0  # the server's CPU while the baseline ran (should be ~0)
    other_cpu_pct: float = 0.0  # other processes on the machine while the baseline ran


def _single(fn: Any, texts: list[str], min_seconds: float) -> tuple[list[float], int, int, float, float]:
    """Time ``fn(text)`` per text, cycling until ``min_seconds`` and at least one pass."""
    latencies: list[float] = []
    chars = entities = 0
    perf = time.perf_counter
    cpu0, began = time.process_time(), perf()
    i = 0
    while i < len(texts) or perf() - began < min_seconds:
        text = texts[i % len(texts)]
        start = perf()
        result = fn(text)
        latencies.append(perf() - start)
        chars += len(text)
        entities += result
        i += 1
    wall = perf() - began
    latencies.sort()
    return latencies, chars, entities, wall, 100.0 * (time.process_time() - cpu0) / wall


def run_baseline(
    server: Server,
    artifact_uri: str,
    detect_texts: list[str],
    batch_texts: list[str],
    min_seconds: float,
    pipe_batch_sizes: Sequence[int],
    sweep_docs: int,
) -> Baseline:
    from mlharbor.blobs.local import LocalBlobStore
    from mlharbor.services.comprehend.training import load_model

    meter = CpuMeter(server)
    began = time.perf_counter()
    model = load_model(LocalBlobStore(server.data_dir / "s3"), artifact_uri)
    load_s = time.perf_counter() - began
    nlp = model.nlp
    for text in detect_texts[:20]:  # first use allocates buffers
        nlp(text)
        model.predict([text])

    lat, chars, ents, wall, cpu = _single(lambda t: len(nlp(t).ents), detect_texts, min_seconds)
    p_lat, p_chars, _, p_wall, _ = _single(
        lambda t: len(model.predict([t])[0]), detect_texts, max(1.0, min_seconds / 2)
    )
    began = time.perf_counter()
    piped = sum(len(doc.ents) for doc in nlp.pipe(detect_texts, batch_size=32))
    pipe_wall = time.perf_counter() - began
    assert piped >= 0
    base = Baseline(
        load_s=load_s,
        single_docs=len(lat),
        single_chars_per_s=chars / wall,
        single_p50_ms=percentile(lat, 0.5) or 0.0,
        single_p99_ms=percentile(lat, 0.99) or 0.0,
        single_entities_per_doc=ents / len(lat),
        single_cpu_pct=cpu,
        predict_chars_per_s=p_chars / p_wall,
        predict_p50_ms=percentile(p_lat, 0.5) or 0.0,
        pipe_batch32_chars_per_s=sum(map(len, detect_texts)) / pipe_wall,
    )
    if batch_texts:
        pipe_batch_size = pipe_batch_sizes[0]
        if len(pipe_batch_sizes) > 1:
            # nlp.pipe's speed depends on the batch size (and not monotonically): the baseline is the best.
            sample = batch_texts[:sweep_docs]
            base.sweep_docs = len(sample)
            for size in pipe_batch_sizes:
                began = time.perf_counter()
                for _ in nlp.pipe(sample, batch_size=size):
                    pass
                base.sweep[size] = len(sample) / (time.perf_counter() - began)
            pipe_batch_size = max(base.sweep, key=base.sweep.__getitem__)
            base.job_path_batch_size = JOB_BATCH_DOCUMENTS
            began = time.perf_counter()
            for _ in model.predict_iter(sample, batch_size=JOB_BATCH_DOCUMENTS):
                pass
            base.job_path_docs_per_s = len(sample) / (time.perf_counter() - began)
        cpu0, began = time.process_time(), time.perf_counter()
        entities = sum(len(doc.ents) for doc in nlp.pipe(batch_texts, batch_size=pipe_batch_size))
        wall = time.perf_counter() - began
        base.batch_docs = len(batch_texts)
        base.batch_pipe_batch_size = pipe_batch_size
        base.batch_pipe_docs_per_s = len(batch_texts) / wall
        base.batch_pipe_chars_per_s = sum(map(len, batch_texts)) / wall
        base.batch_pipe_entities = entities
        base.batch_pipe_cpu_pct = 100.0 * (time.process_time() - cpu0) / wall
    use = meter.stop()
    base.server_idle_cpu_pct, base.other_cpu_pct = use.server_pct, use.other_pct
    return base


# ------------------------------------------------------------------------------------------------
# 5. Batch job
# ------------------------------------------------------------------------------------------------


@dataclass
class BatchJob:
    docs: int
    job_id: str = ""
    status: str = ""
    message: str | None = None
    server_s: float | None = None  # SubmitTime -> EndTime, as Describe reports them
    client_s: float | None = None  # Start call sent -> first Describe showing a final state
    to_in_progress_s: float | None = None  # Start call sent -> first Describe showing IN_PROGRESS
    start_call_s: float = 0.0
    output_uri: str | None = None
    output_lines: int = 0
    output_distinct_lines: int = 0
    output_entities: int = 0
    output_error_lines: int = 0
    output_files: list[str] = field(default_factory=list)
    cpu: CpuUse | None = None
    error: str | None = None
    worker_s: float | None = None  # the worker's own log line: IN_PROGRESS -> output written

    @property
    def server_docs_per_s(self) -> float | None:
        return self.docs / self.server_s if self.server_s else None

    @property
    def client_docs_per_s(self) -> float | None:
        return self.docs / self.client_s if self.client_s else None


def run_batch_job(
    client: Any, server: Server, recognizer_arn: str, texts: list[str], timeout: float
) -> BatchJob:
    job = BatchJob(len(texts))
    assert all("\n" not in t and "\r" not in t for t in texts)
    input_uri = put_object(server.data_dir, "batch/input/documents.txt", "\n".join(texts).encode() + b"\n")
    input_prefix = input_uri.rsplit("/", 1)[0] + "/"
    output_prefix = f"s3://{BUCKET}/batch/output/"
    meter = CpuMeter(server)
    began = time.perf_counter()
    try:
        started = client.start_entities_detection_job(
            JobName=f"bench-inference-{uuid.uuid4().hex[:8]}",
            EntityRecognizerArn=recognizer_arn,
            InputDataConfig={"S3Uri": input_prefix, "InputFormat": "ONE_DOC_PER_LINE"},
            OutputDataConfig={"S3Uri": output_prefix},
            DataAccessRoleArn=ROLE,
            LanguageCode="en",
        )
    except ClientError as exc:
        job.error = f"StartEntitiesDetectionJob failed: {exc}"
        return job
    job.start_call_s = time.perf_counter() - began
    job.job_id = started["JobId"]
    while True:
        props = client.describe_entities_detection_job(JobId=job.job_id)["EntitiesDetectionJobProperties"]
        now = time.perf_counter() - began
        status = props["JobStatus"]
        if status == "IN_PROGRESS" and job.to_in_progress_s is None:
            job.to_in_progress_s = now
        if status in ("COMPLETED", "FAILED", "STOPPED"):
            break
        if now > timeout:
            job.error = f"job not finished after {timeout:.0f} s (status {status})"
            break
        meter.sample()
        time.sleep(0.25)
    job.client_s = now
    job.cpu = meter.stop()
    job.status, job.message = status, props.get("Message")
    submit, end = props.get("SubmitTime"), props.get("EndTime")
    if submit is not None and end is not None:
        job.server_s = (end - submit).total_seconds()
    job.output_uri = props.get("OutputDataConfig", {}).get("S3Uri")
    if status == "COMPLETED":
        read_output(server.data_dir, job, output_prefix)
    return job


def read_output(data_dir: Path, job: BatchJob, output_prefix: str) -> None:
    """Count the result lines in the job's output archive(s)."""
    archives: list[Path] = []
    if job.output_uri:
        path = _s3_path(data_dir, job.output_uri)
        archives = [path] if path.is_file() else sorted(path.glob("**/*.tar.gz"))
    if not archives:
        archives = sorted(_s3_path(data_dir, output_prefix).glob("**/*.tar.gz"))
    lines: set[tuple[str, int]] = set()
    for archive in archives:
        job.output_files.append(archive.relative_to(data_dir / "s3").as_posix())
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is None:
                    continue
                for raw in io.TextIOWrapper(extracted, encoding="utf-8"):
                    if not raw.strip():
                        continue
                    job.output_lines += 1
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        job.output_error_lines += 1
                        continue
                    if "ErrorCode" in record or "Entities" not in record:
                        job.output_error_lines += 1
                    job.output_entities += len(record.get("Entities") or [])
                    lines.add((str(record.get("File")), int(record.get("Line", -1))))
    job.output_distinct_lines = len(lines)


def worker_seconds(log_path: Path, job_id: str) -> float | None:
    """The job worker's own timing from the server log ("<arn>: N document(s) in X s ..."), if logged."""
    pattern = re.compile(re.escape(job_id) + r": \d+ document\(s\) in ([\d.]+) s")
    for line in log_path.read_text(errors="replace").splitlines():
        match = pattern.search(line)
        if match:
            return float(match.group(1))
    return None


def job_operations_present() -> bool:
    source = ROOT / "src/mlharbor/services/comprehend/job_operations.py"
    return source.is_file() and '"StartEntitiesDetectionJob"' in source.read_text()


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _statuses(phase: Phase) -> str:
    parts = [f"{s}{' ' + e if e else ''}: {n}" for (s, e), n in sorted(phase.statuses.items())]
    parts += [f"ERR {what}: {n}" for what, n in phase.errors.items()]
    return ", ".join(parts) or "(none)"


def report(result: dict[str, Any], phases: list[Phase], base: Baseline | None, job: BatchJob | None) -> None:
    machine, serving = result["machine"], result["serving"]
    cores = serving["cores"]
    print("\n=== DetectEntities (one endpoint, 1 KB texts) ===")
    print(
        f"endpoint: {serving['units']} inference unit(s) -> {cores} serving worker process(es) "
        f"(min(units, {machine['cpu_count']} CPUs)); texts: {result['texts']['count']} distinct, "
        f"{result['texts']['mean_chars']:.0f} chars mean ({result['texts']['min_chars']}-"
        f"{result['texts']['max_chars']}), {result['texts']['mean_utf8_bytes']:.0f} UTF-8 bytes mean"
    )
    rows: list[Sequence[str]] = []
    for p in phases:
        rows.append(
            (f"MLHarbor, {p.clients} client{'s' if p.clients > 1 else ''}", _f(p.chars_per_s),
             _f(p.chars_per_s / cores), _f(p.docs_per_s, 1), _f(p.pct_ms(0.5), 2), _f(p.pct_ms(0.99), 2),
             _f(p.entities / p.ok if p.ok else None, 2), _statuses(p))
        )  # fmt: skip
    if base is not None:
        rows.append(
            ("raw spaCy nlp(text), 1 doc at a time", _f(base.single_chars_per_s), _f(base.single_chars_per_s),
             _f(base.single_chars_per_s / result["texts"]["mean_chars"], 1), _f(base.single_p50_ms, 2),
             _f(base.single_p99_ms, 2), _f(base.single_entities_per_doc, 2), f"{base.single_docs} docs")
        )  # fmt: skip
        rows.append(
            ("raw spaCy nlp.pipe(texts, batch_size=32)", _f(base.pipe_batch32_chars_per_s),
             _f(base.pipe_batch32_chars_per_s), _f(base.pipe_batch32_chars_per_s /
                                                   result["texts"]["mean_chars"], 1), "-", "-", "-", "")
        )  # fmt: skip
    harness.print_table(
        ("run", "chars/s", "chars/s/core", "docs/s", "p50 ms", "p99 ms", "ents/doc", "statuses"),
        rows,
        right={1, 2, 3, 4, 5, 6},
    )
    print(
        "(MLHarbor: 200 responses in the measured window only; latency = request written -> response read "
        "on a persistent connection; raw spaCy: this process, one core, server idle)"
    )
    print("CPU over each measured window (100% = one core):")
    for p in phases:
        if p.cpu is not None:
            print(
                f"  {p.clients:>2} client(s): load generator {p.cpu.client_pct:3.0f}%, server "
                f"{p.cpu.server_pct:3.0f}% = API process {p.cpu.api_pct:3.0f}% + worker processes "
                f"{p.cpu.workers_pct:3.0f}% ({p.cpu.busy_workers} busy); other processes on the machine "
                f"{p.cpu.other_pct:3.0f}% (of {p.cpu.capacity_pct:.0f}%); CPU per document: API "
                f"{_f(10 * p.cpu.api_pct * p.window_s / p.ok if p.ok else None, 2)} ms, workers "
                f"{_f(10 * p.cpu.workers_pct * p.window_s / p.ok if p.ok else None, 2)} ms"
            )
    if base is not None:
        print(
            f"  raw spaCy nlp(text): {base.single_cpu_pct:.0f}% of a core in this process; "
            f"NerModel.predict([text]) (the scored path the server's worker runs): "
            f"{_f(base.predict_chars_per_s)} chars/s, p50 {base.predict_p50_ms:.2f} ms "
            f"({base.predict_chars_per_s / base.single_chars_per_s:.2f}x nlp(text)); model load "
            f"{base.load_s:.2f} s; while the baseline ran: server {base.server_idle_cpu_pct:.0f}%, "
            f"other processes on the machine {base.other_cpu_pct:.0f}%"
        )
        one = next((p for p in phases if p.clients == 1 and p.ok), None)
        if one is not None:
            print(
                f"  1 client: p50 MLHarbor - p50 NerModel.predict = "
                f"{(one.pct_ms(0.5) or 0.0) - base.predict_p50_ms:.2f} ms (HTTP, SigV4 check, API handler, "
                "hop to the worker and back, JSON)"
            )
    print(
        f"machine: {machine['cpu_count']} CPUs (affinity {machine['affinity']}); the API process "
        f"(CPUs {serving['api_cpus']}), the {serving['worker_pids_count']} worker process(es) (CPUs "
        f"{serving['worker_cpus']}) and this load generator all run on the same machine: "
        f"{'they share cores' if serving['shares_cores'] else 'the server has the cores to itself'}"
    )
    for p in phases:
        unexpected = [f"{s} {e}: {body}" for (s, e), body in p.samples.items()]
        if unexpected:
            print(f"  non-200 samples ({p.clients} clients): " + " | ".join(unexpected))

    if job is not None or result.get("batch_skipped"):
        print("\n=== Batch: StartEntitiesDetectionJob (ONE_DOC_PER_LINE) ===")
    if job is None:
        if result.get("batch_skipped"):
            print(f"not run: {result['batch_skipped']}")
    else:
        if job.error:
            print(f"ERROR: {job.error}")
        print(
            f"job {job.job_id or '-'}: {job.status or '-'}{' (' + job.message + ')' if job.message else ''}; "
            f"{job.docs} docs; Start call {job.start_call_s * 1000:.0f} ms; Start -> IN_PROGRESS seen "
            f"{_f(job.to_in_progress_s, 2)} s"
        )
        rows = [
            ("MLHarbor job, SubmitTime -> EndTime (Describe)", _f(job.server_s, 2),
             _f(job.server_docs_per_s)),
            ("MLHarbor job, Start -> COMPLETED seen (client, 250 ms polls)", _f(job.client_s, 2),
             _f(job.client_docs_per_s)),
        ]  # fmt: skip
        if job.worker_s is not None:
            rows.append(
                ("  of which the worker, IN_PROGRESS -> output written (its log)", _f(job.worker_s, 2),
                 _f(job.docs / job.worker_s if job.worker_s else None))
            )  # fmt: skip
        if base is not None and base.batch_docs:
            rows.append(
                (f"raw spaCy nlp.pipe(docs, batch_size={base.batch_pipe_batch_size}), one core",
                 _f(base.batch_docs / base.batch_pipe_docs_per_s, 2), _f(base.batch_pipe_docs_per_s))
            )  # fmt: skip
        harness.print_table(("run", "seconds", "docs/s"), rows, right={1, 2})
        if base is not None and base.sweep:
            sweep = ", ".join(f"{size}: {rate:,.1f}" for size, rate in base.sweep.items())
            print(
                f"raw nlp.pipe docs/s by batch size on the first {base.sweep_docs} docs: {sweep}; "
                f"NerModel.predict_iter(batch_size={base.job_path_batch_size}) (the scored path, the job "
                f"worker's batch size): {base.job_path_docs_per_s:,.1f}"
            )
        lines_ok = job.output_lines == job.docs and job.output_distinct_lines == job.docs
        print(
            f"output: {', '.join(job.output_files) or '(no archive found)'}: "
            f"{job.output_lines} result lines, "
            f"{job.output_distinct_lines} distinct (File, Line), {job.output_error_lines} error lines, "
            f"{job.output_entities} entities (raw spaCy: "
            f"{base.batch_pipe_entities if base is not None else '-'}) -> "
            f"{'OK' if lines_ok else f'MISMATCH (expected {job.docs})'}"
        )
        if job.cpu is not None:
            print(
                f"CPU over the job (Start -> COMPLETED seen): server {job.cpu.server_pct:.0f}% = API process "
                f"{job.cpu.api_pct:.0f}% + worker processes {job.cpu.workers_pct:.0f}% "
                f"({job.cpu.busy_workers} busy); this client {job.cpu.client_pct:.0f}%; other processes on "
                f"the machine {job.cpu.other_pct:.0f}% (of {job.cpu.capacity_pct:.0f}%)"
            )

    print(
        f"\nmachine load average (1 min): {machine['loadavg_start']:.2f} at the start, "
        f"{machine['loadavg_end']:.2f} at the end (this benchmark alone keeps it near 1)"
    )
    print("\n=== Targets ===")
    one = next((p for p in phases if p.clients == 1), None)
    best = max(phases, key=lambda p: p.chars_per_s, default=None)
    per_core = best.chars_per_s / cores if best is not None else None
    print(
        f"DetectEntities throughput: {_f(per_core)} chars/s per serving core "
        f"({best.clients if best else '-'} clients, {cores} core(s)) "
        f"(target >= {CHARS_PER_CORE_TARGET:,.0f}: "
        f"{harness.verdict(per_core, CHARS_PER_CORE_TARGET, problem=_phase_problem(best))})"
    )
    p99 = one.pct_ms(0.99) if one is not None else None
    print(
        f"DetectEntities p99, 1 client: {_f(p99, 2)} ms (target <= {P99_TARGET_MS:.0f} ms: "
        f"{harness.verdict(p99, P99_TARGET_MS, at_most=True, problem=_phase_problem(one))})"
    )
    for p in phases:
        if p is not one:
            q = p.pct_ms(0.99)
            print(
                f"  (p99 with {p.clients} clients: {_f(q, 2)} ms: "
                f"{harness.verdict(q, P99_TARGET_MS, at_most=True, problem=_phase_problem(p))}; includes "
                f"queueing behind the other clients' documents on {cores} core(s))"
            )
    if base is not None:
        single = base.single_chars_per_s
        compared = [("1 client", one)] if one is not None else []
        if best is not None and best is not one:
            compared.append((f"{best.clients} clients", best))
        for label, phase in compared:
            r = harness.ratio(
                phase.chars_per_s / cores, single, numerator_name="MLHarbor's chars/s",
                denominator_name="raw nlp(text)'s chars/s", failed=_phase_problem(phase),
            )  # fmt: skip
            line = (
                f"ratio DetectEntities {label} / raw nlp(text): chars/s per core "
                f"{phase.chars_per_s / cores:,.0f} / {single:,.0f} = {harness.fmt(r, '.3f')}"
            )
            if r.problem:
                line += f" ({r.problem})"
            if phase is one:
                line += f"; p50 latency {_f(one.pct_ms(0.5), 2)} / {base.single_p50_ms:.2f} ms"
            else:
                piped = harness.ratio(phase.chars_per_s / cores, base.pipe_batch32_chars_per_s)
                line += f" (vs raw nlp.pipe batch 32: {harness.fmt(piped, '.3f')})"
            print(line)
    if job is not None or base is not None and base.batch_docs:
        problem = _batch_problem(job, base)
        ratio = harness.ratio(
            job.server_docs_per_s if job is not None else None,
            base.batch_pipe_docs_per_s if base is not None else None,
            numerator_name="the job's docs/s", denominator_name="raw nlp.pipe's docs/s", failed=problem,
        )  # fmt: skip
        line = (
            f"ratio batch job / raw nlp.pipe: docs/s {_f(job.server_docs_per_s if job else None, 1)} / "
            f"{_f(base.batch_pipe_docs_per_s if base else None, 1)} = {harness.fmt(ratio, '.3f')} "
            f"(target >= {BATCH_RATIO_TARGET}: {harness.verdict(ratio, BATCH_RATIO_TARGET)})"
        )
        if ratio.value is not None and job is not None and base is not None and job.client_docs_per_s:
            line += f"; as the client sees it: {job.client_docs_per_s / base.batch_pipe_docs_per_s:.3f}"
        print(line)
        if ratio.value is not None and job is not None and base is not None and base.job_path_docs_per_s:
            print(
                f"  (job / NerModel.predict_iter(batch_size={base.job_path_batch_size}) in this process: "
                f"{harness.fmt(harness.ratio(job.server_docs_per_s, base.job_path_docs_per_s), '.3f')}: "
                "what the job adds beyond its model path)"
            )


def _phase_problem(phase: Phase | None) -> str | None:
    """Why a DetectEntities phase's numbers cannot be judged: not run, or answers other than 200 (they
    are left out of chars/s and latencies, so the numbers would describe a server that failed calls)."""
    if phase is None:
        return "the phase did not run"
    failed = sum(n for (status, _), n in phase.statuses.items() if status != 200) + sum(phase.errors.values())
    if failed:
        return (
            f"{failed} of {phase.ok + failed} requests with {phase.clients} client(s) failed "
            f"({_statuses(phase)})"
        )
    return None


def _batch_problem(job: BatchJob | None, base: Baseline | None) -> str | None:
    if job is None:
        return "the batch job did not run"
    if job.error:
        return f"the batch job failed: {job.error}"
    if job.status != "COMPLETED":
        return f"the batch job ended {job.status or 'without a status'}"
    if job.output_lines != job.docs or job.output_distinct_lines != job.docs:
        return (
            f"the job's output holds {job.output_distinct_lines} distinct result lines for {job.docs} "
            "documents"
        )
    if base is None or not base.batch_docs:
        return "the raw nlp.pipe baseline did not run"
    if job.output_entities != base.batch_pipe_entities:
        return (
            f"the job found {job.output_entities} entities, raw nlp.pipe {base.batch_pipe_entities} on the "
            "same documents"
        )
    return None


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 2 minutes")
    parser.add_argument("--units", type=int, default=1, help="DesiredInferenceUnits of the endpoint")
    parser.add_argument(
        "--seconds", type=float, help="measured window per client level (default 20; quick 5)"
    )
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each window (default 3; quick 1)"
    )
    parser.add_argument("--clients", default="1,8", help="concurrent clients per phase, comma separated")
    parser.add_argument("--batch-docs", type=int, help="documents of the batch job (default 5000; quick 500)")
    parser.add_argument("--train-docs", type=int, help="training documents (default 1000; quick 400)")
    parser.add_argument("--texts", type=int, help="distinct DetectEntities texts (default 400; quick 100)")
    parser.add_argument(
        "--pipe-batch-size",
        type=int,
        help="nlp.pipe batch size of the batch baseline (default: the best of "
        f"{', '.join(map(str, PIPE_BATCH_SIZES))} on the first 1,000 job documents)",
    )
    parser.add_argument("--no-batch", action="store_true", help="skip the batch job (and its baseline)")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="limit for training and the job, seconds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (and say where)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    q = args.quick
    args.seconds = args.seconds or (5.0 if q else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if q else 3.0)
    args.batch_docs = args.batch_docs or (500 if q else 5000)
    args.train_docs = args.train_docs or (400 if q else 1000)
    args.texts = args.texts or (100 if q else 400)
    args.baseline_seconds = 2.0 if q else 8.0
    try:
        args.client_levels = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error("--clients takes integers, e.g. 1,8")
    if args.units < 1 or args.seconds <= 0 or not args.client_levels or min(args.client_levels) < 1:
        parser.error("--units, --seconds and --clients must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    cpu_count = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0))
    print(
        f"machine: nproc={cpu_count} (affinity {affinity}), python {platform.python_version()}, "
        f"spaCy {spacy.__version__}, {platform.platform()}, load average {os.getloadavg()[0]:.2f}"
    )
    began = time.perf_counter()
    detect_texts = make_texts(args.texts, seed=11)
    batch_texts = [] if args.no_batch else make_texts(args.batch_docs, seed=12)
    print(f"texts: {len(detect_texts)} + {len(batch_texts)} generated in {time.perf_counter() - began:.1f} s")
    workdir = Path(tempfile.mkdtemp(prefix="mlharbor-bench-inference-"))
    server: Server | None = None
    phases: list[Phase] = []
    base: Baseline | None = None
    job: BatchJob | None = None
    cores = min(args.units, cpu_count)
    result: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpu_count": cpu_count,
            "affinity": affinity,
            "platform": platform.platform(),
            "loadavg_start": os.getloadavg()[0],
        },
        "texts": {
            "count": len(detect_texts),
            "mean_chars": statistics.mean(map(len, detect_texts)),
            "min_chars": min(map(len, detect_texts)),
            "max_chars": max(map(len, detect_texts)),
            "mean_utf8_bytes": statistics.mean(len(t.encode()) for t in detect_texts),
        },
    }
    exit_code = 0
    try:
        server = start_server(workdir)
        client = client_for(server)
        print(f"MLHarbor: {server.url} (data {server.data_dir})")
        print(f"training a recognizer on {args.train_docs} generated docs ...", flush=True)
        trained = train(client, server, args.train_docs, args.timeout)
        print(
            f"  {trained.status} in {trained.seconds:.1f} s, test F1 {trained.f1}; "
            f"artifact {trained.artifact_uri}"
        )
        result["training"] = asdict(trained)
        if trained.artifact_uri is None:
            raise RuntimeError("no model.tar.gz found under the object store")

        print(f"creating an endpoint with {args.units} inference unit(s) ...", flush=True)
        endpoint_arn, create_s = create_endpoint(client, trained.arn, args.units, 120.0)
        workers = worker_pids(server)
        print(f"  IN_SERVICE after {create_s:.1f} s; server worker processes {workers}")
        worker_cpus = sorted({_allowed_cpus(pid) for pid in workers})
        api_cpus = _allowed_cpus(server.proc.pid)
        result["serving"] = {
            "units": args.units,
            "cores": cores,
            "endpoint_create_s": create_s,
            "worker_pids_count": len(workers),
            "api_cpus": api_cpus,
            "worker_cpus": ", ".join(worker_cpus),
            # API process + load generator + serving workers on the same machine.
            "shares_cores": cores + 2 > affinity,
        }
        for clients in args.client_levels:
            print(
                f"DetectEntities, {clients} client(s): {args.warmup:g} s warmup + {args.seconds:g} s ...",
                flush=True,
            )
            phase = run_phase(server, endpoint_arn, detect_texts, clients, args.warmup, args.seconds)
            phases.append(phase)
            print(
                f"  {phase.chars_per_s:,.0f} chars/s, {phase.docs_per_s:.1f} docs/s, p50 "
                f"{_f(phase.pct_ms(0.5), 2)} ms, p99 {_f(phase.pct_ms(0.99), 2)} ms; {_statuses(phase)}",
                flush=True,
            )

        print("raw spaCy baseline in this process (server idle) ...", flush=True)
        base = run_baseline(
            server,
            trained.artifact_uri,
            detect_texts,
            batch_texts,
            args.baseline_seconds,
            [args.pipe_batch_size] if args.pipe_batch_size else PIPE_BATCH_SIZES,
            300 if args.quick else 1000,
        )
        print(
            f"  nlp(text) {base.single_chars_per_s:,.0f} chars/s, p50 {base.single_p50_ms:.2f} ms; "
            f"nlp.pipe on the job docs {base.batch_pipe_docs_per_s:,.1f} docs/s",
            flush=True,
        )

        if args.no_batch:
            result["batch_skipped"] = "--no-batch"
        elif not job_operations_present():
            result["batch_skipped"] = "this checkout's job_operations.py has no StartEntitiesDetectionJob yet"
            print(f"batch job skipped: {result['batch_skipped']}")
        else:
            print(f"batch job over {len(batch_texts)} docs ...", flush=True)
            job = run_batch_job(client, server, trained.arn, batch_texts, args.timeout)
            print(
                f"  {job.status} in {_f(job.server_s, 2)} s (server) / {_f(job.client_s, 2)} s (client); "
                f"{job.output_lines} output lines{'; ' + job.error if job.error else ''}",
                flush=True,
            )
            if job.job_id:
                job.worker_s = worker_seconds(server.log_path, job.job_id)
            if job.status != "COMPLETED" or job.output_lines != job.docs:
                exit_code = 1

        deleted = delete_endpoint(client, endpoint_arn)
        result["serving"]["endpoint_delete_s"] = deleted
    except (RuntimeError, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        exit_code = 1
    except Exception:  # a bug here: show it, still report what was measured and clean up
        traceback.print_exc()
        exit_code = 1
    finally:
        if server is not None:
            harness.stop_process(server.proc)
    if server is not None and server.log_path.exists():
        errors = [
            line for line in server.log_path.read_text(errors="replace").splitlines() if "ERROR" in line
        ]
        if errors:
            print("MLHarbor log errors:\n  " + "\n  ".join(errors[-10:]))

    result["machine"]["loadavg_end"] = os.getloadavg()[0]
    if phases:
        report(result, phases, base, job)
    else:
        print("\n=== Targets ===\nevery target NOT met: nothing was measured (see the error above)")
    result["detect"] = [
        {
            "clients": p.clients,
            "window_s": p.window_s,
            "ok": p.ok,
            "chars_per_s": p.chars_per_s,
            "chars_per_s_per_core": p.chars_per_s / cores,
            "docs_per_s": p.docs_per_s,
            "p50_ms": p.pct_ms(0.5),
            "p99_ms": p.pct_ms(0.99),
            "entities_per_doc": p.entities / p.ok if p.ok else None,
            "statuses": {f"{s} {e or ''}".strip(): n for (s, e), n in p.statuses.items()},
            "errors": dict(p.errors),
            "cpu": asdict(p.cpu) if p.cpu else None,
        }
        for p in phases
    ]
    result["baseline"] = asdict(base) if base else None
    if job is not None:
        result["batch"] = {
            **asdict(job),
            "server_docs_per_s": job.server_docs_per_s,
            "client_docs_per_s": job.client_docs_per_s,
        }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"\nnumbers written to {args.json}")
    if args.keep:
        print(f"\nfiles kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
