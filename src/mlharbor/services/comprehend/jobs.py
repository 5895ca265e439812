"""Entities detection job records: the state table, the queries operations need, and ``move``.

A job runs a trained custom recognizer over documents in S3 (detection.py does the work). The API
writes desired state (a new SUBMITTED row, STOP_REQUESTED) and the worker and the reconcile pass write
what actually happened.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select

from mlharbor.services import attempts
from mlharbor.services.attempts import Fence, with_details
from mlharbor.services.comprehend.listing import Listing
from mlharbor.store.db import Store
from mlharbor.store.tables import entities_detection_jobs as table
from mlharbor.store.transitions import machine

STATES = machine(
    "entities detection job",
    initial="SUBMITTED",
    table={
        "SUBMITTED": ("IN_PROGRESS", "STOP_REQUESTED", "FAILED"),
        "IN_PROGRESS": ("COMPLETED", "FAILED", "STOP_REQUESTED"),
        # Completion wins over a stop that arrived too late to interrupt the work, as AWS documents.
        "STOP_REQUESTED": ("STOPPED", "COMPLETED", "FAILED"),
        "COMPLETED": (),
        "FAILED": (),
        "STOPPED": (),
    },
)
# A job in one of these states holds (or waits for) a worker and keeps its recognizer in use.
ACTIVE = ("SUBMITTED", "IN_PROGRESS", "STOP_REQUESTED")
MAX_ACTIVE_PER_ACCOUNT = 10  # AWS: 10 concurrent jobs of one type per account; more wait in SUBMITTED
# The start request members that Describe echoes back.
SPEC_MEMBERS = (
    "InputDataConfig",
    "OutputDataConfig",
    "LanguageCode",
    "DataAccessRoleArn",
    "VolumeKmsKeyId",
    "VpcConfig",
)


# Statements are built once with bind parameters: building a select per request cost more than running it.
_OWNER = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_BY_ARN = select(table).where(_OWNER, table.c.arn == bindparam("arn"))
_BY_ID = select(table).where(_OWNER, table.c.job_id == bindparam("job_id"))
_BY_TOKEN = select(table).where(_OWNER, table.c.client_token == bindparam("token"))
_ACTIVE_FOR_RECOGNIZER = (
    select(table.c.job_id)
    .where(table.c.recognizer_arn == bindparam("recognizer_arn"), table.c.status.in_(ACTIVE))
    .limit(1)
)
_ROW = select(table).where(table.c.arn == bindparam("arn"))
# The API reference documents newest-to-oldest order for SubmitTimeAfter (and oldest-to-newest for
# SubmitTimeBefore) on job lists, the opposite of the recognizer filter's wording.
LISTING = Listing(
    table,
    table.c.submitted_at,
    {
        "JobName": table.c.name == bindparam("JobName"),
        "JobStatus": table.c.status == bindparam("JobStatus"),
        "SubmitTimeBefore": table.c.submitted_at < bindparam("SubmitTimeBefore"),
        "SubmitTimeAfter": table.c.submitted_at > bindparam("SubmitTimeAfter"),
    },
    newest_first="SubmitTimeAfter",
)


def find_by_arn(conn: Connection, account_id: str, region: str, arn: str) -> Row[Any] | None:
    return conn.execute(_BY_ARN, {"account_id": account_id, "region": region, "arn": arn}).first()


def find_by_id(conn: Connection, account_id: str, region: str, job_id: str) -> Row[Any] | None:
    return conn.execute(_BY_ID, {"account_id": account_id, "region": region, "job_id": job_id}).first()


def find_by_token(conn: Connection, account_id: str, region: str, token: str) -> Row[Any] | None:
    return conn.execute(_BY_TOKEN, {"account_id": account_id, "region": region, "token": token}).first()


def active_for_recognizer(conn: Connection, recognizer_arn: str) -> bool:
    """True while a job that uses the recognizer is queued, running or stopping."""
    return conn.execute(_ACTIVE_FOR_RECOGNIZER, {"recognizer_arn": recognizer_arn}).first() is not None


def row(conn: Connection, arn: str) -> Row[Any] | None:
    return conn.execute(_ROW, {"arn": arn}).first()


def output_uri(output_s3_uri: str, account_id: str, job_id: str) -> str:
    """Where the job's archive goes: AWS's layout below the OutputDataConfig.S3Uri the caller gave."""
    return f"{output_s3_uri.rstrip('/')}/{account_id}-NER-{job_id}/output/output.tar.gz"


def describe(row: Row[Any]) -> dict[str, Any]:
    spec = row.spec
    out: dict[str, Any] = {
        "JobId": row.job_id,
        "JobArn": row.arn,
        "JobStatus": row.status,
        "SubmitTime": row.submitted_at,
        "EntityRecognizerArn": row.recognizer_arn,
    }
    if row.name is not None:
        out["JobName"] = row.name
    if row.message:
        out["Message"] = row.message
    if row.end_time is not None:
        out["EndTime"] = row.end_time
    out.update({key: spec[key] for key in SPEC_MEMBERS if key in spec})
    output = dict(spec["OutputDataConfig"])
    output["S3Uri"] = output_uri(output["S3Uri"], row.account_id, row.job_id)
    out["OutputDataConfig"] = output
    return out


# --- State changes shared by the operations, the worker and the reconcile pass ---------------------
def move(
    store: Store, arn: str, targets: dict[str, str], *, fence: Fence | None = None, **values: Any
) -> str | None:
    """``attempts.move`` for jobs."""
    return attempts.move(store, table, STATES, arn, targets, fence=fence, **values)


# --- Writes shared by the detection worker and the supervisor -----------------------------------------
def fail(store: Store, arn: str, message: str, fence: Fence | None = None) -> None:
    move(
        store, arn, {"SUBMITTED": "FAILED", "IN_PROGRESS": "FAILED", "STOP_REQUESTED": "FAILED"},
        fence=fence, message=message, end_time=round(time.time(), 3),
    )  # fmt: skip


def finish_stop(store: Store, arn: str, fence: Fence | None = None, documents: int | None = None) -> None:
    message = "The job was stopped by StopEntitiesDetectionJob before it started."
    if documents is not None:
        message = (
            f"The job was stopped by StopEntitiesDetectionJob; the output holds the {documents} "
            "document(s) processed before the stop."
        )
    move(
        store, arn, {"STOP_REQUESTED": "STOPPED"}, fence=fence, message=message,
        end_time=round(time.time(), 3),
        details=with_details(**({"DocumentsProcessed": documents} if documents is not None else {})),
    )  # fmt: skip
