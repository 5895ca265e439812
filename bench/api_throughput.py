#!/usr/bin/env python3
"""API throughput benchmark: MLHarbor vs moto on two cheap calls.

For each server and each call the load generator keeps ``--clients`` persistent HTTP/1.1 keep-alive
connections busy (one request in flight per connection) for ``--warmup`` + ``--seconds`` seconds and
reports requests/s and p50/p99 latency over the measured window only.

Calls (awsJson 1.1, ``POST /`` with ``X-Amz-Target``, SigV4 signed with test/test in us-east-1):

* Rekognition ``DescribeStreamProcessor`` ``{"Name": "does-not-exist"}`` (MLHarbor: 400
  ResourceNotFoundException; moto does not implement it),
* Comprehend ``ListEntityRecognizers`` ``{}`` (200).

The load generator is built to cost as little CPU as possible, since it shares the machine with the
server: each request is signed once with botocore right before its phase (a SigV4 signature stays
valid for 5 minutes and the body never changes), serialised to raw bytes, and written as-is over raw
asyncio streams (uvloop when available). Responses are parsed by hand (status line, Content-Length or
chunked body). Only MLHarbor responses with the expected status and error type count towards its
requests/s; for moto every complete response counts and its status distribution is shown.

Usage::

    .venv/bin/python bench/api_throughput.py                      # start both servers, 32 clients, 20 s
    .venv/bin/python bench/api_throughput.py --seconds 5 --only mlharbor
    .venv/bin/python bench/api_throughput.py --mlharbor-url http://127.0.0.1:4580 --only mlharbor
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import harness  # bench/harness.py: server start/stop shared by the benchmarks

REGION = "us-east-1"
ACCESS_KEY = "test"
SECRET_KEY = "test"
P99_TARGET_MS = 10.0
RATIO_TARGET = 5.0
STARTUP_TIMEOUT_S = 60.0
SAMPLE_BODY_CHARS = 300

StatusKey = tuple[int, str | None]  # (HTTP status, AWS error type or None)


@dataclass(frozen=True, slots=True)
class ApiCall:
    name: str
    signing_name: str
    target: str
    body: bytes
    expected: StatusKey  # what MLHarbor must answer for the response to count


CALLS: tuple[ApiCall, ...] = (
    ApiCall(
        "DescribeStreamProcessor",
        "rekognition",
        "RekognitionService.DescribeStreamProcessor",
        b'{"Name": "does-not-exist"}',
        (400, "ResourceNotFoundException"),
    ),
    ApiCall(
        "ListEntityRecognizers",
        "comprehend",
        "Comprehend_20171127.ListEntityRecognizers",
        b"{}",
        (200, None),
    ),
)


@dataclass(slots=True)
class Target:
    label: str  # "mlharbor" or "moto"
    url: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or parts.hostname is None:
            raise SystemExit(f"only plain http:// URLs are supported, got {self.url!r}")
        return parts.hostname, parts.port or 80


@dataclass(slots=True)
class Stats:
    statuses: Counter[StatusKey] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[StatusKey, bytes] = field(default_factory=dict)
    connects: int = 0  # connections opened inside the measured window


@dataclass(slots=True)
class Result:
    call: ApiCall
    target: str
    window_s: float
    stats: Stats
    counted: int
    client_cpu_pct: float
    server_cpu_pct: float | None

    @property
    def rps(self) -> float:
        return self.counted / self.window_s if self.window_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        lat = self.stats.latencies
        if not lat:
            return None
        rank = max(0, min(len(lat) - 1, math.ceil(q * len(lat)) - 1))
        return lat[rank] * 1000.0

    @property
    def moto_not_implemented(self) -> bool:
        """moto answers calls it lacks with 5xx / NotImplemented; such numbers compare nothing."""
        if self.target != "moto":
            return False
        total = sum(self.stats.statuses.values())
        bad = sum(
            n
            for (status, etype), n in self.stats.statuses.items()
            if status >= 500 or (etype is not None and "notimplemented" in etype.lower())
        )
        return total > 0 and bad * 2 > total


# ------------------------------------------------------------------------------------------------
# Request preparation
# ------------------------------------------------------------------------------------------------


def presign(target: Target, call: ApiCall) -> bytes:
    """Sign once with botocore and return the raw HTTP/1.1 request bytes to send repeatedly."""
    parts = urlsplit(target.url)
    netloc = parts.netloc
    request = AWSRequest(
        method="POST",
        url=f"http://{netloc}/",
        data=call.body,
        headers={
            "Host": netloc,
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": call.target,
        },
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), call.signing_name, REGION).add_auth(request)
    lines = ["POST / HTTP/1.1"]
    for name, value in request.headers.items():
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        lines.append(f"{name}: {text}")
    lines.append(f"Content-Length: {len(call.body)}")
    lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + call.body


# ------------------------------------------------------------------------------------------------
# Load generator
# ------------------------------------------------------------------------------------------------


def _error_type(head: bytes, lower: bytes, body: bytes) -> str:
    """The AWS error code: the body's __type (awsJson), else x-amzn-ErrorType, else a guess."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        etype = doc.get("__type") or doc.get("code") or doc.get("Code")
        if isinstance(etype, str):
            return etype.rsplit("#", 1)[-1]
    idx = lower.find(b"\r\nx-amzn-errortype:")
    if idx >= 0:
        end = lower.find(b"\r\n", idx + 2)
        return head[idx + 19 : end].decode("latin-1").strip().split(":", 1)[0]
    if b"NotImplemented" in body or b"not yet implemented" in body:
        return "NotImplemented"
    return "non-JSON body"


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes, bytes, bool]:
    """Return (status, head, lowered head, body, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep = not (
        b"\r\nconnection: close" in lower or (head.startswith(b"HTTP/1.0") and b"keep-alive" not in lower)
    )
    idx = lower.find(b"\r\ncontent-length:")
    if idx >= 0:
        end = lower.find(b"\r\n", idx + 2)
        body = await reader.readexactly(int(lower[idx + 17 : end]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await reader.read()
        keep = False
    return status, head, lower, body, keep


async def _client(
    host: str,
    port: int,
    payload: bytes,
    t_measure: float,
    t_end: float,
    stats: Stats,
) -> None:
    perf = time.perf_counter
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    statuses = stats.statuses
    latencies = stats.latencies
    samples = stats.samples
    try:
        while perf() < t_end:
            # A request that must first (re)connect pays for it in its latency, as a real client would
            # (moto answers every request with "Connection: close").
            start = perf()
            if writer is None or reader is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError as exc:
                    stats.errors[f"connect: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                    continue
                if start >= t_measure:
                    stats.connects += 1
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                writer.write(payload)
                status, head, lower, body, keep = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                if perf() >= t_measure:
                    stats.errors[type(exc).__name__] += 1
                writer.close()
                reader = writer = None
                continue
            end = perf()
            if t_measure <= end <= t_end:
                key: StatusKey = (status, None if status < 300 else _error_type(head, lower, body))
                statuses[key] += 1
                latencies.append(end - start)
                if key not in samples:
                    samples[key] = body[:SAMPLE_BODY_CHARS]
            if not keep:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user+system) of a process and its live descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    by_parent: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        # after "pid (comm) ": state ppid ... utime(idx 11) stime(idx 12)
        child = int(entry)
        by_parent.setdefault(int(fields[1]), []).append(child)
        times[child] = (int(fields[11]) + int(fields[12])) / ticks
    if pid not in times:
        return None
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        total += times.get(current, 0.0)
        stack.extend(by_parent.get(current, []))
    return total


async def _run_phase(target: Target, call: ApiCall, clients: int, warmup: float, seconds: float) -> Result:
    host, port = target.host_port
    payload = presign(target, call)
    stats = Stats()
    now = time.perf_counter()
    t_measure = now + warmup
    t_end = t_measure + seconds
    server_pid = target.proc.pid if target.proc is not None else None
    cpu_marks: dict[str, tuple[float, float, float | None]] = {}

    async def monitor() -> None:
        for mark, at in (("start", t_measure), ("end", t_end)):
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            server_cpu = _cpu_seconds(server_pid) if server_pid is not None else None
            cpu_marks[mark] = (time.perf_counter(), time.process_time(), server_cpu)

    tasks = [_client(host, port, payload, t_measure, t_end, stats) for _ in range(clients)]
    try:
        await asyncio.wait_for(asyncio.gather(monitor(), *tasks), timeout=warmup + seconds + 30.0)
    except TimeoutError:
        stats.errors["phase timed out (server stopped answering)"] += 1
    client_pct = 0.0
    server_pct: float | None = None
    if "start" in cpu_marks and "end" in cpu_marks:
        (w0, c0, s0), (w1, c1, s1) = cpu_marks["start"], cpu_marks["end"]
        wall = max(w1 - w0, 1e-9)
        client_pct = 100.0 * (c1 - c0) / wall
        if s0 is not None and s1 is not None:
            server_pct = 100.0 * (s1 - s0) / wall
    stats.latencies.sort()
    if target.label == "mlharbor":
        counted = stats.statuses.get(call.expected, 0)
    else:
        counted = sum(stats.statuses.values())
    return Result(call, target.label, seconds, stats, counted, client_pct, server_pct)


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mlharbor(workdir: Path) -> Target:
    url, proc, _data_dir, log_path = harness.start_mlharbor(workdir)
    return Target("mlharbor", url, proc, log_path)


def start_moto(workdir: Path) -> Target:
    port = _free_port()
    log_path = workdir / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"moto did not start; its log:\n{log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                break
        except urllib.error.HTTPError:
            break  # it answered
        except OSError:
            time.sleep(0.2)
    return Target("moto", url, proc, log_path)


_stop = harness.stop_process


@contextlib.contextmanager
def servers(args: argparse.Namespace) -> Iterator[list[Target]]:
    workdir = Path(tempfile.mkdtemp(prefix="mlharbor-bench-"))
    targets: list[Target] = []
    try:
        if args.only in ("mlharbor", "both"):
            targets.append(
                Target("mlharbor", args.mlharbor_url.rstrip("/"))
                if args.mlharbor_url
                else start_mlharbor(workdir)
            )
        if args.only in ("moto", "both"):
            targets.append(
                Target("moto", args.moto_url.rstrip("/")) if args.moto_url else start_moto(workdir)
            )
        yield targets
    finally:
        for target in targets:
            _stop(target.proc)
        for target in targets:
            if target.proc is not None and target.log_path is not None and target.log_path.exists():
                text = target.log_path.read_text(errors="replace").strip()
                if target.label == "mlharbor" and text:
                    tail = "\n".join(text.splitlines()[-20:])
                    print(f"\nMLHarbor stderr (last 20 lines):\n{tail}")
        if args.keep_logs:
            print(f"\nserver logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_statuses(result: Result) -> str:
    parts = []
    for (status, etype), n in sorted(result.stats.statuses.items(), key=lambda kv: -kv[1]):
        parts.append(f"{status}{' ' + etype if etype else ''}: {n}")
    for what, n in result.stats.errors.items():
        parts.append(f"ERR {what}: {n}")
    return ", ".join(parts) or "(none)"


def print_report(results: list[Result], args: argparse.Namespace) -> None:
    header = ("call", "server", "req/s", "p50 ms", "p99 ms", "statuses")
    rows: list[tuple[str, ...]] = []
    for r in results:
        server = r.target + (" (not implemented)" if r.moto_not_implemented else "")
        rows.append(
            (
                r.call.name,
                server,
                f"{r.rps:.0f}",
                _fmt_ms(r.percentile_ms(0.50)),
                _fmt_ms(r.percentile_ms(0.99)),
                _fmt_statuses(r),
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:-1])]

    def line(cells: tuple[str, ...]) -> str:
        out = []
        for i, cell in enumerate(cells[:-1]):
            out.append(cell.rjust(widths[i]) if i in (2, 3, 4) else cell.ljust(widths[i]))
        return " | ".join(out) + " | " + cells[-1]

    print()
    print(line(header))
    print("-+-".join("-" * w for w in widths) + "-+-" + "-" * len("statuses"))
    for row in rows:
        print(line(row))

    print("\nload (measured window): client CPU% is this process; server CPU% includes threads/children")
    for r in results:
        server_cpu = "n/a (external)" if r.server_cpu_pct is None else f"{r.server_cpu_pct:.0f}%"
        print(
            f"  {r.call.name:<24} {r.target:<8} client CPU {r.client_cpu_pct:4.0f}%  "
            f"server CPU {server_cpu:>6}  new connections {r.stats.connects}"
        )

    unexpected = [
        (r, key, body)
        for r in results
        if r.target == "mlharbor"
        for key, body in r.stats.samples.items()
        if key != r.call.expected
    ]
    if unexpected:
        print("\nUNEXPECTED MLHarbor responses (sample bodies):")
        for r, (status, etype), body in unexpected:
            print(f"  {r.call.name}: {status} {etype or ''} -> {body.decode('utf-8', 'replace')}")

    print()
    by_call: dict[str, dict[str, Result]] = {}
    for r in results:
        by_call.setdefault(r.call.name, {})[r.target] = r
    for name, pair in by_call.items():
        mine, moto = pair.get("mlharbor"), pair.get("moto")
        bits: list[str] = [f"{name}:"]
        ours = _problem(mine) if mine is not None else "MLHarbor was not run (--only moto)"
        if moto is None:
            peer: str | None = "moto was not run (--only mlharbor)"
        elif moto.moto_not_implemented:
            peer = "moto does not implement this call (it answered 5xx / NotImplemented): no valid peer"
        else:
            peer = _problem(moto)
        mine_rps = mine.rps if mine is not None else None
        moto_rps = moto.rps if moto is not None else None
        ratio = harness.ratio(
            mine_rps, moto_rps, numerator_name="MLHarbor's req/s", denominator_name="moto's req/s",
            failed=peer or ours,
        )  # fmt: skip
        bits.append(
            f"MLHarbor/moto = {harness.fmt(mine_rps, '.0f')}/{harness.fmt(moto_rps, '.0f')} = "
            f"{harness.fmt(ratio, '.2f', 'x')} "
            f"(target >= {RATIO_TARGET:.0f}x: {harness.verdict(ratio, RATIO_TARGET)});"
        )
        p99 = mine.percentile_ms(0.99) if mine is not None else None
        bits.append(
            f"MLHarbor p99 = {_fmt_ms(p99)} ms (target <= {P99_TARGET_MS:.0f} ms: "
            f"{harness.verdict(p99, P99_TARGET_MS, at_most=True, problem=ours)})"
        )
        print(" ".join(bits))


def _problem(result: Result) -> str | None:
    """Why a phase's numbers cannot be judged: transport errors, or (MLHarbor) answers other than the
    expected one, which the latencies would include while req/s leaves them out."""
    who = "MLHarbor" if result.target == "mlharbor" else "moto"
    total = sum(result.stats.statuses.values())
    errors = sum(result.stats.errors.values())
    if total == 0:
        return f"{who} sent no response in the measured window"
    if errors:
        return f"{who}: {errors} transport error(s) ({', '.join(result.stats.errors)})"
    if result.target == "mlharbor" and result.counted != total:
        status, etype = result.call.expected
        expected = f"{status} {etype}" if etype else str(status)
        return f"MLHarbor: {total - result.counted} of {total} responses were not the expected {expected}"
    return None


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent keep-alive connections")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per call and server")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before the window")
    parser.add_argument("--only", choices=("mlharbor", "moto", "both"), default="both")
    parser.add_argument("--mlharbor-url", help="use an already running MLHarbor instead of starting one")
    parser.add_argument("--moto-url", help="use an already running moto server instead of starting one")
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="client event loop (auto: uvloop when installed)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' log folder")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--clients must be >= 1, --seconds > 0, --warmup >= 0")
    return args


def _loop_factory(choice: str) -> tuple[str, object | None]:
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("uvloop is not installed") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    loop_name, factory = _loop_factory(args.loop)
    print(
        f"machine: nproc={os.cpu_count()} (affinity {len(os.sched_getaffinity(0))}), "
        f"python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}"
    )
    print(
        f"load: {args.clients} keep-alive clients, {args.warmup:g} s warmup + {args.seconds:g} s measured "
        f"per call and server, client loop {loop_name}"
    )
    results: list[Result] = []
    try:
        with servers(args) as targets:
            for target in targets:
                origin = "started here" if target.proc is not None else "external"
                print(f"{target.label}: {target.url} ({origin})")
            for call in CALLS:
                for target in targets:
                    print(f"running {call.name} against {target.label} ...", flush=True)
                    phase = _run_phase(target, call, args.clients, args.warmup, args.seconds)
                    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
                        results.append(runner.run(phase))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
