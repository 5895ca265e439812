"""LocalExecutor against real spawned processes: no mocks, no fixed sleeps (poll with a deadline).

The worker functions live in this module; the executor is given this directory as ``python_path``
so spawned workers can import them as ``test_local_executor:<name>``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlharbor.runtime import (
    Executor,
    ExecutorClosed,
    LocalExecutor,
    WorkAlreadyRunning,
    WorkContext,
    WorkStatus,
)
from tests.conftest import wait_until

HERE = str(Path(__file__).resolve().parent)
MODULE = "test_local_executor"  # the name workers import this file under (HERE is on their sys.path)
TIMEOUT = 30.0  # generous deadline for slow CI machines; tests normally finish far sooner


# --- Worker functions (run inside the spawned worker process) -----------------------------------------
def returns_result(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.heartbeat({"step": 1})
    return {"echo": payload["x"], "work_id": ctx.work_id, "pid": os.getpid()}


def raises(ctx: WorkContext, payload: dict[str, Any]) -> None:
    raise ValueError(f"boom {payload['msg']}")


def returns_non_dict(ctx: WorkContext, payload: dict[str, Any]) -> Any:
    return [1, 2, 3]


def returns_non_json(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    return {"model": object()}


def loops_until_stop(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any] | None:
    step = 0
    while not ctx.wait_stop(0.02):
        step += 1
        ctx.heartbeat({"step": step})
    # The "stopped" key lets the function say whether it finished its work despite the stop.
    return {"stopped": False, "steps": step} if payload.get("finished_anyway") else None


def ignores_stop(ctx: WorkContext, payload: dict[str, Any]) -> None:
    if payload.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    progress: dict[str, Any] = {"ready": True}
    if payload.get("grandchild"):
        child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
        progress["grandchild"] = child.pid
    ctx.heartbeat(progress)
    threading.Event().wait()  # forever, deaf to stop requests


def exits_hard(ctx: WorkContext, payload: dict[str, Any]) -> None:
    ctx.heartbeat()
    os._exit(payload["code"])


# --- Helpers ------------------------------------------------------------------------------------------
def target(name: str) -> str:
    return f"{MODULE}:{name}"


eventually = wait_until  # the suite's polling helper, under the name these tests read best with


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie nobody reaped does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


class Recorder:
    """The on_finished callback: records every call and lets tests wait for one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, WorkStatus]] = []
        self._cond = threading.Condition()

    def __call__(self, work_id: str, status: WorkStatus) -> None:
        with self._cond:
            self.calls.append((work_id, status))
            self._cond.notify_all()

    def wait(self, work_id: str, timeout: float = TIMEOUT) -> WorkStatus:
        with self._cond:
            if not self._cond.wait_for(lambda: self.count(work_id) > 0, timeout):
                pytest.fail(f"on_finished was not called for {work_id}")
            return next(s for w, s in self.calls if w == work_id)

    def count(self, work_id: str) -> int:
        return sum(1 for w, _ in self.calls if w == work_id)


Make = Callable[..., tuple[LocalExecutor, Recorder]]


@pytest.fixture
def make() -> Iterator[Make]:
    made: list[tuple[LocalExecutor, Recorder]] = []

    def factory(**kwargs: Any) -> tuple[LocalExecutor, Recorder]:
        recorder = Recorder()
        executor = LocalExecutor(recorder, python_path=[HERE], **kwargs)
        made.append((executor, recorder))
        return executor, recorder

    yield factory
    for executor, recorder in made:
        executor.shutdown(timeout=1.0)
        assert executor.running() == []
        ids = [w for w, _ in recorder.calls]
        assert len(ids) == len(set(ids)), f"on_finished called more than once: {ids}"


def wait_heartbeat(executor: LocalExecutor, work_id: str) -> WorkStatus:
    return eventually(
        lambda: (s := executor.status(work_id)) is not None and s.last_heartbeat is not None and s,
        what=f"a heartbeat from {work_id}",
    )


# --- Tests --------------------------------------------------------------------------------------------
def test_local_executor_implements_the_interface(make: Make) -> None:
    executor, _ = make()
    assert isinstance(executor, Executor)


def test_result_succeeds_and_callback_fires_once(make: Make) -> None:
    executor, recorder = make()
    executor.submit("ok", target("returns_result"), {"x": 42})
    status = recorder.wait("ok")
    assert status.state == "succeeded"
    assert status.result is not None
    assert status.result["echo"] == 42
    assert status.result["work_id"] == "ok"
    assert status.result["pid"] == status.pid != os.getpid()  # it really ran in another process
    assert status.error is None and status.exit_code == 0
    assert status.ended_at is not None and status.started_at is not None
    assert executor.status("ok") == status  # finished work stays queryable
    assert executor.running() == []
    assert executor.request_stop("ok") is False  # finished: nothing to stop
    executor.shutdown(timeout=1.0)
    assert recorder.count("ok") == 1


def test_exception_fails_with_message(make: Make) -> None:
    executor, recorder = make()
    executor.submit("bad", target("raises"), {"msg": "here"})
    status = recorder.wait("bad")
    assert status.state == "failed"
    assert status.error == "ValueError: boom here"
    assert status.error_detail is not None and "Traceback" in status.error_detail
    assert status.result is None


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("returns_non_dict", "TypeError: worker function must return a dict or None, not list"),
        ("returns_non_json", "TypeError: Object of type object is not JSON serializable"),
        ("no_such_function", "AttributeError"),
    ],
)
def test_bad_worker_functions_fail(make: Make, name: str, error: str) -> None:
    executor, recorder = make()
    executor.submit(name, target(name), {})
    status = recorder.wait(name)
    assert status.state == "failed"
    assert status.error is not None and status.error.startswith(error)


def test_missing_module_fails_in_the_worker(make: Make) -> None:
    executor, recorder = make()
    executor.submit("nomod", "no_such_module_anywhere:fn", {})
    status = recorder.wait("nomod")
    assert status.state == "failed"
    assert status.error is not None and status.error.startswith("ModuleNotFoundError")


def test_malformed_target_is_rejected_at_submit(make: Make) -> None:
    executor, _ = make()
    for bad in ("no_colon", "mod:", ":fn", "bad-module:fn"):
        with pytest.raises(ValueError):
            executor.submit("x", bad, {})
    assert executor.running() == []


def test_unpicklable_payload_is_rejected_at_submit(make: Make) -> None:
    executor, _ = make()
    with pytest.raises(Exception, match="pickle"):
        executor.submit("x", target("returns_result"), {"x": lambda: 1})
    assert executor.running() == []
    executor.submit("x", target("returns_result"), {"x": 1})  # the id was not taken


def test_heartbeats_report_progress(make: Make) -> None:
    executor, recorder = make()
    executor.submit("hb", target("loops_until_stop"), {})
    status = eventually(
        lambda: (s := executor.status("hb")) and s.progress and s.progress["step"] >= 3 and s,
        what="progress step 3",
    )
    assert status.state == "running"
    assert status.last_heartbeat is not None and status.last_heartbeat <= time.time()
    assert status.pid is not None and alive(status.pid)
    assert executor.running() == ["hb"]
    assert executor.request_stop("hb") is True
    assert recorder.wait("hb").state == "stopped"


def test_cooperative_stop(make: Make) -> None:
    executor, recorder = make()  # default 5 s grace: a cooperative worker never needs it
    executor.submit("coop", target("loops_until_stop"), {})
    wait_heartbeat(executor, "coop")
    assert executor.request_stop("coop") is True
    assert executor.request_stop("coop") is True  # asking twice is harmless
    status = recorder.wait("coop")
    assert status.state == "stopped"
    assert status.error is None  # it stopped by itself, nothing was forced
    assert status.exit_code == 0


def test_function_can_report_finished_despite_stop(make: Make) -> None:
    executor, recorder = make()
    executor.submit("done", target("loops_until_stop"), {"finished_anyway": True})
    wait_heartbeat(executor, "done")
    executor.request_stop("done")
    status = recorder.wait("done")
    assert status.state == "succeeded"
    assert status.result is not None and status.result["stopped"] is False


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["sigterm", "sigkill"])
def test_worker_ignoring_stop_is_terminated(make: Make, ignore_sigterm: bool) -> None:
    executor, recorder = make(stop_grace=0.5, term_grace=0.5)
    executor.submit("deaf", target("ignores_stop"), {"ignore_sigterm": ignore_sigterm})
    pid = wait_heartbeat(executor, "deaf").pid
    assert executor.request_stop("deaf") is True
    status = recorder.wait("deaf")
    # The user asked for the stop, so a forced end still counts as "stopped"; error says how.
    assert status.state == "stopped"
    expected = "SIGKILL" if ignore_sigterm else "SIGTERM"
    assert status.error is not None and expected in status.error
    assert status.exit_code == -getattr(signal, expected)
    assert pid is not None and not alive(pid)


def test_termination_reaches_the_workers_children(make: Make) -> None:
    executor, recorder = make(stop_grace=0.5, term_grace=0.5)
    executor.submit("parent", target("ignores_stop"), {"grandchild": True})
    status = wait_heartbeat(executor, "parent")
    assert status.progress is not None
    grandchild = status.progress["grandchild"]
    assert alive(grandchild)
    executor.request_stop("parent")
    assert recorder.wait("parent").state == "stopped"
    eventually(lambda: not alive(grandchild), what="the worker's child to die")


@pytest.mark.parametrize(("how", "expected"), [("kill9", "SIGKILL"), ("exit3", "exited with code 3")])
def test_crash_is_detected(make: Make, how: str, expected: str) -> None:
    executor, recorder = make()
    if how == "kill9":
        executor.submit("crash", target("loops_until_stop"), {})
        pid = wait_heartbeat(executor, "crash").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    else:
        executor.submit("crash", target("exits_hard"), {"code": 3})
    status = recorder.wait("crash")
    assert status.state == "crashed"
    assert status.error is not None and expected in status.error
    assert status.exit_code == (-signal.SIGKILL if how == "kill9" else 3)
    assert executor.running() == []


def test_duplicate_running_id_is_rejected(make: Make) -> None:
    executor, recorder = make()
    executor.submit("dup", target("loops_until_stop"), {})
    with pytest.raises(WorkAlreadyRunning):
        executor.submit("dup", target("returns_result"), {"x": 1})
    executor.request_stop("dup")
    assert recorder.wait("dup").state == "stopped"
    # Once finished, the id may be used again (the owner normally adds an attempt number).
    recorder.calls.clear()
    executor.submit("dup", target("returns_result"), {"x": 2})
    status = recorder.wait("dup")
    assert status.state == "succeeded" and status.result is not None and status.result["echo"] == 2


def test_unknown_ids(make: Make) -> None:
    executor, _ = make()
    assert executor.status("nope") is None
    assert executor.request_stop("nope") is False
    assert executor.running() == []


def test_shutdown_stops_everything(make: Make) -> None:
    executor, recorder = make(stop_grace=5.0, term_grace=0.5)
    executor.submit("a", target("loops_until_stop"), {})
    executor.submit("b", target("loops_until_stop"), {})
    executor.submit("c", target("ignores_stop"), {"ignore_sigterm": True})
    pids = [wait_heartbeat(executor, w).pid for w in ("a", "b", "c")]
    assert sorted(executor.running()) == ["a", "b", "c"]
    executor.shutdown(timeout=0.5)  # returns after every on_finished call was made
    assert executor.running() == []
    assert {w: s.state for w, s in recorder.calls} == {"a": "stopped", "b": "stopped", "c": "stopped"}
    assert all(pid is not None and not alive(pid) for pid in pids)
    with pytest.raises(ExecutorClosed):
        executor.submit("d", target("returns_result"), {"x": 1})
    executor.shutdown(timeout=0.5)  # idempotent


_ORPHAN_SCRIPT = """
import sys, threading
from mlharbor.runtime import LocalExecutor
executor = LocalExecutor(python_path=[sys.argv[1]], stop_grace=0.5)
executor.submit("orphan", sys.argv[2], {})
while (status := executor.status("orphan")).last_heartbeat is None:
    threading.Event().wait(0.01)
print(status.pid, flush=True)
threading.Event().wait()
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("worker", ["loops_until_stop", "ignores_stop"])
def test_worker_exits_when_the_server_dies(worker: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, HERE, target(worker)], stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            assert server.stdout is not None
            readable, _, _ = select.select([server.stdout], [], [], TIMEOUT)
            assert readable, "the server process never reported its worker"
            worker_pid = int(server.stdout.readline())
            assert alive(worker_pid)
            server.kill()  # SIGKILL: no shutdown, no atexit
            server.wait(TIMEOUT)
            # A cooperative worker stops at once; a deaf one kills itself after the grace period.
            eventually(lambda: not alive(worker_pid), what="the orphaned worker to exit")
        finally:
            server.kill()  # no-op if it is already dead
