"""Stream processor sessions: the worker that analyses a video stream, and the reconcile pass.

Desired state lives in the database: StartStreamProcessor moves the row to STARTING with a new attempt
and submits a worker; StopStreamProcessor moves it to STOPPING and asks the worker to stop. The worker
opens the video source, checks the collection and the output, moves STARTING → RUNNING, then analyses
frames at the analysis rate until it is asked to stop; it sends what it still holds and only then moves
STOPPING → STOPPED, so nothing is written after STOPPED. Problems it can name (unknown video stream,
missing collection or output stream, unreadable video) end the session FAILED with AWS's StatusMessage.

The reconcile pass restarts a worker that died (crash, kill) with backoff, and FAILED after
``MAX_RESTARTS`` in one session; after a server restart it brings every STARTING/RUNNING processor back
(a new attempt each time: a superseded worker can no longer write), and it finishes STOPPING rows that
have no worker.

Face search output: one Kinesis record per analysed frame, also when no face is found (research §6 #12),
partition key = the processor's name. MLHarbor's video sources have no Kinesis Video fragments, so the
record's ``FragmentNumber`` names a ``FRAGMENT_SECONDS`` slice of the session (a decimal string that only
grows), and the timestamps are the slice's start.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, select

from mlharbor import arns
from mlharbor.context import Server
from mlharbor.errors import ResourceNotFoundException
from mlharbor.runtime import WorkContext
from mlharbor.services import attempts
from mlharbor.services.attempts import StopWatch, work_id
from mlharbor.services.rekognition import collections as coll
from mlharbor.services.rekognition import face_details
from mlharbor.services.rekognition import stream_processors as sp
from mlharbor.services.rekognition.sinks import (
    KinesisSink,
    NotificationUnavailable,
    Notifier,
    SinkUnavailable,
)
from mlharbor.store.db import Store
from mlharbor.store.tables import stream_processors as table

log = logging.getLogger(__name__)

TARGET = "mlharbor.services.rekognition.streaming:stream_worker"
MAX_RESTARTS = 3  # worker deaths in one session before the processor is FAILED
RESTART_BACKOFF_S = (1.0, 4.0)  # before the first and the second restart
HEARTBEAT_S = 1.0
FRAGMENT_SECONDS = 2.0  # Kinesis Video's usual fragment length
MIN_FACE_MATCH_THRESHOLD = 80.0  # AWS raises lower FaceMatchThreshold values to 80
MATCHES_PER_FACE = 10
ACTIVE = frozenset({"STARTING", "RUNNING"})
RECONNECT_FIRST_S, RECONNECT_MAX_S = 1.0, 30.0  # a live source's reconnect backoff


def stream_work_id(arn: str, session_id: str | None, attempt: int) -> str:
    """A session's work id for one attempt (a processor deleted and created again, or started again,
    never reuses the work id of a worker that may still be exiting)."""
    return work_id(f"{arn}#stream-{session_id}", attempt)


# --- The worker -----------------------------------------------------------------------------------------
def stream_worker(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    return attempts.run_worker(ctx, payload, _session)


def _move(store: Store, arn: str, targets: dict[str, str], attempt: int, **values: Any) -> str | None:
    return attempts.move(store, table, sp.STATES, arn, targets, attempt=attempt, **values)


def _fail(store: Store, arn: str, attempt: int, message: str) -> None:
    """FAILED with ``message``; a processor being stopped ends STOPPED, as its user asked."""
    log.warning("stream processor %s failed: %s", arn, message)
    targets = {"STARTING": "FAILED", "RUNNING": "FAILED", "STOPPING": "STOPPED"}
    _move(store, arn, targets, attempt, status_message=message)


def _finish_stop(store: Store, arn: str, attempt: int) -> None:
    _move(store, arn, {"STOPPING": "STOPPED"}, attempt, status_message=None)


def _session(ctx: WorkContext, store: Store, payload: dict[str, Any]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    # The searches' matrix products are small; OpenBLAS's extra threads would only spin between frames
    # (measured: a 5 frames/s processor used 0.70 cores with them, 0.20 without).
    threadpool_limits(1)
    arn, attempt = payload["arn"], payload["attempt"]
    with store.read() as conn:
        row = conn.execute(select(table).where(table.c.arn == arn)).first()
    if row is None or row.attempt != attempt or row.status not in ACTIVE:
        return {"stopped": False, "skipped": True}
    kind = _FaceSearchSession if "FaceSearch" in row.spec["Settings"] else _ConnectedHomeSession
    try:
        session = kind(ctx, store, row, payload)
    except _Unusable as exc:
        _fail(store, arn, attempt, str(exc))
        return {"stopped": False}
    except _StoppedWhileStarting:
        _finish_stop(store, arn, attempt)  # nothing was written: STOPPED at once
        return {"stopped": True}
    try:
        return session.run(ctx)
    finally:
        session.close()


def _video_url(row: Row[Any], payload: dict[str, Any]) -> tuple[str, str]:
    """(stream name, URL) of the processor's Kinesis Video stream in the server's video-stream table."""
    named = arns.named_stream(row.input_stream_arn)
    stream = named[2] if named else row.input_stream_arn
    url = payload["video_streams"].get(stream)
    if url is None:
        raise _Unusable(f"Stream {stream} under account {row.account_id} not found")
    return stream, url


def _open(url: str, stream: str, fps: float) -> Any:
    from mlharbor.engines.video import VideoError, VideoSource

    source = VideoSource(url, fps=fps, max_side=1280)
    try:
        source.open()
    except VideoError as exc:
        raise _Unusable(f"Unable to read video stream {stream}: {exc}") from None
    return source


@dataclass(frozen=True)
class _Position:
    """Where a frame sits in MLHarbor's stand-in for Kinesis Video fragments (``FRAGMENT_SECONDS``
    slices of the session, numbered from a base that grows with the session's start time)."""

    fragment_number: str
    server_timestamp: float  # the slice's start, as decoded here
    producer_timestamp: float  # the slice's start, as captured
    offset: float  # seconds from the slice's start to the frame

    @classmethod
    def of(cls, frame: Any, base: int) -> _Position:
        fragment = int(frame.stream_seconds // FRAGMENT_SECONDS)
        offset = frame.stream_seconds - fragment * FRAGMENT_SECONDS
        return cls(
            str(base + fragment),
            round(frame.received_time - offset, 3),
            round(frame.producer_time - offset, 3),
            round(offset, 3),
        )


def _fragment_base() -> int:
    return int(time.time() * 1000) * 100_000


class _Unusable(Exception):
    """The session cannot run; ``str()`` is the StatusMessage (AWS's wording where it documents one)."""


class _StoppedWhileStarting(Exception):
    """A stop arrived before the session was RUNNING."""


class _FaceSearchSession:
    """Everything a face search session needs, checked and loaded before it goes RUNNING: the video
    stream's URL, the collection (its vectors loaded), the output stream, the engine, the open source.
    A stop requested meanwhile is looked for between the steps."""

    def __init__(self, ctx: WorkContext, store: Store, row: Row[Any], payload: dict[str, Any]) -> None:
        from mlharbor.engines.faces import DlibEngine

        def step() -> None:
            if stop():
                raise _StoppedWhileStarting

        self.store, self.row, self.attempt = store, row, payload["attempt"]
        stop = StopWatch(ctx, store, table, row.arn, self.attempt, ACTIVE)
        settings = row.spec["Settings"]["FaceSearch"]
        self.threshold = max(MIN_FACE_MATCH_THRESHOLD, settings.get("FaceMatchThreshold", 80.0))
        self.input_arn = row.input_stream_arn
        stream, url = _video_url(row, payload)
        with store.read() as conn:
            self.collection = coll.find(conn, row.account_id, row.region, settings["CollectionId"])
        if self.collection is None:
            raise _Unusable("Collection not found")
        step()
        try:
            self.sink = KinesisSink(row.output_stream_arn, partition_key=row.name)
            self.sink.check()
        except SinkUnavailable as exc:
            raise _Unusable(str(exc)) from None
        step()
        self.indexes = coll.Indexes(Path(payload["data_dir"]) / "face-vectors", snapshot_min_faces=2**62)
        try:
            with self.indexes.holding(store, self.collection):
                pass  # load the vectors now, not on the first frame
        except ResourceNotFoundException:
            raise _Unusable("Collection not found") from None
        step()
        self.engine = DlibEngine()
        self.tracks = _Tracks()
        step()
        self.source = _open(url, stream, payload["fps"])
        self.stream, self.url, self.fps = stream, url, payload["fps"]
        self.fragment_base = _fragment_base()

    def close(self) -> None:
        self.source.close()

    def _reconnect(self, ctx: WorkContext, stop: StopWatch, error: Exception) -> bool:
        """A live source that failed (camera gone, network down) is opened again with backoff while the
        processor stays RUNNING, its StatusMessage saying why; False if a stop came first."""
        arn, delay = self.row.arn, RECONNECT_FIRST_S
        message = f"Reconnecting to video stream {self.stream}: {error}"
        log.warning("stream processor %s: %s", arn, message)
        _move(self.store, arn, {"RUNNING": "RUNNING"}, self.attempt, status_message=message)
        self.source.close()
        while not stop():
            try:
                self.source = _open(self.url, self.stream, self.fps)
            except _Unusable:
                ctx.wait_stop(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)
                continue
            _move(self.store, arn, {"RUNNING": "RUNNING"}, self.attempt, status_message=None)
            return True
        return False

    def run(self, ctx: WorkContext) -> dict[str, Any]:
        from mlharbor.engines.video import VideoError

        arn = self.row.arn
        if _move(self.store, arn, {"STARTING": "RUNNING", "RUNNING": "RUNNING"}, self.attempt) is None:
            _finish_stop(self.store, arn, self.attempt)  # stopped while starting (or deleted, superseded)
            return {"stopped": True}
        stop = StopWatch(ctx, self.store, table, arn, self.attempt, ACTIVE)
        frames, next_beat, reported_error = 0, 0.0, None
        while not stop():
            try:
                frame = self.source.next(timeout=0.1)
            except VideoError as exc:
                if not self.source.is_file:  # a camera or network stream: wait for it to come back
                    if self._reconnect(ctx, stop, exc):
                        continue
                    break
                self.sink.flush()
                _fail(self.store, arn, self.attempt, f"Unable to read video stream: {exc}")
                return {"stopped": False}
            if frame is not None:
                try:
                    self.sink.put(self._record(frame))
                except ResourceNotFoundException:
                    _fail(self.store, arn, self.attempt, "Collection not found")
                    return {"stopped": False}
                frames += 1
            self.sink.flush()
            if self.sink.error != reported_error:  # a Kinesis outage shows in StatusMessage
                reported_error = self.sink.error
                _move(self.store, arn, {"RUNNING": "RUNNING"}, self.attempt, status_message=reported_error)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_S
                ctx.heartbeat({"frames": frames, "sent": self.sink.sent, "dropped": self.source.dropped})
        return self._stopped(frames)

    def _stopped(self, frames: int) -> dict[str, Any]:
        """Send what is left, then record STOPPED: nothing is written after it. A stop that is not a
        StopStreamProcessor (the server is shutting down) leaves the row RUNNING, to resume on restart."""
        deadline = time.monotonic() + 0.2
        while self.sink.error is None and not self.sink.flush() and time.monotonic() < deadline:
            time.sleep(0.02)
        _finish_stop(self.store, self.row.arn, self.attempt)
        return {"stopped": True, "frames": frames}

    def _record(self, frame: Any) -> dict[str, Any]:
        at = _Position.of(frame, self.fragment_base)
        return {
            "InputInformation": {
                "KinesisVideo": {
                    "StreamArn": self.input_arn,
                    "FragmentNumber": at.fragment_number,
                    "ServerTimestamp": at.server_timestamp,
                    "ProducerTimestamp": at.producer_timestamp,
                    "FrameOffsetInSeconds": at.offset,
                }
            },
            "StreamProcessorInformation": {"Status": "RUNNING"},
            "FaceSearchResponse": self._search(frame.pixels),
        }

    def _search(self, pixels: Any) -> list[dict[str, Any]]:
        measured = [face_details.measure(pixels, f) for f in self.engine.detect(pixels, 0)]
        measured.sort(key=lambda m: -m.area)
        descriptors = self.tracks.descriptors(measured, lambda fresh: self.engine.embed(pixels, fresh))
        results = []
        for m, descriptor in zip(measured, descriptors, strict=True):
            found = coll.matches(
                self.store, self.indexes, self.collection, descriptor,
                limit=MATCHES_PER_FACE, threshold=self.threshold,
            )  # fmt: skip
            for match in found:
                match["Face"].pop("IndexFacesModelVersion", None)  # not in the stream record's Face
            results.append({"DetectedFace": m.detail(None), "MatchedFaces": found})
        return results


class _ConnectedHomeSession:
    """Label detection (PERSON, PET, PACKAGE) for one session of ``StopSelector.MaxDurationInSeconds``
    (default 10 s). AWS keeps the processor STARTING for the whole session and ends it STOPPED. The first
    time a label is seen: the frame and the label's crop go to the S3 destination and one SNS notification
    says so; at the end ``results.json`` goes to S3 and a final notification ends the session. S3 layout
    (AWS leaves it open): ``<KeyPrefix>/<name>/<SessionId>/frames/<LABEL>-<offset ms>.jpg``,
    ``.../crops/<LABEL>-<offset ms>.jpg`` and ``.../results.json``, through the server's object store."""

    def __init__(self, ctx: WorkContext, store: Store, row: Row[Any], payload: dict[str, Any]) -> None:
        from mlharbor.blobs.store import S3Uri, open_blob_store
        from mlharbor.engines.labels import LABELS, LabelModelError, detector

        stop = StopWatch(ctx, store, table, row.arn, payload["attempt"], ACTIVE)
        self.store, self.row, self.attempt = store, row, payload["attempt"]
        settings = row.spec["Settings"]["ConnectedHome"]
        self.labels = set(LABELS) if "ALL" in settings["Labels"] else set(settings["Labels"])
        self.min_confidence = settings.get("MinConfidence", 50.0)
        self.duration = (row.session or {}).get("StopSelector", {}).get("MaxDurationInSeconds", 10)
        self.regions = row.spec.get("RegionsOfInterest", [])
        stream, url = _video_url(row, payload)
        try:
            self.detector = detector(Path(payload["data_dir"]) / "models")
        except LabelModelError as exc:
            raise _Unusable(f"No label detection model: {exc}") from None
        missing = self.labels - set(self.detector.classes.values())
        if missing:
            raise _Unusable(f"The label detection model cannot detect {', '.join(sorted(missing))}")
        destination = row.spec["Output"]["S3Destination"]
        prefix = "/".join(
            p for p in (destination.get("KeyPrefix", "").strip("/"), row.name, row.session_id) if p
        )
        self.folder = S3Uri(destination["Bucket"], prefix)
        self.blobs = open_blob_store(payload["object_store"], Path(payload["data_dir"]))
        self.notifier = Notifier(row.spec["NotificationChannel"]["SNSTopicArn"])
        try:
            self.notifier.check()
        except NotificationUnavailable as exc:
            raise _Unusable(str(exc)) from None
        if stop():
            raise _StoppedWhileStarting
        self.source = _open(url, stream, payload["fps"])
        self.fragment_base = _fragment_base()
        self.stop = stop

    def close(self) -> None:
        self.source.close()

    def run(self, ctx: WorkContext) -> dict[str, Any]:
        from mlharbor.engines.video import VideoError

        started, frames, first_seen = time.monotonic(), 0, {}
        last_frame = None
        while not self.stop() and time.monotonic() - started < self.duration:
            try:
                frame = self.source.next(timeout=0.1)
            except VideoError as exc:
                _fail(self.store, self.row.arn, self.attempt, f"Unable to read video stream: {exc}")
                return {"stopped": False}
            if frame is None:
                continue
            frames, last_frame = frames + 1, frame
            for found in self.detector.detect(frame.pixels, self.min_confidence):
                if (
                    found.label in self.labels
                    and found.label not in first_seen
                    and _in_regions(found, frame.pixels.shape, self.regions)
                ):
                    first_seen[found.label] = self._detected(frame, found)
            ctx.heartbeat({"frames": frames, "labels": sorted(first_seen)})
        with self.store.read() as conn:
            status = conn.execute(select(table.c.status).where(table.c.arn == self.row.arn)).scalar()
        if status == "STARTING" and time.monotonic() - started < self.duration:
            return {"stopped": True}  # the server is shutting down: the session runs again after it
        self._completed(first_seen, frames, last_frame)
        _move(self.store, self.row.arn, {"STARTING": "STOPPED", "STOPPING": "STOPPED"}, self.attempt,
              status_message=None)  # fmt: skip
        return {"stopped": status == "STOPPING", "frames": frames}

    def _detected(self, frame: Any, found: Any) -> dict[str, Any]:
        """Store the frame and the crop, notify, and return the label's entry for the messages."""
        at = _Position.of(frame, self.fragment_base)
        millis = int(round(frame.stream_seconds * 1000))
        height, width = frame.pixels.shape[:2]
        left, top = max(0, int(found.left)), max(0, int(found.top))
        crop = frame.pixels[top : int(found.top + found.height), left : int(found.left + found.width)]
        frame_uri = self.folder.join("frames", f"{found.label}-{millis}.jpg")
        crop_uri = self.folder.join("crops", f"{found.label}-{millis}.jpg")
        self.blobs.put(frame_uri, _jpeg(frame.pixels))
        self.blobs.put(crop_uri, _jpeg(crop if crop.size else frame.pixels))
        label = {
            "id": str(uuid.uuid4()),
            "name": found.label,
            "confidence": found.confidence,
            "frameImageUri": str(frame_uri),
            "croppedImageUri": str(crop_uri),
            "videoMapping": {
                "kinesisVideoMapping": {
                    "fragmentNumber": at.fragment_number,
                    "serverTimestamp": int(at.server_timestamp * 1000),
                    "producerTimestamp": int(at.producer_timestamp * 1000),
                    "frameOffsetMillis": int(at.offset * 1000),
                }
            },
            "boundingBox": {
                "left": found.left / width,
                "top": found.top / height,
                "height": found.height / height,
                "width": found.width / width,
            },
        }
        self.notifier.publish(self._message("LABEL_DETECTED", labels=[label]))
        return label

    def _completed(self, first_seen: dict[str, Any], frames: int, last_frame: Any) -> None:
        processed = int(round(last_frame.stream_seconds * 1000)) if last_frame is not None else 0
        results = {
            "sessionId": self.row.session_id,
            "streamProcessorName": self.row.name,
            "framesAnalysed": frames,
            "processedVideoDurationMillis": processed,
            "labels": list(first_seen.values()),
        }
        self.blobs.put(self.folder.join("results.json"), json.dumps(results, indent=2).encode())
        seen = ", ".join(sorted(first_seen)) or "no labels"
        self.notifier.publish(
            self._message(
                "STREAM_PROCESSING_COMPLETE",
                processed=processed,
                streamProcessingResults={"message": f"Stream processing completed: {seen} detected."},
            )
        )

    def _message(self, kind: str, processed: int | None = None, **body: Any) -> dict[str, Any]:
        video: dict[str, Any] = {"streamArn": self.row.input_stream_arn}
        if processed is not None:
            video["processedVideoDurationMillis"] = processed
        return {
            "inputInformation": {"kinesisVideo": video},
            "eventNamespace": {"type": kind},
            **body,
            "eventId": str(uuid.uuid4()),
            "tags": self.tags,
            "sessionId": self.row.session_id,
            "startStreamProcessorRequest": {"name": self.row.name, **(self.row.session or {})},
        }

    @property
    def tags(self) -> dict[str, str]:
        from mlharbor.services import tags

        with self.store.read() as conn:
            return tags.get(conn, self.row.arn)


def _in_regions(found: Any, shape: tuple[int, ...], regions: list[dict[str, Any]]) -> bool:
    """Whether a detection's centre lies in one of the regions of interest (boxes or polygons, as ratios
    of the frame); without regions the whole frame counts."""
    if not regions:
        return True
    height, width = shape[:2]
    x, y = (found.left + found.width / 2) / width, (found.top + found.height / 2) / height
    for region in regions:
        box = region.get("BoundingBox")
        if box is not None:
            left, top = box.get("Left", 0.0), box.get("Top", 0.0)
            if left <= x <= left + box.get("Width", 1.0) and top <= y <= top + box.get("Height", 1.0):
                return True
        points = [(p.get("X", 0.0), p.get("Y", 0.0)) for p in region.get("Polygon", [])]
        if len(points) >= 3 and _in_polygon(x, y, points):
            return True
    return False


def _in_polygon(x: float, y: float, points: list[tuple[float, float]]) -> bool:
    """Ray casting: an odd number of edge crossings to the right of the point means inside."""
    inside = False
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _jpeg(pixels: Any) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


class _Tracks:
    """Descriptors of the faces in the previous analysed frame, reused for faces that are still there.

    Describing a face costs ~60 ms, three times its detection: a face whose box overlaps one of the previous
    frame's (intersection over union ≥ ``SAME_FACE_IOU``) keeps that face's descriptor, and is described
    afresh once it is ``REFRESH_FRAMES`` frames old. The search itself runs every frame (it sees collection
    changes at once); only the descriptor is reused.
    """

    SAME_FACE_IOU = 0.5
    REFRESH_FRAMES = 5  # one second at the default 5 frames/s

    def __init__(self) -> None:
        self._previous: list[tuple[Any, Any, int]] = []  # (box, descriptor, frames since described)

    def descriptors(self, measured: list[Any], describe: Any) -> list[Any]:
        reused: list[tuple[Any, int] | None] = []
        taken: set[int] = set()
        for m in measured:
            best, best_iou = None, self.SAME_FACE_IOU
            for k, (box, _, age) in enumerate(self._previous):
                overlap = _iou(m.face.box, box)
                if k not in taken and overlap >= best_iou and age + 1 < self.REFRESH_FRAMES:
                    best, best_iou = k, overlap
            if best is not None:
                taken.add(best)
            reused.append(None if best is None else (self._previous[best][1], self._previous[best][2] + 1))
        fresh = [m.face for m, r in zip(measured, reused, strict=True) if r is None]
        described = iter(describe(fresh) if fresh else [])
        out, current = [], []
        for m, r in zip(measured, reused, strict=True):
            descriptor, age = (next(described).descriptor, 0) if r is None else r
            out.append(descriptor)
            current.append((m.face.box, descriptor, age))
        self._previous = current
        return out


def _iou(a: Any, b: Any) -> float:
    width = min(a.right, b.right) - max(a.left, b.left)
    height = min(a.bottom, b.bottom) - max(a.top, b.top)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (a.width * a.height + b.width * b.height - inter)


# --- The reconcile pass ---------------------------------------------------------------------------------
class StreamSupervisor:
    """Starts sessions, keeps every STARTING/RUNNING processor's worker alive, and finishes stops nobody
    else can. It is the only submitter of stream workers (StartStreamProcessor commits STARTING and
    wakes it), so a pass can never start a second worker for a session it has not seen yet."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.started_at = time.time()
        self._died_at: dict[str, float] = {}  # work id → when its death was first noticed

    def payload(self, arn: str, attempt: int) -> dict[str, Any]:
        settings = self.server.settings
        return attempts.payload(
            settings, arn, attempt, video_streams=settings.video_streams, fps=settings.stream_analysis_fps
        )

    def reconcile(self) -> None:
        store, executor = self.server.store, self.server.executor
        with store.read() as conn:
            rows = conn.execute(
                select(table).where(table.c.status.in_(["STARTING", "RUNNING", "STOPPING"]))
            ).all()
        running = set(executor.running())
        for row in rows:
            wid = stream_work_id(row.arn, row.session_id, row.attempt)
            if wid in running:
                if row.status == "STOPPING":
                    executor.request_stop(wid)  # the stop may have come through another server
                continue
            status = executor.status(wid)
            if row.status == "STOPPING":
                _finish_stop(store, row.arn, row.attempt)
            elif status is None and row.updated_at >= self.started_at:
                self._submit(row.arn, row.session_id, row.attempt)  # started by this server: first worker
            elif status is None:  # RUNNING when the server went down: a new attempt
                self._restart(row, "the server restarted", count=False)
            elif self._due(wid, status.ended_at or time.time(), row.restarts):
                self._restart(row, status.error or status.state, count=True)

    def _due(self, wid: str, ended_at: float, restarts: int) -> bool:
        died = self._died_at.setdefault(wid, ended_at)
        return time.time() >= died + RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]

    def _restart(self, row: Row[Any], reason: str, *, count: bool) -> None:
        store = self.server.store
        self._died_at.pop(stream_work_id(row.arn, row.session_id, row.attempt), None)
        if count and row.restarts + 1 >= MAX_RESTARTS:
            message = f"The stream processor stopped unexpectedly {MAX_RESTARTS} times (last: {reason})."
            _fail(store, row.arn, row.attempt, message)
            return
        log.warning("stream processor %s: worker gone (%s); restarting", row.arn, reason)
        values = {"restarts": row.restarts + 1} if count else {}
        if attempts.next_attempt(store, table, row, **values):
            self._submit(row.arn, row.session_id, row.attempt + 1)

    def _submit(self, arn: str, session_id: str, attempt: int) -> None:
        self.server.executor.submit(
            stream_work_id(arn, session_id, attempt), TARGET, self.payload(arn, attempt)
        )
