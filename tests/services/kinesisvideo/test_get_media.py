"""GetMedia end to end, with boto3's kinesis-video-media client and the AWS CLI: every start selector gives
the right fragments, the output decodes (PyAV) to the frames that were sent and carries AWS's tags around
each Cluster, a reader at the live edge gets frames before their fragment is complete, a caught-up reader
is answered to the end, and bad requests get AWS's codes.

Media: 320x240 at 10 fps, fragments of 0.5 s (five frames each)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import REGION, signed_post, unique
from tests.kvs_producer import PutMedia, put_media
from tests.services.kinesisvideo.kvs_media import (
    CONTINUATION_TOKEN,
    FRAGMENT_NUMBER,
    FRAMES,
    MediaReader,
    acks_of,
    block_ends,
    complete,
    decoded_frames,
    encode,
    new_stream,
    numbers,
    read_media,
    split_fragments,
    walk,
)

pytestmark = pytest.mark.storage
EARLIEST = {"StartSelectorType": "EARLIEST"}
STAMP = re.compile(r"[0-9]+\.[0-9]{3}")
SERVER_TIMESTAMP = "AWS_KINESISVIDEO_SERVER_TIMESTAMP"
PRODUCER_TIMESTAMP = "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
MILLIS_BEHIND_NOW = "AWS_KINESISVIDEO_MILLIS_BEHIND_NOW"


class Recorded:
    """A stream holding four fragments, sent one by one (so their server timestamps differ)."""

    def __init__(self, server: Any) -> None:
        kvs = server.client("kinesisvideo")
        self.name = new_stream(kvs)
        self.arn = kvs.describe_stream(StreamName=self.name)["StreamInfo"]["StreamARN"]
        self.start = 1_700_000_000.25  # x-amzn-producer-start-timestamp (RELATIVE timecodes)
        head, fragments = split_fragments(encode())
        self.sent_from = time.time()
        with PutMedia(server.url, stream_name=self.name, start_timestamp=self.start, timeout=10) as producer:
            producer.send(head)
            for i, fragment in enumerate(fragments, 1):
                producer.send(fragment)
                producer.wait_for(lambda acks, i=i: len(numbers(acks)) == i, 10)
                time.sleep(0.02)  # a little time between fragments: distinct server timestamps
            producer.finish()
            producer.wait_done(10)
        self.sent_until = time.time()
        self.acks = producer.acks()
        self.numbers = numbers(self.acks)
        self.timecodes = [a["FragmentTimecode"] for a in acks_of(self.acks, "PERSISTED")]


@pytest.fixture(scope="module")
def recorded(server):  # type: ignore[no-untyped-def]
    return Recorded(server)


def error(call: Any, **params: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as excinfo:
        call(**params)
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def selector(kind: str, **fields: Any) -> dict[str, Any]:
    return {"StartSelectorType": kind, **fields}


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_earliest_gives_every_fragment_with_aws_tags(recorded, media):
    got = read_media(media, EARLIEST, StreamName=recorded.name, count=4)
    assert got.content_type == "video/webm"
    assert got.numbers == recorded.numbers
    assert decoded_frames(got.complete_bytes()) == 4 * FRAMES
    for doc, number, timecode in zip(got.docs, recorded.numbers, recorded.timecodes, strict=True):
        # Each fragment a whole MKV document: header, then Tags, the Cluster, Tags (AWS's layout).
        assert doc.elements[0] == "EBML" and doc.elements[-3:] == ["Tags", "Cluster", "Tags"]
        assert "Tracks" in doc.elements[:-3]
        assert set(doc.leading) == {FRAGMENT_NUMBER, SERVER_TIMESTAMP, PRODUCER_TIMESTAMP}
        assert set(doc.trailing) == {MILLIS_BEHIND_NOW, CONTINUATION_TOKEN}
        assert doc.leading[FRAGMENT_NUMBER] == doc.trailing[CONTINUATION_TOKEN] == number
        assert (doc.timecode, doc.frames, doc.cluster_size_known) == (timecode, FRAMES, True)
        # Epoch seconds with milliseconds; the producer's is the start timestamp plus the Cluster's timecode.
        assert all(STAMP.fullmatch(doc.leading[tag]) for tag in (SERVER_TIMESTAMP, PRODUCER_TIMESTAMP))
        server_ts, producer_ts = float(doc.leading[SERVER_TIMESTAMP]), float(doc.leading[PRODUCER_TIMESTAMP])
        assert recorded.sent_from - 0.001 <= server_ts <= recorded.sent_until + 0.001
        assert producer_ts == pytest.approx(recorded.start + timecode / 1000, abs=1e-6)
        behind = int(doc.trailing[MILLIS_BEHIND_NOW])
        assert 0 <= behind <= (time.time() - server_ts) * 1000 + 1
    server_times = [float(d.leading[SERVER_TIMESTAMP]) for d in got.docs]
    assert server_times == sorted(set(server_times))


def test_every_start_selector(recorded, media):
    n = recorded.numbers
    start = recorded.start
    first = read_media(media, EARLIEST, StreamARN=recorded.arn, count=4)
    server_ts = [float(d.leading[SERVER_TIMESTAMP]) for d in first.docs]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        (selector("EARLIEST"), n),
        (selector("FRAGMENT_NUMBER", AfterFragmentNumber=n[1]), n[2:]),  # the chunk after it
        (selector("CONTINUATION_TOKEN", ContinuationToken=n[0]), n[1:]),
        (selector("PRODUCER_TIMESTAMP", StartTimestamp=at(start + 1.2)), n[2:]),  # inside the third
        (selector("PRODUCER_TIMESTAMP", StartTimestamp=at(start + 0.5)), n[1:]),  # where the second starts
        (selector("PRODUCER_TIMESTAMP", StartTimestamp=at(start - 60)), n),  # before them all
        (selector("SERVER_TIMESTAMP", StartTimestamp=at(server_ts[1])), n[1:]),
        (selector("SERVER_TIMESTAMP", StartTimestamp=at(server_ts[3] + 0.001)), n[3:]),
    ]
    for start_selector, expected in cases:
        got = read_media(media, start_selector, StreamName=recorded.name, count=len(expected))
        assert got.numbers == expected, start_selector
        assert decoded_frames(got.complete_bytes()) == FRAMES * len(expected), start_selector


def test_now_starts_with_what_arrives_next(server, kvs, media):
    name = new_stream(kvs)
    put_media(server.url, encode(2), stream_name=name)  # already there: not for a reader from NOW
    with MediaReader(media, selector("NOW"), StreamName=name) as reader:
        _, after = put_media(server.url, encode(2), stream_name=name)
        got = reader.read(count=2)
    assert got.numbers == numbers(after)
    assert decoded_frames(got.complete_bytes()) == 2 * FRAMES


def test_a_live_reader_gets_frames_before_their_fragment_is_complete(server, kvs):
    # Frame by frame is a property of the server that receives the PutMedia (its live hub); a reader on
    # another server of the deployment gets each fragment once it is stored.
    media = server.client("kinesis-video-media", pinned=True, read_timeout=20)
    name = new_stream(kvs)
    head, fragments = split_fragments(encode())
    cut = block_ends(fragments[1])[1]  # the second fragment up to its second frame
    with (
        MediaReader(media, selector("NOW"), StreamName=name) as reader,
        PutMedia(server.url, stream_name=name, timeout=10) as producer,
    ):
        producer.send(head + fragments[0] + fragments[1][:cut])
        acks = producer.wait_for(lambda acks: len(numbers(acks, "BUFFERING")) == 2, 10)
        receiving = numbers(acks, "BUFFERING")[1]

        def two_frames_in(docs: list[Any]) -> bool:
            return any(d.number == receiving and d.frames == 2 for d in docs)

        partial = reader.read(until=two_frames_in)
        # The reader has frames of a fragment the server has not received whole: the live edge.
        assert receiving not in numbers(producer.acks(), "RECEIVED")
        live = next(d for d in partial.docs if d.number == receiving)
        assert not live.complete and live.cluster_size_known is False
        producer.send(fragments[1][cut:] + fragments[2] + fragments[3])
        producer.finish()
        producer.wait_done(10)
        got = reader.read(count=4)
    assert got.numbers == numbers(producer.acks())
    assert decoded_frames(got.complete_bytes()) == 4 * FRAMES
    assert [d.frames for d in complete(got.docs)] == [FRAMES] * 4


def test_a_caught_up_reader_is_answered_to_the_end_and_resumes(make_server):
    server = make_server(env={"MLHARBOR_VIDEO_GET_MEDIA_IDLE_SECONDS": "0.3"})
    name = new_stream(server.client("kinesisvideo"))
    media = server.client("kinesis-video-media", read_timeout=20)
    _, first = put_media(server.url, encode(2), stream_name=name)
    got = read_media(media, EARLIEST, StreamName=name)  # to the end
    assert got.ended and got.numbers == numbers(first)
    assert 0.25 <= got.done - got.last_data < 1.5  # about video_get_media_idle_seconds (0.3) after the last
    token = complete(got.docs)[-1].trailing[CONTINUATION_TOKEN]
    resumed = selector("CONTINUATION_TOKEN", ContinuationToken=token)
    nothing = read_media(media, resumed, StreamName=name)
    assert nothing.ended and nothing.data == b""
    _, second = put_media(server.url, encode(2), stream_name=name)
    got = read_media(media, resumed, StreamName=name)
    assert got.ended and got.numbers == numbers(second)
    assert decoded_frames(got.complete_bytes()) == 2 * FRAMES
    # Fragment numbers are numbers, whatever their length (the model allows up to 128 digits).
    for after, expected in (("7", numbers(first) + numbers(second)), ("1" + "0" * 60, [])):
        got = read_media(media, selector("FRAGMENT_NUMBER", AfterFragmentNumber=after), StreamName=name)
        assert got.ended and got.numbers == expected, after


def test_bad_requests_get_aws_codes(server, kvs, media):
    name = new_stream(kvs)
    for bad in (
        selector("FRAGMENT_NUMBER"),  # without the field its type needs
        selector("CONTINUATION_TOKEN"),
        selector("PRODUCER_TIMESTAMP"),
        selector("SERVER_TIMESTAMP"),
        selector("FRAGMENT_NUMBER", AfterFragmentNumber="latest"),  # not ^[0-9]+$
        selector("CONTINUATION_TOKEN", ContinuationToken="-1"),
    ):
        assert error(media.get_media, StreamName=name, StartSelector=bad) == (
            400, "InvalidArgumentException"
        ), bad  # fmt: skip
    # What boto3 would not send: the raw wire.
    for body in (
        {"StreamName": name},
        {"StreamName": name, "StartSelector": {}},
        {"StreamName": name, "StartSelector": selector("LATEST")},
        {"StartSelector": EARLIEST},
    ):
        response = signed_post(server.url, service="kinesisvideo", path="/getMedia", body=body,
                               headers={"Content-Type": "application/json"})  # fmt: skip
        assert response.status_code == 400, body
        assert response.headers["x-amzn-ErrorType"].split(":")[0] == "InvalidArgumentException"
    assert error(media.get_media, StreamName=unique("nope"), StartSelector=EARLIEST) == (
        404, "ResourceNotFoundException"
    )  # fmt: skip


def test_the_aws_cli_reads_get_media(server, recorded, tmp_path):
    out = tmp_path / "out.mkv"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": REGION}  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "awscli", "kinesis-video-media", "get-media", "--endpoint-url", server.url,
         "--stream-name", recorded.name, "--start-selector", "StartSelectorType=EARLIEST", str(out)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["ContentType"] == "video/webm"
    data = out.read_bytes()
    assert decoded_frames(data) == 4 * FRAMES
    assert [d.number for d in complete(walk(data))] == recorded.numbers


def test_a_fragment_whose_object_vanished_is_skipped(server, kvs, media):
    """The retention pass deletes an expired fragment's row, then its object: a reader that found the row
    just before reads no object. It goes on with the next fragment instead of having its response cut."""
    name = new_stream(kvs)
    _, acks = put_media(server.url, encode(3), stream_name=name)
    stored = numbers(acks)
    (path,) = server.data_dir.rglob(f"{stored[1]}.mkv")
    path.unlink()
    got = read_media(media, EARLIEST, StreamName=name, count=2)
    assert got.numbers == [stored[0], stored[2]]
    assert decoded_frames(got.complete_bytes()) == 2 * FRAMES
