"""Entities detection jobs: Start/Describe/List/Stop, one small function per AWS operation."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from sqlalchemy import Connection, Row, insert

from mlharbor import arns
from mlharbor.api.services import Handler
from mlharbor.context import Call
from mlharbor.errors import (
    InvalidRequestException,
    JobNotFoundException,
    TooManyTagsException,
    UnsupportedLanguageException,
)
from mlharbor.services import attempts, tags
from mlharbor.services.comprehend import jobs
from mlharbor.services.comprehend import recognizers as er
from mlharbor.store.tables import entities_detection_jobs as table

TAG_LIMIT = 50
BUILT_IN_MESSAGE = (
    "Built-in entity types are not available in MLHarbor (AWS's pretrained entity model cannot be shipped "
    "offline). Pass the EntityRecognizerArn of a trained custom entity recognizer."
)


def _fingerprint(params: dict[str, Any]) -> str:
    body = {k: v for k, v in params.items() if k != "ClientRequestToken"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _started(row: Row[Any]) -> dict[str, Any]:
    return {
        "JobId": row.job_id,
        "JobArn": row.arn,
        "JobStatus": row.status,
        "EntityRecognizerArn": row.recognizer_arn,
    }


def _earlier(conn: Connection, call: Call, token: str, fingerprint: str) -> Row[Any] | None:
    """The job an earlier request with this ClientRequestToken started, if any; the token may only be
    reused with the same parameters."""
    earlier = jobs.find_by_token(conn, call.account_id, call.region, token)
    if earlier is not None and earlier.request_hash != fingerprint:
        raise InvalidRequestException(
            "The ClientRequestToken was already used with different request parameters."
        )
    return earlier


def _recognizer(call: Call, arn: str) -> Row[Any]:
    return er.require_trained(call, arn, "run an entities detection job")


def start_entities_detection_job(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    if "FlywheelArn" in params:
        raise InvalidRequestException(
            "Flywheels are not supported by MLHarbor; pass the EntityRecognizerArn of a trained recognizer."
        )
    recognizer_arn = params.get("EntityRecognizerArn")
    if recognizer_arn is None:
        raise UnsupportedLanguageException(BUILT_IN_MESSAGE)
    if "DocumentReaderConfig" in params["InputDataConfig"]:
        raise InvalidRequestException(
            "DocumentReaderConfig (PDF, Word and image input) would need Amazon Textract, which MLHarbor "
            "does not include; entities detection jobs read UTF-8 text files."
        )
    new_tags = {t["Key"]: t.get("Value", "") for t in params.get("Tags", [])}
    if len(new_tags) > TAG_LIMIT:
        raise TooManyTagsException(f"A resource can have at most {TAG_LIMIT} tags.")
    token, fingerprint = params.get("ClientRequestToken"), _fingerprint(params)
    if token is not None:
        with call.store.read() as conn:
            earlier = _earlier(conn, call, token, fingerprint)
        if earlier is not None:
            return _started(earlier)  # a retry of the same request
    recognizer = _recognizer(call, recognizer_arn)
    spec = {key: params[key] for key in jobs.SPEC_MEMBERS if key in params}
    spec["InputDataConfig"] = {"InputFormat": "ONE_DOC_PER_LINE", **params["InputDataConfig"]}
    # AWS documents that a custom recognizer's own language is used and LanguageCode is ignored.
    spec["LanguageCode"] = recognizer.spec.get("LanguageCode", params["LanguageCode"])
    job_id = uuid.uuid4().hex
    arn = arns.entities_detection_job(call.region, call.account_id, job_id)
    now = round(time.time(), 3)  # what clients see on the wire, so time filters match exactly
    with call.store.begin() as conn:
        if token is not None:  # a concurrent retry may have inserted it meanwhile
            earlier = _earlier(conn, call, token, fingerprint)
            if earlier is not None:
                return _started(earlier)
        conn.execute(
            insert(table).values(
                job_id=job_id, arn=arn, account_id=call.account_id, region=call.region,
                name=params.get("JobName"), status=jobs.STATES.initial, message=None, version=0,
                submitted_at=now, updated_at=now, end_time=None, recognizer_arn=recognizer.arn, spec=spec,
                details={}, client_token=token, request_hash=fingerprint, attempt=0,
                incarnation=attempts.new_incarnation(),
            )
        )  # fmt: skip
        tags.put(conn, arn, new_tags)
    call.server.reconciler.wake()
    return {
        "JobId": job_id,
        "JobArn": arn,
        "JobStatus": jobs.STATES.initial,
        "EntityRecognizerArn": recognizer.arn,
    }


def _job(call: Call, job_id: str) -> Row[Any]:
    with call.store.read() as conn:
        row = jobs.find_by_id(conn, call.account_id, call.region, job_id)
    if row is None:
        raise JobNotFoundException(f"Could not find the entities detection job {job_id}.")
    return row


def describe_entities_detection_job(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {"EntitiesDetectionJobProperties": jobs.describe(_job(call, params["JobId"]))}


def list_entities_detection_jobs(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return jobs.LISTING.respond(call, params, "EntitiesDetectionJobPropertiesList", jobs.describe)


def stop_entities_detection_job(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _job(call, params["JobId"])
    if row.status in ("STOP_REQUESTED", "STOPPED"):
        return {"JobId": row.job_id, "JobStatus": row.status}  # clients retry; a repeat changes nothing
    moved = jobs.move(call.store, row.arn, {"SUBMITTED": "STOP_REQUESTED", "IN_PROGRESS": "STOP_REQUESTED"})
    if moved is None:
        current = _job(call, row.job_id).status
        if current in ("STOP_REQUESTED", "STOPPED"):
            return {"JobId": row.job_id, "JobStatus": current}
        raise InvalidRequestException(
            f"The job is {current}; only a submitted or running job can be stopped."
        )
    # The worker sees the stop in the database within 0.25 s. It is deliberately not told through the
    # executor: that channel ends in SIGTERM after worker_stop_grace_seconds, and a stopped job still has
    # to write the documents it processed, which can take longer for a big job.
    call.server.reconciler.wake()
    return {"JobId": row.job_id, "JobStatus": moved}


OPERATIONS: dict[str, Handler] = {
    "StartEntitiesDetectionJob": start_entities_detection_job,
    "DescribeEntitiesDetectionJob": describe_entities_detection_job,
    "ListEntitiesDetectionJobs": list_entities_detection_jobs,
    "StopEntitiesDetectionJob": stop_entities_detection_job,
}
