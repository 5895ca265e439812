"""LocalExecutor: one spawned worker process per work item, watched by one supervisor thread.

* Processes are started with the "spawn" method, never fork: the API process has threads and open
  database connections that must not be duplicated into workers.
* Each worker gets one duplex pipe. Parent -> child: b"stop". Child -> parent: JSON messages
  (heartbeat, result, error). JSON rather than pickle so the API process never has to import a
  worker's libraries to read a message, and so results and progress can go straight into the
  database; results and progress must therefore be JSON-serialisable.
* Each worker makes itself a process-group leader, so terminating it also reaches the processes it
  started (ffmpeg, data loaders). It watches its pipe: end-of-file means the server died, and the
  worker stops (cooperatively, then by force after the grace period) instead of living on as an orphan.
* Processes are not daemonic (daemonic processes may not have children); ``shutdown`` stops them,
  and is registered with ``atexit`` in case the owner forgets.

POSIX only (process groups, ``multiprocessing.connection.wait`` on raw descriptors).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from .executor import (
    ExecutorClosed,
    OnFinished,
    WorkAlreadyRunning,
    WorkStatus,
    check_target,
    load_target,
    returned_state,
)

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
_STOP = b"stop"


# --- Inside the worker process --------------------------------------------------------------------------
class _LocalContext:
    """The ``WorkContext`` a worker function receives."""

    def __init__(self, work_id: str, payload: dict[str, Any], conn: Connection) -> None:
        self.work_id = work_id
        self.payload = payload
        self._conn = conn
        self._stop = threading.Event()
        self._send_lock = threading.Lock()  # the function may heartbeat from several threads
        self._done = threading.Event()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait_stop(self, timeout: float) -> bool:
        return self._stop.wait(timeout)

    def heartbeat(self, progress: dict[str, Any] | None = None) -> None:
        # Serialise here so a non-JSON progress raises in the worker, where the bug is.
        self._send({"type": "heartbeat", "progress": progress})

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode()
        with self._send_lock:
            try:
                self._conn.send_bytes(data)
            except OSError:  # the server is gone; the listener thread is already stopping us
                self._stop.set()

    def _listen(self, stop_grace: float) -> None:
        """Receive stop requests; on EOF (server died) stop, and kill ourselves if that takes too long."""
        try:
            while True:
                if self._conn.recv_bytes() == _STOP:
                    self._stop.set()
        except (EOFError, OSError):
            pass
        self._stop.set()
        if self._done.wait(stop_grace):
            return
        # Still running long after the server died: take our own children down with us.
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(70)


def _child_main(
    work_id: str,
    target: str,
    payload: dict[str, Any],
    conn: Connection,
    python_path: list[str],
    stop_grace: float,
) -> None:
    with contextlib.suppress(OSError):
        os.setpgrp()  # own process group: the parent can signal us and our children at once
    sys.path[:0] = [p for p in python_path if p not in sys.path]
    ctx = _LocalContext(work_id, payload, conn)
    threading.Thread(target=ctx._listen, args=(stop_grace,), name="mlharbor-stop", daemon=True).start()
    message: dict[str, Any]
    try:
        result = load_target(target)(ctx, payload)
        if result is not None and not isinstance(result, dict):
            raise TypeError(f"worker function must return a dict or None, not {type(result).__name__}")
        json.dumps(result)  # fail here, as a "failed" work item, if the result cannot be stored
        message = {"type": "result", "result": result}
    except Exception as exc:
        last_line = traceback.format_exception_only(exc)[-1].strip()
        message = {"type": "error", "error": last_line, "detail": traceback.format_exc()}
    ctx._send(message)
    ctx._done.set()


# --- In the server process --------------------------------------------------------------------------------
@dataclass
class _Work:
    process: BaseProcess
    conn: Connection
    status: WorkStatus
    conn_open: bool = True
    stop_requested: bool = False
    outcome: dict[str, Any] | None = None  # the worker's "result" or "error" message
    signal_at: float | None = None  # time.monotonic() at which to send the next signal
    last_signal: signal.Signals | None = None


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"worker process {how} without reporting a result"


class LocalExecutor:
    """Runs each work item in its own spawned process. See ``mlharbor.runtime.executor`` for the contract.

    ``stop_grace``: seconds a worker has to exit after ``request_stop`` before it gets SIGTERM;
    ``term_grace``: seconds after SIGTERM before SIGKILL. A worker terminated after a stop request
    ends "stopped" (the stop was asked for; ``error`` says it had to be forced).
    ``python_path``: directories prepended to ``sys.path`` in workers, so ``target`` can live outside
    installed packages. ``keep_finished``: how many finished statuses ``status()`` remembers.
    """

    def __init__(
        self,
        on_finished: OnFinished | None = None,
        *,
        stop_grace: float = 5.0,
        term_grace: float = 2.0,
        python_path: Sequence[str] = (),
        keep_finished: int = 1000,
    ) -> None:
        self._on_finished = on_finished
        self._stop_grace = stop_grace
        self._term_grace = term_grace
        self._python_path = [os.fspath(p) for p in python_path]
        self._keep_finished = keep_finished
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # serialises submits so a duplicate id can't slip through
        self._works: dict[str, _Work] = {}
        self._finished: OrderedDict[str, WorkStatus] = OrderedDict()
        self._closed = False
        # Self-pipe: lets other threads wake the supervisor out of wait() when there is new work to watch.
        self._wake_r, self._wake_w = os.pipe()
        self._wake_open = True  # closed by the supervisor when it ends; guarded by _lock
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._supervise, name="mlharbor-executor", daemon=True)
        self._thread.start()
        atexit.register(self._atexit)

    # --- The Executor interface ---------------------------------------------------------------------
    def submit(
        self, work_id: str, target: str, payload: dict[str, Any], resources: dict[str, float] | None = None
    ) -> None:
        check_target(target)  # ``resources``: every worker runs on this machine, whatever it needs
        if not isinstance(payload, dict):
            raise TypeError("payload must be a dict")
        with self._submit_lock:
            with self._lock:
                if self._closed:
                    raise ExecutorClosed("executor is shut down")
                if work_id in self._works:
                    raise WorkAlreadyRunning(f"work {work_id!r} is already running")
            parent_conn, child_conn = _SPAWN.Pipe(duplex=True)
            process = _SPAWN.Process(
                target=_child_main,
                args=(work_id, target, payload, child_conn, self._python_path, self._stop_grace),
                name=f"mlharbor-work {work_id}",
                daemon=False,
            )
            try:
                process.start()
            except BaseException:
                parent_conn.close()
                raise
            finally:
                child_conn.close()  # the child has its own copy; ours would hide the child's EOF
            status = WorkStatus(work_id=work_id, state="running", pid=process.pid, started_at=time.time())
            with self._lock:
                self._works[work_id] = _Work(process, parent_conn, status)
                self._finished.pop(work_id, None)
        self._wake()

    def request_stop(self, work_id: str) -> bool:
        with self._lock:
            work = self._works.get(work_id)
            if work is None:
                return False
            self._request_stop_locked(work, time.monotonic() + self._stop_grace)
        self._wake()
        return True

    def status(self, work_id: str) -> WorkStatus | None:
        with self._lock:
            work = self._works.get(work_id)
            return work.status if work is not None else self._finished.get(work_id)

    def running(self) -> list[str]:
        with self._lock:
            return list(self._works)

    def adopt(self, work_id: str) -> bool:
        return False  # a worker process ends with the server that started it (it watches its pipe)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop all work: ask, SIGTERM after ``timeout``, SIGKILL ``term_grace`` later; then end the
        supervisor. Returns once every ``on_finished`` call has been made."""
        with self._submit_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            deadline = time.monotonic() + timeout
            for work in self._works.values():
                self._request_stop_locked(work, deadline)
        atexit.unregister(self._atexit)
        self._wake()
        if threading.current_thread() is self._thread:
            return  # called from on_finished: the supervisor finishes the job on its own
        self._thread.join(timeout + self._term_grace + 10)
        if self._thread.is_alive():
            log.error("executor supervisor did not finish; workers may be left: %s", self.running())

    # --- Supervisor ---------------------------------------------------------------------------------
    def _request_stop_locked(self, work: _Work, signal_at: float) -> None:
        if not work.stop_requested:
            work.stop_requested = True
            with contextlib.suppress(OSError):  # the worker may already be gone
                work.conn.send_bytes(_STOP)
        if work.last_signal is None and (work.signal_at is None or signal_at < work.signal_at):
            work.signal_at = signal_at

    def _wake(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):  # a full pipe already means "wake up"
            if self._wake_open:
                os.write(self._wake_w, b"x")

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._closed and not self._works:
                    self._wake_open = False
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    return
                works = list(self._works.values())
            waitables: list[Any] = [self._wake_r]
            for work in works:
                waitables.append(work.process.sentinel)
                if work.conn_open:
                    waitables.append(work.conn)
            deadlines = [w.signal_at for w in works if w.signal_at is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            try:
                ready = wait(waitables, timeout)
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                for work in works:
                    exited = work.process.sentinel in ready
                    if work.conn_open and (exited or work.conn in ready):
                        self._read_messages(work)
                    if exited:
                        self._finish(work)
                    elif work.signal_at is not None and work.signal_at <= time.monotonic():
                        self._escalate(work)
            except Exception:  # never let one bad work item kill supervision of all the others
                log.exception("executor supervisor error")
                time.sleep(0.1)

    def _read_messages(self, work: _Work) -> None:
        while work.conn_open and work.conn.poll():
            try:
                message = json.loads(work.conn.recv_bytes())
            except (EOFError, OSError):
                work.conn_open = False
                break
            kind = message.get("type")
            with self._lock:
                if kind == "heartbeat":
                    progress = message.get("progress")
                    work.status = replace(
                        work.status,
                        last_heartbeat=time.time(),
                        progress=progress if progress is not None else work.status.progress,
                    )
                elif kind in ("result", "error"):
                    work.outcome = message
                    # It reported; give it the grace period to exit before we make it.
                    if work.signal_at is None:
                        work.signal_at = time.monotonic() + self._stop_grace

    def _escalate(self, work: _Work) -> None:
        sig = signal.SIGTERM if work.last_signal is None else signal.SIGKILL
        work.signal_at = time.monotonic() + self._term_grace if sig == signal.SIGTERM else None
        pid = work.process.pid
        if pid is None or work.process.exitcode is not None:  # exitcode reaps: no signal to a reused pid
            return  # it exited on its own; the sentinel reports it on the next turn
        work.last_signal = sig
        log.warning("work %s did not exit in time; sending %s", work.status.work_id, sig.name)
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)  # the worker and whatever it started
            else:
                os.kill(pid, sig)  # not yet a group leader (still starting up)

    def _finish(self, work: _Work) -> None:
        work.process.join()  # the sentinel fired, so this only reaps
        final = self._final_status(work)
        with self._lock:
            del self._works[final.work_id]
            # Closed under the lock: request_stop() writes to this pipe while holding it.
            work.conn.close()
            work.process.close()
            self._finished[final.work_id] = final
            while len(self._finished) > self._keep_finished:
                self._finished.popitem(last=False)
        if self._on_finished is not None:
            try:
                self._on_finished(final.work_id, final)
            except Exception:
                log.exception("on_finished callback failed for %s", final.work_id)

    def _final_status(self, work: _Work) -> WorkStatus:
        code = work.process.exitcode
        base = replace(work.status, exit_code=code, ended_at=time.time())
        outcome = work.outcome
        if outcome is not None and outcome["type"] == "result":
            result = outcome["result"]
            return replace(base, state=returned_state(result, work.stop_requested), result=result)
        if outcome is not None:
            return replace(base, state="failed", error=outcome["error"], error_detail=outcome["detail"])
        if work.last_signal is not None:
            error = f"did not exit in time after the stop request; sent {work.last_signal.name}"
            return replace(base, state="stopped", error=error)
        return replace(base, state="crashed", error=_describe_exit(code))

    def _atexit(self) -> None:
        self.shutdown(self._stop_grace)
