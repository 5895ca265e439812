"""The AWS query protocol (api/query.py): botocore's own serializer and parser on the other side of the codec,
for every operation of several query models, then the wire over real HTTP (boto3, raw requests, the CLI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import botocore.session
import pytest
import requests
from botocore.exceptions import ClientError
from botocore.model import ServiceModel, Shape
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from mlharbor import errors
from mlharbor.api import query
from mlharbor.api.shapes import Wire, parse_input, serialize_output
from tests.conftest import REGION, signed_post

FORM = "application/x-www-form-urlencoded; charset=utf-8"
# SNS, plus query models with what SNS lacks: flattened lists (sdb), long/double/timestamp inputs and maps
# (rds), blobs and timestamps (ses).
MODELS = ["sns", "sdb", "rds", "ses"]
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
TEXT = "v <&> \"'é\u2603 +%=.&#13; \t\r\n end"


def _model(name: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(name)


def sample(shape: Shape, depth: int = 0) -> Any:
    """A value of every member, two items per list and map, text that needs escaping on both wires."""
    kind = shape.type_name
    if kind == "structure":
        if depth > 5:
            return {}
        return {name: sample(member, depth + 1) for name, member in shape.members.items()}  # type: ignore[attr-defined]
    if kind == "list":
        return [] if depth > 5 else [sample(shape.member, depth + 1) for _ in range(2)]  # type: ignore[attr-defined]
    if kind == "map":
        return {} if depth > 5 else {f"k{i}{TEXT}": sample(shape.value, depth + 1) for i in range(2)}  # type: ignore[attr-defined]
    return {
        "string": TEXT,
        "character": "c",
        "integer": -7,
        "long": 2**40,
        "float": 0.25,
        "double": 1.5e300,
        "boolean": True,
        "blob": b"\x00\xffbin",
        "timestamp": WHEN,
    }[kind]


def _form(model: ServiceModel, operation: str, params: dict[str, Any]) -> bytes:
    request = create_serializer("query", include_validation=False).serialize_to_request(
        params, model.operation_model(operation)
    )
    assert request["headers"]["Content-Type"] == FORM
    return urlencode(request["body"]).encode()


def _operations(names: list[str]) -> list[tuple[str, str]]:
    return [(name, op) for name in names for op in _model(name).operation_names]


@pytest.mark.parametrize(("service", "operation"), _operations(MODELS))
def test_every_input_reads_back_as_botocore_sent_it(service, operation):
    model = _model(service)
    shape = model.operation_model(operation).input_shape
    params = sample(shape) if shape is not None else {}
    fields = query.decode_form(_form(model, operation, params))
    assert fields["Action"] == operation and fields["Version"] == model.metadata["apiVersion"]
    assert query.to_params(shape, fields) == params


@pytest.mark.parametrize(("service", "operation"), _operations(MODELS))
def test_every_output_parses_in_botocore_as_the_handler_returned_it(service, operation):
    model = _model(service)
    op_model = model.operation_model(operation)
    result = sample(op_model.output_shape) if op_model.output_shape is not None else {}
    body = query.encode_result(op_model, serialize_output(op_model.output_shape, result, Wire.QUERY), "rid-1")
    parsed = create_parser("query").parse(
        {"body": body, "headers": {}, "status_code": 200}, op_model.output_shape
    )
    assert parsed.pop("ResponseMetadata")["RequestId"] == "rid-1"
    assert parsed == result


def test_empty_lists_and_absent_members():
    model = _model("sns")
    op = model.operation_model("CreateTopic")
    params = {"Name": "t", "Tags": []}
    assert query.to_params(op.input_shape, query.decode_form(_form(model, "CreateTopic", params))) == params
    output = model.operation_model("ListTopics")
    body = query.encode_result(output, serialize_output(output.output_shape, {"Topics": []}, Wire.QUERY), "r")
    parsed = create_parser("query").parse(
        {"body": body, "headers": {}, "status_code": 200}, output.output_shape
    )
    assert parsed["Topics"] == [] and "NextToken" not in parsed


def _synthetic_flattened_map() -> ServiceModel:
    """No query model in botocore has a flattened map; the protocol has them, so the codec reads them."""
    shapes = {
        "In": {"type": "structure", "members": {"Labels": {"shape": "Labels"}, "When": {"shape": "Epoch"}}},
        "Out": {"type": "structure", "members": {"Labels": {"shape": "Labels"}}},
        "Labels": {
            "type": "map", "flattened": True,
            "key": {"shape": "S", "locationName": "Name"}, "value": {"shape": "S", "locationName": "Val"},
        },
        "S": {"type": "string"},
        "Epoch": {"type": "timestamp", "timestampFormat": "unixTimestamp"},
    }  # fmt: skip
    return ServiceModel(
        {
            "metadata": {"protocol": "query", "apiVersion": "2020-01-01", "xmlNamespace": "urn:x"},
            "operations": {
                "Op": {
                    "name": "Op",
                    "http": {"method": "POST", "requestUri": "/"},
                    "input": {"shape": "In"},
                    "output": {"shape": "Out", "resultWrapper": "OpResult"},
                }
            },
            "shapes": shapes,
        }  # fmt: skip
    )


def test_flattened_maps_and_epoch_timestamps():
    model = _synthetic_flattened_map()
    op = model.operation_model("Op")
    params = {"Labels": {"a": "1", "b": TEXT}, "When": WHEN}
    fields = query.decode_form(_form(model, "Op", params))
    assert fields["Labels.1.Name"] == "a" and "When" in fields
    assert query.to_params(op.input_shape, fields) == params
    body = query.encode_result(op, {"Labels": {"a": "1", "b": TEXT}}, "r")
    parsed = create_parser("query").parse({"body": body, "headers": {}, "status_code": 200}, op.output_shape)
    assert parsed["Labels"] == {"a": "1", "b": TEXT}


def test_typed_scalars_are_checked_then_validated():
    shape = _model("sns").operation_model("Subscribe").input_shape
    form = "Action=Subscribe&TopicArn=arn&Protocol=http&ReturnSubscriptionArn=maybe"
    with pytest.raises(errors.ConstraintViolations, match="returnSubscriptionArn"):
        query.to_params(shape, query.decode_form(form.encode()))
    fields = query.decode_form(b"Action=Subscribe&Protocol=http&ReturnSubscriptionArn=TRUE")
    params = query.to_params(shape, fields)
    assert params == {"Protocol": "http", "ReturnSubscriptionArn": True}
    with pytest.raises(errors.ConstraintViolations, match="topicArn"):  # required: the model's validation
        parse_input(shape, params, Wire.QUERY)
    ints = _model("rds").operation_model("DescribeDBInstances").input_shape
    with pytest.raises(errors.ConstraintViolations, match="maxRecords"):
        query.to_params(ints, {"MaxRecords": "12x"})
    assert query.to_params(ints, {"MaxRecords": "+20"}) == {"MaxRecords": 20}


def test_list_items_in_number_order_and_null_items_reported():
    shape = _model("sns").operation_model("CreateTopic").input_shape
    fields = {"Name": "t", "Tags.member.2.Key": "b", "Tags.member.2.Value": "2",
              "Tags.member.10.Key": "c", "Tags.member.10.Value": "3", "Tags.member.1.Key": "a",
              "Tags.member.1.Value": "1", "Tags.member.x.Key": "ignored"}  # fmt: skip
    assert [t["Key"] for t in query.to_params(shape, fields)["Tags"]] == ["a", "b", "c"]
    with pytest.raises(errors.ConstraintViolations, match="Map keys must not be null"):
        query.to_params(shape, {"Name": "t", "Attributes.entry.1.value": "v"})  # never a silently lost entry


def test_malformed_forms():
    with pytest.raises(errors.MalformedQueryString):
        query.decode_form(b"Action=ListTopics&Name=%ff%fe")
    with pytest.raises(errors.MalformedQueryString):
        query.decode_form(b"\xff\xfe=1")
    with pytest.raises(errors.InvalidParameterValue, match="U\\+0001"):
        query.decode_form(b"Action=CreateTopic&Name=a%01b")
    assert query.action_of(b"Name=x&Action=ListTopics") == "ListTopics"
    assert query.action_of(b"\xff") is None and query.action_of(b"Name=x") is None


def test_error_codes_come_from_the_error_shapes():
    sns = _model("sns")
    assert query.wire_error(errors.NotFoundException("x"), sns) == ("NotFound", 404, True)
    assert query.wire_error(errors.InvalidParameterValueException("x"), sns) == (
        "ParameterValueInvalid",
        400,
        True,
    )
    assert query.wire_error(errors.InternalErrorException(), sns) == ("InternalError", 500, False)
    assert query.wire_error(errors.ThrottledException(), sns) == ("Throttled", 429, True)
    assert query.wire_error(errors.UnknownOperationException("x"), sns) == ("InvalidAction", 400, True)
    assert query.wire_error(errors.InvalidSignatureException("x"), None) == (
        "SignatureDoesNotMatch",
        403,
        True,
    )
    status, body = query.encode_error(errors.NotFoundException("Topic <does> not exist"), sns, "rid")
    root = ET.fromstring(body)
    ns = {"n": sns.metadata["xmlNamespace"]}
    assert root.tag == f"{{{ns['n']}}}ErrorResponse" and status == 404
    assert root.findtext("n:Error/n:Type", namespaces=ns) == "Sender"
    assert root.findtext("n:Error/n:Message", namespaces=ns) == "Topic <does> not exist"
    assert root.findtext("n:RequestId", namespaces=ns) == "rid"
    parsed = create_parser("query").parse({"body": body, "headers": {}, "status_code": 404}, None)
    assert parsed["Error"]["Code"] == "NotFound"


def test_every_sns_error_shape_has_a_class_named_like_it():
    sns = _model("sns")
    names = {shape.name for op in sns.operation_names for shape in sns.operation_model(op).error_shapes}
    assert not sorted(name for name in names if errors.by_code(name) is None)


# --- Over HTTP ----------------------------------------------------------------------------------------------


def sns_post(server, body: str | dict[str, str], **kwargs: Any) -> requests.Response:  # type: ignore[no-untyped-def]
    if isinstance(body, dict):
        body = urlencode(body)
    return signed_post(server.url, service="sns", body=body, headers={"Content-Type": FORM}, **kwargs)


def _xml_error(response: requests.Response) -> tuple[int, str, str]:
    assert response.headers["Content-Type"] == "text/xml"
    ns = {"n": "http://sns.amazonaws.com/doc/2010-03-31/"}
    root = ET.fromstring(response.content)
    assert root.findtext("n:RequestId", namespaces=ns) == response.headers["x-amzn-RequestId"]
    return (
        response.status_code,
        root.findtext("n:Error/n:Code", namespaces=ns),
        root.findtext("n:Error/n:Type", namespaces=ns),
    )  # type: ignore[return-value]


@pytest.mark.storage
def test_boto3_unimplemented_action_is_a_501_in_xml(server):
    sns = server.client("sns")
    with pytest.raises(ClientError) as caught:
        sns.list_platform_applications()
    error = caught.value.response
    assert error["Error"]["Code"] == "NotImplementedException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert "ListPlatformApplications" in error["Error"]["Message"]


@pytest.mark.storage
def test_signature_problems_in_the_query_codes(server):
    assert _xml_error(sns_post(server, {"Action": "ListTopics"}, sign=False)) == (
        403, "MissingAuthenticationToken", "Sender"
    )  # fmt: skip
    assert _xml_error(sns_post(server, {"Action": "ListTopics"}, secret="wrong"))[:2] == (
        403, "SignatureDoesNotMatch"
    )  # fmt: skip
    assert _xml_error(sns_post(server, {"Action": "ListTopics"}, access_key="nobody"))[:2] == (
        403, "InvalidClientTokenId"
    )  # fmt: skip
    with pytest.raises(ClientError) as caught:
        server.client("sns", secret="wrong").list_platform_applications()
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


@pytest.mark.storage
def test_a_form_signed_for_another_service_is_dispatched_nowhere(server):
    # The credential scope names the service: a form signed for Rekognition is no SNS request.
    response = sns_post(server, {"Action": "ListTopics"}, scope_service="rekognition")
    assert _xml_error(response)[:2] == (400, "InvalidAction")


@pytest.mark.storage
def test_unknown_missing_and_malformed_actions(server):
    assert _xml_error(sns_post(server, {"Action": "LaunchRockets"}))[:2] == (400, "InvalidAction")
    assert _xml_error(sns_post(server, {"Version": "2010-03-31"}))[:2] == (400, "MissingAction")
    assert _xml_error(sns_post(server, "Action=ListTopics&NextToken=%ff"))[:2] == (
        400,
        "MalformedQueryString",
    )
    bad_boolean = {"Action": "Subscribe", "TopicArn": "arn:aws:sns:us-east-1:000000000000:t",
                   "Protocol": "http", "ReturnSubscriptionArn": "maybe"}  # fmt: skip
    assert _xml_error(sns_post(server, bad_boolean))[:2] == (400, "InvalidParameter")


@pytest.mark.storage
def test_other_methods_and_paths_keep_their_answers(server):
    # An unsigned GET that is not one of SNS's is an anonymous S3 request (GET / is ListBuckets): denied, in
    # S3's XML. Signed SNS actions are never GETs.
    for url in (f"{server.url}/", f"{server.url}/?Action=ListTopics"):
        response = requests.get(url, timeout=10)
        assert response.status_code == 403 and "<Code>AccessDenied</Code>" in response.text


@pytest.mark.storage
def test_the_other_protocols_still_answer_in_json(server):
    response = signed_post(server.url, service="rekognition", target="ListStreamProcessors")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-amz-json-1.1"
    # A form without a signature scope is still dispatched by the query codec, and answered in its XML.
    form = signed_post(server.url, service="sns", body="Action=ListTopics", headers={"Content-Type": FORM},
                       sign=False)  # fmt: skip
    assert _xml_error(form)[:2] == (403, "MissingAuthenticationToken")


@pytest.mark.skipif(shutil.which("aws", path=os.path.dirname(sys.executable)) is None, reason="no AWS CLI")
@pytest.mark.storage
def test_aws_cli_reads_query_errors(server, tmp_path):
    aws = shutil.which("aws", path=os.path.dirname(sys.executable))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(tmp_path / "none")}  # fmt: skip
    done = subprocess.run(
        [aws, "sns", "list-platform-applications", "--endpoint-url", server.url],  # type: ignore[list-item]
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "NotImplementedException" in done.stderr


ODD_VALUES = ("", "\t", "x" * 300_000, "true", "FALSE", "-1", "99999999999999999999999", "1e400", "nan",
              "%ff", "%00", "%01", "a\r\nb", "<xml>&amp;</xml>", "arn:aws:sns:us-east-1:000000000000:",
              "arn:aws:sns:us-east-1:000000000000:t:x:y", "http://", "\U0001f600")  # fmt: skip


@pytest.mark.storage
def test_mutated_sns_forms_never_fail_the_server(server):
    """Every implemented SNS operation, botocore's form for a plausible request with one field replaced,
    dropped, or joined by a stray one: never a 5xx, always the query protocol's XML."""
    import random

    from mlharbor.services.sns.operations import OPERATIONS

    model = _model("sns")
    topic = server.client("sns").create_topic(Name="fuzz")["TopicArn"]
    rng = random.Random(20261206)
    plausible = {"TopicArn": topic, "TargetArn": topic, "ResourceArn": topic, "SubscriptionArn": f"{topic}:x",
                 "Protocol": "http", "Endpoint": "http://127.0.0.1:9/",
                 "AttributeName": "DisplayName"}  # fmt: skip
    statuses = []
    for operation in sorted(OPERATIONS):
        shape = model.operation_model(operation).input_shape
        params = {name: plausible.get(name, value) for name, value in sample(shape).items()}
        params.pop("PhoneNumber", None)
        fields = dict(
            request.split("=", 1) for request in _form(model, operation, params).decode().split("&")
        )
        for _ in range(12):
            mutated = dict(fields)
            name = rng.choice([k for k in fields if k not in ("Action", "Version")] or ["Action"])
            choice = rng.random()
            if choice < 0.6:  # a value, sent as it is (bad escapes included) or percent-encoded
                value = rng.choice(ODD_VALUES)
                mutated[name] = value.replace("%", "%25") if rng.random() < 0.5 else value
            elif choice < 0.8:
                mutated.pop(name)
            else:
                mutated[f"{name}.member.{rng.choice(['0', '1', 'x', '99999999999'])}"] = rng.choice(
                    ODD_VALUES
                )
            body = "&".join(f"{k}={v}" for k, v in mutated.items())
            response = sns_post(server, body)
            statuses.append(response.status_code)
            assert response.status_code < 500 or response.status_code == 501, (
                operation,
                body[:300],
                response.text,
            )
            root = ET.fromstring(response.content)
            assert root.tag.endswith(("Response", "ErrorResponse")), response.text
    assert any(status >= 400 for status in statuses) and any(status == 200 for status in statuses)
