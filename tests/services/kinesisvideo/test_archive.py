"""Kinesis Video archived media with boto3's kinesis-video-archived-media client and the AWS CLI: fragments
ingested with PutMedia are listed, played back by number, cut into MP4 clips and sampled as images.

The video is 3 s of 320x240 H.264 at 10 fps in 1 s fragments, from a producer timestamp T0 the test
chooses, so every frame's time is known: frame i is shown at T0 + i/10 and is a flat grey whose level
(``level(i)``) tells which frame an image or a decoded clip shows.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime

import av
import numpy
import pytest
from botocore.exceptions import ClientError
from PIL import Image

from mlharbor.engines import clips, mkv
from tests.conftest import REGION, signed_post, unique
from tests.kvs_producer import encode_mkv, put_media

pytestmark = pytest.mark.storage

FPS = 10
SECONDS = 3
SIZE = (320, 240)
TAG_VALUE = rb"\x44\x87[\x80-\xff]([ -~]*?)(?=\x67\xc8|\x73\x73|\x12\x54|\x1a\x45|$)"


def level(i: int) -> int:
    return 16 + 7 * i


def grey_frames(count: int, offset: int = 0) -> list[numpy.ndarray]:
    return [numpy.full((SIZE[1], SIZE[0], 3), level(i + offset), numpy.uint8) for i in range(count)]


def when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def error(call, **params) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as excinfo:
        call(**params)
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def persisted(acks: list[dict]) -> list[str]:
    return [a["FragmentNumber"] for a in acks if a.get("EventType") == "PERSISTED"]


def ingest(server, name: str, data: bytes, start: float, retention: int = 1) -> list[dict]:  # type: ignore[no-untyped-def]
    server.client("kinesisvideo").create_stream(StreamName=name, DataRetentionInHours=retention)
    status, acks = put_media(server.url, data, stream_name=name, start_timestamp=start)
    assert status == 200 and not [a for a in acks if a.get("EventType") == "ERROR"], acks
    return acks


@pytest.fixture(scope="module")
def archive(server):  # type: ignore[no-untyped-def]
    return server.client("kinesis-video-archived-media")


@pytest.fixture(scope="module")
def recorded(server):  # type: ignore[no-untyped-def]
    """A stream with 3 archived fragments of known content: (name, T0, fragment numbers, ingest window,
    each fragment's size as stored: the header up to Tracks and the Cluster)."""
    name = unique("archive")
    t0 = round(time.time()) - 100.0
    data = encode_mkv(grey_frames(SECONDS * FPS), fps=FPS, size=SIZE)
    parser = mkv.MkvParser()
    events = parser.feed(data) + parser.end()
    header = next(e for e in events if isinstance(e, mkv.Header))
    sizes = [len(header.raw) + len(e.raw) for e in events if isinstance(e, mkv.ClusterEnd)]
    before = time.time()
    numbers = persisted(ingest(server, name, data, t0))
    assert len(numbers) == SECONDS
    return name, t0, numbers, (before, time.time()), sizes


def grey_of(image: Image.Image) -> float:
    return float(numpy.asarray(image.convert("L"), numpy.float64).mean())


def frame_of(grey: float) -> int:
    return round((grey - level(0)) / 7)


# --- ListFragments ------------------------------------------------------------------------------------
def test_list_fragments_returns_the_persisted_fragments(server, archive, recorded):
    name, t0, numbers, (before, after), sizes = recorded
    selector = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": when(t0 - 1), "EndTimestamp": when(t0 + 60)},
    }
    listed = archive.list_fragments(StreamName=name, FragmentSelector=selector)
    assert "NextToken" not in listed
    fragments = sorted(listed["Fragments"], key=lambda f: f["FragmentNumber"])
    assert [f["FragmentNumber"] for f in fragments] == numbers
    for k, fragment in enumerate(fragments):
        assert fragment["ProducerTimestamp"].timestamp() == pytest.approx(t0 + k, abs=1e-3)
        assert before - 1 <= fragment["ServerTimestamp"].timestamp() <= after + 1
        assert fragment["FragmentLengthInMilliseconds"] == 1000  # 10 frames of 100 ms
        assert fragment["FragmentSizeInBytes"] == sizes[k]
    # By ARN, by server time, and a range holding only the second fragment's start (inclusive ends).
    arn = server.client("kinesisvideo").describe_stream(StreamName=name)["StreamInfo"]["StreamARN"]
    by_server = {
        "FragmentSelectorType": "SERVER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": when(before - 1), "EndTimestamp": when(after + 1)},
    }
    assert {
        f["FragmentNumber"]
        for f in archive.list_fragments(StreamARN=arn, FragmentSelector=by_server)["Fragments"]
    } == set(numbers)
    second = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": when(t0 + 1), "EndTimestamp": when(t0 + 1.5)},
    }
    assert [
        f["FragmentNumber"]
        for f in archive.list_fragments(StreamName=name, FragmentSelector=second)["Fragments"]
    ] == [numbers[1]]
    # Without a selector: every archived fragment.
    assert len(archive.list_fragments(StreamName=name)["Fragments"]) == SECONDS


def test_list_fragments_pages_and_refuses_bad_tokens_and_ranges(server, archive, recorded):
    name, t0, numbers, *_ = recorded
    selector = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": when(t0), "EndTimestamp": when(t0 + 60)},
    }
    pages = list(
        archive.get_paginator("list_fragments").paginate(
            StreamName=name, FragmentSelector=selector, PaginationConfig={"PageSize": 1}
        )
    )
    assert [len(p["Fragments"]) for p in pages] == [1, 1, 1]
    assert sorted(f["FragmentNumber"] for p in pages for f in p["Fragments"]) == numbers
    token = archive.list_fragments(StreamName=name, FragmentSelector=selector, MaxResults=2)["NextToken"]
    assert re.fullmatch(r"[a-zA-Z0-9+/]+={0,2}", token)  # the model's pattern
    # The token carries the selector; another stream's request may not use it.
    assert len(archive.list_fragments(StreamName=name, NextToken=token)["Fragments"]) == 1
    other = unique("other")
    server.client("kinesisvideo").create_stream(StreamName=other, DataRetentionInHours=1)
    assert error(archive.list_fragments, StreamName=other, NextToken=token) == (
        400,
        "InvalidArgumentException",
    )
    assert error(archive.list_fragments, StreamName=name, NextToken="bm90LWEtdG9rZW4=") == (
        400,
        "InvalidArgumentException",
    )
    backwards = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": when(t0 + 5), "EndTimestamp": when(t0)},
    }
    assert error(archive.list_fragments, StreamName=name, FragmentSelector=backwards) == (
        400,
        "InvalidArgumentException",
    )
    # boto3 checks MaxResults itself; on the wire, the model's range is the server's to enforce.
    response = signed_post(
        server.url,
        service="kinesisvideo",
        path="/listFragments",
        body={"StreamName": name, "MaxResults": 0},
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers["x-amzn-ErrorType"].split(":")[0] == "InvalidArgumentException"
    assert error(archive.list_fragments, StreamName=unique("nope")) == (404, "ResourceNotFoundException")


def test_a_stream_without_retention_archives_nothing(server, archive):
    name = unique("live")
    t0 = round(time.time()) - 50.0
    acks = ingest(server, name, encode_mkv(seconds=1, fps=FPS, size=SIZE), t0, retention=0)
    assert [a["EventType"] for a in acks].count("RECEIVED") == 1 and not persisted(acks)
    assert archive.list_fragments(StreamName=name)["Fragments"] == []
    span = {"StartTimestamp": when(t0 - 1), "EndTimestamp": when(t0 + 5)}
    clip = {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": span}
    assert error(archive.get_clip, StreamName=name, ClipFragmentSelector=clip) == (
        400,
        "NoDataRetentionException",
    )
    assert (
        error(
            archive.get_images, StreamName=name, ImageSelectorType="PRODUCER_TIMESTAMP", Format="JPEG", **span
        )[1]
        == "NoDataRetentionException"
    )


# --- GetMediaForFragmentList --------------------------------------------------------------------------
def test_media_for_a_fragment_list_comes_in_the_order_given(archive, recorded):
    name, _, numbers, *_ = recorded
    reply = archive.get_media_for_fragment_list(StreamName=name, Fragments=[numbers[2], numbers[0]])
    assert reply["ContentType"] == "video/webm"
    body = reply["Payload"].read()
    assert re.findall(rb"AWS_KINESISVIDEO_FRAGMENT_NUMBER" + TAG_VALUE, body) == [
        numbers[2].encode(),
        numbers[0].encode(),
    ]
    with av.open(io.BytesIO(body)) as container:
        greys = [grey_of(frame.to_image()) for frame in container.decode(video=0)]
    assert len(greys) == 2 * FPS
    assert [frame_of(g) for g in greys] == list(range(20, 30)) + list(range(10))


def test_a_missing_fragment_is_an_error_in_the_stream(archive, recorded):
    """AWS reports a fragment it cannot give inside the stream (GetMediaForFragmentList's exception tags),
    and goes on with the others; here the error tags also carry GetMedia's names."""
    name, _, numbers, *_ = recorded
    missing = "9" + "0" * 46
    reply = archive.get_media_for_fragment_list(StreamName=name, Fragments=[numbers[1], missing, numbers[2]])
    body = reply["Payload"].read()
    assert re.findall(rb"AWS_KINESISVIDEO_FRAGMENT_NUMBER" + TAG_VALUE, body) == [
        numbers[1].encode(),
        missing.encode(),
        numbers[2].encode(),
    ]
    assert re.findall(rb"AWS_KINESISVIDEO_EXCEPTION_ERROR_CODE" + TAG_VALUE, body) == [b"4000"]
    assert re.findall(rb"AWS_KINESISVIDEO_ERROR_ID" + TAG_VALUE, body) == [b"4000"]
    with av.open(io.BytesIO(body)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2 * FPS
    assert error(archive.get_media_for_fragment_list, StreamName=unique("nope"), Fragments=[missing]) == (
        404,
        "ResourceNotFoundException",
    )


# --- GetClip --------------------------------------------------------------------------------------------
def clip_selector(start: float, end: float, kind: str = "PRODUCER_TIMESTAMP") -> dict:
    return {
        "FragmentSelectorType": kind,
        "TimestampRange": {"StartTimestamp": when(start), "EndTimestamp": when(end)},
    }


def decode_mp4(data: bytes) -> tuple[str, float, list[float], list[int]]:
    """(codec, duration s, frame times, frame indexes by grey level) of an MP4."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return (
            stream.codec_context.name,
            container.duration / 1e6,
            [round(float(f.time), 3) for f in frames],
            [frame_of(grey_of(f.to_image())) for f in frames],
        )


def test_a_clip_is_an_mp4_of_the_fragments_in_range(archive, recorded):
    name, t0, *_ = recorded
    reply = archive.get_clip(StreamName=name, ClipFragmentSelector=clip_selector(t0 - 0.5, t0 + 60))
    assert reply["ContentType"] == "video/mp4"
    data = reply["Payload"].read()
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # classic MP4, moov first
    codec, duration, times, frames = decode_mp4(data)
    assert codec == "h264" and duration == pytest.approx(SECONDS, abs=0.05)
    assert times == [round(i / FPS, 3) for i in range(SECONDS * FPS)]
    assert frames == list(range(SECONDS * FPS))
    # Only fragments that start in the range: [T0 + 0.5, T0 + 2] holds the second and third's starts.
    part = archive.get_clip(StreamName=name, ClipFragmentSelector=clip_selector(t0 + 0.5, t0 + 2))
    codec, duration, times, frames = decode_mp4(part["Payload"].read())
    assert frames == list(range(10, 30)) and times[0] == 0.0 and duration == pytest.approx(2, abs=0.05)


def test_clip_errors(archive, recorded):
    name, t0, *_ = recorded

    def clip(start: float, end: float, stream: str = name) -> tuple[int, str]:
        return error(archive.get_clip, StreamName=stream, ClipFragmentSelector=clip_selector(start, end))

    assert clip(t0 + 10, t0 + 20) == (404, "ResourceNotFoundException")  # no fragment starts there
    assert clip(t0, t0) == (400, "InvalidArgumentException")
    assert clip(t0, t0 + 24 * 3600 + 1) == (400, "InvalidArgumentException")
    assert clip(t0, t0 + 1, unique("nope")) == (404, "ResourceNotFoundException")


def test_the_aws_cli_saves_a_clip(server, recorded, tmp_path):
    name, t0, *_ = recorded
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
    }
    selector = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": when(t0).isoformat(), "EndTimestamp": when(t0 + 60).isoformat()},
    }
    out = tmp_path / "clip.mp4"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "awscli",
            "kinesis-video-archived-media",
            "--endpoint-url",
            server.url,
            "--output",
            "json",
            "get-clip",
            "--stream-name",
            name,
            "--clip-fragment-selector",
            json.dumps(selector),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ContentType"] == "video/mp4"
    codec, _, times, _ = decode_mp4(out.read_bytes())
    assert codec == "h264" and len(times) == SECONDS * FPS


def test_only_h264_and_h265_make_clips_but_images_take_any_video(server, archive):
    name = unique("mpeg4")
    t0 = round(time.time()) - 30.0
    ingest(server, name, encode_other("mpeg4", grey_frames(2 * FPS)), t0)
    assert error(archive.get_clip, StreamName=name, ClipFragmentSelector=clip_selector(t0, t0 + 5)) == (
        400,
        "UnsupportedStreamMediaTypeException",
    )
    images = archive.get_images(
        StreamName=name,
        ImageSelectorType="PRODUCER_TIMESTAMP",
        Format="PNG",
        StartTimestamp=when(t0 + 1.25),
        EndTimestamp=when(t0 + 1.25),
    )["Images"]
    assert frame_of(grey_of(Image.open(io.BytesIO(base64.b64decode(images[0]["ImageContent"]))))) == 12


def encode_other(codec: str, frames: list[numpy.ndarray]) -> bytes:
    """A live MKV as encode_mkv makes it, in another video codec (a keyframe, so a fragment, each second)."""
    sink = io.BytesIO()
    options = {
        "live": "1",
        "dash": "1",
        "cluster_time_limit": str(2**31 - 1),
        "cluster_size_limit": str(2**31 - 1),
    }

    class Writer:
        def write(self, data: bytes) -> int:
            return sink.write(bytes(data))

    with av.open(Writer(), mode="w", format="matroska", options=options) as container:
        stream = container.add_stream(codec, rate=FPS, options={"sc_threshold": "1000000000", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.codec_context.gop_size = FPS
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return sink.getvalue()


def test_clip_track_rules():
    """AWS's MP4 rules on the tracks (fragments with such tracks are hard to make with FFmpeg)."""
    avc = mkv.Track(1, 1, clips.H264, b"\x01d\x00\x0b\xff\xe1\x00")
    clips.check_clip_tracks({1: avc, 2: mkv.Track(2, 2, clips.AAC, b"\x12\x10")})
    with pytest.raises(clips.MissingCodecPrivate):
        clips.check_clip_tracks({1: mkv.Track(1, 1, clips.H264)})
    with pytest.raises(clips.InvalidCodecPrivate):
        clips.check_clip_tracks({1: mkv.Track(1, 1, clips.H265, b"\x01\x02")})
    with pytest.raises(clips.UnsupportedMedia):
        clips.check_clip_tracks({1: mkv.Track(1, 1, "V_VP8")})
    with pytest.raises(clips.UnsupportedMedia):
        clips.check_clip_tracks({1: avc, 2: mkv.Track(2, 2, "A_OPUS", b"x")})


# --- GetImages ------------------------------------------------------------------------------------------
def images(archive, name: str, start: float, end: float, **params):  # type: ignore[no-untyped-def]
    params.setdefault("ImageSelectorType", "PRODUCER_TIMESTAMP")
    params.setdefault("Format", "JPEG")
    return archive.get_images(StreamName=name, StartTimestamp=when(start), EndTimestamp=when(end), **params)


def picture(item: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["ImageContent"])))


def test_images_show_the_frame_of_each_instant(archive, recorded):
    name, t0, *_ = recorded
    got = images(archive, name, t0 + 0.05, t0 + 2.9, SamplingInterval=500)
    assert "NextToken" not in got
    items = got["Images"]
    # 0.05, 0.55, ..., 2.55: six instants, each showing the frame at or before it.
    assert [round(i["TimeStamp"].timestamp() - t0, 2) for i in items] == [0.05, 0.55, 1.05, 1.55, 2.05, 2.55]
    assert [frame_of(grey_of(picture(i))) for i in items] == [0, 5, 10, 15, 20, 25]
    assert all(picture(i).format == "JPEG" and picture(i).size == SIZE for i in items)
    # PNG, scaled; one side only keeps the aspect ratio.
    png = images(archive, name, t0 + 1.35, t0 + 1.35, Format="PNG", WidthPixels=64, HeightPixels=100)[
        "Images"
    ]
    assert picture(png[0]).format == "PNG" and picture(png[0]).size == (64, 100)
    assert frame_of(grey_of(picture(png[0]))) == 13
    wide = images(archive, name, t0 + 1, t0 + 1, WidthPixels=160, FormatConfig={"JPEGQuality": "30"})
    assert picture(wide["Images"][0]).size == (160, 120)


def test_images_say_no_media_where_there_is_no_video(archive, recorded):
    name, t0, *_ = recorded
    items = images(archive, name, t0 - 1, t0 + 4, SamplingInterval=1000)["Images"]
    assert [i.get("Error") for i in items] == ["NO_MEDIA", None, None, None, "NO_MEDIA", "NO_MEDIA"]
    assert ["ImageContent" in i for i in items] == [False, True, True, True, False, False]


def test_images_by_server_timestamp(archive, recorded):
    """On the server's clock a fragment runs from its arrival for its length. The test's fragments arrived
    within milliseconds of each other, so they overlap there: an instant goes to the latest that holds it."""
    name, t0, numbers, *_ = recorded
    selector = {
        "FragmentSelectorType": "PRODUCER_TIMESTAMP",
        "TimestampRange": {"StartTimestamp": when(t0 + 2), "EndTimestamp": when(t0 + 2)},
    }
    third = archive.list_fragments(StreamName=name, FragmentSelector=selector)["Fragments"][0]
    at = third["ServerTimestamp"].timestamp()
    items = images(
        archive, name, at + 0.25, at + 1.25, ImageSelectorType="SERVER_TIMESTAMP", SamplingInterval=1000
    )["Images"]
    assert frame_of(grey_of(picture(items[0]))) == 22  # the third fragment's frame 2 (at 0.2 s)
    assert items[1]["Error"] == "NO_MEDIA"


def test_images_page_by_25_or_max_results(archive, recorded):
    name, t0, *_ = recorded
    first = images(archive, name, t0, t0 + 5.8, SamplingInterval=200)  # 30 instants
    assert len(first["Images"]) == 25 and first["NextToken"]
    rest = images(archive, name, t0, t0 + 5.8, SamplingInterval=200, NextToken=first["NextToken"])
    assert len(rest["Images"]) == 5 and "NextToken" not in rest
    assert rest["Images"][0]["TimeStamp"].timestamp() == pytest.approx(t0 + 5.0, abs=1e-3)
    pages = list(
        archive.get_paginator("get_images").paginate(
            StreamName=name,
            ImageSelectorType="PRODUCER_TIMESTAMP",
            Format="JPEG",
            StartTimestamp=when(t0),
            EndTimestamp=when(t0 + 2.8),
            SamplingInterval=200,
            PaginationConfig={"PageSize": 4},
        )
    )
    assert [len(p["Images"]) for p in pages] == [4, 4, 4, 3]
    assert [frame_of(grey_of(picture(i))) for p in pages for i in p["Images"]] == list(range(0, 30, 2))
    # The token belongs to its request.
    assert error(
        archive.get_images,
        StreamName=name,
        ImageSelectorType="PRODUCER_TIMESTAMP",
        Format="JPEG",
        StartTimestamp=when(t0 + 1),
        EndTimestamp=when(t0 + 5.8),
        SamplingInterval=200,
        NextToken=first["NextToken"],
    ) == (400, "InvalidArgumentException")


def test_image_argument_errors(archive, recorded):
    name, t0, *_ = recorded
    for params in (
        {"SamplingInterval": 199},
        {"FormatConfig": {"JPEGQuality": "0"}},
        {"FormatConfig": {"JPEGQuality": "best"}},
    ):
        assert error(images, archive=archive, name=name, start=t0, end=t0 + 1, **params) == (
            400,
            "InvalidArgumentException",
        )
    assert error(images, archive=archive, name=name, start=t0, end=t0 + 301)[1] == "InvalidArgumentException"
    assert error(images, archive=archive, name=name, start=t0 + 1, end=t0)[1] == "InvalidArgumentException"
    assert error(images, archive=archive, name=unique("nope"), start=t0, end=t0 + 1) == (
        404,
        "ResourceNotFoundException",
    )
