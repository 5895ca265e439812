"""Entity recognizer records: the state table, the listings and the queries the operations need.

The operations are in ``operations.py``; training (the worker and its reconcile pass) in ``training.py``.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Row, bindparam, select

from mlharbor.context import Call
from mlharbor.errors import ResourceNotFoundException, ResourceUnavailableException
from mlharbor.services import attempts
from mlharbor.services.attempts import Fence, with_details
from mlharbor.services.comprehend.listing import GroupedListing, Listing
from mlharbor.store.db import Store
from mlharbor.store.tables import entity_recognizers as table
from mlharbor.store.transitions import machine

STATES = machine(
    "entity recognizer",
    initial="SUBMITTED",
    table={
        "SUBMITTED": ("TRAINING", "STOP_REQUESTED", "IN_ERROR"),
        "TRAINING": ("TRAINED", "TRAINED_WITH_WARNING", "STOP_REQUESTED", "IN_ERROR"),
        "STOP_REQUESTED": ("STOPPED", "TRAINED", "TRAINED_WITH_WARNING", "IN_ERROR"),
        "STOPPED": ("DELETING",),
        "TRAINED": ("DELETING",),
        "TRAINED_WITH_WARNING": ("DELETING",),
        "IN_ERROR": ("DELETING",),
        "DELETING": (),
    },
)

# Only finished recognizers can be deleted; training ones must be stopped first (docs/COMPATIBILITY.md,
# decision 15).
DELETABLE = frozenset({"TRAINED", "TRAINED_WITH_WARNING", "IN_ERROR", "STOPPED"})

# The create request members that Describe echoes back.
SPEC_MEMBERS = (
    "LanguageCode",
    "InputDataConfig",
    "DataAccessRoleArn",
    "VolumeKmsKeyId",
    "VpcConfig",
    "ModelKmsKeyId",
    "VersionName",
)
# Members the worker fills in as training runs.
DETAIL_MEMBERS = ("EndTime", "TrainingStartTime", "TrainingEndTime", "RecognizerMetadata", "OutputDataConfig")


# Statements are built once with bind parameters: building a select per request cost more than running it.
_OWNER = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_BY_ARN = select(table).where(_OWNER, table.c.arn == bindparam("arn"))
# The API documents descending order for SubmitTimeBefore on this list.
LISTING = Listing(
    table,
    table.c.submitted_at,
    {
        "Status": table.c.status == bindparam("Status"),
        "RecognizerName": table.c.name == bindparam("RecognizerName"),
        "SubmitTimeBefore": table.c.submitted_at < bindparam("SubmitTimeBefore"),
        "SubmitTimeAfter": table.c.submitted_at > bindparam("SubmitTimeAfter"),
    },
    newest_first="SubmitTimeBefore",
)
# ListEntityRecognizerSummaries: one summary per name, by name (a name's versions, oldest first).
SUMMARIES = GroupedListing(
    table,
    table.c.name,
    (table.c.name, table.c.version_name, table.c.status, table.c.submitted_at),
    order=table.c.submitted_at,
)


def owned_by_columns(account_id: str, region: str):  # type: ignore[no-untyped-def]
    return (table.c.account_id == account_id) & (table.c.region == region)


def find_by_arn(conn: Connection, account_id: str, region: str, arn: str) -> Row[Any] | None:
    return conn.execute(_BY_ARN, {"account_id": account_id, "region": region, "arn": arn}).first()


def summarize(versions: list[Row[Any]]) -> dict[str, Any]:
    """One EntityRecognizerSummary from the rows of one name, oldest first."""
    latest = versions[-1]
    return {
        "RecognizerName": latest.name,
        "NumberOfVersions": len(versions),
        "LatestVersionCreatedAt": latest.submitted_at,
        "LatestVersionName": latest.version_name or None,
        "LatestVersionStatus": latest.status,
    }


def describe(row: Row[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "EntityRecognizerArn": row.arn,
        "Status": row.status,
        "Message": row.message,
        "SubmitTime": row.submitted_at,
    }
    out.update({key: row.spec[key] for key in SPEC_MEMBERS if key in row.spec})
    details = row.details or {}
    out.update({key: details[key] for key in DETAIL_MEMBERS if key in details})
    return out


TRAINED = ("TRAINED", "TRAINED_WITH_WARNING")


def require_trained(call: Call, arn: str, use: str) -> Row[Any]:
    """This account's recognizer ``arn``, which must be trained to be used for ``use``."""
    with call.store.read() as conn:
        row = find_by_arn(conn, call.account_id, call.region, arn)
    if row is None:
        raise ResourceNotFoundException(f"Could not find specified resource: {arn}")
    if row.status not in TRAINED:
        raise ResourceUnavailableException(
            f"The recognizer is {row.status}; only a trained recognizer can {use}."
        )
    return row


# --- Writes shared by the training worker and the supervisor ------------------------------------------
def move(
    store: Store, arn: str, targets: dict[str, str], *, fence: Fence | None = None, **values: Any
) -> str | None:
    """``attempts.move`` for recognizers."""
    return attempts.move(store, table, STATES, arn, targets, fence=fence, **values)


def finish_stop(store: Store, arn: str, fence: Fence | None = None) -> None:
    ended = time.time()
    move(
        store, arn, {"STOP_REQUESTED": "STOPPED"}, fence=fence,
        message="Training was stopped by StopTrainingEntityRecognizer.",
        details=with_details(EndTime=ended, TrainingEndTime=ended),
    )  # fmt: skip


def fail(store: Store, arn: str, message: str, fence: Fence | None = None) -> None:
    ended = time.time()
    move(
        store, arn, {"SUBMITTED": "IN_ERROR", "TRAINING": "IN_ERROR", "STOP_REQUESTED": "IN_ERROR"},
        fence=fence, message=message, details=with_details(EndTime=ended),
    )  # fmt: skip
