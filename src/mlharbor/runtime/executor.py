"""The executor interface: how the server runs long work (training, stream processors, endpoints,
batch jobs) outside the API process.

The interface is deliberately narrow so that a second back end (Ray) can implement it unchanged:

* ``submit(work_id, target, payload)`` starts ``target`` -- an import path ``"package.module:function"``
  of a plain function ``fn(ctx: WorkContext, payload: dict) -> dict | None`` -- in a worker.
* ``request_stop(work_id)`` asks the worker to stop cooperatively (``ctx.stop_requested()`` turns True);
  a worker that has not exited after the executor's grace period is terminated.
* ``status(work_id)`` / ``running()`` report what the executor knows.
* ``on_finished(work_id, status)`` (given to the executor's constructor) is called exactly once per
  work item when it ends in any state, crashes included, from a thread owned by the executor.
* ``shutdown(timeout)`` stops everything.
* ``adopt(work_id)`` takes charge of a worker another (dead) server started, where the back end's workers
  outlive their server; False where they cannot.
* A back end whose work outlives the server (``outlives_server = True``: Ray) also has ``detach()``, which
  a server's clean stop calls instead of ``shutdown``: the work goes on, for the next server to adopt.

``payload`` must be picklable plain data. Results and heartbeat progress must be JSON-serialisable
(they are meant for the database, and the server must be able to read them without importing the
worker's libraries); a result that is not is reported as "failed".

How a work item ends (``WorkStatus.state``):

* ``succeeded``: the function returned; its return value is ``result``.
* ``stopped``: a stop was requested and the function returned, or the worker had to be terminated
  after a stop request. A function decides for itself by returning a dict with a ``"stopped"`` key:
  ``{"stopped": True}`` always means stopped, ``{"stopped": False}`` means it finished its work anyway
  (succeeded). Without that key, a return after a stop request counts as stopped.
* ``failed``: the function raised; ``error`` is the last line of the traceback ("ValueError: boom").
* ``crashed``: the worker process died without reporting (killed by a signal, ``os._exit``, OOM...);
  ``error`` names the exit code or signal.

The database, not the executor, is the source of truth. The executor keeps no state across server
restarts: after a restart the owner constructs a fresh executor, reads the desired state from the
database and re-submits what should be running (with a new ``work_id``, e.g. ARN + attempt number).
Detecting hung-but-alive workers from ``last_heartbeat`` is also the owner's policy, not the executor's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

WorkState = Literal["running", "succeeded", "failed", "stopped", "crashed"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "stopped", "crashed"})


class ExecutorError(RuntimeError):
    """Base class for executor errors."""


class WorkAlreadyRunning(ExecutorError):
    """``submit`` was given the id of work that is still running."""


class ExecutorClosed(ExecutorError):
    """``submit`` was called after ``shutdown``."""


@dataclass(frozen=True)
class WorkStatus:
    """A snapshot of one work item. Executors hand out copies; mutating one changes nothing."""

    work_id: str
    state: WorkState
    result: dict[str, Any] | None = None
    error: str | None = None
    # Full traceback for "failed" (for logs); the last line alone is in ``error``.
    error_detail: str | None = None
    last_heartbeat: float | None = None  # time.time() when the last heartbeat arrived
    progress: dict[str, Any] | None = None  # what the last heartbeat carried
    pid: int | None = None  # worker process id where the back end has one (local executor)
    exit_code: int | None = None  # negative: killed by that signal (multiprocessing's convention)
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


OnFinished = Callable[[str, WorkStatus], None]


@runtime_checkable
class WorkContext(Protocol):
    """What a worker function gets as ``ctx``, inside the worker process."""

    work_id: str
    payload: dict[str, Any]

    def stop_requested(self) -> bool:
        """True once the owner asked this work to stop (or the server went away)."""
        ...

    def wait_stop(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as a stop is requested. Use instead of sleep."""
        ...

    def heartbeat(self, progress: dict[str, Any] | None = None) -> None:
        """Tell the owner the worker is alive; ``progress`` (JSON-serialisable) is recorded as the latest."""
        ...


WorkFunction = Callable[[WorkContext, dict[str, Any]], "dict[str, Any] | None"]


@runtime_checkable
class Executor(Protocol):
    def submit(
        self, work_id: str, target: str, payload: dict[str, Any], resources: dict[str, float] | None = None
    ) -> None:
        """Start ``target`` in a worker. Raises WorkAlreadyRunning if ``work_id`` is running. ``resources``:
        what the worker needs, for back ends that place work on machines (Ray's ``num_cpus``, ``memory``)."""
        ...

    def request_stop(self, work_id: str) -> bool:
        """Ask the work to stop; False if the id is unknown or already finished."""
        ...

    def status(self, work_id: str) -> WorkStatus | None:
        """The latest snapshot, or None if the id is unknown (or finished long ago)."""
        ...

    def running(self) -> list[str]:
        """Ids of work that has not finished yet."""
        ...

    def shutdown(self, timeout: float) -> None:
        """Request stop for everything, wait up to ``timeout`` seconds, then kill what is left."""
        ...

    def adopt(self, work_id: str) -> bool:
        """Take charge of work another server started, if it still runs (True): a back end whose workers
        outlive the server that started them (Ray's detached actors). Local processes never do."""
        ...


def returned_state(result: Any, stop_requested: bool) -> WorkState:
    """How a work function that returned ``result`` ended: as the result's ``"stopped"`` key says (the
    function knows whether it finished its work), else stopped if a stop was requested."""
    if isinstance(result, dict) and "stopped" in result:
        return "stopped" if result["stopped"] else "succeeded"
    return "stopped" if stop_requested else "succeeded"


def check_target(target: str) -> tuple[str, str]:
    """Split ``"package.module:function"``; raises ValueError when malformed.

    Only the syntax is checked here: importing the module happens in the worker, so the API
    process never imports heavy ML libraries.
    """
    module, sep, func = target.partition(":")
    if not sep or not module or not func or not all(p.isidentifier() for p in module.split(".")):
        raise ValueError(f"target must look like 'package.module:function', got {target!r}")
    if not all(p.isidentifier() for p in func.split(".")):
        raise ValueError(f"target must look like 'package.module:function', got {target!r}")
    return module, func


def load_target(target: str) -> WorkFunction:
    """Import and return the function named by ``target`` (called inside the worker)."""
    module_name, func_path = check_target(target)
    obj: Any = importlib.import_module(module_name)
    for part in func_path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj
