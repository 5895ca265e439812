"""Model-driven validation over real HTTP: max, pattern, enum, required, types, nesting.

Raw signed requests are used because boto3 validates required/min/types itself and would never
send these; other SDKs and hand-written clients do.
"""

from __future__ import annotations

import cbor2
import pytest

from mlharbor.api.shapes import Wire, parse_input
from mlharbor.errors import ConstraintViolations
from tests.conftest import model, signed_post, unique

pytestmark = pytest.mark.storage

KVS = "arn:aws:kinesisvideo:us-east-1:000000000000:stream/cam/1"
KDS = "arn:aws:kinesis:us-east-1:000000000000:stream/out"
ROLE = "arn:aws:iam::000000000000:role/rekognition"
ER_ARN = "arn:aws:comprehend:us-east-1:000000000000:entity-recognizer/r1"


def face_search(name: str, **changes: object) -> dict[str, object]:
    request: dict[str, object] = {
        "Name": name,
        "Input": {"KinesisVideoStream": {"Arn": KVS + name}},
        "Output": {"KinesisDataStream": {"Arn": KDS + name}},
        "Settings": {"FaceSearch": {"CollectionId": "c1", "FaceMatchThreshold": 85.0}},
        "RoleArn": ROLE,
    }
    request.update(changes)
    return request


R, C = "rekognition", "comprehend"
INVALID = ("InvalidParameterException", 400)
VALIDATION = ("ValidationException", 400)
SERIALIZATION = ("SerializationException", 400)

CASES = [
    # (id, service, operation, body, (code, status), fragment expected in the message)
    (
        "name-pattern",
        R,
        "CreateStreamProcessor",
        face_search("bad name!"),
        INVALID,
        "regular expression pattern",
    ),
    (
        "name-too-long",
        R,
        "CreateStreamProcessor",
        face_search("n" * 129),
        INVALID,
        "less than or equal to 128",
    ),
    ("name-missing", R, "DescribeStreamProcessor", {}, INVALID, "Value null at 'name'"),
    ("name-wrong-type", R, "DescribeStreamProcessor", {"Name": 5}, SERIALIZATION, "expected string"),
    ("max-results-min", R, "ListStreamProcessors", {"MaxResults": 0}, INVALID, "greater than or equal to 1"),
    (
        "token-too-long",
        R,
        "ListStreamProcessors",
        {"NextToken": "x" * 256},
        INVALID,
        "less than or equal to 255",
    ),
    (
        "nested-number-max",
        R,
        "CreateStreamProcessor",
        face_search("ok1", Settings={"FaceSearch": {"CollectionId": "c", "FaceMatchThreshold": 101}}),
        INVALID,
        "at 'settings.faceSearch.faceMatchThreshold'",
    ),
    ("role-pattern", R, "CreateStreamProcessor", face_search("ok2", RoleArn="role"), INVALID, "roleArn"),
    (
        "tag-key-aws-prefix",
        R,
        "CreateStreamProcessor",
        face_search("ok3", Tags={"aws:x": "y"}),
        INVALID,
        "Map keys",
    ),
    (
        "list-too-long",
        R,
        "CreateStreamProcessor",
        face_search("ok4", RegionsOfInterest=[{"BoundingBox": {"Width": 0.5}}] * 11),
        INVALID,
        "regionsOfInterest",
    ),
    (
        "nested-long-max",
        R,
        "StartStreamProcessor",
        {"Name": "x", "StopSelector": {"MaxDurationInSeconds": 500}},
        INVALID,
        "stopSelector.maxDurationInSeconds",
    ),
    (
        "nested-required",
        R,
        "CreateStreamProcessor",
        face_search("ok5", Settings={"ConnectedHome": {"MinConfidence": 50}}),
        INVALID,
        "Value null at 'settings.connectedHome.labels'",
    ),
    (
        "enum-in-list",
        R,
        "UpdateStreamProcessor",
        {"Name": "x", "ParametersToDelete": ["Bogus"]},
        INVALID,
        "parametersToDelete.1.member",
    ),
    (
        "struct-wrong-type",
        R,
        "CreateStreamProcessor",
        face_search("ok6", Input="kvs"),
        SERIALIZATION,
        "input",
    ),
    ("filter-enum", C, "ListEntityRecognizers", {"Filter": {"Status": "BOGUS"}}, VALIDATION, "filter.status"),
    (
        "max-results-max",
        C,
        "ListEntityRecognizers",
        {"MaxResults": 501},
        VALIDATION,
        "less than or equal to 500",
    ),
    (
        "arn-pattern",
        C,
        "DescribeEntityRecognizer",
        {"EntityRecognizerArn": "arn:nope"},
        VALIDATION,
        "pattern",
    ),
    (
        "arn-too-long",
        C,
        "DescribeEntityRecognizer",
        {"EntityRecognizerArn": ER_ARN + "a" * 250},
        VALIDATION,
        "less than or equal to 256",
    ),
    ("arn-missing", C, "StopTrainingEntityRecognizer", {}, VALIDATION, "entityRecognizerArn"),
    ("int-wrong-type", C, "ListEntityRecognizers", {"MaxResults": "ten"}, SERIALIZATION, "expected integer"),
    (
        "timestamp-wrong-type",
        C,
        "ListEntityRecognizers",
        {"Filter": {"SubmitTimeAfter": "yesterday"}},
        SERIALIZATION,
        "filter.submitTimeAfter",
    ),
    (
        "units-min",
        C,
        "CreateEndpoint",
        {"EndpointName": "e", "ModelArn": ER_ARN, "DesiredInferenceUnits": 0},
        VALIDATION,
        "desiredInferenceUnits",
    ),  # fmt: skip
    ("blob-not-base64", C, "DetectEntities", {"Bytes": "***", "LanguageCode": "en"}, SERIALIZATION, "base64"),
    # Issue 12: each of these was an HTTP 500 (UnicodeEncodeError, TypeError, SQLite OverflowError).
    ("token-lone-surrogate", R, "ListStreamProcessors", {"NextToken": "\ud800"}, SERIALIZATION, "nextToken"),
    (
        "collections-token-surrogate",
        R,
        "ListCollections",
        {"NextToken": "a\udfff"},
        SERIALIZATION,
        "surrogate",
    ),
    (
        "text-lone-surrogate",
        C,
        "DetectEntities",
        {"Text": "\udc00", "LanguageCode": "en"},
        SERIALIZATION,
        "text",
    ),
    (
        "tag-key-surrogate",
        R,
        "TagResource",
        {"ResourceArn": KVS, "Tags": {"\ud800": "v"}},
        SERIALIZATION,
        "tags",
    ),
    ("token-nul", R, "ListStreamProcessors", {"NextToken": "a\x00"}, SERIALIZATION, "U+0000"),
    (
        "tag-value-nul",
        C,
        "TagResource",
        {"ResourceArn": ER_ARN, "Tags": [{"Key": "k", "Value": "\x00"}]},
        SERIALIZATION,
        "tags.1.member.value",
    ),
    (
        "null-list-item",
        C,
        "TagResource",
        {"ResourceArn": ER_ARN, "Tags": [None]},
        VALIDATION,
        "Value null at 'tags.1.member' failed to satisfy constraint: Member must not be null",
    ),
    (
        "null-second-item",
        R,
        "UntagResource",
        {"ResourceArn": KVS, "TagKeys": ["k", None]},
        INVALID,
        "Value null at 'tagKeys.2.member'",
    ),
    (
        "null-map-value",
        R,
        "TagResource",
        {"ResourceArn": KVS, "Tags": {"k": None}},
        INVALID,
        "Map value must satisfy constraint: [Member must not be null]",
    ),
    ("null-required-member", R, "DescribeStreamProcessor", {"Name": None}, INVALID, "Value null at 'name'"),
    (
        "int-past-64-bits",
        R,
        "ListStreamProcessors",
        {"MaxResults": 2**63},
        SERIALIZATION,
        "out of range of integer",
    ),
    (
        "int-past-32-bits",
        R,
        "ListStreamProcessors",
        {"MaxResults": 2**31},
        SERIALIZATION,
        "out of range of integer",
    ),
    ("int-huge-float", R, "ListStreamProcessors", {"MaxResults": 1e308}, SERIALIZATION, "out of range"),
    ("int-part-float", R, "ListStreamProcessors", {"MaxResults": 10.5}, SERIALIZATION, "expected integer"),
    (
        "int-negative-64",
        C,
        "ListEntityRecognizers",
        {"MaxResults": -(2**63) - 1},
        SERIALIZATION,
        "maxResults",
    ),
    (
        "long-past-64-bits",
        R,
        "StartStreamProcessor",
        {"Name": "x", "StopSelector": {"MaxDurationInSeconds": 2**64}},
        SERIALIZATION,
        "out of range of long",
    ),
    (
        "float-past-float32",
        R,
        "CreateStreamProcessor",
        face_search("ok7", RegionsOfInterest=[{"BoundingBox": {"Width": 1e39}}]),
        SERIALIZATION,
        "out of range of float at 'regionsOfInterest.1.member.boundingBox.width'",
    ),
    (
        "ranged-float-past-float32",  # a Java float reads it as infinity: the model's range reports it
        R,
        "SearchFaces",
        {"CollectionId": "c", "FaceId": "f", "FaceMatchThreshold": 1e39},
        INVALID,
        "less than or equal to 100",
    ),
    (
        "float-past-double",
        R,
        "SearchFaces",
        {"CollectionId": "c", "FaceId": "f", "FaceMatchThreshold": 10**400},
        SERIALIZATION,
        "faceMatchThreshold",
    ),
]


@pytest.mark.parametrize(
    ("service", "operation", "body", "expected", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_constraint_violation_gets_the_services_error(server, service, operation, body, expected, fragment):
    response = signed_post(server.url, service=service, target=operation, body=body)
    code, status = expected
    payload = response.json()
    assert (response.status_code, payload["__type"]) == (status, code), payload
    assert response.headers["x-amzn-ErrorType"] == code
    assert fragment in payload["Message"]


def test_comprehend_reports_every_violation_in_coral_wording(server):
    body = {"RecognizerName": "bad name", "LanguageCode": "xx"}
    response = signed_post(server.url, service=C, target="CreateEntityRecognizer", body=body)
    message = response.json()["Message"]
    assert response.status_code == 400
    assert message.startswith("4 validation errors detected: ")  # role, input config, name pattern, language
    enum_rule = "Member must satisfy enum value set: [en, es,"
    assert f"Value 'xx' at 'languageCode' failed to satisfy constraint: {enum_rule}" in message
    assert (
        "Value null at 'dataAccessRoleArn' failed to satisfy constraint: Member must not be null" in message
    )


def test_single_violation_uses_the_singular(server):
    response = signed_post(server.url, service=C, target="ListEntityRecognizers", body={"MaxResults": 600})
    assert response.json()["Message"] == (
        "1 validation error detected: Value '600' at 'maxResults' failed to satisfy constraint: "
        "Member must have value less than or equal to 500"
    )


def test_rekognition_error_body_has_code_and_logref(server):
    response = signed_post(server.url, service=R, target="DescribeStreamProcessor", body={"Name": "a b"})
    payload = response.json()
    assert set(payload) == {"__type", "Code", "Logref", "Message"}
    assert payload["Code"] == payload["__type"] == "InvalidParameterException"
    assert payload["Logref"] == response.headers["x-amzn-RequestId"]


def test_invalid_create_stores_nothing(server, rekognition):
    name = unique("sp")
    bad = face_search(name, Settings={"FaceSearch": {"CollectionId": "c", "FaceMatchThreshold": 500}})
    response = signed_post(server.url, service=R, target="CreateStreamProcessor", body=bad)
    assert response.status_code == 400
    names = [p["Name"] for p in rekognition.list_stream_processors()["StreamProcessors"]]
    assert name not in names
    # The name is still free: a valid create with it succeeds.
    good = signed_post(server.url, service=R, target="CreateStreamProcessor", body=face_search(name))
    assert good.status_code == 200, good.text
    signed_post(server.url, service=R, target="DeleteStreamProcessor", body={"Name": name})


def test_pattern_violations_reach_the_server_through_boto3(rekognition):
    # botocore checks only required/min/types: this request leaves the client and we must refuse it.
    with pytest.raises(rekognition.exceptions.InvalidParameterException) as info:
        rekognition.describe_stream_processor(Name="no spaces allowed")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_every_model_pattern_compiles():
    from mlharbor.api.shapes import compiled_pattern
    from tests.conftest import model

    count = 0
    for service in (R, C):
        service_model = model(service)
        for name in service_model.shape_names:
            pattern = service_model.shape_for(name).metadata.get("pattern")
            if pattern:
                compiled_pattern(pattern)
                count += 1
    assert count > 50  # both models together carry dozens of distinct patterns


def test_the_largest_32_bit_max_results_is_served(server):
    # The model sets no maximum for ListStreamProcessors' MaxResults: any int32 is valid and must not
    # overflow the store (2^63 - 1 did, as limit + 1).
    response = signed_post(
        server.url, service=R, target="ListStreamProcessors", body={"MaxResults": 2**31 - 1}
    )
    assert response.status_code == 200, response.text


def test_null_optional_member_means_absent(server):
    response = signed_post(server.url, service=R, target="ListStreamProcessors", body={"MaxResults": None})
    assert response.status_code == 200, response.text


def test_null_entity_type_is_refused_and_nothing_is_created(server, comprehend):
    # It passed the parser and crashed the handler (TypeError) after the request was accepted as valid.
    name = unique("rec")
    body = {
        "RecognizerName": name,
        "LanguageCode": "en",
        "DataAccessRoleArn": "arn:aws:iam::000000000000:role/comprehend",
        "InputDataConfig": {
            "EntityTypes": [None],
            "Documents": {"S3Uri": "s3://bucket/docs"},
            "EntityList": {"S3Uri": "s3://bucket/list"},
        },
    }
    response = signed_post(server.url, service=C, target="CreateEntityRecognizer", body=body)
    assert (response.status_code, response.json()["__type"]) == (400, "ValidationException"), response.text
    assert "inputDataConfig.entityTypes.1.member" in response.json()["Message"]
    listed = comprehend.list_entity_recognizers(Filter={"RecognizerName": name})
    assert listed["EntityRecognizerPropertiesList"] == []


def _cbor_list_recognizers_error(server, body: bytes) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    response = signed_post(
        server.url,
        service=C,
        path="/service/Comprehend_20171127/operation/ListEntityRecognizers",
        body=body,
        headers={"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"},
    )
    return response.status_code, cbor2.loads(response.content)["__type"].rsplit("#", 1)[-1]


def test_cbor_number_past_its_type_is_a_serialization_error(server):
    body = cbor2.dumps({"MaxResults": 2**63})
    assert _cbor_list_recognizers_error(server, body) == (400, "SerializationException")


@pytest.mark.parametrize("body", [b" ", b"\n"])
def test_cbor_body_of_one_whitespace_byte_is_a_number_not_an_empty_body(server, body):
    # b" " is the CBOR integer -1: a body that is not a map, unlike JSON where it is an empty body.
    assert _cbor_list_recognizers_error(server, body) == (400, "SerializationException")


@pytest.mark.parametrize(
    ("member", "value", "expected"),
    [
        ("MaxResults", 2**31 - 1, 2**31 - 1),
        ("MaxResults", 10.0, 10),  # a whole float is read as the integer, as AWS's deserializers do
        ("MaxResults", -(2**31), None),  # in range of the type: the model's min reports it
        ("NextToken", "\U0001f600", "\U0001f600"),  # a surrogate pair is one valid character
    ],
)
def test_parse_input_keeps_what_fits_the_type(member, value, expected):
    shape = model(R).operation_model("ListStreamProcessors").input_shape
    if expected is None:
        with pytest.raises(ConstraintViolations):
            parse_input(shape, {member: value}, Wire.JSON)
    else:
        assert parse_input(shape, {member: value}, Wire.JSON) == {member: expected}
