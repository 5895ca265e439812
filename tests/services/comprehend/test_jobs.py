"""Entities detection jobs over real HTTP: a trained recognizer run over S3 input, output read back."""

from __future__ import annotations

import json
import os
import re
import signal
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mlharbor.engines.annotated import Example, Span
from tests.conftest import REGION, start_server, stop_server, unique, wait_until, worker_pids
from tests.engines.ner_data import make_corpus
from tests.services.comprehend.conftest import ROLE, train_recognizer
from tests.services.comprehend.corpus import TYPES, put_object

pytestmark = pytest.mark.storage
ACCOUNT = "000000000000"
FINAL = {"COMPLETED", "FAILED", "STOPPED"}


def start(client, recognizer: str | None, input_uri: str, output_uri: str, **extra: Any) -> dict:  # type: ignore[no-untyped-def]
    request: dict[str, Any] = {
        "InputDataConfig": {"S3Uri": input_uri, **extra.pop("input", {})},
        "OutputDataConfig": {"S3Uri": output_uri},
        "DataAccessRoleArn": ROLE,
        "LanguageCode": "en",
        **extra,
    }
    if recognizer is not None:
        request["EntityRecognizerArn"] = recognizer
    return client.start_entities_detection_job(**request)


def describe(client, job_id: str) -> dict:  # type: ignore[no-untyped-def]
    return client.describe_entities_detection_job(JobId=job_id)["EntitiesDetectionJobProperties"]


def wait_job(client, job_id: str, statuses: set[str], timeout: float = 120) -> dict:  # type: ignore[no-untyped-def]
    def reached() -> dict | None:
        props = describe(client, job_id)
        return props if props["JobStatus"] in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.05, what=f"job {job_id} to reach {statuses}")


def read_output(data_dir: Path, s3_uri: str) -> list[dict]:
    """The archive a job wrote (local object store): its single member ``output``, as JSON Lines."""
    bucket, _, key = s3_uri.removeprefix("s3://").partition("/")
    with tarfile.open(data_dir / "s3" / bucket / key, "r:gz") as tar:
        assert tar.getnames() == ["output"]
        member = tar.extractfile("output")
        assert member is not None
        data = member.read().decode("utf-8")
    # Only "\n" ends a record: JSON escapes it inside strings (str.splitlines would also split on U+2028).
    return [json.loads(line) for line in data.split("\n")[:-1]]


def one_line(example: Example) -> Example:
    return Example(example.text.replace("\n", " "), example.spans)


def check_entities(text: str, entities: list[dict]) -> None:
    for entity in entities:
        assert set(entity) == {"BeginOffset", "EndOffset", "Score", "Text", "Type"}
        assert 0 <= entity["BeginOffset"] < entity["EndOffset"] <= len(text)
        assert text[entity["BeginOffset"] : entity["EndOffset"]] == entity["Text"]
        assert entity["Type"] in TYPES
        assert 0.0 < entity["Score"] <= 1.0


# --- The whole path, ONE_DOC_PER_LINE -------------------------------------------------------------
def test_one_doc_per_line_end_to_end(server, comprehend, recognizer):
    examples = [one_line(e) for e in make_corpus(300, seed=21, types=TYPES, value_split="test")]
    # Emoji (one code point, four UTF-8 bytes, two UTF-16 units) and accents before the entities.
    shifted = [
        Example("🎉 é " + e.text, tuple(Span(s.start + 4, s.end + 4, s.label) for s in e.spans))
        for e in examples[:20]
        if e.spans
    ]
    documents = [*examples, *shifted]
    lines = [d.text.encode() for d in documents]
    empty_line = len(lines)
    lines.append(b"")
    separator_line = len(lines)
    lines.append("Line\u2028separator and next\u0085line stay in one document.".encode())  # not line ends
    bad_line = len(lines)
    lines.append(b"caf\xe9 au lait in Latin-1")  # not UTF-8: an error line, the job still completes
    # Mixed line ends (AWS accepts LF, CR and CRLF) and no break after the last line.
    data = b"\n".join(lines[:100]) + b"\r\n" + b"\r".join(lines[100:200]) + b"\n" + b"\n".join(lines[200:])
    prefix = unique("jobs")
    input_uri = put_object(server.data_dir, "job-input", f"{prefix}/docs.txt", data)
    output = f"s3://job-output/{prefix}/"

    started = start(
        comprehend, recognizer, input_uri, output, JobName="e2e", LanguageCode="de",
        Tags=[{"Key": "team", "Value": "nlp"}],
    )  # fmt: skip
    job_id = started["JobId"]
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert started["JobArn"] == f"arn:aws:comprehend:{REGION}:{ACCOUNT}:entities-detection-job/{job_id}"
    assert (started["JobStatus"], started["EntityRecognizerArn"]) == ("SUBMITTED", recognizer)
    first = describe(comprehend, job_id)
    assert first["JobStatus"] in {"SUBMITTED", "IN_PROGRESS", "COMPLETED"}
    assert first["InputDataConfig"] == {"S3Uri": input_uri, "InputFormat": "ONE_DOC_PER_LINE"}
    assert "EndTime" not in first

    props = wait_job(comprehend, job_id, FINAL)
    assert props["JobStatus"] == "COMPLETED", props.get("Message")
    archive = f"s3://job-output/{prefix}/{ACCOUNT}-NER-{job_id}/output/output.tar.gz"
    assert props["OutputDataConfig"] == {"S3Uri": archive}
    assert props["SubmitTime"] <= props["EndTime"]
    assert (props["JobName"], props["JobArn"], props["DataAccessRoleArn"]) == ("e2e", started["JobArn"], ROLE)
    assert props["LanguageCode"] == "en"  # the recognizer's language wins, as AWS documents
    assert "1 document(s) could not be processed" in props["Message"]
    assert comprehend.list_tags_for_resource(ResourceArn=started["JobArn"])["Tags"] == [
        {"Key": "team", "Value": "nlp"}
    ]

    results = read_output(server.data_dir, archive)
    assert [(r["File"], r["Line"]) for r in results] == [("docs.txt", n) for n in range(len(lines))]
    assert set(results[bad_line]) == {"File", "Line", "ErrorCode", "ErrorMessage"}
    assert results[bad_line]["ErrorCode"] == "INVALID_ENCODING"
    assert results[empty_line]["Entities"] == []
    assert "Entities" in results[separator_line]
    gold = found = 0
    for document, result in zip(documents, results, strict=False):
        check_entities(document.text, result["Entities"])
        predicted = {(e["BeginOffset"], e["EndOffset"], e["Type"]) for e in result["Entities"]}
        gold += len(document.spans)
        found += len({(s.start, s.end, s.label) for s in document.spans} & predicted)
    assert found / gold >= 0.8, f"recall {found}/{gold} on unseen entity values"
    # The emoji lines: offsets count code points, so entities land on the same words.
    emoji_hits = 0
    for document, result in zip(shifted, results[len(examples) :], strict=False):
        golden = {(s.start, s.end, s.label) for s in document.spans}
        emoji_hits += len(
            golden & {(e["BeginOffset"], e["EndOffset"], e["Type"]) for e in result["Entities"]}
        )
    assert emoji_hits >= 0.8 * sum(len(d.spans) for d in shifted)

    # A finished job cannot be stopped, and the refusal changes nothing.
    with pytest.raises(comprehend.exceptions.InvalidRequestException) as info:
        comprehend.stop_entities_detection_job(JobId=job_id)
    assert "COMPLETED" in info.value.response["Error"]["Message"]
    assert describe(comprehend, job_id) == props


def test_one_doc_per_file_over_a_prefix(server, comprehend, recognizer):
    examples = make_corpus(40, seed=22, types=TYPES, value_split="test")
    long_doc = Example("\n".join(e.text for e in examples[:10]), ())  # a multi-line document
    prefix = unique("files")
    texts = {"a.txt": examples[10].text, "b.txt": "Nothing to see here.", "sub/c.txt": long_doc.text}
    for name, text in texts.items():
        put_object(server.data_dir, "job-input", f"{prefix}/in/{name}", text.encode())
    put_object(server.data_dir, "job-input", f"{prefix}/in/big.txt", b"word " * 200_001)  # over 1 MB
    put_object(server.data_dir, "job-input", f"{prefix}/other.txt", b"Not under the prefix.")
    job_id = start(
        comprehend, recognizer, f"s3://job-input/{prefix}/in", f"s3://job-output/{prefix}",
        input={"InputFormat": "ONE_DOC_PER_FILE"},
    )["JobId"]  # fmt: skip
    props = wait_job(comprehend, job_id, FINAL)
    assert props["JobStatus"] == "COMPLETED", props.get("Message")
    assert props["InputDataConfig"]["InputFormat"] == "ONE_DOC_PER_FILE"
    results = read_output(server.data_dir, props["OutputDataConfig"]["S3Uri"])
    assert [r["File"] for r in results] == ["a.txt", "b.txt", "big.txt", "sub/c.txt"]
    assert all("Line" not in r for r in results)
    by_file = {r["File"]: r for r in results}
    assert by_file["big.txt"]["ErrorCode"] == "DOCUMENT_SIZE_EXCEEDED"
    for name, text in texts.items():
        check_entities(text, by_file[name]["Entities"])
    # Entities are found across the lines of one document, with offsets into the whole document.
    assert len(by_file["sub/c.txt"]["Entities"]) >= 5
    assert any(e["BeginOffset"] > len(examples[0].text) for e in by_file["sub/c.txt"]["Entities"])


# --- Errors ---------------------------------------------------------------------------------------
def test_start_refusals(server, comprehend, recognizer):
    prefix = unique("refused")
    uri = put_object(server.data_dir, "job-input", f"{prefix}/docs.txt", b"Maria lives in Lisbon.\n")
    output = f"s3://job-output/{prefix}"
    with pytest.raises(comprehend.exceptions.UnsupportedLanguageException) as info:
        start(comprehend, None, uri, output)
    assert "EntityRecognizerArn" in info.value.response["Error"]["Message"]
    for missing in (
        f"arn:aws:comprehend:{REGION}:{ACCOUNT}:entity-recognizer/{unique('none')}",
        recognizer.replace(f":{ACCOUNT}:", ":111111111111:"),  # another account's
        recognizer.replace(f":{REGION}:", ":eu-west-1:"),  # another region's
    ):
        with pytest.raises(comprehend.exceptions.ResourceNotFoundException):
            start(comprehend, missing, uri, output)
    untrained = comprehend.create_entity_recognizer(
        RecognizerName=unique("untrained"), LanguageCode="en", DataAccessRoleArn=ROLE,
        InputDataConfig={"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": "s3://nobucket/d.txt"},
                         "Annotations": {"S3Uri": "s3://nobucket/a.csv"}},
    )["EntityRecognizerArn"]  # fmt: skip
    with pytest.raises(comprehend.exceptions.ResourceUnavailableException):
        start(comprehend, untrained, uri, output)
    with pytest.raises(comprehend.exceptions.TooManyTagsException):
        start(comprehend, recognizer, uri, output, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)])
    with pytest.raises(comprehend.exceptions.InvalidRequestException):
        start(comprehend, recognizer, uri, output, input={"DocumentReaderConfig": {
            "DocumentReadAction": "TEXTRACT_DETECT_DOCUMENT_TEXT"}})  # fmt: skip


def test_unknown_job_ids(comprehend):
    for call in (comprehend.describe_entities_detection_job, comprehend.stop_entities_detection_job):
        with pytest.raises(comprehend.exceptions.JobNotFoundException):
            call(JobId="0123456789abcdef0123456789abcdef")


def test_missing_or_empty_input_fails_with_a_message(server, comprehend, recognizer):
    prefix = unique("bad-input")
    empty = put_object(server.data_dir, "job-input", f"{prefix}/empty.txt", b"")
    for uri, fragment in ((f"s3://job-input/{prefix}/nothing", "No input documents"), (empty, "empty")):
        job_id = start(comprehend, recognizer, uri, f"s3://job-output/{prefix}")["JobId"]
        props = wait_job(comprehend, job_id, FINAL)
        assert props["JobStatus"] == "FAILED"
        assert fragment in props["Message"] and uri in props["Message"]
        assert props["EndTime"] >= props["SubmitTime"]
        with pytest.raises(comprehend.exceptions.InvalidRequestException):
            comprehend.stop_entities_detection_job(JobId=job_id)


def test_client_request_token_idempotency(server, comprehend, recognizer):
    prefix = unique("token")
    uri = f"s3://job-input/{prefix}/none.txt"
    token = unique("token")
    first = start(comprehend, recognizer, uri, f"s3://job-output/{prefix}", ClientRequestToken=token)
    again = start(comprehend, recognizer, uri, f"s3://job-output/{prefix}", ClientRequestToken=token)
    assert (again["JobId"], again["JobArn"]) == (first["JobId"], first["JobArn"])
    with pytest.raises(comprehend.exceptions.InvalidRequestException):
        start(comprehend, recognizer, uri, f"s3://job-output/{prefix}/other", ClientRequestToken=token)
    other = start(
        comprehend, recognizer, uri, f"s3://job-output/{prefix}", ClientRequestToken=unique("token")
    )
    assert other["JobId"] != first["JobId"]
    for job_id in (first["JobId"], other["JobId"]):
        wait_job(comprehend, job_id, FINAL)


# --- Stop -----------------------------------------------------------------------------------------
def big_input(data_dir: Path, bucket: str, key: str, lines: int) -> str:
    examples = [one_line(e).text for e in make_corpus(500, seed=23, types=TYPES, value_split="test")]
    text = "\n".join(examples[i % len(examples)] for i in range(lines)) + "\n"
    return put_object(data_dir, bucket, key, text.encode())


def processed(client, job_id: str) -> int | None:  # type: ignore[no-untyped-def]
    props = describe(client, job_id)
    match = re.fullmatch(r"Processed (\d+) document\(s\)", props.get("Message") or "")
    return (
        int(match.group(1)) if match and props["JobStatus"] == "IN_PROGRESS" and int(match.group(1)) else None
    )


def test_stop_mid_job_writes_what_was_processed(server, comprehend, recognizer):
    prefix = unique("stop")
    lines = 60_000
    uri = big_input(server.data_dir, "job-input", f"{prefix}/big.txt", lines)
    job_id = start(comprehend, recognizer, uri, f"s3://job-output/{prefix}")["JobId"]
    wait_until(lambda: processed(comprehend, job_id), timeout=60, what="documents to be processed")
    stopped = comprehend.stop_entities_detection_job(JobId=job_id)
    assert (stopped["JobId"], stopped["JobStatus"]) == (job_id, "STOP_REQUESTED")
    props = wait_job(comprehend, job_id, FINAL, timeout=30)
    assert props["JobStatus"] == "STOPPED"
    results = read_output(server.data_dir, props["OutputDataConfig"]["S3Uri"])
    assert 0 < len(results) < lines
    assert [r["Line"] for r in results] == list(range(len(results)))
    assert f"the {len(results)} document(s) processed" in props["Message"]
    repeat = comprehend.stop_entities_detection_job(JobId=job_id)
    assert (repeat["JobId"], repeat["JobStatus"]) == (job_id, "STOPPED")
    assert describe(comprehend, job_id) == props


# --- Listing --------------------------------------------------------------------------------------
def test_list_filters_and_pagination(server, comprehend, recognizer):
    name = unique("listed")
    ids = [
        start(comprehend, recognizer, f"s3://job-input/{name}/none", "s3://job-output/x", JobName=name)[
            "JobId"
        ]
        for _ in range(5)
    ]
    for job_id in ids:
        wait_job(comprehend, job_id, FINAL)

    def listed(**kwargs: Any) -> list[str]:
        return [
            p["JobId"]
            for p in comprehend.list_entities_detection_jobs(**kwargs)["EntitiesDetectionJobPropertiesList"]
        ]

    first = comprehend.list_entities_detection_jobs(Filter={"JobName": name}, MaxResults=2)
    assert [p["JobId"] for p in first["EntitiesDetectionJobPropertiesList"]] == ids[:2]
    pages = comprehend.get_paginator("list_entities_detection_jobs").paginate(
        Filter={"JobName": name}, PaginationConfig={"PageSize": 2}
    )
    assert [p["JobId"] for page in pages for p in page["EntitiesDetectionJobPropertiesList"]] == ids
    middle = describe(comprehend, ids[2])["SubmitTime"]
    after = listed(Filter={"SubmitTimeAfter": middle})
    assert [i for i in after if i in ids] == ids[3:][::-1]  # newest first, as documented for this filter
    before = listed(Filter={"SubmitTimeBefore": middle})
    assert [i for i in before if i in ids] == ids[:2]
    assert set(ids) <= set(listed(Filter={"JobStatus": "FAILED"}, MaxResults=500))
    assert not set(ids) & set(listed(Filter={"JobStatus": "COMPLETED"}, MaxResults=500))
    with pytest.raises(comprehend.exceptions.InvalidFilterException):
        listed(Filter={"JobName": name, "JobStatus": "FAILED"})
    with pytest.raises(comprehend.exceptions.InvalidRequestException):
        listed(NextToken="not-a-token")
    # Another region sees none of them.
    elsewhere = server.client("comprehend", region_name="eu-west-1")
    assert not set(ids) & {
        p["JobId"] for p in elsewhere.list_entities_detection_jobs()["EntitiesDetectionJobPropertiesList"]
    }
    with pytest.raises(elsewhere.exceptions.JobNotFoundException):
        elsewhere.describe_entities_detection_job(JobId=ids[0])


# --- Queueing, another account, and a server killed mid-job -------------------------------------
def test_queueing_and_crashes_mid_job(make_server, tmp_path):
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        '[test]\nsecret_access_key = "test"\naccount_id = "000000000000"\n'
        '[AKIDB]\nsecret_access_key = "b"\naccount_id = "222222222222"\n'
    )
    env = {"MLHARBOR_DETECTION_JOB_SLOTS": "1"}
    server = make_server("--credentials", str(credentials), env=env)
    recognizer = train_recognizer(server)
    client = server.client("comprehend")
    lines = 20_000
    uri = big_input(server.data_dir, "job-input", "crash/big.txt", lines)
    busy = start(client, recognizer, uri, "s3://job-output/crash")["JobId"]
    queued = start(client, recognizer, uri, "s3://job-output/queued")["JobId"]
    wait_until(lambda: processed(client, busy), timeout=60, what="the first job to run")
    server.process.kill()  # SIGKILL mid-job: no clean shutdown of anything
    server.process.wait()

    again = start_server(server.data_dir.parent, server.database_url, *server.extra_args, env=env)
    try:
        client = again.client("comprehend")
        # The interrupted job is retried and takes the only slot again; the other one still waits.
        wait_until(
            lambda: "interrupted" in again.log() and processed(client, busy), timeout=60, what="a retry"
        )
        assert describe(client, queued)["JobStatus"] == "SUBMITTED"
        assert client.stop_entities_detection_job(JobId=queued)["JobStatus"] == "STOP_REQUESTED"
        assert wait_job(client, queued, FINAL)["JobStatus"] == "STOPPED"
        # The recognizer is in use; another account sees neither the job nor the recognizer.
        with pytest.raises(client.exceptions.ResourceInUseException):
            client.delete_entity_recognizer(EntityRecognizerArn=recognizer)
        other = again.client("comprehend", access_key="AKIDB", secret="b")
        with pytest.raises(other.exceptions.JobNotFoundException):
            other.describe_entities_detection_job(JobId=busy)
        assert other.list_entities_detection_jobs()["EntitiesDetectionJobPropertiesList"] == []

        # A worker killed on its own is noticed too, and the job is retried from the start once more.
        [worker] = worker_pids(again.process.pid)
        os.kill(worker, signal.SIGKILL)
        props = wait_job(client, busy, FINAL)
        assert props["JobStatus"] == "COMPLETED", props.get("Message")
        assert again.log().count("was interrupted") == 2
        results = read_output(again.data_dir, props["OutputDataConfig"]["S3Uri"])
        assert [r["Line"] for r in results] == list(range(lines))
        assert sum(len(r["Entities"]) for r in results) > lines
    finally:
        stop_server(again)
