"""A stream processor's live view, the worker's side: while a console watches, the latest analysed frame (a
small JPEG) and what was found in it go to the processor's ``live_views`` row; the console's hub
(``console/live.py``) polls the row's ``seq`` and pushes each new frame to the browsers watching.

Nobody watching costs one primary-key read a second (``watched``); watching costs a JPEG encode at most
640 px wide and one UPDATE per analysed frame (measured on SQLite: 1 ms in all from 640×480, 1.7 ms from
1280×960). The console creates the row and keeps its ``watched_until`` a few seconds ahead while a page is
open; the worker only ever updates it, so a processor nobody looked at has no row. When its session ends
(stopped, failed, closed), a worker that published clears the frame and meta it left (``clear``: the row and
its ``seq`` stay), so the last picture of a camera is not kept in the database.

``Stats``: records/s, latency (frame decoded → analysed) and the worker process's CPU, for the session's
heartbeat (the processor page shows them even without a live view) and the live view's meta.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections import deque
from typing import Any

from sqlalchemy import bindparam, null, select, update
from sqlalchemy.exc import SQLAlchemyError

from mlharbor.store.db import Store
from mlharbor.store.tables import live_views as table

log = logging.getLogger(__name__)

WATCH_CHECK_S = 1.0  # how stale the worker's idea of "someone watches" may be
MAX_WIDTH = 640
JPEG_QUALITY = 70

_WATCHED_UNTIL = select(table.c.watched_until).where(table.c.processor_arn == bindparam("arn"))
_PUBLISH = (
    update(table)
    .where(table.c.processor_arn == bindparam("arn"))
    .values(
        seq=table.c.seq + 1,
        analysed_at=bindparam("analysed_at"),
        meta=bindparam("meta", type_=table.c.meta.type),
        jpeg=bindparam("jpeg", type_=table.c.jpeg.type),
    )
)
# Only the frame this session wrote last: a newer attempt's frame is not this session's to clear.
_CLEAR = (
    update(table)
    .where(table.c.processor_arn == bindparam("arn"), table.c.analysed_at == bindparam("written_at"))
    .values(meta=null(), jpeg=null())  # SQL NULL: a JSON column stores None as JSON null
)


class LiveView:
    def __init__(self, store: Store, arn: str) -> None:
        self.store, self.arn = store, arn
        self._checked = -math.inf  # monotonic time of the last look at watched_until
        self._watched = False
        self.published = 0
        self._analysed_at: float | None = None  # of the last frame this session wrote

    def watched(self) -> bool:
        """Whether a console watches this processor (looked up at most once a second)."""
        now = time.monotonic()
        if now - self._checked >= WATCH_CHECK_S:
            self._checked = now
            try:
                with self.store.read() as conn:
                    until = conn.execute(_WATCHED_UNTIL, {"arn": self.arn}).scalar()
            except SQLAlchemyError as exc:  # the live view is never worth disturbing the session for
                log.debug("live view of %s: %s", self.arn, exc)
                until = None
            self._watched = until is not None and until > time.time()
        return self._watched

    def publish(self, pixels: Any, meta: dict[str, Any]) -> bool:
        """Store ``pixels`` (RGB, H×W×3) as the latest frame with ``meta`` (boxes as ratios of the frame,
        stats, ...) when a console watches; True when it did."""
        if not self.watched():
            return False
        jpeg, width, height = encode_jpeg(pixels)
        analysed_at = time.time()
        values = {
            "arn": self.arn,
            "analysed_at": analysed_at,
            "meta": {**meta, "width": width, "height": height},
            "jpeg": jpeg,
        }
        try:
            with self.store.begin() as conn:
                written = conn.execute(_PUBLISH, values).rowcount
        except SQLAlchemyError as exc:
            log.debug("live view of %s: %s", self.arn, exc)
            return False
        if not written:  # the console removed the row: nobody watches any more
            self._watched = False
            return False
        self.published += 1
        self._analysed_at = analysed_at
        return True

    def clear(self) -> None:
        """The session ends: remove the frame and meta it left in the row (kept, with its ``seq``). No write
        when it never published."""
        if self._analysed_at is None:
            return
        try:
            with self.store.begin() as conn:
                conn.execute(_CLEAR, {"arn": self.arn, "written_at": self._analysed_at})
        except SQLAlchemyError as exc:
            log.debug("live view of %s: %s", self.arn, exc)
            return
        self._analysed_at = None


def encode_jpeg(pixels: Any) -> tuple[bytes, int, int]:
    """A JPEG of ``pixels`` at most ``MAX_WIDTH`` wide, and its size. OpenCV's area downscale (0.2 ms from
    1280×960, where Pillow's ``reduce`` takes 1.5 ms), then Pillow's encoder (~1 ms at 640×480)."""
    import cv2
    from PIL import Image

    height, width = pixels.shape[:2]
    if width > MAX_WIDTH:
        height, width = max(1, round(height * MAX_WIDTH / width)), MAX_WIDTH
        pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), width, height


class Stats:
    """A session's records/s, mean latency (frame decoded → analysed, ms) over the last ``WINDOW_S`` seconds,
    and its process's CPU (a fraction of one core, from ``time.process_time`` over at least a second)."""

    WINDOW_S = 2.0

    def __init__(self) -> None:
        self._recent: deque[tuple[float, float | None]] = deque()  # (monotonic, latency s or None)
        self._started = time.monotonic()
        self._cpu_mark = (self._started, time.process_time())
        self._cpu = 0.0

    def analysed(self, received_time: float | None) -> None:
        """One frame analysed; ``received_time`` is when it was decoded (epoch seconds), if known."""
        now = time.monotonic()
        latency = None if received_time is None else max(0.0, time.time() - received_time)
        self._recent.append((now, latency))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.WINDOW_S:
            self._recent.popleft()

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        self._trim(now)
        marked_at, cpu_then = self._cpu_mark
        if now - marked_at >= 1.0:
            cpu_now = time.process_time()
            self._cpu = (cpu_now - cpu_then) / (now - marked_at)
            self._cpu_mark = (now, cpu_now)
        span = min(self.WINDOW_S, max(now - self._started, 1e-3))
        latencies = [latency for _, latency in self._recent if latency is not None]
        return {
            "records_per_s": round(len(self._recent) / span, 2),
            "latency_ms": round(1000 * sum(latencies) / len(latencies), 1) if latencies else None,
            "cpu": round(self._cpu, 3),
        }


def face_boxes(faces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A face search record's FaceSearchResponse as the live view draws it: each face's box with its best
    match's ExternalImageId (the FaceId when it has none) and similarity, or its detection confidence."""
    boxes = []
    for face in faces:
        detected = face["DetectedFace"]
        entry: dict[str, Any] = {"box": detected["BoundingBox"]}
        matches = face.get("MatchedFaces") or []
        if matches:
            best = max(matches, key=lambda m: m["Similarity"])
            entry["name"] = best["Face"].get("ExternalImageId") or best["Face"]["FaceId"]
            entry["similarity"] = round(best["Similarity"], 1)
        else:
            entry["confidence"] = round(detected.get("Confidence", 0.0), 1)
        boxes.append(entry)
    return boxes
