"""The worker fence every kind of long-running work shares (services/attempts.py): a worker acts for its
resource's incarnation and attempt only. A resource deleted and created again under the same name has
the same ARN and starts its attempts again, but a worker of the old one can neither write to it nor be
kept running by it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select

from mlharbor.services import attempts
from mlharbor.services.attempts import Fence, StopWatch
from mlharbor.services.rekognition.stream_processors import STATES
from mlharbor.store.db import Store
from mlharbor.store.tables import entities_detection_jobs, entity_recognizers
from mlharbor.store.tables import stream_processors as table
from tests.conftest import _fresh_database, wait_until

pytestmark = pytest.mark.storage
ARN = "arn:aws:rekognition:us-east-1:000000000000:streamprocessor/front-door"


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    url, drop = _fresh_database(tmp_path)
    store = Store(url)
    store.migrate()
    yield store
    store.dispose()
    drop()


class _Context:
    """A worker context nobody asked to stop (the stop can only come through the database)."""

    def stop_requested(self) -> bool:
        return False


def _create(store: Store, status: str, attempt: int) -> Fence:
    """Create the processor (a new incarnation) at ``status`` and ``attempt``."""
    fence = Fence(attempts.new_incarnation(), attempt)
    now = time.time()
    with store.begin() as conn:
        conn.execute(delete(table).where(table.c.arn == ARN))
        conn.execute(
            insert(table).values(
                arn=ARN, account_id="000000000000", region="us-east-1", name="front-door", status=status,
                version=0, incarnation=fence.incarnation, attempt=attempt, created_at=now, updated_at=now,
                input_stream_arn="in", spec={},
            )
        )  # fmt: skip
    return fence


def _row(store: Store) -> Any:
    with store.read() as conn:
        return conn.execute(select(table).where(table.c.arn == ARN)).one()


def test_a_worker_of_a_deleted_processor_cannot_act_for_one_created_again(store):
    old = _create(store, "RUNNING", attempt=1)
    watch = StopWatch(_Context(), store, table, ARN, old, frozenset({"STARTING", "RUNNING"}))  # type: ignore[arg-type]
    assert not watch() and not watch.superseded

    new = _create(store, "RUNNING", attempt=1)  # deleted, created again, started: attempt 1 again
    assert new.attempt == old.attempt and new != old
    wait_until(watch, timeout=5, what="the old worker's watch to see it")  # it polls every 0.25 s
    assert watch.superseded  # the old worker stops, and knows it must not write
    # Its writes change nothing: the new processor stays RUNNING.
    assert attempts.move(store, table, STATES, ARN, {"RUNNING": "STOPPING"}, fence=old) is None
    assert attempts.move(store, table, STATES, ARN, {"RUNNING": "FAILED"}, fence=old) is None
    assert _row(store).status == "RUNNING"
    # The new worker's do.
    assert attempts.move(store, table, STATES, ARN, {"RUNNING": "STOPPING"}, fence=new) == "STOPPING"


def test_work_ids_differ_between_incarnations_and_attempts(store):
    first = _create(store, "STOPPED", attempt=1)
    second = _create(store, "STOPPED", attempt=1)
    ids = {attempts.work_id("stream", ARN, first), attempts.work_id("stream", ARN, second), attempts.work_id(
        "stream", ARN, Fence(first.incarnation, 2))}  # fmt: skip
    assert len(ids) == 3
    assert Fence.of(_row(store)) == second
    assert Fence.from_payload(attempts.payload(_Settings(), ARN, second)) == second


class _Settings:
    resolved_database_url = "sqlite://"
    object_store = "local"
    data_dir = Path(".")
    log_format = "text"


def test_a_processor_deleted_while_stopping_is_a_stop_not_a_takeover(store):
    fence = _create(store, "STOPPING", attempt=3)
    watch = StopWatch(_Context(), store, table, ARN, fence, frozenset({"STOPPING"}))  # type: ignore[arg-type]
    assert not watch()
    with store.begin() as conn:
        conn.execute(delete(table).where(table.c.arn == ARN))
    wait_until(watch, timeout=5, what="the watch to see the deletion")
    assert not watch.superseded  # the worker still sends what it analysed before the stop


def _fill(table_: Any, **values: Any) -> dict[str, Any]:
    """A row of ``table_``: ``values``, and a placeholder for every other column that must have one."""
    by_type = {"String": "x", "Text": "x", "Integer": 0, "Float": 0.0, "JSON": {}}
    row = {
        c.name: by_type[type(c.type).__name__]
        for c in table_.columns
        if not c.nullable and c.default is None and c.server_default is None
    }
    return {**row, **values}


@pytest.mark.parametrize(
    ("table_", "running", "moves"),
    [
        (entity_recognizers, "TRAINING", {"TRAINING": "STOP_REQUESTED"}),
        (entities_detection_jobs, "IN_PROGRESS", {"IN_PROGRESS": "STOP_REQUESTED"}),
    ],
)
def test_every_kind_of_work_is_fenced_by_incarnation(store, table_, running, moves):
    """Recognizers and jobs share the fence: a re-created one ignores the old incarnation's worker."""
    from mlharbor.services.comprehend.jobs import STATES as JOB_STATES
    from mlharbor.services.comprehend.recognizers import STATES as RECOGNIZER_STATES

    states = RECOGNIZER_STATES if table_ is entity_recognizers else JOB_STATES
    arn = f"arn:aws:comprehend:us-east-1:000000000000:{table_.name}/same-name"
    old, new = Fence(attempts.new_incarnation(), 0), Fence(attempts.new_incarnation(), 0)
    for fence in (old, new):  # created, deleted, created again under the same name
        with store.begin() as conn:
            conn.execute(delete(table_).where(table_.c.arn == arn))
            conn.execute(insert(table_).values(**_fill(
                table_, arn=arn, status=running, incarnation=fence.incarnation, attempt=0
            )))  # fmt: skip
    assert attempts.move(store, table_, states, arn, moves, fence=old) is None
    watch = StopWatch(_Context(), store, table_, arn, old, running)  # type: ignore[arg-type]
    assert watch() and watch.superseded
    assert attempts.move(store, table_, states, arn, moves, fence=new) == "STOP_REQUESTED"
