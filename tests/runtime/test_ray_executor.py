"""RayExecutor against a real multi-node Ray cluster on loopback: no mocks, no fixed sleeps.

One cluster (head + node_a + node_b, ``tests.runtime.ray_cluster``) serves the module; this process connects
to it once through Ray Client (``ray://``), the subprocess "servers" connect to its GCS address directly, so
both ways of connecting are exercised. The worker functions live in this module, imported by the actors as
``tests.runtime.test_ray_executor`` (the repository root is on their ``python_path``): keep its top-level
imports light.

Timings are printed at the end of the module (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from mlharbor.runtime import Executor, ExecutorClosed, WorkAlreadyRunning, WorkContext, WorkStatus  # noqa: E402
from mlharbor.runtime.raycluster import RayConnectError, RayExecutor, connect_ray, disconnect  # noqa: E402
from tests.conftest import wait_until  # noqa: E402
from tests.runtime.ray_cluster import RayCluster, ray_cluster  # noqa: E402, F401

ROOT = str(Path(__file__).resolve().parents[2])
MODULE = "tests.runtime.test_ray_executor"
TIMEOUT = 30.0
SMALL = {"num_cpus": 0.1}  # 2-CPU nodes: let many actors fit at once
MEASURED: dict[str, Any] = {}


# --- Worker functions (run inside the actors) ---------------------------------------------------------
def returns_result(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.heartbeat({"step": 1})
    return {"echo": payload["x"], "work_id": ctx.work_id, "pid": os.getpid(), "tuple": (1, 2)}


def raises(ctx: WorkContext, payload: dict[str, Any]) -> None:
    raise ValueError(f"boom {payload['msg']}")


def returns_non_json(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"model": object()}


def loops_until_stop(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any] | None:
    step = 0
    ctx.heartbeat({"step": step})
    while not ctx.wait_stop(payload.get("every", 0.02)):
        step += 1
        ctx.heartbeat({"step": step})
    noticed = time.time()
    if payload.get("finished_anyway"):
        return {"stopped": False, "steps": step, "noticed_at": noticed}
    return {"steps": step, "noticed_at": noticed}


def ignores_stop(ctx: WorkContext, payload: dict[str, Any]) -> None:
    ctx.heartbeat({"ready": True})
    threading.Event().wait()  # forever, deaf to stop requests


def reports_node(ctx: WorkContext, payload: dict[str, Any]) -> None:
    import ray

    ctx.heartbeat({"node": ray.get_runtime_context().get_node_id()})
    ctx.wait_stop(TIMEOUT)


def exits_hard(ctx: WorkContext, payload: dict[str, Any]) -> None:
    ctx.heartbeat()
    os._exit(3)


# --- Helpers ------------------------------------------------------------------------------------------
def target(name: str) -> str:
    return f"{MODULE}:{name}"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def actor_exists(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace="mlharbor")
    except ValueError:
        return False
    return True


class Recorder:
    """The on_finished callback: records every call (with its time) and lets tests wait for one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, WorkStatus, float]] = []
        self._cond = threading.Condition()

    def __call__(self, work_id: str, status: WorkStatus) -> None:
        with self._cond:
            self.calls.append((work_id, status, time.monotonic()))
            self._cond.notify_all()

    def wait(self, work_id: str, timeout: float = TIMEOUT) -> WorkStatus:
        with self._cond:
            if not self._cond.wait_for(lambda: self.count(work_id) > 0, timeout):
                pytest.fail(f"on_finished was not called for {work_id}")
            return next(s for w, s, _ in self.calls if w == work_id)

    def when(self, work_id: str) -> float:
        return next(t for w, _, t in self.calls if w == work_id)

    def count(self, work_id: str) -> int:
        return sum(1 for w, _, _ in self.calls if w == work_id)


Make = Callable[..., tuple[RayExecutor, Recorder]]


@pytest.fixture(scope="module")
def connected(ray_cluster: RayCluster) -> Iterator[RayCluster]:  # noqa: F811
    MEASURED["cluster start (head + 2 workers), s"] = round(ray_cluster.start_seconds, 2)
    started = time.monotonic()
    connect_ray(ray_cluster.client_address, auth_token=ray_cluster.token, timeout=15)
    MEASURED["connect via ray:// (probe + ray.init), s"] = round(time.monotonic() - started, 2)
    yield ray_cluster
    disconnect()
    if MEASURED:
        print("\n--- RayExecutor measurements ---", file=sys.stderr)
        for key, value in MEASURED.items():
            print(f"{key}: {value}", file=sys.stderr)


@pytest.fixture
def make(connected: RayCluster) -> Iterator[Make]:
    made: list[tuple[RayExecutor, Recorder]] = []

    def factory(**kwargs: Any) -> tuple[RayExecutor, Recorder]:
        recorder = Recorder()
        kwargs.setdefault("resources", SMALL)
        executor = RayExecutor(recorder, python_path=[ROOT], poll_interval=0.1, **kwargs)
        made.append((executor, recorder))
        return executor, recorder

    yield factory
    for executor, recorder in made:
        executor.shutdown(timeout=1.0)
        assert executor.running() == []
        ids = [w for w, _, _ in recorder.calls]
        assert len(ids) == len(set(ids)), f"on_finished called more than once: {ids}"
        for work_id in ids:  # every finished actor was killed, which frees its name
            wait_until(lambda w=work_id: not actor_exists(w), what=f"the actor {work_id} to go away")


def wait_heartbeat(executor: RayExecutor, work_id: str) -> WorkStatus:
    return wait_until(
        lambda: (s := executor.status(work_id)) is not None and s.last_heartbeat is not None and s,
        what=f"a heartbeat from {work_id}",
    )


# --- Tests --------------------------------------------------------------------------------------------
def test_cluster_is_on_loopback(connected: RayCluster) -> None:
    import ray

    nodes = ray.nodes()
    assert len([n for n in nodes if n["Alive"]]) == 1 + len(connected.workers)  # the others' kills aside
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}


def test_one_connection_per_process(connected: RayCluster) -> None:
    connect_ray(connected.client_address, auth_token=connected.token)  # the same cluster again: nothing to do
    with pytest.raises(RayConnectError, match="already connected"):
        connect_ray(connected.gcs_address)


def test_ray_executor_implements_the_interface(make: Make) -> None:
    executor, _ = make()
    assert isinstance(executor, Executor)


def test_result_succeeds_and_callback_fires_once(make: Make) -> None:
    executor, recorder = make()
    started = time.monotonic()
    executor.submit("ok", target("returns_result"), {"x": 42})
    assert executor.running() == ["ok"]
    status = recorder.wait("ok")
    MEASURED["submit -> on_finished (trivial function, new actor), s"] = round(time.monotonic() - started, 2)
    assert status.state == "succeeded"
    assert status.result == {"echo": 42, "work_id": "ok", "pid": status.pid, "tuple": [1, 2]}  # JSON types
    assert status.pid != os.getpid()  # it really ran in an actor process
    assert status.error is None and status.progress == {"step": 1}
    assert status.started_at is not None and status.ended_at is not None
    assert executor.status("ok") == status  # finished work stays queryable
    assert executor.running() == []
    assert executor.request_stop("ok") is False  # finished: nothing to stop
    wait_until(lambda: not actor_exists("ok"), what="the finished actor to be killed")
    executor.shutdown(timeout=1.0)
    assert recorder.count("ok") == 1


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("raises", "ValueError: boom here"),
        ("returns_non_json", "TypeError: Object of type object is not JSON serializable"),
        ("no_such_function", "AttributeError"),
    ],
)
def test_failures_report_the_last_traceback_line(make: Make, name: str, error: str) -> None:
    executor, recorder = make()
    executor.submit(name, target(name), {"msg": "here"})
    status = recorder.wait(name)
    assert status.state == "failed"
    assert status.error is not None and status.error.startswith(error)
    assert status.error_detail is not None and "Traceback" in status.error_detail
    assert status.result is None


def test_heartbeats_report_progress_and_start_latency(make: Make) -> None:
    executor, recorder = make()
    submitted = time.time()
    executor.submit("hb", target("loops_until_stop"), {})
    first = wait_heartbeat(executor, "hb")
    assert first.started_at is not None and first.pid is not None  # as the actor reports them
    started_after = first.started_at - submitted
    MEASURED["submit -> actor running the function (its started_at), s"] = round(started_after, 2)
    MEASURED["submit -> first heartbeat visible in status(), s"] = round(time.time() - submitted, 2)
    status = wait_until(
        lambda: (s := executor.status("hb")) and s.progress and s.progress["step"] >= 3 and s,
        what="progress step 3",
    )
    assert status.state == "running"
    assert status.last_heartbeat is not None and status.last_heartbeat <= time.time()
    assert status.pid is not None and alive(status.pid)
    MEASURED["RSS of an idle actor (Ray worker process), MB"] = round(rss_mb(status.pid), 1)
    assert executor.request_stop("hb") is True
    assert recorder.wait("hb").state == "stopped"


def test_cooperative_stop_is_fast(make: Make) -> None:
    executor, recorder = make(stop_grace=10.0)  # a cooperative worker never needs the grace period
    executor.submit("coop", target("loops_until_stop"), {"every": 5.0})  # it only wakes for the stop
    wait_heartbeat(executor, "coop")
    asked_wall, asked = time.time(), time.monotonic()
    assert executor.request_stop("coop") is True
    assert executor.request_stop("coop") is True  # asking twice is harmless
    status = recorder.wait("coop")
    assert status.state == "stopped"
    assert status.error is None  # it stopped by itself, nothing was forced
    assert status.result is not None
    reached = status.result["noticed_at"] - asked_wall
    MEASURED["request_stop -> worker sees it, s"] = round(reached, 3)
    MEASURED["request_stop -> on_finished (cooperative), s"] = round(recorder.when("coop") - asked, 3)
    assert reached < 2.0


def test_function_can_report_finished_despite_stop(make: Make) -> None:
    executor, recorder = make()
    executor.submit("done", target("loops_until_stop"), {"finished_anyway": True})
    wait_heartbeat(executor, "done")
    executor.request_stop("done")
    status = recorder.wait("done")
    assert status.state == "succeeded"
    assert status.result is not None and status.result["stopped"] is False


def test_worker_ignoring_stop_is_killed_after_the_grace(make: Make) -> None:
    executor, recorder = make(stop_grace=0.5)
    executor.submit("deaf", target("ignores_stop"), {})
    pid = wait_heartbeat(executor, "deaf").pid
    asked = time.monotonic()
    assert executor.request_stop("deaf") is True
    status = recorder.wait("deaf")
    MEASURED["request_stop -> on_finished (killed after a 0.5 s grace), s"] = round(
        recorder.when("deaf") - asked, 2
    )
    # The stop was asked for, so a forced end still counts as "stopped"; error says it was forced.
    assert status.state == "stopped"
    assert status.error is not None and "killed" in status.error
    assert pid is not None
    wait_until(lambda: not alive(pid), what="the killed actor's process to exit")


def test_actor_process_dying_is_a_crash(make: Make) -> None:
    executor, recorder = make()
    executor.submit("crash", target("exits_hard"), {})
    status = recorder.wait("crash")
    assert status.state == "crashed"
    assert status.error is not None and "actor died" in status.error and "worker process" in status.error
    print(f"\ncrash error: {status.error}", file=sys.stderr)
    assert executor.running() == []


def test_duplicate_running_id_is_rejected_and_reusable_after(make: Make) -> None:
    executor, recorder = make()
    other, _ = make()
    executor.submit("dup", target("loops_until_stop"), {})
    with pytest.raises(WorkAlreadyRunning):
        executor.submit("dup", target("returns_result"), {"x": 1})
    with pytest.raises(WorkAlreadyRunning):  # another executor (server) sees the live actor by its name
        other.submit("dup", target("returns_result"), {"x": 1})
    executor.request_stop("dup")
    assert recorder.wait("dup").state == "stopped"
    recorder.calls.clear()
    executor.submit("dup", target("returns_result"), {"x": 2})  # the name was freed
    status = recorder.wait("dup")
    assert status.state == "succeeded" and status.result is not None and status.result["echo"] == 2


def test_unknown_ids_and_bad_arguments(make: Make) -> None:
    executor, _ = make()
    assert executor.status("nope") is None
    assert executor.request_stop("nope") is False
    assert executor.adopt("nope") is False
    assert executor.running() == []
    with pytest.raises(ValueError):
        executor.submit("x", "no_colon", {})
    with pytest.raises(ValueError, match="unknown resource"):
        executor.submit("x", target("returns_result"), {"x": 1}, resources={"cpus": 1})
    assert executor.running() == []


def test_actor_placed_by_resources(make: Make, connected: RayCluster) -> None:
    import ray

    name = sorted(connected.workers)[-1]  # a live worker node, labelled with its name
    executor, recorder = make()
    executor.submit("placed", target("reports_node"), {}, resources={"resources": {name: 0.01}})
    status = wait_heartbeat(executor, "placed")
    node = next(n for n in ray.nodes() if n["Alive"] and name in n["Resources"])
    assert status.progress == {"node": node["NodeID"]}
    assert {"name": "placed", "namespace": "mlharbor"} in ray.util.list_named_actors(all_namespaces=True)
    executor.request_stop("placed")
    assert recorder.wait("placed").state == "stopped"


def test_shutdown_stops_everything(make: Make) -> None:
    executor, recorder = make(stop_grace=5.0)
    executor.submit("a", target("loops_until_stop"), {})
    executor.submit("b", target("loops_until_stop"), {})
    executor.submit("c", target("ignores_stop"), {})
    pids = [wait_heartbeat(executor, w).pid for w in ("a", "b", "c")]
    assert sorted(executor.running()) == ["a", "b", "c"]
    executor.shutdown(timeout=0.5)  # returns after every on_finished call was made
    assert executor.running() == []
    assert {w: s.state for w, s, _ in recorder.calls} == {"a": "stopped", "b": "stopped", "c": "stopped"}
    assert [s.error is not None for w, s, _ in sorted(recorder.calls)] == [False, False, True]
    for pid in pids:
        assert pid is not None
        wait_until(lambda p=pid: not alive(p), what=f"actor process {pid} to exit")
    with pytest.raises(ExecutorClosed):
        executor.submit("d", target("returns_result"), {"x": 1})
    executor.shutdown(timeout=0.5)  # idempotent


def test_detach_leaves_the_work_running_for_another_executor(make: Make) -> None:
    """A server's clean stop with Ray: its work goes on, and the next server adopts it."""
    first, first_calls = make()
    first.submit("detached", target("loops_until_stop"), {})
    pid = wait_heartbeat(first, "detached").pid
    first.detach()
    assert first.running() == [] and first_calls.calls == []  # nothing stopped, nothing reported
    assert pid is not None and alive(pid) and actor_exists("detached")
    second, second_calls = make()
    assert second.adopt("detached")
    second.request_stop("detached")
    assert second_calls.wait("detached").state == "stopped"


# --- A server that dies: its actors live on and another executor adopts them ----------------------------
_SERVER_SCRIPT = """
import sys, threading, time
from mlharbor.runtime.raycluster import RayExecutor
address, root, work_id, target, mode = sys.argv[1:6]
executor = RayExecutor.connect(address, python_path=[root], resources={"num_cpus": 0.1})
executor.submit(work_id, target, {"x": 7})
if mode == "abandon":  # gone before the outcome is read: an unclaimed finished actor stays behind
    print("submitted", flush=True)
else:
    while (status := executor.status(work_id)).last_heartbeat is None:
        time.sleep(0.01)
    if mode == "stop":  # the stop request dies with its server; the actor remembers it
        import ray
        executor.request_stop(work_id)
        actor = ray.get_actor(work_id, namespace="mlharbor")
        while not ray.get(actor.poll.remote())["stop_requested"]:
            time.sleep(0.01)
    print(status.pid, flush=True)
threading.Event().wait()
"""


def start_server(
    cluster: RayCluster, work_id: str, name: str, mode: str = "run"
) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SCRIPT, cluster.gcs_address, ROOT, work_id, target(name), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=cluster.driver_env(),
        cwd="/",  # the subprocess finds mlharbor installed, and tests only through python_path
    )
    assert server.stdout is not None
    line = server.stdout.readline().strip()
    assert line, "the server process never reported its work"
    return server, line


def test_adopt_after_the_server_died(make: Make, connected: RayCluster) -> None:
    server, pid_line = start_server(connected, "orphan", "loops_until_stop")
    try:
        pid = int(pid_line)
        server.kill()  # SIGKILL: no shutdown, nothing cleaned up
        server.wait(TIMEOUT)
    finally:
        server.kill()
    assert alive(pid)  # the detached actor outlived the server that started it
    executor, recorder = make()
    assert "orphan" not in executor.running()
    started = time.monotonic()
    assert executor.adopt("orphan") is True
    MEASURED["adopt() of a live actor, s"] = round(time.monotonic() - started, 3)
    assert executor.adopt("orphan") is True  # already ours: harmless
    assert executor.running() == ["orphan"]
    before = wait_heartbeat(executor, "orphan")
    assert before.pid == pid and before.progress is not None
    wait_until(
        lambda: (
            (s := executor.status("orphan")) and s.progress and s.progress["step"] > before.progress["step"]
        ),
        what="progress after adoption",
    )
    assert executor.request_stop("orphan") is True
    status = recorder.wait("orphan")
    assert status.state == "stopped" and status.error is None
    assert status.result is not None and status.result["steps"] > 0
    wait_until(lambda: not alive(pid), what="the adopted actor's process to exit")


def test_adopt_keeps_a_stop_the_dead_server_asked_for(make: Make, connected: RayCluster) -> None:
    server, _ = start_server(connected, "asked", "ignores_stop", mode="stop")
    server.kill()
    server.wait(TIMEOUT)
    executor, recorder = make(stop_grace=0.5)
    assert executor.adopt("asked") is True
    status = recorder.wait("asked")  # the adopter escalates the stop: the grace period starts again
    assert status.state == "stopped" and status.error is not None and "killed" in status.error


def test_adopt_of_finished_work_is_false_and_frees_the_name(make: Make, connected: RayCluster) -> None:
    import ray

    server, _ = start_server(connected, "leftover", "returns_result", mode="abandon")
    server.kill()
    server.wait(TIMEOUT)
    actor = wait_until(lambda: actor_exists("leftover") and ray.get_actor("leftover", namespace="mlharbor"))
    wait_until(lambda: ray.get(actor.poll.remote())["outcome"] is not None, what="the leftover to finish")
    executor, recorder = make()
    assert executor.adopt("leftover") is False  # finished: nothing to take charge of
    wait_until(lambda: not actor_exists("leftover"), what="the leftover actor to be killed")
    executor.submit("leftover", target("returns_result"), {"x": 3})  # the id can start afresh
    assert recorder.wait("leftover").state == "succeeded"


# --- Node death, and connection errors --------------------------------------------------------------------
def test_node_death_is_a_crash(make: Make, connected: RayCluster) -> None:
    started = time.monotonic()
    connected.add_worker("doomed")  # a node of its own, so the shared cluster keeps node_a and node_b
    MEASURED["add a worker node, s"] = round(time.monotonic() - started, 2)
    executor, recorder = make()
    executor.submit("ondoomed", target("loops_until_stop"), {}, resources={"resources": {"doomed": 0.01}})
    wait_heartbeat(executor, "ondoomed")
    killed = time.monotonic()
    connected.kill_node("doomed")
    status = recorder.wait("ondoomed")
    MEASURED["node killed -> on_finished crashed, s"] = round(recorder.when("ondoomed") - killed, 2)
    assert status.state == "crashed"
    assert status.error is not None and "node" in status.error and "died" in status.error
    assert recorder.when("ondoomed") - killed < 15


_CONNECT_SCRIPT = """
import sys, time
from mlharbor.runtime.raycluster import RayConnectError, RayExecutor
address, token = sys.argv[1:3]
started = time.monotonic()
try:
    RayExecutor.connect(address, auth_token=token or None, connect_timeout=3)
except RayConnectError as exc:
    print(f"{time.monotonic() - started:.2f} {exc}")
else:
    print("connected")
"""


@pytest.mark.parametrize("case", ["wrong token", "ray client, wrong token", "no server"])
def test_connect_fails_fast_and_names_the_cause(connected: RayCluster, case: str) -> None:
    address = {
        "wrong token": connected.gcs_address,
        "ray client, wrong token": connected.client_address,
        "no server": "ray://127.0.0.1:1",
    }[case]
    env = connected.driver_env()
    env.pop("RAY_AUTH_TOKEN")
    token = "" if case == "no server" else "not-the-token"
    done = subprocess.run(
        [sys.executable, "-c", _CONNECT_SCRIPT, address, token], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seconds, _, message = done.stdout.strip().partition(" ")
    assert float(seconds) < 8, done.stdout
    assert ("authentication" in message) == (case != "no server"), message
    if case == "no server":
        assert "cannot reach" in message


def test_memory_local_worker_vs_actor(make: Make) -> None:
    from mlharbor.runtime import LocalExecutor

    local = LocalExecutor(python_path=[ROOT])
    try:
        local.submit("local-idle", target("loops_until_stop"), {"every": 1.0})
        status = wait_heartbeat(local, "local-idle")  # type: ignore[arg-type]
        assert status.pid is not None
        MEASURED["RSS of an idle LocalExecutor worker (spawned process), MB"] = round(rss_mb(status.pid), 1)
    finally:
        local.shutdown(timeout=2.0)
    executor, recorder = make()
    executor.submit("ray-idle", target("loops_until_stop"), {"every": 1.0})
    actor_pid = wait_heartbeat(executor, "ray-idle").pid
    assert actor_pid is not None
    MEASURED["RSS of an idle actor running the same function, MB"] = round(rss_mb(actor_pid), 1)
    executor.request_stop("ray-idle")
    recorder.wait("ray-idle")
