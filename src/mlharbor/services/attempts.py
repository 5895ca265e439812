"""What long-running work shares (recognizer training, detection jobs, stream processors): work that runs
in attempts, and stops on request.

A row carries an attempt number; a crashed worker is retried with the next one, and every write a worker
makes is guarded by its attempt, so a worker that outlived a crash cannot overwrite its replacement's work.
Desired state lives in the row: a stop request moves it out of its running state, which the worker sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Row, Table, select, update

from mlharbor.logs import setup_logging
from mlharbor.runtime import WorkContext
from mlharbor.runtime.memory import keep_freed_memory
from mlharbor.store.db import Store
from mlharbor.store.transitions import StateMachine, transition

STOP_POLL_SECONDS = 0.25  # how often a worker looks at the database for a stop request


def work_id(arn: str, attempt: int) -> str:
    return f"{arn}#attempt-{attempt}"


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


def payload(settings: Any, arn: str, attempt: int, **extra: Any) -> dict[str, Any]:
    """What a worker needs to reach the store and the object store, and which attempt it is."""
    return {
        "arn": arn,
        "attempt": attempt,
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
    attempt: int | None = None,
    **values: Any,
) -> str | None:
    """Move the row along ``targets`` ({from_state: to_state}) whatever it currently is, retrying the
    compare-and-set when another writer got in first. Returns the state it ended in, or None if the row
    is gone, in a state ``targets`` does not name, or (with ``attempt``) owned by another attempt. A
    callable value is given the current row."""
    for _ in range(20):
        with store.begin() as conn:
            row = conn.execute(select(table).where(table.c.arn == arn)).first()
            if row is None or row.status not in targets or attempt not in (None, row.attempt):
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


class StopWatch:
    """True once a stop was requested, through the executor or in the database (after a restart, or
    from another server process, the database is the only channel); also once the row left
    ``running_state`` (one state or a set) for any reason or a newer attempt replaced this one."""

    def __init__(
        self,
        ctx: WorkContext,
        store: Store,
        table: Table,
        arn: str,
        attempt: int,
        running_state: str | frozenset[str],
    ) -> None:
        self.ctx, self.store, self.table, self.arn, self.attempt = ctx, store, table, arn, attempt
        self.running_states = {running_state} if isinstance(running_state, str) else running_state
        self._next_check = 0.0
        self._seen = False

    def __call__(self) -> bool:
        if self._seen or self.ctx.stop_requested():
            self._seen = True
            return True
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + STOP_POLL_SECONDS
            with self.store.read() as conn:
                row = conn.execute(
                    select(self.table.c.status, self.table.c.attempt).where(self.table.c.arn == self.arn)
                ).first()
            self._seen = row is None or row.status not in self.running_states or row.attempt != self.attempt
        return self._seen
