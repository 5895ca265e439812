"""A throwaway multi-node Ray cluster on loopback, for tests: a head and worker nodes on this machine.

``start_ray_cluster()`` starts it with ``ray start`` (one process session per node) and returns a
``RayCluster``; ``stop()`` kills exactly the processes it started (never ``ray stop``, which would take every
Ray process on the machine). ``ray_cluster`` is a session-scoped pytest fixture around it; a test module
uses it with ``from tests.runtime.ray_cluster import ray_cluster  # noqa: F401``, and every module that does
shares the one cluster.

* Everything stays on 127.0.0.1: ``--node-ip-address=127.0.0.1``, no dashboard, and the start checks both
  what Ray reports (``ray.nodes()``) and what the cluster's processes actually listen on (``/proc``).
  Ray's default port 6379 is often someone's Redis: ports are picked free.
* Token authentication is on, with a fresh token per cluster passed in the environment (``~/.ray`` is not
  touched): ``cluster.token``, ``cluster.driver_env()`` for a subprocess driver.
* Health checks every second, so a dead node is noticed in ~2-4 s instead of ~15 s.
* ``GRPC_ENABLE_FORK_SUPPORT=0`` on the nodes, or Ray Client connections fail now and then (see below).
* Worker nodes carry a custom resource named after them (``{"node_a": 1}``): an actor asking for
  ``{"resources": {"node_a": 0.01}}`` lands there. ``kill_node(name)`` SIGKILLs a worker node's processes
  (raylet, agents and its actors): a machine dying; ``add_worker(name)`` adds a node (e.g. one to kill).
* ``ray start`` rewrites a loopback ``--node-ip-address`` (and a worker node's loopback ``--address``) into
  the machine's outward address, so ``--node-ip-address=127.0.0.1`` alone does not keep a node on loopback
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` does for a head, but makes worker nodes refuse to start): nodes
  are started through a tiny wrapper around ``ray start`` that turns the rewrite off.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
HEALTH_CHECK_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "2",
}
# The head's Ray Client proxy forks (with a preexec_fn) a server per client while its gRPC threads are busy;
# with gRPC's fork support on, ~1 in 8 of those children died at once of SIGSEGV (measured here: 9 of 70
# first connections; 0 of 45 with it off), and the client then waited ~30-40 s for "Initialization failure".
CLIENT_SERVER_ENV = {"GRPC_ENABLE_FORK_SUPPORT": "0"}
# `ray start` rewrites a loopback --node-ip-address (and a worker's loopback --address) into the machine's
# outward address, so a node would listen there; this runs `ray start` with that rewrite turned off.
_RAY_START = (
    "import os, sys; import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    # For the node's own processes (Ray Client server, agents, workers), which connect with ray.init: read at
    # import, so `ray start` itself (already imported) still allows worker nodes.
    "os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '0'; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
# Run by a subprocess driver: the nodes as Ray sees them (also proves the token works).
_NODES_SCRIPT = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], _node_ip_address="127.0.0.1", log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    labelled = not sys.argv[4] or any(sys.argv[4] in n["Resources"] for n in nodes)
    if (len(nodes) >= int(sys.argv[2]) and labelled) or time.monotonic() > deadline:
        break
    time.sleep(0.1)
print(json.dumps([
    {"address": n["NodeManagerAddress"], "host": n.get("NodeManagerHostname"), "alive": n["Alive"],
     "object_store": n.get("ObjectStoreSocketName"), "resources": n["Resources"]}
    for n in ray.nodes()
]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (zombies excluded)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def listening_addresses(pids: Sequence[int]) -> set[str]:
    """The local IP addresses that TCP sockets owned by ``pids`` listen on."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found: set[str] = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                    continue
                found.add(_decode_ip(cols[1].split(":")[0], v6))
    return found


def _decode_ip(hex_ip: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_ip)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # /proc stores 4 host-order words
    addr = socket.inet_ntop(socket.AF_INET6, words)
    return addr.removeprefix("::ffff:")


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen[bytes]  # `ray start`, the session leader; it exits once the node runs
    log: Path

    def pids(self) -> list[int]:
        return session_pids(self.process.pid)

    def kill(self) -> None:
        """SIGKILL every process of the node (its actors included), like a machine dying."""
        for _ in range(3):  # processes starting while we kill (a worker being spawned) get a second round
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


@dataclass
class RayCluster:
    gcs_address: str  # HOST:PORT, for a driver on this machine
    client_address: str  # ray://HOST:PORT (Ray Client)
    token: str
    temp_dir: Path
    head: RayNode
    workers: dict[str, RayNode] = field(default_factory=dict)  # the live ones
    killed: dict[str, RayNode] = field(default_factory=dict)
    start_seconds: float = 0.0
    nodes: list[dict] = field(default_factory=list)  # as reported by ray.nodes() after the start
    _object_store_bytes: int = 100 * 1024 * 1024

    def driver_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for a subprocess driver: the token, and no loopback rewriting."""
        env = dict(os.environ if base is None else base)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.pop("RAY_ADDRESS", None)
        return env

    def all_pids(self) -> list[int]:
        return [pid for node in (self.head, *self.workers.values()) for pid in node.pids()]

    def add_worker(self, name: str, *, num_cpus: float = 1, timeout: float = 60.0) -> RayNode:
        """Start one more worker node, labelled ``{name: 1}``, and wait until Ray lists it alive."""
        if name in self.workers or name in self.killed:
            raise ValueError(f"a worker node named {name!r} exists or existed")
        node = _start_worker(self, name, num_cpus, self._object_store_bytes)
        self.workers[name] = node
        _wait_started(node, timeout)
        self.nodes = _reported_nodes(self, 1 + len(self.workers), timeout, alive_with=name)
        return node

    def kill_node(self, name: str) -> None:
        """SIGKILL a worker node (raylet, agents, actors); it stays listed (dead) in ``ray.nodes()``."""
        node = self.workers.pop(name)
        self.killed[name] = node
        node.kill()

    def stop(self) -> None:
        for node in (*self.workers.values(), *self.killed.values(), self.head):
            node.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _node_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HEALTH_CHECK_ENV)
    env.update(CLIENT_SERVER_ENV)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    return env


def _start_node(name: str, args: list[str], env: dict[str, str], temp_dir: Path) -> RayNode:
    node_dir = temp_dir / name  # one per node: nodes sharing one make each other time out at start
    node_dir.mkdir()
    log = temp_dir / f"start-{name}.log"
    prefix = [sys.executable, "-c", _RAY_START]
    common = [
        "start",
        f"--node-ip-address={LOOPBACK}",
        f"--temp-dir={node_dir}",
        "--disable-usage-stats",
        "--include-log-monitor=false",
        "--dashboard-agent-listen-port=0",
        "--min-worker-port=0",
        "--max-worker-port=0",
        "--log-style=record",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*prefix, *common, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the node's processes share this session: stop() finds them all
        )
    return RayNode(name, process, log)


def _wait_started(node: RayNode, timeout: float) -> None:
    try:
        code = node.process.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    if code != 0:
        raise RuntimeError(f"`ray start` for {node.name} failed ({code}):\n{node.log.read_text()[-3000:]}")


def start_ray_cluster(
    workers: Sequence[str] = ("node_a", "node_b"),
    *,
    head_cpus: float = 2,
    worker_cpus: float = 2,
    object_store_bytes: int = 100 * 1024 * 1024,
    timeout: float = 60.0,
) -> RayCluster:
    """Start a head and one worker node per name in ``workers``, all on 127.0.0.1; see the module doc."""
    started = time.monotonic()
    temp_dir = Path(tempfile.mkdtemp(prefix="mlh-ray-", dir="/tmp"))  # short: Unix socket paths live here
    (temp_dir / "ray").mkdir()  # ray.cluster_utils and friends expect $RAY_TMPDIR/ray
    token = secrets.token_hex(16)
    env = _node_env(token)
    port, client_port = free_port(), free_port()
    store = f"--object-store-memory={object_store_bytes}"
    head = _start_node(
        "head",
        [
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={client_port}",
            "--include-dashboard=false",
            f"--num-cpus={head_cpus:g}",
            store,
        ],
        env,
        temp_dir,
    )
    cluster = RayCluster(
        gcs_address=f"{LOOPBACK}:{port}",
        client_address=f"ray://{LOOPBACK}:{client_port}",
        token=token,
        temp_dir=temp_dir,
        head=head,
        _object_store_bytes=object_store_bytes,
    )
    try:
        _wait_started(head, timeout)
        for name in workers:
            cluster.workers[name] = _start_worker(cluster, name, worker_cpus, object_store_bytes)
        for node in cluster.workers.values():
            _wait_started(node, timeout)
        cluster.nodes = _reported_nodes(cluster, 1 + len(workers), timeout)
        cluster.start_seconds = time.monotonic() - started
        check_loopback(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_worker(cluster: RayCluster, name: str, num_cpus: float, object_store_bytes: int) -> RayNode:
    args = [
        f"--address={cluster.gcs_address}",
        f"--num-cpus={num_cpus:g}",
        f"--resources={json.dumps({name: 1})}",
        f"--object-store-memory={object_store_bytes}",
    ]
    return _start_node(name, args, _node_env(cluster.token), cluster.temp_dir)


def _reported_nodes(cluster: RayCluster, count: int, timeout: float, alive_with: str = "") -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", _NODES_SCRIPT, cluster.gcs_address, str(count), str(timeout), alive_with],
        env=cluster.driver_env(),
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"could not list the Ray cluster's nodes:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_loopback(cluster: RayCluster) -> None:
    """Assert every node is alive on 127.0.0.1 and no process of the cluster listens anywhere else."""
    alive = [n for n in cluster.nodes if n["alive"]]
    assert len(alive) == 1 + len(cluster.workers), f"not all Ray nodes are alive: {cluster.nodes}"
    assert {n["address"] for n in cluster.nodes} == {LOOPBACK}, (
        f"Ray reports non-loopback nodes: {cluster.nodes}"
    )
    listening = listening_addresses(cluster.all_pids())
    assert listening and listening <= {LOOPBACK}, f"the Ray cluster listens on {listening}"


@contextlib.contextmanager
def running_ray_cluster(**kwargs) -> Iterator[RayCluster]:  # type: ignore[no-untyped-def]
    cluster = start_ray_cluster(**kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()


_shared: RayCluster | None = None
_shared_users = 0


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """One loopback Ray cluster (head without CPUs + node_a + node_b) for the whole test session.

    Test modules import this fixture; pytest then makes one session fixture per importing module, so the
    cluster itself is shared here (started by the first, stopped after the last). Tests that kill a node
    should add a node of their own (``add_worker``) rather than kill node_a or node_b under the others.
    """
    pytest.importorskip("ray")
    global _shared, _shared_users
    if _shared is None:
        # No CPUs on the head: work lands on worker nodes, which a test may kill (the head it may not).
        _shared = start_ray_cluster(head_cpus=0)
    _shared_users += 1
    try:
        yield _shared
    finally:
        _shared_users -= 1
        if _shared_users == 0:
            _shared.stop()
            _shared = None
