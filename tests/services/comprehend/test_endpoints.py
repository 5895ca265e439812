"""Recognizer endpoints and DetectEntities over real HTTP: real serving workers, real inference."""

from __future__ import annotations

import concurrent.futures
import os
import signal

import pytest
from botocore.exceptions import ClientError

from tests.conftest import REGION, start_server, stop_server, unique, wait_until, worker_pids
from tests.services.comprehend.conftest import train_recognizer
from tests.services.comprehend.corpus import UNSEEN_ENTITIES, UNSEEN_TEXT

pytestmark = pytest.mark.storage

TEXT, EXPECTED = UNSEEN_TEXT, UNSEEN_ENTITIES


def describe(client, arn: str) -> dict:  # type: ignore[no-untyped-def]
    return client.describe_endpoint(EndpointArn=arn)["EndpointProperties"]


def wait_endpoint(client, arn: str, statuses: set[str], timeout: float = 90) -> dict:  # type: ignore[no-untyped-def]
    def reached() -> dict | None:
        props = describe(client, arn)
        return props if props["Status"] in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.1, what=f"{arn} to reach {statuses}")


def create_endpoint(client, model_arn: str, units: int = 1, **extra) -> str:  # type: ignore[no-untyped-def]
    return client.create_endpoint(
        EndpointName=unique("ep"), ModelArn=model_arn, DesiredInferenceUnits=units, **extra
    )["EndpointArn"]


def delete_and_wait(client, arn: str) -> None:  # type: ignore[no-untyped-def]
    client.delete_endpoint(EndpointArn=arn)

    def gone() -> bool:
        try:
            describe(client, arn)
        except client.exceptions.ResourceNotFoundException:
            return True
        return False

    wait_until(gone, timeout=30, interval=0.1, what=f"{arn} to be deleted")


def error_code(call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return info.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def endpoint(server, recognizer) -> str:  # type: ignore[no-untyped-def]
    """An IN_SERVICE endpoint with 10 inference units (so the tests stay under AWS's rate)."""
    client = server.client("comprehend")
    arn = create_endpoint(client, recognizer, units=10)
    wait_endpoint(client, arn, {"IN_SERVICE"})
    yield arn
    delete_and_wait(client, arn)


def test_endpoint_lifecycle(server, comprehend, recognizer):
    token = unique("token")
    arn = create_endpoint(
        comprehend, recognizer, ClientRequestToken=token, Tags=[{"Key": "team", "Value": "nlp"}]
    )
    assert arn.startswith(f"arn:aws:comprehend:{REGION}:000000000000:entity-recognizer-endpoint/ep-")
    first = describe(comprehend, arn)
    assert first["Status"] == "CREATING"
    assert first["ModelArn"] == first["DesiredModelArn"] == recognizer
    assert first["DesiredInferenceUnits"] == 1 and first["CurrentInferenceUnits"] == 0

    # A retry with the same token is the same request; the name is taken for anything else.
    name = arn.rsplit("/", 1)[1]
    again = comprehend.create_endpoint(
        EndpointName=name, ModelArn=recognizer, DesiredInferenceUnits=1, ClientRequestToken=token,
        Tags=[{"Key": "team", "Value": "nlp"}],
    )  # fmt: skip
    assert again["EndpointArn"] == arn and again["ModelArn"] == recognizer
    assert error_code(
        comprehend.create_endpoint, EndpointName=name, ModelArn=recognizer, DesiredInferenceUnits=1
    ) == ("ResourceInUseException")

    props = wait_endpoint(comprehend, arn, {"IN_SERVICE"})
    assert props["CurrentInferenceUnits"] == 1 and props["ModelArn"] == recognizer
    assert props["CreationTime"] <= props["LastModifiedTime"]
    assert comprehend.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "nlp"}]
    listed = comprehend.list_endpoints(Filter={"ModelArn": recognizer})["EndpointPropertiesList"]
    assert arn in [p["EndpointArn"] for p in listed]
    assert arn not in [
        p["EndpointArn"]
        for p in comprehend.list_endpoints(Filter={"Status": "FAILED"})["EndpointPropertiesList"]
    ]
    # A recognizer an endpoint serves cannot be deleted.
    assert (
        error_code(comprehend.delete_entity_recognizer, EntityRecognizerArn=recognizer)
        == "ResourceInUseException"
    )
    assert comprehend.describe_entity_recognizer(EntityRecognizerArn=recognizer)[
        "EntityRecognizerProperties"
    ]["Status"] in {"TRAINED", "TRAINED_WITH_WARNING"}

    comprehend.delete_endpoint(EndpointArn=arn)
    assert describe(comprehend, arn)["Status"] in {"DELETING"}
    comprehend.delete_endpoint(EndpointArn=arn)  # a repeated delete changes nothing
    delete_and_wait(comprehend, arn)
    assert error_code(comprehend.list_tags_for_resource, ResourceArn=arn) == "ResourceNotFoundException"


def test_detect_entities_finds_trained_types_with_code_point_offsets(comprehend, endpoint):
    entities = comprehend.detect_entities(Text=TEXT, EndpointArn=endpoint)["Entities"]
    found = {(e["Text"], e["Type"]) for e in entities}
    assert len(found & EXPECTED) >= 3, entities
    for entity in entities:
        # Offsets count Unicode code points, as AWS documents: the emoji is one position, not two or four.
        assert TEXT[entity["BeginOffset"] : entity["EndOffset"]] == entity["Text"]
        assert entity["Type"] in {"PERSON", "PRODUCT", "CITY"}
        assert 0.0 < entity["Score"] <= 1.0
        if (entity["Text"], entity["Type"]) in EXPECTED:  # and exactly where a str index puts it
            assert entity["BeginOffset"] == TEXT.index(entity["Text"]) >= 2
    assert (
        comprehend.detect_entities(Text="The meeting is scheduled for Monday morning.", EndpointArn=endpoint)[
            "Entities"
        ]
        == []
    )


def test_concurrent_requests_all_get_their_own_answers(server, endpoint):
    # 24 requests in about a second can exceed the endpoint's 20 documents/s (each serving worker enforces
    # its share of the units): the client retries throttling with backoff, as the AWS SDKs do by default.
    retries = {"max_attempts": 10, "mode": "standard"}
    client = server.client("comprehend", max_pool_connections=8, retries=retries)
    names = ["Nadia Okafor", "Jörg Åberg", "Zoë Müller", "Liam Novak"] * 3
    texts = [f"Please contact {name} about the order." for name in names]

    def detect(text: str) -> list[str]:
        return [e["Text"] for e in client.detect_entities(Text=text, EndpointArn=endpoint)["Entities"]]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(detect, texts))
    # Each answer is its own text's: the same as asking one at a time (whatever this session's model finds).
    assert results == [detect(text) for text in texts]
    assert sum(name in found for name, found in zip(names, results, strict=True)) >= len(names) // 2


def test_detect_entities_errors(server, comprehend, endpoint, recognizer):
    # Too large: 10 KB of UTF-8 is the custom real-time limit (multibyte characters count as bytes).
    assert error_code(comprehend.detect_entities, Text="é" * 5001, EndpointArn=endpoint) == (
        "TextSizeLimitExceededException"
    )
    comprehend.detect_entities(Text="é" * 5000, EndpointArn=endpoint)
    # Built-in entity types need AWS's pretrained model: a clear refusal, never invented output.
    with pytest.raises(comprehend.exceptions.UnsupportedLanguageException) as info:
        comprehend.detect_entities(Text="Hello Nadia", LanguageCode="en")
    assert "EndpointArn" in info.value.response["Error"]["Message"]
    # Wrong ARN kinds: the model's pattern admits only entity recognizer endpoints.
    assert error_code(comprehend.detect_entities, Text="x", EndpointArn=recognizer) == "ValidationException"
    classifier = f"arn:aws:comprehend:{REGION}:000000000000:document-classifier-endpoint/doc"
    assert error_code(comprehend.detect_entities, Text="x", EndpointArn=classifier) == "ValidationException"
    missing = endpoint.rsplit("/", 1)[0] + "/nope"
    assert (
        error_code(comprehend.detect_entities, Text="x", EndpointArn=missing) == "ResourceNotFoundException"
    )
    other_account = endpoint.replace(":000000000000:", ":111111111111:")
    assert error_code(comprehend.detect_entities, Text="x", EndpointArn=other_account) == (
        "ResourceNotFoundException"
    )
    assert (
        error_code(comprehend.detect_entities, Bytes=b"%PDF-1.4", EndpointArn=endpoint)
        == "InvalidRequestException"
    )


def test_detect_on_an_endpoint_that_is_not_in_service(server, comprehend, recognizer):
    arn = create_endpoint(comprehend, recognizer)
    if describe(comprehend, arn)["Status"] == "CREATING":  # a model loads in about a second
        assert error_code(comprehend.detect_entities, Text="Hello", EndpointArn=arn) == (
            "ResourceUnavailableException"
        )
    wait_endpoint(comprehend, arn, {"IN_SERVICE"})
    comprehend.delete_endpoint(EndpointArn=arn)
    assert error_code(comprehend.detect_entities, Text="Hello", EndpointArn=arn) in {
        "ResourceUnavailableException", "ResourceNotFoundException",
    }  # fmt: skip
    delete_and_wait(comprehend, arn)


def test_inference_units_cap_throughput_like_aws(server, comprehend, recognizer):
    arn = create_endpoint(comprehend, recognizer, units=1)
    wait_endpoint(comprehend, arn, {"IN_SERVICE"})
    try:
        # One unit: 100 characters/s. A 400-character request is served, then the next must wait ~4 s.
        comprehend.detect_entities(Text="Nadia Okafor. " * 28 + "Hi", EndpointArn=arn)
        with pytest.raises(comprehend.exceptions.TooManyRequestsException) as info:
            comprehend.detect_entities(Text="Nadia Okafor flew to Zürich.", EndpointArn=arn)
        assert "inference unit" in info.value.response["Error"]["Message"]
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    finally:
        delete_and_wait(comprehend, arn)


def test_create_and_update_errors(server, comprehend, recognizer, endpoint):
    other_model = f"arn:aws:comprehend:{REGION}:000000000000:entity-recognizer/{unique('none')}"
    assert error_code(comprehend.create_endpoint, EndpointName=unique("ep"), ModelArn=other_model,
                      DesiredInferenceUnits=1) == "ResourceNotFoundException"  # fmt: skip
    assert error_code(comprehend.create_endpoint, EndpointName=unique("ep"), ModelArn=recognizer,
                      DesiredInferenceUnits=11) == "ResourceLimitExceededException"  # fmt: skip
    assert error_code(comprehend.create_endpoint, EndpointName="bad_name!", ModelArn=recognizer,
                      DesiredInferenceUnits=1) == "ValidationException"  # fmt: skip
    assert error_code(comprehend.update_endpoint, EndpointArn=endpoint) == "InvalidRequestException"
    assert error_code(comprehend.update_endpoint, EndpointArn=endpoint, DesiredModelArn=other_model) == (
        "ResourceNotFoundException"
    )
    assert describe(comprehend, endpoint)["Status"] == "IN_SERVICE"  # refusals changed nothing
    with pytest.raises(comprehend.exceptions.InvalidFilterException):
        comprehend.list_endpoints(Filter={"Status": "IN_SERVICE", "ModelArn": recognizer})


def test_untrained_recognizer_cannot_get_an_endpoint(server, comprehend):
    failed = comprehend.create_entity_recognizer(
        RecognizerName=unique("rec"), LanguageCode="en", DataAccessRoleArn="arn:aws:iam::000000000000:role/r",
        InputDataConfig={"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": "s3://nobucket/d.txt"},
                         "Annotations": {"S3Uri": "s3://nobucket/a.csv"}},
    )["EntityRecognizerArn"]  # fmt: skip
    assert error_code(comprehend.create_endpoint, EndpointName=unique("ep"), ModelArn=failed,
                      DesiredInferenceUnits=1) == "ResourceUnavailableException"  # fmt: skip


def test_update_keeps_serving_and_changes_units(server, comprehend, recognizer):
    arn = create_endpoint(comprehend, recognizer, units=2)
    wait_endpoint(comprehend, arn, {"IN_SERVICE"})
    try:
        answer = comprehend.update_endpoint(EndpointArn=arn, DesiredInferenceUnits=3)
        assert answer["DesiredModelArn"] == recognizer
        props = describe(comprehend, arn)
        assert props["Status"] == "UPDATING"
        assert props["DesiredInferenceUnits"] == 3 and props["CurrentInferenceUnits"] == 2
        assert error_code(comprehend.update_endpoint, EndpointArn=arn, DesiredInferenceUnits=1) == (
            "ResourceInUseException"
        )
        assert error_code(comprehend.delete_endpoint, EndpointArn=arn) == "ResourceInUseException"
        # The old servers answer while the new ones start.
        comprehend.detect_entities(Text="Nadia Okafor flew to Zürich.", EndpointArn=arn)
        props = wait_endpoint(comprehend, arn, {"IN_SERVICE"})
        assert props["CurrentInferenceUnits"] == 3
        assert props["LastModifiedTime"] > props["CreationTime"]
        entities = comprehend.detect_entities(Text="Nadia Okafor flew to Zürich.", EndpointArn=arn)[
            "Entities"
        ]
        assert entities
    finally:
        delete_and_wait(comprehend, arn)


def test_endpoint_survives_a_killed_worker_and_a_server_crash(make_server):
    server = make_server(env={"MLHARBOR_INFERENCE_UNIT_LIMITS": "false"})
    client = server.client("comprehend")
    recognizer = train_recognizer(server)
    arn = create_endpoint(client, recognizer)
    wait_endpoint(client, arn, {"IN_SERVICE"})
    before = client.detect_entities(Text=TEXT, EndpointArn=arn)["Entities"]
    assert before

    # A serving worker killed outright is replaced, and requests keep being answered.
    [worker] = wait_until(lambda: (pids := worker_pids(server.process.pid)) and len(pids) == 1 and pids)
    os.kill(worker, signal.SIGKILL)
    assert client.detect_entities(Text=TEXT, EndpointArn=arn)["Entities"] == before
    assert describe(client, arn)["Status"] == "IN_SERVICE"

    # The whole server killed: the endpoint comes back IN_SERVICE and answers the same.
    server.process.kill()
    server.process.wait()
    again = start_server(
        server.data_dir.parent, server.database_url, env={"MLHARBOR_INFERENCE_UNIT_LIMITS": "false"}
    )
    try:
        client = again.client("comprehend")
        assert describe(client, arn)["Status"] == "IN_SERVICE"
        assert client.detect_entities(Text=TEXT, EndpointArn=arn)["Entities"] == before
    finally:
        stop_server(again)


def test_list_endpoints_pages(make_server):
    server = make_server()
    client = server.client("comprehend")
    recognizer = train_recognizer(server, docs=100, types=("PERSON",))
    created = [create_endpoint(client, recognizer) for _ in range(3)]
    first = client.list_endpoints(MaxResults=2)
    assert [p["EndpointArn"] for p in first["EndpointPropertiesList"]] == created[:2]
    rest = client.list_endpoints(MaxResults=2, NextToken=first["NextToken"])
    assert [p["EndpointArn"] for p in rest["EndpointPropertiesList"]] == created[2:]
    assert "NextToken" not in rest
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_endpoints(NextToken="not-a-token")


def test_a_model_that_cannot_load_fails_the_endpoint_and_an_update_recovers_it(make_server):
    server = make_server()
    client = server.client("comprehend")
    recognizer = train_recognizer(server, docs=100, types=("PERSON",))
    [artifact] = (server.data_dir / "s3" / "mlharbor-models").rglob("model.tar.gz")
    saved = artifact.read_bytes()
    artifact.write_bytes(b"not a model")  # e.g. a corrupted object store
    arn = create_endpoint(client, recognizer)
    props = wait_endpoint(client, arn, {"FAILED", "IN_SERVICE"})
    assert props["Status"] == "FAILED" and "could not start" in props["Message"]
    assert (
        error_code(client.detect_entities, Text="Nadia Okafor", EndpointArn=arn)
        == "ResourceUnavailableException"
    )

    artifact.write_bytes(saved)
    client.update_endpoint(EndpointArn=arn, DesiredInferenceUnits=1)
    # Nothing served while the failed endpoint is being redeployed: a clear refusal, not a wait.
    if describe(client, arn)["Status"] == "UPDATING":
        assert error_code(client.detect_entities, Text="Nadia Okafor", EndpointArn=arn) == (
            "ResourceUnavailableException"
        )
    props = wait_endpoint(client, arn, {"IN_SERVICE", "FAILED"})
    assert props["Status"] == "IN_SERVICE" and props["CurrentInferenceUnits"] == 1
    assert "Entities" in client.detect_entities(Text="Please contact Nadia Okafor.", EndpointArn=arn)
