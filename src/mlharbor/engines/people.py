"""PERSON's fallback (``person_detector = "hog"``, or the chosen CNN's package not installed: see ``labels``):
two detectors whose weights ship inside wheels.

* OpenCV's HOG people detector (Dalal & Triggs, trained on INRIA pedestrians; ``opencv-python-headless<5``,
  since OpenCV 5 removed it): whole, upright people at least ~110 px tall in the analysed frame.
* dlib's HOG frontal face detector (the face engine's, already installed): a face is a person even when the
  body is out of the picture, as in a doorbell camera's close view. The person's box is extrapolated from
  the face (head and shoulders down: 3 face widths wide, from 0.6 face heights above the face to 7 below,
  clipped to the frame), since AWS reports the person, not the face.

A face inside a pedestrian box is that person: one detection, the more confident of the two. Frames are
analysed at most ``ANALYSIS_SIDE`` px on their longer side (boxes are returned in the caller's pixels).

Confidence: the HOG SVM's margin ``m`` maps to ``100 / (1 + e^(-3 (m - 0.5)))``: 50 (AWS's default
MinConfidence) at margin 0.5, ~82 at 1, ~95 at 1.5; faces use the face engine's mapping (>= 90). Known
limits: people seen from behind or sitting, and small or occluded people, are often missed; vertical
high-contrast structures (posts, door frames) can fire at margins up to ~0.7; SSDLite (``person_cnn``)
finds more than twice as many people with fewer false ones, about 7x faster. A YOLO model in the models
folder that maps PERSON replaces this detector (see ``labels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from mlharbor.engines.labels import Detection

ANALYSIS_SIDE = 640
_WINDOW = (64, 128)  # the people detector's window, width x height
# The detector's window (64x128) includes a margin around the person it was trained on: shrink the box.
_MARGIN_X, _MARGIN_Y = 0.15, 0.05


class PersonDetector:
    labels = frozenset({"PERSON"})

    def __init__(self) -> None:
        import cv2
        import dlib

        cv2.setNumThreads(1)  # one frame at a time; a stream worker is one of many on the machine
        self._cv2 = cv2
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self._faces = dlib.get_frontal_face_detector()

    def detect(
        self, pixels: numpy.ndarray, labels: frozenset[str] | set[str], min_confidence: float = 50.0
    ) -> list[Detection]:
        if "PERSON" not in labels:
            return []
        height, width = pixels.shape[:2]
        scale = min(1.0, ANALYSIS_SIDE / max(height, width))
        small = pixels
        if scale < 1.0:
            size = (round(width * scale), round(height * scale))
            small = self._cv2.resize(pixels, size, interpolation=self._cv2.INTER_AREA)
        # OpenCV's HOG crashes the process on images smaller than its 64x128 window (segfault, abort).
        fits = small.shape[0] >= _WINDOW[1] and small.shape[1] >= _WINDOW[0]
        pedestrians = self._pedestrians(small) if fits else []
        people = pedestrians + [p for p in self._from_faces(small) if not _claimed(p, pedestrians)]
        found = [
            Detection("PERSON", p.confidence, *(v / scale for v in (p.left, p.top, p.width, p.height)))
            for p in people
            if p.confidence >= min_confidence
        ]
        return sorted(found, key=lambda d: -d.confidence)

    def _pedestrians(self, image: numpy.ndarray) -> list[_Person]:
        boxes, margins = self._hog.detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        people = []
        for (x, y, w, h), margin in zip(boxes, numpy.ravel(margins), strict=True):
            confidence = float(100.0 / (1.0 + numpy.exp(-3.0 * (float(margin) - 0.5))))
            people.append(
                _Person(confidence, x + _MARGIN_X * w, y + _MARGIN_Y * h, w * (1 - 2 * _MARGIN_X),
                        h * (1 - 2 * _MARGIN_Y))
            )  # fmt: skip
        return people

    def _from_faces(self, image: numpy.ndarray) -> list[_Person]:
        from mlharbor.engines.faces import detection_confidence

        height, width = image.shape[:2]
        rects, scores, _ = self._faces.run(image, 0, 0.0)
        people = []
        for rect, score in zip(rects, scores, strict=True):
            fw, fh = rect.width(), rect.height()
            left, right = max(0.0, rect.left() - fw), min(float(width), rect.left() + 2.0 * fw)
            top, bottom = max(0.0, rect.top() - 0.6 * fh), min(float(height), rect.top() + 8.0 * fh)
            if right > left and bottom > top:
                face = (rect.left() + fw / 2, rect.top() + fh / 2)
                box = (left, top, right - left, bottom - top)
                people.append(_Person(detection_confidence(score), *box, face=face))
        return people


@dataclass
class _Person:
    confidence: float
    left: float
    top: float
    width: float
    height: float
    face: tuple[float, float] | None = None  # the face's centre, for people found by their face


def _claimed(person: _Person, pedestrians: list[_Person]) -> bool:
    """Whether a face-found person is a pedestrian already found (the face in the upper half of its box);
    the pedestrian then takes the face's confidence when that is higher."""
    assert person.face is not None
    x, y = person.face
    for p in pedestrians:
        if p.left <= x <= p.left + p.width and p.top <= y <= p.top + p.height / 2:
            p.confidence = max(p.confidence, person.confidence)
            return True
    return False
