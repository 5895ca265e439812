"""dlib's face descriptor network run by onnxruntime: the same 128-d descriptors, about 10x sooner.

dlib computes a face descriptor with a ResNet of 29 convolutions (``dlib.face_recognition_model_v1``) on
150×150 aligned face chips: 60-80 ms a face on one core (the dlib-bin wheel links no BLAS; its
convolutions use dlib's own matrix product). This module runs the same network, with the same weights,
through onnxruntime: ~7 ms a face on one core (~5 ms in batches of 4). The numbers are the same to float
rounding (max abs difference ~3e-7 on descriptors whose components are ~0.1; distances differ by ~1e-6
where the same-person threshold is 0.6), so descriptors from either engine are interchangeable: a
collection indexed with dlib's can be searched with these.

The weights come from the file that ships in the ``face-recognition-models`` wheel,
``dlib_face_recognition_resnet_model_v1.dat``: nothing is downloaded and no other model file is needed.
The file is in dlib's own serialization format; ``parse`` reads it (the format, learnt from dlib's source:
dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h, dlib/dnn/{core,layers,input,loss}.h) and
``build_onnx`` writes the network as an ONNX graph. dlib files do not describe their network, the C++
type does: ``NETWORK`` spells out that type (from dlib's examples/dnn_face_recognition_ex.cpp), and the
parser checks every layer's kind and shape against it. Each ``affine`` layer (dlib's batch norm at
inference) is folded into the convolution before it.

The file's SHA-256 is pinned (``SOURCE_SHA256``): a different or damaged file raises ``ModelFileError``
rather than producing descriptors that are silently incomparable with the ones already stored.

The conversion (under a second, most of it importing onnx) happens once: the ONNX model is cached in a
folder the caller gives, under a name made of the source file's SHA-256 and ``CONVERTER_VERSION``,
written atomically (temporary file, then rename). The cached file is a standard ONNX model whose last
bytes are a metadata entry holding the SHA-256 of all the bytes before it (a protobuf message may be
extended by appending fields), so a damaged cache is detected by hashing and is rebuilt.

Chips: ``chips`` extracts them with ``dlib.get_face_chips`` (150×150, padding 0.25), the same
``extract_image_chips(get_face_chip_details(shape, 150, 0.25))`` call ``compute_face_descriptor`` makes,
so the network sees byte-identical input.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy

from mlharbor import atomic_file

if TYPE_CHECKING:
    import onnx

SOURCE_NAME = "dlib_face_recognition_resnet_model_v1.dat"
# The file in face-recognition-models 0.3.0 (identical to dlib.net's dlib_face_recognition_resnet_model_v1).
SOURCE_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
# Part of the cache file's name: bump it when the graph this module builds changes, so that old caches
# are not used.
CONVERTER_VERSION = 1
CHIP_SIZE = 150
CHIP_PADDING = 0.25
DESCRIPTOR_SIZE = 128

# The metadata entry appended to the cached model: its value is the SHA-256 of the bytes before it.
_INTEGRITY_KEY = "mlharbor.sha256"
_OPSET = 17  # supported by every onnxruntime >= 1.17 (the dependency's lower bound)
_IR_VERSION = 8


class ModelFileError(RuntimeError):
    """The dlib model file is missing, is not the pinned one, or cannot be parsed."""


# ------------------------------------------------------------------------------------------------------
# The network: dlib's anet_type, outermost layer first (the order dlib serializes the layers' headers in).
#
#   residual<block,N,BN,S>      = add_prev1<block<N,BN,1,tag1<S>>>
#   residual_down<block,N,BN,S> = add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,BN,2,tag1<S>>>>>>
#   block<N,BN,stride,S>        = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,S>>>>>
#   ares<N,S> = relu<residual<block,N,affine,S>>;  ares_down<N,S> = relu<residual_down<block,N,affine,S>>
#   anet_type = loss_metric<fc_no_bias<128,avg_pool_everything<alevel0<...alevel4<
#               max_pool<3,3,2,2,relu<affine<con<32,7,7,2,2,input_rgb_image_sized<150>>>>>>>>>>>>
# ------------------------------------------------------------------------------------------------------

Layer = tuple[Any, ...]  # (kind, *arguments)


def _block(n: int, stride: int) -> list[Layer]:
    return [("affine",), ("con", n, 3, 3, 1, 1), ("relu",), ("affine",), ("con", n, 3, 3, stride, stride)]


def _ares(n: int) -> list[Layer]:
    return [("relu",), ("add_prev", 1), *_block(n, 1), ("tag", 1)]


def _ares_down(n: int) -> list[Layer]:
    return [
        ("relu",),
        ("add_prev", 2),
        ("avg_pool", 2, 2, 2, 2),
        ("skip", 1),
        ("tag", 2),
        *_block(n, 2),
        ("tag", 1),
    ]


NETWORK: list[Layer] = [
    ("fc_no_bias", DESCRIPTOR_SIZE),
    ("avg_pool_everything",),
    *_ares_down(256),  # alevel0
    *_ares(256), *_ares(256), *_ares_down(256),  # alevel1
    *_ares(128), *_ares(128), *_ares_down(128),  # alevel2
    *_ares(64), *_ares(64), *_ares(64), *_ares_down(64),  # alevel3
    *_ares(32), *_ares(32), *_ares(32),  # alevel4
    ("max_pool", 3, 3, 2, 2),
    ("relu",),
    ("affine",),
    ("con", 32, 7, 7, 2, 2),
    ("input", CHIP_SIZE),
]  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# dlib's serialization
# ------------------------------------------------------------------------------------------------------


class _Reader:
    """dlib's primitive encodings (dlib/serialize.h)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ModelFileError("the dlib model file ends too soon")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        # A control byte (bit 7: negative; low nibble: how many bytes follow), then the magnitude's bytes,
        # little-endian, leading zero bytes dropped. Unsigned types use the same encoding, without a sign.
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise ModelFileError(f"bad integer encoding at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        # float_details: an int64 mantissa and an int16 exponent, value = mantissa * 2**exponent, with three
        # exponents reserved for inf, -inf and NaN. (Files older than 2013 wrote ASCII: not this one.)
        mantissa, exponent = self.int(), self.int()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        return special[exponent] if exponent in special else math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        value = self._take(1)
        if value not in (b"0", b"1"):
            raise ModelFileError(f"bad boolean at byte {self.pos - 1}")
        return value == b"1"

    def string(self) -> str:
        return self._take(self.int()).decode("latin-1")

    def version(self, expected: Iterable[int], what: str) -> int:
        version = self.int()
        if version not in expected:
            raise ModelFileError(f"unexpected {what} version {version}")
        return version

    def tag(self, *expected: str) -> str:
        name = self.string()
        if name not in expected:
            raise ModelFileError(f"expected a {' or '.join(expected)} layer, found {name!r}")
        return name

    def tensor(self) -> numpy.ndarray:
        # resizable_tensor version 2: num_samples, k, nr, nc, then the values as little-endian float32.
        self.version((2,), "tensor")
        shape = tuple(self.int() for _ in range(4))
        count = math.prod(shape)
        return numpy.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        self.version((1,), "alias_tensor")
        n, k, nr, nc = (self.int() for _ in range(4))
        return n, k, nr, nc


@dataclass
class Parsed:
    """A layer as parsed: its kind (as in NETWORK) and its arrays and settings."""

    kind: str
    args: tuple[Any, ...]
    arrays: dict[str, numpy.ndarray] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ModelFileError(message)


def _read_details(r: _Reader, layer: Layer) -> Parsed:
    """One layer's own data (the ``details`` object of dlib's add_layer), checked against NETWORK."""
    kind, *args = layer
    out = Parsed(kind, tuple(args))
    if kind == "con":
        name = r.tag("con_4", "con_5", "con_6")
        params = r.tensor().reshape(-1)
        filters, nr, nc, stride_y, stride_x = args
        found = (r.int(), r.int(), r.int(), r.int(), r.int())
        _check(found == (filters, nr, nc, stride_y, stride_x), f"con layer {found}, expected {tuple(args)}")
        # dlib's default padding: half the filter when the stride is 1, else none.
        padding = (r.int(), r.int())
        expected_padding = (nr // 2 if stride_y == 1 else 0, nc // 2 if stride_x == 1 else 0)
        _check(padding == expected_padding, f"con padding {padding}, expected {expected_padding}")
        shape = r.alias_tensor()
        bias_shape = r.alias_tensor()
        for _ in range(4):  # learning-rate and weight-decay multipliers (training only)
            r.float()
        use_bias = r.bool() if name in ("con_5", "con_6") else True
        use_relu = r.bool() if name == "con_6" else False
        _check(shape[0] == filters and shape[2:] == (nr, nc), f"con filters {shape}")
        size = math.prod(shape)
        _check(params.size == size + (filters if use_bias else 0), "con parameter count")
        out.arrays["weight"] = params[:size].reshape(shape)
        bias = params[size:] if use_bias else numpy.zeros(filters, numpy.float32)
        _check(not use_bias or math.prod(bias_shape) == filters, "con bias count")
        out.arrays["bias"] = bias
        # (con_6's fused relu would come before the affine layer this module folds in: not in this file.)
        _check(not use_relu, "a convolution with a fused relu")
        out.values["padding"] = padding
    elif kind == "affine":
        # (bn_con2, a batch norm layer read as affine, is not in the pinned file.)
        name = r.tag("affine_", "affine_2")
        params = r.tensor().reshape(-1)
        gamma, beta = r.alias_tensor(), r.alias_tensor()
        mode = r.int()
        disabled = r.bool() if name == "affine_2" else False
        _check(mode == 0, "affine layer not in CONV_MODE")  # per channel, not per value
        if not disabled:
            g, b = math.prod(gamma), math.prod(beta)
            _check(params.size == g + b and gamma == beta, "affine parameter count")
            out.arrays.update(gamma=params[:g], beta=params[g:])
    elif kind == "relu":
        name = r.tag("relu_", "relu_2")
        out.values["disabled"] = r.bool() if name == "relu_2" else False
    elif kind in ("max_pool", "avg_pool", "avg_pool_everything"):
        r.tag("max_pool_2" if kind == "max_pool" else "avg_pool_2")
        found = (r.int(), r.int(), r.int(), r.int(), r.int(), r.int())
        nr, nc, stride_y, stride_x = args if kind != "avg_pool_everything" else (0, 0, 1, 1)
        expected = (nr, nc, stride_y, stride_x, 0, 0)  # (stride 2: no padding; everything: none)
        _check(found == expected, f"{kind} layer {found}, expected {expected}")
    elif kind == "add_prev":
        r.tag("add_prev_")
    elif kind == "fc_no_bias":
        name = r.tag("fc_2", "fc_3")
        outputs, inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        weights = r.alias_tensor()
        r.alias_tensor()  # biases: none
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        if name == "fc_3":
            r.bool()  # use_bias: irrelevant without a bias
        _check(bias_mode == 1 and outputs == args[0], f"fc layer: {outputs} outputs, bias mode {bias_mode}")
        _check(weights[:2] == (inputs, outputs) and params.size == inputs * outputs, "fc parameter count")
        out.arrays["weight"] = params.reshape(inputs, outputs)  # output = input (N × inputs) · weight
    else:
        raise AssertionError(kind)
    return out


def parse(data: bytes) -> tuple[dict[str, float], list[Parsed]]:
    """dlib's serialized anet_type → (the input layer's channel means, the layers from the input up).

    dlib writes a network recursively, each layer as: its header (a version), its subnetwork, then its own
    data. So the file holds every layer's header from the loss down to the first convolution, then the
    input layer's data, then each layer's data from the bottom up. The first convolution and the input
    layer are one add_layer (dlib's specialisation for a layer whose subnetwork is the input), with one
    header.
    """
    *upper, first, (_, size) = NETWORK
    r = _Reader(data)
    r.version((1,), "add_loss_layer")
    if r.tag("loss_metric_", "loss_metric_2") == "loss_metric_2":
        r.float(), r.float()  # margin and distance threshold: training only; to_label copies the output
    versions = []
    for kind, *_ in upper:
        # tag and skip layers have a header only: they name or fetch an output
        versions.append(
            r.version((1,), f"{kind} layer") if kind in ("tag", "skip") else r.version((1, 2), "add_layer")
        )
    first_version = r.version((2, 3), "input add_layer")
    r.tag("input_rgb_image_sized")
    means = {"red": r.float(), "green": r.float(), "blue": r.float()}
    found = (r.int(), r.int())
    _check(found == (size, size), f"input size {found}")
    layers = [_read_details(r, first)]
    _read_runtime_state(r, first_version, input_layer=True)
    for layer, version in zip(reversed(upper), reversed(versions), strict=True):
        if layer[0] in ("tag", "skip"):
            layers.append(Parsed(layer[0], tuple(layer[1:])))
        else:
            layers.append(_read_details(r, layer))
            _read_runtime_state(r, version, input_layer=False)
    _check(r.pos == len(data), f"{len(data) - r.pos} bytes left after the network")
    return means, layers


def _read_runtime_state(r: _Reader, version: int, *, input_layer: bool) -> None:
    """The training state dlib's add_layer saves after a layer's data (empty in a released model)."""
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output_..._disabled
        r.bool()
    r.tensor(), r.tensor()  # x_grad, cached_output
    if input_layer:
        r.tensor()  # grad_final
        if version >= 3:
            r.int()  # _sample_expansion_factor
    elif version == 2:
        r.tensor()  # params_grad


# ------------------------------------------------------------------------------------------------------
# The ONNX graph
# ------------------------------------------------------------------------------------------------------


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: numpy.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attributes: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attributes))
        return name


def build_onnx(means: dict[str, float], layers: list[Parsed]) -> onnx.ModelProto:
    """The parsed network as an ONNX model: ``chips`` (N×150×150×3 uint8 RGB) → ``descriptors`` (N×128).

    Follows dlib's forward pass: input_rgb_image_sized computes (pixel - mean) / 256 per channel in float32;
    convolutions are cross-correlations; affine layers scale and shift each channel (folded into the
    convolution before them); add_prev adds two tensors of different shapes as if the smaller were padded
    with zeros at the end (channels, rows, columns: tt::add); loss_metric outputs the fc layer's values
    as they are (no normalisation).
    """
    from onnx import TensorProto, helper

    g = _Graph()
    size = CHIP_SIZE
    # NHWC uint8 → NCHW float32, then dlib's normalisation. (x - mean) / 256 is exact in float32 both here
    # and in dlib (a power-of-two scale), so the first convolution sees the same numbers.
    x = g.op("Transpose", ["chips"], "nchw", perm=[0, 3, 1, 2])
    x = g.op("Cast", [x], "float", to=TensorProto.FLOAT)
    mean = numpy.array([means["red"], means["green"], means["blue"]], numpy.float32).reshape(1, 3, 1, 1)
    x = g.op("Sub", [x, g.const("mean", mean)], "centred")
    x = g.op("Mul", [x, g.const("scale", numpy.array(1 / 256, numpy.float32))], "input")
    shape = (3, size, size)  # channels, rows, columns (tracked for add_prev's padding)
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    i = 0
    while i < len(layers):
        layer = layers[i]
        name = f"l{i}_{layer.kind}"
        if layer.kind == "con":
            # Every convolution here is followed by an affine layer (dlib's batch norm at inference), folded
            # in: (conv(x, W) + b) · gamma + beta  ==  conv(x, W · gamma) + (b · gamma + beta), computed in
            # float64 and rounded once.
            affine = layers[i + 1]
            _check(affine.kind == "affine", "a convolution without its affine layer")
            weight = layer.arrays["weight"].astype(numpy.float64)
            bias = layer.arrays["bias"].astype(numpy.float64)
            if affine.arrays:  # (not disabled)
                gamma = affine.arrays["gamma"].astype(numpy.float64)
                weight = weight * gamma[:, None, None, None]
                bias = bias * gamma + affine.arrays["beta"]
            i += 1
            filters, _, nr, nc = weight.shape
            stride, padding = layer.args[3:5], layer.values["padding"]
            w = g.const(f"{name}_w", weight.astype(numpy.float32))
            b = g.const(f"{name}_b", bias.astype(numpy.float32))
            x = g.op(
                "Conv", [x, w, b], name, kernel_shape=[nr, nc], strides=stride, pads=[*padding, *padding]
            )
            shape = (filters, *_out(shape[1:], (nr, nc), stride, padding))
        elif layer.kind == "relu":
            if not layer.values["disabled"]:
                x = g.op("Relu", [x], name)
        elif layer.kind in ("max_pool", "avg_pool"):
            kernel, stride = layer.args[0:2], layer.args[2:4]
            op = "MaxPool" if layer.kind == "max_pool" else "AveragePool"
            x = g.op(op, [x], name, kernel_shape=kernel, strides=stride)
            shape = (shape[0], *_out(shape[1:], kernel, stride, (0, 0)))
        elif layer.kind == "tag":
            tags[layer.args[0]] = (x, shape)
        elif layer.kind == "skip":
            x, shape = tags[layer.args[0]]
        elif layer.kind == "add_prev":
            other, other_shape = tags[layer.args[0]]
            total = tuple(max(a, b) for a, b in zip(shape, other_shape, strict=True))
            x = _pad_to(g, x, shape, total, f"{name}_a")
            other = _pad_to(g, other, other_shape, total, f"{name}_b")
            x = g.op("Add", [x, other], name)
            shape = total
        elif layer.kind == "avg_pool_everything":
            x = g.op("GlobalAveragePool", [x], name)
            shape = (shape[0], 1, 1)
        elif layer.kind == "fc_no_bias":
            x = g.op("Flatten", [x], f"{name}_flat", axis=1)
            weight = layer.arrays["weight"]
            _check(weight.shape[0] == math.prod(shape), f"fc inputs {weight.shape[0]}, network gives {shape}")
            x = g.op("MatMul", [x, g.const(f"{name}_w", numpy.ascontiguousarray(weight))], "descriptors")
        else:
            raise AssertionError(layer.kind)
        i += 1
    _check(x == "descriptors", "the network does not end with the fc layer")
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chips", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("descriptors", TensorProto.FLOAT, ["N", DESCRIPTOR_SIZE])],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        ir_version=_IR_VERSION,
        producer_name="mlharbor",
        producer_version=str(CONVERTER_VERSION),
        doc_string=f"dlib's face descriptor ResNet, converted from {SOURCE_NAME} (SHA-256 {SOURCE_SHA256})",
    )
    return model


def _out(
    size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]
) -> tuple[int, ...]:
    """A convolution's or pooling's output rows and columns (dlib and ONNX agree: rounded down)."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding, strict=True))


def _pad_to(g: _Graph, x: str, shape: tuple[int, ...], total: tuple[int, ...], name: str) -> str:
    """Zeros after the end of each of channels, rows, columns, up to ``total`` (dlib's tt::add)."""
    if shape == total:
        return x
    pads = numpy.array([0, 0, 0, 0, 0, *(t - s for s, t in zip(shape, total, strict=True))], numpy.int64)
    return g.op("Pad", [x, g.const(f"{name}_pads", pads)], name)


def convert(data: bytes) -> bytes:
    """The dlib model file's bytes → the ONNX model's bytes, ending with its integrity entry."""
    model = build_onnx(*parse(data))
    body = model.SerializeToString()
    return body + _integrity_entry(hashlib.sha256(body).hexdigest())


def _integrity_entry(digest: str) -> bytes:
    """A serialized ModelProto holding only one metadata_props entry (field 14), {key: value}. Appended to a
    serialized model, protobuf merges it in (repeated fields are concatenated), so the file stays a valid
    ONNX model. Encoded here rather than with onnx's classes so that loading a cached model does not
    import onnx (~0.6 s); a test checks that the bytes are what onnx writes."""

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field (wire type 2)
        assert len(payload) < 128  # (a one-byte length)
        return bytes([number << 3 | 2, len(payload)]) + payload

    return field(14, field(1, _INTEGRITY_KEY.encode()) + field(2, digest.encode()))


def _intact(blob: bytes) -> bool:
    """Whether the cached file is exactly what ``convert`` wrote (its trailing digest matches its body)."""
    size = len(_integrity_entry("0" * 64))
    if len(blob) <= size:
        return False
    body, entry = blob[:-size], blob[-size:]
    return entry == _integrity_entry(hashlib.sha256(body).hexdigest())


# ------------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------------


def default_source() -> Path:
    """The model file in the face-recognition-models wheel (found without importing the package, which
    needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ModelFileError("the face-recognition-models package is not installed")
    return Path(spec.origin).parent / "models" / SOURCE_NAME


def _read_and_hash(path: Path) -> tuple[bytes, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read the face descriptor model {path}: {exc}") from None
    return data, hashlib.sha256(data).hexdigest()


class OnnxDescriptor:
    """dlib's face descriptors (``face_recognition_model_v1``), computed by onnxruntime.

    ``cache_dir`` holds the converted model (created if missing). ``converted`` says whether this instance
    converted the model (False: it was loaded from the cache). ``embed_chips`` may be called from several
    threads at once (an onnxruntime session is thread-safe).
    """

    def __init__(self, cache_dir: Path, *, source: Path | None = None, threads: int = 1) -> None:
        import onnxruntime

        source = source or default_source()
        data, digest = _read_and_hash(source)
        if digest != SOURCE_SHA256:
            raise ModelFileError(
                f"{source} has SHA-256 {digest}, not {SOURCE_SHA256} (the {SOURCE_NAME} that "
                "face-recognition-models 0.3.0 ships): the file is damaged or another model; reinstall "
                "face-recognition-models"
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.path = cache_dir / f"dlib_face_recognition_resnet_model_v1-{digest}-c{CONVERTER_VERSION}.onnx"
        model = None
        with contextlib.suppress(OSError):
            model = self.path.read_bytes()
        self.converted = model is None or not _intact(model)
        if self.converted:
            model = convert(data)
            atomic_file.write_bytes(self.path, model)
        assert model is not None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def embed_chips(self, chips: numpy.ndarray) -> numpy.ndarray:
        """Face chips (N×150×150×3 uint8 RGB, as ``chips`` makes them) → descriptors (N×128 float32)."""
        chips = numpy.ascontiguousarray(chips, dtype=numpy.uint8)
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(
                f"chips must be N×{CHIP_SIZE}×{CHIP_SIZE}×3, not {'×'.join(map(str, chips.shape))}"
            )
        if len(chips) == 0:
            return numpy.zeros((0, DESCRIPTOR_SIZE), numpy.float32)
        (descriptors,) = self._session.run(["descriptors"], {"chips": chips})
        return descriptors

    def embed(self, image: numpy.ndarray, shapes: Any) -> numpy.ndarray:
        """An RGB image and its faces' 5-point (or 68-point) dlib shapes → descriptors (N×128 float32)."""
        return self.embed_chips(chips(image, shapes))


def chips(image: numpy.ndarray, shapes: Any) -> numpy.ndarray:
    """The aligned face chips dlib's ``compute_face_descriptor`` feeds its network: N×150×150×3 uint8.

    ``shapes``: ``dlib.full_object_detection``s (a ``dlib.full_object_detections`` or a list).
    """
    import dlib

    if len(shapes) == 0:
        return numpy.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), numpy.uint8)
    # dlib reads rows as if packed (see faces.DlibEngine.detect).
    image = numpy.ascontiguousarray(image, dtype=numpy.uint8)
    return numpy.stack(dlib.get_face_chips(image, shapes, size=CHIP_SIZE, padding=CHIP_PADDING))
