"""The store itself: snapshot reads, and which databases a server must hold alone."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import insert, select

from mlharbor.store import db
from mlharbor.store.db import DatabaseInUse, Store, hold_single_server, sqlite_file
from mlharbor.store.tables import server_state
from tests.conftest import _fresh_database


@pytest.fixture
def store(tmp_path):
    url, drop = _fresh_database(tmp_path)
    store = Store(url)
    store.migrate()
    yield store
    store.dispose()
    drop()


@pytest.mark.storage
def test_a_snapshot_read_does_not_see_commits_made_after_its_first_statement(store):
    def add(key: str) -> None:
        with store.begin() as conn:
            conn.execute(insert(server_state).values(key=key, value="v"))

    keys = select(server_state.c.key).where(server_state.c.key.like("snap-%"))
    add("snap-1")
    with store.snapshot() as conn:
        assert conn.execute(keys).scalars().all() == ["snap-1"]
        add("snap-2")
        assert conn.execute(keys).scalars().all() == ["snap-1"]
    with store.read() as conn:
        assert sorted(conn.execute(keys).scalars()) == ["snap-1", "snap-2"]
    with store.snapshot() as conn:  # the connection went back to the pool as it was
        assert len(conn.execute(keys).scalars().all()) == 2
    add("snap-3")  # and writes are not held up by it
    with store.read() as conn:
        assert len(conn.execute(keys).scalars().all()) == 3


def test_only_a_sqlite_file_needs_holding(tmp_path):
    assert sqlite_file(f"sqlite:///{tmp_path}/a.db") == tmp_path.resolve() / "a.db"
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql+psycopg://u@127.0.0.1/db"):
        assert sqlite_file(url) is None
        assert hold_single_server(url) is None


_HOLD = """
import sys, time
from mlharbor.store.db import hold_single_server
print(hold_single_server(sys.argv[1]), flush=True)
time.sleep(60)
"""


def test_one_process_holds_a_sqlite_database_until_it_ends(tmp_path):
    url = f"sqlite:///{tmp_path}/deep/mlharbor.db"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == str(tmp_path.resolve() / "deep" / "mlharbor.db.lock")
        with pytest.raises(DatabaseInUse) as excinfo:
            hold_single_server(url)
        message = str(excinfo.value)
        assert str(tmp_path.resolve() / "deep" / "mlharbor.db") in message and "PostgreSQL" in message
        assert f"process {holder.pid}" in message
    finally:
        holder.kill()  # SIGKILL: the kernel lets go of its lock
        holder.wait()
    assert hold_single_server(url) is not None
    db._held.pop().close()  # this test process lets go too
