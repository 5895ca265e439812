"""Stream processors read Kinesis Video the way Rekognition does (GetDataEndpoint + GetMedia): a producer
pushes a video with a face into a stream with PutMedia, a face search processor on that stream finds the
indexed face, and its records point at real fragments, whose frames can be fetched again."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy
import pytest
from PIL import Image

from tests.conftest import (
    RunningServer,
    _fresh_database,
    aws_env,
    start_server,
    stop_server,
    unique,
    wait_until,
)
from tests.engines.video_files import portrait_frames
from tests.kvs_producer import LiveCamera, encode_mkv, put_media
from tests.services.rekognition import label_model
from tests.services.rekognition.aws_peers import moto
from tests.services.rekognition.test_stream_processors import (
    Records,
    data_stream,
    home_processor,
    outputs,
    processor,
    status,
)

pytestmark = pytest.mark.storage
DATA = Path(__file__).parent.parent.parent / "data"


@pytest.fixture(scope="module")
def kvs_server(tmp_path_factory, moto_endpoint) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("kvs-input")
    url, drop = _fresh_database(tmp)
    server = start_server(tmp, url, env=aws_env(moto_endpoint, tmp))
    label_model.install(server.data_dir / "models")  # red blocks are PERSON (connected home tests)
    yield server
    stop_server(server)
    drop()


def test_a_face_search_processor_finds_the_face_pushed_with_put_media(kvs_server, moto_endpoint):
    rek, kvs = kvs_server.client("rekognition"), kvs_server.client("kinesisvideo")
    archive = kvs_server.client("kinesis-video-archived-media")
    kinesis = moto("kinesis", moto_endpoint)
    collection, stream = unique("staff"), unique("door")
    rek.create_collection(CollectionId=collection)
    hopper = {"Bytes": (DATA / "grace_hopper.jpg").read_bytes()}
    face_id = rek.index_faces(CollectionId=collection, Image=hopper, ExternalImageId="grace")["FaceRecords"][
        0
    ]["Face"]["FaceId"]
    kvs.create_stream(StreamName=stream, DataRetentionInHours=1)
    output = data_stream(kinesis)
    name = processor(rek, stream, output, collection)
    rek.start_stream_processor(Name=name)
    wait_until(lambda: status(rek, name) == "RUNNING", timeout=60, what="RUNNING")
    records = Records(kinesis, output)

    video = encode_mkv(portrait_frames(80, size=(640, 480)), fps=10, size=(640, 480), fragment_seconds=1)
    with LiveCamera(kvs_server.url, stream, video) as camera:
        wait_until(lambda: any(r["FaceSearchResponse"] for r in records.read()), timeout=60, what="a face")
        started = time.monotonic()
        rek.stop_stream_processor(Name=name)
        wait_until(lambda: status(rek, name) == "STOPPED", timeout=5, interval=0.01, what="STOPPED")
        assert time.monotonic() - started < 5.0  # bench/stream.py measures the real figure
    del camera

    matched = [r for r in records.read() if r["FaceSearchResponse"]]
    [found] = matched[0]["FaceSearchResponse"]
    [match] = found["MatchedFaces"]
    assert match["Face"]["FaceId"] == face_id and match["Face"]["ExternalImageId"] == "grace"

    # Every record names a real fragment of the stream, with its own timestamps.
    listed = archive.list_fragments(StreamName=stream)["Fragments"]
    by_number = {f["FragmentNumber"]: f for f in listed}
    for record in records.items:
        video_info = record[1]["InputInformation"]["KinesisVideo"]
        fragment = by_number[video_info["FragmentNumber"]]
        assert video_info["ProducerTimestamp"] == pytest.approx(
            fragment["ProducerTimestamp"].timestamp(), abs=2e-3
        )
        assert video_info["ServerTimestamp"] == pytest.approx(
            fragment["ServerTimestamp"].timestamp(), abs=2e-3
        )
        assert 0 <= video_info["FrameOffsetInSeconds"] < fragment["FragmentLengthInMilliseconds"] / 1000

    # The matched frame can be fetched again: GetImages at its producer time shows the face.
    at = matched[0]["InputInformation"]["KinesisVideo"]
    when = datetime.fromtimestamp(at["ProducerTimestamp"] + at["FrameOffsetInSeconds"], tz=UTC)
    images = archive.get_images(
        StreamName=stream, ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=when, EndTimestamp=when,
        SamplingInterval=200, Format="JPEG",
    )["Images"]  # fmt: skip
    image = base64.b64decode(images[0]["ImageContent"])
    faces = rek.detect_faces(Image={"Bytes": image})["FaceDetails"]
    assert len(faces) == 1
    assert numpy.asarray(Image.open(io.BytesIO(image))).shape == (480, 640, 3)


def test_a_processor_fails_when_its_stream_is_missing_deleted_or_not_h264(kvs_server, moto_endpoint):
    rek, kvs = kvs_server.client("rekognition"), kvs_server.client("kinesisvideo")
    kinesis = moto("kinesis", moto_endpoint)
    collection = unique("staff")
    rek.create_collection(CollectionId=collection)

    def failed_with(name: str) -> str:
        wait_until(lambda: status(rek, name) == "FAILED", timeout=30, what=f"{name} FAILED")
        return str(rek.describe_stream_processor(Name=name)["StatusMessage"])

    nowhere = unique("nowhere")
    missing = processor(rek, nowhere, data_stream(kinesis), collection)
    rek.start_stream_processor(Name=missing)
    assert failed_with(missing) == f"Stream {nowhere} under account 000000000000 not found"

    deleted = unique("gone")
    arn = kvs.create_stream(StreamName=deleted, DataRetentionInHours=1)["StreamARN"]
    name = processor(rek, deleted, data_stream(kinesis), collection)
    rek.start_stream_processor(Name=name)
    wait_until(lambda: status(rek, name) == "RUNNING", timeout=60, what="RUNNING")
    kvs.delete_stream(StreamARN=arn)
    assert failed_with(name) == f"Stream {deleted} under account 000000000000 not found"

    mpeg4 = unique("old-camera")
    kvs.create_stream(StreamName=mpeg4, DataRetentionInHours=1)
    name = processor(rek, mpeg4, data_stream(kinesis), collection)
    rek.start_stream_processor(Name=name)
    wait_until(lambda: status(rek, name) == "RUNNING", timeout=60, what="RUNNING")
    with LiveCamera(kvs_server.url, mpeg4, mpeg4_mkv()):
        assert "not H.264" in failed_with(name)


def test_connected_home_starts_at_a_position_in_the_archive(kvs_server, moto_endpoint):
    """Video pushed before the session exists: an empty porch for 2 s, then a person for 2 s. A session
    whose StartSelector is a producer time (or a fragment) in the past reads it from the archive."""
    rek, kvs = kvs_server.client("rekognition"), kvs_server.client("kinesisvideo")
    archive = kvs_server.client("kinesis-video-archived-media")
    stream = unique("porch")
    kvs.create_stream(StreamName=stream, DataRetentionInHours=1)
    empty = label_model.frame_with((128, 128, 128), (0, 0, 1, 1))
    person = label_model.frame_with((255, 0, 0), (128, 96, 256, 192))
    start = time.time() - 60  # a minute ago
    video = encode_mkv([empty] * 20 + [person] * 20, fps=10, size=(640, 480), fragment_seconds=1)
    status_code, _ = put_media(kvs_server.url, video, stream_name=stream, start_timestamp=start)
    assert status_code == 200
    fragments = sorted(
        archive.list_fragments(StreamName=stream)["Fragments"], key=lambda f: f["FragmentNumber"]
    )
    assert len(fragments) == 4

    inbox, _s3, bucket = outputs(moto_endpoint)
    selectors = {
        "ProducerTimestamp": int((start + 2.0) * 1000),  # the first person frame, in milliseconds
        "FragmentNumber": fragments[2]["FragmentNumber"],
    }
    for key, value in selectors.items():
        name = home_processor(rek, stream, inbox.topic, bucket)
        rek.start_stream_processor(
            Name=name,
            StartSelector={"KVSStreamStartSelector": {key: value}},
            StopSelector={"MaxDurationInSeconds": 2},
        )
        wait_until(lambda name=name: status(rek, name) == "STOPPED", timeout=60, what=f"{key}: STOPPED")
        detected = [m for m in inbox.of(name) if m["eventNamespace"]["type"] == "LABEL_DETECTED"]
        assert detected, f"{key}: no person found in the archive"
        mapping = detected[0]["labels"][0]["videoMapping"]["kinesisVideoMapping"]
        assert mapping["fragmentNumber"] == fragments[2]["FragmentNumber"]
        assert abs(mapping["producerTimestamp"] - fragments[2]["ProducerTimestamp"].timestamp() * 1000) <= 1
        assert mapping["frameOffsetMillis"] == 0
        rek.delete_stream_processor(Name=name)  # one processor per Kinesis Video stream


def mpeg4_mkv() -> bytes:
    """3 s of MPEG-4 Part 2 video in live Matroska (a codec Rekognition does not read)."""
    sink = io.BytesIO()
    with av.open(sink, mode="w", format="matroska", options={"live": "1", "dash": "1"}) as container:
        stream = container.add_stream("mpeg4", rate=10, options={"g": "10"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(numpy.full((240, 320, 3), i * 8, numpy.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return sink.getvalue()
