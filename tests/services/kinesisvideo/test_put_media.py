"""PutMedia end to end: a producer (tests/kvs_producer.py: PyAV-encoded H.264 MKV over one full-duplex
HTTP/1.1 request) against a real server, and what it sees: ACKs per fragment, AWS's errors for bad input
with nothing wrong stored, and fragments that survive disconnects, deleted streams and kill -9.

Media: 320x240 at 10 fps, fragments of 0.5 s (five frames each), so every test pushes a second or two."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import signed_post, start_server, stop_server, unique, wait_until
from tests.kvs_producer import PutMedia, clusters, encode_mkv, put_media
from tests.services.kinesisvideo.kvs_media import (
    FRAMES,
    acks_of,
    decoded_frames,
    encode,
    new_stream,
    numbers,
    on_track,
    read_media,
    split_fragments,
    with_timecodes,
    with_tracks,
    with_unknown_sizes,
)

pytestmark = pytest.mark.storage
EARLIEST = {"StartSelectorType": "EARLIEST"}


def events(acks: list[dict[str, Any]], number: str) -> list[str]:
    return [a["EventType"] for a in acks if a.get("FragmentNumber") == number]


def refused(url: str, **kwargs: Any) -> tuple[int, str, dict[str, Any]]:
    """A PutMedia the server answers with an HTTP error: (status, x-amzn-ErrorType code, JSON body).
    The body is sent only after the answer: the server refuses on the headers alone."""
    producer = PutMedia(url, timeout=10, **kwargs)
    producer.start()
    try:
        status = producer.wait_status(10)
        with contextlib.suppress(ConnectionError):
            producer.send(encode())
            producer.finish()
        producer.wait_done(10)
        assert producer.headers is not None
        code = producer.headers.get("x-amzn-ErrorType", "").split(":")[0]
        return status, code, json.loads(producer.error_body() or b"{}")
    finally:
        producer.close()


def assert_stored(media: Any, name: str, expected: list[str], frames: int = FRAMES) -> None:
    """GetMedia from EARLIEST gives exactly ``expected`` (read until that many), each one playable."""
    got = read_media(media, EARLIEST, StreamName=name, count=len(expected))
    assert got.numbers == expected
    assert decoded_frames(got.complete_bytes()) == frames * len(expected)


# --- ACKs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("timecode_type", "layout"),
    [("RELATIVE", "known sizes"), ("ABSOLUTE", "known sizes"), ("ABSOLUTE", "unknown-size clusters")],
)
def test_every_fragment_is_buffering_received_persisted(server, kvs, media, timecode_type, layout):
    name = new_stream(kvs)
    data = encode(crc=timecode_type == "RELATIVE")
    if timecode_type == "ABSOLUTE":  # timecodes are the producer's clock in ms (the producer SDK's default)
        base = int(time.time() * 1000)
        data = with_timecodes(data, [base + tc for _, tc in clusters(data)])
    if layout == "unknown-size clusters":  # as the producer SDK writes them
        data = with_unknown_sizes(data)
    status, acks = put_media(server.url, data, stream_name=name, timecode_type=timecode_type)
    assert status == 200, acks
    assert {a["EventType"] for a in acks} == {"BUFFERING", "RECEIVED", "PERSISTED"}, acks
    got = numbers(acks, "BUFFERING")
    assert len(got) == 4
    # AWS's shape: 47-digit decimal strings, increasing in ingestion order.
    assert all(len(n) == 47 and n.isdigit() for n in got)
    assert [int(n) for n in got] == sorted({int(n) for n in got})
    for number, (_, timecode) in zip(got, clusters(data), strict=True):
        assert events(acks, number) == ["BUFFERING", "RECEIVED", "PERSISTED"]
        assert {a["FragmentTimecode"] for a in acks if a["FragmentNumber"] == number} == {timecode}
    assert numbers(acks, "PERSISTED") == got
    assert_stored(media, name, got)


def test_persisted_means_listed_and_readable(server, kvs, media):
    """When a PERSISTED arrives, its fragment is in the index already (ListFragments reads only that) and
    GetMedia plays it."""
    name = new_stream(kvs)
    archive = server.client("kinesis-video-archived-media")
    now = time.time()
    everything = {"FragmentSelectorType": "SERVER_TIMESTAMP",
                  "TimestampRange": {"StartTimestamp": now - 3600, "EndTimestamp": now + 3600}}  # fmt: skip
    head, fragments = split_fragments(encode())
    with PutMedia(server.url, stream_name=name, timeout=10) as producer:
        producer.send(head)
        for i, fragment in enumerate(fragments, 1):
            producer.send(fragment)
            acks = producer.wait_for(lambda acks, i=i: len(numbers(acks)) == i, 10)
            listed = archive.list_fragments(StreamName=name, FragmentSelector=everything)["Fragments"]
            assert sorted(f["FragmentNumber"] for f in listed) == numbers(acks)
            assert read_media(media, EARLIEST, StreamName=name, count=i).numbers == numbers(acks)
        producer.finish()
        producer.wait_done(10)


def test_retention_zero_has_no_persisted_but_plays(server, kvs, media):
    name = new_stream(kvs, retention=0)
    status, acks = put_media(server.url, encode(), stream_name=name)
    assert status == 200
    got = numbers(acks, "BUFFERING")
    assert len(got) == 4 and not acks_of(acks, "PERSISTED")
    assert [a["EventType"] for a in acks if a["EventType"] != "BUFFERING"] == ["RECEIVED"] * 4
    assert_stored(media, name, got)  # kept for live readers (AWS: 5 minutes)


def test_idle_acks_then_the_request_is_ended(make_server):
    server = make_server(
        env={"MLHARBOR_VIDEO_IDLE_ACK_SECONDS": "0.2", "MLHARBOR_VIDEO_IDLE_CLOSE_SECONDS": "1.2"}
    )
    kvs = server.client("kinesisvideo")
    name = new_stream(kvs)
    head, fragments = split_fragments(encode())
    producer = PutMedia(server.url, stream_name=name, timeout=10)
    with producer:
        producer.send(head + fragments[0])
        producer.wait_for(lambda acks: numbers(acks), 10)
        paused = time.monotonic()  # the camera stops sending, the connection stays open
        producer.wait_for(lambda acks: len(acks_of(acks, "IDLE")) >= 2, 5)
        producer.wait_done(5)
        ended = time.monotonic() - paused
        acks = producer.acks()
    # IDLE now and then while nothing comes; after video_idle_close_seconds the response ends.
    assert 1.0 <= ended < 3.0, ended
    assert [a["EventType"] for a in acks][:3] == ["BUFFERING", "RECEIVED", "PERSISTED"]
    assert {a["EventType"] for a in acks[3:]} == {"IDLE"} and 2 <= len(acks[3:]) <= 8, acks
    assert producer.error is None
    # The stream is free again for the producer's next connection, whose numbers follow.
    status, again = put_media(server.url, encode(), stream_name=name)
    assert status == 200 and len(numbers(again)) == 4
    assert int(numbers(again)[0]) > int(numbers(acks)[0])


# --- bad input: AWS's answer, nothing wrong stored ---------------------------------------------------
def test_bad_requests_get_http_errors_and_store_nothing(server, kvs, media):
    name = new_stream(kvs)
    arn = kvs.describe_stream(StreamName=name)["StreamInfo"]["StreamARN"]
    invalid = [
        {"stream_name": None},  # neither a name nor an ARN
        {"stream_name": name, "stream_arn": arn},  # both
        {"stream_name": name, "timecode_type": "SOMETIMES"},
        {"stream_name": name, "extra_headers": {"x-amzn-producer-start-timestamp": "yesterday"}},
        {"stream_name": name, "extra_headers": {"x-amzn-producer-start-timestamp": "-5"}},
    ]
    for kwargs in invalid:
        status, code, body = refused(server.url, **kwargs)
        assert (status, code) == (400, "InvalidArgumentException"), kwargs
        assert body["Message"]
    # Headers left out altogether (the test producer always sends them): a signed request of our own.
    for headers in (
        {"x-amzn-stream-name": name, "x-amzn-producer-start-timestamp": "1700000000.000"},  # no timecode type
        {"x-amzn-stream-name": name, "x-amzn-fragment-timecode-type": "RELATIVE"},  # relative to what?
    ):
        response = signed_post(server.url, service="kinesisvideo", path="/putMedia", body=b"",
                               headers={"Content-Type": "application/json", **headers})  # fmt: skip
        assert response.status_code == 400, headers
        assert response.headers["x-amzn-ErrorType"].split(":")[0] == "InvalidArgumentException"
    assert refused(server.url, stream_name=unique("nope"))[:2] == (404, "ResourceNotFoundException")
    assert refused(server.url, stream_arn=arn.rsplit("/", 1)[0] + "/1")[:2] == (
        404, "ResourceNotFoundException"
    )  # fmt: skip
    status, code, _ = refused(server.url, stream_name=name, secret_key="not-the-secret")
    assert (status, code) == (403, "InvalidSignatureException")
    # None of them left anything behind, nor held the stream: the next producer stores from the start.
    status, acks = put_media(server.url, encode(), stream_name=name)
    assert status == 200
    assert_stored(media, name, numbers(acks))


def test_not_mkv_is_error_4006(server, kvs, media):
    name = new_stream(kvs)
    status, acks = put_media(server.url, b"this is not a video at all\n" * 100, stream_name=name)
    assert status == 200
    assert [(a["EventType"], a.get("ErrorId")) for a in acks] == [("ERROR", 4006)]
    status, acks = put_media(server.url, encode(), stream_name=name)
    assert_stored(media, name, numbers(acks))


def test_garbage_after_whole_fragments_keeps_them(server, kvs, media):
    """Fragments that arrived whole before the bad bytes (in the same chunk) are stored and ACKed."""
    name = new_stream(kvs)
    data = encode()
    status, acks = put_media(server.url, data + b"\x00garbage", stream_name=name, chunk_bytes=len(data) + 8)
    assert status == 200
    assert len(numbers(acks)) == 4, acks
    assert acks[-1]["EventType"] == "ERROR" and acks[-1]["ErrorId"] == 4006
    assert_stored(media, name, numbers(acks))


def test_more_than_three_tracks_is_error_4012(server, kvs, media):
    name = new_stream(kvs)
    status, acks = put_media(server.url, with_tracks(encode(crc=False), 4), stream_name=name)
    assert status == 200
    assert [(a["EventType"], a.get("ErrorId")) for a in acks] == [("ERROR", 4012)]
    # Three tracks are allowed; then every declared track needs frames (4011).
    status, acks = put_media(server.url, with_tracks(encode(crc=False), 3), stream_name=name)
    assert [(a["EventType"], a.get("ErrorId")) for a in acks][-1] == ("ERROR", 4011)
    assert not acks_of(acks, "PERSISTED")
    status, acks = put_media(server.url, encode(), stream_name=name)
    assert_stored(media, name, numbers(acks))


def test_timecodes_going_backwards_is_error_4004(server, kvs, media):
    name = new_stream(kvs)
    # Two recordings one after the other: the second's timecodes start again from 0.
    status, acks = put_media(server.url, encode(2) + encode(2), stream_name=name)
    assert status == 200
    persisted = numbers(acks)
    assert len(persisted) == 2
    error = acks[-1]
    assert (error["EventType"], error["ErrorId"], error["FragmentTimecode"]) == ("ERROR", 4004, 0)
    assert int(error["FragmentNumber"]) > int(persisted[-1])
    # The ERROR comes last: after the PERSISTED of every fragment stored before it.
    assert not acks_of(acks[:-1], "ERROR")
    assert_stored(media, name, persisted)
    # ABSOLUTE timecodes that go back within one recording.
    other = new_stream(kvs)
    base = int(time.time() * 1000)
    data = with_timecodes(encode(crc=False), [base, base + 500, base + 200, base + 1500])
    status, acks = put_media(server.url, data, stream_name=other, timecode_type="ABSOLUTE")
    assert len(numbers(acks)) == 2
    assert (acks[-1]["ErrorId"], acks[-1]["FragmentTimecode"]) == (4004, base + 200)
    assert_stored(media, other, numbers(acks))


def test_a_fragment_over_ten_seconds_is_error_4002(server, kvs, media):
    name = new_stream(kvs)
    long = encode_mkv(seconds=10.6, fps=5, fragment_seconds=11)  # one keyframe: one 10.6 s fragment
    status, acks = put_media(server.url, long, stream_name=name)
    assert status == 200
    assert [a["EventType"] for a in acks] == ["BUFFERING", "ERROR"]
    assert acks[-1]["ErrorId"] == 4002 and acks[-1]["FragmentNumber"] == acks[0]["FragmentNumber"]
    status, acks = put_media(server.url, encode(), stream_name=name)
    assert_stored(media, name, numbers(acks))


def test_frames_on_an_undeclared_track_is_error_4010(server, kvs, media):
    name = new_stream(kvs)
    status, acks = put_media(server.url, on_track(encode(crc=False), 2, track=2), stream_name=name)
    assert status == 200
    persisted = numbers(acks)
    assert len(persisted) == 2
    assert (acks[-1]["EventType"], acks[-1]["ErrorId"]) == ("ERROR", 4010)
    assert events(acks, acks[-1]["FragmentNumber"]) == ["BUFFERING", "ERROR"]
    assert_stored(media, name, persisted)


def test_stream_deleted_while_sending_is_error_4008(server, kvs, media):
    name = new_stream(kvs)
    head, fragments = split_fragments(encode())
    with PutMedia(server.url, stream_name=name, timeout=10) as producer:
        producer.send(head + fragments[0])
        first = producer.wait_for(lambda acks: numbers(acks), 10)
        arn = kvs.describe_stream(StreamName=name)["StreamInfo"]["StreamARN"]
        kvs.delete_stream(StreamARN=arn)
        with contextlib.suppress(ConnectionError):
            producer.send(fragments[1])
        producer.wait_for(lambda acks: acks_of(acks, "ERROR"), 10)
        producer.wait_done(10)
    error = acks_of(producer.acks(), "ERROR")
    assert [e["ErrorId"] for e in error] == [4008]
    assert int(error[0]["FragmentNumber"]) > int(numbers(first)[0])
    assert numbers(producer.acks()) == numbers(first)
    with pytest.raises(media.exceptions.ResourceNotFoundException):
        media.get_media(StreamName=name, StartSelector=EARLIEST)
    # The name can be used again: a new stream with none of the old one's fragments.
    kvs.create_stream(StreamName=name, DataRetentionInHours=1)
    status, acks = put_media(server.url, encode(), stream_name=name)
    assert_stored(media, name, numbers(acks))


def test_a_second_producer_on_a_stream_is_refused(server, kvs, media):
    name = new_stream(kvs)
    head, fragments = split_fragments(encode())
    with PutMedia(server.url, stream_name=name, timeout=10) as first:
        first.send(head + fragments[0])
        first.wait_for(lambda acks: numbers(acks), 10)
        status, code, _ = refused(server.url, stream_name=name)
        assert (status, code) == (400, "ConnectionLimitExceededException")
        for fragment in fragments[1:]:  # the first producer goes on undisturbed
            first.send(fragment)
        first.finish()
        first.wait_done(10)
        acks = first.acks()
    assert len(numbers(acks)) == 4 and not acks_of(acks, "ERROR")
    assert_stored(media, name, numbers(acks))


# --- producers that go away, a server that dies -----------------------------------------------------------
@pytest.mark.parametrize("reset", [False, True], ids=["FIN", "RST"])
def test_a_producer_cut_off_mid_fragment_loses_only_that_fragment(server, kvs, media, reset):
    name = new_stream(kvs)
    head, fragments = split_fragments(encode())
    producer = PutMedia(server.url, stream_name=name, timeout=10)
    with producer:
        producer.send(head + fragments[0] + fragments[1] + fragments[2][: len(fragments[2]) // 2])
        acks = producer.wait_for(
            lambda acks: len(numbers(acks)) == 2 and len(numbers(acks, "BUFFERING")) == 3, 10
        )
        producer.abort(reset=reset)
    persisted = numbers(acks)
    cut = numbers(acks, "BUFFERING")[2]

    def reconnect() -> tuple[int, list[dict[str, Any]]] | None:
        # The server may not have seen the old connection go yet: a real producer retries too.
        status, acks = put_media(server.url, encode(), stream_name=name)
        return (status, acks) if status == 200 else None

    _, acks = wait_until(reconnect, timeout=10, what="a new PutMedia")
    again = numbers(acks)
    assert len(again) == 4 and int(again[0]) > int(cut)
    assert_stored(media, name, persisted + again)


def test_persisted_fragments_survive_kill_9(make_server):
    first = make_server()
    name = new_stream(first.client("kinesisvideo"))
    head, fragments = split_fragments(encode())
    producer = PutMedia(first.url, stream_name=name, timeout=10)
    with producer:
        producer.send(head + b"".join(fragments[:3]) + fragments[3][: len(fragments[3]) // 2])
        acks = producer.wait_for(
            lambda acks: len(numbers(acks)) == 3 and len(numbers(acks, "BUFFERING")) == 4, 10
        )
        os.kill(first.process.pid, signal.SIGKILL)  # no clean shutdown of anything
        first.process.wait()
    persisted = numbers(acks)
    again = start_server(first.data_dir.parent, first.database_url, *first.extra_args)
    try:
        media = again.client("kinesis-video-media", read_timeout=20)
        assert_stored(media, name, persisted)
        # The producer's retry on the restarted server: numbers go on increasing.
        status, retry = put_media(again.url, encode(), stream_name=name)
        assert status == 200 and len(numbers(retry)) == 4
        assert int(numbers(retry)[0]) > int(numbers(acks, "BUFFERING")[-1])
        assert_stored(media, name, persisted + numbers(retry))
    finally:
        stop_server(again)


def test_five_producers_at_once(server, kvs, media):
    names = [new_stream(kvs) for _ in range(5)]
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(
            pool.map(lambda n: put_media(server.url, encode(), stream_name=n, chunk_bytes=4096), names)
        )
    for name, (status, acks) in zip(names, results, strict=True):
        assert status == 200 and len(numbers(acks)) == 4 and not acks_of(acks, "ERROR"), acks
        assert_stored(media, name, numbers(acks))
