"""Face search sessions: detect, describe and search every face of each analysed frame, one Kinesis
record per frame.

Output: one record per analysed frame, also when no face is found (docs/COMPATIBILITY.md, decision 12),
partition key = the processor's name. The record's ``FragmentNumber``, ``ServerTimestamp`` and
``ProducerTimestamp`` are those of the Kinesis Video fragment holding the frame, and
``FrameOffsetInSeconds`` its place in it, so the frame can be fetched again (GetImages,
GetMediaForFragmentList).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Row

from mlharbor.errors import ResourceNotFoundException
from mlharbor.runtime import WorkContext
from mlharbor.services.attempts import Fence, StopWatch
from mlharbor.services.rekognition import collections as coll
from mlharbor.services.rekognition import face_details
from mlharbor.services.rekognition import sessions as ss
from mlharbor.services.rekognition.live_view import LiveView, Stats, face_boxes
from mlharbor.services.rekognition.sinks import KinesisSink, SinkUnavailable
from mlharbor.store.db import Store
from mlharbor.store.tables import stream_processors as table

MIN_FACE_MATCH_THRESHOLD = 80.0  # AWS raises lower FaceMatchThreshold values to 80
MATCHES_PER_FACE = 10


class FaceSearchSession:
    """Everything a face search session needs, checked and loaded before it goes RUNNING: the video
    stream's URL, the collection (its vectors loaded), the output stream, the engine, the open source.
    A stop requested meanwhile is looked for between the steps."""

    def __init__(self, ctx: WorkContext, store: Store, row: Row[Any], payload: dict[str, Any]) -> None:
        from mlharbor.engines.faces import FaceEngine

        def step() -> None:
            if stop():
                raise ss.StoppedWhileStarting

        self.store, self.row, self.fence = store, row, Fence.from_payload(payload)
        self.live = LiveView(store, row.arn)  # the console's view of the frames, while one watches
        stop = StopWatch(ctx, store, table, row.arn, self.fence, ss.ACTIVE)
        settings = row.spec["Settings"]["FaceSearch"]
        self.threshold = max(MIN_FACE_MATCH_THRESHOLD, settings.get("FaceMatchThreshold", 80.0))
        self.input_arn = row.input_stream_arn
        with store.read() as conn:
            self.collection = coll.find(conn, row.account_id, row.region, settings["CollectionId"])
        if self.collection is None:
            raise ss.Unusable("Collection not found")
        step()
        try:
            self.sink = KinesisSink(row.output_stream_arn, row.name, payload.get("kinesis"))
            self.sink.check()
        except SinkUnavailable as exc:
            raise ss.Unusable(str(exc)) from None
        step()
        self.indexes = coll.Indexes(Path(payload["data_dir"]) / "face-vectors", snapshot_min_faces=2**62)
        try:
            with self.indexes.holding(store, self.collection):
                pass  # load the vectors now, not on the first frame
        except ResourceNotFoundException:
            raise ss.Unusable("Collection not found") from None
        step()
        cache, packages = payload.get("model_cache_dir"), payload.get("model_packages_dir")
        self.engine = FaceEngine(
            detector=payload.get("face_detector", "retinaface"),
            descriptor=payload.get("face_descriptor", "onnx"),
            cache_dir=Path(cache) if cache else None,
            packages_dir=Path(packages) if packages else None,
        )
        self.tracks = Tracks()
        step()
        self.source = ss.Camera(row, payload)

    def close(self) -> None:
        try:
            self.source.close()
        finally:
            self.live.clear()  # the session's last frame is not kept once it ends

    def run(self, ctx: WorkContext) -> dict[str, Any]:
        from mlharbor.engines.video import VideoError

        arn = self.row.arn
        if ss.move(self.store, arn, {"STARTING": "RUNNING", "RUNNING": "RUNNING"}, self.fence) is None:
            ss.finish_stop(self.store, arn, self.fence)  # stopped while starting (or deleted, superseded)
            return {"stopped": True}
        stop = StopWatch(ctx, self.store, table, arn, self.fence, ss.ACTIVE)
        frames, next_beat, reported_error = 0, 0.0, None
        stats, live = Stats(), self.live
        while not stop():
            try:
                frame = self.source.next(timeout=0.1)
            except VideoError as exc:  # Kinesis Video unreachable: wait for it to come back
                if not self.source.reopen(ctx, self.store, arn, self.fence, stop, exc):
                    break
                reported_error = None  # reopening cleared StatusMessage: report a Kinesis outage again
                continue
            if frame is not None:
                try:
                    record = self._record(frame)
                except ResourceNotFoundException:
                    ss.fail(self.store, arn, self.fence, "Collection not found")
                    return {"stopped": False}
                self.sink.put(record)
                frames += 1
                stats.analysed(frame.received_time)
                if live.watched():  # a console shows this frame and its boxes
                    boxes = face_boxes(record["FaceSearchResponse"])
                    live.publish(frame.pixels, {"boxes": boxes, "stats": stats.snapshot()})
            self.sink.flush()
            if self.sink.error != reported_error:  # a Kinesis outage shows in StatusMessage
                reported_error = self.sink.error
                ss.move(self.store, arn, {"RUNNING": "RUNNING"}, self.fence, status_message=reported_error)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + ss.HEARTBEAT_S
                progress = {"frames": frames, "sent": self.sink.sent, "dropped": self.source.dropped}
                ctx.heartbeat({**progress, **stats.snapshot()})
        if stop.superseded:  # re-created, or a newer attempt took over: its records are not ours
            return {"stopped": True, "frames": frames}
        return self._stopped(frames)

    def _stopped(self, frames: int) -> dict[str, Any]:
        """Send what is left, then record STOPPED: nothing is written after it. A stop that is not a
        StopStreamProcessor (the server is shutting down) leaves the row RUNNING, to resume on restart."""
        deadline = time.monotonic() + 0.2
        while self.sink.error is None and not self.sink.flush() and time.monotonic() < deadline:
            time.sleep(0.02)
        ss.finish_stop(self.store, self.row.arn, self.fence)
        return {"stopped": True, "frames": frames}

    def _record(self, frame: Any) -> dict[str, Any]:
        at = ss.Position.of(frame)
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
        measured = [face_details.measure(pixels, f) for f in self.engine.detect(pixels)]
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


class Tracks:
    """Descriptors of the faces in the previous analysed frame, reused for faces that are still there.

    Describing a face costs ~7 ms, a third of a 640×480 frame's detection, so a crowd would double a frame's
    cost: a face whose box overlaps one of the previous frame's (intersection over union ≥
    ``SAME_FACE_IOU``) keeps that face's descriptor, and is described afresh once it is ``REFRESH_FRAMES``
    frames old. The search itself runs every frame (it sees collection
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
