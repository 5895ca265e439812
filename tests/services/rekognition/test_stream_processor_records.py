"""Stream processor control plane available with the core: create, describe, list, delete, tags.

Start/Stop/Update (and the video work behind them) belong to the stream processor issue.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from mlharbor import model_packages
from tests import assets
from tests.conftest import REGION, unique
from tests.services.rekognition import label_model

pytestmark = pytest.mark.storage
ACCOUNT = "000000000000"


@pytest.fixture(autouse=True, scope="module")
def label_detector(server) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Connected home processors need a label detector for their labels: the tests' tiny ONNX model, removed
    afterwards (the server is the session's: other modules' sessions use the built-in detectors)."""
    label_model.install(server.data_dir / "models")
    yield
    for name in ("labels.onnx", "labels.json"):
        (server.data_dir / "models" / name).unlink(missing_ok=True)


def face_search(name: str, **changes):  # type: ignore[no-untyped-def]
    request = {
        "Name": name,
        "Input": {"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{name}/1"}},
        "Output": {"KinesisDataStream": {"Arn": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}"}},
        "Settings": {"FaceSearch": {"CollectionId": "faces", "FaceMatchThreshold": 70.0}},
        "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/rekognition",
    }
    request.update(changes)
    return request


def connected_home(name: str, **changes):  # type: ignore[no-untyped-def]
    request = {
        "Name": name,
        "Input": {"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{name}/1"}},
        "Output": {"S3Destination": {"Bucket": "results", "KeyPrefix": "cam"}},
        "Settings": {"ConnectedHome": {"Labels": ["PERSON", "PET"], "MinConfidence": 60.0}},
        "NotificationChannel": {"SNSTopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:events"},
        "RoleArn": f"arn:aws:iam::{ACCOUNT}:role/rekognition",
    }
    request.update(changes)
    return request


def test_create_then_describe_echoes_the_request(rekognition):
    name = unique("sp")
    request = face_search(name)
    arn = rekognition.create_stream_processor(**request)["StreamProcessorArn"]
    assert arn == f"arn:aws:rekognition:{REGION}:{ACCOUNT}:streamprocessor/{name}"
    described = rekognition.describe_stream_processor(Name=name)
    assert described["Status"] == "STOPPED"
    assert described["StreamProcessorArn"] == arn
    for member in ("Input", "Output", "RoleArn"):
        assert described[member] == request[member]
    # Stored as given (below 80 is applied as 80 when matching, not rewritten).
    assert described["Settings"]["FaceSearch"]["FaceMatchThreshold"] == 70.0
    assert described["CreationTimestamp"] == described["LastUpdateTimestamp"]


def test_connected_home_processor(rekognition):
    name = unique("home")
    rekognition.create_stream_processor(**connected_home(name))
    described = rekognition.describe_stream_processor(Name=name)
    assert described["Settings"]["ConnectedHome"]["Labels"] == ["PERSON", "PET"]
    assert described["NotificationChannel"]["SNSTopicArn"].endswith(":events")


@pytest.mark.parametrize(
    "changes",
    [
        {"Settings": {}},
        {"Settings": {"FaceSearch": {"CollectionId": "c"}, "ConnectedHome": {"Labels": ["PERSON"]}}},
        {"Output": {"S3Destination": {"Bucket": "bucket"}}},
        {"KmsKeyId": "alias/key"},
        {"Settings": {"FaceSearch": {"FaceMatchThreshold": 90.0}}},
    ],
    ids=["no-settings", "both-settings", "face-search-to-s3", "kms-on-face-search", "no-collection"],
)
def test_face_search_cross_field_rules(rekognition, changes):
    name = unique("bad")
    with pytest.raises(rekognition.exceptions.InvalidParameterException):
        rekognition.create_stream_processor(**face_search(name, **changes))
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.describe_stream_processor(Name=name)


@pytest.mark.parametrize(
    "changes",
    [
        {"NotificationChannel": None},
        {"Output": {"KinesisDataStream": {"Arn": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/x"}}},
        {"Settings": {"ConnectedHome": {"Labels": ["CAR"]}}},
    ],
    ids=["no-sns", "kinesis-output", "unknown-label"],
)
def test_connected_home_cross_field_rules(rekognition, changes):
    request = connected_home(unique("bad"), **changes)
    request = {k: v for k, v in request.items() if v is not None}
    with pytest.raises(rekognition.exceptions.InvalidParameterException):
        rekognition.create_stream_processor(**request)


def test_face_search_with_s3_destination_too_drops_it(rekognition):
    name = unique("both")
    request = face_search(name)
    request["Output"] = {**request["Output"], "S3Destination": {"Bucket": "ignored"}}
    rekognition.create_stream_processor(**request)
    assert "S3Destination" not in rekognition.describe_stream_processor(Name=name)["Output"]


def test_duplicate_name_and_shared_streams_are_in_use(rekognition):
    name = unique("dup")
    rekognition.create_stream_processor(**face_search(name))
    with pytest.raises(rekognition.exceptions.ResourceInUseException) as info:
        rekognition.create_stream_processor(**face_search(name))
    assert info.value.response["Error"]["Message"] == "Stream processor name already in use."
    same_input = face_search(unique("other"), Input=face_search(name)["Input"])
    with pytest.raises(rekognition.exceptions.ResourceInUseException):
        rekognition.create_stream_processor(**same_input)
    same_output = face_search(unique("other"), Output=face_search(name)["Output"])
    with pytest.raises(rekognition.exceptions.ResourceInUseException):
        rekognition.create_stream_processor(**same_output)


def test_account_limit(make_server):
    server = make_server(env={"MLHARBOR_STREAM_PROCESSOR_LIMIT": "2"})
    client = server.client("rekognition")
    client.create_stream_processor(**face_search("one"))
    client.create_stream_processor(**face_search("two"))
    with pytest.raises(client.exceptions.LimitExceededException) as info:
        client.create_stream_processor(**face_search("three"))
    assert (
        info.value.response["Error"]["Message"] == "Stream processor limit exceeded for account, limit - 2."
    )


def test_list_paginates_with_opaque_tokens(make_server):
    server = make_server()
    client = server.client("rekognition")
    names = [f"page-{i:02d}" for i in range(7)]
    for name in names:
        client.create_stream_processor(**face_search(name))
    first = client.list_stream_processors(MaxResults=3)
    assert [p["Name"] for p in first["StreamProcessors"]] == names[:3]
    pages = client.get_paginator("list_stream_processors").paginate(PaginationConfig={"PageSize": 3})
    seen = [p["Name"] for page in pages for p in page["StreamProcessors"]]
    assert seen == names
    assert all(p["Status"] == "STOPPED" for p in first["StreamProcessors"])
    tampered = first["NextToken"][:-2] + ("AA" if not first["NextToken"].endswith("AA") else "BB")
    with pytest.raises(client.exceptions.InvalidPaginationTokenException):
        client.list_stream_processors(NextToken=tampered)
    # A token is bound to the call it came from.
    comprehend = server.client("comprehend")
    with pytest.raises(comprehend.exceptions.InvalidRequestException):
        comprehend.list_entity_recognizers(NextToken=first["NextToken"])


def test_delete_removes_processor_and_tags(rekognition):
    name = unique("del")
    arn = rekognition.create_stream_processor(**face_search(name), Tags={"team": "vision"})[
        "StreamProcessorArn"
    ]
    rekognition.delete_stream_processor(Name=name)
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.describe_stream_processor(Name=name)
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.list_tags_for_resource(ResourceArn=arn)
    with pytest.raises(rekognition.exceptions.ResourceNotFoundException):
        rekognition.delete_stream_processor(Name=name)
    # The name and the streams are free again.
    rekognition.create_stream_processor(**face_search(name))


def test_tags(rekognition):
    name = unique("tags")
    arn = rekognition.create_stream_processor(**face_search(name), Tags={"a": "1"})["StreamProcessorArn"]
    rekognition.tag_resource(ResourceArn=arn, Tags={"b": "2", "a": "changed"})
    assert rekognition.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"a": "changed", "b": "2"}
    rekognition.untag_resource(ResourceArn=arn, TagKeys=["a", "missing"])
    assert rekognition.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"b": "2"}
    too_many = {f"k{i}": "v" for i in range(50)}
    with pytest.raises(rekognition.exceptions.ServiceQuotaExceededException):
        rekognition.tag_resource(ResourceArn=arn, Tags=too_many)
    assert rekognition.list_tags_for_resource(ResourceArn=arn)["Tags"] == {"b": "2"}


def test_connected_home_labels_need_an_installed_detector(make_server, tmp_path):
    # No model packages (never `mlharbor models fetch`ed) and no model in its models folder: PERSON only,
    # with the HOG fallback.
    bare = make_server(env={"MLHARBOR_MODEL_PACKAGES_DIR": str(tmp_path / "no-packages")})
    rekognition = bare.client("rekognition")
    with pytest.raises(ClientError) as excinfo:
        rekognition.create_stream_processor(**connected_home(unique("cam")))  # PERSON and PET
    error = excinfo.value.response["Error"]
    assert error["Code"] == "InvalidParameterException"
    assert error["Message"].startswith("No detector is installed for PET: run `mlharbor models fetch`")
    assert "labels.onnx" in error["Message"]
    assert rekognition.list_stream_processors()["StreamProcessors"] == []
    rekognition.create_stream_processor(
        **connected_home(unique("cam"), Settings={"ConnectedHome": {"Labels": ["PERSON"]}})
    )
    label_model.install(bare.data_dir / "models", {0: "PERSON", 1: "PET"})  # no packages
    rekognition.create_stream_processor(**connected_home(unique("cam")))
    with pytest.raises(ClientError) as excinfo:
        rekognition.create_stream_processor(
            **connected_home(unique("cam"), Settings={"ConnectedHome": {"Labels": ["ALL"]}})
        )
    assert "No detector is installed for PACKAGE:" in excinfo.value.response["Error"]["Message"]
    (bare.data_dir / "models" / "labels.onnx").write_bytes(b"not a model")  # a broken model: refused
    with pytest.raises(ClientError) as excinfo:
        rekognition.create_stream_processor(
            **connected_home(unique("cam"), Settings={"ConnectedHome": {"Labels": ["PERSON"]}})
        )
    assert excinfo.value.response["Error"]["Message"].startswith("The label detection model cannot be used")


def test_pet_is_built_in_once_the_model_packages_are_installed(make_server):
    rekognition = make_server().client("rekognition")  # the packages `make install-test` fetched
    assets.package(model_packages.HUMAN_MODELS)  # NanoDet, whose cat and dog are PET
    name = unique("cam")
    rekognition.create_stream_processor(**connected_home(name))  # PERSON and PET, without a model
    assert rekognition.describe_stream_processor(Name=name)["Settings"]["ConnectedHome"]["Labels"] == [
        "PERSON", "PET"
    ]  # fmt: skip
    rekognition.update_stream_processor(
        Name=name, SettingsForUpdate={"ConnectedHomeForUpdate": {"Labels": ["PET"]}}
    )
    for labels in (["ALL"], ["PACKAGE"]):  # PACKAGE comes only from a user's model
        with pytest.raises(ClientError) as excinfo:
            rekognition.create_stream_processor(
                **connected_home(unique("cam"), Settings={"ConnectedHome": {"Labels": labels}})
            )
        message = excinfo.value.response["Error"]["Message"]
        assert message.startswith(
            "No detector is installed for PACKAGE: put a YOLO-style ONNX detection model"
        )


@pytest.mark.parametrize(
    "selector",
    [
        {},
        {"KVSStreamStartSelector": {}},
        {"KVSStreamStartSelector": {"ProducerTimestamp": 1, "FragmentNumber": "1"}},
    ],
    ids=["empty", "no-position", "both-positions"],
)
def test_start_selector_needs_exactly_one_position(rekognition, selector):
    name = unique("home")
    rekognition.create_stream_processor(**connected_home(name))
    with pytest.raises(ClientError) as excinfo:
        rekognition.start_stream_processor(Name=name, StartSelector=selector)
    assert excinfo.value.response["Error"]["Code"] == "InvalidParameterException"
    assert rekognition.describe_stream_processor(Name=name)["Status"] == "STOPPED"
