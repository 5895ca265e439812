"""Face-search sessions describe a face once and reuse its descriptor while it stays in place."""

from __future__ import annotations

from types import SimpleNamespace

import numpy

from mlharbor.engines.faces import Box, Face
from mlharbor.services.rekognition.face_search import Tracks


def frame(*boxes: Box) -> list[SimpleNamespace]:
    return [SimpleNamespace(face=Face(box, 99.0, ())) for box in boxes]


def test_a_face_that_stays_keeps_its_descriptor_until_it_is_refreshed() -> None:
    described: list[int] = []

    def describe(faces: list[Face]) -> list[Face]:
        described.append(len(faces))
        return [Face(f.box, f.confidence, f.landmarks, numpy.full(128, len(described), "f4")) for f in faces]

    tracks = Tracks()
    first = tracks.descriptors(frame(Box(100, 100, 200, 200)), describe)
    moved = tracks.descriptors(frame(Box(110, 105, 210, 205)), describe)  # the same face, slightly moved
    assert described == [1] and moved[0] is first[0]

    # A second face appears far away: only it is described.
    both = tracks.descriptors(frame(Box(112, 104, 212, 204), Box(400, 100, 480, 180)), describe)
    assert described == [1, 1] and both[0] is first[0] and both[1] is not first[0]

    for _ in range(Tracks.REFRESH_FRAMES):  # described afresh once it is REFRESH_FRAMES frames old
        tracks.descriptors(frame(Box(112, 104, 212, 204)), describe)
    assert len(described) == 3

    tracks.descriptors(frame(Box(300, 300, 400, 400)), describe)  # somewhere else: a new face
    assert len(described) == 4
