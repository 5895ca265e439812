"""SigV4 over real HTTP: every way a request can fail authentication, and account isolation."""

from __future__ import annotations

import datetime as dt

import botocore.auth
import pytest
import requests

from tests.conftest import REGION, signed_post, unique

pytestmark = pytest.mark.storage

ACCOUNT_A, ACCOUNT_B = "111111111111", "222222222222"


def error(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["__type"]


def test_unsigned_request(server):
    response = signed_post(server.url, service="rekognition", target="ListStreamProcessors", sign=False)
    assert error(response) == (400, "MissingAuthenticationTokenException")


def test_unknown_access_key(server):
    response = signed_post(
        server.url, service="comprehend", target="ListEntityRecognizers", access_key="nobody"
    )
    assert error(response) == (400, "UnrecognizedClientException")


def test_wrong_secret(server, monkeypatch):
    response = signed_post(server.url, service="rekognition", target="ListStreamProcessors", secret="wrong")
    assert error(response) == (400, "InvalidSignatureException")
    assert "does not match" in response.json()["Message"]


def test_wrong_secret_through_boto3(server):
    client = server.client("rekognition", secret="wrong")
    with pytest.raises(client.exceptions.ClientError) as info:
        client.list_stream_processors()
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_expired_signature(server, monkeypatch):
    stale = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: stale)
    response = signed_post(server.url, service="rekognition", target="ListStreamProcessors")
    assert error(response) == (400, "InvalidSignatureException")
    assert response.json()["Message"].startswith("Signature expired")


def test_malformed_authorization_header(server):
    response = signed_post(
        server.url,
        service="rekognition",
        target="ListStreamProcessors",
        sign=False,
        headers={"Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/rekognition"},
    )
    assert error(response) == (400, "IncompleteSignatureException")


def test_scope_naming_another_service(server):
    response = signed_post(
        server.url, service="rekognition", target="ListStreamProcessors", scope_service="comprehend"
    )
    assert error(response) == (400, "InvalidSignatureException")
    assert "scoped to correct service" in response.json()["Message"]


def test_tampered_body_fails_the_signature(server):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method="POST",
        url=server.url + "/",
        data=b'{"Name": "a"}',
        headers={"X-Amz-Target": "RekognitionService.DescribeStreamProcessor"},
    )
    SigV4Auth(Credentials("test", "test"), "rekognition", REGION).add_auth(request)
    headers = dict(request.prepare().headers)
    response = requests.post(server.url + "/", data=b'{"Name": "b"}', headers=headers, timeout=10)
    assert error(response) == (400, "InvalidSignatureException")


@pytest.fixture
def two_accounts(make_server, tmp_path):
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        f'[AKIDA]\nsecret_access_key = "secret-a"\naccount_id = "{ACCOUNT_A}"\n'
        f'[AKIDB]\nsecret_access_key = "secret-b"\naccount_id = "{ACCOUNT_B}"\n'
    )
    return make_server("--credentials", str(credentials))


def _face_search(name: str, account: str) -> dict:
    return {
        "Name": name,
        "Input": {"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{REGION}:{account}:stream/{name}/1"}},
        "Output": {"KinesisDataStream": {"Arn": f"arn:aws:kinesis:{REGION}:{account}:stream/{name}"}},
        "Settings": {"FaceSearch": {"CollectionId": "faces"}},
        "RoleArn": f"arn:aws:iam::{account}:role/rek",
    }


def test_accounts_cannot_see_or_touch_each_others_resources(two_accounts):
    a = two_accounts.client("rekognition", access_key="AKIDA", secret="secret-a")
    b = two_accounts.client("rekognition", access_key="AKIDB", secret="secret-b")
    name = unique("shared")
    arn = a.create_stream_processor(**_face_search(name, ACCOUNT_A))["StreamProcessorArn"]
    assert f":{ACCOUNT_A}:" in arn

    assert b.list_stream_processors()["StreamProcessors"] == []
    for attempt in (
        lambda: b.describe_stream_processor(Name=name),
        lambda: b.delete_stream_processor(Name=name),
        lambda: b.list_tags_for_resource(ResourceArn=arn),
        lambda: b.tag_resource(ResourceArn=arn, Tags={"k": "v"}),
    ):
        with pytest.raises(b.exceptions.ResourceNotFoundException):
            attempt()
    # B may use the same name in its own account; A's processor is untouched.
    b.create_stream_processor(**_face_search(name, ACCOUNT_B))
    assert a.describe_stream_processor(Name=name)["StreamProcessorArn"] == arn
    assert a.list_tags_for_resource(ResourceArn=arn)["Tags"] == {}


def test_regions_are_separate(two_accounts):
    east = two_accounts.client("rekognition", access_key="AKIDA", secret="secret-a")
    west = two_accounts.client("rekognition", access_key="AKIDA", secret="secret-a", region_name="us-west-2")
    name = unique("regional")
    east.create_stream_processor(**_face_search(name, ACCOUNT_A))
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_stream_processor(Name=name)


def test_default_credential_is_refused_with_a_credentials_file(two_accounts):
    client = two_accounts.client("rekognition")
    with pytest.raises(client.exceptions.ClientError) as info:
        client.list_stream_processors()
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
