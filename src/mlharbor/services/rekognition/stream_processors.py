"""Stream processor records: the state table and the queries operations need."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, select, tuple_

from mlharbor.store.tables import stream_processors as table
from mlharbor.store.transitions import machine

# §2.4 of the research: Start only from STOPPED/FAILED; Update only from STOPPED/FAILED through UPDATING.
STATES = machine(
    "stream processor",
    initial="STOPPED",
    table={
        "STOPPED": ("STARTING", "UPDATING"),
        "FAILED": ("STARTING", "UPDATING"),
        "STARTING": ("RUNNING", "STOPPING", "STOPPED", "FAILED"),
        "RUNNING": ("STOPPING", "FAILED"),
        "STOPPING": ("STOPPED", "FAILED"),
        "UPDATING": ("STOPPED", "FAILED"),
    },
)
# Deleting removes the row; AWS refuses it while the processor is busy ("Cannot delete stream processor.").
DELETABLE = frozenset({"STOPPED", "FAILED", "STOPPING"})

# The create request members that Describe echoes back.
SPEC_MEMBERS = (
    "Input",
    "Output",
    "RoleArn",
    "Settings",
    "NotificationChannel",
    "KmsKeyId",
    "RegionsOfInterest",
    "DataSharingPreference",
)


def owned_by(account_id: str, region: str):  # type: ignore[no-untyped-def]
    return (table.c.account_id == account_id) & (table.c.region == region)


def find(conn: Connection, account_id: str, region: str, name: str) -> Row[Any] | None:
    return conn.execute(select(table).where(owned_by(account_id, region), table.c.name == name)).first()


def find_by_arn(conn: Connection, account_id: str, region: str, arn: str) -> Row[Any] | None:
    return conn.execute(select(table).where(owned_by(account_id, region), table.c.arn == arn)).first()


def count(conn: Connection, account_id: str, region: str) -> int:
    return len(conn.execute(select(table.c.arn).where(owned_by(account_id, region))).all())


def binding_in_use(
    conn: Connection, account_id: str, region: str, input_arn: str, output_arn: str | None
) -> str | None:
    """Which exclusive binding (input video stream, output data stream) another processor already holds."""
    rows = conn.execute(
        select(table.c.input_stream_arn, table.c.output_stream_arn).where(owned_by(account_id, region))
    ).all()
    for used_input, used_output in rows:
        if used_input == input_arn:
            return input_arn
        if output_arn is not None and used_output == output_arn:
            return output_arn
    return None


def page(
    conn: Connection, account_id: str, region: str, after: tuple[float, str] | None, limit: int
) -> list[Row[Any]]:
    """Creation order (AWS leaves order unspecified; creation order is stable under inserts)."""
    query = select(table.c.name, table.c.status, table.c.created_at).where(owned_by(account_id, region))
    if after is not None:
        query = query.where(tuple_(table.c.created_at, table.c.name) > tuple_(*after))
    return conn.execute(query.order_by(table.c.created_at, table.c.name).limit(limit)).all()


def describe(row: Row[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Name": row.name,
        "StreamProcessorArn": row.arn,
        "Status": row.status,
        "StatusMessage": row.status_message,
        "CreationTimestamp": row.created_at,
        "LastUpdateTimestamp": row.updated_at,
    }
    out.update({key: row.spec[key] for key in SPEC_MEMBERS if key in row.spec})
    return out
