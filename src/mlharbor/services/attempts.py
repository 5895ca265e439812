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

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Table, select, update
from sqlalchemy.sql import ColumnElement

from mlharbor.logs import setup_logging
from mlharbor.runtime import WorkContext
from mlharbor.runtime.memory import keep_freed_memory
from mlharbor.store.db import Store
from mlharbor.store.transitions import StateMachine, transition

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


def work_id(arn: str, fence: Fence) -> str:
    """Unique per resource incarnation and attempt: a re-created resource never reuses a work id."""
    return f"{arn}#{fence.incarnation}#attempt-{fence.attempt}"


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


def retry(store: Store, table: Table, row: Row[Any], *, crashed: bool, message: str) -> Fence | None:
    """A new attempt for work that was interrupted, or None if another writer changed the row first.
    ``crashed``: its own worker died (counted in ``crashes``); a server that went down is not the work's
    fault and is not counted, so crashes of the host never use up the work's retries."""
    values = {"crashes": row.crashes + 1} if crashed else {}
    if not next_attempt(store, table, row, message=message, **values):
        return None
    return Fence(row.incarnation, row.attempt + 1)


# A safety net: work that has not finished after this many attempts, server restarts included, is failed
# (e.g. two servers on one database taking a training from each other without end).
MAX_ATTEMPTS_IN_ALL = 20


def out_of_retries(row: Row[Any], crashed: bool, limit: int) -> bool:
    """Whether this crash is the ``limit``-th of the work's own workers, or the attempts ran out."""
    return (crashed and row.crashes + 1 >= limit) or row.attempt + 1 >= MAX_ATTEMPTS_IN_ALL


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
