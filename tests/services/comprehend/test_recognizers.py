"""Custom entity recognizers over real HTTP: real training, the lifecycle, and StopTraining as documented."""

from __future__ import annotations

import os
import re
import signal

import pytest

from mlharbor.blobs.local import LocalBlobStore
from mlharbor.services.comprehend.training import load_model
from tests.conftest import REGION, start_server, stop_server, unique, wait_until, worker_pids
from tests.services.comprehend.corpus import put_object, upload

pytestmark = pytest.mark.storage
ROLE = "arn:aws:iam::000000000000:role/comprehend"
FINAL = {"TRAINED", "TRAINED_WITH_WARNING", "IN_ERROR", "STOPPED"}


def create(client, config: dict, name: str | None = None, **extra):  # type: ignore[no-untyped-def]
    request = {"RecognizerName": name or unique("rec"), "LanguageCode": "en", "DataAccessRoleArn": ROLE}
    return client.create_entity_recognizer(**request, InputDataConfig=config, **extra)["EntityRecognizerArn"]


def describe(client, arn: str) -> dict:  # type: ignore[no-untyped-def]
    return client.describe_entity_recognizer(EntityRecognizerArn=arn)["EntityRecognizerProperties"]


def wait_status(client, arn: str, statuses: set[str], timeout: float = 180) -> dict:  # type: ignore[no-untyped-def]
    def reached() -> dict | None:
        props = describe(client, arn)
        return props if props["Status"] in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.1, what=f"{arn} to reach {statuses}")


def test_trains_a_real_model_with_honest_metrics(server, comprehend):
    config = upload(server.data_dir, "training", unique("small"), docs=150)
    arn = create(comprehend, config, Tags=[{"Key": "team", "Value": "nlp"}])
    assert arn.startswith(f"arn:aws:comprehend:{REGION}:000000000000:entity-recognizer/")
    first = describe(comprehend, arn)
    assert first["Status"] in {"SUBMITTED", "TRAINING"}
    assert first["InputDataConfig"]["DataFormat"] == "COMPREHEND_CSV"
    assert first["InputDataConfig"]["Documents"]["InputFormat"] == "ONE_DOC_PER_LINE"

    props = wait_status(comprehend, arn, FINAL)
    assert props["Status"] in {"TRAINED", "TRAINED_WITH_WARNING"}, props.get("Message")
    meta = props["RecognizerMetadata"]
    assert meta["NumberOfTrainedDocuments"] + meta["NumberOfTestDocuments"] == 150
    assert meta["NumberOfTestDocuments"] == 15  # 10% held out, as AWS does without a test set
    assert 60 <= meta["EvaluationMetrics"]["F1Score"] <= 100
    assert [t["Type"] for t in meta["EntityTypes"]] == ["PERSON", "PRODUCT", "CITY"]
    assert all(t["NumberOfTrainMentions"] >= 25 for t in meta["EntityTypes"])
    assert props["SubmitTime"] <= props["TrainingStartTime"] <= props["TrainingEndTime"] <= props["EndTime"]

    # The artifact is a real model: it finds entities in sentences it never saw.
    model = load_model(LocalBlobStore(server.data_dir / "s3"), _artifact(server, arn))
    [found] = model.predict(["Yesterday Maria Gonzalez flew to Lisbon with a new Pixel Watch."])
    assert {s.label for s in found} & {"PERSON", "CITY", "PRODUCT"}

    assert comprehend.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "nlp"}]
    # A finished recognizer cannot be stopped, and the refusal changes nothing.
    with pytest.raises(comprehend.exceptions.InvalidRequestException) as info:
        comprehend.stop_training_entity_recognizer(EntityRecognizerArn=arn)
    assert props["Status"] in info.value.response["Error"]["Message"]
    assert describe(comprehend, arn) == props
    listed = comprehend.list_entity_recognizers(Filter={"Status": props["Status"]})[
        "EntityRecognizerPropertiesList"
    ]
    assert arn in [p["EntityRecognizerArn"] for p in listed]


def _artifact(server, arn: str) -> str:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine, text

    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT artifact_uri FROM entity_recognizers WHERE arn = :a"), {"a": arn}
            ).scalar_one()
    finally:
        engine.dispose()


def test_stop_while_training_ends_stopped_and_repeats_are_no_ops(server, comprehend):
    config = upload(server.data_dir, "training", unique("big"), docs=3000, seed=2)
    arn = create(comprehend, config)
    wait_status(comprehend, arn, {"TRAINING"})
    comprehend.stop_training_entity_recognizer(EntityRecognizerArn=arn)
    assert describe(comprehend, arn)["Status"] in {"STOP_REQUESTED", "STOPPED"}
    props = wait_status(comprehend, arn, FINAL, timeout=60)
    assert props["Status"] == "STOPPED"
    assert "RecognizerMetadata" not in props
    comprehend.stop_training_entity_recognizer(EntityRecognizerArn=arn)  # idempotent
    assert describe(comprehend, arn)["Status"] == "STOPPED"


def test_stop_of_a_queued_recognizer(make_server):
    server = make_server(env={"MLHARBOR_TRAINING_SLOTS": "1"})
    client = server.client("comprehend")
    busy = create(client, upload(server.data_dir, "training", "busy", docs=3000, seed=3))
    queued = create(client, upload(server.data_dir, "training", "queued", docs=150))
    wait_status(client, busy, {"TRAINING"})
    assert describe(client, queued)["Status"] == "SUBMITTED"
    client.stop_training_entity_recognizer(EntityRecognizerArn=queued)
    assert wait_status(client, queued, FINAL)["Status"] == "STOPPED"
    client.stop_training_entity_recognizer(EntityRecognizerArn=busy)
    assert wait_status(client, busy, FINAL)["Status"] == "STOPPED"


def test_stop_in_a_finished_state_is_refused_and_changes_nothing(server, comprehend):
    arn = create(comprehend, {"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": "s3://nothing/here"},
                              "Annotations": {"S3Uri": "s3://nothing/ann.csv"}})  # fmt: skip
    failed = wait_status(comprehend, arn, FINAL)
    assert failed["Status"] == "IN_ERROR"
    with pytest.raises(comprehend.exceptions.InvalidRequestException) as info:
        comprehend.stop_training_entity_recognizer(EntityRecognizerArn=arn)
    assert "IN_ERROR" in info.value.response["Error"]["Message"]
    assert describe(comprehend, arn) == failed


def test_stop_unknown_and_malformed_arns(comprehend):
    missing = f"arn:aws:comprehend:{REGION}:000000000000:entity-recognizer/{unique('none')}"
    with pytest.raises(comprehend.exceptions.ResourceNotFoundException):
        comprehend.stop_training_entity_recognizer(EntityRecognizerArn=missing)
    with pytest.raises(comprehend.exceptions.ClientError) as info:
        comprehend.stop_training_entity_recognizer(EntityRecognizerArn="arn:aws:comprehend:x:1:nope")
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert info.value.response["Error"]["Message"].startswith("1 validation error detected: ")


HEADER = b"File, Line, Begin Offset, End Offset, Type\n"


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({}, "s3://"),
        ({"annotations.csv": HEADER + b"documents.txt, 0, 0, 999, PERSON\n"}, "annotations.csv"),
        ({"annotations.csv": HEADER + b"documents.txt, 0, 0, 4, PERSON\n"}, "PERSON"),
    ],
    ids=["missing-data", "offset-out-of-range", "too-few-annotations"],
)  # fmt: skip
def test_bad_data_ends_in_error_with_a_message(server, comprehend, files, fragment):
    prefix = unique("bad")
    config = {"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": f"s3://training/{prefix}/documents.txt"},
              "Annotations": {"S3Uri": f"s3://training/{prefix}/annotations.csv"}}  # fmt: skip
    if files:
        put_object(
            server.data_dir, "training", f"{prefix}/documents.txt", b"Anna went home.\nBob stayed.\nCy ran.\n"
        )
        for name, data in files.items():
            put_object(server.data_dir, "training", f"{prefix}/{name}", data)
    arn = create(comprehend, config)
    props = wait_status(comprehend, arn, FINAL)
    assert props["Status"] == "IN_ERROR"
    assert fragment in props["Message"]


def test_create_checks_language_and_input_rules(comprehend):
    config = {"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": "s3://bucket/d.txt"},
              "Annotations": {"S3Uri": "s3://bucket/a.csv"}}  # fmt: skip
    with pytest.raises(comprehend.exceptions.UnsupportedLanguageException):
        comprehend.create_entity_recognizer(
            RecognizerName=unique(), LanguageCode="ja", DataAccessRoleArn=ROLE, InputDataConfig=config
        )
    both = {**config, "EntityList": {"S3Uri": "s3://bucket/list.csv"}}
    with pytest.raises(comprehend.exceptions.InvalidRequestException):
        create(comprehend, both)
    too_many = {**config, "EntityTypes": [{"Type": f"T{i}"} for i in range(26)]}
    with pytest.raises(comprehend.exceptions.InvalidRequestException):
        create(comprehend, too_many)
    test_docs_only = {**config, "Documents": {"S3Uri": "s3://bucket/d.txt", "TestS3Uri": "s3://bucket/t.txt"}}
    with pytest.raises(comprehend.exceptions.InvalidRequestException):
        create(comprehend, test_docs_only)


def test_names_versions_and_idempotency(server, comprehend):
    config = {"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": "s3://bucket/d.txt"},
              "Annotations": {"S3Uri": "s3://bucket/a.csv"}}  # fmt: skip
    name = unique("ver")
    v1 = create(comprehend, config, name=name, VersionName="v1", ClientRequestToken="token-1")
    assert v1.endswith(f"entity-recognizer/{name}/version/v1")
    assert create(comprehend, config, name=name, VersionName="v1", ClientRequestToken="token-1") == v1
    with pytest.raises(comprehend.exceptions.InvalidRequestException):
        create(comprehend, config, name=name, VersionName="v9", ClientRequestToken="token-1")
    with pytest.raises(comprehend.exceptions.ResourceInUseException):
        create(comprehend, config, name=name, VersionName="v1")
    v2 = create(comprehend, config, name=name, VersionName="v2")
    wait_status(comprehend, v2, FINAL)
    summaries = comprehend.list_entity_recognizer_summaries()["EntityRecognizerSummariesList"]
    [mine] = [s for s in summaries if s["RecognizerName"] == name]
    assert (mine["NumberOfVersions"], mine["LatestVersionName"]) == (2, "v2")
    by_name = comprehend.list_entity_recognizers(Filter={"RecognizerName": name})[
        "EntityRecognizerPropertiesList"
    ]
    assert sorted(p["VersionName"] for p in by_name) == ["v1", "v2"]


def test_delete(server, comprehend):
    busy = create(comprehend, upload(server.data_dir, "training", unique("del"), docs=3000, seed=4))
    wait_status(comprehend, busy, {"TRAINING"})
    with pytest.raises(comprehend.exceptions.ResourceInUseException):
        comprehend.delete_entity_recognizer(EntityRecognizerArn=busy)
    comprehend.stop_training_entity_recognizer(EntityRecognizerArn=busy)
    wait_status(comprehend, busy, {"STOPPED"})
    comprehend.delete_entity_recognizer(EntityRecognizerArn=busy)

    def gone() -> bool:
        listed = comprehend.list_entity_recognizers()["EntityRecognizerPropertiesList"]
        return busy not in [p["EntityRecognizerArn"] for p in listed]

    wait_until(gone, what="deletion")
    with pytest.raises(comprehend.exceptions.ResourceNotFoundException):
        describe(comprehend, busy)


def test_server_killed_mid_training_recovers(make_server):
    server = make_server()
    client = server.client("comprehend")
    arn = create(client, upload(server.data_dir, "training", "crash", docs=400, seed=5))
    wait_status(client, arn, {"TRAINING"})
    again = server
    # Three host crashes in a row: none is the training's fault, so none uses up its retries.
    for crash in range(3):
        if crash:  # training again under the restarted server (its worker has started)
            pid = again.process.pid
            wait_until(lambda pid=pid: worker_pids(pid), timeout=60, what="a training worker")
        again.process.kill()  # SIGKILL: no clean shutdown of anything
        again.process.wait()
        if again is not server:
            stop_server(again)
        again = start_server(server.data_dir.parent, server.database_url)
    try:
        client = again.client("comprehend")
        props = wait_status(client, arn, FINAL)
        assert props["Status"] in {"TRAINED", "TRAINED_WITH_WARNING"}, props.get("Message")
    finally:
        stop_server(again)


def test_stop_requested_before_a_crash_is_honoured(make_server):
    server = make_server()
    client = server.client("comprehend")
    arn = create(client, upload(server.data_dir, "training", "crash-stop", docs=3000, seed=6))
    wait_status(client, arn, {"TRAINING"})
    client.stop_training_entity_recognizer(EntityRecognizerArn=arn)
    server.process.kill()
    server.process.wait()
    again = start_server(server.data_dir.parent, server.database_url)
    try:
        assert wait_status(again.client("comprehend"), arn, FINAL)["Status"] == "STOPPED"
    finally:
        stop_server(again)


def _failing_config() -> dict:
    # Valid request, data that does not exist: the recognizer ends IN_ERROR quickly, no training cost.
    return {"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": "s3://nobucket/none.txt"},
            "Annotations": {"S3Uri": "s3://nobucket/none.csv"}}  # fmt: skip


def test_list_filters_and_pagination(make_server):
    server = make_server()
    client = server.client("comprehend")
    arns = [create(client, _failing_config(), name=f"page-{i}") for i in range(5)]
    for arn in arns:
        wait_status(client, arn, FINAL)
    first = client.list_entity_recognizers(MaxResults=2)
    assert [p["EntityRecognizerArn"] for p in first["EntityRecognizerPropertiesList"]] == arns[:2]
    pages = client.get_paginator("list_entity_recognizers").paginate(PaginationConfig={"PageSize": 2})
    assert [
        p["EntityRecognizerArn"] for page in pages for p in page["EntityRecognizerPropertiesList"]
    ] == arns
    middle = describe(client, arns[2])["SubmitTime"]
    after = client.list_entity_recognizers(Filter={"SubmitTimeAfter": middle})[
        "EntityRecognizerPropertiesList"
    ]
    assert [p["EntityRecognizerArn"] for p in after] == arns[3:]
    before = client.list_entity_recognizers(Filter={"SubmitTimeBefore": middle})[
        "EntityRecognizerPropertiesList"
    ]
    assert [p["EntityRecognizerArn"] for p in before] == arns[:2][::-1]  # newest first for this filter
    in_error = client.list_entity_recognizers(Filter={"Status": "IN_ERROR"})["EntityRecognizerPropertiesList"]
    assert len(in_error) == 5
    assert (
        client.list_entity_recognizers(Filter={"Status": "TRAINED"})["EntityRecognizerPropertiesList"] == []
    )
    with pytest.raises(client.exceptions.InvalidFilterException):
        client.list_entity_recognizers(Filter={"Status": "IN_ERROR", "RecognizerName": "page-1"})
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_entity_recognizers(NextToken="not-a-token")


def test_recognizers_are_private_to_their_account(make_server, tmp_path):
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        '[AKIDA]\nsecret_access_key = "a"\naccount_id = "111111111111"\n'
        '[AKIDB]\nsecret_access_key = "b"\naccount_id = "222222222222"\n'
    )
    server = make_server("--credentials", str(credentials))
    a = server.client("comprehend", access_key="AKIDA", secret="a")
    b = server.client("comprehend", access_key="AKIDB", secret="b")
    arn = a.create_entity_recognizer(
        RecognizerName="mine", LanguageCode="en", DataAccessRoleArn="arn:aws:iam::111111111111:role/c",
        InputDataConfig=_failing_config(),
    )["EntityRecognizerArn"]  # fmt: skip
    assert ":111111111111:" in arn
    assert b.list_entity_recognizers()["EntityRecognizerPropertiesList"] == []
    for attempt in (
        lambda: b.describe_entity_recognizer(EntityRecognizerArn=arn),
        lambda: b.stop_training_entity_recognizer(EntityRecognizerArn=arn),
        lambda: b.delete_entity_recognizer(EntityRecognizerArn=arn),
        lambda: b.tag_resource(ResourceArn=arn, Tags=[{"Key": "k", "Value": "v"}]),
    ):
        with pytest.raises(b.exceptions.ResourceNotFoundException):
            attempt()
    assert describe(a, arn)["EntityRecognizerArn"] == arn


def test_tags_on_recognizers(server, comprehend):
    arn = create(comprehend, _failing_config())
    comprehend.tag_resource(ResourceArn=arn, Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}])
    comprehend.untag_resource(ResourceArn=arn, TagKeys=["a"])
    listed = comprehend.list_tags_for_resource(ResourceArn=arn)
    assert (listed["ResourceArn"], listed["Tags"]) == (arn, [{"Key": "b", "Value": "2"}])
    with pytest.raises(comprehend.exceptions.TooManyTagsException):
        comprehend.tag_resource(ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    assert comprehend.list_tags_for_resource(ResourceArn=arn)["Tags"] == [{"Key": "b", "Value": "2"}]


def test_stop_racing_completion_ends_in_exactly_one_outcome(server, comprehend):
    # A tiny training finishes within a few epochs; stopping right as it starts may land on either side.
    arn = create(comprehend, upload(server.data_dir, "training", unique("race"), docs=120, seed=7))
    wait_status(comprehend, arn, {"TRAINING"}, timeout=60)
    comprehend.stop_training_entity_recognizer(EntityRecognizerArn=arn)
    props = wait_status(comprehend, arn, FINAL)
    assert props["Status"] in {"STOPPED", "TRAINED", "TRAINED_WITH_WARNING"}
    if props["Status"] == "STOPPED":
        assert "RecognizerMetadata" not in props
    else:
        assert props["RecognizerMetadata"]["NumberOfTestDocuments"] > 0
    # Whatever won, the outcome is final.
    assert describe(comprehend, arn)["Status"] == props["Status"]


def test_a_killed_worker_is_detected_and_training_retried(make_server):
    server = make_server()
    client = server.client("comprehend")
    arn = create(client, upload(server.data_dir, "training", "worker-crash", docs=400, seed=8))
    wait_status(client, arn, {"TRAINING"})
    [worker] = wait_until(lambda: worker_pids(server.process.pid), what="the training worker")
    os.kill(worker, signal.SIGKILL)
    props = wait_status(client, arn, FINAL)
    assert props["Status"] in {"TRAINED", "TRAINED_WITH_WARNING"}, props.get("Message")
    assert "interrupted" in server.log()  # the server noticed, and said so
    assert "epoch" in server.log()  # the workers log their progress in the server's log


def test_annotations_off_token_boundaries_are_widened_and_reported(server, comprehend):
    from tests.engines.ner_data import make_corpus
    from tests.services.comprehend.corpus import TYPES, annotations_csv

    examples = make_corpus(150, seed=9, types=TYPES)
    # Cut five annotations one character short, inside their last word, as hand-made offsets often are.
    cut = 0
    for index, example in enumerate(examples):
        if cut < 5 and example.spans and example.spans[0].end - example.spans[0].start > 3:
            first = example.spans[0]
            shortened = type(first)(first.start, first.end - 1, first.label)
            examples[index] = type(example)(example.text, (shortened, *example.spans[1:]))
            cut += 1
    prefix = unique("ragged")
    documents = put_object(
        server.data_dir, "training", f"{prefix}/docs.txt", "\n".join(e.text for e in examples).encode()
    )
    annotations = put_object(
        server.data_dir, "training", f"{prefix}/ann.csv", annotations_csv(examples, "docs.txt")
    )
    config = {"EntityTypes": [{"Type": t} for t in TYPES], "Documents": {"S3Uri": documents},
              "Annotations": {"S3Uri": annotations}}  # fmt: skip
    props = wait_status(comprehend, create(comprehend, config), FINAL)
    assert props["Status"] == "TRAINED_WITH_WARNING", props.get("Message")
    # Counted over the documents trained on (the held-out test and dev documents are not aligned).
    widened = re.search(r"(\d+) annotation\(s\) did not fall on token boundaries", props["Message"])
    assert widened is not None and 1 <= int(widened.group(1)) <= 5
    assert props["RecognizerMetadata"]["EvaluationMetrics"]["F1Score"] > 50


def test_augmented_manifest(server, comprehend):
    import json

    from tests.engines.ner_data import make_corpus

    lines = []
    for example in make_corpus(120, seed=10, types=("PERSON", "CITY")):
        entities = [{"startOffset": s.start, "endOffset": s.end, "label": s.label} for s in example.spans]
        lines.append(json.dumps({"source": example.text, "ner": {"annotations": {"entities": entities}}}))
    manifest = put_object(
        server.data_dir, "training", f"{unique('gt')}/train.manifest", "\n".join(lines).encode()
    )
    config = {"DataFormat": "AUGMENTED_MANIFEST", "EntityTypes": [{"Type": "PERSON"}, {"Type": "CITY"}],
              "AugmentedManifests": [{"S3Uri": manifest, "AttributeNames": ["ner"]}]}  # fmt: skip
    props = wait_status(comprehend, create(comprehend, config), FINAL)
    assert props["Status"] in {"TRAINED", "TRAINED_WITH_WARNING"}, props.get("Message")
    assert props["RecognizerMetadata"]["NumberOfTestDocuments"] >= 1
