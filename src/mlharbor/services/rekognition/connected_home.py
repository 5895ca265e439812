"""Connected home sessions: label detection (PERSON, PET, PACKAGE) for a bounded session, frames to the S3
destination and events to SNS."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Row, select

from mlharbor import model_packages
from mlharbor.runtime import WorkContext
from mlharbor.services.attempts import Fence, StopWatch
from mlharbor.services.rekognition import label_model
from mlharbor.services.rekognition import sessions as ss
from mlharbor.services.rekognition.live_view import LiveView, Stats
from mlharbor.services.rekognition.sinks import NotificationUnavailable, Notifier
from mlharbor.store.db import Store
from mlharbor.store.tables import stream_processors as table


class ConnectedHomeSession:
    """Label detection (PERSON, PET, PACKAGE) for one session of ``StopSelector.MaxDurationInSeconds``
    (default 10 s). AWS keeps the processor STARTING for the whole session and ends it STOPPED. The first
    time a label is seen: the frame and the label's crop go to the S3 destination and one SNS notification
    says so; at the end ``results.json`` goes to S3 and a final notification ends the session. S3 layout
    (AWS leaves it open): ``<KeyPrefix>/<name>/<SessionId>/frames/<LABEL>-<offset ms>.jpg``,
    ``.../crops/<LABEL>-<offset ms>.jpg`` and ``.../results.json``, through the server's object store."""

    def __init__(self, ctx: WorkContext, store: Store, row: Row[Any], payload: dict[str, Any]) -> None:
        from mlharbor.blobs.store import S3Uri, open_blob_store
        from mlharbor.engines.labels import LABELS, LabelModelError, detectors

        stop = StopWatch(ctx, store, table, row.arn, Fence.from_payload(payload), ss.ACTIVE)
        self.store, self.row, self.fence = store, row, Fence.from_payload(payload)
        self.live = LiveView(store, row.arn)  # the console's view of the frames, while one watches
        settings = row.spec["Settings"]["ConnectedHome"]
        self.labels = set(LABELS) if "ALL" in settings["Labels"] else set(settings["Labels"])
        self.min_confidence = settings.get("MinConfidence", 50.0)
        session = row.session or {}
        self.duration = session.get("StopSelector", {}).get("MaxDurationInSeconds", 10)
        self.start_at = session.get("StartSelector", {}).get("KVSStreamStartSelector", {})
        self.start_grace = payload["start_grace"]
        self.regions = row.spec.get("RegionsOfInterest", [])
        stream = ss.input_stream(row)
        self.blobs = open_blob_store(payload["object_store"], Path(payload["data_dir"]))
        try:
            with label_model.fetch(self.blobs, payload.get("label_model")) as models:
                # The built-in detectors' packages where the server's settings place them, else where this
                # environment has them; their ONNX conversions cached in the data folder; only the wanted
                # labels' detectors.
                packages, cache = payload.get("model_packages_dir"), payload.get("model_cache_dir")
                self.detectors = detectors(
                    Path(models), packages_dir=model_packages.resolve_dir(packages),
                    cache_dir=Path(cache) if cache else None,
                    person_detector=payload.get("person_detector", "ssdlite"), labels=self.labels,
                )  # fmt: skip
        except LabelModelError as exc:
            raise ss.Unusable(f"Unable to load the label detection model: {exc}") from None
        missing = self.labels - set().union(*(d.labels for d in self.detectors))
        if missing:  # the model was replaced since the processor was created
            raise ss.Unusable(f"No installed detector can detect {', '.join(sorted(missing))}")
        destination = row.spec["Output"]["S3Destination"]
        prefix = "/".join(
            p for p in (destination.get("KeyPrefix", "").strip("/"), row.name, row.session_id) if p
        )
        self.folder = S3Uri(destination["Bucket"], prefix)
        self.kms_key_id = row.spec.get("KmsKeyId")
        self.notifier = Notifier(row.spec["NotificationChannel"]["SNSTopicArn"], payload.get("sns"))
        try:
            self.notifier.check()
        except NotificationUnavailable as exc:
            raise ss.Unusable(str(exc)) from None
        if stop():
            raise ss.StoppedWhileStarting
        self.source = ss.Camera(row, payload, self.start_at, catch_up=True)
        self.stream = stream
        self.stop = stop

    def close(self) -> None:
        try:
            self.source.close()
        finally:
            self.live.clear()  # the session's last frame is not kept once it ends

    def run(self, ctx: WorkContext) -> dict[str, Any]:
        from mlharbor.engines.video import VideoError

        # MaxDurationInSeconds counts from the first frame analysed (at or after the StartSelector); a
        # session that gets none within the start grace (stream_start_grace_seconds, default 120 s: AWS's
        # guide treats 2 minutes in STARTING as stuck) more than that ends FAILED, never STARTING forever.
        deadline, give_up = None, time.monotonic() + self.duration + self.start_grace
        frames, first_seen, last_frame = 0, {}, None
        stats, live = Stats(), self.live
        while not self.stop() and time.monotonic() < (deadline or give_up):
            try:
                frame = self.source.next(timeout=0.1)
            except VideoError as exc:
                # Kinesis Video unreachable: wait for it to come back, within the session's time.
                if not self.source.reopen(ctx, self.store, self.row.arn, self.fence, self.stop, exc,
                                          until=deadline or give_up):  # fmt: skip
                    break
                continue
            if frame is None or not self._selected(frame):
                continue
            if deadline is None:
                deadline = time.monotonic() + self.duration
            frames, last_frame = frames + 1, frame
            wanted = self.labels - first_seen.keys()  # only each label's first sighting is reported
            boxes = []
            for detector in (d for d in self.detectors if d.labels & wanted):
                for found in detector.detect(frame.pixels, wanted, self.min_confidence):
                    if found.label in wanted and _in_regions(found, frame.pixels.shape, self.regions):
                        first_seen[found.label] = self._detected(frame, found)
                        wanted = wanted - {found.label}
                        boxes.append(_live_box(found, frame.pixels.shape))
            stats.analysed(frame.received_time)
            progress = {"frames": frames, "labels": sorted(first_seen), **stats.snapshot()}
            ctx.heartbeat(progress)
            if live.watched():  # a console shows this frame, what it found, and the labels seen so far
                seen = [_seen(label) for label in first_seen.values()]
                live.publish(frame.pixels, {"boxes": boxes, "labels": seen, "stats": stats.snapshot()})
        with self.store.read() as conn:
            row = conn.execute(select(table).where(table.c.arn == self.row.arn)).first()
        if self.stop.superseded or (row is not None and not self.fence.holds(row)):
            return {"stopped": True}  # re-created, or a newer attempt took over: nothing more to write
        status = row.status if row is not None else None
        if status == "STARTING" and time.monotonic() < (deadline or give_up):
            return {"stopped": True}  # the server is shutting down: the session runs again after it
        if status == "STARTING" and deadline is None:
            reason = "the StartSelector position was not reached" if self.start_at else "no video arrived"
            message = f"Stream {self.stream}: {reason} within {self.duration + self.start_grace:g} s."
            ss.fail(self.store, self.row.arn, self.fence, message)
            return {"stopped": False}
        self._completed(first_seen, frames, last_frame)
        ss.move(self.store, self.row.arn, {"STARTING": "STOPPED", "STOPPING": "STOPPED"}, self.fence,
              status_message=None)  # fmt: skip
        return {"stopped": status == "STOPPING", "frames": frames}

    def _selected(self, frame: Any) -> bool:
        """Whether the frame is at or after the StartSelector's position. GetMedia starts at the fragment
        holding it (in the archive, or live when it is still to come); frames of that fragment before it
        are skipped here."""
        if "ProducerTimestamp" in self.start_at:
            return frame.producer_time * 1000.0 >= self.start_at["ProducerTimestamp"]
        if "FragmentNumber" in self.start_at:
            return int(frame.fragment.fragment_number) >= int(self.start_at["FragmentNumber"])
        return True

    def _detected(self, frame: Any, found: Any) -> dict[str, Any]:
        """Store the frame and the crop, notify, and return the label's entry for the messages."""
        at = ss.Position.of(frame)
        millis = int(round(frame.stream_seconds * 1000))
        height, width = frame.pixels.shape[:2]
        left, top = max(0, int(found.left)), max(0, int(found.top))
        crop = frame.pixels[top : int(found.top + found.height), left : int(found.left + found.width)]
        frame_uri = self.folder.join("frames", f"{found.label}-{millis}.jpg")
        crop_uri = self.folder.join("crops", f"{found.label}-{millis}.jpg")
        self._put(frame_uri, _jpeg(frame.pixels))
        self._put(crop_uri, _jpeg(crop if crop.size else frame.pixels))
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

    def _put(self, uri: Any, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.blobs.put(uri, data, kms_key_id=self.kms_key_id)  # encrypted with KmsKeyId, as AWS does
        except (BotoCoreError, ClientError, OSError, ValueError) as exc:
            raise ss.Unusable(f"Unable to write to S3 bucket {self.folder.bucket}: {exc}") from None

    def _completed(self, first_seen: dict[str, Any], frames: int, last_frame: Any) -> None:
        processed = int(round(last_frame.stream_seconds * 1000)) if last_frame is not None else 0
        results = {
            "sessionId": self.row.session_id,
            "streamProcessorName": self.row.name,
            "framesAnalysed": frames,
            "processedVideoDurationMillis": processed,
            "labels": list(first_seen.values()),
        }
        self._put(self.folder.join("results.json"), json.dumps(results, indent=2).encode())
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


def _live_box(found: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    height, width = shape[:2]
    box = {
        "Left": found.left / width, "Top": found.top / height,
        "Width": found.width / width, "Height": found.height / height,
    }  # fmt: skip
    return {"box": box, "label": found.label, "confidence": round(found.confidence, 1)}


def _seen(label: dict[str, Any]) -> dict[str, Any]:
    """A label's first sighting as the live view lists it: name, confidence, the frame and crop in S3."""
    return {
        "name": label["name"],
        "confidence": round(label["confidence"], 1),
        "frame": label["frameImageUri"],
        "crop": label["croppedImageUri"],
    }


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
