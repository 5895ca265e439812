#!/usr/bin/env python3
"""Stream processor outputs on MLHarbor's own endpoint (issue 14): Kinesis Data Streams and SNS, against
moto_server in the same run.

Every part starts a fresh ``mlharbor serve`` (temp data folder, SQLite) and, as the peer, a fresh
``moto_server``, both on free loopback ports. Cores: on a machine with 2+ cores the server under test
(MLHarbor or moto_server) is pinned to core 0 and this process (load generator, readers, the SNS
subscriber) to core 1, for parts 1-3 and 5; part 4 runs unpinned, as ``kvs.py`` part 5 does (face search
needs both cores). The load generator is ``api_throughput.py``'s approach: requests signed with botocore's
SigV4 signer and written as raw bytes over persistent asyncio connections (uvloop when installed), one
request in flight per connection; moto_server answers every request with ``Connection: close``, so its
clients reconnect each time (included in its latencies, as for a real client).

1. PutRecords throughput: ``--clients`` connections, each sending PutRecords of 100 records of 200 bytes
   (distinct partition keys; 64 different request bodies signed before the phase, cycled) to an
   ON_DEMAND stream (4 shards; MLHarbor does not throttle ON_DEMAND streams), ``--warmup`` then
   ``--seconds``. Records/s counts only answers 200 with FailedRecordCount 0; call latency p50/p99.
   Target: MLHarbor ≥ 5 × moto's records/s.
2. GetRecords throughput: an ON_DEMAND stream preloaded with ``--preload`` records; ``--clients``
   connections, client i reading shard i mod 4 from a fresh TRIM_HORIZON iterator with ``--limit``,
   following NextShardIterator until drained (an answer shorter than the limit), and again, for the
   window. Each drain must read exactly the shard's records (counted by an untimed first drain, which must
   add up to the preload). Target: MLHarbor ≥ 5 × moto's records/s.
3. Records readable after PutRecord returns: one producer PutRecord-ing ``--tip-rate`` records/s into a
   one-shard stream and a reader calling GetRecords back to back at the tip (LATEST, following
   NextShardIterator), both on their own connection in this process; per record, when the reader first
   saw it minus when the producer's PutRecord returned (negative when the reader saw it first), over
   ``--tip-records`` records after ``--tip-warmup``. Target: MLHarbor p99 ≤ 50 ms (moto for reference).
4. Face search frame → record readable by GetRecords: ``kvs.py`` part 5's Kinesis Video path (a producer
   PutMedia-ing a face video in real time, a face-search processor reading it), writing to (a) MLHarbor's
   own Kinesis (no ``AWS_ENDPOINT_URL_KINESIS`` in the server's environment), polled on MLHarbor, and (b)
   moto_server's Kinesis (``AWS_ENDPOINT_URL_KINESIS`` = moto, test credentials), polled on moto; latency
   = read time − (``ProducerTimestamp`` + ``FrameOffsetInSeconds``), over ``--face-seconds`` after
   ``--face-warmup``, ``--face-runs`` runs per path alternating. Reported (embedded vs moto), no target.
5. SNS Publish → HTTP subscriber: a threaded ``http.server`` in this process subscribed (Protocol http)
   to a topic, confirmed by fetching the SubscribeURL of the SubscriptionConfirmation it receives (moto
   confirms by itself); then Publish (raw signed requests) at ``--sns-rate`` for ``--sns-messages``
   messages; per message, when the subscriber had read it minus when Publish returned, matched by
   MessageId (``x-amz-sns-message-id``, else the JSON body). moto delivers inside Publish, before it
   answers, so its numbers are negative (reference only; "after send" is printed for both). Target:
   MLHarbor p99 ≤ 100 ms. Without SNS on MLHarbor (501 / NotImplemented / InvalidAction) the part reads
   "NOT measured: <why>".

Usage::

    .venv/bin/python bench/outputs.py                # ~6 min on 2 cores (make bench-outputs)
    .venv/bin/python bench/outputs.py --quick        # smoke run, ~2 min
    .venv/bin/python bench/outputs.py --parts 1,2 --seconds 20 --clients 16
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import http.server
import json
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import kvs  # bench/kvs.py: moto, cores, face search on Kinesis Video (puts src/ and the repo on sys.path)
from api_throughput import _read_response
from harness import aws_client, fmt, print_table, ratio, start_server, stop_process, verdict

REGION = "us-east-1"
CREDENTIALS = Credentials("test", "test")
RECORDS_PER_CALL = 100
RECORD_BYTES = 200
BODY_POOL = 64  # distinct PutRecords bodies per phase, cycled
THROUGHPUT_RATIO_TARGET = 5.0
TIP_P99_TARGET_MS = 50.0
SNS_P99_TARGET_MS = 100.0
PERF = time.perf_counter
CPU_HEADER = "CPU: server / bench / other"  # cores: the server under test, this process, the rest
DISTURBED = 0.25  # cores used by other processes during a window above which its numbers are flagged
TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


# --- requests -----------------------------------------------------------------------------------------------
def signed(url: str, service: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A raw HTTP/1.1 POST / signed with SigV4 (test/test, us-east-1), to send as is."""
    netloc = urlsplit(url).netloc
    request = AWSRequest(
        method="POST", url=f"http://{netloc}/", data=body, headers={"Host": netloc, **headers}
    )
    SigV4Auth(CREDENTIALS, service, REGION).add_auth(request)
    lines = ["POST / HTTP/1.1", *(f"{k}: {v}" for k, v in request.headers.items())]
    lines += [f"Content-Length: {len(body)}", "Connection: keep-alive"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def kinesis_request(url: str, operation: str, params: dict[str, Any] | bytes) -> bytes:
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"Kinesis_20131202.{operation}"}
    body = params if isinstance(params, bytes) else json.dumps(params).encode()
    return signed(url, "kinesis", body, headers)


class Connection:
    """One HTTP/1.1 connection, reopened when the server closes it (moto_server always does)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0

    async def call(self, payload: bytes) -> tuple[int, bytes]:
        status, _lower, body = await self.exchange(payload)
        return status, body

    async def exchange(self, payload: bytes) -> tuple[int, bytes, bytes]:
        """(status, the lower-cased response head, body)."""
        try:
            if self.writer is None or self.reader is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
                self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.connects += 1
            self.writer.write(payload)
            status, _head, lower, body, keep = await _read_response(self.reader)
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return status, lower, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def error_code(status: int, body: bytes) -> str:
    """``HTTP <status> <AWS error code>`` for a failed answer (awsJson ``__type`` or a query XML Code)."""
    code = ""
    with contextlib.suppress(ValueError, AttributeError):
        code = str(json.loads(body).get("__type", "")).rsplit("#", 1)[-1]
    if not code:
        found = re.search(rb"<Code>([^<]+)</Code>", body)
        code = found.group(1).decode() if found else body[:80].decode("utf-8", "replace")
    return f"HTTP {status} {code}".strip()


def run_loop(coro: Awaitable[Any]) -> Any:
    return kvs.run_async(coro)


@dataclass
class Cpu:
    """Cores used over a window: the server under test (with its children), this process, and everything
    else on the machine (not ours: if it is high, the numbers were disturbed)."""

    server: float
    client: float
    other: float

    @staticmethod
    def mark(pid: int) -> tuple[float, float, float, float]:
        return PERF(), time.process_time(), kvs.cpu_seconds(pid), kvs.machine_busy()[0] / kvs.CLK_TCK

    @classmethod
    def between(cls, a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> Cpu:
        wall = max(b[0] - a[0], 1e-9)
        server, client, busy = (b[2] - a[2]) / wall, (b[1] - a[1]) / wall, (b[3] - a[3]) / wall
        return cls(server, client, max(0.0, busy - server - client))

    def __str__(self) -> str:
        return f"{self.server:.0%} / {self.client:.0%} / {self.other:.0%}"


# --- servers ------------------------------------------------------------------------------------------------
@dataclass
class Peer:
    """The server under test in a part: MLHarbor or moto_server."""

    label: str
    url: str
    pid: int

    def client(self, service: str) -> Any:
        return aws_client(SimpleNamespace(url=self.url), service)


@contextlib.contextmanager
def both_servers(workdir: Path, cores: kvs.Cores) -> Any:
    """A fresh MLHarbor and a fresh moto_server, each pinned to the server core; yields (mlharbor, moto)."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_server(workdir)
    moto_proc = None
    try:
        moto_url, moto_proc = kvs.start_moto(workdir)
        if cores.server is not None:
            kvs.pin(server.proc.pid, cores.server)
            kvs.pin(moto_proc.pid, cores.server)
        yield Peer("MLHarbor", server.url, server.proc.pid), Peer("moto", moto_url, moto_proc.pid)
    finally:
        stop_process(server.proc)
        stop_process(moto_proc)


def create_stream(peer: Peer, name: str, shards: int | None = None) -> list[str]:
    """An ON_DEMAND stream (``shards`` None) or a PROVISIONED one; its shard ids once ACTIVE."""
    kinesis = peer.client("kinesis")
    if shards is None:
        kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    else:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
    deadline = time.monotonic() + 10
    while kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != (
        "ACTIVE"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{peer.label}: stream {name} did not become ACTIVE")
        time.sleep(0.05)
    return [s["ShardId"] for s in kinesis.list_shards(StreamName=name)["Shards"]]


# --- throughput phases (parts 1 and 2) ----------------------------------------------------------------------
@dataclass
class Phase:
    """What the clients of one timed window saw."""

    label: str
    seconds: float
    records: int = 0  # counted: accepted (part 1) or read by a correct drain (part 2)
    calls: int = 0
    latencies: list[float] = field(default_factory=list)  # ms, every call that ended in the window
    failures: Counter[str] = field(default_factory=Counter)  # answers that do not count, and why
    drains: int = 0
    first_half: int = 0  # part 1: records counted in the window's first half
    acknowledged: int = 0  # part 1: records accepted at any time (warm-up too), to find in the stream after
    note: str = ""
    cpu: Cpu | None = None
    connects: int = 0

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def problem(self) -> str | None:
        if self.failures:
            top = ", ".join(f"{why}: {n}" for why, n in self.failures.most_common(3))
            return f"{self.label}: {sum(self.failures.values())} failure(s) ({top})"
        if not self.records:
            return f"{self.label}: nothing counted in the window"
        return None


async def timed(phase: Phase, pid: int, warmup: float, clients: list[Any]) -> None:
    """Run ``clients`` (coroutine functions of (t_measure, t_end)) and the CPU monitor."""
    t_measure = PERF() + warmup
    t_end = t_measure + phase.seconds
    marks: list[tuple[float, float, float, float]] = []

    async def monitor() -> None:
        for at in (t_measure, t_end):
            await asyncio.sleep(max(0.0, at - PERF()))
            marks.append(Cpu.mark(pid))

    tasks = [monitor(), *(client(t_measure, t_end) for client in clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), warmup + phase.seconds + 60)
    except TimeoutError:
        phase.failures["the phase did not end within 60 s of its window (server stopped answering)"] += 1
    if len(marks) == 2:
        phase.cpu = Cpu.between(*marks)


def put_bodies(stream: str, seed: int) -> list[bytes]:
    """``BODY_POOL`` PutRecords bodies of 100 records, 200 random bytes each, every partition key distinct."""
    rng = random.Random(seed)
    bodies = []
    for b in range(BODY_POOL):
        records = [
            {
                "Data": base64.b64encode(rng.randbytes(RECORD_BYTES)).decode(),
                "PartitionKey": f"pk-{seed}-{b}-{i}",
            }
            for i in range(RECORDS_PER_CALL)
        ]
        bodies.append(json.dumps({"StreamName": stream, "Records": records}).encode())
    return bodies


def put_client(url: str, payloads: list[bytes], first: int, step: int, phase: Phase) -> Any:
    async def run(t_measure: float, t_end: float) -> None:
        conn, n = Connection(url), first
        while PERF() < t_end:
            payload = payloads[n % len(payloads)]
            n += step
            start = PERF()
            try:
                status, body = await conn.call(payload)
            except TRANSPORT_ERRORS as exc:
                phase.failures[f"transport: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.01)
                continue
            end = PERF()
            failed = None
            if status != 200:
                phase.failures[error_code(status, body)] += 1
            else:
                try:
                    failed = int(json.loads(body)["FailedRecordCount"])
                except (ValueError, KeyError, TypeError):
                    phase.failures["HTTP 200 without a FailedRecordCount"] += 1
                if failed:
                    phase.failures["FailedRecordCount > 0"] += 1
            phase.acknowledged += RECORDS_PER_CALL if failed == 0 else 0
            if t_measure <= end <= t_end:
                phase.calls += 1
                phase.latencies.append((end - start) * 1000)
                phase.records += RECORDS_PER_CALL if failed == 0 else 0
                if end < t_measure + phase.seconds / 2:
                    phase.first_half += RECORDS_PER_CALL if failed == 0 else 0
        phase.connects += conn.connects
        conn.close()

    return run


def put_phase(peer: Peer, stream: str, clients: int, warmup: float, seconds: float, seed: int) -> Phase:
    # Signed right before the phase: a SigV4 signature is good for 5 minutes.
    payloads = [kinesis_request(peer.url, "PutRecords", body) for body in put_bodies(stream, seed)]
    phase = Phase(peer.label, seconds)
    workers = [put_client(peer.url, payloads, i, clients, phase) for i in range(clients)]
    run_loop(timed(phase, peer.pid, warmup, workers))
    return phase


def part_put(tmp: Path, cores: kvs.Cores, args: argparse.Namespace) -> tuple[Phase, Phase]:
    print(f"\n== 1. PutRecords throughput: {args.clients} clients, {RECORDS_PER_CALL} records x "
          f"{RECORD_BYTES} B per call, ON_DEMAND stream (4 shards), {args.warmup:g} s warm-up + "
          f"{args.seconds:g} s ==", flush=True)  # fmt: skip
    phases = []
    with both_servers(tmp / "put", cores) as peers:
        for peer in peers:
            phase = Phase(peer.label, args.seconds)
            try:
                shards = create_stream(peer, "bench-put")
                phase = put_phase(peer, "bench-put", args.clients, args.warmup, args.seconds, 1)
                stored = sum(run_loop(count_all(peer.url, "bench-put", shards)))
                check = f"the stream holds {stored:,} records; {phase.acknowledged:,} were acknowledged"
                if stored == phase.acknowledged:
                    phase.note = check
                elif peer.label == "MLHarbor":
                    phase.failures[check] += 1
                else:  # moto's Shard.put_record is not thread-safe: concurrent PutRecords lose records
                    phase.note = f"{check}: moto LOST {phase.acknowledged - stored:,} acknowledged records"
            except Exception as exc:
                phase.failures[f"{type(exc).__name__}: {exc}"] += 1
            phases.append(phase)
    rows = [throughput_row(p) for p in phases]
    print_table(["server", "records/s", "calls", "call p50 ms", "p99 ms", CPU_HEADER, "connects",
                 "failed calls"], rows, right={1, 2, 3, 4, 5, 6})  # fmt: skip
    for p in phases:
        half = p.seconds / 2
        print(
            f"  {p.label}: records/s in the window's first half {p.first_half / half:,.0f}, second half "
            f"{(p.records - p.first_half) / half:,.0f}" + (f"; {p.note}" if p.note else "")
        )
    return phases[0], phases[1]


def throughput_row(p: Phase) -> list[str]:
    p50, p99, _ = kvs.percentiles(p.latencies)
    failed = ", ".join(f"{why}: {n}" for why, n in p.failures.most_common(2)) or "0"
    return [p.label, f"{p.rate:,.0f}", str(p.calls), fmt(p50, ".1f"), fmt(p99, ".1f"), str(p.cpu or "n/a"),
            str(p.connects), failed]  # fmt: skip


def get_client(url: str, stream: str, shard: str, expected: int, limit: int, phase: Phase) -> Any:
    horizon = {"StreamName": stream, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}

    async def run(t_measure: float, t_end: float) -> None:
        conn = Connection(url)
        while PERF() < t_end:
            try:
                status, body = await conn.call(kinesis_request(url, "GetShardIterator", horizon))
            except TRANSPORT_ERRORS as exc:
                phase.failures[f"transport: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.01)
                continue
            if status != 200:
                phase.failures[f"GetShardIterator {error_code(status, body)}"] += 1
                continue
            iterator, got, counted = json.loads(body)["ShardIterator"], 0, 0
            while PERF() < t_end:
                start = PERF()
                try:
                    status, body = await conn.call(
                        kinesis_request(url, "GetRecords", {"ShardIterator": iterator, "Limit": limit})
                    )
                except TRANSPORT_ERRORS as exc:
                    phase.failures[f"transport: {type(exc).__name__}"] += 1
                    break
                end = PERF()
                in_window = t_measure <= end <= t_end
                if status != 200:
                    phase.failures[f"GetRecords {error_code(status, body)}"] += 1
                    break
                answer = json.loads(body)
                n, iterator = len(answer["Records"]), answer["NextShardIterator"]
                got += n
                if in_window:
                    phase.calls += 1
                    phase.latencies.append((end - start) * 1000)
                    counted += n
                if n < limit:  # drained
                    if got != expected:
                        phase.failures[f"a drain of {shard} read {got} records, not {expected}"] += 1
                    else:
                        phase.records += counted
                        phase.drains += in_window
                    break
            else:  # the window ended mid-drain: what it read in the window counts
                phase.records += counted
        phase.connects += conn.connects
        conn.close()

    return run


async def count_all(url: str, stream: str, shards: list[str], limit: int = 10_000) -> list[int]:
    return await asyncio.gather(*(drain_once(url, stream, s, limit) for s in shards))


async def drain_once(url: str, stream: str, shard: str, limit: int) -> int:
    """Records in a shard (TRIM_HORIZON to the tip), untimed."""
    conn = Connection(url)
    try:
        status, body = await conn.call(kinesis_request(url, "GetShardIterator", {
            "StreamName": stream, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}))  # fmt: skip
        if status != 200:
            raise RuntimeError(f"GetShardIterator: {error_code(status, body)}")
        iterator, total = json.loads(body)["ShardIterator"], 0
        while True:
            status, body = await conn.call(
                kinesis_request(url, "GetRecords", {"ShardIterator": iterator, "Limit": limit})
            )
            if status != 200:
                raise RuntimeError(f"GetRecords: {error_code(status, body)}")
            answer = json.loads(body)
            total += len(answer["Records"])
            iterator = answer["NextShardIterator"]
            if len(answer["Records"]) < limit:
                return total
    finally:
        conn.close()


async def preload(peer: Peer, stream: str, records: int, clients: int) -> None:
    """``records`` records into ``stream`` with PutRecords, untimed; any failure raises."""
    payloads = [kinesis_request(peer.url, "PutRecords", body) for body in put_bodies(stream, 2)]
    calls = iter(range(-(-records // RECORDS_PER_CALL)))

    async def worker() -> None:
        conn = Connection(peer.url)
        try:
            for n in calls:
                status, body = await conn.call(payloads[n % len(payloads)])
                if status != 200 or json.loads(body).get("FailedRecordCount"):
                    raise RuntimeError(f"{peer.label}: preloading failed: {error_code(status, body)}")
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(clients)))


def get_phase(peer: Peer, args: argparse.Namespace) -> Phase:
    phase = Phase(peer.label, args.seconds)
    try:
        shards = create_stream(peer, "bench-get")
        started = time.monotonic()
        run_loop(preload(peer, "bench-get", args.preload, 1))  # moto loses records put concurrently
        loaded = time.monotonic() - started
        counts = run_loop(count_all(peer.url, "bench-get", shards, args.limit))
        total = -(-args.preload // RECORDS_PER_CALL) * RECORDS_PER_CALL
        print(
            f"  {peer.label}: preloaded {total:,} records in {loaded:.1f} s; per shard {counts}", flush=True
        )
        if sum(counts) != total:
            phase.failures[f"the shards hold {sum(counts)} records, not the {total} put"] += 1
            return phase
    except Exception as exc:
        phase.failures[f"{type(exc).__name__}: {exc}"] += 1
        return phase
    workers = [
        get_client(peer.url, "bench-get", shards[i % len(shards)], counts[i % len(shards)], args.limit, phase)
        for i in range(args.clients)
    ]
    run_loop(timed(phase, peer.pid, args.warmup, workers))
    return phase


def part_get(tmp: Path, cores: kvs.Cores, args: argparse.Namespace) -> tuple[Phase, Phase]:
    print(f"\n== 2. GetRecords throughput: {args.preload:,} records preloaded into an ON_DEMAND stream (4 "
          f"shards); {args.clients} clients, client i draining shard i mod 4 from TRIM_HORIZON with Limit "
          f"{args.limit}, over and over; {args.warmup:g} s warm-up + {args.seconds:g} s ==",
          flush=True)  # fmt: skip
    with both_servers(tmp / "get", cores) as peers:
        phases = [get_phase(peer, args) for peer in peers]
    rows = [throughput_row(p) + [str(p.drains)] for p in phases]
    print_table(["server", "records/s", "GetRecords calls", "call p50 ms", "p99 ms", CPU_HEADER,
                 "connects", "failed calls", "whole drains"], rows, right={1, 2, 3, 4, 5, 6, 8})  # fmt: skip
    return phases[0], phases[1]


# --- part 3: readable after PutRecord returns ---------------------------------------------------------------
@dataclass
class Tip:
    label: str
    latencies: list[float] = field(default_factory=list)  # ms
    polls: int = 0
    poll_seconds: float = 0.0
    cpu: Cpu | None = None
    problem: str | None = None


async def tip_run(peer: Peer, stream: str, shard: str, args: argparse.Namespace) -> Tip:
    tip = Tip(peer.label)
    total = args.tip_warmup + args.tip_records
    returned: dict[int, float] = {}
    seen: dict[int, float] = {}
    done = asyncio.Event()
    padding = "x" * (RECORD_BYTES - 8)

    reader = Connection(peer.url)
    status, body = await reader.call(kinesis_request(peer.url, "GetShardIterator", {
        "StreamName": stream, "ShardId": shard, "ShardIteratorType": "LATEST"}))  # fmt: skip
    if status != 200:
        tip.problem = f"GetShardIterator: {error_code(status, body)}"
        return tip
    iterator = json.loads(body)["ShardIterator"]

    async def read() -> None:
        nonlocal iterator
        began = PERF()
        while not done.is_set():
            status, body = await reader.call(
                kinesis_request(peer.url, "GetRecords", {"ShardIterator": iterator})
            )
            now = PERF()
            tip.polls += 1
            if status != 200:
                raise RuntimeError(f"GetRecords: {error_code(status, body)}")
            answer = json.loads(body)
            iterator = answer["NextShardIterator"]
            for record in answer["Records"]:
                seen.setdefault(int(base64.b64decode(record["Data"])[:8]), now)
        tip.poll_seconds = PERF() - began

    async def produce() -> None:
        writer = Connection(peer.url)
        t0 = PERF() + 0.2
        try:
            for i in range(total):
                await asyncio.sleep(max(0.0, t0 + i / args.tip_rate - PERF()))
                data = base64.b64encode(f"{i:08d}{padding}".encode()).decode()
                payload = kinesis_request(peer.url, "PutRecord", {
                    "StreamName": stream, "Data": data, "PartitionKey": "tip"})  # fmt: skip
                status, body = await writer.call(payload)
                returned[i] = PERF()
                if status != 200:
                    raise RuntimeError(f"PutRecord: {error_code(status, body)}")
            deadline = PERF() + 5
            while len(seen) < total and PERF() < deadline:
                await asyncio.sleep(0.01)
        finally:
            writer.close()
            done.set()

    mark = Cpu.mark(peer.pid)
    results = await asyncio.gather(read(), produce(), return_exceptions=True)
    tip.cpu = Cpu.between(mark, Cpu.mark(peer.pid))
    reader.close()
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    if errors:
        tip.problem = "; ".join(errors)
    measured = range(args.tip_warmup, total)
    tip.latencies = [(seen[i] - returned[i]) * 1000 for i in measured if i in seen and i in returned]
    missing = sum(1 for i in measured if i not in seen)
    if missing and tip.problem is None:
        tip.problem = f"{missing} of {len(measured)} records were never read within 5 s"
    return tip


def part_tip(tmp: Path, cores: kvs.Cores, args: argparse.Namespace) -> tuple[Tip, Tip]:
    print(f"\n== 3. PutRecord returned → readable by GetRecords: {args.tip_rate:g} PutRecord/s into a "
          f"one-shard stream, a reader calling GetRecords back to back at the tip (LATEST); "
          f"{args.tip_records} records after {args.tip_warmup} ==", flush=True)  # fmt: skip
    tips = []
    with both_servers(tmp / "tip", cores) as peers:
        for peer in peers:
            try:
                shard = create_stream(peer, "bench-tip", shards=1)[0]
                tips.append(run_loop(tip_run(peer, "bench-tip", shard, args)))
            except Exception as exc:
                tips.append(Tip(peer.label, problem=f"{type(exc).__name__}: {exc}"))
    rows = []
    for t in tips:
        p50, p99, worst = kvs.percentiles(t.latencies)
        rows.append([t.label, str(len(t.latencies)), fmt(p50, ".1f"), fmt(p99, ".1f"), fmt(worst, ".1f"),
                     fmt(min(t.latencies) if t.latencies else None, ".1f"),
                     fmt(t.poll_seconds / t.polls * 1000 if t.polls else None, ".2f"),
                     str(t.cpu or "n/a"), t.problem or "-"])  # fmt: skip
    print_table(["server", "records", "p50 ms", "p99 ms", "max ms", "min ms", "ms per GetRecords",
                 CPU_HEADER, "problem"], rows, right={1, 2, 3, 4, 5, 6, 7})  # fmt: skip
    return tips[0], tips[1]


# --- part 4: face search frame → record, embedded Kinesis vs moto -------------------------------------------
def part_faces(tmp: Path, args: argparse.Namespace) -> tuple[kvs.FaceRun, kvs.FaceRun]:
    fps = args.face_fps
    print(f"\n== 4. Face search frame → record readable by GetRecords: embedded Kinesis vs moto_server, "
          f"{args.face_runs} run(s) per path, alternating, each a {args.face_seconds:g} s window after "
          f"{args.face_warmup:g} s warm-up; a producer PutMedia-ing 640x480 {fps} fps in real time; "
          f"GetRecords back to back, {args.poll_ms:g} ms pause when empty; nothing pinned ==",
          flush=True)  # fmt: skip
    data = kvs.encode_mkv(kvs.portrait_frames(round(args.face_clip_seconds * fps)), fps=fps, size=(640, 480),
                          fragment_seconds=args.fragment_seconds)  # fmt: skip
    media = kvs.Media(data, fps)
    folder = tmp / "faces"
    folder.mkdir()
    moto_url, moto = kvs.start_moto(folder)
    to_moto = kvs.aws_env(moto_url, folder)
    to_moto.pop("AWS_ENDPOINT_URL_KINESIS_VIDEO", None)
    embedded = {k: v for k, v in to_moto.items() if not k.startswith("AWS_ENDPOINT_URL_")}
    own_runs: list[kvs.FaceRun] = []
    moto_runs: list[kvs.FaceRun] = []
    try:
        for i in range(args.face_runs):
            for label, runs, env, target in (
                ("embedded (MLHarbor's own Kinesis)", own_runs, embedded, None),
                ("moto_server's Kinesis", moto_runs, to_moto, (moto_url, moto.pid)),
            ):
                run_dir = folder / f"{len(own_runs) + len(moto_runs)}"
                try:
                    runs.append(kvs.kvs_path_run(run_dir, media, env, target, args))
                except Exception as exc:
                    runs.append(kvs.FaceRun(problem=f"{type(exc).__name__}: {exc}"))
                kvs.report_face(f"run {i + 1}, {label}", runs[-1])
    finally:
        stop_process(moto)
    own, peer = kvs.pooled(own_runs), kvs.pooled(moto_runs)
    if args.face_runs > 1:
        kvs.report_face("pooled, embedded", own)
        kvs.report_face("pooled, moto_server", peer)
    rows = []
    for label, run in (("embedded (MLHarbor)", own), ("moto_server", peer)):
        p50, p99, worst = kvs.percentiles(run.latencies_ms)
        rows.append([label, str(run.records), str(run.matched), fmt(p50, ".0f"), fmt(p99, ".0f"),
                     fmt(worst, ".0f"), fmt(run.poll_ms, ".1f"), run.problem or "-"])  # fmt: skip
    header = ["Kinesis", "records", "with a match", "p50 ms", "p99 ms", "max ms", "ms per poll", "problem"]
    print_table(header, rows, right={1, 2, 3, 4, 5, 6})
    return own, peer


# --- part 5: SNS Publish → HTTP subscriber ------------------------------------------------------------------
class Subscriber(http.server.ThreadingHTTPServer):
    """Notes when each POST arrived (after its body was read)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.arrivals: dict[str, float] = {}  # MessageId → perf_counter when read
        self.confirmations: list[dict[str, Any]] = []
        self.other: list[str] = []
        self.header_ids = 0
        self.confirmed = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/sns"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Subscriber
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        now = PERF()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        header_id = self.headers.get("x-amz-sns-message-id")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        kind = self.headers.get("x-amz-sns-message-type") or doc.get("Type")
        with self.server.lock:
            if kind == "SubscriptionConfirmation":
                self.server.confirmations.append(doc)
                self.server.confirmed.set()
            elif kind == "Notification" and (header_id or doc.get("MessageId")):
                self.server.header_ids += header_id is not None
                self.server.arrivals.setdefault(header_id or doc["MessageId"], now)
            else:
                self.server.other.append(f"{kind}: {body[:120]!r}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Delivery:
    label: str
    after_return: list[float] = field(default_factory=list)  # ms: received − Publish returned
    after_send: list[float] = field(default_factory=list)  # ms: received − Publish request written
    publish_ms: list[float] = field(default_factory=list)
    header_ids: int = 0
    confirmation: str = ""
    cpu: Cpu | None = None
    problem: str | None = None


class QueryClient:
    """SNS (query protocol) over one persistent http.client connection, requests signed with SigV4."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def call(self, action: str, params: dict[str, str]) -> tuple[int, bytes, float, float]:
        """(status, body, when the request was written, when the answer was read)."""
        body = urllib.parse.urlencode({"Action": action, "Version": "2010-03-31", **params}).encode()
        netloc = urlsplit(self.url).netloc
        request = AWSRequest(method="POST", url=f"http://{netloc}/", data=body, headers={
            "Host": netloc, "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})  # fmt: skip
        SigV4Auth(CREDENTIALS, "sns", REGION).add_auth(request)
        sent = PERF()
        self.conn.request("POST", "/", body=body, headers=dict(request.headers.items()))
        response = self.conn.getresponse()
        answer = response.read()
        return response.status, answer, sent, PERF()

    def close(self) -> None:
        self.conn.close()


def xml_value(body: bytes, tag: str) -> str | None:
    found = re.search(rb"<%s>([^<]*)</%s>" % (tag.encode(), tag.encode()), body)
    return found.group(1).decode() if found else None


def sns_run(peer: Peer, args: argparse.Namespace) -> Delivery:
    result = Delivery(peer.label)
    subscriber = Subscriber()
    threading.Thread(target=subscriber.serve_forever, daemon=True).start()
    sns = QueryClient(peer.url)
    try:
        status, body, _, _ = sns.call("CreateTopic", {"Name": "bench-outputs"})
        if status != 200:
            answer = error_code(status, body)
            missing = status == 501 or "NotImplemented" in answer or "InvalidAction" in answer
            result.problem = f"CreateTopic answered {answer}" + (
                f": {peer.label} has no SNS" if missing else ""
            )
            return result
        topic = xml_value(body, "TopicArn") or ""
        subscribe = {"TopicArn": topic, "Protocol": "http", "Endpoint": subscriber.url}
        status, body, _, _ = sns.call("Subscribe", {**subscribe, "ReturnSubscriptionArn": "true"})
        if status != 200:
            result.problem = f"Subscribe answered {error_code(status, body)}"
            return result
        arn = xml_value(body, "SubscriptionArn") or ""
        deadline, pending, status = PERF() + 10, None, 0
        while pending != "false" and PERF() < deadline:
            if subscriber.confirmed.is_set() and not result.confirmation:
                url = subscriber.confirmations[0].get("SubscribeURL", "")
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(url, timeout=10) as response:
                    fetched, answer = response.status, response.read()
                arn = xml_value(answer, "SubscriptionArn") or arn
                result.confirmation = (
                    f"SubscriptionConfirmation received, SubscribeURL fetched (HTTP {fetched})"
                )
            status, body, _, _ = sns.call("GetSubscriptionAttributes", {"SubscriptionArn": arn})
            entries = dict(re.findall(rb"<key>([^<]*)</key>\s*<value>([^<]*)</value>", body))
            pending = entries.get(b"PendingConfirmation", b"").decode() or None
            if pending != "false":
                time.sleep(0.05)
        if not subscriber.confirmations:
            result.confirmation = "no SubscriptionConfirmation came" + (
                f" ({peer.label} confirmed the subscription by itself)" if pending == "false" else ""
            )
        if pending != "false":
            result.problem = (f"the subscription is not confirmed within 10 s ({result.confirmation}; "
                              f"GetSubscriptionAttributes {error_code(status, body)}, PendingConfirmation "
                              f"{pending!r})")  # fmt: skip
            return result

        total = args.sns_warmup + args.sns_messages
        sent: dict[str, tuple[int, float, float]] = {}
        mark = Cpu.mark(peer.pid)
        t0 = PERF() + 0.1
        for i in range(total):
            time.sleep(max(0.0, t0 + i / args.sns_rate - PERF()))
            status, body, began, returned = sns.call(
                "Publish", {"TopicArn": topic, "Message": f"message {i}"}
            )
            if status != 200:
                result.problem = f"Publish answered {error_code(status, body)}"
                return result
            sent[xml_value(body, "MessageId") or f"?{i}"] = (i, began, returned)
            result.publish_ms.append((returned - began) * 1000)
        deadline = PERF() + 5
        while len(subscriber.arrivals) < total and PERF() < deadline:
            time.sleep(0.01)
        result.cpu = Cpu.between(mark, Cpu.mark(peer.pid))
        with subscriber.lock:
            arrivals = dict(subscriber.arrivals)
            result.header_ids = subscriber.header_ids
        missing = 0
        for message_id, (i, began, returned) in sent.items():
            if i < args.sns_warmup:
                continue
            if message_id not in arrivals:
                missing += 1
                continue
            result.after_return.append((arrivals[message_id] - returned) * 1000)
            result.after_send.append((arrivals[message_id] - began) * 1000)
        if missing:
            result.problem = (
                f"{missing} of {args.sns_messages} messages never reached the subscriber within 5 s"
            )
    except Exception as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
    finally:
        sns.close()
        subscriber.shutdown()
        subscriber.server_close()
    return result


def part_sns(tmp: Path, cores: kvs.Cores, args: argparse.Namespace) -> tuple[Delivery, Delivery]:
    print(f"\n== 5. SNS Publish → HTTP subscriber: {args.sns_messages} messages after {args.sns_warmup}, "
          f"{args.sns_rate:g} Publish/s, subscriber (threaded http.server) in this process ==",
          flush=True)  # fmt: skip
    with both_servers(tmp / "sns", cores) as peers:
        results = [sns_run(peer, args) for peer in peers]
    rows = []
    for r in results:
        p50, p99, worst = kvs.percentiles(r.after_return)
        s50, s99, _ = kvs.percentiles(r.after_send)
        q50, q99, _ = kvs.percentiles(r.publish_ms)
        rows.append([r.label, str(len(r.after_return)), fmt(p50, ".1f"), fmt(p99, ".1f"), fmt(worst, ".1f"),
                     fmt(s50, ".1f"), fmt(s99, ".1f"), fmt(q50, ".1f"), fmt(q99, ".1f"),
                     str(r.cpu or "n/a"), r.problem or "-"])  # fmt: skip
    print_table(["server", "messages", "after return p50 ms", "p99 ms", "max ms", "after send p50 ms",
                 "p99 ms", "Publish p50 ms", "p99 ms", CPU_HEADER, "problem"], rows,
                right=set(range(1, 10)))  # fmt: skip
    for r in results:
        print(
            f"  {r.label}: {r.confirmation or 'no subscription'}; {r.header_ids} notifications carried "
            f"x-amz-sns-message-id"
        )
    return results[0], results[1]


# --- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="1,2,3,4,5", help="which parts to run")
    parser.add_argument("--clients", type=int, default=8, help="connections in parts 1 and 2")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window of parts 1 and 2")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each window")
    parser.add_argument("--preload", type=int, default=40_000, help="records in part 2's stream")
    parser.add_argument("--limit", type=int, default=1000, help="GetRecords Limit in part 2")
    parser.add_argument("--tip-rate", type=float, default=50.0, help="PutRecord/s in part 3")
    parser.add_argument("--tip-records", type=int, default=300)
    parser.add_argument("--tip-warmup", type=int, default=25, help="records not counted at the start")
    parser.add_argument("--face-seconds", type=float, default=60.0)
    parser.add_argument("--face-warmup", type=float, default=5.0)
    parser.add_argument("--face-runs", type=int, default=1, help="runs per path, alternating, pooled")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="part 4's GetRecords pause when empty")
    parser.add_argument("--face-fps", type=int, default=25)
    parser.add_argument("--face-clip-seconds", type=float, default=8.0)
    parser.add_argument("--fragment-seconds", type=float, default=2.0)
    parser.add_argument("--sns-rate", type=float, default=20.0, help="Publish/s in part 5")
    parser.add_argument("--sns-messages", type=int, default=200)
    parser.add_argument("--sns-warmup", type=int, default=10, help="messages not counted at the start")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run (~2 min): short windows, fewer records"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.preload, args.tip_records = 3.0, 1.0, 8_000, 100
        args.face_seconds, args.face_warmup, args.face_runs, args.sns_messages = 15.0, 3.0, 1, 60
    if args.clients < 1 or args.seconds <= 0 or args.preload < 1 or args.limit < 1 or args.tip_rate <= 0:
        parser.error("--clients, --seconds, --preload, --limit and --tip-rate must be positive")
    parts = {int(p) for p in args.parts.split(",") if p.strip()}
    for name in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")]:
        print(f"(ignoring {name} from this environment: the servers started here must not inherit it)")
        os.environ.pop(name)
    loopback = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = loopback  # moto's and MLHarbor's HTTP deliveries

    cores = kvs.Cores.plan()
    placement = (
        "one core: servers and this process share it (nothing pinned)"
        if cores.server is None
        else f"the server under test (MLHarbor or moto_server) pinned to core {min(cores.server)}, this "
        f"process (load generator, readers, subscriber) to core {min(cores.client or cores.all)}"
    )
    print(f"machine: {os.cpu_count()} cores; parts 1-3, 5: {placement}; part 4: nothing pinned", flush=True)
    put = get = tip = faces = sns = None
    with tempfile.TemporaryDirectory(prefix="mlharbor-outputs-") as tmp_name:
        tmp = Path(tmp_name)
        with cores.client_pinned():
            if 1 in parts:
                put = part_put(tmp, cores, args)
            if 2 in parts:
                get = part_get(tmp, cores, args)
            if 3 in parts:
                tip = part_tip(tmp, cores, args)
        if 4 in parts:
            faces = part_faces(tmp, args)
        if 5 in parts:
            with cores.client_pinned():
                sns = part_sns(tmp, cores, args)

    report_targets(put, get, tip, faces, sns)


def disturbed(mine: Cpu | None, moto: Cpu | None) -> str:
    """A warning when other processes used more than ``DISTURBED`` cores during either window."""
    busy = [(who, c.other) for who, c in (("MLHarbor", mine), ("moto", moto)) if c and c.other > DISTURBED]
    if not busy:
        return ""
    which = ", ".join(f"{other:.0%} of a core in {who}'s window" for who, other in busy)
    return f" — WARNING: disturbed, other processes used {which}"


def report_targets(
    put: tuple[Phase, Phase] | None,
    get: tuple[Phase, Phase] | None,
    tip: tuple[Tip, Tip] | None,
    faces: tuple[kvs.FaceRun, kvs.FaceRun] | None,
    sns: tuple[Delivery, Delivery] | None,
) -> None:
    print("\n=== Targets ===")
    for n, pair, what in ((1, put, "PutRecords records/s accepted"), (2, get, "GetRecords records/s read")):
        if pair is None:
            continue
        mine, moto = pair
        failed = f"the peer failed: {moto.problem()}" if moto.problem() else mine.problem()
        versus = ratio(mine.rate, moto.rate, numerator_name="MLHarbor's records/s",
                       denominator_name="moto's records/s", failed=failed)  # fmt: skip
        print(f"{n}. {what}, MLHarbor / moto: {mine.rate:,.0f} / {moto.rate:,.0f} = "
              f"{fmt(versus, '.2f', 'x')} (target ≥ {THROUGHPUT_RATIO_TARGET:.0f}x: "
              f"{verdict(versus, THROUGHPUT_RATIO_TARGET)}){disturbed(mine.cpu, moto.cpu)}")  # fmt: skip
    if tip is not None:
        mine, moto = tip
        p50, p99, _ = kvs.percentiles(mine.latencies)
        _, moto_p99, _ = kvs.percentiles(moto.latencies)
        judged = verdict(p99, TIP_P99_TARGET_MS, at_most=True, problem=mine.problem)
        print(f"3. PutRecord returned → readable by GetRecords at the tip, MLHarbor: p50 {fmt(p50, '.1f')} "
              f"ms, p99 {fmt(p99, '.1f')} ms (target p99 ≤ {TIP_P99_TARGET_MS:.0f} ms: {judged}); moto p99 "
              f"{fmt(moto_p99, '.1f')} ms" + (f" ({moto.problem})" if moto.problem else "")
              + disturbed(mine.cpu, moto.cpu))  # fmt: skip
    if faces is not None:
        own, peer = faces
        o50, o99, _ = kvs.percentiles(own.latencies_ms)
        m50, m99, _ = kvs.percentiles(peer.latencies_ms)
        line = (f"4. face search frame → record readable, embedded / moto_server: p50 {fmt(o50, '.0f')} / "
                f"{fmt(m50, '.0f')} ms, p99 {fmt(o99, '.0f')} / {fmt(m99, '.0f')} ms")  # fmt: skip
        if own.problem or peer.problem:
            why = "; ".join(
                f"{who}: {r.problem}" for who, r in (("embedded", own), ("moto", peer)) if r.problem
            )
            print(f"{line} (reported, no target: NOT measured: {why})")
        else:
            assert o50 is not None and m50 is not None and o99 is not None and m99 is not None

            def faster(ours: float, theirs: float) -> str:
                return (
                    f"{'embedded' if ours < theirs else 'moto_server'} faster by {abs(theirs - ours):.0f} ms"
                )

            print(f"{line}: at p50 {faster(o50, m50)}, at p99 {faster(o99, m99)} (p99 embedded ÷ moto = "
                  f"{fmt(ratio(o99, m99))}); reported, no target")  # fmt: skip
    if sns is not None:
        mine, moto = sns
        p50, p99, _ = kvs.percentiles(mine.after_return)
        _, moto_p99, _ = kvs.percentiles(moto.after_return)
        if mine.problem and not mine.after_return:
            judged = kvs.not_measured(mine.problem)
        else:
            judged = verdict(p99, SNS_P99_TARGET_MS, at_most=True, problem=mine.problem)
        print(f"5. SNS Publish returned → HTTP subscriber received, MLHarbor: p50 {fmt(p50, '.1f')} ms, p99 "
              f"{fmt(p99, '.1f')} ms (target p99 ≤ {SNS_P99_TARGET_MS:.0f} ms: {judged}); moto p99 "
              f"{fmt(moto_p99, '.1f')} ms (delivers before Publish returns)"
              + (f" ({moto.problem})" if moto.problem else "") + disturbed(mine.cpu, moto.cpu))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
