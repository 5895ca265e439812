"""Face collections written by several server processes on one PostgreSQL database: the writers of a
collection take turns (its row locked), so seqs are in commit order and every process's index, which
catches up from the rows past the highest seq it holds, ends up with every face.

SQLite serves one server per database (the others refuse to start), whose writers take turns on the
collection's lock in that process: these tests always use PostgreSQL (and run once, in the SQLite pass).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy
import pytest
from sqlalchemy import insert, select

from mlharbor.services.rekognition import collections as coll
from mlharbor.store.db import Store
from mlharbor.store.tables import face_collections, faces
from tests.conftest import postgres_database, start_server, stop_server
from tests.services.rekognition.test_collections import HOPPER, HOPPER_VARIANTS, index

ACCOUNT, REGION = "000000000000", "us-east-1"


@pytest.fixture
def store(tmp_path: Path) -> Any:
    url, drop = postgres_database()
    store = Store(url)
    store.migrate()
    yield store
    store.dispose()
    drop()


def _collection(store: Store, collection_id: str) -> Any:
    arn = f"arn:aws:rekognition:{REGION}:{ACCOUNT}:collection/{collection_id}"
    with store.begin() as conn:
        conn.execute(
            insert(face_collections).values(
                arn=arn, account_id=ACCOUNT, region=REGION, collection_id=collection_id,
                model_version="test", created_at=round(time.time(), 3), face_count=0, version=0,
            )
        )  # fmt: skip
    with store.read() as conn:
        return coll.find(conn, ACCOUNT, REGION, collection_id)


def _face(rng: numpy.random.Generator) -> dict[str, Any]:
    return {
        "face_id": str(uuid.uuid4()),
        "image_id": str(uuid.uuid4()),
        "external_image_id": None,
        "confidence": 99.0,
        "box": {"Width": 0.5, "Height": 0.5, "Left": 0.25, "Top": 0.25},
        "model_version": "test",
        "created_at": time.time(),
        "descriptor": rng.standard_normal(coll.DESCRIPTOR_DIM).astype("<f4"),
    }


def _ids(held: coll.Held) -> set[int]:
    return {int(i) for i in held.index.live()[0]}


def test_a_writer_waits_for_the_collections_other_writer_to_commit(store, tmp_path):
    """Two processes' writers (two ``Indexes`` on one database): the second locks the collection's row
    only once the first has committed, so its seq is larger than every committed one and its index is
    current after its write, without a reload; a third process catches up from the rows."""
    collection = _collection(store, "turns")
    one, two, three = (coll.Indexes(tmp_path / name, snapshot_min_faces=2**62) for name in "abc")
    rng = numpy.random.default_rng(7)
    with one.writing(store, collection) as write:
        [first] = write.insert([_face(rng)])
    with two.holding(store, collection) as held:  # the second process has loaded the collection
        assert _ids(held) == {first}

    wrote, release, entered = threading.Event(), threading.Event(), threading.Event()
    seqs: dict[str, int] = {}

    def slow_writer() -> None:
        with one.writing(store, collection) as write:
            [seqs["slow"]] = write.insert([_face(rng)])
            wrote.set()
            assert release.wait(10)

    def other_writer() -> None:
        with two.writing(store, collection) as write:
            entered.set()
            [seqs["other"]] = write.insert([_face(rng)])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(slow_writer)
        assert wrote.wait(10)
        other = pool.submit(other_writer)
        try:
            # Without the row lock the other writer would start now: catch up without the slow writer's
            # face, and take a seq while a smaller one is uncommitted (one that could commit after it: a
            # reader caught up to the larger seq would then never read the smaller).
            assert not entered.wait(0.5), (
                "a writer ran while another writer of the collection had not committed"
            )
        finally:
            release.set()
        slow.result(timeout=10)
        other.result(timeout=10)
    assert first < seqs["slow"] < seqs["other"]

    with store.read() as conn:
        current = conn.execute(
            select(face_collections.c.version).where(face_collections.c.arn == collection.arn)
        ).scalar_one()
        rows = set(
            conn.execute(select(faces.c.seq).where(faces.c.collection_arn == collection.arn)).scalars()
        )
    assert rows == {first, seqs["slow"], seqs["other"]} and current == 3
    # The second writer caught up inside its turn: its index holds every face and knows it.
    held = two._entry(collection)
    assert held.version == current and _ids(held) == rows
    with three.holding(store, collection) as held:
        assert _ids(held) == rows


def test_two_servers_on_one_database_find_every_face(tmp_path):
    """Two servers (one data folder, as on one machine) index into one collection at the same time, and
    one deletes while the other indexes: through each, every face is found."""
    url, drop = postgres_database()
    servers = []
    try:
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            servers.append(start_server(tmp_path / name, url, data_dir=tmp_path / "data"))
        clients = [s.client("rekognition", max_pool_connections=8) for s in servers]
        clients[0].create_collection(CollectionId="shared")
        for client in clients:  # both load it now: from here on they catch up from the rows
            assert client.list_faces(CollectionId="shared")["Faces"] == []
            with pytest.raises(client.exceptions.InvalidParameterException):
                client.search_faces(CollectionId="shared", FaceId=str(uuid.uuid4()))
            found = client.search_faces_by_image(CollectionId="shared", Image={"Bytes": HOPPER})
            assert found["FaceMatches"] == []
        images = [HOPPER, *HOPPER_VARIANTS.values()]

        def add(i: int) -> str:
            return index(clients[i % 2], "shared", images[i // 2 % len(images)])["FaceRecords"][0]["Face"][
                "FaceId"
            ]

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            faces_now = list(pool.map(add, range(6)))
            gone = faces_now[:2]
            deleting = pool.submit(clients[0].delete_faces, CollectionId="shared", FaceIds=gone)
            faces_now += list(pool.map(add, range(6, 8)))
            assert sorted(deleting.result()["DeletedFaces"]) == sorted(gone)
        expected = sorted(set(faces_now) - set(gone))
        assert len(expected) == 6

        for client in clients:
            assert client.describe_collection(CollectionId="shared")["FaceCount"] == 6
            listed = client.list_faces(CollectionId="shared")["Faces"]
            assert sorted(f["FaceId"] for f in listed) == expected
            found = client.search_faces_by_image(CollectionId="shared", Image={"Bytes": HOPPER}, MaxFaces=100)
            assert sorted(m["Face"]["FaceId"] for m in found["FaceMatches"]) == expected
            for face_id in expected[:2]:
                found = client.search_faces(CollectionId="shared", FaceId=face_id, MaxFaces=100)
                assert sorted(m["Face"]["FaceId"] for m in found["FaceMatches"]) == sorted(
                    set(expected) - {face_id}
                )
    finally:
        for server in servers:
            stop_server(server)
        drop()
