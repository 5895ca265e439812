"""Connected home label detectors: the built-in person detector on drawn people and a real face, and which
detectors a models folder gives."""

from __future__ import annotations

import numpy
import pytest
from PIL import Image

from mlharbor.engines.labels import LabelModelError, available_labels, detectors
from mlharbor.engines.people import PersonDetector
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
