"""Admission control over real HTTP: per-account rates and load shedding."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import signed_post, unique, wait_until

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture
def slow_server(make_server, tmp_path):
    config = tmp_path / "mlharbor.toml"
    config.write_text(
        "[throttle]\n"
        "max_in_flight = 2\n"
        "[throttle.operations]\n"
        '"rekognition.DescribeStreamProcessor" = 0.5\n'
        '"ListEntityRecognizers" = 0.5\n'
    )
    return make_server("--config", str(config))


def _codes(responses: list[requests.Response]) -> list[str]:
    return [r.json().get("__type", "ok") if r.status_code != 200 else "ok" for r in responses]


def test_rekognition_account_rate(slow_server):
    responses = [
        signed_post(
            slow_server.url, service="rekognition", target="DescribeStreamProcessor", body={"Name": "x"}
        )
        for _ in range(5)
    ]
    throttled = [r for r in responses if r.json()["__type"] == "ProvisionedThroughputExceededException"]
    assert throttled, _codes(responses)
    assert all(r.status_code == 400 for r in throttled)
    # Other operations keep their own bucket, and the server stays healthy.
    assert (
        signed_post(slow_server.url, service="rekognition", target="ListStreamProcessors").status_code == 200
    )
    assert requests.get(slow_server.url + "/health", timeout=5).status_code == 200


def test_comprehend_account_rate(slow_server):
    responses = [
        signed_post(slow_server.url, service="comprehend", target="ListEntityRecognizers") for _ in range(5)
    ]
    assert "TooManyRequestsException" in _codes(responses)
    assert {r.status_code for r in responses} <= {200, 400}


def test_throttled_create_changes_nothing(slow_server, make_server, tmp_path):
    config = tmp_path / "create.toml"
    config.write_text('[throttle.operations]\n"CreateStreamProcessor" = 0.01\n')
    server = make_server("--config", str(config))
    names = [unique("thr") for _ in range(3)]
    responses = []
    for name in names:
        body = {
            "Name": name,
            "Input": {
                "KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:us-east-1:000000000000:stream/{name}/1"}
            },
            "Output": {"KinesisDataStream": {"Arn": f"arn:aws:kinesis:us-east-1:000000000000:stream/{name}"}},
            "Settings": {"FaceSearch": {"CollectionId": "c"}},
            "RoleArn": "arn:aws:iam::000000000000:role/r",
        }
        responses.append(
            signed_post(server.url, service="rekognition", target="CreateStreamProcessor", body=body)
        )
    created = {n for n, r in zip(names, responses, strict=True) if r.status_code == 200}
    assert len(created) == 1  # the bucket held one token
    listed = signed_post(server.url, service="rekognition", target="ListStreamProcessors").json()
    assert {p["Name"] for p in listed["StreamProcessors"]} == created


def test_saturated_server_sheds_load(slow_server):
    # Requests the server is working on fill the two in-flight slots (face detection runs in a thread)...
    image = base64.b64encode((DATA / "grace_hopper.jpg").read_bytes()).decode()

    def detect_faces() -> requests.Response:
        return signed_post(slow_server.url, service="rekognition", target="DetectFaces",
                           body={"Image": {"Bytes": image}})  # fmt: skip

    def describe_endpoint() -> requests.Response:
        return signed_post(slow_server.url, service="comprehend", target="DescribeEndpoint",
                           body={"EndpointArn": "x"})  # fmt: skip

    def shed() -> list[str]:
        # ...so the next ones are refused at once instead of queueing.
        with ThreadPoolExecutor(8) as pool:
            faces = [pool.submit(detect_faces) for _ in range(6)]
            others = [pool.submit(describe_endpoint) for _ in range(2)]
            responses = [f.result() for f in faces + others]
        codes = _codes(responses)
        refused = {(r.status_code, code) for r, code in zip(responses, codes, strict=True) if code != "ok"}
        assert refused <= {(500, "ThrottlingException"), (400, "TooManyRequestsException"),
                           (400, "ValidationException")}, refused  # fmt: skip
        return codes if {"ThrottlingException", "TooManyRequestsException"} <= set(codes) else []

    # Rekognition: 500 ThrottlingException (as its API reference documents); Comprehend: 400 TooManyRequests.
    wait_until(shed, timeout=30, interval=0, what="load shedding in both services' codes")
    # Once the slots free up, the server answers normally again.
    wait_until(lambda: detect_faces().status_code == 200, what="recovery")
