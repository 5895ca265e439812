"""Video stream pages: a stream fed with real H.264 by PutMedia shows its fragments on a timeline (two bursts
apart: two bars and a gap), plays back in the browser from a clicked point, shows its live edge and the
frame a FragmentNumber (or a timestamp) names; another account gets 404 on the pages and the media."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
import requests
from PIL import Image

from tests.conftest import RunningServer, unique
from tests.console.conftest import screenshot, sign_in
from tests.kvs_producer import encode_mkv, put_media

SIZE = (320, 240)
FPS = 10


def _push(server: RunningServer, name: str, start: float) -> None:
    data = encode_mkv(seconds=3, fps=FPS, size=SIZE, fragment_seconds=1.0)
    status, acks = put_media(server.url, data, stream_name=name, start_timestamp=start)
    assert status == 200, acks
    assert [a for a in acks if a.get("EventType") == "PERSISTED"], acks
    assert not [a for a in acks if a.get("EventType") == "ERROR"], acks


@pytest.fixture(scope="module")
def recorded(console_server: RunningServer) -> dict[str, Any]:
    """A stream with two bursts of three 1 s fragments, 4 s apart (server time): a gap between them."""
    name = unique("console-video")
    console_server.client("kinesisvideo").create_stream(
        StreamName=name, DataRetentionInHours=1, MediaType="video/h264"
    )
    first = time.time()
    _push(console_server, name, first)
    time.sleep(4.0)
    _push(console_server, name, first + 4.0)
    archive = console_server.client("kinesis-video-archived-media")
    listed = archive.list_fragments(StreamName=name)["Fragments"]
    assert len(listed) == 6, listed
    return {"name": name, "fragments": sorted(listed, key=lambda f: f["FragmentNumber"])}


def test_the_list_shows_the_stream(console: Any, console_server: RunningServer, recorded: dict) -> None:
    console.goto(f"{console_server.url}/console/videos")
    row = console.locator("#streams tr", has_text=recorded["name"])
    assert row.count() == 1
    assert "ACTIVE" in row.inner_text() and "video/h264" in row.inner_text()
    assert "none" not in row.locator("td").nth(5).inner_text()  # a latest fragment is known
    screenshot(console, "videos")


def test_timeline_playback_live_edge_and_a_records_frame(
    console: Any, console_server: RunningServer, recorded: dict
) -> None:
    name = recorded["name"]
    console.goto(f"{console_server.url}/console/videos/{name}")
    bars = console.locator("svg.timeline rect.fragment")
    assert bars.count() == 2  # the two bursts, and the gap between them
    assert "6 fragments" in console.locator("#timeline-summary").inner_text()
    assert "1 gap" in console.locator("#timeline-summary").inner_text()

    # A click on the first burst plays the archive from there: Chromium decodes the MP4 (H.264).
    bars.first.click()
    console.wait_for_function(
        "() => { const v = document.getElementById('player');"
        " return v.readyState >= 2 && v.currentTime > 0.5; }",
        timeout=20_000,
    )
    assert console.evaluate("document.getElementById('player').videoWidth") == SIZE[0]
    assert "Playing" in console.locator("#player-status").inner_text()

    # The live edge: the newest stored frame.
    console.check("#live-on")
    console.wait_for_function("() => document.getElementById('live-frame').naturalWidth > 0", timeout=10_000)
    assert "Fragment " in console.locator("#live-status").inner_text()

    # A record's FragmentNumber and FrameOffsetInSeconds (pasted as the record's JSON) show its frame.
    fragment = recorded["fragments"][1]
    number = fragment["FragmentNumber"]
    record = json.dumps(
        {"InputInformation": {"KinesisVideo": {"FragmentNumber": number, "FrameOffsetInSeconds": 0.5}}}
    )
    console.fill("#record-json", record)
    assert console.input_value("#record-fragment") == fragment["FragmentNumber"]
    console.click("#record-form button[type=submit]")
    console.wait_for_function("() => document.getElementById('record-image').naturalWidth > 0")
    assert console.evaluate("document.getElementById('record-image').naturalWidth") == SIZE[0]
    caption = console.locator("#record-caption").inner_text()
    assert fragment["FragmentNumber"] in caption and "0.500 s in" in caption
    screenshot(console, "video")

    # By a producer timestamp instead.
    console.fill("#record-fragment", "")
    console.fill("#record-offset", "")
    console.fill("#record-at", str(fragment["ProducerTimestamp"].timestamp() + 0.25))
    console.select_option("#record-kind", "producer")
    console.click("#record-form button[type=submit]")
    console.wait_for_function(
        "([number, offset]) => { const text = document.getElementById('record-caption').textContent;"
        " return text.includes(number) && text.includes(offset); }",
        arg=[number, "0.200 s in"],
    )

    # A fragment that is not there: the error, no image.
    console.fill("#record-fragment", "9" * 47)
    console.click("#record-form button[type=submit]")
    console.wait_for_function("() => !document.getElementById('record-error').hidden")
    assert "not found" in console.locator("#record-error").inner_text()


def test_media_routes_and_the_other_account(
    browser: Any, console: Any, console_server: RunningServer, recorded: dict
) -> None:
    name = recorded["name"]
    base = f"{console_server.url}/console/videos/{name}"
    first = recorded["fragments"][0]["ServerTimestamp"].timestamp()
    clip = console.request.get(f"{base}/clip.mp4?start={first}&end={first + 30}")
    assert clip.status == 200 and clip.headers["content-type"] == "video/mp4"
    assert clip.body()[4:8] == b"ftyp"
    assert clip.headers["cache-control"] == "private, max-age=60"  # a fixed span: the same clip again
    recent = console.request.get(f"{base}/clip.mp4?last=600")  # the "last seconds" button's clip
    assert recent.status == 200 and recent.body()[4:8] == b"ftyp"
    assert recent.headers["cache-control"] == "no-store"  # clicked again, the seconds before the new now
    still = console.request.get(f"{base}/frame.jpg?at=latest")
    assert still.status == 200 and still.body()[:2] == b"\xff\xd8"
    wrong = console.request.get(f"{base}/frame.jpg?at=yesterday")
    assert wrong.status == 400 and wrong.json()["code"] == "InvalidArgumentException"
    # Times no date holds (past year 9999, in seconds, milliseconds or ISO 8601): a 400, never a 500.
    for query in (
        "clip.mp4?start=1e300", "clip.mp4?start=3e14", "clip.mp4?start=9999-12-31T23:59:59-12:00",
        f"clip.mp4?start={first}&end=1e300", "frame.jpg?at=1e300", "frame.jpg?at=0001-01-01T00:00:00",
    ):  # fmt: skip
        answer = console.request.get(f"{base}/{query}")
        assert answer.status == 400 and answer.json()["code"] == "InvalidArgumentException", query
    # A FragmentNumber is ASCII digits (not other scripts' digits).
    arabic = console.request.get(f"{base}/frame.jpg", params={"fragment": "\u0661\u0662\u0663"})
    assert arabic.status == 400 and "digits" in arabic.json()["message"]
    # A width is rounded up to one of a few (so the stills cache serves every page asking for about it).
    resized = console.request.get(f"{base}/frame.jpg?at=latest&width=300")
    with Image.open(io.BytesIO(resized.body())) as picture:
        assert picture.width == 320
    # Without a session: 401, not the media.
    assert requests.get(f"{base}/frame.jpg?at=latest", timeout=10).status_code == 401

    other = sign_in(browser, console_server, "other", "other-secret")
    try:
        answer = other.goto(base)
        assert answer is not None and answer.status == 404
        for path in (f"clip.mp4?start={first}", "frame.jpg?at=latest",
                     f"frame.jpg?fragment={recorded['fragments'][0]['FragmentNumber']}"):  # fmt: skip
            assert other.request.get(f"{base}/{path}").status == 404, path
        other.goto(f"{console_server.url}/console/videos")
        assert name not in other.content()
    finally:
        other.context.close()


def test_timeline_bars_merge_narrow_fragments_and_keep_wide_ones_apart() -> None:
    from mlharbor.console import timeline

    start, end = 1_000_000.0, 1_000_600.0  # 10 minutes: 4 px is 2.4 s
    narrow = [timeline.Span(start + i, start + i + 1, 1, 10) for i in range(30)]  # 30 s of 1 s fragments
    wide = [timeline.Span(start + 100 + 10 * i, start + 110 + 10 * i, 1, 10) for i in range(3)]  # 10 s each
    after_gap = [timeline.Span(start + 300, start + 301, 1, 10)]
    merged = timeline.merge(narrow + wide + after_gap, 0.6, distinct=2.4)
    assert [(s.start - start, s.end - start, s.count) for s in merged] == [
        (0, 30, 30), (100, 110, 1), (110, 120, 1), (120, 130, 1), (300, 301, 1),
    ]  # fmt: skip
    drawing = str(timeline.svg(merged, start, end))
    assert drawing.count('class="fragment"') == 5 and drawing.count("<text") >= 5
    assert 'data-start="1000000.000"' in drawing
