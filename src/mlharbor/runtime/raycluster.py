"""RayExecutor: each work item runs in a detached, named Ray actor, so it outlives the server that started it.

* The actor is named after the work id (in one namespace, "mlharbor" by default) and created with
  ``lifetime="detached"``: it belongs to the cluster, not to the driver that created it, so a server that
  dies leaves its work running, and the next server *adopts* it by name (``adopt``).
* The outcome lives in the actor, never in an ``ObjectRef``: a ref is owned by the driver that made it and
  is lost with it. The actor starts the work function on a thread of its own from its constructor (so no
  method call has to follow the creation: a driver dying right after ``submit`` still leaves running work)
  and answers ``poll()`` (state, heartbeat progress, outcome) and ``stop()`` (sets a flag) on other threads
  (``max_concurrency``; ``ray.cancel`` on a sync actor task would only set a flag anyway).
* One watcher thread per executor polls its actors (one ``poll`` in flight per actor, ``ray.wait`` with a
  timeout, so a busy or pending actor never blocks the others), finishes items whose outcome arrived or
  whose actor died (``RayActorError``: "crashed", with Ray's reason, e.g. its node died), escalates stop
  requests that were not honoured within ``stop_grace`` to ``ray.kill``, and kills each finished actor
  once its outcome was read and handed to ``on_finished`` (detached actors never exit on their own, and
  each one holds its resources and its name until killed).
* Results and progress are JSON-serialisable, checked in the worker as with the local executor.
* Unlike a local worker, an actor does not stop when its server dies (``ctx.stop_requested()`` stays
  False): the database's leases decide who adopts or stops it. ``last_heartbeat`` is stamped by the worker's
  clock; ``pid`` is the actor's, on its node. An actor waiting for resources counts as "running".

Connecting (``RayExecutor.connect(address)``):

* ``ray://HOST:PORT`` is Ray Client (the head's ``--ray-client-server-port``, 10001 by default); the server
  needs no Ray node of its own. Detached actors work through it (measured with Ray 2.60). Start the head
  with ``GRPC_ENABLE_FORK_SUPPORT=0`` in its environment: otherwise about one connection in eight fails
  (the proxy's per-client server crashes as it is forked) and is retried here after a ~30-40 s wait.
* ``HOST:PORT`` is the cluster's GCS address (the head's ``--port``); the process then joins as a plain
  driver, which needs a Ray node running on the same machine.
* Token authentication (Ray 2.60's default, ``RAY_AUTH_MODE=token``): the token comes from ``auth_token``,
  or Ray's own sources (``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``).
  A driver with a wrong or missing token would retry for ~20-30 s and then raise a generic
  ``ConnectionError``; ``connect`` first probes the address with one authenticated call and fails within
  ``timeout`` with a message that says whether the address is unreachable or the token was refused.
* Loopback: Ray rewrites a ``127.0.0.1``/``localhost`` bootstrap address into the machine's outward
  interface address before connecting to a GCS directly; for a loopback address this executor keeps it on
  loopback (a cluster started with ``--node-ip-address=127.0.0.1`` listens nowhere else).

One process holds one Ray connection: every ``RayExecutor`` in a process shares it (``connect`` to the same
address again reuses it; to another address raises). ``shutdown`` stops the executor's work but leaves the
connection open; ``disconnect()`` closes it. No ``atexit`` hook stops the work: surviving the server is the
point (a clean server stop calls ``shutdown``).

Workers import ``target`` on the cluster's machines, so ``mlharbor`` (same version) and the target's
package must be installed there; ``python_path`` adds directories (paths on those machines) to ``sys.path``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import ActorAlreadyExistsError, ActorUnavailableError, GetTimeoutError, RayActorError

from .executor import (
    ExecutorClosed,
    ExecutorError,
    OnFinished,
    WorkAlreadyRunning,
    WorkStatus,
    check_target,
    load_target,
    returned_state,
)

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "mlharbor"
# Actor options a caller may set per work item through ``submit(..., resources=...)``.
RESOURCE_OPTIONS = frozenset({"num_cpus", "num_gpus", "memory", "resources", "accelerator_type"})
DEFAULT_RESOURCES: dict[str, Any] = {"num_cpus": 1}
_MAX_CONCURRENCY = 4  # poll and stop are served while the work runs on its own thread


class RayConnectError(ExecutorError):
    """``connect`` could not reach or authenticate to the Ray cluster."""


# --- Inside the actor ------------------------------------------------------------------------------------
class _RayContext:
    """The ``WorkContext`` a worker function receives inside the actor."""

    def __init__(self, work_id: str, payload: dict[str, Any], actor: _WorkActor) -> None:
        self.work_id = work_id
        self.payload = payload
        self._actor = actor

    def stop_requested(self) -> bool:
        return self._actor._stop.is_set()

    def wait_stop(self, timeout: float) -> bool:
        return self._actor._stop.wait(timeout)

    def heartbeat(self, progress: dict[str, Any] | None = None) -> None:
        # Round-trip through JSON here, so a non-JSON progress raises in the worker, where the bug is, and
        # the stored copy cannot change under the poller.
        stored = json.loads(json.dumps(progress)) if progress is not None else None
        self._actor._beat(stored)


class _WorkActor:
    """The actor class (wrapped with ``ray.remote`` by the executor). Its state is the work's outcome."""

    def __init__(self, work_id: str, target: str, payload: dict[str, Any], python_path: list[str]) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._work_id = work_id
        self._target = target
        self._started_at = time.time()
        self._ended_at: float | None = None
        self._beats = 0
        self._beat_at: float | None = None
        self._progress: dict[str, Any] | None = None
        self._outcome: dict[str, Any] | None = None
        sys.path[:0] = [p for p in python_path if p not in sys.path]
        thread = threading.Thread(
            target=self._run, args=(payload,), name=f"mlharbor-work {work_id}", daemon=True
        )
        thread.start()

    def _run(self, payload: dict[str, Any]) -> None:
        ctx = _RayContext(self._work_id, payload, self)
        outcome: dict[str, Any]
        try:
            result = load_target(self._target)(ctx, payload)
            if result is not None and not isinstance(result, dict):
                raise TypeError(f"worker function must return a dict or None, not {type(result).__name__}")
            # Fail here, as a "failed" work item, if the result cannot be stored; store plain JSON types.
            outcome = {"type": "result", "result": json.loads(json.dumps(result))}
        except Exception as exc:
            last_line = traceback.format_exception_only(exc)[-1].strip()
            outcome = {"type": "error", "error": last_line, "detail": traceback.format_exc()}
        with self._lock:
            self._outcome = outcome
            self._ended_at = time.time()

    def _beat(self, progress: dict[str, Any] | None) -> None:
        with self._lock:
            self._beats += 1
            self._beat_at = time.time()
            if progress is not None:
                self._progress = progress

    def poll(self) -> dict[str, Any]:
        """Everything the executor needs, as plain data."""
        with self._lock:
            return {
                "work_id": self._work_id,
                "target": self._target,
                "pid": os.getpid(),
                "started_at": self._started_at,
                "ended_at": self._ended_at,
                "beats": self._beats,
                "beat_at": self._beat_at,
                "progress": self._progress,
                "stop_requested": self._stop.is_set(),
                "outcome": self._outcome,
            }

    def stop(self) -> bool:
        """Ask the work to stop; True if it was still running."""
        self._stop.set()
        with self._lock:
            return self._outcome is None


# --- Connection -----------------------------------------------------------------------------------------
_conn_lock = threading.Lock()
_connected_address: str | None = None
_AUTH_ENV = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
_saved_env: dict[str, str | None] | None = None  # what _setup_token changed, restored by disconnect()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1", "[::1]") or host.startswith("127.")


def _split_address(address: str) -> tuple[bool, str]:
    """``(is_client, "host:port")``; raises ValueError when malformed."""
    is_client = address.startswith("ray://")
    hostport = address[len("ray://") :] if is_client else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in hostport:
        raise ValueError(f"Ray address must look like 'ray://HOST:PORT' or 'HOST:PORT', got {address!r}")
    return is_client, hostport


def _setup_token(auth_token: str | None) -> None:
    """Make this process send the cluster's token.

    Ray reads the token once, in C++ (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), and
    sends it only in token mode; connecting to an explicit address, it does not switch to token mode by itself
    even when a token is available. So: an explicit token, or one Ray can find, turns token mode on (unless
    ``RAY_AUTH_MODE`` says otherwise), and Ray's cached configuration and token are refreshed.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    global _saved_env
    _saved_env = {name: os.environ.get(name) for name in _AUTH_ENV}
    if auth_token is not None:
        os.environ["RAY_AUTH_TOKEN"] = auth_token
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ["RAY_AUTH_MODE"] = "token"
    elif "RAY_AUTH_MODE" not in os.environ and AuthenticationTokenLoader.instance().has_token(
        ignore_auth_mode=True
    ):
        os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _probe(address: str, is_client: bool, hostport: str, timeout: float) -> None:
    """One authenticated call to the Ray Client server or the GCS, so a wrong token fails fast and clearly."""
    import grpc
    from ray._private.grpc_utils import init_grpc_channel

    channel = init_grpc_channel(hostport, options=[], asynchronous=False)
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            what = "Ray Client server (the head's --ray-client-server-port)" if is_client else "Ray GCS"
            raise RayConnectError(
                f"cannot reach the {what} at {address} within {timeout:g} s: is the cluster running, and "
                "is the port reachable from here?"
            ) from None
        try:
            if is_client:
                from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

                ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
                    ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING),
                    timeout=timeout,
                )
            else:
                from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

                gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                    gcs_service_pb2.GetClusterIdRequest(), timeout=timeout
                )
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                mode = os.environ.get("RAY_AUTH_MODE", "unset")
                raise RayConnectError(
                    f"the Ray cluster at {address} refused this process's authentication token "
                    f"(RAY_AUTH_MODE={mode}): give the cluster's token (the head's ~/.ray/auth_token) as "
                    "auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
                ) from None
            raise RayConnectError(
                f"the Ray cluster at {address} did not answer ({code.name}: {exc.details()}); is it a "
                + ("Ray Client port?" if is_client else "GCS port?")
            ) from None
    finally:
        channel.close()


def connect_ray(
    address: str,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    auth_token: str | None = None,
    timeout: float = 15.0,
) -> None:
    """Connect this process to the Ray cluster at ``address`` (see the module docstring), once.

    Calling it again with the same address does nothing; with another, raises RayConnectError. Raises
    RayConnectError (naming authentication where that is the cause) within about ``timeout`` seconds when
    the cluster cannot be reached or refuses the token.
    """
    global _connected_address
    is_client, hostport = _split_address(address)
    with _conn_lock:
        if _connected_address is not None and ray.is_initialized():
            if _connected_address != address:
                raise RayConnectError(
                    f"this process is already connected to the Ray cluster at {_connected_address}; "
                    f"one process holds one Ray connection (asked for {address})"
                )
            return
        if ray.is_initialized():
            raise RayConnectError("this process is already connected to Ray (ray.init was called elsewhere)")
        _setup_token(auth_token)
        _probe(address, is_client, hostport, timeout)
        kwargs: dict[str, Any] = {"namespace": namespace, "log_to_driver": False}
        if is_client:
            _init_client(address, kwargs, attempts=3)
        else:
            host = hostport.rpartition(":")[0]
            if _is_loopback(host):
                # Ray replaces a loopback bootstrap address by the machine's outward address unless it
                # believes multi-node clusters are off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read at import):
                # a cluster bound to 127.0.0.1 would then be unreachable. Keep it on loopback.
                from ray._private import ray_constants

                ray_constants.ENABLE_RAY_CLUSTER = False
                kwargs["_node_ip_address"] = "127.0.0.1"
            ray.init(address=hostport, **kwargs)
        _connected_address = address


def _init_client(address: str, kwargs: dict[str, Any], attempts: int) -> None:
    """``ray.init("ray://...")``, tried again on "Initialization failure from server": the head's Ray Client
    proxy lost the per-client server it had just forked (it died of SIGSEGV, ~1 in 8 connections with Ray
    2.60 here, unless the head runs with ``GRPC_ENABLE_FORK_SUPPORT=0``); the client hears of it after
    ~30-40 s, and the next try works."""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, **kwargs)
            return
        except ConnectionAbortedError as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt == attempts:
                raise RayConnectError(f"Ray Client at {address} failed to start a session: {exc}") from exc
            log.warning("Ray Client at %s failed to start a session (try %d)", address, attempt)


def disconnect() -> None:
    """Close this process's Ray connection (made by ``connect_ray``); detached actors keep running."""
    global _connected_address, _saved_env
    with _conn_lock:
        if ray.is_initialized():
            ray.shutdown()
        _connected_address = None
        if _saved_env is not None:  # leave no token behind for the processes this one starts later
            for name, value in _saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _saved_env = None


def _death_reason(exc: BaseException) -> str:
    """One line out of Ray's multi-line actor-death message: the sentence that says why, without the advice
    Ray appends (the full message goes to ``error_detail``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next(
        (
            line
            for line in lines
            if line.lower().startswith(("the actor died because", "the actor is dead because"))
        ),
        lines[-1] if lines else type(exc).__name__,
    )
    reason = reason.split(" Some common causes include", 1)[0]
    return reason if len(reason) <= 300 else reason[:297] + "..."


# --- In the server process --------------------------------------------------------------------------------
@dataclass
class _Item:
    actor: Any  # ray.actor.ActorHandle
    status: WorkStatus
    stop_requested: bool = False
    kill_at: float | None = None  # time.monotonic() after which a requested stop is forced with ray.kill
    poll_ref: Any = None  # the one poll() in flight


class RayExecutor:
    """Runs each work item in a detached Ray actor. See ``mlharbor.runtime.executor`` for the contract.

    Needs a Ray connection in this process: use ``RayExecutor.connect(address, ...)``, or call ``connect_ray``
    (or ``ray.init``) first. ``stop_grace``: seconds a work item has to end after ``request_stop`` before its
    actor is killed (it then ends "stopped", ``error`` saying it was forced). ``resources``: default actor
    options (``num_cpus``, ``num_gpus``, ``memory``, ``resources``; ``num_cpus`` 1 unless given), overridden
    per item by ``submit``'s. ``python_path``: directories (on the cluster's machines) prepended to the
    actors' ``sys.path``. ``poll_interval``: how often the watcher asks each actor for news.
    """

    def __init__(
        self,
        on_finished: OnFinished | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        stop_grace: float = 5.0,
        resources: Mapping[str, Any] | None = None,
        python_path: Sequence[str] = (),
        poll_interval: float = 0.25,
        keep_finished: int = 1000,
    ) -> None:
        if not ray.is_initialized():
            raise ExecutorError("RayExecutor needs a Ray connection: use RayExecutor.connect(address)")
        self._on_finished = on_finished
        self._namespace = namespace
        self._stop_grace = stop_grace
        self._resources = _check_resources({**DEFAULT_RESOURCES, **(resources or {})})
        self._python_path = [os.fspath(p) for p in python_path]
        self._poll_interval = poll_interval
        self._keep_finished = keep_finished
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # serialises submit/adopt, so one id cannot be taken twice
        self._items: dict[str, _Item] = {}
        self._finished: OrderedDict[str, WorkStatus] = OrderedDict()
        self._closed = False
        self._wake = threading.Event()
        self._last_error_log = float("-inf")
        self._actor_class = ray.remote(_WorkActor)
        self._thread = threading.Thread(target=self._watch, name="mlharbor-ray-executor", daemon=True)
        self._thread.start()

    @classmethod
    def connect(
        cls,
        address: str,
        on_finished: OnFinished | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        auth_token: str | None = None,
        connect_timeout: float = 15.0,
        **options: Any,
    ) -> RayExecutor:
        """Connect to ``address`` (``ray://HOST:PORT`` or a GCS ``HOST:PORT``) and make an executor."""
        connect_ray(address, namespace=namespace, auth_token=auth_token, timeout=connect_timeout)
        return cls(on_finished, namespace=namespace, **options)

    # --- The Executor interface ---------------------------------------------------------------------
    def submit(
        self,
        work_id: str,
        target: str,
        payload: dict[str, Any],
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        """Start ``target`` in a new detached actor named ``work_id``. Raises WorkAlreadyRunning if this
        executor runs it, or a live actor of that name runs unfinished work (e.g. another server's)."""
        check_target(target)
        if not isinstance(payload, dict):
            raise TypeError("payload must be a dict")
        if not work_id:
            raise ValueError("work_id must not be empty")
        options = {**self._resources, **_check_resources(resources or {})}
        with self._submit_lock:
            with self._lock:
                if self._closed:
                    raise ExecutorClosed("executor is shut down")
                if work_id in self._items:
                    raise WorkAlreadyRunning(f"work {work_id!r} is already running")
            actor_options = {
                **options,
                "name": work_id,
                "namespace": self._namespace,
                "lifetime": "detached",
                "max_restarts": 0,
                "max_concurrency": _MAX_CONCURRENCY,
            }
            # A live actor of that name: work running elsewhere (WorkAlreadyRunning), or a finished leftover
            # to clear away. Checked here because Ray Client creates actors asynchronously: a taken name
            # would only show later, as a dead actor. (Two servers racing for one id is the leases' job.)
            self._clear_leftover(work_id)
            args = (work_id, target, payload, self._python_path)
            try:
                actor = self._actor_class.options(**actor_options).remote(*args)
            except ActorAlreadyExistsError:
                raise WorkAlreadyRunning(f"an actor named {work_id!r} was created meanwhile") from None
            status = WorkStatus(work_id=work_id, state="running", started_at=time.time())
            with self._lock:
                self._items[work_id] = _Item(actor, status)
                self._finished.pop(work_id, None)
        self._wake.set()

    def request_stop(self, work_id: str) -> bool:
        with self._lock:
            item = self._items.get(work_id)
            if item is None:
                return False
            self._request_stop_locked(item, time.monotonic() + self._stop_grace)
        self._wake.set()
        return True

    def status(self, work_id: str) -> WorkStatus | None:
        with self._lock:
            item = self._items.get(work_id)
            return item.status if item is not None else self._finished.get(work_id)

    def running(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def adopt(self, work_id: str, timeout: float = 10.0) -> bool:
        """Take charge of the live actor ``work_id`` that another executor (a dead server's) started.

        True if it exists and its work has not finished: from then on it is this executor's own. False if
        there is no such actor, it is dead, or its work has finished (a finished leftover is killed, which
        frees the name for a new ``submit``; its outcome is not reported). An actor that does not answer
        within ``timeout`` (still being scheduled, busy, unreachable for now) is adopted: the watcher finds
        out what it is, and reports its end through ``on_finished`` like any other.
        """
        with self._submit_lock:
            with self._lock:
                if self._closed:
                    return False
                if work_id in self._items:
                    return True
            actor = self._get_actor(work_id)
            if actor is None:
                return False
            try:
                snapshot: dict[str, Any] | None = ray.get(actor.poll.remote(), timeout=timeout)
            except (ActorUnavailableError, GetTimeoutError):
                snapshot = None  # alive or not, the watcher finds out and reports the end
            except RayActorError:
                return False
            if snapshot is not None and snapshot["outcome"] is not None:
                self._kill(actor)
                return False
            status = WorkStatus(work_id=work_id, state="running", started_at=time.time())
            item = _Item(actor, status)
            if snapshot is not None:
                item.status = _apply_snapshot(status, snapshot)
            with self._lock:
                self._items[work_id] = item
                self._finished.pop(work_id, None)
                if snapshot is not None and snapshot["stop_requested"]:
                    # The dead server had asked it to stop: the grace period starts again here.
                    self._request_stop_locked(item, time.monotonic() + self._stop_grace)
        self._wake.set()
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop all work this executor owns: ask, ``ray.kill`` what is left after ``timeout`` seconds; then
        end the watcher. Returns once every ``on_finished`` call has been made. The Ray connection stays."""
        with self._submit_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            deadline = time.monotonic() + timeout
            for item in self._items.values():
                self._request_stop_locked(item, deadline)
        self._wake.set()
        if threading.current_thread() is self._thread:
            return  # called from on_finished: the watcher finishes the job on its own
        self._thread.join(timeout + 30)
        if self._thread.is_alive():
            log.error("ray executor watcher did not finish; actors may be left: %s", self.running())

    # Its work runs on the cluster and outlives this process: a server that stops leaves it to be adopted.
    outlives_server = True

    def detach(self) -> None:
        """Stop watching, and leave every actor running (a server's clean stop: another server, or this one
        started again, adopts them). No ``on_finished`` call is made for them."""
        with self._submit_lock, self._lock:
            self._closed = True
            self._items.clear()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    # --- Helpers ------------------------------------------------------------------------------------
    def _get_actor(self, work_id: str) -> Any:
        try:
            return ray.get_actor(work_id, namespace=self._namespace)
        except ValueError:
            return None

    def _kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already dead, or the connection is gone: nothing to free
            ray.kill(actor, no_restart=True)

    def _clear_leftover(self, work_id: str, timeout: float = 10.0) -> None:
        """Free the name ``work_id`` if its actor is dead or finished; WorkAlreadyRunning if it runs."""
        actor = self._get_actor(work_id)
        if actor is not None:
            try:
                snapshot = ray.get(actor.poll.remote(), timeout=timeout)
            except (ActorUnavailableError, GetTimeoutError):
                raise WorkAlreadyRunning(f"an actor named {work_id!r} exists and does not answer") from None
            except RayActorError:
                snapshot = None
            if snapshot is not None and snapshot["outcome"] is None:
                raise WorkAlreadyRunning(f"work {work_id!r} is running in another executor's actor")
            self._kill(actor)
        deadline = time.monotonic() + timeout
        while self._get_actor(work_id) is not None:  # the name is released once the GCS saw the death
            if time.monotonic() > deadline:
                raise ExecutorError(f"the name of the finished actor {work_id!r} was not released")
            time.sleep(0.05)

    def _request_stop_locked(self, item: _Item, kill_at: float) -> None:
        if not item.stop_requested:
            item.stop_requested = True
            try:
                item.actor.stop.remote()  # fire and forget: the watcher sees the outcome
            except Exception:
                log.exception("could not send a stop to %s", item.status.work_id)
        if item.kill_at is None or kill_at < item.kill_at:
            item.kill_at = kill_at

    # --- Watcher ------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._closed and not self._items:
                    return
                items = list(self._items.values())
            try:
                self._watch_once(items)
            except Exception:  # never let one bad item end the watching of all
                self._log_error("ray executor watcher error")
                time.sleep(self._poll_interval)

    def _log_error(self, message: str, *args: Any) -> None:
        """Log with the traceback, at most every 30 s (a lost connection fails every call, every round)."""
        now = time.monotonic()
        if now - self._last_error_log >= 30.0:
            self._last_error_log = now
            log.exception(message, *args)

    def _watch_once(self, items: list[_Item]) -> None:
        for item in items:
            if item.poll_ref is None:
                try:
                    item.poll_ref = item.actor.poll.remote()
                except Exception:  # e.g. the connection is gone; escalations below must still happen
                    self._log_error("could not poll the actor of %s", item.status.work_id)
        refs = [item.poll_ref for item in items if item.poll_ref is not None]
        ready: list[Any] = []
        if refs:
            try:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self._poll_interval)
            except Exception:
                self._log_error("ray.wait failed")
                for item in items:
                    item.poll_ref = None
                self._wake.wait(self._poll_interval)
        else:
            self._wake.wait(self._poll_interval)
        ready_set = set(ready)
        for item in items:
            if item.poll_ref is not None and item.poll_ref in ready_set:
                ref, item.poll_ref = item.poll_ref, None
                try:
                    snapshot = ray.get(ref, timeout=0)
                except ActorUnavailableError:
                    # Unreachable for now (its node may be dying, or the network); not known dead. Ray
                    # answers ActorDiedError once the GCS declares it dead (a dead node: ~2-4 s with 1 s
                    # health checks): ask again next round.
                    log.debug("the actor of %s is unavailable", item.status.work_id)
                    continue
                except RayActorError as exc:
                    self._actor_died(item, exc)
                    continue
                except Exception:
                    self._log_error("could not read the poll of %s", item.status.work_id)
                    continue
                self._apply(item, snapshot)
            if item.kill_at is not None and time.monotonic() >= item.kill_at and self._owns(item):
                self._force_stop(item)
        if self._wake.is_set():
            self._wake.clear()
        elif ready:
            # Polls answered early: pace the next round so idle actors are not polled in a busy loop.
            self._wake.wait(self._poll_interval)
            self._wake.clear()

    def _owns(self, item: _Item) -> bool:
        with self._lock:
            return self._items.get(item.status.work_id) is item

    def _apply(self, item: _Item, snapshot: dict[str, Any]) -> None:
        with self._lock:
            if self._items.get(item.status.work_id) is not item:
                return
            item.status = _apply_snapshot(item.status, snapshot)
        outcome = snapshot["outcome"]
        if outcome is None:
            return
        stop_requested = item.stop_requested or bool(snapshot["stop_requested"])
        ended_at = snapshot["ended_at"] or time.time()
        base = replace(item.status, ended_at=ended_at)
        if outcome["type"] == "result":
            result = outcome["result"]
            final = replace(base, state=returned_state(result, stop_requested), result=result)
        else:
            final = replace(base, state="failed", error=outcome["error"], error_detail=outcome["detail"])
        self._finish(item, final)

    def _actor_died(self, item: _Item, exc: RayActorError) -> None:
        reason = _death_reason(exc)
        final = replace(
            item.status,
            state="crashed",
            error=f"the work's Ray actor died without reporting a result: {reason}",
            error_detail=str(exc),
            ended_at=time.time(),
        )
        self._finish(item, final, kill=False)

    def _force_stop(self, item: _Item) -> None:
        log.warning("work %s did not stop in time; killing its Ray actor", item.status.work_id)
        self._kill(item.actor)
        error = "did not stop in time after the stop request; its Ray actor was killed (ray.kill)"
        final = replace(item.status, state="stopped", error=error, ended_at=time.time())
        self._finish(item, final, kill=False)

    def _finish(self, item: _Item, final: WorkStatus, kill: bool = True) -> None:
        with self._lock:
            if self._items.get(final.work_id) is not item:
                return
            del self._items[final.work_id]
            self._finished[final.work_id] = final
            while len(self._finished) > self._keep_finished:
                self._finished.popitem(last=False)
        if self._on_finished is not None:
            try:
                self._on_finished(final.work_id, final)
            except Exception:
                log.exception("on_finished callback failed for %s", final.work_id)
        if kill:
            # After on_finished: a server dying in between leaves the finished actor for the next to clear.
            self._kill(item.actor)


def _apply_snapshot(status: WorkStatus, snapshot: dict[str, Any]) -> WorkStatus:
    return replace(
        status,
        pid=snapshot["pid"],
        started_at=snapshot["started_at"],
        last_heartbeat=snapshot["beat_at"],  # stamped by the worker's clock
        progress=snapshot["progress"],
    )


def _check_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(resources) - RESOURCE_OPTIONS
    if unknown:
        raise ValueError(f"unknown resource options {sorted(unknown)}; allowed: {sorted(RESOURCE_OPTIONS)}")
    return dict(resources)
