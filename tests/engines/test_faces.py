"""The face engine on real photos: detection, descriptors, and the similarity scale AWS clients expect."""

from __future__ import annotations

import io
from pathlib import Path

import numpy
import pytest
from PIL import Image

from mlharbor.engines.faces import (
    MODEL_VERSION,
    DlibEngine,
    FaceEngine,
    ImageError,
    decode_image,
    similarity,
)

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module", params=["default", "dlib"])
def engine(request, tmp_path_factory) -> FaceEngine:
    """The default engine (RetinaFace, descriptors on onnxruntime) and dlib alone (the fallback)."""
    if request.param == "dlib":
        return DlibEngine()
    engine = FaceEngine(cache_dir=tmp_path_factory.mktemp("models"))
    assert engine.detector == "retinaface"
    return engine


def photo(name: str) -> numpy.ndarray:
    return decode_image((DATA / name).read_bytes())


def descriptor(engine: FaceEngine, image: numpy.ndarray, thorough: bool = False) -> numpy.ndarray:
    [face] = engine.embed(image, engine.detect(image, thorough)[:1])
    assert face.descriptor is not None and face.descriptor.shape == (128,)
    return face.descriptor


def jpeg(image: numpy.ndarray, quality: int) -> numpy.ndarray:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=quality)
    return decode_image(out.getvalue())


def test_finds_the_face_in_each_portrait_most_confidently(engine):
    for name in ("astronaut.jpg", "grace_hopper.jpg"):
        image = photo(name)
        face, *others = engine.detect(image)
        # HOG also fires, barely, on a patch of the astronaut's suit: ranked below the face, near 90.
        assert all(other.confidence < 95 < face.confidence for other in others)
        height, width = image.shape[:2]
        assert 0 <= face.box.left < face.box.right <= width and 0 <= face.box.top < face.box.bottom <= height
        assert face.box.width > 50 and face.confidence > 95
        assert len(face.landmarks) == 5
        # The landmarks (eyes, nose) lie inside the face box.
        assert all(
            face.box.left <= x <= face.box.right and face.box.top <= y <= face.box.bottom
            for x, y in face.landmarks
        )


def test_no_face_in_a_plain_image(engine):
    assert engine.detect(numpy.full((240, 320, 3), 127, dtype=numpy.uint8)) == []
    assert engine.embed(numpy.zeros((10, 10, 3), dtype=numpy.uint8), []) == []


def test_same_person_matches_above_80_and_a_stranger_below(engine):
    astronaut = photo("astronaut.jpg")
    reference = descriptor(engine, astronaut)
    mirrored = astronaut[:, ::-1].copy()
    small = numpy.asarray(Image.fromarray(astronaut).resize((256, 256)))
    variants = [
        descriptor(engine, mirrored),
        descriptor(engine, small, thorough=True),
        descriptor(engine, jpeg(astronaut, 30)),
    ]
    same = similarity(numpy.linalg.norm(numpy.stack(variants) - reference, axis=1))
    assert (same > 80).all(), same
    stranger = similarity(numpy.linalg.norm(descriptor(engine, photo("grace_hopper.jpg")) - reference))
    assert stranger < 80


def test_similarity_scale():
    assert similarity(numpy.array([0.0, 0.6, 3.0, 10.0])).tolist() == [100.0, 80.0, 0.0, 0.0]
    assert MODEL_VERSION


def test_only_jpeg_and_png_are_images():
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "GIF")
    for data in (b"not an image", out.getvalue(), (DATA / "astronaut.jpg").read_bytes()[:500]):
        with pytest.raises(ImageError):
            decode_image(data)
    out = io.BytesIO()
    Image.new("L", (8, 8)).save(out, "PNG")
    assert decode_image(out.getvalue()).shape == (8, 8, 3)  # grey PNG becomes RGB
