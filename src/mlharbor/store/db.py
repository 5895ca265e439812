"""The durable store: one SQLAlchemy engine, migrated to head at start.

SQLite (WAL) is the embedded default; PostgreSQL (postgresql+psycopg://) is supported unchanged. Several
API servers may share one PostgreSQL database; a SQLite database serves one (``hold_single_server``).
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, insert, make_url, select, text
from sqlalchemy.exc import IntegrityError

from mlharbor.store.tables import server_state

MIGRATIONS = Path(__file__).parent / "migrations"


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = _create_engine(url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest revision (run at every start; a no-op when current)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: committed on success, rolled back on any exception."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read whose statements all see the database as it was at the first one (PostgreSQL: a
        REPEATABLE READ transaction; SQLite: an explicit read transaction, which WAL keeps on one
        snapshot). Costs nothing more than ``read``; for reads that must agree with each other while
        other processes commit."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN")  # the driver only begins before writes by itself
            else:
                conn.execution_options(isolation_level="REPEATABLE READ")
            yield conn

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def server_secret(self, key: str) -> bytes:
        """A random secret created once and shared by every server process on this database."""
        with self.begin() as conn:
            value = conn.execute(select(server_state.c.value).where(server_state.c.key == key)).scalar()
            if value is not None:
                return bytes.fromhex(value)
        try:
            with self.begin() as conn:
                conn.execute(insert(server_state).values(key=key, value=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another process created it first; use theirs
        with self.read() as conn:
            return bytes.fromhex(
                conn.execute(select(server_state.c.value).where(server_state.c.key == key)).scalar_one()
            )

    def dispose(self) -> None:
        self.engine.dispose()


class DatabaseInUse(Exception):
    """Another server holds this SQLite database."""


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (absolute); None for in-memory SQLite and other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or parsed.query.get("mode") == "memory"
    ):
        return None
    if database.startswith("file:"):  # a URI filename (?uri=true)
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database).resolve()


_held: list[IO[str]] = []  # the open lock files: the locks last as long as the process


def hold_single_server(url: str) -> Path | None:
    """Make this process the one server of a SQLite database (SQLite has one writer, and the servers
    of one database share state through it only: PostgreSQL is for several servers). Locks
    ``<database file>.lock`` (``flock``) until the process ends: the kernel releases it however the
    process ends, kill -9 included. Returns the lock file, or None where no lock is needed (PostgreSQL,
    in-memory SQLite). Raises ``DatabaseInUse`` when another process holds it. Only ``serve`` calls this:
    the worker processes a server starts open its database too (the lock file is not inherited)."""
    database = sqlite_file(url)
    if database is None:
        return None
    path = database.with_name(database.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.open("a+")  # opened without truncating: a holder's pid stays readable
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        by = f" (held by process {holder})" if holder.isdigit() else ""
        raise DatabaseInUse(
            f"the SQLite database {database} is in use by another mlharbor server{by}: SQLite supports "
            "one server per database; use PostgreSQL (--database-url postgresql+psycopg://...) to run "
            "several"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _held.append(lock)
    return path


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers run beside the writer; NORMAL sync is durable across process crashes.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
