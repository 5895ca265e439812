"""Kinesis Video fragments: their numbers, where their bytes live, and the index queries readers use.

A fragment is one Cluster of a PutMedia body. Its bytes are stored as one object, a complete MKV document
(the EBML header, a Segment of unknown size, Info, Tracks, then the Cluster with its size known), so any
reader can decode a single fragment; ``header_len`` says where the Cluster starts, which is where GetMedia
puts its fragment tags. The row in ``video_fragments`` is written after the object, and a fragment exists
(is ACKed PERSISTED, listed, played back) only once its row has committed.

Fragment numbers are 47-digit decimal strings, as AWS's are, strictly increasing per stream in the order
fragments arrive: ``9`` followed by the server time in microseconds and a three-digit counter, or the
previous number plus one when the clock has not moved past it. All have 47 digits, so comparing the
strings (as the database does) is comparing the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update

from mlharbor.blobs.store import BlobStore, S3Uri
from mlharbor.store.tables import video_fragments as table
from mlharbor.store.tables import video_streams as streams_table

DIGITS = 47
_BASE = 9 * 10**46

TimestampKind = Literal["PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"]


def next_number(last: str | None, now: float) -> str:
    candidate = _BASE + int(now * 1_000_000) * 1000
    if last is not None:
        candidate = max(candidate, int(last) + 1)
    return str(candidate)


def blob_uri(bucket: str, stream_arn: str, number: str) -> S3Uri:
    # stream/<name>/<creation ms> in the ARN keeps a re-created stream's fragments apart from the old one's.
    _, _, _, region, account, resource = stream_arn.split(":", 5)
    return S3Uri(bucket, f"kinesisvideo/{account}/{region}/{resource}/{number}.mkv")


def last_number(conn: Connection, stream_arn: str) -> str | None:
    return conn.execute(
        select(func.max(table.c.fragment_number)).where(table.c.stream_arn == stream_arn)
    ).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class Stored:
    """A fragment as the index knows it."""

    stream_arn: str
    fragment_number: str
    producer_ts: float
    server_ts: float
    fragment_timecode: int
    duration_ms: int
    size_bytes: int
    header_len: int
    frames: int
    blob_uri: str
    persisted: bool
    expires_at: float

    @classmethod
    def of(cls, row: Row[Any]) -> Stored:
        return cls(**{name: getattr(row, name) for name in cls.__slots__})

    @property
    def producer_end(self) -> float:
        return self.producer_ts + self.duration_ms / 1000


_COLUMNS = [c.name for c in table.columns]
# One prebuilt statement (compiled once): the row goes in only if its stream still exists, is the same one
# (not a re-created namesake) and is ACTIVE. Ingest runs it once per fragment, so it is kept cheap.
_RECORD = (
    insert(table)
    .from_select(
        _COLUMNS,
        select(*[bindparam(name, type_=table.c[name].type) for name in _COLUMNS]).where(
            select(streams_table.c.arn)
            .where(
                streams_table.c.arn == bindparam("stream_arn"),
                streams_table.c.incarnation == bindparam("stream_incarnation"),
                streams_table.c.status == "ACTIVE",
            )
            .exists()
        ),
    )
    .returning(table.c.fragment_number)
)  # psycopg reports no rowcount for INSERT .. SELECT


def record(conn: Connection, fragment: Stored, stream_incarnation: str) -> bool:
    """Index a stored fragment if its stream still exists (the same one, not a re-created namesake)."""
    values = {name: getattr(fragment, name) for name in Stored.__slots__}
    return conn.execute(_RECORD, {**values, "stream_incarnation": stream_incarnation}).first() is not None


def read(blobs: BlobStore, fragment: Stored) -> tuple[bytes, bytes]:
    """(header, Cluster) bytes of a stored fragment."""
    data = blobs.get(fragment.blob_uri)
    return data[: fragment.header_len], data[fragment.header_len :]


# --- queries ------------------------------------------------------------------------------------------------
def _select(stream_arn: str, now: float) -> Any:
    return select(table).where(table.c.stream_arn == stream_arn, table.c.expires_at > now)


def after(conn: Connection, stream_arn: str, number: str | None, now: float, limit: int = 1) -> list[Stored]:
    """Fragments (live or archived) that came after ``number`` (all if None), oldest first."""
    query = _select(stream_arn, now)
    if number is not None:
        query = query.where(table.c.fragment_number > number)
    rows = conn.execute(query.order_by(table.c.fragment_number).limit(limit)).all()
    return [Stored.of(r) for r in rows]


def latest(conn: Connection, stream_arn: str, now: float) -> Stored | None:
    row = conn.execute(_select(stream_arn, now).order_by(table.c.fragment_number.desc()).limit(1)).first()
    return Stored.of(row) if row is not None else None


def at_time(conn: Connection, stream_arn: str, kind: TimestampKind, at: float, now: float) -> Stored | None:
    """The fragment holding timestamp ``at`` (or, if none does, the first one after it)."""
    column = table.c.producer_ts if kind == "PRODUCER_TIMESTAMP" else table.c.server_ts
    holding = conn.execute(
        _select(stream_arn, now)
        .where(column <= at)
        .order_by(column.desc(), table.c.fragment_number.desc())
        .limit(1)
    ).first()
    if holding is not None:
        fragment = Stored.of(holding)
        start = fragment.producer_ts if kind == "PRODUCER_TIMESTAMP" else fragment.server_ts
        if at < start + fragment.duration_ms / 1000:
            return fragment
    following = conn.execute(
        _select(stream_arn, now).where(column > at).order_by(column, table.c.fragment_number).limit(1)
    ).first()
    return Stored.of(following) if following is not None else None


def by_numbers(conn: Connection, stream_arn: str, numbers: list[str], now: float) -> dict[str, Stored]:
    rows = conn.execute(
        _select(stream_arn, now).where(table.c.persisted.is_(True), table.c.fragment_number.in_(numbers))
    ).all()
    return {r.fragment_number: Stored.of(r) for r in rows}


def in_range(
    conn: Connection,
    stream_arn: str,
    kind: TimestampKind,
    start: float,
    end: float,
    now: float,
    after_number: str | None = None,
    limit: int = 1000,
) -> list[Stored]:
    """Archived fragments whose start time lies in [start, end], in fragment-number order (keyset pages)."""
    column = table.c.producer_ts if kind == "PRODUCER_TIMESTAMP" else table.c.server_ts
    query = _select(stream_arn, now).where(table.c.persisted.is_(True), column >= start, column <= end)
    if after_number is not None:
        query = query.where(table.c.fragment_number > after_number)
    return [Stored.of(r) for r in conn.execute(query.order_by(table.c.fragment_number).limit(limit)).all()]


def expired(conn: Connection, now: float, limit: int) -> list[Stored]:
    """Fragments past their retention (a deleted stream's fragments expire at once)."""
    rows = conn.execute(select(table).where(table.c.expires_at <= now).limit(limit)).all()
    return [Stored.of(r) for r in rows]


def retain(conn: Connection, stream_arn: str, hours: int | None) -> None:
    """A stream's archived fragments now expire ``hours`` after they arrived (None: at once)."""
    expires = table.c.server_ts + hours * 3600.0 if hours is not None else 0.0
    query = update(table).where(table.c.stream_arn == stream_arn)
    if hours is not None:
        query = query.where(table.c.persisted.is_(True))
    conn.execute(query.values(expires_at=expires))


def forget(conn: Connection, fragment: Stored) -> None:
    conn.execute(
        delete(table).where(
            table.c.stream_arn == fragment.stream_arn, table.c.fragment_number == fragment.fragment_number
        )
    )


def starting_between(
    conn: Connection, stream_arn: str, kind: TimestampKind, start: float, end: float, now: float
) -> list[Stored]:
    """Archived fragments whose start time lies in [start, end], by start time (GetImages: the caller
    starts ``start`` early enough to catch the fragment holding its first instant)."""
    column = table.c.producer_ts if kind == "PRODUCER_TIMESTAMP" else table.c.server_ts
    query = _select(stream_arn, now).where(table.c.persisted.is_(True), column >= start, column <= end)
    return [Stored.of(r) for r in conn.execute(query.order_by(column, table.c.fragment_number)).all()]
