"""DataRetentionInHours is honoured: lowering it deletes older fragments at once (readers see none, their
objects are removed by the retention pass), and deleting a stream removes its video."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import unique, wait_until
from tests.kvs_producer import encode_mkv, put_media

pytestmark = pytest.mark.storage


def stored_fragments(data_dir: Path, name: str) -> list[Path]:
    while True:
        try:  # the retention pass may remove a folder while it is walked: walk again
            return [p for p in (data_dir / "s3").rglob("*.mkv") if f"/stream/{name}/" in p.as_posix()]
        except FileNotFoundError:
            continue


def persisted(server, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    status, acks = put_media(server.url, encode_mkv(seconds=2, fragment_seconds=1), stream_name=name)
    assert status == 200
    return [a["FragmentNumber"] for a in acks if a.get("EventType") == "PERSISTED"]


def played(server, name: str) -> bytes:  # type: ignore[no-untyped-def]
    media = server.client("kinesis-video-media")
    answer = media.get_media(StreamName=name, StartSelector={"StartSelectorType": "EARLIEST"})
    return answer["Payload"].read()


def test_lowering_retention_deletes_older_fragments_and_deleting_a_stream_deletes_its_video(server):
    kvs = server.client("kinesisvideo")
    name, other = unique("ret"), unique("keep")
    for stream in (name, other):
        kvs.create_stream(StreamName=stream, DataRetentionInHours=2)
        assert len(persisted(server, stream)) == 2
    assert len(stored_fragments(server.data_dir, name)) == 2

    version = kvs.describe_stream(StreamName=name)["StreamInfo"]["Version"]
    kvs.update_data_retention(StreamName=name, CurrentVersion=version, Operation="DECREASE_DATA_RETENTION",
                              DataRetentionChangeInHours=2)  # fmt: skip
    assert b"AWS_KINESISVIDEO_FRAGMENT_NUMBER" not in played(server, name)  # gone for readers at once
    wait_until(lambda: not stored_fragments(server.data_dir, name), timeout=10, what="objects deleted")
    # Only that stream's video went; the other stream still plays.
    assert played(server, other).count(b"AWS_KINESISVIDEO_FRAGMENT_NUMBER") == 2
    assert len(stored_fragments(server.data_dir, other)) == 2

    arn = kvs.describe_stream(StreamName=other)["StreamInfo"]["StreamARN"]
    kvs.delete_stream(StreamARN=arn)
    wait_until(lambda: not stored_fragments(server.data_dir, other), timeout=10, what="objects deleted")
    # A stream created again under the same name starts empty.
    kvs.create_stream(StreamName=other, DataRetentionInHours=1)
    assert b"AWS_KINESISVIDEO_FRAGMENT_NUMBER" not in played(server, other)
