"""Face collections: their rows, their faces' rows, and the in-memory vector index of each collection.

The database is the record: every face row keeps its descriptor, so a restart loses nothing. Each server
process holds, per collection it has touched, a ``VectorIndex`` of the descriptors, loaded on first use
and kept current under the collection's lock. Writers (IndexFaces, DeleteFaces, DeleteCollection) hold
that lock across their transaction and the matching index change, so the index never disagrees with
what was committed; their transaction starts by locking the collection's row (``SELECT ... FOR UPDATE``
on PostgreSQL; SQLite has one writer at a time anyway), so the writers of one collection take turns
across all server processes and the seqs they take are in commit order. The collection row's
``version`` grows with every change: a process that finds a version it has not seen (another server, or
a stream processor's worker) catches up from the rows (new faces are those past the highest ``seq`` it
holds, which commit order makes exact; a count mismatch means deletions, found by comparing seqs).
Large collections also keep an on-disk snapshot of their vectors (written after a big load and at
shutdown), so a restart starts from it and reads only the rows changed since.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update

from mlharbor.engines.faces import distance_at, similarity
from mlharbor.engines.vector_index import VectorIndex
from mlharbor.errors import ResourceNotFoundException
from mlharbor.store.tables import face_collections as table
from mlharbor.store.tables import faces as faces_table

DESCRIPTOR_DIM = 128
logger = logging.getLogger(__name__)

_OWNER = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_BY_ID = select(table).where(_OWNER, table.c.collection_id == bindparam("collection_id"))
_BY_ARN = select(table).where(_OWNER, table.c.arn == bindparam("arn"))
_CURRENT = select(table.c.version, table.c.face_count, table.c.created_at).where(
    table.c.arn == bindparam("arn")
)
# A writer's first statement: the row stays locked until its transaction ends, so the writers of one
# collection (in every process) take turns, and a face's seq (taken at INSERT) follows commit order.
# SQLite renders no FOR UPDATE: it has one writer at a time, and one server process (Store guard).
_CURRENT_FOR_WRITE = _CURRENT.with_for_update()
_FACE_COLUMNS = (
    faces_table.c.seq,
    faces_table.c.face_id,
    faces_table.c.image_id,
    faces_table.c.external_image_id,
    faces_table.c.confidence,
    faces_table.c.box,
    faces_table.c.model_version,
)


def find(conn: Connection, account_id: str, region: str, collection_id: str) -> Row[Any] | None:
    params = {"account_id": account_id, "region": region, "collection_id": collection_id}
    return conn.execute(_BY_ID, params).first()


def find_by_arn(conn: Connection, account_id: str, region: str, arn: str) -> Row[Any] | None:
    return conn.execute(_BY_ARN, {"account_id": account_id, "region": region, "arn": arn}).first()


def require(conn: Connection, account_id: str, region: str, collection_id: str) -> Row[Any]:
    row = find(conn, account_id, region, collection_id)
    if row is None:
        raise ResourceNotFoundException(f"The collection id: {collection_id} does not exist")
    return row


def page(conn: Connection, account_id: str, region: str, after: str | None, limit: int) -> Sequence[Row[Any]]:
    query = select(table.c.collection_id, table.c.model_version).where(
        table.c.account_id == account_id, table.c.region == region
    )
    if after is not None:
        query = query.where(table.c.collection_id > after)
    return conn.execute(query.order_by(table.c.collection_id).limit(limit)).all()


def face_rows(
    conn: Connection,
    collection_arn: str,
    *,
    after: str | None = None,
    face_ids: Sequence[str] | None = None,
    limit: int | None = None,
) -> Sequence[Row[Any]]:
    """Face rows (without descriptors) ordered by FaceId."""
    query = select(*_FACE_COLUMNS).where(faces_table.c.collection_arn == collection_arn)
    if after is not None:
        query = query.where(faces_table.c.face_id > after)
    if face_ids is not None:
        query = query.where(faces_table.c.face_id.in_(face_ids))
    query = query.order_by(faces_table.c.face_id)
    return conn.execute(query if limit is None else query.limit(limit)).all()


def rows_by_seq(conn: Connection, collection_arn: str, seqs: Sequence[int]) -> dict[int, Row[Any]]:
    query = select(*_FACE_COLUMNS).where(
        faces_table.c.collection_arn == collection_arn, faces_table.c.seq.in_(list(seqs))
    )
    return {row.seq: row for row in conn.execute(query)}


def descriptor_of(conn: Connection, collection_arn: str, face_id: str) -> tuple[int, numpy.ndarray] | None:
    """The face's seq and descriptor, if the collection has it."""
    row = conn.execute(
        select(faces_table.c.seq, faces_table.c.descriptor).where(
            faces_table.c.collection_arn == collection_arn, faces_table.c.face_id == face_id
        )
    ).first()
    return None if row is None else (row.seq, numpy.frombuffer(row.descriptor, dtype="<f4"))


def face_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's ``Face`` from a face row's (or a new face record's) values."""
    face = {
        "FaceId": row["face_id"],
        "BoundingBox": row["box"],
        "ImageId": row["image_id"],
        "Confidence": row["confidence"],
        "IndexFacesModelVersion": row["model_version"],
    }
    if row["external_image_id"] is not None:
        face["ExternalImageId"] = row["external_image_id"]
    return face


def matches(
    store: Any,
    indexes: Indexes,
    collection: Row[Any],
    descriptor: numpy.ndarray,
    *,
    limit: int,
    threshold: float,
    skip: int | None = None,
) -> list[dict[str, Any]]:
    """``FaceMatches`` for a descriptor: faces at or above ``threshold`` similarity, most similar first,
    at most ``limit`` (``skip``: the searched face's own seq, never returned)."""
    with indexes.holding(store, collection) as held:
        found = held.index.search(descriptor, limit + (skip is not None), distance_at(threshold))
    found = [m for m in found if m.id != skip][:limit]
    with store.read() as conn:
        rows = rows_by_seq(conn, collection.arn, [m.id for m in found])
    scores = similarity(numpy.array([m.distance for m in found]))
    return [
        {"Similarity": float(score), "Face": face_json(rows[m.id]._mapping)}
        for m, score in zip(found, scores, strict=True)
        if m.id in rows  # deleted between the search and this read
    ]


def insert_faces(conn: Connection, collection: Row[Any], records: Sequence[dict[str, Any]]) -> list[int]:
    """Add face rows (each with its ``descriptor`` as float32); returns their seqs. Call ``changed``.
    Writers go through ``Indexes.writing`` (``Write.insert``), whose transaction locked the collection."""
    seqs = []
    for record in records:
        values = dict(record, collection_arn=collection.arn)
        values["descriptor"] = numpy.asarray(record["descriptor"], dtype="<f4").tobytes()
        seqs.append(
            conn.execute(insert(faces_table).values(values).returning(faces_table.c.seq)).scalar_one()
        )
    return seqs


def delete_faces(conn: Connection, collection: Row[Any], face_ids: Sequence[str]) -> dict[str, int]:
    """Remove these faces; returns FaceId → seq of those that existed. Call ``changed``."""
    found = {
        row.face_id: row.seq
        for row in conn.execute(
            select(faces_table.c.face_id, faces_table.c.seq).where(
                faces_table.c.collection_arn == collection.arn, faces_table.c.face_id.in_(list(face_ids))
            )
        )
    }
    if found:
        conn.execute(delete(faces_table).where(faces_table.c.seq.in_(list(found.values()))))
    return found


def delete_collection(conn: Connection, collection: Row[Any]) -> None:
    conn.execute(delete(faces_table).where(faces_table.c.collection_arn == collection.arn))
    conn.execute(delete(table).where(table.c.arn == collection.arn))


def changed(conn: Connection, collection: Row[Any], added: int) -> int:
    """Record a change of ``added`` faces (negative: removed); returns the collection's new version."""
    version = conn.execute(
        update(table)
        .where(table.c.arn == collection.arn, table.c.created_at == collection.created_at)
        .values(face_count=table.c.face_count + added, version=table.c.version + 1)
        .returning(table.c.version)
    ).scalar()
    if version is None:  # deleted meanwhile (by another server): the caller's transaction rolls back
        raise ResourceNotFoundException(f"The collection id: {collection.collection_id} does not exist")
    return version


# --- The in-memory indexes -------------------------------------------------------------------------------


class Write:
    """One writer's turn on a collection (``Indexes.writing``): its transaction, which began by locking
    the collection's row, and the index changes it made, applied once that transaction has committed."""

    def __init__(self, conn: Connection, held: Held, collection: Row[Any], face_count: int) -> None:
        self.conn = conn
        self.face_count = face_count  # as committed before this turn, plus this writer's changes
        self._held = held
        self._collection = collection
        self._changes: list[Callable[[VectorIndex], None]] = []
        self._version: int | None = None

    def insert(self, records: Sequence[dict[str, Any]]) -> list[int]:
        """Add these faces (each record with its ``descriptor``); returns their seqs."""
        seqs = insert_faces(self.conn, self._collection, records)
        self._changed(len(records))
        ids = numpy.array(seqs, dtype=numpy.int64)
        vectors = numpy.stack([numpy.asarray(r["descriptor"], dtype="<f4") for r in records])
        self._changes.append(lambda index: index.add(ids, vectors))
        return seqs

    def delete(self, face_ids: Sequence[str]) -> dict[str, int]:
        """Remove these faces; returns FaceId → seq of those that existed."""
        found = delete_faces(self.conn, self._collection, face_ids)
        if found:
            self._changed(-len(found))
            ids = numpy.array(list(found.values()), dtype=numpy.int64)
            self._changes.append(lambda index: index.remove(ids))
        return found

    def _changed(self, added: int) -> None:
        self._version = changed(self.conn, self._collection, added)
        self.face_count += added

    def _apply(self) -> None:
        """The transaction committed: the index gets the same changes."""
        if self._version is None:
            return
        for change in self._changes:
            change(self._held.index)
        self._held.committed(self._version)


@dataclass
class Held:
    """One collection's index in this process, and what it reflects."""

    collection: Row[Any]  # the row it was loaded for (arn, id, creation time)
    version: int
    index: VectorIndex
    lock: threading.Lock = field(default_factory=threading.Lock)
    saved_version: int = -1  # the version the on-disk snapshot holds

    def committed(self, version: int) -> None:
        """A writer applied its own committed change (``version`` from ``changed``) to the index, which
        was current when the writer locked the collection: nobody else wrote in between. (Were that ever
        not so, the version stays behind and the next holder catches up from the rows.)"""
        if version == self.version + 1:
            self.version = version


class Indexes:
    """This process's vector index of each collection it has used (one instance per server), and their
    snapshots under ``folder`` (one ``.npz`` per collection: ids, vectors, the version they reflect).

    Collections of at least ``snapshot_min_faces`` get a snapshot, so a restart reads one file plus the
    rows changed since instead of every row (1M faces: ~8 s from SQLite)."""

    def __init__(self, folder: Path, snapshot_min_faces: int) -> None:
        self.folder = folder
        self.snapshot_min_faces = snapshot_min_faces
        self._guard = threading.Lock()
        # Keyed by ARN and creation time: a collection deleted and created again is another collection,
        # and a request still holding the old row must not disturb the new one's index.
        self._loaded: dict[tuple[str, float], Held] = {}

    def _entry(self, collection: Row[Any]) -> Held:
        key = (collection.arn, collection.created_at)
        with self._guard:
            held = self._loaded.get(key)
            if held is None:
                held = self._loaded[key] = Held(collection, -1, VectorIndex(DESCRIPTOR_DIM))
                for arn, created_at in list(self._loaded):  # earlier incarnations are gone
                    if arn == collection.arn and created_at < collection.created_at:
                        del self._loaded[(arn, created_at)]
            return held

    def _forget(self, held: Held) -> None:
        with self._guard:
            key = (held.collection.arn, held.collection.created_at)
            if self._loaded.get(key) is held:
                del self._loaded[key]

    @contextmanager
    def holding(self, store: Any, collection: Row[Any]) -> Iterator[Held]:
        """The collection's index, current with the database, while holding its lock (for readers: it
        costs one query when the index is current)."""
        loaded = self._entry(collection)
        with loaded.lock:
            with store.read() as conn:
                current = conn.execute(_CURRENT, {"arn": collection.arn}).first()
            self._check(current, loaded, collection)
            if loaded.version < 0:
                self._read_snapshot(loaded)
            if current.version != loaded.version:
                self._refresh(store, loaded, collection)
            yield loaded

    @contextmanager
    def writing(self, store: Any, collection: Row[Any]) -> Iterator[Write]:
        """A writer's turn: the collection's lock in this process, and a transaction whose first statement
        locks the collection's row, so no other writer of the collection (in any process) runs until
        this one has committed; the index is caught up inside that transaction. The writer changes the
        collection through the ``Write``; once the transaction has committed, the index gets the same
        changes (a writer that raises changes nothing)."""
        loaded = self._entry(collection)
        with loaded.lock:
            if loaded.version < 0:  # the first load (maybe every row) before, not while others wait
                self._read_snapshot(loaded)
                self._refresh(store, loaded, collection)
            with store.begin() as conn:
                current = conn.execute(_CURRENT_FOR_WRITE, {"arn": collection.arn}).first()
                self._check(current, loaded, collection)
                read = self._sync(conn, loaded, current) if current.version != loaded.version else 0
                write = Write(conn, loaded, collection, current.face_count)
                yield write
            write._apply()
            if read >= self.snapshot_min_faces:  # written after the commit: other writers wait for none of it
                self._save(loaded)

    def _refresh(self, store: Any, loaded: Held, collection: Row[Any]) -> None:
        """Catch up with the database. Writers in other processes go on committing: read the version, the
        count and the rows from one snapshot of the database, so that they agree."""
        with store.snapshot() as conn:
            current = conn.execute(_CURRENT, {"arn": collection.arn}).first()
            self._check(current, loaded, collection)
            read = self._sync(conn, loaded, current) if current.version != loaded.version else 0
        if read >= self.snapshot_min_faces:  # worth not reading again after a restart
            self._save(loaded)

    @contextmanager
    def dropping(self, store: Any, collection: Row[Any]) -> Iterator[Connection]:
        """The transaction that deletes the collection: taken like a writer's (the collection's lock here,
        its row locked first, so a writer in another process finishes before, and its faces go too), but
        without loading the vectors; then the index and the snapshot are forgotten. Requests that were
        waiting for the lock find the collection gone."""
        loaded = self._entry(collection)
        with loaded.lock:
            with store.begin() as conn:
                current = conn.execute(_CURRENT_FOR_WRITE, {"arn": collection.arn}).first()
                self._check(current, loaded, collection)
                yield conn
            self._forget(loaded)
            self._snapshot(collection).unlink(missing_ok=True)

    def _check(self, current: Row[Any] | None, loaded: Held, collection: Row[Any]) -> None:
        """``current`` (the collection's row now) is still that collection, or it is gone."""
        if current is None or current.created_at != collection.created_at:
            self._forget(loaded)
            raise ResourceNotFoundException(f"The collection id: {collection.collection_id} does not exist")

    def _sync(self, conn: Connection, loaded: Held, current: Row[Any]) -> int:
        """Bring the index to ``current`` (the collection's row as ``conn`` sees it, with the rows);
        returns how many descriptors were read."""
        read = _catch_up(conn, loaded.collection.arn, loaded, current.face_count)
        loaded.version = current.version
        return read

    def save_all(self) -> None:
        """At shutdown: snapshot every large collection that changed since its last snapshot."""
        with self._guard:
            entries = list(self._loaded.values())
        for loaded in entries:
            with loaded.lock:
                if loaded.version != loaded.saved_version and len(loaded.index) >= self.snapshot_min_faces:
                    self._save(loaded)

    # --- snapshots ---------------------------------------------------------------------------------------
    def _snapshot(self, collection: Row[Any]) -> Path:
        key = hashlib.sha256(f"{collection.arn}\n{collection.created_at!r}".encode()).hexdigest()[:40]
        return self.folder / f"{key}.npz"

    def _save(self, loaded: Held) -> None:
        """Write the snapshot atomically (readers see the old file or the new one, never half of one)."""
        path = self._snapshot(loaded.collection)
        partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
        ids, vectors = loaded.index.live()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with partial.open("wb") as out:
                numpy.savez(out, ids=ids, vectors=vectors, version=numpy.int64(loaded.version))
            os.replace(partial, path)
            loaded.saved_version = loaded.version
        except OSError:
            logger.exception("could not write the vector snapshot of %s", loaded.collection.arn)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)

    def _read_snapshot(self, loaded: Held) -> None:
        """Start from the snapshot when there is a readable one; the rows fill in what changed since."""
        path = self._snapshot(loaded.collection)
        index = VectorIndex(DESCRIPTOR_DIM)
        try:
            with numpy.load(path) as snapshot:
                index.add(snapshot["ids"], snapshot["vectors"])
                version = int(snapshot["version"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError):
            logger.warning("ignoring the unreadable vector snapshot %s", path)
            return
        loaded.index = index
        loaded.version = loaded.saved_version = version


def _catch_up(conn: Connection, arn: str, loaded: Held, face_count: int) -> int:
    """Bring the index in line with the rows: add faces newer than any it holds, drop those deleted
    (seqs are never reused and, writers taking turns, are committed in increasing order: these two steps
    are exact). Returns how many descriptors were read."""
    read = _add_rows_after(conn, arn, loaded.index, loaded.index.max_id)
    if len(loaded.index) != face_count:  # faces were deleted since: keep only the seqs the rows still have
        present = numpy.fromiter(
            conn.execute(select(faces_table.c.seq).where(faces_table.c.collection_arn == arn)).scalars(),
            dtype=numpy.int64,
        )
        held, _ = loaded.index.live()
        loaded.index.remove(numpy.setdiff1d(held, present, assume_unique=True))
    if len(loaded.index) != face_count:  # a snapshot newer than the database (restored from a backup?)
        loaded.index = VectorIndex(DESCRIPTOR_DIM)
        read = _add_rows_after(conn, arn, loaded.index, -1)
    return read


def _add_rows_after(conn: Connection, arn: str, index: VectorIndex, after: int) -> int:
    rows = conn.execute(
        select(faces_table.c.seq, faces_table.c.descriptor)
        .where(faces_table.c.collection_arn == arn, faces_table.c.seq > after)
        .order_by(faces_table.c.seq)
    ).all()
    ids = numpy.fromiter((r.seq for r in rows), dtype=numpy.int64, count=len(rows))
    vectors = numpy.frombuffer(b"".join(r.descriptor for r in rows), dtype="<f4")
    index.add(ids, vectors.reshape(len(rows), DESCRIPTOR_DIM))
    return len(rows)
