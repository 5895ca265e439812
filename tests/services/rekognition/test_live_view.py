"""The worker's side of the console's live view: nothing is written unless a console watches; a watched
processor's row gets each frame (a JPEG at most 640 px wide) and its meta; the session's stats."""

from __future__ import annotations

import io
import time

import numpy
import pytest
from PIL import Image
from sqlalchemy import insert, select, update

from mlharbor.services.rekognition import live_view
from mlharbor.services.rekognition.live_view import LiveView, Stats, face_boxes
from mlharbor.store.db import Store
from mlharbor.store.tables import live_views

ARN = "arn:aws:rekognition:us-east-1:000000000000:streamprocessor/door"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('live') / 'store.db'}")
    store.migrate()
    return store


def row(store: Store) -> dict | None:  # type: ignore[type-arg]
    with store.read() as conn:
        found = conn.execute(select(live_views).where(live_views.c.processor_arn == ARN)).first()
    return found._asdict() if found is not None else None


def watch(store: Store, until: float) -> None:
    with store.begin() as conn:
        if not conn.execute(
            update(live_views).where(live_views.c.processor_arn == ARN).values(watched_until=until)
        ).rowcount:
            conn.execute(
                insert(live_views).values(
                    processor_arn=ARN, account_id="000000000000", region="us-east-1", watched_until=until
                )
            )


def test_nothing_is_written_unless_a_console_watches(store: Store) -> None:
    pixels = numpy.zeros((480, 640, 3), numpy.uint8)
    live = LiveView(store, ARN)
    assert not live.watched() and not live.publish(pixels, {})
    assert row(store) is None  # the worker never creates the row

    watch(store, time.time() - 1)  # a console watched, and left
    live = LiveView(store, ARN)
    assert not live.publish(pixels, {})
    assert row(store)["seq"] == 0 and row(store)["jpeg"] is None  # type: ignore[index]

    # Watching again is seen at the next look (at most once a second), not before.
    watch(store, time.time() + 5)
    assert not live.watched()
    live._checked -= live_view.WATCH_CHECK_S
    assert live.watched()


def test_a_watched_processor_gets_each_frame_small_with_its_meta(store: Store) -> None:
    watch(store, time.time() + 5)
    live = LiveView(store, ARN)
    frame = numpy.full((960, 1280, 3), 200, numpy.uint8)
    boxes = [
        {"box": {"Left": 0.1, "Top": 0.2, "Width": 0.3, "Height": 0.4}, "name": "grace", "similarity": 99.0}
    ]
    before = row(store)["seq"]  # type: ignore[index]
    assert live.publish(frame, {"boxes": boxes})
    assert live.publish(frame, {"boxes": []})
    stored = row(store)
    assert stored is not None and stored["seq"] == before + 2
    assert stored["meta"] == {"boxes": [], "width": 640, "height": 480}
    assert abs(stored["analysed_at"] - time.time()) < 5
    assert Image.open(io.BytesIO(stored["jpeg"])).size == (640, 480)


def test_a_session_that_ends_clears_its_frame_but_keeps_the_row(store: Store) -> None:
    watch(store, time.time() + 5)
    pixels = numpy.zeros((480, 640, 3), numpy.uint8)
    idle = LiveView(store, ARN)  # never published: its end writes nothing
    live = LiveView(store, ARN)
    assert live.publish(pixels, {"boxes": []})
    seq = row(store)["seq"]  # type: ignore[index]
    idle.clear()
    assert row(store)["jpeg"] is not None  # type: ignore[index]

    live.clear()
    stored = row(store)
    assert stored is not None and stored["seq"] == seq and stored["jpeg"] is None and stored["meta"] is None
    with store.read() as conn:  # SQL NULL, not JSON null
        assert conn.execute(select(live_views.c.processor_arn).where(live_views.c.meta.is_(None))).all()

    # A newer session's frame is not the ended one's to clear.
    old, new = LiveView(store, ARN), LiveView(store, ARN)
    assert old.publish(pixels, {}) and new.publish(pixels, {})
    old.clear()
    assert row(store)["jpeg"] is not None  # type: ignore[index]
    new.clear()
    assert row(store)["jpeg"] is None  # type: ignore[index]


def test_stats_and_face_boxes() -> None:
    stats = Stats()
    for _ in range(4):
        stats.analysed(time.time() - 0.05)
    figures = stats.snapshot()
    assert figures["records_per_s"] > 0 and 40 <= figures["latency_ms"] < 1000 and figures["cpu"] >= 0
    box = {"Left": 0.1, "Top": 0.2, "Width": 0.3, "Height": 0.4}
    faces = [
        {
            "DetectedFace": {"BoundingBox": box, "Confidence": 99.94},
            "MatchedFaces": [
                {"Similarity": 91.0, "Face": {"FaceId": "a", "ExternalImageId": "ada"}},
                {"Similarity": 97.26, "Face": {"FaceId": "b", "ExternalImageId": "grace"}},
            ],
        },
        {"DetectedFace": {"BoundingBox": box, "Confidence": 98.0}, "MatchedFaces": []},
        {"DetectedFace": {"BoundingBox": box, "Confidence": 98.0}, "MatchedFaces": [
            {"Similarity": 90.0, "Face": {"FaceId": "c"}}
        ]},
    ]  # fmt: skip
    assert face_boxes(faces) == [
        {"box": box, "name": "grace", "similarity": 97.3},
        {"box": box, "confidence": 98.0},
        {"box": box, "name": "c", "similarity": 90.0},
    ]
