"""The front door over real HTTP: both wire protocols, envelopes, request ids, health, metrics, CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import cbor2
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from tests.conftest import REGION, signed_post, unique

pytestmark = pytest.mark.storage


def test_boto3_round_trips_on_both_services(rekognition, comprehend):
    assert "StreamProcessors" in rekognition.list_stream_processors()
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.describe_stream_processor(Name=unique())
    # The session's server is shared: other tests' recognizers may be listed, this test's region has none.
    other = boto3.client("comprehend", region_name="eu-north-1", endpoint_url=comprehend.meta.endpoint_url,
                         aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    assert other.list_entity_recognizers()["EntityRecognizerPropertiesList"] == []
    assert other.list_entity_recognizer_summaries()["EntityRecognizerSummariesList"] == []
    assert isinstance(comprehend.list_entity_recognizers()["EntityRecognizerPropertiesList"], list)
    arn = f"arn:aws:comprehend:{REGION}:000000000000:entity-recognizer/{unique()}"
    with pytest.raises(comprehend.exceptions.ResourceNotFoundException):
        comprehend.describe_entity_recognizer(EntityRecognizerArn=arn)


def test_every_response_carries_a_request_id(server):
    ok = signed_post(server.url, service="rekognition", target="ListStreamProcessors")
    bad = signed_post(server.url, service="rekognition", target="DescribeStreamProcessor", body={"Name": "x"})
    assert ok.headers["Content-Type"] == "application/x-amz-json-1.1"
    ids = {ok.headers["x-amzn-RequestId"], bad.headers["x-amzn-RequestId"]}
    assert len(ids) == 2 and all(len(i) == 36 for i in ids)


def test_comprehend_error_body_is_type_and_message(server):
    arn = f"arn:aws:comprehend:{REGION}:000000000000:entity-recognizer/nothere"
    response = signed_post(
        server.url, service="comprehend", target="DescribeEntityRecognizer", body={"EntityRecognizerArn": arn}
    )
    assert response.status_code == 400
    assert set(response.json()) == {"__type", "Message"}
    assert response.json()["__type"] == response.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"


def test_unknown_operation(server):
    response = signed_post(server.url, service="rekognition", target="LaunchRockets")
    assert (response.status_code, response.json()["__type"]) == (400, "UnknownOperationException")


def test_unknown_service_prefix(server):
    response = signed_post(
        server.url, service="rekognition", headers={"X-Amz-Target": "DynamoDB_20120810.ListTables"}
    )
    assert (response.status_code, response.json()["__type"]) == (400, "UnknownOperationException")


def test_body_that_is_not_json(server):
    response = signed_post(
        server.url, service="comprehend", target="ListEntityRecognizers", body=b"{not json"
    )
    assert (response.status_code, response.json()["__type"]) == (400, "SerializationException")


def test_body_that_is_json_but_not_an_object(server):
    response = signed_post(server.url, service="rekognition", target="ListStreamProcessors", body=b"[1, 2]")
    assert (response.status_code, response.json()["__type"]) == (400, "SerializationException")


def test_body_over_16_mib_is_refused_and_server_survives(server):
    big = b'{"Name": "' + b"x" * (16 * 1024 * 1024 + 10) + b'"}'
    response = signed_post(server.url, service="rekognition", target="DescribeStreamProcessor", body=big)
    assert response.status_code == 413
    assert response.json()["__type"] == "RequestEntityTooLargeException"
    assert requests.get(server.url + "/health", timeout=5).status_code == 200


def test_chunked_body_over_the_limit_is_refused(server):
    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(17):
            yield b"x" * (1024 * 1024)

    response = requests.post(
        server.url + "/", data=chunks(), headers={"X-Amz-Target": "RekognitionService.ListStreamProcessors"}
    )
    assert response.status_code == 413


def test_unimplemented_operation_is_a_clear_501(comprehend):
    with pytest.raises(comprehend.exceptions.ClientError) as info:
        comprehend.detect_dominant_language(Text="Bonjour tout le monde")
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert error["Error"]["Code"] == "NotImplementedException"
    assert "DetectDominantLanguage" in error["Error"]["Message"]


def _cbor_call(url: str, operation: str, params: dict) -> tuple[int, Any, dict]:
    """Send a request exactly as an rpc-v2-cbor SDK does (botocore's own serializer and parser)."""
    service_model = botocore.session.get_session().get_service_model("comprehend")
    op = service_model.operation_model(operation)
    serialized = create_serializer("smithy-rpc-v2-cbor").serialize_to_request(params, op)
    request = AWSRequest(
        method="POST",
        url=url + serialized["url_path"],
        data=serialized["body"],
        headers=serialized["headers"],
    )
    SigV4Auth(Credentials("test", "test"), "comprehend", REGION).add_auth(request)
    prepared = request.prepare()
    raw = requests.post(prepared.url, data=serialized["body"], headers=dict(prepared.headers), timeout=10)
    response = {"status_code": raw.status_code, "headers": raw.headers, "body": raw.content}
    shape = op.output_shape if raw.status_code == 200 else None
    parsed = create_parser("smithy-rpc-v2-cbor").parse(response, shape)
    return raw.status_code, raw.headers, parsed


def test_comprehend_speaks_rpc_v2_cbor(server):
    status, headers, parsed = _cbor_call(server.url, "ListEntityRecognizers", {"MaxResults": 5})
    assert status == 200
    assert headers["Content-Type"] == "application/cbor"
    assert headers["smithy-protocol"] == "rpc-v2-cbor"
    assert parsed["EntityRecognizerPropertiesList"] == []


def test_cbor_errors_parse_to_the_aws_code(server):
    arn = f"arn:aws:comprehend:{REGION}:000000000000:entity-recognizer/absent"
    status, _, parsed = _cbor_call(server.url, "DescribeEntityRecognizer", {"EntityRecognizerArn": arn})
    assert status == 400
    assert parsed["Error"]["Code"] == "ResourceNotFoundException"
    status, _, parsed = _cbor_call(server.url, "ListEntityRecognizers", {"MaxResults": 900})
    assert (status, parsed["Error"]["Code"]) == (400, "ValidationException")


def test_cbor_body_that_is_not_cbor(server):
    response = signed_post(
        server.url,
        service="comprehend",
        path="/service/Comprehend_20171127/operation/ListEntityRecognizers",
        body=b"\xff\xff\xff",
        headers={"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"},
    )
    assert response.status_code == 400
    assert cbor2.loads(response.content)["__type"].endswith("#SerializationException")


def test_rekognition_does_not_speak_cbor(server):
    response = signed_post(
        server.url,
        service="rekognition",
        path="/service/RekognitionService/operation/ListStreamProcessors",
        body=cbor2.dumps({}),
        headers={"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"},
    )
    assert response.status_code == 400


def test_health_reports_version_and_database(server):
    health = requests.get(server.url + "/health", timeout=5)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["database"] is True and body["version"]


def test_metrics_count_requests_by_operation_and_status(server, rekognition):
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.describe_stream_processor(Name=unique())
    text = requests.get(server.url + "/metrics", timeout=5).text
    assert (
        'mlharbor_requests_total{operation="DescribeStreamProcessor",service="rekognition",status="400"}'
        in text
    )
    assert "mlharbor_request_seconds_bucket" in text


def test_aws_cli_works_unchanged(server):
    aws = shutil.which("aws") or str(Path(sys.executable).parent / "aws")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    base = [aws, "--endpoint-url", server.url, "--output", "json"]
    listed = subprocess.run(
        [*base, "rekognition", "list-stream-processors"], capture_output=True, text=True, env=env, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "StreamProcessors" in json.loads(listed.stdout)
    recognizers = subprocess.run(
        [*base, "comprehend", "list-entity-recognizers"], capture_output=True, text=True, env=env, timeout=60
    )
    assert recognizers.returncode == 0, recognizers.stderr
    assert json.loads(recognizers.stdout)["EntityRecognizerPropertiesList"] == []


def test_server_keeps_serving_after_a_client_hangs_up(server, rekognition):
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    assert "StreamProcessors" in rekognition.list_stream_processors()
