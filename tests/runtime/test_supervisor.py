"""The generic supervisor on its own: leases in a real database, a fake executor and a fake clock, two
"servers" (supervisors with different owner ids) sharing the database."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from mlharbor.runtime.executor import WorkStatus
from mlharbor.runtime.leases import Leases
from mlharbor.runtime.supervisor import BaseKind, Mode, Outcome, Supervisor, View, Want, Where
from mlharbor.runtime.work import WorkId
from mlharbor.store.db import Store
from mlharbor.store.tables import work_leases
from tests.runtime.fake_executor import FakeExecutor

TTL = 3.0


class Kind(BaseKind):
    """A kind whose wants the test sets, recording every hook call."""

    name = "test"
    target = "tests.runtime:worker"

    def __init__(self, slots: int | None = None) -> None:
        self.wants: list[Want] = []
        self.calls: list[tuple[str, str]] = []
        self.on_ended = Outcome.RESTART
        self.on_orphaned = Outcome.RESTART
        self.limit = slots
        self.views: list[View] = []

    def slots(self) -> int | None:
        return self.limit

    def wanted(self, conn: Any, view: View) -> list[Want]:
        self.views.append(view)
        return self.wants

    def ended(self, want: Want, status: WorkStatus | None, now: float) -> Outcome:
        self.calls.append(("ended", str(want.work_id)))
        return self.on_ended

    def orphaned(self, want: Want) -> Outcome:
        self.calls.append(("orphaned", str(want.work_id)))
        return self.on_orphaned

    def absent(self, want: Want) -> None:
        self.calls.append(("absent", str(want.work_id)))


def work(n: int = 1, mode: Mode = Mode.RUN, **extra: Any) -> Want:
    return Want(WorkId("test", f"arn:thing/{n}", "attempt-1"), mode, lambda: {"n": n}, **extra)


class Server:
    def __init__(
        self, store: Store, owner: str, clock: list[float], *, adopts: bool = False, slots=None
    ) -> None:  # type: ignore[no-untyped-def]
        self.executor = FakeExecutor(adopts)
        self.kind = Kind(slots)
        self.leases = Leases(store, owner, TTL, clock=lambda: clock[0])
        self.supervisor = Supervisor(self.leases, self.executor, [self.kind])

    def run(self) -> None:
        self.supervisor.run_once()


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    store = Store(f"sqlite:///{tmp_path / 'leases.db'}")
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


@pytest.fixture
def pair(store, clock):  # type: ignore[no-untyped-def]
    return Server(store, "a", clock), Server(store, "b", clock)


def leases(store: Store) -> dict[str, tuple[str, int]]:
    with store.read() as conn:
        return {r.work_id: (r.owner, r.epoch) for r in conn.execute(select(work_leases))}


def test_exactly_one_server_starts_a_wanted_item_and_the_other_leaves_it_alone(pair, store):
    a, b = pair
    a.kind.wants = b.kind.wants = [work(1)]
    a.run()
    b.run()
    a.run()
    assert a.executor.submitted == [("test|arn:thing/1|attempt-1", Kind.target, {"n": 1})]
    assert b.executor.submitted == [] and b.executor.stops == []
    assert leases(store) == {"test|arn:thing/1|attempt-1": ("a", 1)}
    assert b.kind.views[-1].where(work(1).work_id) is Where.ELSEWHERE
    assert a.kind.views[-1].where(work(1).work_id) is Where.HERE


def test_a_dead_servers_work_is_taken_over_after_its_lease_expires_and_not_before(pair, store, clock):
    a, b = pair
    a.kind.wants = b.kind.wants = [work(1)]
    a.run()
    # a dies (stops renewing); b renews its own leases (none), and waits out a's.
    clock[0] += TTL - 0.1
    b.supervisor.renew()
    b.run()
    assert b.kind.calls == [] and b.executor.submitted == []
    clock[0] += 0.2
    b.run()
    assert b.kind.calls == [("orphaned", "test|arn:thing/1|attempt-1")]
    assert [w for w, _, _ in b.executor.submitted] == ["test|arn:thing/1|attempt-1"]  # RESTART: same item
    assert leases(store) == {"test|arn:thing/1|attempt-1": ("b", 2)}  # the epoch grew
    # a comes back (it was only stalled): it sees its lease is gone and stops its worker.
    a.run()
    assert a.executor.stops == ["test|arn:thing/1|attempt-1"]
    assert leases(store) == {"test|arn:thing/1|attempt-1": ("b", 2)}


def test_renewing_keeps_a_lease_however_long_the_work_runs(pair, clock):
    a, b = pair
    a.kind.wants = b.kind.wants = [work(1)]
    a.run()
    for _ in range(10):
        clock[0] += TTL / 2
        a.supervisor.renew()
        b.run()
    assert b.kind.calls == [] and b.executor.submitted == []


def test_an_executor_that_adopts_keeps_the_worker_instead_of_a_new_attempt(store, clock):
    a = Server(store, "a", clock)
    b = Server(store, "b", clock, adopts=True)
    a.kind.wants = b.kind.wants = [work(1), work(2, Mode.STOP)]
    a.kind.wants = [work(1)]
    a.run()
    a.kind.wants = [work(1), work(2)]
    a.run()
    clock[0] += TTL + 1
    b.run()
    assert b.executor.adopted == ["test|arn:thing/1|attempt-1", "test|arn:thing/2|attempt-1"]
    assert b.kind.calls == [] and b.executor.submitted == []
    assert b.executor.stops == ["test|arn:thing/2|attempt-1"]  # adopted, and told to stop as wanted


def test_a_worker_that_ended_is_handled_by_the_kind_and_its_lease_released(pair, store, clock):
    a, _ = pair
    a.kind.wants = [work(1)]
    a.run()
    wid = "test|arn:thing/1|attempt-1"
    a.executor.end(wid)
    a.kind.on_ended = Outcome.WAIT
    a.run()
    a.run()
    assert a.kind.calls == [("ended", wid)] * 2 and len(a.executor.submitted) == 1
    assert wid in leases(store)  # kept while the kind waits
    a.kind.on_ended = Outcome.RESTART
    a.run()
    assert len(a.executor.submitted) == 2 and a.executor.status(wid).state == "running"  # type: ignore[union-attr]
    a.executor.end(wid)

    def failed(want: Want, status: Any, now: float) -> Outcome:
        a.kind.wants = []  # e.g. the work is recorded as failed: nothing is wanted any more
        return Outcome.RELEASE

    a.kind.ended = failed  # type: ignore[method-assign]
    a.run()
    assert leases(store) == {} and len(a.executor.submitted) == 2


def test_work_nobody_wants_is_stopped_and_its_lease_released_once_it_ended(pair, store):
    a, _ = pair
    a.kind.wants = [work(1), work(2)]
    a.run()
    a.kind.wants = [work(2)]
    a.run()
    assert a.executor.stops == ["test|arn:thing/1|attempt-1"]
    assert "test|arn:thing/1|attempt-1" in leases(store)  # still stopping
    a.executor.end("test|arn:thing/1|attempt-1", "stopped")
    a.run()
    assert set(leases(store)) == {"test|arn:thing/2|attempt-1"}


def test_a_dead_servers_unwanted_leases_are_cleared_by_another(pair, store, clock):
    a, b = pair
    a.kind.wants = [work(1)]
    a.run()
    clock[0] += TTL + 1
    b.run()  # b wants nothing
    assert leases(store) == {}
    assert b.executor.submitted == []


def test_queued_items_start_within_the_slots_of_each_server(store, clock):
    a = Server(store, "a", clock, slots=2)
    b = Server(store, "b", clock, slots=2)
    wants = [work(n, Mode.QUEUED) for n in range(5)]
    a.kind.wants = b.kind.wants = wants
    a.run()
    b.run()
    a.run()
    assert [w for w, _, _ in a.executor.submitted] == [str(w.work_id) for w in wants[:2]]
    assert [w for w, _, _ in b.executor.submitted] == [str(w.work_id) for w in wants[2:4]]
    a.executor.end(str(wants[0].work_id), "succeeded")
    a.kind.wants = b.kind.wants = wants[1:]
    a.run()
    assert [w for w, _, _ in a.executor.submitted][-1] == str(wants[4].work_id)


def test_a_stop_is_signalled_to_the_worker_or_finished_when_none_runs(pair, store, clock):
    a, b = pair
    a.kind.wants = [work(1), work(2)]
    a.run()
    a.kind.wants = b.kind.wants = [work(1, Mode.STOP), work(2, Mode.STOP, signal=False), work(3, Mode.STOP)]
    b.run()  # the stops were asked of b: a's workers are a's to stop
    assert b.executor.stops == [] and b.kind.calls == [("absent", "test|arn:thing/3|attempt-1")]
    a.run()
    assert a.executor.stops == ["test|arn:thing/1|attempt-1"]  # not 2: it watches the database itself
    assert a.executor.submitted[-1][0] == "test|arn:thing/2|attempt-1"  # nothing new started
    # Its server died while stopping: another finishes the stop.
    clock[0] += TTL + 1
    b.kind.calls.clear()
    b.run()
    assert sorted(b.kind.calls) == [
        ("absent", "test|arn:thing/1|attempt-1"),
        ("absent", "test|arn:thing/2|attempt-1"),
        ("absent", "test|arn:thing/3|attempt-1"),
    ]
    assert b.executor.submitted == []


def test_progress_reaches_the_lease_where_every_server_reads_it(pair):
    a, b = pair
    a.kind.wants = b.kind.wants = [work(1)]
    a.run()
    a.executor.heartbeat("test|arn:thing/1|attempt-1", {"address": "127.0.0.1:5000", "ready": True})
    a.run()
    b.run()
    assert b.kind.views[-1].progress(work(1).work_id) == {"address": "127.0.0.1:5000", "ready": True}


def test_a_single_server_database_takes_its_predecessors_leases_at_once(store, clock):
    old = Server(store, "old", clock)
    old.kind.wants = [work(1)]
    old.run()
    new = Server(store, "new", clock)
    new.leases.exclusive = True
    new.kind.wants = [work(1)]
    new.run()
    assert new.kind.calls == [("orphaned", "test|arn:thing/1|attempt-1")]
    assert leases(store) == {"test|arn:thing/1|attempt-1": ("new", 2)}


def test_a_kind_that_moved_on_gets_another_look_in_the_same_pass(pair, store):
    a, _ = pair
    a.kind.wants = [work(1)]
    a.run()
    a.executor.end("test|arn:thing/1|attempt-1")

    def new_attempt(want: Want, status: Any, now: float) -> Outcome:
        a.kind.wants = [Want(WorkId("test", "arn:thing/1", "attempt-2"))]
        return Outcome.RELEASE

    a.kind.ended = new_attempt  # type: ignore[method-assign]
    a.run()
    assert [w for w, _, _ in a.executor.submitted] == [
        "test|arn:thing/1|attempt-1",
        "test|arn:thing/1|attempt-2",
    ]
    assert set(leases(store)) == {"test|arn:thing/1|attempt-2"}


def test_work_ids_are_structured():
    wid = WorkId("stream", "arn:aws:rekognition:us-east-1:1:streamprocessor/x", "s/inc/attempt-2")
    assert WorkId.parse(str(wid)) == wid
    assert WorkId.parse("arn:aws:comprehend:...#inc#attempt-1") is None
    with pytest.raises(ValueError):
        WorkId("a|b", "k", "r")


def test_a_retry_keeps_its_slot_before_queued_work_starts(store, clock):
    first = Server(store, "a", clock, slots=1)
    running, queued = work(1, Mode.QUEUED), work(2, Mode.QUEUED)
    first.kind.wants = [running, queued]
    first.run()
    assert [w for w, _, _ in first.executor.submitted] == [str(running.work_id)]
    # The server restarts (a new process, holding nothing); the row of the first item now says it runs.
    restarted = Server(store, "b", clock, slots=1)
    restarted.leases.exclusive = True
    retry = Want(WorkId("test", "arn:thing/1", "attempt-2"), Mode.RUN)

    def orphaned(want: Want) -> Outcome:
        restarted.kind.wants = [retry, queued]  # a new attempt
        return Outcome.RELEASE

    restarted.kind.orphaned = orphaned  # type: ignore[method-assign]
    restarted.kind.wants = [queued, Want(running.work_id, Mode.RUN)]
    restarted.run()
    restarted.run()
    assert [w for w, _, _ in restarted.executor.submitted] == [
        str(retry.work_id)
    ]  # the queued one still waits


def test_a_dead_predecessor_on_this_machine_is_taken_over_before_its_lease_runs_out(store, clock):
    import os
    import subprocess

    from mlharbor.runtime.leases import HOST

    dead = subprocess.Popen(["true"])  # a server process that has ended
    dead.wait()
    alive = Server(store, f"{HOST}:{os.getpid()}:1111", clock)
    alive.kind.wants = [work(2)]
    alive.run()
    a = Server(store, f"{HOST}:{dead.pid}:0000", clock)
    a.kind.wants = [work(1)]
    a.run()
    b = Server(store, f"{HOST}:{os.getpid()}:2222", clock)
    b.kind.wants = [work(1), work(2)]
    b.run()  # long before the leases run out
    assert b.kind.calls == [("orphaned", "test|arn:thing/1|attempt-1")]  # not the live server's


def test_a_worker_that_depends_on_its_dead_server_is_stopped_and_replaced_not_adopted(store, clock):
    a = Server(store, "a", clock)
    b = Server(store, "b", clock, adopts=True)
    b.kind.adoptable = lambda: False  # type: ignore[method-assign]
    a.kind.wants = b.kind.wants = [work(1)]
    a.run()
    clock[0] += TTL + 1

    def orphaned(want: Want) -> Outcome:
        b.kind.wants = [Want(WorkId("test", "arn:thing/1", "attempt-2"))]  # a new attempt
        return Outcome.RELEASE

    b.kind.orphaned = orphaned  # type: ignore[method-assign]
    b.run()
    assert b.executor.adopted == ["test|arn:thing/1|attempt-1"]
    assert set(b.executor.stops) == {"test|arn:thing/1|attempt-1"}  # adopted only to be stopped
    assert [w for w, _, _ in b.executor.submitted] == ["test|arn:thing/1|attempt-2"]


def test_a_leader_pass_runs_on_one_server_at_a_time(store, clock):
    from mlharbor.runtime.leases import LeaderPass

    runs: list[str] = []
    a = LeaderPass(Leases(store, "a", TTL, clock=lambda: clock[0]), "retention", lambda: runs.append("a"))
    b = LeaderPass(Leases(store, "b", TTL, clock=lambda: clock[0]), "retention", lambda: runs.append("b"))
    for _ in range(3):
        a()
        b()
        clock[0] += 1.0
        a.leases.renew()
    assert runs == ["a", "a", "a"]
    clock[0] += TTL + 1  # a died
    b()
    a()  # a comes back: b leads now
    assert runs[3:] == ["b"]
