"""Stream processor pages: the list, a running face search processor's live view (a frame, the face's box
and the matched ExternalImageId), Stop from the page; the live stream needs a session and another account
sees none of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy
import pytest
import requests
from PIL import Image

from tests.conftest import RunningServer, unique, wait_until
from tests.console.conftest import screenshot, sign_in
from tests.deployment import DATA, face_search_processor
from tests.kvs_producer import LiveCamera, encode_mkv
from tests.services.rekognition import label_model

VIDEO_SECONDS = 40  # longer than the test needs: the camera plays it once, in real time


def live_camera(server: RunningServer, stream: str, picture: numpy.ndarray | None = None) -> LiveCamera:
    """A camera pushing a still picture (by default Grace Hopper's portrait) as live video."""
    if picture is None:
        picture = numpy.asarray(Image.open(DATA / "grace_hopper.jpg").convert("RGB"))
    video = encode_mkv(seconds=VIDEO_SECONDS, fps=5, size=(640, 480), image=picture)
    return LiveCamera(server.url, stream, video)


@pytest.fixture
def face_search(console_server: RunningServer) -> Iterator[dict[str, str]]:
    """A running face search processor of account 0 over a camera showing Grace Hopper, whose face is
    indexed in its collection as "grace"."""
    rek = console_server.client("rekognition")
    kvs, kinesis = console_server.client("kinesisvideo"), console_server.client("kinesis")
    collection, camera, output = unique("staff"), unique("door"), unique("results")
    rek.create_collection(CollectionId=collection)
    rek.index_faces(
        CollectionId=collection, Image={"Bytes": (DATA / "grace_hopper.jpg").read_bytes()},
        ExternalImageId="grace",
    )  # fmt: skip
    kvs.create_stream(StreamName=camera, DataRetentionInHours=1)
    kinesis.create_stream(StreamName=output, ShardCount=1)
    output_arn = kinesis.describe_stream_summary(StreamName=output)["StreamDescriptionSummary"]["StreamARN"]
    name = face_search_processor(rek, unique("lobby"), camera, output_arn, collection)
    with live_camera(console_server, camera):
        rek.start_stream_processor(Name=name)
        yield {"name": name, "camera": camera}
        try:
            if rek.describe_stream_processor(Name=name)["Status"] in ("STARTING", "RUNNING"):
                rek.stop_stream_processor(Name=name)
        except rek.exceptions.ResourceNotFoundException:
            pass  # the test deleted it


def test_a_running_face_search_shows_the_matched_face_live_and_stops_from_the_page(
    console: Any, console_server: RunningServer, face_search: dict[str, str]
) -> None:
    name, url = face_search["name"], console_server.url
    rek = console_server.client("rekognition")

    console.goto(f"{url}/console/processors")
    row = console.locator("#processors tr", has_text=name)
    assert face_search["camera"] in row.inner_text() and "face search" in row.inner_text()

    console.goto(f"{url}/console/processors/{name}")
    console.wait_for_function(
        "() => window.mlhLive && window.mlhLive.names.some((n) => n.startsWith('grace '))", timeout=60_000
    )
    frame = console.locator("#live-frame")
    assert frame.evaluate("img => img.complete && img.naturalWidth") == 640
    label = console.locator("#live-boxes text").first.text_content() or ""
    assert label.startswith("grace ") and float(label.split()[1].rstrip("%")) >= 70
    # The face's box lies on the image (one look: the overlay is redrawn with every frame).
    box, shown = console.evaluate(
        """() => [document.querySelector("#live-boxes rect.box"), document.getElementById("live-frame")]
            .map((e) => e.getBoundingClientRect()).map((r) => [r.left, r.top, r.width, r.height])"""
    )
    assert box[2] > 20 and box[3] > 20
    assert shown[0] <= box[0] and box[0] + box[2] <= shown[0] + shown[2]
    assert shown[1] <= box[1] and box[1] + box[3] <= shown[1] + shown[3]
    assert "records/s" in console.locator("#live-stats").inner_text()
    wait_until(
        lambda: console.locator("#status").inner_text() == "RUNNING", timeout=10, interval=0.1,
        what="RUNNING on the page (the status refreshes by itself)",
    )  # fmt: skip
    screenshot(console, "processor-live-view")

    # Tabs of one browser share one stream (a browser holds at most 6 connections to a host): ten more
    # tabs all load and show frames.
    tabs = [console.context.new_page() for _ in range(10)]
    for tab in tabs:
        tab.goto(f"{url}/console/processors/{name}")
    for tab in tabs:
        tab.wait_for_function("() => window.mlhLive.frames > 0")
        tab.close()

    console.locator("#stop").click()
    wait_until(
        lambda: console.locator("#status").inner_text() == "STOPPED", timeout=20, interval=0.1,
        what="STOPPED on the page",
    )  # fmt: skip
    assert rek.describe_stream_processor(Name=name)["Status"] == "STOPPED"
    assert console.locator("#start").is_enabled() and not console.locator("#stop").is_enabled()

    console.goto(f"{url}/console/processors")
    row = console.locator("#processors tr", has_text=name)
    assert "STOPPED" in row.locator(".state").inner_text()
    screenshot(console, "processors")

    # Deleting the processor deletes its last frame too.
    arn = rek.describe_stream_processor(Name=name)["StreamProcessorArn"]
    assert _live_rows(console_server, arn) == 1
    rek.delete_stream_processor(Name=name)
    assert _live_rows(console_server, arn) == 0


def _live_rows(server: RunningServer, arn: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT count(*) FROM live_views WHERE processor_arn = :arn")
            return int(conn.execute(query, {"arn": arn}).scalar_one())
    finally:
        engine.dispose()


def test_the_live_stream_needs_a_session_and_another_account_sees_nothing(
    browser: Any, console_server: RunningServer, console: Any
) -> None:
    rek = console_server.client("rekognition")
    collection = unique("staff")
    rek.create_collection(CollectionId=collection)
    output = f"arn:aws:kinesis:us-east-1:000000000000:stream/{unique('out')}"
    name = face_search_processor(rek, unique("mine"), unique("cam"), output, collection)
    live = f"{console_server.url}/console/processors/{name}/live"
    assert requests.get(live, timeout=10).status_code == 401
    mine = {c["name"]: c["value"] for c in console.context.cookies()}
    with requests.get(live, cookies=mine, stream=True, timeout=10) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert next(answer.iter_lines()) == b"retry: 1000"

    several = f"{console_server.url}/console/live?name={name}&name=nothing"
    assert requests.get(several, timeout=10).status_code == 401
    with requests.get(several, cookies=mine, stream=True, timeout=10) as answer:
        assert answer.status_code == 200 and next(answer.iter_lines()) == b"retry: 1000"

    other = sign_in(browser, console_server, "other", "other-secret")
    try:
        cookies = {c["name"]: c["value"] for c in other.context.cookies()}
        assert requests.get(live, cookies=cookies, timeout=10).status_code == 404
        assert requests.get(several, cookies=cookies, timeout=10).status_code == 404
        frame = f"{console_server.url}/console/processors/{name}/frame.jpg"
        assert requests.get(frame, cookies=cookies, timeout=10).status_code == 404
        answer = other.goto(f"{console_server.url}/console/processors/{name}")
        assert answer is not None and answer.status == 404
        assert "not found" in other.locator("h1").inner_text()
        other.goto(f"{console_server.url}/console/processors")
        assert name not in other.locator("main").inner_text()
    finally:
        other.context.close()


def test_connected_home_shows_the_labels_seen_and_the_frames_stored_in_s3(
    browser: Any, console_server: RunningServer, console: Any
) -> None:
    """Started from the page: a red block is a PERSON for the tests' tiny label model; the live view lists
    it with its frame and crop, which the page also shows from S3; only to this account."""
    label_model.install(console_server.data_dir / "models")
    rek, kvs = console_server.client("rekognition"), console_server.client("kinesisvideo")
    sns, s3 = console_server.client("sns"), console_server.client("s3")
    camera, bucket = unique("porch"), unique("home").lower()
    kvs.create_stream(StreamName=camera, DataRetentionInHours=1)
    s3.create_bucket(Bucket=bucket)
    topic = sns.create_topic(Name=unique("events"))["TopicArn"]
    name = unique("porch")
    rek.create_stream_processor(
        Name=name,
        Input={
            "KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:us-east-1:000000000000:stream/{camera}/1"}
        },
        Output={"S3Destination": {"Bucket": bucket, "KeyPrefix": "porch"}},
        Settings={"ConnectedHome": {"Labels": ["PERSON"], "MinConfidence": 80}},
        NotificationChannel={"SNSTopicArn": topic},
        RoleArn="arn:aws:iam::000000000000:role/rekognition",
    )
    person = label_model.frame_with((255, 0, 0), (128, 96, 256, 192))
    with live_camera(console_server, camera, person):
        console.goto(f"{console_server.url}/console/processors/{name}")
        assert "The processor is STOPPED" in console.locator("#live").inner_text()
        console.locator("#start").click()
        console.wait_for_function(
            "() => window.mlhLive && document.querySelectorAll('#live-labels a').length == 2", timeout=30_000
        )
        seen = console.locator("#live-labels li").first
        assert seen.inner_text().startswith("PERSON")
        console.wait_for_selector("#s3-frames .thumb img", timeout=15_000)
        thumbs = console.locator("#s3-frames .thumb span").all_inner_texts()
        assert any(t.startswith("frames/PERSON-") for t in thumbs) and any(
            t.startswith("crops/") for t in thumbs
        )
        console.wait_for_function(
            "() => [...document.querySelectorAll('#s3-frames img')].every((i) => i.naturalWidth > 0)"
        )
        screenshot(console, "processor-connected-home")
        href = console.locator("#live-labels a").first.get_attribute("href")
        assert href is not None and f"/s3/porch/{name}/" in href
        if rek.describe_stream_processor(Name=name)["Status"] == "STARTING":
            rek.stop_stream_processor(Name=name)

    mine = {c["name"]: c["value"] for c in console.context.cookies()}
    answer = requests.get(f"{console_server.url}{href}", cookies=mine, timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert answer.content[:2] == b"\xff\xd8"
    # Only objects under the processor's own destination, and only to its account; what the session does not
    # write (put there through the S3 API) is downloaded, never shown as a console page.
    outside = f"{console_server.url}/console/processors/{name}/s3/elsewhere/x.jpg"
    assert requests.get(outside, cookies=mine, timeout=10).status_code == 404
    s3.put_object(Bucket=bucket, Key=f"porch/{name}/page.html", Body=b"<script>alert(1)</script>")
    planted = requests.get(
        f"{console_server.url}/console/processors/{name}/s3/porch/{name}/page.html", cookies=mine, timeout=10
    )
    assert planted.status_code == 200 and planted.headers["content-type"] == "application/octet-stream"
    assert planted.headers["content-disposition"] == "attachment"
    other = sign_in(browser, console_server, "other", "other-secret")
    try:
        cookies = {c["name"]: c["value"] for c in other.context.cookies()}
        assert requests.get(f"{console_server.url}{href}", cookies=cookies, timeout=10).status_code == 404
    finally:
        other.context.close()


def test_frames_are_read_only_from_a_bucket_of_the_account_never_from_mlharbors_own(
    browser: Any, console_server: RunningServer
) -> None:
    """CreateStreamProcessor does not check who owns the S3 destination: a processor of another account
    naming account 0's bucket, or MLHarbor's models bucket, shows and serves nothing of it."""
    from mlharbor.blobs.local import LocalBlobStore
    from mlharbor.services.rekognition import label_model as published

    label_model.install(console_server.data_dir / "models")
    s3 = console_server.client("s3")  # account 0's
    victim = unique("victim").lower()
    s3.create_bucket(Bucket=victim)
    rek = console_server.client("rekognition", "other", "other-secret")
    kvs = console_server.client("kinesisvideo", "other", "other-secret")
    topic = console_server.client("sns", "other", "other-secret").create_topic(Name=unique("t"))["TopicArn"]

    def create(name: str, bucket: str, prefix: str) -> None:
        camera = unique("cam")
        kvs.create_stream(StreamName=camera, DataRetentionInHours=1)
        rek.create_stream_processor(
            Name=name,
            Input={
                "KinesisVideoStream": {
                    "Arn": f"arn:aws:kinesisvideo:us-east-1:111111111111:stream/{camera}/1"
                }
            },
            Output={"S3Destination": {"Bucket": bucket, "KeyPrefix": prefix}},
            Settings={"ConnectedHome": {"Labels": ["PERSON"], "MinConfidence": 80}},
            NotificationChannel={"SNSTopicArn": topic},
            RoleArn="arn:aws:iam::111111111111:role/rekognition",
        )

    thief = unique("thief")
    create(thief, victim, "loot")
    session = rek.start_stream_processor(Name=thief)["SessionId"]
    key = f"loot/{thief}/{session}/frames/PERSON-0.jpg"
    s3.put_object(Bucket=victim, Key=key, Body=b"\xff\xd8 account 0's picture")
    # The models bucket (default name: config.py's models_bucket) holds the label model where a started
    # connected home processor publishes it: rekognition/label-model/<sha256>/.
    folder = published.publish(
        LocalBlobStore(console_server.data_dir / "s3"), console_server.data_dir / "models", "mlharbor-models"
    )
    assert folder is not None and folder.startswith("s3://mlharbor-models/rekognition/label-model/")
    create("label-model", "mlharbor-models", "rekognition")

    other = sign_in(browser, console_server, "other", "other-secret")
    try:
        cookies = {c["name"]: c["value"] for c in other.context.cookies()}
        url = console_server.url
        assert (
            requests.get(
                f"{url}/console/processors/{thief}/s3/{key}", cookies=cookies, timeout=10
            ).status_code
            == 404
        )
        answer = requests.get(f"{url}/console/processors/{thief}", cookies=cookies, timeout=10)
        assert answer.status_code == 200 and "s3-not-readable" in answer.text and "/s3/" not in answer.text
        model = folder.removeprefix("s3://mlharbor-models/") + "/labels.json"
        own = requests.get(f"{url}/console/processors/label-model/s3/{model}", cookies=cookies, timeout=10)
        assert own.status_code == 404
        answer = requests.get(f"{url}/console/processors/label-model", cookies=cookies, timeout=10)
        assert answer.status_code == 200 and "s3-not-readable" in answer.text
    finally:
        other.context.close()
        for name in (thief, "label-model"):
            if rek.describe_stream_processor(Name=name)["Status"] in ("STARTING", "RUNNING"):
                rek.stop_stream_processor(Name=name)
            rek.delete_stream_processor(Name=name)
