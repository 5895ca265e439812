"""What long-running work shares (recognizer training, detection jobs, stream processors): work that runs
in attempts, and stops on request.

A row carries an incarnation (its creation identity: a resource deleted and created again under the same
name has the same ARN but another incarnation) and an attempt number; a crashed worker is retried with the
next attempt. Every write a worker makes, and every look it takes for a stop, is guarded by both (its
``Fence``), so a worker that outlived a crash, a stop or its resource's deletion can neither overwrite its
replacement's work nor adopt a re-created resource. Desired state lives in the row: a stop request moves it
out of its running state, which the worker sees.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, Table, select, update
from sqlalchemy.sql import ColumnElement

from mlharbor.logs import setup_logging
from mlharbor.runtime import WorkContext, WorkStatus
from mlharbor.runtime.memory import keep_freed_memory
from mlharbor.runtime.supervisor import BaseKind, Mode, Outcome, View, Want
from mlharbor.runtime.work import WorkId
from mlharbor.store.db import Store
from mlharbor.store.transitions import StateMachine, transition

log = logging.getLogger(__name__)

STOP_POLL_SECONDS = 0.25  # how often a worker looks at the database for a stop request


def new_incarnation() -> str:
    """A resource's creation identity, given once at its creation."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Fence:
    """Which worker may act for a row: the resource's incarnation and the attempt it was started for."""

    incarnation: str
    attempt: int

    @classmethod
    def of(cls, row: Row[Any]) -> Fence:
        return cls(row.incarnation, row.attempt)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Fence:
        return cls(payload["incarnation"], payload["attempt"])

    def holds(self, row: Row[Any] | None) -> bool:
        return row is not None and row.incarnation == self.incarnation and row.attempt == self.attempt

    def clause(self, table: Table) -> ColumnElement[bool]:
        return (table.c.incarnation == self.incarnation) & (table.c.attempt == self.attempt)


def work_id(kind: str, arn: str, fence: Fence, session: str | None = None) -> WorkId:
    """Unique per resource incarnation (and session) and attempt: a re-created resource never reuses a
    work id."""
    run = f"{fence.incarnation}/attempt-{fence.attempt}"
    return WorkId(kind, arn, run if session is None else f"{session}/{run}")


def run_worker(
    ctx: WorkContext,
    payload: dict[str, Any],
    body: Callable[[WorkContext, Store, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """A model worker's entry: process tuning, the server's log format, and a store for ``body``."""
    keep_freed_memory()
    setup_logging(payload.get("log_format", "text"))
    store = Store(payload["database_url"])
    try:
        return body(ctx, store, payload)
    finally:
        store.dispose()


def payload(settings: Any, arn: str, fence: Fence, **extra: Any) -> dict[str, Any]:
    """What a worker needs to reach the store and the object store, and which incarnation and attempt
    it works for (``Fence.from_payload``)."""
    return {
        "arn": arn,
        "incarnation": fence.incarnation,
        "attempt": fence.attempt,
        "database_url": settings.resolved_database_url,
        "object_store": settings.object_store,
        "data_dir": str(settings.data_dir.resolve()),
        "log_format": settings.log_format,
        **extra,
    }


def with_details(**new: Any) -> Callable[[Row[Any]], dict[str, Any]]:
    """A value for ``move`` that merges ``new`` into the row's details JSON."""
    return lambda row: {**(row.details or {}), **new}


def move(
    store: Store,
    table: Table,
    states: StateMachine,
    arn: str,
    targets: dict[str, str],
    *,
    fence: Fence | None = None,
    **values: Any,
) -> str | None:
    """Move the row along ``targets`` ({from_state: to_state}) whatever it currently is, retrying the
    compare-and-set when another writer got in first. Returns the state it ended in, or None if the row
    is gone, in a state ``targets`` does not name, or (with ``fence``) not the fenced worker's any more.
    A callable value is given the current row."""
    for _ in range(20):
        with store.begin() as conn:
            row = conn.execute(select(table).where(table.c.arn == arn)).first()
            if row is None or row.status not in targets or (fence is not None and not fence.holds(row)):
                return None
            target = targets[row.status]
            extra = {k: (v(row) if callable(v) else v) for k, v in values.items()}
            if transition(
                conn, table, states, table.c.arn == arn, current=row.status, version=row.version,
                target=target, updated_at=time.time(), **extra,
            ):  # fmt: skip
                return target
    raise RuntimeError(f"could not update {arn}: too much contention")


def next_attempt(store: Store, table: Table, row: Row[Any], **values: Any) -> bool:
    """Give the row a new attempt number (the old attempt's worker can no longer write), and ``values``."""
    with store.begin() as conn:
        return bool(
            conn.execute(
                update(table)
                .where(table.c.arn == row.arn, table.c.version == row.version)
                .values(attempt=row.attempt + 1, version=row.version + 1, **values)
            ).rowcount
        )


# A safety net: work that has not finished after this many attempts, server restarts included, is failed
# (e.g. two servers on one database taking a training from each other without end).
MAX_ATTEMPTS_IN_ALL = 20


class StopWatch:
    """True once a stop was requested, through the executor or in the database (after a restart, or
    from another server process, the database is the only channel); also once the row left
    ``running_state`` (one state or a set) for any reason, or the fence no longer holds (a newer attempt
    replaced this one, or the resource was deleted and perhaps created again)."""

    def __init__(
        self,
        ctx: WorkContext,
        store: Store,
        table: Table,
        arn: str,
        fence: Fence,
        running_state: str | frozenset[str],
    ) -> None:
        self.ctx, self.store, self.table, self.arn, self.fence = ctx, store, table, arn, fence
        self.running_states = {running_state} if isinstance(running_state, str) else running_state
        self._next_check = 0.0
        self._seen = False
        # Another incarnation or attempt holds the row: this worker must not write anything more. (A row
        # that is simply gone, a processor deleted while stopping, is a stop: what is buffered still goes.)
        self.superseded = False

    def __call__(self) -> bool:
        if self._seen:
            return True
        if self.ctx.stop_requested():
            # The executor does not say why (a StopStreamProcessor, a deleted or re-created resource, a
            # shutdown): one look at the row tells whether this worker may still write.
            self._look()
            self._seen = True
            return True
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + STOP_POLL_SECONDS
            self._seen = self._look()
        return self._seen

    def _look(self) -> bool:
        """Read the row: sets ``superseded``; True if this worker should stop."""
        with self.store.read() as conn:
            row = conn.execute(
                select(self.table.c.status, self.table.c.attempt, self.table.c.incarnation).where(
                    self.table.c.arn == self.arn
                )
            ).first()
        self.superseded = row is not None and not self.fence.holds(row)
        return row is None or self.superseded or row.status not in self.running_states


# --- The declared kind ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """When a worker of the work's own dies: restart after ``backoff[n]`` seconds (n: deaths before this
    one), and give up at the ``max_deaths``-th. With ``stable_run``, deaths count in a row: a worker that ran
    that long before dying is a first death again. ``counter``: the row's column that counts them."""

    max_deaths: int
    backoff: tuple[float, ...] = (0.0,)
    stable_run: Callable[[], float] | None = None
    counter: str = "crashes"

    def delay(self, earlier: int) -> float:
        return self.backoff[min(earlier, len(self.backoff) - 1)]


@dataclass(frozen=True)
class AttemptWork:
    """A kind of work that runs in attempts of one row (training, detection jobs, stream sessions)."""

    name: str  # the work kind
    table: Table
    target: str  # the worker function
    queued: frozenset[str]  # states that wait for a slot on some server
    running: frozenset[str]  # states that should have a worker
    stopping: Mapping[str, Callable[[Row[Any]], None]]  # states of a stop, and how to end one nobody runs
    policy: RetryPolicy
    payload: Callable[[Row[Any], Fence], dict[str, Any]]
    exhausted: Callable[[Row[Any], str], None]  # record the failure when the work is out of retries
    restarted: str | None = None  # the row's Message while a new attempt runs
    session: Callable[[Row[Any]], str] | None = None  # a part of the work id beside the attempt
    order: Callable[[Table], Sequence[Any]] = lambda table: ()  # the order queued work starts in
    slots: Callable[[], int] | None = None  # queued items running at once on one server
    # A quota beyond the slots: (row, view, the kind's rows, work ids admitted so far in this pass).
    admit: Callable[[Row[Any], View, list[Row[Any]], set[str]], bool] | None = None
    signal_stop: bool = True  # whether a stop goes through the executor too (see ``Want.signal``)
    resources: dict[str, float] | None = None  # what one worker needs, where a back end places work
    adoptable: Callable[[], bool] = lambda: True  # see ``supervisor.Kind.adoptable``
    states: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", self.queued | self.running | frozenset(self.stopping))

    def work_id(self, row: Row[Any], fence: Fence | None = None) -> WorkId:
        session = self.session(row) if self.session is not None else None
        return work_id(self.name, row.arn, fence or Fence.of(row), session)


class AttemptKind(BaseKind):
    """The supervisor's kind for ``AttemptWork``: the current attempt of every active row is wanted; a
    worker that died is retried as a new attempt (its old one fenced out) after the policy's backoff, or
    the work fails; work whose server died gets a new attempt that is not counted (host crashes are not the
    work's fault)."""

    def __init__(self, store: Store, work: AttemptWork) -> None:
        self.store, self.work = store, work
        self.name, self.target, self.resources = work.name, work.target, work.resources
        self._noticed: dict[str, float] = {}  # work id -> when its death was noticed (no end time known)
        self._rows: list[Row[Any]] = []  # what the last look read, for ``admit``
        self._admitted: set[str] = set()

    def slots(self) -> int | None:
        return self.work.slots() if self.work.slots is not None else None

    def adoptable(self) -> bool:
        return self.work.adoptable()

    def wanted(self, conn: Connection, view: View) -> Sequence[Want]:
        work = self.work
        query = select(work.table).where(work.table.c.status.in_(sorted(work.states)))
        query = query.order_by(*work.order(work.table))
        wants = []
        self._rows, self._admitted = conn.execute(query).all(), set()
        for row in self._rows:
            wid = work.work_id(row)
            if row.status in work.queued:
                mode = Mode.QUEUED
            elif row.status in work.running:
                mode = Mode.RUN
            else:
                mode = Mode.STOP
            payload = _bind(work.payload, row, Fence.of(row))
            wants.append(Want(wid, mode, payload, row, signal=work.signal_stop))
        return wants

    def admit(self, want: Want, view: View) -> bool:
        if self.work.admit is not None and not self.work.admit(
            want.context, view, self._rows, self._admitted
        ):
            return False
        self._admitted.add(str(want.work_id))
        return True

    def ended(self, want: Want, status: WorkStatus | None, now: float) -> Outcome:
        row, policy = want.context, self.work.policy
        reason = "its worker was lost" if status is None else (status.error or status.state)
        earlier = getattr(row, policy.counter)
        ended_at = status.ended_at if status is not None and status.ended_at else None
        if ended_at is None:
            ended_at = self._noticed.setdefault(str(want.work_id), now)
        started = status.started_at if status is not None else None
        stable = policy.stable_run() if policy.stable_run is not None else None
        if stable is not None and started is not None and ended_at - started >= stable:
            earlier = 0  # deaths count in a row: one after a long healthy run starts the count again
        if now < ended_at + policy.delay(earlier):
            return Outcome.WAIT
        self._noticed.pop(str(want.work_id), None)
        if earlier + 1 >= policy.max_deaths or row.attempt + 1 >= MAX_ATTEMPTS_IN_ALL:
            self.work.exhausted(row, reason)
            return Outcome.RELEASE
        log.warning("%s of %s was interrupted (%s); starting a new attempt", self.name, row.arn, reason)
        self._next(row, **{policy.counter: earlier + 1})
        return Outcome.RELEASE

    def orphaned(self, want: Want) -> Outcome:
        row = want.context
        if row.attempt + 1 >= MAX_ATTEMPTS_IN_ALL:
            self.work.exhausted(row, "its server stopped")
        else:
            log.warning(
                "%s of %s was interrupted (its server is gone); starting a new attempt", self.name, row.arn
            )
            self._next(row)
        return Outcome.RELEASE

    def absent(self, want: Want) -> None:
        self.work.stopping[want.context.status](want.context)

    def _next(self, row: Row[Any], **values: Any) -> None:
        if self.work.restarted is not None:
            values["message"] = self.work.restarted
        next_attempt(self.store, self.work.table, row, **values)


def _bind(
    build: Callable[[Row[Any], Fence], dict[str, Any]], row: Row[Any], fence: Fence
) -> Callable[[], dict[str, Any]]:
    return lambda: build(row, fence)
