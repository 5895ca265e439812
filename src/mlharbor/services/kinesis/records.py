"""Records in the database: PutRecord(s) store them, GetRecords reads them, the retention pass trims them.

A record is acknowledged only once its transaction has committed, so a server crash loses nothing that a
producer was told is stored. Each shard's counter (``kinesis_shards.next_sequence``) hands out the
records' sequence numbers in the same transaction: shards are updated in index order, so two PutRecords
touching the same shards cannot deadlock on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update

from mlharbor.store.tables import kinesis_records as table
from mlharbor.store.tables import kinesis_shards as shards_table

MAX_RECORDS_PER_READ = 10_000
MAX_BYTES_PER_READ = 10 * 1024 * 1024

_TAKE = (
    update(shards_table)
    .where(shards_table.c.stream_id == bindparam("sid"), shards_table.c.shard_index == bindparam("shard"))
    .values(next_sequence=shards_table.c.next_sequence + bindparam("n"))
    .returning(shards_table.c.next_sequence)
)
_INSERT = insert(table)
_READ = (
    select(table.c.sequence, table.c.partition_key, table.c.data, table.c.arrival)
    .where(
        table.c.stream_id == bindparam("sid"),
        table.c.shard_index == bindparam("shard"),
        table.c.sequence > bindparam("after"),
        table.c.arrival >= bindparam("cutoff"),
    )
    .order_by(table.c.sequence)
    .limit(bindparam("limit"))
)
_FIRST_AT = select(func.min(table.c.sequence)).where(
    table.c.stream_id == bindparam("sid"),
    table.c.shard_index == bindparam("shard"),
    table.c.arrival >= bindparam("at"),
)


@dataclass(frozen=True, slots=True)
class Entry:
    data: bytes
    partition_key: str
    explicit_hash_key: str | None = None


def hash_key(entry: Entry) -> int:
    """Where a record goes: its ExplicitHashKey, else the MD5 of its partition key as a 128-bit number."""
    if entry.explicit_hash_key is not None:
        return int(entry.explicit_hash_key)
    return int.from_bytes(hashlib.md5(entry.partition_key.encode("utf-8")).digest(), "big")


def random_hash_key() -> int:
    """RecordDistributionStrategy AUTO: records spread evenly, whatever their keys."""
    return random.getrandbits(128)


def put(conn: Connection, stream_id: str, placed: list[tuple[int, Entry]], now: float) -> list[int] | None:
    """Store ``(shard index, entry)`` pairs; their counters in the same order, or None if the stream's
    shards are gone (deleted meanwhile)."""
    wanted: dict[int, int] = {}
    for shard, _ in placed:
        wanted[shard] = wanted.get(shard, 0) + 1
    next_free: dict[int, int] = {}
    for shard in sorted(wanted):
        after = conn.execute(_TAKE, {"sid": stream_id, "shard": shard, "n": wanted[shard]}).scalar()
        if after is None:
            return None
        next_free[shard] = after - wanted[shard]
    counters: list[int] = []
    rows: list[dict[str, Any]] = []
    for shard, entry in placed:
        counter = next_free[shard]
        next_free[shard] = counter + 1
        counters.append(counter)
        rows.append({
            "stream_id": stream_id, "shard_index": shard, "sequence": counter,
            "partition_key": entry.partition_key, "data": entry.data, "arrival": now,
        })  # fmt: skip
    if rows:
        conn.execute(_INSERT, rows)
    return counters


def read(
    conn: Connection, stream_id: str, shard: int, after: int, limit: int, cutoff: float
) -> list[Row[Any]]:
    """Up to ``limit`` records after counter ``after``, oldest first, stopping before 10 MiB (at least one
    record, as AWS returns a record however large)."""
    out: list[Row[Any]] = []
    size = 0
    result = conn.execution_options(yield_per=256).execute(
        _READ, {"sid": stream_id, "shard": shard, "after": after, "cutoff": cutoff, "limit": limit}
    )
    for row in result:
        size += len(row[2]) + len(row[1]) * 4  # data, and the partition key at most 4 bytes a character
        if out and size > MAX_BYTES_PER_READ:
            break
        out.append(row)
    result.close()
    return out


def first_at(conn: Connection, stream_id: str, shard: int, at: float) -> int | None:
    """The counter of the first record that arrived at or after ``at``."""
    return conn.execute(_FIRST_AT, {"sid": stream_id, "shard": shard, "at": at}).scalar()


def trim(conn: Connection, stream_id: str, shard: int, cutoff: float | None, batch: int) -> int:
    """Delete up to ``batch`` records of a shard that arrived before ``cutoff`` (all of them if None), found
    through the (stream, shard, arrival) index."""
    old = select(table.c.sequence).where(table.c.stream_id == stream_id, table.c.shard_index == shard)
    if cutoff is not None:
        old = old.where(table.c.arrival < cutoff)
    sequences = list(conn.execute(old.limit(batch)).scalars())
    if sequences:
        conn.execute(
            delete(table).where(
                table.c.stream_id == stream_id, table.c.shard_index == shard, table.c.sequence.in_(sequences)
            )
        )
    return len(sequences)
