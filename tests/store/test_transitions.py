"""Compare-and-set state transitions on the real database (SQLite, or PostgreSQL in .ci/run)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import insert, select

from mlharbor.services.rekognition.stream_processors import STATES
from mlharbor.store.db import Store
from mlharbor.store.tables import stream_processors as table
from mlharbor.store.transitions import IllegalTransition, machine, transition
from tests.conftest import _fresh_database

pytestmark = pytest.mark.storage


@pytest.fixture
def store(tmp_path):
    url, drop = _fresh_database(tmp_path)
    store = Store(url)
    store.migrate()
    store.migrate()  # a second start finds the schema current
    yield store
    store.dispose()
    drop()


def _add(store: Store, name: str) -> str:
    arn = f"arn:aws:rekognition:us-east-1:000000000000:streamprocessor/{name}"
    now = time.time()
    with store.begin() as conn:
        conn.execute(
            insert(table).values(
                arn=arn,
                account_id="000000000000",
                region="us-east-1",
                name=name,
                status="STOPPED",
                version=0,
                incarnation=name,
                created_at=now,
                updated_at=now,
                input_stream_arn=f"in-{name}",
                spec={},
            )
        )
    return arn


def _row(store: Store, arn: str):  # type: ignore[no-untyped-def]
    with store.read() as conn:
        return conn.execute(select(table).where(table.c.arn == arn)).one()


def test_only_one_of_many_concurrent_transitions_wins(store):
    arn = _add(store, "race")
    start = threading.Barrier(8)
    wins: list[bool] = []

    def contender() -> None:
        start.wait()
        with store.begin() as conn:
            wins.append(
                transition(
                    conn, table, STATES, table.c.arn == arn, current="STOPPED", version=0, target="STARTING"
                )
            )

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1
    row = _row(store, arn)
    assert (row.status, row.version) == ("STARTING", 1)


def test_stale_version_does_not_overwrite(store):
    arn = _add(store, "stale")
    with store.begin() as conn:
        assert transition(
            conn, table, STATES, table.c.arn == arn, current="STOPPED", version=0, target="STARTING"
        )
        assert transition(
            conn, table, STATES, table.c.arn == arn, current="STARTING", version=1, target="RUNNING"
        )
    with store.begin() as conn:
        # A writer that read STARTING@1 before the move to RUNNING must not win.
        assert not transition(
            conn, table, STATES, table.c.arn == arn, current="STARTING", version=1, target="STOPPED"
        )
    assert _row(store, arn).status == "RUNNING"


def test_illegal_transition_is_refused_before_touching_the_row(store):
    arn = _add(store, "illegal")
    with pytest.raises(IllegalTransition), store.begin() as conn:
        transition(conn, table, STATES, table.c.arn == arn, current="STOPPED", version=0, target="RUNNING")
    assert _row(store, arn).status == "STOPPED"


def test_a_table_must_name_every_state():
    with pytest.raises(ValueError):
        machine("broken", initial="A", table={"A": ("B",)})


def test_server_secret_is_stable_across_store_instances(store):
    again = Store(store.url)
    try:
        assert again.server_secret("pagination") == store.server_secret("pagination")
        assert again.server_secret("other") != store.server_secret("pagination")
    finally:
        again.dispose()
