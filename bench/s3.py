#!/usr/bin/env python3
"""S3 on MLHarbor's endpoint: small-object PUT/GET against moto_server, large-object PUT/GET against plain
file copies on the same disk (the physical limit), ListObjectsV2 over 100k keys, and the server's RSS while
it streams a 1 GB object both ways.

One ``mlharbor serve`` (temp data folder, SQLite, local object store under ``<data>/s3/<bucket>/<key>``) and
one ``moto_server`` are started on free loopback ports for the whole run. Cores: on a machine with 2+ cores
both servers are pinned to core 0 (only one of them is busy at a time) and this process (load generator,
boto3 transfers, the raw-disk peer, the RSS sampler) to core 1, as ``kvs.py`` and ``outputs.py`` do.

Client: boto3 costs ~1 ms of client CPU per call and would measure itself, so requests are signed here with
SigV4 (header auth, the ``s3`` scope; checked at start against botocore's ``S3SigV4Auth``, byte for byte, so
a signer bug cannot pass as a server error) and written as raw HTTP/1.1 bytes: small requests over
persistent asyncio connections (uvloop), one in flight per connection; large bodies with ``socket.sendfile``
from a file and read with ``recv_into`` into one buffer. moto_server answers ``Connection: close``, so its
clients reconnect for each request (in its latencies, as for a real client). Every answer is checked: the
status, PutObject's ETag against the body's MD5, GetObject's bytes against what was put (4 KB: every byte;
64 MB / 1 GB: the length each time and the SHA-256 once, untimed), every listed key.

1. Small objects (4 KB, 16 bodies of random bytes, x-amz-content-sha256 = their real SHA-256):
   ``--clients`` connections PUT new keys (``small/<client>-<n>``) for ``--warmup`` + ``--seconds``, then GET
   random keys of those (same clients, same window). Objects/s counts answers that passed the checks.
   Target: MLHarbor ≥ 5 × moto for PUT and for GET. Reference, no target: ``--clients`` threads of this
   process storing 4 KB files as the object store does (new file, write, fsync, rename, fsync of the
   folder) for the same window: what the file system allows one file per object.
2. Large objects (64 MB of random bytes, MB here being MiB; one PutObject from a file, Content-Length,
   x-amz-content-sha256 = the file's precomputed SHA-256; then UNSIGNED-PAYLOAD; GetObject read to the
   end): MB/s, against the physical limit on the same disk in this process: the same 64 MB written to a
   new file (1 MiB os.write calls) + fsync + rename + fsync of the folder (what the object store does), and
   read back in 1 MiB preads (page cache, as the server's read of an object it just wrote is). Also boto3
   ``upload_file`` / ``download_file`` (multipart, 8 MiB parts, its default 10 threads: what users see) and
   moto (reference). ``--large-rounds`` rounds, each side in turn; the best of each counts, as in
   ``kvs.py`` (a shared VM's disk varies run to run). Reference, no target: a plain process on the server
   core moving the 64 MB between a loopback socket and a file (receive + write + fsync + rename;
   sendfile), no HTTP, no hashing: the transport's limit, since page-cache reads outrun any loopback
   socket. Nothing is deleted before the end (on this VM's journal-less ext4, creating files right after
   mass deletes is slow). Target: MLHarbor ≥ 0.5 × raw for PUT (signed SHA-256) and for GET.
3. ListObjectsV2: ``--list-keys`` keys (``list/<000000>``: one flat folder, the local store's worst case) put
   through the API by ``--clients`` connections (the fill rate is small PUTs at scale); moto gets
   ``--moto-list-keys`` (20k by default: filling it with 100k takes minutes), and MLHarbor is listed at that
   count too (filled in two stages), so per-page times compare at equal size. Measured: one full listing
   (1,000 keys a page, following NextContinuationToken; every key must come back, in order), the first
   page, and a page deep in the listing (StartAfter the key 1,001 from the end: the last 1,000 keys),
   ``--page-repeats`` times each. Reported, no target.
4. RSS while streaming: the server's VmRSS (/proc/<pid>/status) sampled every 50 ms by a thread here: the
   median of 1 s idle before, then during one PutObject of ``--rss-mb`` (1,024; ``--quick`` 256) MB streamed
   from a file, and during its GetObject (the reader pauses ``--rss-pause`` s after a quarter, so a server
   that buffers what the client has not read yet would show it). Target: peak − before ≤ 64 MB, each way.

Usage::

    .venv/bin/python bench/s3.py              # ~6 min on 2 cores (make bench-s3)
    .venv/bin/python bench/s3.py --quick      # smoke run, ~1 min: 2 s windows, 5k keys, 256 MB
    .venv/bin/python bench/s3.py --parts 1,3 --list-keys 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import html
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import kvs  # bench/kvs.py: moto_server, cores, pinning, CPU time (puts src/ and the repo on sys.path)
import outputs
from harness import fmt, print_table, ratio, verdict
from outputs import CPU_HEADER, DISTURBED, Cpu, error_code

REGION = "us-east-1"
CREDENTIALS = Credentials("test", "test")
PERF = time.perf_counter
MIB = 1 << 20
SMALL_BYTES = 4096
LARGE_BYTES = 64 * MIB
PART_BYTES = 8 * MIB  # boto3 multipart part size
IO_CHUNK = MIB  # the object store's read size, and the raw peer's write and read size
BODY_POOL = 16  # distinct 4 KB bodies, cycled
PAGE_KEYS = 1000
RSS_INTERVAL_S = 0.05
SMALL_RATIO_TARGET = 5.0
LARGE_RATIO_TARGET = 0.5
RSS_GROWTH_TARGET_MB = 64.0
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"
TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)
KEY_RE = re.compile(rb"<Key>([^<]*)</Key>")
TOKEN_RE = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")


# --- signing ------------------------------------------------------------------------------------------------
def _encode(value: str, safe: str = "-_.~") -> str:
    return quote(value, safe=safe)


class Signer:
    """SigV4 header auth for S3, ~13 µs a request (botocore's S3SigV4Auth: ~130 µs, which on the shared
    client core would cap the load generator); ``check_signer`` proves it equal to botocore's."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url, self.netloc = url, parts.netloc
        assert parts.hostname is not None and parts.port is not None
        self.host, self.port = parts.hostname, parts.port
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = ("AWS4" + CREDENTIALS.secret_key).encode()
            for part in (day, REGION, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys[day] = key
        return key

    def headers(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        payload_hash: str = EMPTY_SHA256,
        amz_date: str | None = None,
    ) -> dict[str, str]:
        """The headers to send (Host, X-Amz-Date, X-Amz-Content-SHA256, Authorization)."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        signed = {"host": self.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
        names = ";".join(sorted(signed))
        canonical_query = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(query))
        lines = [f"{k}:{signed[k]}" for k in sorted(signed)]
        canonical = "\n".join(
            [method, _encode(path, "/-_.~"), canonical_query, *lines, "", names, payload_hash]
        )
        scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(amz_date[:8]), to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Host": self.netloc,
            "X-Amz-Date": amz_date,
            "X-Amz-Content-SHA256": payload_hash,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={CREDENTIALS.access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}",
        }

    def head(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        *,
        length: int = 0,
        payload_hash: str = EMPTY_SHA256,
    ) -> bytes:
        """A signed request's head (request line and headers), the body to follow."""
        target = _encode(path, "/-_.~") + ("?" + urlencode(query, quote_via=quote) if query else "")
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in self.headers(method, path, query, payload_hash).items()]
        lines += [f"Content-Length: {length}", "Connection: keep-alive"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def request(
        self, method: str, path: str, query: Sequence[tuple[str, str]] = (), body: bytes = b"", sha: str = ""
    ) -> bytes:
        """A whole signed request (``sha``: the body's SHA-256 hex when known, to save hashing it again)."""
        digest = sha or hashlib.sha256(body).hexdigest()
        return self.head(method, path, query, length=len(body), payload_hash=digest) + body


def check_signer() -> None:
    """Our signatures must equal botocore's S3SigV4Auth's for the same requests, or the run stops."""
    signer = Signer("http://127.0.0.1:4566")
    cases: list[tuple[str, str, list[tuple[str, str]], bytes]] = [
        ("PUT", "/bench-small/small/03-0000017", [], b"x" * SMALL_BYTES),
        ("GET", "/bench-list", [("list-type", "2"), ("max-keys", "1000"), ("prefix", "list/"),
                                ("continuation-token", "a+b/c=="), ("start-after", "list/098999")], b""),
    ]  # fmt: skip
    for method, path, query, body in cases:
        url = f"{signer.url}{_encode(path, '/-_.~')}" + (
            "?" + urlencode(query, quote_via=quote) if query else ""
        )
        request = AWSRequest(method=method, url=url, data=body)
        S3SigV4Auth(CREDENTIALS, "s3", REGION).add_auth(request)
        mine = signer.headers(
            method, path, query, hashlib.sha256(body).hexdigest(), request.headers["X-Amz-Date"]
        )
        if mine["Authorization"] != request.headers["Authorization"]:
            raise SystemExit(
                f"the benchmark's SigV4 signer disagrees with botocore for {method} {path}:\n"
                f"  ours:     {mine['Authorization']}\n  botocore: {request.headers['Authorization']}"
            )


# --- servers and connections --------------------------------------------------------------------------------
@dataclass
class Target:
    """A server under test: MLHarbor or moto_server."""

    label: str
    url: str
    pid: int
    signer: Signer = field(init=False)

    def __post_init__(self) -> None:
        self.signer = Signer(self.url)


@contextlib.contextmanager
def both_servers(workdir: Path, cores: kvs.Cores) -> Iterator[tuple[Target, Target]]:
    """A fresh MLHarbor and a fresh moto_server, each pinned to the server core (outputs.py starts them)."""
    with outputs.both_servers(workdir, cores) as (mlharbor, moto):
        yield Target(mlharbor.label, mlharbor.url, mlharbor.pid), Target(moto.label, moto.url, moto.pid)


def header(lower_head: bytes, name: bytes) -> str | None:
    at = lower_head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    end = lower_head.find(b"\r\n", at + 2)
    return lower_head[at + len(name) + 3 : end].strip().decode("latin-1")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes  # kept only when asked for
    length: int  # body bytes received


def exchange(
    target: Target,
    head: bytes,
    *,
    body: bytes = b"",
    body_file: Path | None = None,
    keep_body: bool = True,
    sink: Callable[[memoryview], None] | None = None,
) -> Response:
    """One request on a new blocking connection: large bodies go out with sendfile and come back through
    one reused buffer (``sink`` sees each piece), so the client costs little next to the server."""
    with socket.create_connection((target.signer.host, target.signer.port), timeout=600) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(head + body)
            if body_file is not None:
                with open(body_file, "rb") as source:
                    sock.sendfile(source)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before the whole body (an error): its answer says why
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError("the server closed the connection without an answer")
            buffer += piece
        end = buffer.index(b"\r\n\r\n") + 4
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        status = int(lines[0].split()[1])
        expected = int(headers.get("content-length", "0"))
        if "content-length" not in headers and headers.get("transfer-encoding"):
            raise ValueError(f"a {headers['transfer-encoding']} answer (this client reads Content-Length)")
        kept = bytearray()
        first = memoryview(buffer)[end:]
        received = len(first)
        if sink is not None:
            sink(first)
        if keep_body:
            kept += first
        chunk = memoryview(bytearray(IO_CHUNK))
        while received < expected:
            n = sock.recv_into(chunk, min(IO_CHUNK, expected - received))
            if not n:
                raise ConnectionError(f"the answer ended after {received} of {expected} body bytes")
            received += n
            if sink is not None:
                sink(chunk[:n])
            if keep_body:
                kept += chunk[:n]
        return Response(status, headers, bytes(kept), received)


def simple(target: Target, method: str, path: str, query: Sequence[tuple[str, str]] = ()) -> Response:
    return exchange(target, target.signer.head(method, path, query))


def create_bucket(target: Target, bucket: str) -> None:
    answer = simple(target, "PUT", f"/{bucket}")
    if answer.status != 200:
        raise RuntimeError(f"{target.label}: CreateBucket {bucket}: {error_code(answer.status, answer.body)}")


def answer_problem(answer: Response, what: str) -> str:
    return f"{what}: {error_code(answer.status, answer.body)}"


# --- part 1: small objects ----------------------------------------------------------------------------------
@dataclass
class Pool:
    """``BODY_POOL`` random 4 KB bodies with their SHA-256 (signed) and MD5 (the ETag to expect)."""

    bodies: list[bytes]
    sha: list[str]
    md5: list[str]

    @classmethod
    def make(cls, seed: int) -> Pool:
        rng = random.Random(seed)
        bodies = [rng.randbytes(SMALL_BYTES) for _ in range(BODY_POOL)]
        return cls(bodies, [hashlib.sha256(b).hexdigest() for b in bodies],
                   [hashlib.md5(b, usedforsecurity=False).hexdigest() for b in bodies])  # fmt: skip


@dataclass
class Window:
    """What the clients of one timed window saw."""

    label: str
    seconds: float
    count: int = 0  # answers that passed every check, within the window
    latencies: list[float] = field(default_factory=list)  # ms
    failures: Counter[str] = field(default_factory=Counter)  # any answer that failed a check (warm-up too)
    cpu: Cpu | None = None
    connects: int = 0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def problem(self) -> str | None:
        if self.failures:
            top = ", ".join(f"{why}: {n}" for why, n in self.failures.most_common(3))
            return f"{self.label}: {sum(self.failures.values())} failed request(s) ({top})"
        if not self.count:
            return f"{self.label}: nothing counted in the window"
        return None


Worker = Callable[[float, float], Any]  # (t_measure, t_end) → a coroutine


async def timed(window: Window, pid: int, warmup: float, workers: list[Worker]) -> None:
    """Run ``workers`` over ``warmup`` + the window, with CPU marks at the window's ends."""
    t_measure = PERF() + warmup
    t_end = t_measure + window.seconds
    marks: list[tuple[float, float, float, float]] = []

    async def monitor() -> None:
        for at in (t_measure, t_end):
            await asyncio.sleep(max(0.0, at - PERF()))
            marks.append(Cpu.mark(pid))

    try:
        await asyncio.wait_for(
            asyncio.gather(monitor(), *(w(t_measure, t_end) for w in workers)), warmup + window.seconds + 60
        )
    except TimeoutError:
        window.failures["the window did not end within 60 s of its end (server stopped answering)"] += 1
    if len(marks) == 2:
        window.cpu = Cpu.between(*marks)


def note(window: Window, t_measure: float, start: float, end: float, problem: str | None) -> None:
    if problem is not None:
        window.failures[problem if end >= t_measure else f"(warm-up) {problem}"] += 1
    elif t_measure <= end:
        window.count += 1
        window.latencies.append((end - start) * 1000)


def put_worker(
    target: Target, bucket: str, client: int, pool: Pool, window: Window, written: list[tuple[str, int]]
) -> Worker:
    async def run(t_measure: float, t_end: float) -> None:
        conn, n = outputs.Connection(target.url), 0
        while PERF() < t_end:
            i = (client + n) % BODY_POOL
            key = f"small/{client:02d}-{n:07d}"
            n += 1
            payload = target.signer.request("PUT", f"/{bucket}/{key}", body=pool.bodies[i], sha=pool.sha[i])
            start = PERF()
            try:
                status, lower, body = await conn.exchange(payload)
            except TRANSPORT_ERRORS as exc:
                window.failures[f"transport: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.01)
                continue
            end = PERF()
            if end > t_end:
                break
            problem = None
            if status != 200:
                problem = error_code(status, body)
            elif header(lower, b"etag") != f'"{pool.md5[i]}"':
                problem = f"ETag {header(lower, b'etag')} is not the body's MD5"
            else:
                written.append((key, i))
            note(window, t_measure, start, end, problem)
        window.connects += conn.connects
        conn.close()

    return run


def get_worker(
    target: Target, bucket: str, client: int, pool: Pool, window: Window, written: list[tuple[str, int]]
) -> Worker:
    async def run(t_measure: float, t_end: float) -> None:
        conn, rng = outputs.Connection(target.url), random.Random(client)
        while PERF() < t_end:
            key, i = written[rng.randrange(len(written))]
            payload = target.signer.request("GET", f"/{bucket}/{key}")
            start = PERF()
            try:
                status, _lower, body = await conn.exchange(payload)
            except TRANSPORT_ERRORS as exc:
                window.failures[f"transport: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.01)
                continue
            end = PERF()
            if end > t_end:
                break
            problem = None
            if status != 200:
                problem = error_code(status, body)
            elif body != pool.bodies[i]:
                problem = f"GetObject returned {len(body)} bytes that are not the object's"
            note(window, t_measure, start, end, problem)
        window.connects += conn.connects
        conn.close()

    return run


def raw_small_files(folder: Path, threads: int, warmup: float, seconds: float, pool: Pool) -> Window:
    """The file-per-object floor, for reference: ``threads`` threads of this process storing 4 KB files as
    the object store does (new temp file, write, fsync, rename, fsync of the folder), one folder, for the
    same window. No HTTP, no Python framework: what the disk and file system allow."""
    folder.mkdir(parents=True)
    window = Window("raw 4 KB files (reference)", seconds)
    lock = threading.Lock()
    t_measure = PERF() + warmup
    t_end = t_measure + seconds

    def run(thread: int) -> None:
        n, body = 0, pool.bodies[thread % BODY_POOL]
        while PERF() < t_end:
            name = f"{thread:02d}-{n:07d}"
            n += 1
            start = PERF()
            try:
                store_file(folder, name, memoryview(body))
            except OSError as exc:
                with lock:
                    window.failures[f"{type(exc).__name__}: {exc}"] += 1
                continue
            end = PERF()
            if end <= t_end:
                with lock:
                    note(window, t_measure, start, end, None)

    cpu = time.process_time()
    with ThreadPoolExecutor(threads) as executor:
        list(executor.map(run, range(threads)))
    busy = (time.process_time() - cpu) / (PERF() - t_measure + warmup)
    where = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    window.note = f"{threads} threads of this process (core {where}), {busy:.0%} of a core"
    return window


def part_small(
    tmp: Path, mine: Target, moto: Target, args: argparse.Namespace
) -> dict[str, tuple[Window, Window]]:
    print(f"\n== 1. Small objects ({SMALL_BYTES} B): {args.clients} connections, one request in flight each; "
          f"PutObject of new keys, then GetObject of random keys put; {args.warmup:g} s warm-up + "
          f"{args.seconds:g} s per window ==", flush=True)  # fmt: skip
    pool = Pool.make(1)
    results: dict[str, tuple[Window, Window]] = {}
    written: dict[str, list[tuple[str, int]]] = {mine.label: [], moto.label: []}
    for op, make in (("PUT", put_worker), ("GET", get_worker)):
        pair = []
        for target in (mine, moto):
            window = Window(target.label, args.seconds)
            try:
                if op == "PUT":
                    create_bucket(target, "bench-small")
                elif not written[target.label]:
                    raise RuntimeError("no object was put in the PUT window")
                keys = written[target.label]
                workers = [make(target, "bench-small", c, pool, window, keys) for c in range(args.clients)]
                kvs.run_async(timed(window, target.pid, args.warmup, workers))
            except Exception as exc:
                window.failures[f"{type(exc).__name__}: {exc}"] += 1
            pair.append(window)
        results[op] = (pair[0], pair[1])
    raw = raw_small_files(tmp / "small-files", args.clients, args.warmup, args.seconds, pool)
    rows = []
    for op, windows in [*results.items(), ("PUT", (raw,))]:
        for w in windows:
            p50, p99, _ = kvs.percentiles(w.latencies)
            failed = ", ".join(f"{why}: {n}" for why, n in w.failures.most_common(2)) or "0"
            rows.append([op, w.label, f"{w.rate:,.0f}", str(w.count), fmt(p50, ".2f"), fmt(p99, ".2f"),
                         str(w.cpu or "n/a"), str(w.connects), failed])  # fmt: skip
    print_table(["op", "server", "objects/s", "requests", "p50 ms", "p99 ms", CPU_HEADER, "connects",
                 "failed"], rows, right={2, 3, 4, 5, 6, 7})  # fmt: skip
    for op, (a, b) in results.items():
        print(f"  {op}: MLHarbor / moto = {fmt(ratio(a.rate, b.rate), '.2f', 'x')}")
    print(
        f"  raw 4 KB files (new file, write, fsync, rename, fsync folder; reference, no target): {raw.note}"
    )
    return results


# --- part 2: large objects ----------------------------------------------------------------------------------
@dataclass
class Large:
    """MB/s per run of each way of moving 64 MB, and what went wrong."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (server, client) CPU s per run
    problems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, label: str, seconds: float, cpu: tuple[float, float] = (0.0, 0.0)) -> None:
        self.runs.setdefault(label, []).append(LARGE_BYTES / MIB / seconds)
        self.cpu.setdefault(label, []).append(cpu)

    def fail(self, label: str, why: str) -> None:
        self.problems.setdefault(label, []).append(why)
        self.runs.setdefault(label, [])

    def best(self, label: str) -> float | None:
        return max(self.runs.get(label) or [0.0]) or None

    def problem(self, label: str) -> str | None:
        found = self.problems.get(label)
        return f"{label}: {'; '.join(found[:2])}" if found else None


def write_random(path: Path, size: int, seed: int) -> tuple[str, str]:
    """A file of ``size`` random bytes (8 MiB blocks, each stamped with its number, so no two are alike),
    not fsync'd (the source sits in the page cache); returns its (SHA-256, MD5) hex."""
    rng = random.Random(seed)
    block = bytearray(rng.randbytes(8 * MIB))
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "wb") as out:
        for n, offset in enumerate(range(0, size, len(block))):
            block[:8] = n.to_bytes(8, "little")
            piece = memoryview(block)[: min(len(block), size - offset)]
            out.write(piece)
            sha.update(piece)
            md5.update(piece)
    return sha.hexdigest(), md5.hexdigest()


def store_file(folder: Path, name: str, data: memoryview) -> None:
    """Store ``data`` as the object store does: a new file, written in 1 MiB os.write calls, fsync'd,
    renamed into place, the folder fsync'd."""
    final, temp = folder / name, folder / f".tmp-{name}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        offset = 0
        while offset < len(data):
            offset += os.write(fd, data[offset : offset + IO_CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, final)
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def raw_write(folder: Path, name: str, data: memoryview) -> float:
    """Seconds to store ``data`` with ``store_file``."""
    start = PERF()
    store_file(folder, name, data)
    return PERF() - start


def raw_read(path: Path) -> float:
    """Seconds to read a file in 1 MiB preads (a new bytes object each, as the server's reader makes)."""
    start = PERF()
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while data := os.pread(fd, IO_CHUNK, offset):
            offset += len(data)
    finally:
        os.close(fd)
    if offset != LARGE_BYTES:
        raise OSError(f"read {offset} bytes of {LARGE_BYTES}")
    return PERF() - start


def timed_call(pid: int, action: Callable[[], Any]) -> tuple[float, tuple[float, float], Any]:
    """(seconds, (server CPU s, this process's CPU s), result)."""
    server0, client0, start = kvs.cpu_seconds(pid), time.process_time(), PERF()
    result = action()
    seconds = PERF() - start
    return seconds, (kvs.cpu_seconds(pid) - server0, time.process_time() - client0), result


def put_file(target: Target, bucket: str, key: str, path: Path, size: int, payload_hash: str) -> Response:
    head = target.signer.head("PUT", f"/{bucket}/{key}", length=size, payload_hash=payload_hash)
    return exchange(target, head, body_file=path)


def get_object(
    target: Target, bucket: str, key: str, sink: Callable[[memoryview], None] | None = None
) -> Response:
    return exchange(target, target.signer.head("GET", f"/{bucket}/{key}"), keep_body=False, sink=sink)


def s3_client(target: Target) -> Any:
    """boto3 as users configure it for a local endpoint (path-style), no retries: a benchmark sees errors."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=target.url, region_name=REGION, aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"},
                      read_timeout=300),
    )  # fmt: skip


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while data := source.read(IO_CHUNK):
            digest.update(data)
    return digest.hexdigest()


# The transport's limit, for reference: a plain process on the server core moving the same bytes between a
# loopback socket and a file, with no HTTP and no hashing. "PUT <path> <size>": receive into a new file +
# fsync + rename + fsync of the folder, then answer "OK"; "GET <path> <size>": sendfile the file.
SOCKET_PEER = r"""
import os, socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
buffer = memoryview(bytearray(1 << 20))
while True:
    conn, _ = listener.accept()
    with conn:
        head = b""
        while b"\n" not in head:
            piece = conn.recv(4096)
            if not piece:
                break
            head += piece
        if b"\n" not in head:
            continue
        line, _, rest = head.partition(b"\n")
        op, path, size = line.decode().split()
        size = int(size)
        if op == "GET":
            with open(path, "rb") as source:
                offset = 0
                while offset < size:
                    offset += os.sendfile(conn.fileno(), source.fileno(), offset, size - offset)
            continue
        temp = path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

        def write_all(view):
            while view:
                view = view[os.write(fd, view):]

        write_all(memoryview(rest))
        got = len(rest)
        while got < size:
            n = conn.recv_into(buffer, min(len(buffer), size - got))
            if not n:
                break
            write_all(buffer[:n])
            got += n
        os.fsync(fd)
        os.close(fd)
        os.replace(temp, path)
        folder = os.open(os.path.dirname(path), os.O_RDONLY)
        os.fsync(folder)
        os.close(folder)
        conn.sendall(b"OK %d\n" % got)
"""


@contextlib.contextmanager
def socket_peer(cores: kvs.Cores) -> Iterator[int]:
    """``SOCKET_PEER`` running on the server core; yields its port."""
    proc = subprocess.Popen([sys.executable, "-c", SOCKET_PEER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        if cores.server is not None:
            kvs.pin(proc.pid, cores.server)
        yield port
    finally:
        proc.kill()
        proc.wait()


def socket_transfer(port: int, op: str, path: Path, source: Path | None) -> float:
    """Seconds for one transfer with ``SOCKET_PEER``: PUT sends ``source`` (sendfile) and waits for the
    peer's "OK <bytes>" (after its fsyncs); GET reads ``LARGE_BYTES`` with recv_into."""
    start = PERF()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        sock.sendall(f"{op} {path} {LARGE_BYTES}\n".encode())
        if op == "PUT":
            assert source is not None
            with open(source, "rb") as data:
                sock.sendfile(data)
            answer = sock.makefile("rb").readline()
            if answer.strip() != f"OK {LARGE_BYTES}".encode():
                raise RuntimeError(f"the socket peer answered {answer!r}")
        else:
            chunk, received = memoryview(bytearray(IO_CHUNK)), 0
            while received < LARGE_BYTES:
                n = sock.recv_into(chunk)
                if not n:
                    raise ConnectionError(f"the socket peer sent {received} of {LARGE_BYTES} bytes")
                received += n
    return PERF() - start


LARGE_WAYS = (
    ("raw write", "raw file: write + fsync + rename + fsync folder"),
    ("raw read", "raw file: read (page cache)"),
    ("socket write", "no HTTP: loopback socket → file + fsync + rename (ref.)"),
    ("socket read", "no HTTP: file → loopback socket, sendfile (ref.)"),
    ("PUT sha256", "MLHarbor PutObject, x-amz-content-sha256 = SHA-256"),
    ("PUT unsigned", "MLHarbor PutObject, UNSIGNED-PAYLOAD"),
    ("GET", "MLHarbor GetObject"),
    ("boto3 upload", "MLHarbor boto3 upload_file (8 MiB parts, 10 threads)"),
    ("boto3 download", "MLHarbor boto3 download_file (8 MiB parts, 10 threads)"),
    ("moto PUT", "moto PutObject, x-amz-content-sha256 = SHA-256"),
    ("moto GET", "moto GetObject"),
)


def part_large(tmp: Path, cores: kvs.Cores, mine: Target, moto: Target, args: argparse.Namespace) -> Large:
    print(f"\n== 2. Large objects ({LARGE_BYTES // MIB} MB): one PutObject streamed from a file, GetObject "
          f"read to the end; vs the same bytes as a plain file in {tmp} (same disk); {args.large_rounds} "
          f"round(s), the best of each counts ==", flush=True)  # fmt: skip
    folder = tmp / "large"
    (folder / "raw").mkdir(parents=True)
    source = folder / "source.bin"
    sha, md5 = write_random(source, LARGE_BYTES, 2)
    data = memoryview(source.read_bytes())  # the raw writer's bytes are in memory, as the server's are
    result = Large()
    boto = s3_client(mine)
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)
    try:
        create_bucket(mine, "bench-large")
        create_bucket(moto, "bench-large")
    except Exception as exc:
        for label, _ in LARGE_WAYS:
            result.fail(label, f"{type(exc).__name__}: {exc}")
        return result

    def put(label: str, target: Target, key: str, payload_hash: str) -> None:
        seconds, cpu, answer = timed_call(
            target.pid, lambda: put_file(target, "bench-large", key, source, LARGE_BYTES, payload_hash)
        )
        if answer.status != 200:
            result.fail(label, answer_problem(answer, "PutObject"))
        elif answer.headers.get("etag") != f'"{md5}"':
            result.fail(label, f"ETag {answer.headers.get('etag')} is not the body's MD5")
        else:
            result.add(label, seconds, cpu)

    def get(label: str, target: Target, key: str) -> None:
        seconds, cpu, answer = timed_call(target.pid, lambda: get_object(target, "bench-large", key))
        if answer.status != 200 or answer.length != LARGE_BYTES:
            result.fail(label, f"GetObject: HTTP {answer.status}, {answer.length} bytes")
        else:
            result.add(label, seconds, cpu)

    def attempt(label: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:
            result.fail(label, f"{type(exc).__name__}: {exc}")

    def one_round(r: int, port: int) -> None:
        raw = folder / "raw"
        attempt("raw write", lambda: result.add("raw write", raw_write(raw, f"{r}.bin", data)))
        attempt("raw read", lambda: result.add("raw read", raw_read(raw / f"{r}.bin")))
        attempt(
            "socket write",
            lambda: result.add("socket write", socket_transfer(port, "PUT", raw / f"s{r}.bin", source)),
        )
        attempt(
            "socket read",
            lambda: result.add("socket read", socket_transfer(port, "GET", raw / f"{r}.bin", None)),
        )
        attempt("PUT sha256", lambda: put("PUT sha256", mine, f"large/{r}-sha256", sha))
        attempt("PUT unsigned", lambda: put("PUT unsigned", mine, f"large/{r}-unsigned", UNSIGNED))
        attempt("GET", lambda: get("GET", mine, f"large/{r}-sha256"))
        key, downloaded = f"large/{r}-boto3", folder / f"download-{r}.bin"

        def upload() -> None:
            seconds, cpu, _ = timed_call(
                mine.pid, lambda: boto.upload_file(str(source), "bench-large", key, Config=transfer)
            )
            size = boto.head_object(Bucket="bench-large", Key=key)["ContentLength"]
            if size != LARGE_BYTES:
                raise RuntimeError(f"the uploaded object has {size} bytes")
            result.add("boto3 upload", seconds, cpu)

        def download() -> None:
            seconds, cpu, _ = timed_call(
                mine.pid, lambda: boto.download_file("bench-large", key, str(downloaded), Config=transfer)
            )
            if sha256_of(downloaded) != sha:  # untimed
                raise RuntimeError("download_file wrote bytes that are not the object's")
            result.add("boto3 download", seconds, cpu)

        attempt("boto3 upload", upload)
        attempt("boto3 download", download)
        attempt("moto PUT", lambda: put("moto PUT", moto, f"large/{r}", sha))
        attempt("moto GET", lambda: get("moto GET", moto, f"large/{r}"))

    with socket_peer(cores) as port:
        for r in range(args.large_rounds):
            one_round(r, port)
    # Untimed: the bytes themselves, once per object kind (the timed reads check only the length).
    for label, target, key in (
        ("GET", mine, "large/0-sha256"),
        ("PUT unsigned", mine, "large/0-unsigned"),
        ("moto GET", moto, "large/0"),
    ):
        if not result.runs.get(label):
            continue  # failed already, and said why
        digest = hashlib.sha256()
        with contextlib.suppress(Exception):
            get_object(target, "bench-large", key, sink=digest.update)
        if digest.hexdigest() != sha:
            result.fail(label, f"{key} read back is not the bytes put")

    rows = []
    for label, description in LARGE_WAYS:
        runs = result.runs.get(label) or []
        cpus = result.cpu.get(label) or []
        server_ms = statistics.median(c[0] for c in cpus) * 1000 / (LARGE_BYTES / MIB) if cpus else None
        client_ms = statistics.median(c[1] for c in cpus) * 1000 / (LARGE_BYTES / MIB) if cpus else None
        raw = label.startswith(("raw", "socket"))  # no server process of ours: no CPU to show
        rows.append([description, fmt(result.best(label), ".0f"), " ".join(f"{x:.0f}" for x in runs) or "-",
                     "-" if raw else fmt(server_ms, ".2f"), fmt(client_ms, ".2f") if not raw else "-",
                     result.problem(label) or "-"])  # fmt: skip
    print_table(["way", "best MB/s", "runs MB/s", "server CPU ms/MB", "client CPU ms/MB", "problem"], rows,
                right={1, 2, 3, 4})  # fmt: skip
    return result


# --- part 3: ListObjectsV2 ----------------------------------------------------------------------------------
@dataclass
class Listing:
    label: str
    keys: int
    full_seconds: float | None = None
    page_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)
    deep_ms: list[float] = field(default_factory=list)
    problem: str | None = None


@dataclass
class ListResult:
    label: str
    fill_seconds: float = 0.0
    filled: int = 0
    listings: list[Listing] = field(default_factory=list)
    problem: str | None = None


async def fill(target: Target, bucket: str, keys: Sequence[str], clients: int, pool: Pool) -> Counter[str]:
    """PUT every key, ``clients`` connections at once; the failures, by reason."""
    failures: Counter[str] = Counter()
    todo = iter(range(len(keys)))

    async def worker() -> None:
        conn = outputs.Connection(target.url)
        try:
            for n in todo:
                i = n % BODY_POOL
                payload = target.signer.request(
                    "PUT", f"/{bucket}/{keys[n]}", body=pool.bodies[i], sha=pool.sha[i]
                )
                try:
                    status, _lower, body = await conn.exchange(payload)
                except TRANSPORT_ERRORS as exc:
                    failures[f"transport: {type(exc).__name__}"] += 1
                    continue
                if status != 200:
                    failures[error_code(status, body)] += 1
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return failures


async def list_pages(
    target: Target, bucket: str, *, start_after: str = "", max_pages: int = 0
) -> tuple[list[str], list[float], bool]:
    """ListObjectsV2 (prefix list/, 1,000 a page) following NextContinuationToken: (keys, ms per page,
    whether the last page read was truncated). Raises on any failed answer."""
    conn = outputs.Connection(target.url)
    keys: list[str] = []
    times: list[float] = []
    token = ""
    try:
        while True:
            query = [("list-type", "2"), ("max-keys", str(PAGE_KEYS)), ("prefix", "list/")]
            query += [("continuation-token", token)] if token else []
            query += [("start-after", start_after)] if start_after else []
            payload = target.signer.request("GET", f"/{bucket}", query)
            start = PERF()
            status, _lower, body = await conn.exchange(payload)
            times.append((PERF() - start) * 1000)
            if status != 200:
                raise RuntimeError(f"ListObjectsV2: {error_code(status, body)}")
            keys += [html.unescape(k.decode()) for k in KEY_RE.findall(body)]
            truncated = b"<IsTruncated>true</IsTruncated>" in body
            if not truncated or (max_pages and len(times) >= max_pages):
                return keys, times, truncated
            found = TOKEN_RE.search(body)
            if found is None:
                raise RuntimeError("IsTruncated true without a NextContinuationToken")
            token = html.unescape(found.group(1).decode())
    finally:
        conn.close()


def measure_listing(target: Target, bucket: str, keys: list[str], repeats: int) -> Listing:
    """A full listing, the first page and a deep page (``repeats`` times each), every key checked."""
    listing = Listing(target.label, len(keys))
    try:
        start = PERF()
        found, listing.page_ms, _ = kvs.run_async(list_pages(target, bucket))
        listing.full_seconds = PERF() - start
        if found != keys:
            missing = len(set(keys) - set(found))
            raise RuntimeError(
                f"the full listing returned {len(found)} keys ({missing} missing, or out of order)"
            )
        for _ in range(repeats):
            found, times, truncated = kvs.run_async(list_pages(target, bucket, max_pages=1))
            listing.first_ms += times
            if found != keys[:PAGE_KEYS] or truncated != (len(keys) > PAGE_KEYS):
                raise RuntimeError("the first page is not the first 1,000 keys")
        after = keys[-PAGE_KEYS - 1]
        for _ in range(repeats):
            found, times, truncated = kvs.run_async(
                list_pages(target, bucket, start_after=after, max_pages=1)
            )
            listing.deep_ms += times
            if found != keys[-PAGE_KEYS:] or truncated:
                raise RuntimeError(f"StartAfter {after} did not return exactly the last 1,000 keys")
    except Exception as exc:
        listing.problem = f"{type(exc).__name__}: {exc}"
    return listing


def part_list(mine: Target, moto: Target, args: argparse.Namespace) -> list[ListResult]:
    print(f"\n== 3. ListObjectsV2: {args.list_keys:,} keys in MLHarbor, {args.moto_list_keys:,} in moto "
          f"(MLHarbor listed at both sizes), {SMALL_BYTES} B objects list/<n> put by {args.clients} "
          f"connections; one full listing ({PAGE_KEYS:,} a page), the first page and the page after the "
          f"key {PAGE_KEYS + 1:,} from the end, {args.page_repeats} times each ==", flush=True)  # fmt: skip
    pool = Pool.make(3)
    results = []
    for target, total in ((mine, args.list_keys), (moto, args.moto_list_keys)):
        result = ListResult(target.label)
        results.append(result)
        keys = [f"list/{i:06d}" for i in range(total)]
        stages = sorted({min(args.moto_list_keys, total), total})
        try:
            create_bucket(target, "bench-list")
            for size in stages:
                start = PERF()
                failures = kvs.run_async(
                    fill(target, "bench-list", keys[result.filled : size], args.clients, pool)
                )
                result.fill_seconds += PERF() - start
                if failures:
                    top = ", ".join(f"{why}: {n}" for why, n in failures.most_common(3))
                    raise RuntimeError(f"{sum(failures.values())} PutObject(s) failed while filling ({top})")
                result.filled = size
                listing = measure_listing(target, "bench-list", keys[:size], args.page_repeats)
                result.listings.append(listing)
                full = fmt(listing.full_seconds, ".2f")
                print(f"  {target.label}: {size:,} keys put in {result.fill_seconds:.1f} s so far; full "
                      f"listing {full} s" + (f" ({listing.problem})" if listing.problem else ""),
                      flush=True)  # fmt: skip
        except Exception as exc:
            result.problem = f"{type(exc).__name__}: {exc}"
    rows = []
    for result in results:
        rate = result.filled / result.fill_seconds if result.fill_seconds and result.filled else None
        for listing in result.listings or [Listing(result.label, 0)]:
            p50, p99, _ = kvs.percentiles(listing.page_ms)
            f50, _, _ = kvs.percentiles(listing.first_ms)
            d50, d99, _ = kvs.percentiles(listing.deep_ms)
            rows.append([result.label, f"{listing.keys:,}", fmt(rate, ",.0f"),
                         fmt(listing.full_seconds, ".2f"), str(len(listing.page_ms)), fmt(p50, ".1f"),
                         fmt(p99, ".1f"), fmt(f50, ".1f"), fmt(d50, ".1f"), fmt(d99, ".1f"),
                         listing.problem or result.problem or "-"])  # fmt: skip
    print_table(["server", "keys", "fill PUT/s", "full listing s", "pages", "page p50 ms", "page p99 ms",
                 "first page p50 ms", "deep page p50 ms", "deep p99 ms", "problem"], rows,
                right=set(range(1, 10)))  # fmt: skip
    return results


# --- part 4: RSS while streaming ----------------------------------------------------------------------------
def vm_rss(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


class RssSampler(threading.Thread):
    """VmRSS of one process every ``RSS_INTERVAL_S``, with when it was read."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            rss = vm_rss(self.pid)
            if rss is not None:
                self.samples.append((PERF(), rss))
            self.done.wait(RSS_INTERVAL_S)

    def between(self, start: float, end: float) -> list[int]:
        return [rss for at, rss in self.samples if start <= at <= end]


@dataclass
class Rss:
    size: int = 0
    before: float | None = None  # bytes, median of the idle second before
    upload_peak: int | None = None
    download_peak: int | None = None
    after: int | None = None
    upload_s: float | None = None
    download_s: float | None = None
    samples: tuple[int, int] = (0, 0)
    problem: str | None = None

    def growth(self, peak: int | None) -> float | None:
        return None if peak is None or self.before is None else (peak - self.before) / MIB


def part_rss(tmp: Path, mine: Target, args: argparse.Namespace) -> Rss:
    size = args.rss_mb * MIB
    print(f"\n== 4. MLHarbor's RSS (VmRSS every {RSS_INTERVAL_S * 1000:.0f} ms) while one {args.rss_mb:,} MB "
          f"object streams in (one PutObject from a file, signed SHA-256) and out (GetObject, the reader "
          f"pausing {args.rss_pause:g} s after a quarter); target: growth ≤ {RSS_GROWTH_TARGET_MB:.0f} MB ==",
          flush=True)  # fmt: skip
    result = Rss(size)
    source = tmp / "rss-source.bin"
    sampler = RssSampler(mine.pid)
    try:
        create_bucket(mine, "bench-rss")
        sha, md5 = write_random(source, size, 4)
        sampler.start()
        time.sleep(1.0)
        t0 = PERF()
        answer = put_file(mine, "bench-rss", "big", source, size, sha)
        t1 = PERF()
        result.upload_s = t1 - t0
        if answer.status != 200 or answer.headers.get("etag") != f'"{md5}"':
            raise RuntimeError(f"PutObject: HTTP {answer.status}, ETag {answer.headers.get('etag')} "
                               f"(expected \"{md5}\"): {error_code(answer.status, answer.body)}")  # fmt: skip
        time.sleep(0.5)
        digest = hashlib.sha256()
        seen = [0]

        def sink(piece: memoryview) -> None:
            digest.update(piece)
            before = seen[0]
            seen[0] += len(piece)
            if before < size // 4 <= seen[0]:
                time.sleep(args.rss_pause)  # stop reading: the server must stop sending, not buffer

        t2 = PERF()
        answer = get_object(mine, "bench-rss", "big", sink=sink)
        t3 = PERF()
        result.download_s = t3 - t2 - args.rss_pause
        time.sleep(0.5)
        if answer.status != 200 or answer.length != size or digest.hexdigest() != sha:
            raise RuntimeError(f"GetObject: HTTP {answer.status}, {answer.length} bytes, "
                               f"{'the' if digest.hexdigest() == sha else 'NOT the'} bytes put")  # fmt: skip
        sampler.done.set()
        sampler.join()
        idle = sampler.between(t0 - 1.0, t0)
        up, down = sampler.between(t0, t1), sampler.between(t2, t3)
        result.samples = (len(up), len(down))
        if not idle or not up or not down:
            raise RuntimeError("VmRSS could not be sampled")
        result.before = statistics.median(idle)
        result.upload_peak, result.download_peak = max(up), max(down)
        result.after = sampler.samples[-1][1]
        answer = simple(mine, "DELETE", "/bench-rss/big")
        if answer.status != 204:
            print(f"  (DeleteObject answered {error_code(answer.status, answer.body)})")
    except Exception as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
    finally:
        sampler.done.set()
        source.unlink(missing_ok=True)
    mb = MIB

    def show(value: float | None) -> str:
        return fmt(None if value is None else value / mb, ",.1f")

    rows = [
        ["upload (PutObject)", show(result.before), show(result.upload_peak),
         fmt(result.growth(result.upload_peak), "+,.1f"),
         fmt(size / mb / result.upload_s if result.upload_s else None, ",.0f"), str(result.samples[0])],
        ["download (GetObject)", show(result.before), show(result.download_peak),
         fmt(result.growth(result.download_peak), "+,.1f"),
         fmt(size / mb / result.download_s if result.download_s else None, ",.0f"), str(result.samples[1])],
    ]  # fmt: skip
    print_table(
        ["way", "RSS before MB", "peak MB", "growth MB", "MB/s", "samples"], rows, right={1, 2, 3, 4, 5}
    )
    print(f"  RSS after both: {show(result.after)} MB; download MB/s excludes the pause, and this "
          f"process hashed every byte it read"
          + (f"; problem: {result.problem}" if result.problem else ""))  # fmt: skip
    return result


# --- main ---------------------------------------------------------------------------------------------------
def disturbed(*cpus: Cpu | None) -> str:
    busy = [c.other for c in cpus if c is not None and c.other > DISTURBED]
    return f" — WARNING: disturbed, other processes used {max(busy):.0%} of a core" if busy else ""


def report_targets(
    small: dict[str, tuple[Window, Window]] | None,
    large: Large | None,
    listing: list[ListResult] | None,
    rss: Rss | None,
) -> None:
    print("\n=== Targets ===")
    if small is not None:
        for op, name in (("PUT", "PutObject"), ("GET", "GetObject")):
            mine, moto = small[op]
            failed = f"the peer failed: {moto.problem()}" if moto.problem() else mine.problem()
            versus = ratio(mine.rate, moto.rate, numerator_name="MLHarbor's objects/s",
                           denominator_name="moto's objects/s", failed=failed)  # fmt: skip
            print(f"1. {name} {SMALL_BYTES} B objects/s, MLHarbor / moto: {mine.rate:,.0f} / "
                  f"{moto.rate:,.0f} = {fmt(versus, '.2f', 'x')} (target ≥ {SMALL_RATIO_TARGET:.0f}x: "
                  f"{verdict(versus, SMALL_RATIO_TARGET)}){disturbed(mine.cpu, moto.cpu)}")  # fmt: skip
    if large is not None:
        for ours, raw, name in (
            ("PUT sha256", "raw write", "PutObject (signed SHA-256)"),
            ("GET", "raw read", "GetObject"),
        ):
            failed = f"the peer failed: {large.problem(raw)}" if large.problem(raw) else large.problem(ours)
            versus = ratio(large.best(ours), large.best(raw), numerator_name=f"MLHarbor's {ours} MB/s",
                           denominator_name=f"the {raw} MB/s", failed=failed)  # fmt: skip
            print(f"2. {name} {LARGE_BYTES // MIB} MB, MLHarbor / {raw} file: "
                  f"{fmt(large.best(ours), '.0f')} / {fmt(large.best(raw), '.0f')} MB/s = "
                  f"{fmt(versus, '.2f', 'x')} (target ≥ {LARGE_RATIO_TARGET}x: "
                  f"{verdict(versus, LARGE_RATIO_TARGET)})")  # fmt: skip
        for label, raw in (
            ("PUT unsigned", "raw write"),
            ("boto3 upload", "raw write"),
            ("boto3 download", "raw read"),
        ):
            value = ratio(
                large.best(label), large.best(raw), failed=large.problem(label) or large.problem(raw)
            )
            best = fmt(large.best(label), ".0f")
            print(f"   {label}: {best} MB/s = {fmt(value, '.2f', 'x')} {raw} (reported, no target)")
    if listing is not None:
        by = {r.label: r for r in listing}
        mine, moto = by.get("MLHarbor"), by.get("moto")
        for result in (mine, moto):
            if result is None:
                continue
            for item in result.listings:
                p50, _, _ = kvs.percentiles(item.page_ms)
                d50, _, _ = kvs.percentiles(item.deep_ms)
                print(f"3. ListObjectsV2, {result.label} at {item.keys:,} keys: all in "
                      f"{fmt(item.full_seconds, '.2f')} s, page p50 {fmt(p50, '.1f')} ms, deep page p50 "
                      f"{fmt(d50, '.1f')} ms"
                      + (f" ({item.problem})" if item.problem else ""))  # fmt: skip
            if result.problem:
                print(f"3. ListObjectsV2, {result.label}: {result.problem}")
        if mine and moto and moto.listings:
            same = next((x for x in mine.listings if x.keys == moto.listings[-1].keys), None)
            if same is not None:
                theirs = moto.listings[-1]
                pages = ratio(kvs.percentiles(theirs.page_ms)[0], kvs.percentiles(same.page_ms)[0],
                              failed=same.problem or theirs.problem)  # fmt: skip
                print(f"   at {same.keys:,} keys a page takes moto / MLHarbor = {fmt(pages, '.2f', 'x')} "
                      f"as long (reported, no target)")  # fmt: skip
    if rss is not None:
        for way, peak in (("upload", rss.upload_peak), ("download", rss.download_peak)):
            growth = rss.growth(peak)
            # Judged on the peak against before + the allowance (both positive), so a growth of zero or
            # less, which is honest here, goes through harness.verdict like every other number.
            limit = None if rss.before is None else rss.before / MIB + RSS_GROWTH_TARGET_MB
            judged = verdict(
                None if peak is None else peak / MIB, limit or 0, at_most=True, problem=rss.problem
            )
            print(f"4. RSS growth while streaming {rss.size // MIB:,} MB, {way}: {fmt(growth, '+,.1f')} MB "
                  f"(target ≤ {RSS_GROWTH_TARGET_MB:.0f} MB: {judged})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run")
    parser.add_argument("--clients", type=int, default=16, help="connections for small objects and fills")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window of part 1")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each window")
    parser.add_argument("--large-rounds", type=int, default=3)
    parser.add_argument("--list-keys", type=int, default=100_000)
    parser.add_argument("--moto-list-keys", type=int, default=20_000, help="keys in moto's listed bucket")
    parser.add_argument("--page-repeats", type=int, default=20, help="first / deep page measurements")
    parser.add_argument("--rss-mb", type=int, default=1024, help="object size in part 4 (MB)")
    parser.add_argument("--rss-pause", type=float, default=2.0, help="s the reader stops after a quarter")
    parser.add_argument("--quick", action="store_true", help="smoke run (~1 min): every part, smaller")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.large_rounds, args.page_repeats = 2.0, 0.5, 1, 5
        args.list_keys, args.moto_list_keys, args.rss_mb, args.rss_pause = 5_000, 2_000, 256, 1.0
    args.moto_list_keys = min(args.moto_list_keys, args.list_keys)
    if min(args.clients, args.large_rounds, args.page_repeats, args.rss_mb) < 1 or args.seconds <= 0:
        parser.error("--clients, --seconds, --large-rounds, --page-repeats and --rss-mb must be positive")
    if args.list_keys <= PAGE_KEYS or args.moto_list_keys <= PAGE_KEYS:
        parser.error(f"--list-keys and --moto-list-keys must be above {PAGE_KEYS}")
    parts = {int(p) for p in args.parts.split(",") if p.strip()}
    for name in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL")]:
        os.environ.pop(name)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1"  # boto3 must not go through a proxy
    check_signer()

    cores = kvs.Cores.plan()
    placement = (
        "one core: servers and this process share it (nothing pinned)"
        if cores.server is None
        else f"MLHarbor and moto_server pinned to core {min(cores.server)} (one busy at a time), this "
        f"process (load generator, boto3, raw-disk peer, RSS sampler) to core "
        f"{min(cores.client or cores.all)}"
    )
    print(f"machine: {os.cpu_count()} cores; {placement}", flush=True)
    started = time.monotonic()
    small = large = listing = rss = None
    with tempfile.TemporaryDirectory(prefix="mlharbor-s3-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        print(
            f"data: {tmp} (MLHarbor's data folder and the raw-file peer's files are both in it)", flush=True
        )
        with cores.client_pinned(), both_servers(tmp / "servers", cores) as (mine, moto):
            if 1 in parts:
                small = part_small(tmp, mine, moto, args)
            if 2 in parts:
                large = part_large(tmp, cores, mine, moto, args)
            if 3 in parts:
                listing = part_list(mine, moto, args)
            if 4 in parts:
                rss = part_rss(tmp, mine, args)
        print(f"\n(cleaning up {tmp} ...)", flush=True)
    report_targets(small, large, listing, rss)
    print(f"\n(whole run: {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
