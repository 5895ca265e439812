"""Face detection and face embeddings: pure compute, images in, boxes and vectors out.

The default engine is dlib (the ``dlib-bin`` wheel, no compiler needed) with the models that ship in the
``face-recognition-models`` wheel: the HOG frontal face detector, the 5-point landmark model (used for
alignment; the 68-point model's training data excludes commercial use) and the ResNet that maps an aligned
face to a 128-d descriptor. The model files are found by locating the package with ``importlib``: importing
``face_recognition_models`` itself needs ``pkg_resources``, which current setuptools no longer has.

``FaceEngine`` is the interface a faster engine (e.g. an ONNX model a user supplies) would implement; every
collection records the engine's ``model_version``, because vectors of different models are not comparable.

Similarity: dlib descriptors of one person are usually within Euclidean distance 0.6 of each other (the
model's documented threshold), and descriptors are compared by that distance. ``similarity`` maps it to
AWS's 0-100 scale so that distance 0.6 is similarity 80 (AWS's default ``FaceMatchThreshold``): the same
decision boundary, expressed the way Rekognition clients expect.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy

MODEL_VERSION = "dlib-20-resnet-v1"
# Distance at which two descriptors stop being the same person (dlib's documented threshold) and the
# similarity that distance gets: AWS's default FaceMatchThreshold.
SAME_PERSON_DISTANCE = 0.6
SAME_PERSON_SIMILARITY = 80.0


@dataclass(frozen=True)
class Box:
    """A face box in pixels: left, top, right, bottom (exclusive)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


@dataclass(frozen=True)
class Face:
    box: Box
    confidence: float  # 0-100; the detector's score mapped to AWS's scale
    landmarks: tuple[tuple[float, float], ...]  # 5 points: right eye (2), left eye (2), nose, in pixels
    descriptor: numpy.ndarray | None = None  # 128 float32, unit-free (Euclidean space of the model)


class ImageError(ValueError):
    """The bytes are not a JPEG or PNG image this engine can read."""


class ImageTooBig(ImageError):
    """More pixels than the caller accepts (checked from the header, before decoding)."""


class ImageTooSmall(ImageError):
    """Fewer pixels on a side than the caller accepts."""


class FaceEngine(Protocol):
    model_version: str

    def detect(self, image: numpy.ndarray, upsample: int = 0) -> list[Face]: ...

    def embed(self, image: numpy.ndarray, faces: list[Face]) -> list[Face]: ...


def decode_image(
    data: bytes, *, max_pixels: int | None = None, min_side: int = 1, max_side: int | None = None
) -> numpy.ndarray:
    """JPEG or PNG bytes → an RGB uint8 array (what Rekognition accepts); anything else raises ImageError.

    ``max_pixels`` and ``min_side`` bound the stored image (checked before decoding, so a decompression
    bomb costs nothing); ``max_side`` shrinks larger images, keeping the aspect ratio.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "PNG"):
                raise ImageError(f"unsupported image format {image.format}; only JPEG and PNG are accepted")
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooBig(f"{width}x{height} is more than {max_pixels} pixels")
            if min(width, height) < min_side:
                raise ImageTooSmall(f"{width}x{height} is smaller than {min_side}x{min_side} pixels")
            if max_side is not None and max(width, height) > max_side:
                image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
                image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return numpy.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"the image cannot be decoded: {exc}") from None


@cache
def _model_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError("the face-recognition-models package is not installed")
    return Path(spec.origin).parent / "models"


def similarity(distance: numpy.ndarray) -> numpy.ndarray:
    """AWS's 0-100 similarity for descriptor distances: 100 at 0, 80 at the same-person threshold, 0 at
    five times that. Linear, so a FaceMatchThreshold is exactly a distance threshold."""
    scale = (100.0 - SAME_PERSON_SIMILARITY) / SAME_PERSON_DISTANCE
    return numpy.clip(100.0 - numpy.asarray(distance, dtype=numpy.float64) * scale, 0.0, 100.0)


def distance_at(similarity_value: float) -> float:
    """The descriptor distance at which ``similarity`` gives this value (the inverse mapping)."""
    scale = (100.0 - SAME_PERSON_SIMILARITY) / SAME_PERSON_DISTANCE
    return (100.0 - similarity_value) / scale


class DlibEngine:
    """dlib's HOG detector, 5-point landmarks and ResNet descriptors (one instance per process)."""

    model_version = MODEL_VERSION

    def __init__(self) -> None:
        import dlib

        models = _model_dir()
        self._detector = dlib.get_frontal_face_detector()
        self._shapes = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._encoder = dlib.face_recognition_model_v1(
            str(models / "dlib_face_recognition_resnet_model_v1.dat")
        )
        self._dlib = dlib

    def detect(self, image: numpy.ndarray, upsample: int = 0) -> list[Face]:
        """Faces in an RGB image, most confident first. ``upsample`` 1 finds faces down to ~40 px at 4×
        the cost of 0 (~80 ms vs ~20 ms on a 640×480 frame)."""
        # dlib reads rows as if packed: a decoded frame whose rows are padded (a width like 410) would be
        # seen as noise, and no face found. (No copy when the array is packed already.)
        image = numpy.ascontiguousarray(image)
        rects, scores, _ = self._detector.run(image, upsample, 0.0)
        height, width = image.shape[:2]
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            box = Box(
                max(0, rect.left()),
                max(0, rect.top()),
                min(width, rect.right() + 1),
                min(height, rect.bottom() + 1),
            )
            if box.width <= 0 or box.height <= 0:
                continue
            shape = self._shapes(image, rect)
            points = tuple((float(shape.part(i).x), float(shape.part(i).y)) for i in range(shape.num_parts))
            faces.append(Face(box, detection_confidence(score), points))
        return sorted(faces, key=lambda f: -f.confidence)

    def embed(self, image: numpy.ndarray, faces: list[Face]) -> list[Face]:
        """The faces with their 128-d descriptors (aligned by their landmarks)."""
        if not faces:
            return []
        image = numpy.ascontiguousarray(image)  # (see detect)
        shapes = self._dlib.full_object_detections()
        for face in faces:
            b = face.box
            rect = self._dlib.rectangle(b.left, b.top, b.right - 1, b.bottom - 1)
            shapes.append(self._shapes(image, rect))
        descriptors = self._encoder.compute_face_descriptor(image, shapes)
        return [
            Face(face.box, face.confidence, face.landmarks, numpy.asarray(d, dtype=numpy.float32))
            for face, d in zip(faces, descriptors, strict=True)
        ]


def detection_confidence(score: float) -> float:
    """The HOG detector's SVM margin (0 at its default threshold, ~2-3 for clear faces) on AWS's 0-100
    scale: a logistic curve that puts the detector's threshold at 90 (AWS indexes faces it is at least
    ~90% sure of) and clear faces above 99."""
    return float(100.0 / (1.0 + numpy.exp(-(2.2 + 2.0 * score))))
