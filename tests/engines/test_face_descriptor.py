"""dlib's face descriptor network converted to ONNX: the same descriptors as dlib, the cache, the hash pin."""

from __future__ import annotations

import shutil
from pathlib import Path

import dlib
import numpy
import pytest
from PIL import Image

from mlharbor.engines import face_descriptor
from mlharbor.engines.face_descriptor import ModelFileError, OnnxDescriptor, chips
from mlharbor.engines.faces import DlibEngine, Face, decode_image

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def dlib_engine() -> DlibEngine:
    return DlibEngine()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("face-descriptor-cache")


@pytest.fixture(scope="module")
def onnx_engine(cache: Path) -> OnnxDescriptor:
    engine = OnnxDescriptor(cache)
    assert engine.converted
    return engine


def photo(name: str) -> numpy.ndarray:
    return decode_image((DATA / name).read_bytes())


def variants() -> dict[str, numpy.ndarray]:
    """The two portraits as they are, mirrored, and rescaled up and down (other chips, other numbers)."""
    images = {}
    for name in ("astronaut.jpg", "grace_hopper.jpg"):
        image = photo(name)
        height, width = image.shape[:2]
        images[name] = image
        images[f"{name} mirrored"] = image[:, ::-1]  # (not contiguous: chips() copes)
        for scale in (0.6, 1.5):
            size = (round(width * scale), round(height * scale))
            images[f"{name} ×{scale}"] = numpy.asarray(
                Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
            )
    return images


def shapes(faces: list[Face]) -> dlib.full_object_detections:
    """dlib's shapes back from the faces' landmarks (dlib's landmarks are whole pixels, so this is exact)."""
    out = dlib.full_object_detections()
    for face in faces:
        b = face.box
        points = dlib.points([dlib.point(round(x), round(y)) for x, y in face.landmarks])
        out.append(
            dlib.full_object_detection(dlib.rectangle(b.left, b.top, b.right - 1, b.bottom - 1), points)
        )
    return out


def test_descriptors_are_dlibs(dlib_engine: DlibEngine, onnx_engine: OnnxDescriptor) -> None:
    expected, batch = [], []
    for name, image in variants().items():
        faces = dlib_engine.detect(image)[:1]  # the most confident: the face
        assert faces, name
        [face] = dlib_engine.embed(image, faces)
        assert face.descriptor is not None
        expected.append(face.descriptor)
        [chip] = chips(image, shapes(faces))
        assert chip.shape == (150, 150, 3) and chip.dtype == numpy.uint8
        batch.append(chip)
        # One at a time and in a batch: the same numbers.
        [alone] = onnx_engine.embed(image, shapes(faces))
        assert numpy.abs(alone - face.descriptor).max() < 1e-5, name
    got = onnx_engine.embed_chips(numpy.stack(batch))
    want = numpy.stack(expected)
    assert got.shape == (len(batch), 128) and got.dtype == numpy.float32
    cosine = (got * want).sum(1) / numpy.linalg.norm(got, axis=1) / numpy.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999
    assert numpy.linalg.norm(got - want, axis=1).max() < 1e-3
    # In fact the differences are float rounding: ~3e-7 on components of ~0.1.
    assert numpy.abs(got - want).max() < 1e-5
    # Different people stay apart (dlib's same-person distance is 0.6).
    assert numpy.linalg.norm(got[0] - got[len(got) // 2]) > 0.6


def test_no_faces(onnx_engine: OnnxDescriptor) -> None:
    image = numpy.zeros((60, 80, 3), numpy.uint8)
    assert chips(image, dlib.full_object_detections()).shape == (0, 150, 150, 3)
    assert onnx_engine.embed(image, []).shape == (0, 128)
    with pytest.raises(ValueError, match="150"):
        onnx_engine.embed_chips(numpy.zeros((1, 100, 100, 3), numpy.uint8))


def test_the_cache_is_reused(cache: Path, onnx_engine: OnnxDescriptor) -> None:
    [path] = cache.glob("*.onnx")
    assert path == onnx_engine.path and face_descriptor.SOURCE_SHA256 in path.name
    written = path.stat().st_mtime_ns
    again = OnnxDescriptor(cache)
    assert not again.converted and path.stat().st_mtime_ns == written
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind
    chip = numpy.random.default_rng(0).integers(0, 256, (2, 150, 150, 3), dtype=numpy.uint8)
    assert (again.embed_chips(chip) == onnx_engine.embed_chips(chip)).all()


@pytest.mark.parametrize("damage", ["flip a weight bit", "truncate", "empty"])
def test_a_damaged_cache_is_rebuilt(tmp_path: Path, onnx_engine: OnnxDescriptor, damage: str) -> None:
    good = onnx_engine.path.read_bytes()
    path = tmp_path / onnx_engine.path.name
    if damage == "flip a weight bit":
        # Still a loadable ONNX model, with a wrong weight: only the hash tells.
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0x10
        path.write_bytes(bytes(bad))
    elif damage == "truncate":
        path.write_bytes(good[: len(good) // 3])
    else:
        path.write_bytes(b"")
    engine = OnnxDescriptor(tmp_path)
    assert engine.converted and path.read_bytes() == good


def test_the_cached_file_is_a_plain_onnx_model_with_its_digest(onnx_engine: OnnxDescriptor) -> None:
    import hashlib

    import onnx

    blob = onnx_engine.path.read_bytes()
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model)
    [digest] = [p.value for p in model.metadata_props if p.key == "mlharbor.sha256"]
    entry = face_descriptor._integrity_entry(digest)
    assert blob.endswith(entry) and hashlib.sha256(blob[: -len(entry)]).hexdigest() == digest
    # The hand-made entry is what onnx would write.
    assert entry == onnx.ModelProto(metadata_props=[model.metadata_props[0]]).SerializeToString()


def test_a_different_model_file_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    shutil.copyfile(face_descriptor.default_source(), source)
    with source.open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ModelFileError, match="SHA-256 .* not 55533b28.*reinstall face-recognition-models"):
        OnnxDescriptor(tmp_path / "cache", source=source)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    with pytest.raises(ModelFileError, match="cannot read"):
        OnnxDescriptor(tmp_path / "cache", source=tmp_path / "missing.dat")


def test_the_parser_checks_what_it_reads() -> None:
    data = face_descriptor.default_source().read_bytes()
    means, layers = face_descriptor.parse(data)
    assert means == pytest.approx({"red": 122.782, "green": 117.001, "blue": 104.298})
    assert sum(layer.kind == "con" for layer in layers) == 29
    with pytest.raises(ModelFileError, match="ends too soon"):
        face_descriptor.parse(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="left after"):
        face_descriptor.parse(data + b"\0")
