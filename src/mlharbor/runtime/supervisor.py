"""The one supervisor of long work: declared work kinds, leases in the database, one executor.

A *kind* (training, detection jobs, stream sessions, endpoint units, the built-in video producers) declares,
from the database, which work items it wants (``Want``: a work id, how to build its payload, and whether it
should run, may start when a slot is free, or should stop), and how to react when one ends or its server died.
The supervisor does everything else the same way for every kind, on every server process of a deployment:

* it starts a wanted item only after claiming its lease, so exactly one server runs each item;
* it leaves alone what another live server holds;
* it takes over an item whose lease expired (its server died): the executor may *adopt* the worker (a Ray
  actor lives on), otherwise the kind decides (usually: a new attempt, not counted against the work);
* it asks the kind what to do when a worker of its own ended (retry, restart, done) and releases the lease;
* it stops its workers that nobody wants any more, or whose lease another server took;
* it copies each worker's heartbeat progress into its lease, so every server sees e.g. serving addresses.

Time comes from ``clock`` and work runs through the ``Executor`` interface, so this is unit-tested with a fake
clock and a fake executor. Kinds run their hooks inside the pass; a hook that raises is logged and the pass
goes on with the next item.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection

from mlharbor.runtime.executor import ExecutorClosed, WorkAlreadyRunning, WorkStatus
from mlharbor.runtime.leases import Lease, Leases, Renewer
from mlharbor.runtime.work import WorkId

log = logging.getLogger(__name__)


class Mode(enum.Enum):
    RUN = "run"  # should run: started whenever nothing runs it
    QUEUED = "queued"  # waiting: started when one of the kind's slots on this server is free (and admitted)
    STOP = "stop"  # should stop: a worker that runs it is asked to; none is started


@dataclass(frozen=True)
class Want:
    work_id: WorkId
    mode: Mode = Mode.RUN
    payload: Callable[[], dict[str, Any]] = dict  # built only when the item is started
    context: Any = None  # the kind's own (its row), handed back to its hooks
    # STOP: ask the executor to stop the worker. False where the worker watches the database itself and
    # must not be cut short by the executor's escalation (a stopped detection job still writes its output).
    signal: bool = True


class Outcome(enum.Enum):
    RELEASE = "release"  # the kind moved on (a new attempt, a failure recorded): drop the lease, look again
    RESTART = "restart"  # start the same work item again now, under the same lease
    WAIT = "wait"  # not yet (a backoff): ask again on a later pass, keeping the lease


class Where(enum.Enum):
    NOWHERE = "nowhere"  # no lease: nothing runs it
    HERE = "here"  # this server holds it and its worker runs
    ENDED = "ended"  # this server holds it and its worker ended
    ELSEWHERE = "elsewhere"  # another live server holds it
    ORPHANED = "orphaned"  # its server died: the lease expired


@dataclass
class View:
    """Where each of a kind's work items is, as a pass sees it (kinds read it in ``wanted``)."""

    leases: dict[str, Lease]
    statuses: dict[str, WorkStatus]  # this server's workers of the kind, running or ended
    placements: dict[str, Where] = field(default_factory=dict)

    def where(self, work_id: WorkId | str) -> Where:
        return self.placements.get(str(work_id), Where.NOWHERE)

    def progress(self, work_id: WorkId | str) -> dict[str, Any] | None:
        lease = self.leases.get(str(work_id))
        return None if lease is None else lease.progress

    def status(self, work_id: WorkId | str) -> WorkStatus | None:
        return self.statuses.get(str(work_id))

    def alive(self, work_id: WorkId | str) -> bool:
        return self.where(work_id) in (Where.HERE, Where.ELSEWHERE)


class Kind(Protocol):
    """A declared kind of long work. ``name`` is the WorkId kind; ``target`` the worker function;
    ``resources`` what one worker needs, for back ends that place work (Ray: ``num_cpus``, ``memory``)."""

    name: str
    target: str
    resources: dict[str, float] | None

    def adoptable(self) -> bool:
        """Whether a worker that outlived its server (Ray) may go on under another; False where it depends
        on the server that started it (it calls that server's URL)."""
        ...

    def slots(self) -> int | None:
        """How many QUEUED items this server runs at once (None: no limit)."""
        ...

    def wanted(self, conn: Connection, view: View) -> Sequence[Want]:
        """The work items the database wants, read in ``conn``."""
        ...

    def admit(self, want: Want, view: View) -> bool:
        """Whether a QUEUED item may start now (beyond the slot), e.g. a per-account quota."""
        ...

    def ended(self, want: Want, status: WorkStatus | None, now: float) -> Outcome:
        """This server's worker of a still-wanted item ended without the kind moving on (it crashed, or
        returned with the work unfinished); ``status`` None: the executor forgot it."""
        ...

    def orphaned(self, want: Want) -> Outcome:
        """The server that ran this item died, and its worker could not be adopted."""
        ...

    def absent(self, want: Want) -> None:
        """A STOP item that nothing runs any more: finish the stop (e.g. record STOPPED)."""
        ...


class BaseKind:
    """Defaults for the hooks a kind need not write."""

    name = ""
    target = ""
    resources: dict[str, float] | None = None

    def slots(self) -> int | None:
        return None

    def adoptable(self) -> bool:
        return True

    def admit(self, want: Want, view: View) -> bool:
        return True

    def ended(self, want: Want, status: WorkStatus | None, now: float) -> Outcome:
        return Outcome.RESTART

    def orphaned(self, want: Want) -> Outcome:
        return Outcome.RESTART

    def absent(self, want: Want) -> None:
        return None


class Executor(Protocol):
    def submit(
        self, work_id: str, target: str, payload: dict[str, Any], resources: dict[str, float] | None = None
    ) -> None: ...
    def request_stop(self, work_id: str) -> bool: ...
    def status(self, work_id: str) -> WorkStatus | None: ...
    def running(self) -> list[str]: ...
    def adopt(self, work_id: str) -> bool: ...


class Supervisor:
    def __init__(self, leases: Leases, executor: Executor, kinds: Sequence[Kind]) -> None:
        self.leases = leases
        self.executor = executor
        self.kinds = list(kinds)
        self._reported: dict[str, Any] = {}  # work id -> the progress last written to its lease
        self._lock = threading.Lock()  # one pass at a time (the reconciler's thread, tests, shutdown)
        self._again = False
        self._renewer: Renewer | None = None

    @property
    def store(self) -> Any:
        return self.leases.store

    def start(self) -> None:
        """Renew this server's leases from now on (a thread of its own)."""
        if self._renewer is None:
            self._renewer = Renewer(self.leases)
            self._renewer.start()

    def close(self) -> None:
        """At a clean shutdown, once this server's workers stopped: give their leases up, so other servers
        take the work over at once."""
        if self._renewer is not None:
            self._renewer.stop()
        try:
            self.leases.give_up_all()
        except Exception:  # the database may be gone; the leases then expire by themselves
            log.warning("giving up the work leases failed", exc_info=True)

    def run_once(self) -> None:
        with self._lock:
            for kind in self.kinds:
                # A hook that moved on (a new attempt) is followed by another look, which starts the new
                # attempt at once instead of a pass later.
                for _ in range(3):
                    try:
                        if not self._pass(kind):
                            break
                    except Exception:  # one broken kind must not stop the others
                        log.exception("supervising %s failed", kind.name)
                        break

    def renew(self) -> None:
        self.leases.renew()

    def local(self, kind: str) -> list[str]:
        """This server's running workers of ``kind``."""
        return [w for w in self.executor.running() if _kind_of(w) == kind]

    # --- One kind ----------------------------------------------------------------------------------------
    def _pass(self, kind: Kind) -> bool:
        """One look at ``kind``; True if a hook moved something on and another look is worth it."""
        running = set(self.local(kind.name))
        with self.store.read() as conn:
            leases = self.leases.of_kind(conn, kind.name)
            view = self._view(kind, leases, running)
            wants = list(kind.wanted(conn, view))
        wanted = {str(w.work_id): w for w in wants}
        # Our workers that nobody wants (deleted, superseded, stopped) or whose lease another server took.
        for wid in running:
            lease = leases.get(wid)
            if wid not in wanted or lease is None or not self.leases.mine(lease):
                self.executor.request_stop(wid)
        free = kind.slots()
        busy = len(running)
        self._again = False
        # Work that should run comes first, queued work after it: a retry of interrupted work keeps the slot
        # it held, and queued work waits for the look after one (``_again``), when the retry has started.
        ordered = sorted(wanted.items(), key=lambda item: item[1].mode is Mode.QUEUED)
        for wid, want in ordered:
            if want.mode is Mode.QUEUED and self._again:
                break
            try:
                if self._act(kind, want, leases.get(wid), view, free is None or busy < free):
                    busy += 1
            except Exception:
                log.exception("supervising %s failed", wid)
        for wid, lease in leases.items():
            if wid not in wanted:
                self._forget(lease, wid in running)
        return self._again

    def _view(self, kind: Kind, leases: dict[str, Lease], running: set[str]) -> View:
        statuses: dict[str, WorkStatus] = {}
        placements: dict[str, Where] = {}
        for wid, lease in leases.items():
            if self.leases.mine(lease):
                status = self.executor.status(wid)
                if status is not None:
                    statuses[wid] = status
                    self._report(lease, status)
                    if status.progress is not None and lease.progress != status.progress:
                        leases[wid] = lease = _with_progress(lease, status.progress)
                placements[wid] = Where.HERE if wid in running else Where.ENDED
            else:
                placements[wid] = Where.ORPHANED if self.leases.expired(lease) else Where.ELSEWHERE
        return View(leases, statuses, placements)

    def _report(self, lease: Lease, status: WorkStatus) -> None:
        """Copy the worker's progress into its lease when it changed (readiness, addresses)."""
        if status.progress is None or self._reported.get(lease.work_id) == status.progress:
            return
        if lease.progress != status.progress:
            self.leases.report(lease, status.progress)
        self._reported[lease.work_id] = status.progress

    def _act(self, kind: Kind, want: Want, lease: Lease | None, view: View, slot_free: bool) -> bool:
        """Bring one wanted item along; True if it started here and takes a slot."""
        wid = str(want.work_id)
        where = view.where(wid)
        if where is Where.HERE:
            if want.mode is Mode.STOP and want.signal:
                self.executor.request_stop(wid)  # the stop may have been asked of another server
            return False
        if where is Where.ELSEWHERE:
            return False
        if where is Where.ORPHANED:
            assert lease is not None
            taken = self.leases.take_over(lease)
            if taken is None:
                return False  # another server was first
            log.warning("work %s: its server %s is gone; this server takes it over", wid, lease.owner)
            if self.executor.adopt(wid):
                if kind.adoptable():
                    if want.mode is Mode.STOP and want.signal:
                        self.executor.request_stop(wid)
                    return False
                self.executor.request_stop(wid)  # it would go on calling its dead server: a new one instead
            if want.mode is Mode.STOP:
                kind.absent(want)
                self._release(taken)
                return False
            return self._after(kind, want, taken, kind.orphaned(want))
        if where is Where.ENDED:
            assert lease is not None
            if want.mode is Mode.STOP:
                kind.absent(want)
                self._release(lease)
                return False
            return self._after(kind, want, lease, kind.ended(want, view.status(wid), self.leases.clock()))
        # Nothing runs it.
        if want.mode is Mode.STOP:
            kind.absent(want)
            return False
        if want.mode is Mode.QUEUED and not (slot_free and kind.admit(want, view)):
            return False
        claimed = self.leases.claim(want.work_id)
        if claimed is None:
            return False  # another server claimed it since we looked
        return self._start(kind, want, claimed)

    def _after(self, kind: Kind, want: Want, lease: Lease, outcome: Outcome) -> bool:
        if outcome is Outcome.RESTART:
            return self._start(kind, want, lease)
        if outcome is Outcome.RELEASE:
            self._release(lease)
            self._again = True
        return False

    def _start(self, kind: Kind, want: Want, lease: Lease) -> bool:
        try:
            self.executor.submit(lease.work_id, kind.target, want.payload(), resources=kind.resources)
        except (ExecutorClosed, WorkAlreadyRunning):
            return False  # shutting down (the lease expires with this server), or already running here
        except Exception:
            self._release(lease)  # nothing started: let a later pass (or another server) try again
            raise
        return True

    def _release(self, lease: Lease) -> None:
        self._reported.pop(lease.work_id, None)
        self.leases.release(lease)

    def _forget(self, lease: Lease, running_here: bool) -> None:
        """A lease of an item nobody wants any more."""
        if self.leases.mine(lease):
            if not running_here:  # asked to stop above; released once its worker is gone
                self._release(lease)
        elif self.leases.expired(lease):
            taken = self.leases.take_over(lease)
            if taken is None:
                return
            if self.executor.adopt(lease.work_id):
                self.executor.request_stop(lease.work_id)  # a worker that outlived its server: stop it
            else:
                self._release(taken)


def _kind_of(work_id: str) -> str | None:
    parsed = WorkId.parse(work_id)
    return None if parsed is None else parsed.kind


def _with_progress(lease: Lease, progress: dict[str, Any]) -> Lease:
    return Lease(
        lease.work_id, lease.kind, lease.owner, lease.epoch, lease.acquired_at, lease.expires_at, progress
    )
