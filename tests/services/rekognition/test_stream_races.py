"""Hostile clients on one stream processor name: a burst of concurrent Start/Stop/Update/Delete/Create
calls, then one Create + Start (a client retrying). Whatever the burst did, the processor ends with
exactly one session writing, and no worker of an earlier session or an earlier processor of that name
keeps running."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from tests.conftest import RunningServer, _fresh_database, aws_env, start_server, stop_server, wait_until
from tests.conftest import worker_pids as spawned
from tests.engines.video_files import portrait_frames, write_video
from tests.services.rekognition.aws_peers import moto
from tests.services.rekognition.test_stream_processors import Records, data_stream, processor, status

pytestmark = pytest.mark.storage
STOP_GRACE_S = 2.0


@pytest.fixture
def racing(tmp_path, moto_endpoint) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    """A server of its own (its worker processes are the test's to count), camera "cam" showing a face."""
    video = write_video(tmp_path / "hopper.mp4", portrait_frames(20), fps=10)
    url, drop = _fresh_database(tmp_path)
    server = start_server(
        tmp_path, url, "--video-stream", f"cam={video}", env={
            **aws_env(moto_endpoint, tmp_path), "MLHARBOR_WORKER_STOP_GRACE_SECONDS": str(STOP_GRACE_S),
        },
    )  # fmt: skip
    yield server
    stop_server(server)
    drop()


def _burst(server: RunningServer, name: str, create, seconds: float) -> list[str]:  # type: ignore[no-untyped-def]
    """20 threads calling Start/Stop/Update/Delete/Create on ``name`` at random; the error codes seen."""
    codes: list[str] = []
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rek = server.client("rekognition")
        rng = random.Random(seed)
        calls = [
            lambda: rek.start_stream_processor(Name=name),
            lambda: rek.stop_stream_processor(Name=name),
            lambda: rek.delete_stream_processor(Name=name),
            lambda: create(rek),
            lambda: rek.update_stream_processor(Name=name, DataSharingPreferenceForUpdate={"OptIn": False}),
        ]
        while time.monotonic() < deadline:
            try:
                rng.choice(calls)()
            except ClientError as exc:
                codes.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def test_a_burst_of_concurrent_calls_leaves_one_session_writing(racing, moto_endpoint):
    rek = racing.client("rekognition")
    kinesis = moto("kinesis", moto_endpoint)
    rek.create_collection(CollectionId="staff")
    output = data_stream(kinesis)
    name = "front-door"

    def create(client) -> None:  # type: ignore[no-untyped-def]
        processor(client, "cam", output, "staff", name=name)

    create(rek)
    codes = _burst(racing, name, create, seconds=2.0)
    # Refusals are the documented ones; never an internal error.
    assert set(codes) <= {"ResourceInUseException", "ResourceNotFoundException"}, set(codes)

    # A client retrying: make sure the processor exists and is stopped, then one Start.
    def settled() -> bool:
        try:
            create(rek)
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "ResourceInUseException"
        current = status(rek, name)
        if current in ("STARTING", "RUNNING"):
            with contextlib.suppress(ClientError):  # moved on meanwhile: look again
                rek.stop_stream_processor(Name=name)
        return current in ("STOPPED", "FAILED")

    wait_until(settled, timeout=30, interval=0.1, what="the processor settled")
    records = Records(kinesis, output)
    mark = len(records.read())
    rek.start_stream_processor(Name=name)
    wait_until(lambda: status(rek, name) == "RUNNING", timeout=60, what="RUNNING")
    # Every worker of earlier sessions is gone within the stop grace (plus a reconcile pass or two).
    wait_until(lambda: len(spawned(racing.process.pid)) == 1, timeout=STOP_GRACE_S + 10, interval=0.1,
               what="one stream worker left")  # fmt: skip

    before = len(records.read())
    started = time.monotonic()
    wait_until(lambda: time.monotonic() - started >= 4.0, timeout=10, interval=0.5, what="4 s of records")
    new = records.read()[before:]
    elapsed = time.monotonic() - started
    # One session analyses 5 frames/s and puts one record per frame: several writers would add up.
    assert 2.0 * elapsed <= len(new) <= 6.5 * elapsed, (len(new), elapsed)
    fragments = [
        int(r["InputInformation"]["KinesisVideo"]["FragmentNumber"]) for _, r in records.items[mark:]
    ]
    assert fragments == sorted(fragments), "fragment numbers went backwards: two sessions wrote"
    assert len(spawned(racing.process.pid)) == 1
    assert status(rek, name) == "RUNNING"  # nothing of an earlier session stopped it

    rek.stop_stream_processor(Name=name)
    wait_until(lambda: status(rek, name) == "STOPPED", timeout=30, what="STOPPED")
    rek.delete_stream_processor(Name=name)
    wait_until(lambda: not spawned(racing.process.pid), timeout=STOP_GRACE_S + 10, interval=0.1,
               what="no stream worker after Delete")  # fmt: skip
