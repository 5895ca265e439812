"""Face collections through the API with real photos: index, search, list, delete, errors, restart."""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import time
from pathlib import Path

import numpy
import pytest
from botocore.exceptions import ClientError
from PIL import Image, ImageFilter, ImageOps

from tests.conftest import REGION, start_server, stop_server, unique

pytestmark = pytest.mark.storage
DATA = Path(__file__).parent.parent.parent / "data"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def photo(name: str) -> Image.Image:
    return Image.open(DATA / name).convert("RGB")


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


HOPPER = encoded(photo("grace_hopper.jpg"))
ASTRONAUT = encoded(photo("astronaut.jpg"))
# The same person, changed the ways a second photo differs: mirrored, smaller, heavily recompressed.
HOPPER_VARIANTS = {
    "mirrored": encoded(ImageOps.mirror(photo("grace_hopper.jpg"))),
    "rescaled": encoded(photo("grace_hopper.jpg").resize((300, 352)), "PNG"),
    "jpeg-q25": encoded(photo("grace_hopper.jpg"), quality=25),
}
NO_FACE = encoded(Image.fromarray(numpy.tile(numpy.arange(256, dtype=numpy.uint8), (200, 1))), "PNG")


def error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = excinfo.value.response["Error"]
    return err["Code"], err["Message"]


@pytest.fixture
def collection(rekognition):  # type: ignore[no-untyped-def]
    collection_id = unique("faces")
    rekognition.create_collection(CollectionId=collection_id)
    yield collection_id
    rekognition.delete_collection(CollectionId=collection_id)


def index(rekognition, collection_id: str, image: bytes, **params):  # type: ignore[no-untyped-def]
    return rekognition.index_faces(CollectionId=collection_id, Image={"Bytes": image}, **params)


def test_collection_lifecycle_describe_list_tags_and_delete(rekognition):
    first, second = unique("a"), unique("b")
    created = rekognition.create_collection(CollectionId=first, Tags={"team": "door"})
    assert created["StatusCode"] == 200
    assert created["CollectionArn"] == f"arn:aws:rekognition:{REGION}:000000000000:collection/{first}"
    with pytest.raises(ClientError) as excinfo:
        rekognition.create_collection(CollectionId=first)
    assert error(excinfo) == ("ResourceAlreadyExistsException", f"The collection id: {first} already exists")
    rekognition.create_collection(CollectionId=second)

    described = rekognition.describe_collection(CollectionId=first)
    assert described["FaceCount"] == 0 and described["UserCount"] == 0
    assert described["CollectionARN"] == created["CollectionArn"]
    assert described["FaceModelVersion"] == created["FaceModelVersion"]
    assert abs(described["CreationTimestamp"].timestamp() - time.time()) < 60

    pages = list(rekognition.get_paginator("list_collections").paginate(PaginationConfig={"PageSize": 1}))
    assert all(len(page["CollectionIds"]) <= 1 for page in pages)
    listed = [cid for page in pages for cid in page["CollectionIds"]]
    assert listed == sorted(listed) and {first, second} <= set(listed)

    arn = created["CollectionArn"]
    rekognition.tag_resource(ResourceArn=arn, Tags={"env": "test"})
    assert rekognition.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"team": "door", "env": "test"}

    assert rekognition.delete_collection(CollectionId=first)["StatusCode"] == 200
    for call in (rekognition.describe_collection, rekognition.delete_collection):
        with pytest.raises(ClientError) as excinfo:
            call(CollectionId=first)
        assert error(excinfo)[0] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        rekognition.list_tags_for_resource(ResourceArn=arn)
    assert error(excinfo)[0] == "ResourceNotFoundException"
    rekognition.delete_collection(CollectionId=second)


def test_index_then_search_finds_the_same_person_and_not_a_stranger(rekognition, collection):
    indexed = index(rekognition, collection, HOPPER, ExternalImageId="grace.hopper:1906")
    [record] = indexed["FaceRecords"]
    face = record["Face"]
    assert UUID.match(face["FaceId"]) and UUID.match(face["ImageId"])
    assert face["ExternalImageId"] == "grace.hopper:1906" and face["Confidence"] > 95
    assert indexed["UnindexedFaces"] == []
    box = face["BoundingBox"]
    assert 0.2 < box["Left"] < 0.4 and 0.15 < box["Top"] < 0.3 and 0.3 < box["Width"] < 0.5

    for variant, image in HOPPER_VARIANTS.items():
        found = rekognition.search_faces_by_image(CollectionId=collection, Image={"Bytes": image})
        assert [m["Face"]["FaceId"] for m in found["FaceMatches"]] == [face["FaceId"]], variant
        assert found["FaceMatches"][0]["Similarity"] > 85, variant
        assert found["SearchedFaceConfidence"] > 95

    stranger = rekognition.search_faces_by_image(CollectionId=collection, Image={"Bytes": ASTRONAUT})
    assert stranger["FaceMatches"] == []
    # With a bar low enough, the stranger is returned, and scored below AWS's default threshold.
    low = rekognition.search_faces_by_image(
        CollectionId=collection, Image={"Bytes": ASTRONAUT}, FaceMatchThreshold=0
    )
    assert [m["Face"]["FaceId"] for m in low["FaceMatches"]] == [face["FaceId"]]
    assert low["FaceMatches"][0]["Similarity"] < 80
    # The searched face is the astronaut's (the largest).
    assert low["SearchedFaceBoundingBox"]["Top"] < 0.3


def two_faces() -> bytes:
    """Grace Hopper, and beside her the astronaut's portrait small and blurred (a face found, too blurred
    for AUTO's bar)."""
    hopper, astronaut = photo("grace_hopper.jpg"), photo("astronaut.jpg")
    canvas = Image.new("RGB", (hopper.width + 300, hopper.height), (120, 120, 120))
    canvas.paste(hopper, (0, 0))
    canvas.paste(astronaut.resize((300, 300)).filter(ImageFilter.GaussianBlur(2)), (hopper.width, 100))
    return encoded(canvas)


def test_quality_filter_and_max_faces_decide_what_is_indexed(rekognition, collection):
    # AUTO keeps only the sharp face.
    auto = index(rekognition, collection, two_faces())
    assert len(auto["FaceRecords"]) == 1
    [unindexed] = auto["UnindexedFaces"]
    assert unindexed["Reasons"] == ["LOW_SHARPNESS"]
    assert unindexed["FaceDetail"]["Quality"]["Sharpness"] < 10
    assert unindexed["FaceDetail"]["BoundingBox"]["Left"] > 0.6  # the blurred face, on the right

    everything = index(rekognition, collection, two_faces(), QualityFilter="NONE")
    assert len(everything["FaceRecords"]) == 2 and everything["UnindexedFaces"] == []
    areas = [
        r["Face"]["BoundingBox"]["Width"] * r["Face"]["BoundingBox"]["Height"]
        for r in everything["FaceRecords"]
    ]
    assert areas == sorted(areas, reverse=True)  # largest first

    capped = index(rekognition, collection, two_faces(), QualityFilter="NONE", MaxFaces=1)
    assert len(capped["FaceRecords"]) == 1
    assert [u["Reasons"] for u in capped["UnindexedFaces"]] == [["EXCEEDS_MAX_FACES"]]
    assert capped["FaceRecords"][0]["Face"]["Confidence"] > 95  # the better face is kept

    dark = encoded(Image.fromarray((numpy.asarray(photo("grace_hopper.jpg")) * 0.12).astype(numpy.uint8)))
    high = index(rekognition, collection, dark, QualityFilter="HIGH")
    assert high["FaceRecords"] == [] and "LOW_BRIGHTNESS" in high["UnindexedFaces"][0]["Reasons"]
    assert rekognition.describe_collection(CollectionId=collection)["FaceCount"] == 4


def test_search_faces_by_id_list_faces_and_delete_faces(rekognition, collection):
    original = index(rekognition, collection, HOPPER)["FaceRecords"][0]["Face"]["FaceId"]
    mirrored = index(rekognition, collection, HOPPER_VARIANTS["mirrored"])["FaceRecords"][0]["Face"]["FaceId"]
    stranger = index(rekognition, collection, ASTRONAUT)["FaceRecords"][0]["Face"]["FaceId"]

    found = rekognition.search_faces(CollectionId=collection, FaceId=original)
    assert found["SearchedFaceId"] == original
    assert [m["Face"]["FaceId"] for m in found["FaceMatches"]] == [mirrored]  # never the face itself

    pages = list(
        rekognition.get_paginator("list_faces").paginate(
            CollectionId=collection, PaginationConfig={"PageSize": 2}
        )
    )
    assert [len(page["Faces"]) for page in pages] == [2, 1]
    listed = [f["FaceId"] for page in pages for f in page["Faces"]]
    assert sorted(listed) == sorted([original, mirrored, stranger])
    only = rekognition.list_faces(CollectionId=collection, FaceIds=[stranger])["Faces"]
    assert [f["FaceId"] for f in only] == [stranger]

    missing = "00000000-0000-4000-8000-000000000000"
    deleted = rekognition.delete_faces(CollectionId=collection, FaceIds=[mirrored, missing])
    assert deleted["DeletedFaces"] == [mirrored]
    assert deleted["UnsuccessfulFaceDeletions"] == [{"FaceId": missing, "Reasons": ["FACE_NOT_FOUND"]}]
    assert rekognition.describe_collection(CollectionId=collection)["FaceCount"] == 2
    assert rekognition.search_faces(CollectionId=collection, FaceId=original)["FaceMatches"] == []
    again = rekognition.search_faces_by_image(CollectionId=collection, Image={"Bytes": HOPPER})
    assert [m["Face"]["FaceId"] for m in again["FaceMatches"]] == [original]
    with pytest.raises(ClientError) as excinfo:
        rekognition.search_faces(CollectionId=collection, FaceId=mirrored)
    assert error(excinfo)[0] == "InvalidParameterException"


def test_detect_faces_finds_a_50_px_face_in_a_1920x1080_picture(rekognition):
    """AWS's documented smallest face is 40 px in a 1920x1080 picture; dlib's HOG never found one of 50."""
    hopper = photo("grace_hopper.jpg")
    height = round(50 / (216 / 600))  # the face is 216 px wide in the 600 px tall photo
    canvas = Image.new("RGB", (1920, 1080), (128, 128, 128))
    canvas.paste(hopper.resize((round(hopper.width * height / hopper.height), height)), (1400, 300))
    [face] = rekognition.detect_faces(Image={"Bytes": encoded(canvas)})["FaceDetails"]
    box = face["BoundingBox"]
    assert 30 < box["Width"] * 1920 < 60 and 1400 < box["Left"] * 1920 < 1400 + height
    assert face["Confidence"] > 99


def test_detect_faces_reports_only_what_it_measures(rekognition):
    [face] = rekognition.detect_faces(Image={"Bytes": HOPPER})["FaceDetails"]
    assert set(face) == {"BoundingBox", "Confidence", "Landmarks", "Pose", "Quality"}
    # RetinaFace's five landmarks, named as AWS names them.
    types = [lm["Type"] for lm in face["Landmarks"]]
    assert types == ["eyeLeft", "eyeRight", "nose", "mouthLeft", "mouthRight"]
    eye_left, eye_right, nose, mouth_left, mouth_right = face["Landmarks"]
    assert eye_left["X"] < nose["X"] < eye_right["X"] and nose["Y"] > eye_left["Y"]
    assert mouth_left["X"] < nose["X"] < mouth_right["X"] and mouth_left["Y"] > nose["Y"]
    b = face["BoundingBox"]
    assert all(
        b["Left"] < lm["X"] < b["Left"] + b["Width"] and b["Top"] < lm["Y"] < b["Top"] + b["Height"]
        for lm in face["Landmarks"]
    )
    assert all(abs(face["Pose"][axis]) < 20 for axis in ("Roll", "Yaw", "Pitch"))  # a frontal portrait
    assert 30 < face["Quality"]["Brightness"] < 80 and face["Quality"]["Sharpness"] > 80

    tilted = encoded(photo("grace_hopper.jpg").rotate(20, expand=False))
    [turned] = rekognition.detect_faces(Image={"Bytes": tilted})["FaceDetails"]
    assert turned["Pose"]["Roll"] < face["Pose"]["Roll"] - 12  # counter-clockwise turn: roll decreases

    # ALL cannot add attributes we do not compute (age, emotions...): they are omitted, never invented.
    [everything] = rekognition.detect_faces(Image={"Bytes": HOPPER}, Attributes=["ALL"])["FaceDetails"]
    assert set(everything) == set(face)
    [minimal] = rekognition.detect_faces(Image={"Bytes": HOPPER}, Attributes=["EMOTIONS"])["FaceDetails"]
    assert set(minimal) == {"BoundingBox", "Confidence"}
    assert rekognition.detect_faces(Image={"Bytes": NO_FACE})["FaceDetails"] == []


def test_bad_images_get_the_aws_errors_and_change_nothing(rekognition, collection, server):
    cases = {
        "no face": (
            NO_FACE,
            "InvalidParameterException",
            "There are no faces in the image. Should be at least 1.",
        ),
        "corrupt": (HOPPER[:2000], "InvalidImageFormatException", "Request has invalid image format."),
        "gif": (encoded(photo("grace_hopper.jpg"), "GIF"), "InvalidImageFormatException", None),
        "too small": (encoded(photo("grace_hopper.jpg").resize((60, 70))), "InvalidParameterException", None),
        "too many pixels": (
            encoded(Image.new("RGB", (8000, 6000)), "PNG"),
            "ImageTooLargeException",
            "Image size is too large.",
        ),
        "over 5 MB": (b"\xff\xd8" + b"\0" * (5 * 1024 * 1024), "ImageTooLargeException", None),
    }
    for case, (image, code, message) in cases.items():
        with pytest.raises(ClientError) as excinfo:
            rekognition.search_faces_by_image(CollectionId=collection, Image={"Bytes": image})
        assert error(excinfo)[0] == code, case
        assert message is None or error(excinfo)[1] == message, case
        if case != "no face":
            with pytest.raises(ClientError) as excinfo:
                index(rekognition, collection, image)
            assert error(excinfo)[0] == code, case

    with pytest.raises(ClientError) as excinfo:
        rekognition.index_faces(
            CollectionId=collection, Image={"S3Object": {"Bucket": "photos", "Name": "missing.jpg"}}
        )
    assert error(excinfo)[0] == "InvalidS3ObjectException"
    with pytest.raises(ClientError) as excinfo:
        index(rekognition, unique("nope"), HOPPER)
    assert error(excinfo)[0] == "ResourceNotFoundException"
    assert rekognition.describe_collection(CollectionId=collection)["FaceCount"] == 0

    # An image in the (local) object store works like bytes.
    stored = server.data_dir / "s3" / "photos" / "people" / "hopper.jpg"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(HOPPER)
    from_s3 = rekognition.index_faces(
        CollectionId=collection, Image={"S3Object": {"Bucket": "photos", "Name": "people/hopper.jpg"}}
    )
    assert len(from_s3["FaceRecords"]) == 1


def test_faces_survive_a_restart_and_leave_with_their_collection(make_server, tmp_path):
    """Also: a collection indexed by the engine before RetinaFace (dlib's HOG detector) keeps matching
    after the server restarts with today's default engine."""
    first = make_server(env={"MLHARBOR_FACE_DETECTOR": "hog"})
    client = first.client("rekognition")
    version = client.create_collection(CollectionId="door")["FaceModelVersion"]
    face_id = index(client, "door", HOPPER)["FaceRecords"][0]["Face"]["FaceId"]
    records = index(client, "door", two_faces(), QualityFilter="NONE")["FaceRecords"]
    pair = [r["Face"]["FaceId"] for r in records]
    replaced = index(client, "door", ASTRONAUT)["FaceRecords"][0]["Face"]["FaceId"]
    # The newest face deleted, then indexed again: a new face, and the deleted one never comes back.
    client.delete_faces(CollectionId="door", FaceIds=[replaced])
    astronaut = index(client, "door", ASTRONAUT)["FaceRecords"][0]["Face"]["FaceId"]
    client.delete_faces(CollectionId="door", FaceIds=pair)
    stop_server(first)

    again = start_server(first.data_dir.parent, first.database_url)
    try:
        client = again.client("rekognition")
        described = client.describe_collection(CollectionId="door")
        assert described["FaceCount"] == 2 and described["FaceModelVersion"] == version
        found = client.search_faces_by_image(
            CollectionId="door", Image={"Bytes": HOPPER_VARIANTS["mirrored"]}
        )
        assert [m["Face"]["FaceId"] for m in found["FaceMatches"]] == [face_id]
        found = client.search_faces_by_image(CollectionId="door", Image={"Bytes": ASTRONAUT})
        assert astronaut in [m["Face"]["FaceId"] for m in found["FaceMatches"]]
        assert replaced not in [m["Face"]["FaceId"] for m in found["FaceMatches"]]

        client.delete_collection(CollectionId="door")
        client.create_collection(CollectionId="door")  # same id, new collection: no old faces
        assert client.list_faces(CollectionId="door")["Faces"] == []
        empty = client.search_faces_by_image(CollectionId="door", Image={"Bytes": HOPPER})
        assert empty["FaceMatches"] == []
    finally:
        stop_server(again)


def test_a_vector_snapshot_plus_the_rows_changed_since_rebuild_the_collection(make_server):
    """Large collections keep an on-disk snapshot of their vectors; after a crash the faces indexed and
    deleted since the snapshot are applied from the database (1 face counts as large here)."""
    first = make_server(env={"MLHARBOR_FACE_SNAPSHOT_MIN_FACES": "1"})
    client = first.client("rekognition")
    client.create_collection(CollectionId="gate")
    hopper = index(client, "gate", HOPPER)["FaceRecords"][0]["Face"]["FaceId"]
    index(client, "gate", ASTRONAUT)
    stop_server(first)  # a clean shutdown writes the snapshot
    snapshots = list((first.data_dir / "face-vectors").glob("*.npz"))
    assert len(snapshots) == 1

    env = {**os.environ, "MLHARBOR_FACE_SNAPSHOT_MIN_FACES": "1"}
    second = start_server(first.data_dir.parent, first.database_url, env=env)
    client = second.client("rekognition")
    client.delete_faces(CollectionId="gate", FaceIds=[hopper])
    mirrored = index(client, "gate", HOPPER_VARIANTS["mirrored"])["FaceRecords"][0]["Face"]["FaceId"]
    second.process.kill()  # a crash: no snapshot of these changes
    second.process.wait()

    third = start_server(first.data_dir.parent, first.database_url, env=env)
    try:
        client = third.client("rekognition")
        # A stale index would rank the deleted face first and, with MaxFaces 1, return nothing.
        found = client.search_faces_by_image(CollectionId="gate", Image={"Bytes": HOPPER}, MaxFaces=1)
        assert [m["Face"]["FaceId"] for m in found["FaceMatches"]] == [mirrored]
        client.delete_collection(CollectionId="gate")
        assert list((first.data_dir / "face-vectors").glob("*.npz")) == []
    finally:
        stop_server(third)


def test_concurrent_indexing_and_searching_lose_no_face(server, collection):
    client = server.client("rekognition", max_pool_connections=8)
    images = [HOPPER, *HOPPER_VARIANTS.values()] * 2

    def work(i: int) -> str | list[str]:
        if i % 3 == 2:  # searches interleaved with the writes
            found = client.search_faces_by_image(CollectionId=collection, Image={"Bytes": HOPPER})
            return [m["Face"]["FaceId"] for m in found["FaceMatches"]]
        return index(client, collection, images[i // 3 * 2 + i % 3])["FaceRecords"][0]["Face"]["FaceId"]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(work, range(12)))
    indexed = [r for r in results if isinstance(r, str)]
    assert len(set(indexed)) == 8
    assert client.describe_collection(CollectionId=collection)["FaceCount"] == 8
    found = client.search_faces_by_image(CollectionId=collection, Image={"Bytes": HOPPER}, MaxFaces=100)
    assert sorted(m["Face"]["FaceId"] for m in found["FaceMatches"]) == sorted(indexed)
