"""Stream processors' results on the embedded default: with no AWS_ENDPOINT_URL_KINESIS / _SNS, a face search
processor writes to MLHarbor's own Kinesis data stream (a consumer reads its records with plain boto3 pointed
at MLHarbor) and a connected home processor notifies MLHarbor's own SNS topic, which delivers to an HTTP
subscriber. No moto anywhere."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import unique, wait_until
from tests.engines.video_files import portrait_frames
from tests.kvs_producer import LiveCamera, encode_mkv
from tests.services.rekognition.test_stream_processors import Records, processor, status
from tests.services.sns.subscriber import Subscriber, verify_signature

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
    with LiveCamera(server.url, camera, video):
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


def test_connected_home_notifies_an_http_subscriber_through_mlharbors_own_sns(server):
    assert not os.environ.get("AWS_ENDPOINT_URL_SNS"), "this test is about the embedded default"
    rek, kvs, sns = server.client("rekognition"), server.client("kinesisvideo"), server.client("sns")
    camera = unique("porch")
    kvs.create_stream(StreamName=camera, DataRetentionInHours=1)
    subscriber = Subscriber()
    try:
        topic = sns.create_topic(Name=unique("doorbell"))["TopicArn"]
        sns.subscribe(TopicArn=topic, Protocol="http", Endpoint=subscriber.url)
        [confirmation] = subscriber.wait_for("SubscriptionConfirmation")
        assert requests.get(confirmation.doc["SubscribeURL"], timeout=10).status_code == 200
        name = unique("home")
        rek.create_stream_processor(
            Name=name,
            Input={
                "KinesisVideoStream": {
                    "Arn": f"arn:aws:kinesisvideo:us-east-1:000000000000:stream/{camera}/1"
                }
            },
            Output={"S3Destination": {"Bucket": unique("frames")}},
            NotificationChannel={"SNSTopicArn": topic},
            Settings={"ConnectedHome": {"Labels": ["PERSON"], "MinConfidence": 80.0}},
            RoleArn="arn:aws:iam::000000000000:role/rekognition",
        )
        rek.start_stream_processor(Name=name, StopSelector={"MaxDurationInSeconds": 3})
        # A face is a person to the built-in detector (a doorbell often sees only the face).
        video = encode_mkv(portrait_frames(60, size=(640, 480)), fps=10, size=(640, 480), fragment_seconds=1)
        with LiveCamera(server.url, camera, video):
            notifications = subscriber.wait_for("Notification", timeout=60)
        doc = notifications[0].doc
        verify_signature(doc)  # signed as AWS signs, with the certificate MLHarbor serves
        assert doc["Subject"] == "Rekognition Stream Processing Event"
        event = json.loads(doc["Message"])
        assert event["eventNamespace"]["type"] == "LABEL_DETECTED"
        assert event["labels"][0]["name"] == "PERSON"
        wait_until(lambda: status(rek, name) == "STOPPED", timeout=60, what="the session to end by itself")
        rek.delete_stream_processor(Name=name)
    finally:
        subscriber.stop()
