"""Stream processors' results on the embedded default: with no AWS_ENDPOINT_URL_KINESIS, a face search
processor writes to MLHarbor's own Kinesis data stream, and a consumer reads its records with plain boto3
pointed at MLHarbor (no moto anywhere)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import unique, wait_until
from tests.engines.video_files import portrait_frames
from tests.kvs_producer import encode_mkv
from tests.services.rekognition.test_kvs_input import Camera
from tests.services.rekognition.test_stream_processors import Records, processor, status

pytestmark = pytest.mark.storage
DATA = Path(__file__).parent.parent.parent / "data"


def test_face_search_writes_to_mlharbors_own_kinesis(server):
    assert not os.environ.get("AWS_ENDPOINT_URL_KINESIS"), "this test is about the embedded default"
    rek, kvs, kinesis = server.client("rekognition"), server.client("kinesisvideo"), server.client("kinesis")
    collection, camera, results = unique("staff"), unique("door"), unique("results")
    rek.create_collection(CollectionId=collection)
    hopper = {"Bytes": (DATA / "grace_hopper.jpg").read_bytes()}
    indexed = rek.index_faces(CollectionId=collection, Image=hopper, ExternalImageId="grace")
    face_id = indexed["FaceRecords"][0]["Face"]["FaceId"]
    kvs.create_stream(StreamName=camera, DataRetentionInHours=1)
    kinesis.create_stream(StreamName=results, ShardCount=1)
    output = kinesis.describe_stream_summary(StreamName=results)["StreamDescriptionSummary"]["StreamARN"]
    name = processor(rek, camera, output, collection)
    rek.start_stream_processor(Name=name)
    wait_until(lambda: status(rek, name) == "RUNNING", timeout=60, what="RUNNING")
    records = Records(kinesis, output)

    video = encode_mkv(portrait_frames(80, size=(640, 480)), fps=10, size=(640, 480), fragment_seconds=1)
    with Camera(server, camera, video):
        wait_until(lambda: any(r["FaceSearchResponse"] for r in records.read()), timeout=60, what="a face")
        started = time.monotonic()
        rek.stop_stream_processor(Name=name)
        wait_until(lambda: status(rek, name) == "STOPPED", timeout=5, interval=0.01, what="STOPPED")
        assert time.monotonic() - started < 5.0
    matched = [r for r in records.read() if r["FaceSearchResponse"]]
    [found] = matched[0]["FaceSearchResponse"]
    [match] = found["MatchedFaces"]
    assert match["Face"]["FaceId"] == face_id and match["Face"]["ExternalImageId"] == "grace"
    assert all(key == name for key, _ in records.items)  # the processor's name is the partition key
    rek.delete_stream_processor(Name=name)


def test_a_missing_output_stream_fails_the_session_with_aws_message(server):
    rek, kvs = server.client("rekognition"), server.client("kinesisvideo")
    collection, camera, missing = unique("staff"), unique("door"), unique("absent")
    rek.create_collection(CollectionId=collection)
    kvs.create_stream(StreamName=camera, DataRetentionInHours=1)
    output = f"arn:aws:kinesis:us-east-1:000000000000:stream/{missing}"
    name = processor(rek, camera, output, collection)
    rek.start_stream_processor(Name=name)
    wait_until(lambda: status(rek, name) == "FAILED", timeout=60, what="FAILED")
    described = rek.describe_stream_processor(Name=name)
    assert described["StatusMessage"] == f"Stream {missing} doesn't exist"
    rek.delete_stream_processor(Name=name)
