"""Entity recognizer records: the state table and the queries operations need.

Training itself (CreateEntityRecognizer, StopTrainingEntityRecognizer) arrives with its own issue;
the table and listing are here so that List/Describe are real from day one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, select, tuple_

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


def owned_by(account_id: str, region: str):  # type: ignore[no-untyped-def]
    return (table.c.account_id == account_id) & (table.c.region == region)


def find_by_arn(conn: Connection, account_id: str, region: str, arn: str) -> Row[Any] | None:
    return conn.execute(select(table).where(owned_by(account_id, region), table.c.arn == arn)).first()


def page(
    conn: Connection,
    account_id: str,
    region: str,
    filters: dict[str, Any],
    after: tuple[float, str] | None,
    limit: int,
) -> list[Row[Any]]:
    query = select(table).where(owned_by(account_id, region))
    newest_first = "SubmitTimeBefore" in filters  # the API documents descending order for this filter
    if "Status" in filters:
        query = query.where(table.c.status == filters["Status"])
    if "RecognizerName" in filters:
        query = query.where(table.c.name == filters["RecognizerName"])
    if "SubmitTimeBefore" in filters:
        query = query.where(table.c.submitted_at < filters["SubmitTimeBefore"].timestamp())
    if "SubmitTimeAfter" in filters:
        query = query.where(table.c.submitted_at > filters["SubmitTimeAfter"].timestamp())
    key = tuple_(table.c.submitted_at, table.c.arn)
    if after is not None:
        query = query.where(key < tuple_(*after) if newest_first else key > tuple_(*after))
    order = (
        (table.c.submitted_at.desc(), table.c.arn.desc())
        if newest_first
        else (table.c.submitted_at, table.c.arn)
    )
    return conn.execute(query.order_by(*order).limit(limit)).all()


def all_rows(conn: Connection, account_id: str, region: str) -> list[Row[Any]]:
    query = select(table).where(owned_by(account_id, region)).order_by(table.c.name, table.c.submitted_at)
    return conn.execute(query).all()


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
