"""Leases: which server process runs each piece of long work, recorded in the database.

A server claims a work item (one INSERT: the first claimer wins) before it starts it, and renews all its
leases with one UPDATE a few times per lease period. A lease that was not renewed in time belongs to a server
that died (or stalled); another server takes it over with a compare-and-set on its ``epoch``, which grows by
one at every takeover. Every other write a holder makes (release, progress) names the epoch it holds, so a
server that lost a lease changes nothing of its successor's. "Not in my executor" never means "dead": only an
expired lease does.

``exclusive``: this server is the only one on the database (SQLite, whose server holds a file lock), so a
lease of any other owner is a predecessor's and taken over at once instead of after it expires.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from mlharbor.runtime.work import WorkId
from mlharbor.store.db import Store
from mlharbor.store.tables import work_leases as table

log = logging.getLogger(__name__)

Clock = Callable[[], float]


HOST = socket.gethostname()


def new_owner_id() -> str:
    """This server process's identity as a lease holder, ``host:pid:random``: readable, and unique even when
    a pid is reused."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _gone_from_here(owner: str) -> bool:
    """Whether ``owner`` names a process of this machine that no longer exists. (A pid reused since by
    another process reads as alive: the lease then simply runs out.)"""
    host, _, rest = owner.partition(":")
    pid, _, _ = rest.partition(":")
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


@dataclass(frozen=True, slots=True)
class Lease:
    work_id: str
    kind: str
    owner: str
    epoch: int
    acquired_at: float
    expires_at: float
    progress: dict[str, Any] | None = None


class Leases:
    def __init__(
        self, store: Store, owner: str, ttl: float, *, clock: Clock = time.time, exclusive: bool = False
    ) -> None:
        self.store, self.owner, self.ttl, self.clock, self.exclusive = store, owner, ttl, clock, exclusive

    def mine(self, lease: Lease) -> bool:
        return lease.owner == self.owner

    def expired(self, lease: Lease) -> bool:
        """Whether the lease's holder is gone (never true of this server's own leases): it stopped renewing
        it, or it was a server process on this machine that no longer exists (a server restarted on the
        same machine takes its predecessor's work over at once)."""
        if self.mine(lease):
            return False
        return self.exclusive or lease.expires_at <= self.clock() or _gone_from_here(lease.owner)

    def of_kind(self, conn: Connection, kind: str) -> dict[str, Lease]:
        rows = conn.execute(select(table).where(table.c.kind == kind)).all()
        return {row.work_id: Lease(**row._mapping) for row in rows}

    def progress(self, conn: Connection, work_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The last progress reported for these work items, whoever runs them."""
        ids = list(work_ids)
        if not ids:
            return {}
        query = select(table.c.work_id, table.c.progress).where(table.c.work_id.in_(ids))
        return {row.work_id: row.progress for row in conn.execute(query) if row.progress is not None}

    def claim(self, work_id: WorkId) -> Lease | None:
        """The lease of a work item nobody holds, or None if somebody does."""
        now = self.clock()
        lease = Lease(str(work_id), work_id.kind, self.owner, 1, now, now + self.ttl)
        try:
            with self.store.begin() as conn:
                conn.execute(insert(table).values(**_values(lease)))
        except IntegrityError:
            return None
        return lease

    def take_over(self, lease: Lease) -> Lease | None:
        """The expired ``lease`` for this server (its epoch one more), or None if another server was first."""
        now = self.clock()
        taken = Lease(lease.work_id, lease.kind, self.owner, lease.epoch + 1, now, now + self.ttl)
        with self.store.begin() as conn:
            changed = conn.execute(
                update(table)
                .where(table.c.work_id == lease.work_id, table.c.epoch == lease.epoch)
                .values(owner=taken.owner, epoch=taken.epoch, acquired_at=now, expires_at=taken.expires_at)
            ).rowcount
        return taken if changed else None

    def renew(self) -> int:
        """Extend every lease this server holds; how many there are."""
        with self.store.begin() as conn:
            return conn.execute(
                update(table).where(table.c.owner == self.owner).values(expires_at=self.clock() + self.ttl)
            ).rowcount

    def report(self, lease: Lease, progress: dict[str, Any] | None) -> bool:
        with self.store.begin() as conn:
            return bool(conn.execute(update(table).where(*_held(lease)).values(progress=progress)).rowcount)

    def release(self, lease: Lease) -> None:
        with self.store.begin() as conn:
            conn.execute(delete(table).where(*_held(lease)))

    def drop(self, lease: Lease) -> bool:
        """Remove an expired lease of a dead server (nothing of it runs any more)."""
        with self.store.begin() as conn:
            return bool(
                conn.execute(
                    delete(table).where(table.c.work_id == lease.work_id, table.c.epoch == lease.epoch)
                ).rowcount
            )

    def give_up_all(self) -> None:
        """At a clean shutdown, after this server's work stopped: its leases expire now, so other servers
        take the work over on their next pass instead of waiting out the lease period."""
        with self.store.begin() as conn:
            conn.execute(update(table).where(table.c.owner == self.owner).values(expires_at=0.0))


def _held(lease: Lease) -> tuple[Any, ...]:
    return (table.c.work_id == lease.work_id, table.c.owner == lease.owner, table.c.epoch == lease.epoch)


def _values(lease: Lease) -> dict[str, Any]:
    return {
        "work_id": lease.work_id,
        "kind": lease.kind,
        "owner": lease.owner,
        "epoch": lease.epoch,
        "acquired_at": lease.acquired_at,
        "expires_at": lease.expires_at,
        "progress": lease.progress,
    }


class Renewer:
    """Renews this server's leases from a thread of its own, several times per lease period, so a slow
    reconcile pass (a retention pass deleting many rows) never lets them lapse."""

    def __init__(self, leases: Leases, interval: float | None = None) -> None:
        self.leases = leases
        self.interval = interval if interval is not None else leases.ttl / 6
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mlharbor-leases", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.leases.renew()
            except Exception:  # the database may be briefly unreachable: try again next time
                log.warning("renewing work leases failed", exc_info=True)


class LeaderPass:
    """A reconcile pass that one server of a deployment runs at a time (retention: every server deleting the
    same expired rows would only waste work): whichever holds the pass's lease, ``pass|<name>|leader``,
    renewed with the server's other leases and taken over when its holder died."""

    def __init__(self, leases: Leases, name: str, run: Callable[[], None]) -> None:
        self.leases, self.run = leases, run
        self.work_id = WorkId("pass", name, "leader")

    def __call__(self) -> None:
        if self._lead():
            self.run()

    def _lead(self) -> bool:
        with self.leases.store.read() as conn:
            row = conn.execute(select(table).where(table.c.work_id == str(self.work_id))).first()
        if row is None:
            return self.leases.claim(self.work_id) is not None
        lease = Lease(**row._mapping)
        if self.leases.mine(lease):
            return True
        return self.leases.expired(lease) and self.leases.take_over(lease) is not None
