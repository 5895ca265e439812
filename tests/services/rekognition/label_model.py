"""A tiny YOLOv8-layout ONNX detector the tests build themselves (no weights to download).

Input ``images`` float32 ``[1, 3, 320, 320]`` (RGB 0-1); output ``[1, 4 + 3, 100]``: one candidate box per
32×32 cell (cx, cy, w, h in input pixels) and three class scores from the cell's mean colour: a red cell is
class 0, green class 1, blue class 2 (sigmoid(20·own − 10·others − 8): ~1 for a pure colour, ~0 for grey).
So a test knows exactly what must be detected where, and the server's real decoding code runs on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy

STRIDE, SIDE = 32, 320
CLASSES = {0: "PERSON", 1: "PET", 2: "PACKAGE"}


def build() -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    classes, cells = len(CLASSES), SIDE // STRIDE
    weights = numpy.full((classes, 3), -10.0, numpy.float32)
    numpy.fill_diagonal(weights, 20.0)
    ys, xs = numpy.meshgrid(numpy.arange(cells), numpy.arange(cells), indexing="ij")
    boxes = numpy.stack(
        [(xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE, numpy.full_like(xs, STRIDE), numpy.full_like(ys, STRIDE)]
    ).astype(numpy.float32)
    initializers = [
        numpy_helper.from_array(weights.reshape(classes, 3, 1, 1), "class_weights"),
        numpy_helper.from_array(numpy.full(classes, -8.0, numpy.float32), "class_bias"),
        numpy_helper.from_array(boxes.reshape(1, 4, cells, cells), "cell_boxes"),
        numpy_helper.from_array(numpy.array([1, 4 + classes, cells * cells], numpy.int64), "flat"),
    ]
    nodes = [
        helper.make_node(
            "AveragePool", ["images"], ["cell_rgb"], kernel_shape=[STRIDE] * 2, strides=[STRIDE] * 2
        ),
        helper.make_node("Conv", ["cell_rgb", "class_weights", "class_bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node("Concat", ["cell_boxes", "scores"], ["rows"], axis=1),
        helper.make_node("Reshape", ["rows", "flat"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_colour_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + classes, cells * cells])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def install(models_dir: Path, classes: dict[int, str] | None = None) -> None:
    """Put the model (and its class map) where the server looks for the label detector."""
    models_dir.mkdir(parents=True, exist_ok=True)
    mapping = CLASSES if classes is None else classes
    (models_dir / "labels.json").write_text(json.dumps({"classes": {str(k): v for k, v in mapping.items()}}))
    (models_dir / "labels.onnx").write_bytes(build())


def frame_with(
    colour: tuple[int, int, int], box: tuple[int, int, int, int], size=(640, 480)
) -> numpy.ndarray:  # type: ignore[no-untyped-def]
    """A grey frame with one rectangle (left, top, right, bottom) of ``colour``."""
    pixels = numpy.full((size[1], size[0], 3), 128, numpy.uint8)
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = colour
    return pixels
