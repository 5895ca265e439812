"""What Rekognition reports about a detected face (``FaceDetail``) and the quality bar IndexFaces applies.

Only what the engine measures is reported: the box, the detector's confidence, the landmarks the detector
finds (RetinaFace: eyeLeft, eyeRight, nose, mouthLeft, mouthRight; dlib's HOG through the 5-point model:
the eyes and the nose), a pose estimated from the 5-point model's landmarks, and brightness/sharpness
measured on the face's pixels. Age, gender, emotions, glasses, beard, eye direction and the other
landmarks need models we do not ship; they are omitted, never guessed (docs/COMPATIBILITY.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy

from mlharbor.engines.faces import Face

# Pose from the 5 landmarks, a simple head model: the nose base sits ~0.3 inter-eye distances in front
# of the eyes' plane and, on a frontal face, ~0.72 inter-eye distances below the eye line (measured on
# the test portraits). Yaw and pitch are the angles that explain how far the nose base appears off
# those positions. Coarse (±10° or so), but measured, and exact for roll.
_NOSE_DEPTH = 0.3
_NOSE_DROP = 0.72

# Sharpness: variance of the Laplacian of the face scaled to 96×96 grey pixels, mapped to 0-100 so that
# the test portraits score 88-100, and 41 and 4 once blurred by a Gaussian of a fiftieth of the face's width.
_SHARPNESS_SCALE = 250.0
_FACE_SIDE = 96


@dataclass(frozen=True)
class Measured:
    """A detected face with what FaceDetail reports about it, in the image's pixels and ratios."""

    face: Face
    box: dict[str, float]  # BoundingBox as ratios of the image
    landmarks: list[dict[str, Any]]
    pose: dict[str, float]
    brightness: float
    sharpness: float
    area: int  # pixels, for "largest first"

    @property
    def confidence(self) -> float:
        return self.face.confidence

    def detail(self, attributes: list[str] | None) -> dict[str, Any]:
        """FaceDetail: the DEFAULT set unless only non-default attributes were asked for (then the box
        and confidence, as AWS returns, without the attributes we cannot compute)."""
        detail: dict[str, Any] = {"BoundingBox": self.box, "Confidence": self.confidence}
        if not attributes or {"DEFAULT", "ALL"} & set(attributes):
            detail["Landmarks"] = self.landmarks
            detail["Pose"] = self.pose
            detail["Quality"] = {"Brightness": self.brightness, "Sharpness": self.sharpness}
        return detail


def measure(image: numpy.ndarray, face: Face) -> Measured:
    height, width = image.shape[:2]
    b = face.box
    box = {
        "Width": b.width / width,
        "Height": b.height / height,
        "Left": b.left / width,
        "Top": b.top / height,
    }
    # 5-point model order: image-right eye (outer, inner), image-left eye (outer, inner), nose base.
    points = numpy.asarray(face.landmarks, dtype=numpy.float64)
    eye_left, eye_right, nose = points[2:4].mean(axis=0), points[0:2].mean(axis=0), points[4]
    named = face.points or (
        ("eyeLeft", *eye_left), ("eyeRight", *eye_right), ("nose", *nose)
    )  # fmt: skip
    landmarks = [{"Type": kind, "X": float(x / width), "Y": float(y / height)} for kind, x, y in named]
    # Quality on the HOG-style box (eyebrows to chin) its scales were calibrated on, whatever the detector.
    q = face.align_box or b
    crop = image[max(0, q.top) : max(0, q.bottom), max(0, q.left) : max(0, q.right)]
    return Measured(
        face=face,
        box=box,
        landmarks=landmarks,
        pose=_pose(eye_left, eye_right, nose),
        brightness=_brightness(crop),
        sharpness=_sharpness(crop),
        area=b.width * b.height,
    )


def _pose(eye_left: numpy.ndarray, eye_right: numpy.ndarray, nose: numpy.ndarray) -> dict[str, float]:
    dx, dy = eye_right - eye_left
    roll = math.degrees(math.atan2(dy, dx))
    distance = max(math.hypot(dx, dy), 1e-6)
    # The nose in the face's own frame: rotate the roll away around the eyes' midpoint.
    cos, sin = dx / distance, dy / distance
    rx, ry = nose - (eye_left + eye_right) / 2
    along, down = (rx * cos + ry * sin) / distance, (-rx * sin + ry * cos) / distance
    yaw = math.degrees(math.atan2(along, _NOSE_DEPTH))
    pitch = math.degrees(math.atan2(_NOSE_DROP - down, _NOSE_DEPTH))
    return {"Roll": roll, "Yaw": yaw, "Pitch": max(-90.0, min(90.0, pitch))}


def _grey(crop: numpy.ndarray) -> numpy.ndarray:
    return crop[..., :3].astype(numpy.float32) @ numpy.array([0.299, 0.587, 0.114], dtype=numpy.float32)


def _brightness(crop: numpy.ndarray) -> float:
    return float(_grey(crop).mean() / 255.0 * 100.0) if crop.size else 0.0


def _sharpness(crop: numpy.ndarray) -> float:
    if crop.size == 0:
        return 0.0
    from PIL import Image

    grey = numpy.asarray(
        Image.fromarray(_grey(crop).astype(numpy.uint8)).resize((_FACE_SIDE, _FACE_SIDE)), dtype=numpy.float32
    )
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    return float(100.0 * (1.0 - math.exp(-float(laplacian.var()) / _SHARPNESS_SCALE)))


# --- IndexFaces' quality bar ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Bar:
    confidence: float
    sharpness: float
    brightness: float
    max_angle: float  # |yaw| and |pitch|


# AUTO is MEDIUM. LOW accepts everything the detector reports (its own threshold maps to 90).
BARS = {
    "LOW": Bar(confidence=90.0, sharpness=3.0, brightness=5.0, max_angle=75.0),
    "MEDIUM": Bar(confidence=95.0, sharpness=10.0, brightness=10.0, max_angle=60.0),
    "HIGH": Bar(confidence=99.0, sharpness=30.0, brightness=20.0, max_angle=45.0),
}
BARS["AUTO"] = BARS["MEDIUM"]
# AWS: a face must be at least 40×40 pixels in a 1920×1080 image, scaled for other sizes.
_MIN_FACE_AT_1920 = 40


def reasons(measured: Measured, image: numpy.ndarray, quality_filter: str) -> list[str]:
    """Why the face falls below the bar (UnindexedFaces.Reasons); empty when it passes. NONE passes all."""
    bar = BARS.get(quality_filter)
    if bar is None:
        return []
    found = []
    if measured.confidence < bar.confidence:
        found.append("LOW_CONFIDENCE")
    if measured.sharpness < bar.sharpness:
        found.append("LOW_SHARPNESS")
    if measured.brightness < bar.brightness:
        found.append("LOW_BRIGHTNESS")
    if max(abs(measured.pose["Yaw"]), abs(measured.pose["Pitch"])) > bar.max_angle:
        found.append("EXTREME_POSE")
    smallest = _MIN_FACE_AT_1920 * max(image.shape[:2]) / 1920
    if min(measured.face.box.width, measured.face.box.height) < smallest:
        found.append("SMALL_BOUNDING_BOX")
    return found
