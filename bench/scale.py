#!/usr/bin/env python3
"""Scale-out benchmark: several API servers on one PostgreSQL database, and the Ray runtime.

Measured in one run, each against its peer:

* **API throughput, 1 vs 2 servers**: the calls of ``api_throughput.py`` (Rekognition
  DescribeStreamProcessor, Comprehend ListEntityRecognizers), ``--clients`` keep-alive connections (32),
  first all to one server, then spread evenly over two servers on the same database. Targets: two servers
  >= 1.6x one server's requests/s, p99 <= 10 ms.
* **Server death**: two servers pulling the same camera; a face search processor runs on one of them; that
  server is killed (SIGKILL). Reported: how long until the other holds the processor's lease, and until its
  records resume (a record with a later ServerTimestamp). Target: records again <= 5 s after the death.
* **Stop and start latency, local vs Ray** (``--ray``, needs ``pip install 'mlharbor[ray]'``):
  StopStreamProcessor until DescribeStreamProcessor says STOPPED, and CreateEntityRecognizer until
  TRAINING, with the default runtime and with ``--runtime ray://``; Ray's node death until the processor's
  records resume on another node; memory (RSS) per work item. Targets: Stop through Ray <= 0.5 s;
  recovery <= 5 s.

Usage::

    .venv/bin/python bench/scale.py                 # throughput (20 s per phase) and server death
    .venv/bin/python bench/scale.py --seconds 5 --skip-death
    .venv/bin/python bench/scale.py --ray           # also the Ray runtime (starts a loopback Ray cluster)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import postgres_database  # noqa: E402
from tests.deployment import Records, node_of, start_face_search, worker_threads  # noqa: E402
from tests.engines.video_files import portrait_frames, write_video  # noqa: E402

import api_throughput as api  # noqa: E402  (bench/api_throughput.py: the load generator)
from harness import Server, aws_client, fmt, print_table, ratio, start_server, stop_process, verdict  # noqa: E402

ACCOUNT = "000000000000"
SPREAD_TARGET = 1.6
P99_TARGET_MS = 10.0
RECOVERY_TARGET_S = 5.0
RAY_STOP_TARGET_S = 0.5


# --- Servers ---------------------------------------------------------------------------------------------
@contextmanager
def cluster(
    workdir: Path, count: int, *args: str, env: dict[str, str] | None = None
) -> Iterator[list[Server]]:
    """``count`` servers on one fresh PostgreSQL database and one data folder."""
    url, drop = postgres_database()
    servers: list[Server] = []
    try:
        for n in range(count):
            folder = workdir / f"server-{n}"
            folder.mkdir(parents=True)
            shared = ["--database-url", url, "--data-dir", str(workdir / "data"), *args]
            servers.append(start_server(folder, env=env, args=shared))
        yield servers
    finally:
        for server in servers:
            stop_process(server.proc)
        drop()


# --- API throughput ----------------------------------------------------------------------------------------
async def spread(
    servers: list[Server], call: api.ApiCall, clients: int, warmup: float, seconds: float
) -> Any:
    """``clients`` connections spread round-robin over ``servers``; one merged result."""
    stats = api.Stats()
    now = time.perf_counter()
    t_measure, t_end = now + warmup, now + warmup + seconds
    tasks = []
    for n in range(clients):
        server = servers[n % len(servers)]
        target = api.Target("mlharbor", server.url, server.proc)
        host, port = target.host_port
        tasks.append(api._client(host, port, api.presign(target, call), t_measure, t_end, stats))
    await asyncio.gather(*tasks)
    stats.latencies.sort()
    counted = stats.statuses.get(call.expected, 0)
    return api.Result(call, "mlharbor", seconds, stats, counted, 0.0, None)


def throughput(workdir: Path, args: argparse.Namespace) -> list[str]:
    verdicts = []
    rows = []
    with cluster(workdir / "throughput", 2) as servers:
        for call in api.CALLS:
            one = asyncio.run(spread(servers[:1], call, args.clients, args.warmup, args.seconds))
            two = asyncio.run(spread(servers, call, args.clients, args.warmup, args.seconds))
            gain = ratio(two.rps, one.rps, numerator_name="two servers", denominator_name="one server",
                         failed=api._problem(one) or api._problem(two))  # fmt: skip
            for label, result in (("1 server", one), ("2 servers", two)):
                rows.append([call.name, label, f"{result.rps:,.0f}", fmt(result.percentile_ms(0.5), ".1f"),
                             fmt(result.percentile_ms(0.99), ".1f")])  # fmt: skip
            p99 = two.percentile_ms(0.99)
            p99_verdict = verdict(p99, P99_TARGET_MS, at_most=True, problem=api._problem(two))
            verdicts.append(
                f"{call.name}: 2 servers / 1 server = {fmt(gain)} (target >= {SPREAD_TARGET}): "
                f"{verdict(gain, SPREAD_TARGET)}; p99 with 2 servers {fmt(p99, '.1f', ' ms')} "
                f"(target <= {P99_TARGET_MS} ms): {p99_verdict}"
            )
    print(f"\nAPI throughput, {args.clients} clients, {args.seconds:g} s per phase, one PostgreSQL database")
    print_table(["call", "servers", "req/s", "p50 ms", "p99 ms"], rows, right={2, 3, 4})
    return verdicts


# --- Server death ------------------------------------------------------------------------------------------
def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def lease_owner_pid(database_url: str, kind: str) -> int | None:
    rows = query(database_url, "SELECT owner FROM work_leases WHERE kind = %s", kind)
    return int(rows[0][0].split(":")[-2]) if rows else None


def wait_for(predicate: Any, timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def start_processor(servers: list[Server]) -> tuple[str, Records]:
    rek, kinesis = aws_client(servers[0], "rekognition"), aws_client(servers[-1], "kinesis")
    return start_face_search(rek, kinesis)


def death_round(
    alive: list[Server], database_url: str
) -> tuple[float | None, float | None, str | None, Server]:
    """Start a processor, kill the server running it; (lease taken over after, records again after, problem,
    the killed server)."""
    name, records = start_processor(alive)
    if not wait_for(lambda: len(records.read()) >= 3, 90, 0.2):
        return None, None, "no records before the death", alive[0]
    owner_pid = lease_owner_pid(database_url, "stream")
    victim = next((s for s in alive if s.proc.pid == owner_pid), None)
    if victim is None:
        return None, None, "no server holds the processor's lease", alive[0]
    survivor = next(s for s in alive if s is not victim)
    records.kinesis = aws_client(survivor, "kinesis")
    # Not reaped until the round ends: its process still exists, so the survivor waits for the lease to run
    # out, as one on another machine would (on one machine a gone predecessor is taken over at once).
    victim.proc.kill()
    killed, killed_wall = time.monotonic(), time.time()
    owned = wait_for(lambda: lease_owner_pid(database_url, "stream") == survivor.proc.pid, 30)
    taken = time.monotonic() - killed if owned else None

    recovered = time.monotonic() - killed if wait_for(lambda: records.after(killed_wall), 60) else None
    rek = aws_client(survivor, "rekognition")
    rek.stop_stream_processor(Name=name)
    wait_for(lambda: rek.describe_stream_processor(Name=name)["Status"] == "STOPPED", 30)
    rek.delete_stream_processor(Name=name)  # the camera is free for the next round
    return taken, recovered, None if recovered is not None else "records did not resume", victim


def server_death(workdir: Path, args: argparse.Namespace) -> list[str]:
    video = write_video(workdir / "hopper.mp4", portrait_frames(20), fps=10)
    rows: list[list[str]] = []
    recoveries: list[float | None] = []
    problems: list[str] = []
    with cluster(workdir / "death", 2, "--video-stream", f"cam={video}") as servers:
        database_url = _database_url(servers[0])
        for n in range(args.deaths):
            alive = [s for s in servers if s.proc.poll() is None]
            taken, recovered, problem, victim = death_round(alive, database_url)
            rows.append([str(n + 1), fmt(taken, ".2f", " s"), fmt(recovered, ".2f", " s")])
            recoveries.append(recovered)
            if problem is not None:
                problems.append(problem)
                break
            # The pair again, for the next round (the new server joins the same database and data).
            servers[servers.index(victim)] = start_server(
                victim.log_path.parent, args=_args_of(victim), restart=True
            )
    print("\nServer death (SIGKILL of the server running a face search processor)")
    print_table(["round", "lease taken over", "records again"], rows, right={1, 2})
    worst = max((r for r in recoveries if r is not None), default=None)
    judged = verdict(worst, RECOVERY_TARGET_S, at_most=True, problem="; ".join(problems) or None)
    return [
        f"server death -> records again: worst {fmt(worst, '.2f', ' s')} of {len(recoveries)} "
        f"(target <= {RECOVERY_TARGET_S:g} s): {judged}"
    ]


def _database_url(server: Server) -> str:
    args = server.proc.args
    assert isinstance(args, list)
    return str(args[args.index("--database-url") + 1])


def _args_of(server: Server) -> list[str]:
    args = [str(a) for a in server.proc.args]  # type: ignore[union-attr]
    start = args.index("--database-url")
    return args[start:]


# --- The Ray runtime vs local worker processes --------------------------------------------------------------
def _stop_latency(server: Server, rounds: int) -> tuple[list[float], float | None]:
    """StopStreamProcessor → STOPPED, ``rounds`` times; and the RSS (MB) of the process running the worker."""
    rek = aws_client(server, "rekognition")
    latencies, rss = [], None
    for _ in range(rounds):
        name, records = start_processor([server])
        if not wait_for(lambda r=records: len(r.read()) >= 3, 90, 0.1):
            break
        rss = rss or _worker_rss(name)
        started = time.monotonic()
        rek.stop_stream_processor(Name=name)
        if wait_for(lambda n=name: rek.describe_stream_processor(Name=n)["Status"] == "STOPPED", 30, 0.005):
            latencies.append(time.monotonic() - started)
        rek.delete_stream_processor(Name=name)
    return latencies, rss


def _worker_rss(processor: str) -> float | None:
    """RSS (MB) of the process whose thread (the actor's) or main thread is the processor's worker."""
    pids = [int(p.name) for p in Path("/proc").glob("[0-9]*")]
    for task in worker_threads(pids, processor):
        try:
            status = (task.parent.parent / "status").read_text()
            return int(status.split("VmRSS:")[1].split()[0]) / 1024
        except (OSError, IndexError, ValueError):
            continue
    return None


def _training_start(server: Server, rounds: int) -> list[float]:
    """CreateEntityRecognizer → DescribeEntityRecognizer says TRAINING."""
    from tests.services.comprehend.corpus import upload

    client = aws_client(server, "comprehend")
    args = [str(a) for a in server.proc.args]  # type: ignore[union-attr]
    data_dir = Path(args[len(args) - 1 - args[::-1].index("--data-dir") + 1])  # the last one given wins
    latencies = []
    for n in range(rounds):
        config = upload(data_dir, "training", f"bench-{time.time_ns()}", docs=60)
        started = time.monotonic()
        arn = client.create_entity_recognizer(
            RecognizerName=f"bench-{n}-{time.time_ns()}", LanguageCode="en", InputDataConfig=config,
            DataAccessRoleArn=f"arn:aws:iam::{ACCOUNT}:role/comprehend",
        )["EntityRecognizerArn"]  # fmt: skip

        def status(a: str = arn) -> str:
            return client.describe_entity_recognizer(EntityRecognizerArn=a)["EntityRecognizerProperties"][
                "Status"
            ]

        if wait_for(lambda: status() != "SUBMITTED", 60, 0.005):
            latencies.append(time.monotonic() - started)
        with contextlib.suppress(Exception):  # it may have failed or finished already: only the start counts
            client.stop_training_entity_recognizer(EntityRecognizerArn=arn)
        wait_for(lambda: status() in ("STOPPED", "TRAINED", "IN_ERROR"), 60)
    return latencies


def _node_death(server: Server, ray: Any) -> float | None:
    """A processor's worker node killed: seconds until its records resume (on another node)."""
    name, records = start_processor([server])
    if not wait_for(lambda: len(records.read()) >= 3, 90, 0.1):
        return None
    node = wait_for(lambda: node_of(ray, name), 20)
    if node is None:
        return None
    ray.add_worker(f"{node}_next")
    ray.kill_node(node)
    killed, killed_wall = time.monotonic(), time.time()

    return time.monotonic() - killed if wait_for(lambda: records.after(killed_wall), 60) else None


def ray_runtime(workdir: Path, args: argparse.Namespace) -> list[str]:
    from tests.runtime.ray_cluster import running_ray_cluster

    video = write_video(workdir / "ray-hopper.mp4", portrait_frames(20), fps=10)
    measured: dict[str, dict[str, Any]] = {}
    node_death: float | None = None
    with running_ray_cluster(head_cpus=0) as ray:
        for runtime in ("local", "ray"):
            extra = ("--runtime", ray.client_address) if runtime == "ray" else ()
            env = ray.driver_env({}) if runtime == "ray" else None
            folder = workdir / f"runtime-{runtime}"
            with cluster(folder, 1, *extra, "--video-stream", f"cam={video}", env=env) as [server]:
                stops, rss = _stop_latency(server, args.rounds)
                starts = _training_start(server, args.rounds)
                measured[runtime] = {"stop": stops, "start": starts, "rss": rss}
                if runtime == "ray":
                    node_death = _node_death(server, ray)
    rows = []
    for runtime, m in measured.items():
        rows.append([
            runtime, fmt(statistics.median(m["stop"]) if m["stop"] else None, ".3f", " s"),
            fmt(max(m["stop"]) if m["stop"] else None, ".3f", " s"),
            fmt(statistics.median(m["start"]) if m["start"] else None, ".3f", " s"),
            fmt(m["rss"], ".0f", " MB"),
        ])  # fmt: skip
    print(f"\nRuntime: local worker processes vs Ray actors (one server, {args.rounds} rounds each)")
    print_table(
        ["runtime", "Stop → STOPPED (median)", "(worst)", "Create → TRAINING (median)", "stream worker RSS"],
        rows, right={1, 2, 3, 4},
    )  # fmt: skip
    ray_stops = measured.get("ray", {}).get("stop") or []
    worst_stop = max(ray_stops) if len(ray_stops) == args.rounds else None
    stop_problem = None if worst_stop is not None else "not every stop through Ray was measured"
    print(f"\nRay worker node killed → the processor's records again: {fmt(node_death, '.2f', ' s')}")
    return [
        f"Stop through Ray: worst {fmt(worst_stop, '.3f', ' s')} (target <= {RAY_STOP_TARGET_S} s): "
        f"{verdict(worst_stop, RAY_STOP_TARGET_S, at_most=True, problem=stop_problem)}",
        f"Ray node death -> records again: {fmt(node_death, '.2f', ' s')} "
        f"(target <= {RECOVERY_TARGET_S:g} s): {verdict(node_death, RECOVERY_TARGET_S, at_most=True)}",
    ]


# --- Main --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--deaths", type=int, default=3, help="server deaths to measure")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-death", action="store_true")
    parser.add_argument("--ray", action="store_true", help="also the Ray runtime (a loopback Ray cluster)")
    parser.add_argument("--rounds", type=int, default=3, help="stops and starts measured per runtime")
    args = parser.parse_args(argv)
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mlharbor-scale-") as tmp:
        workdir = Path(tmp)
        if not args.skip_throughput:
            verdicts += throughput(workdir, args)
        if not args.skip_death:
            verdicts += server_death(workdir, args)
        if args.ray:
            verdicts += ray_runtime(workdir, args)
    print("\nTargets")
    for line in verdicts:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
