"""Rekognition operations: one small function per AWS operation."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError

from mlharbor import arns
from mlharbor.api.services import Handler, blocking
from mlharbor.context import Call
from mlharbor.errors import (
    InvalidParameterException,
    LimitExceededException,
    ResourceInUseException,
    ResourceNotFoundException,
)
from mlharbor.services import attempts, tags
from mlharbor.services.rekognition import face_operations, tag_limits
from mlharbor.services.rekognition import stream_processors as sp
from mlharbor.services.rekognition.kinds import stream_work_id
from mlharbor.store.tables import live_views
from mlharbor.store.tables import stream_processors as sp_table
from mlharbor.store.transitions import transition

NAME_IN_USE = "Stream processor name already in use."
MAX_PAGE = 1000


def _check_settings(params: dict[str, Any], models_dir: Path, packages_dir: Path) -> None:
    """The cross-field rules AWS documents for face search vs. connected-home processors."""
    settings, output = params["Settings"], params["Output"]
    if ("FaceSearch" in settings) == ("ConnectedHome" in settings):
        raise InvalidParameterException("Settings must contain exactly one of FaceSearch or ConnectedHome.")
    if "KinesisVideoStream" not in params["Input"] or "Arn" not in params["Input"]["KinesisVideoStream"]:
        raise InvalidParameterException("Input.KinesisVideoStream.Arn is required.")
    if "FaceSearch" in settings:
        if not settings["FaceSearch"].get("CollectionId"):
            raise InvalidParameterException("Settings.FaceSearch.CollectionId is required.")
        if "Arn" not in output.get("KinesisDataStream", {}):
            raise InvalidParameterException("A face search stream processor needs Output.KinesisDataStream.")
        for member in ("NotificationChannel", "KmsKeyId", "RegionsOfInterest"):
            if member in params:
                raise InvalidParameterException(
                    f"{member} is not supported for face search stream processors."
                )
        # Accepted and dropped, as AWS does (docs/COMPATIBILITY.md, decision 8): face search writes only
        # to Kinesis.
        output.pop("S3Destination", None)
    else:
        if "S3Destination" not in output or "KinesisDataStream" in output:
            raise InvalidParameterException(
                "A connected home stream processor needs Output.S3Destination only."
            )
        if "NotificationChannel" not in params:
            raise InvalidParameterException("A connected home stream processor needs a NotificationChannel.")
        sp.check_labels(settings["ConnectedHome"]["Labels"], models_dir, packages_dir)


@blocking  # a connected home processor's label model is loaded to check it: not on the event loop
def create_stream_processor(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    _check_settings(params, call.server.settings.models_dir, call.server.settings.model_packages_dir)
    name = params["Name"]
    arn = arns.stream_processor(call.region, call.account_id, name)
    input_arn = params["Input"]["KinesisVideoStream"]["Arn"]
    output_arn = params["Output"].get("KinesisDataStream", {}).get("Arn")
    new_tags = params.get("Tags", {})
    tag_limits.check(len(new_tags))
    limit = call.server.settings.stream_processor_limit
    now = round(time.time(), 3)  # what clients see on the wire, so time filters match exactly
    try:
        with call.store.begin() as conn:
            if sp.find(conn, call.account_id, call.region, name) is not None:
                raise ResourceInUseException(NAME_IN_USE)
            if sp.count(conn, call.account_id, call.region) >= limit:
                raise LimitExceededException(f"Stream processor limit exceeded for account, limit - {limit}.")
            used = sp.binding_in_use(conn, call.account_id, call.region, input_arn, output_arn)
            if used is not None:
                raise ResourceInUseException(f"Stream {used} is already used by another stream processor.")
            conn.execute(
                insert(sp_table).values(
                    arn=arn,
                    account_id=call.account_id,
                    region=call.region,
                    name=name,
                    status=sp.STATES.initial,
                    version=0,
                    incarnation=attempts.new_incarnation(),
                    created_at=now,
                    updated_at=now,
                    input_stream_arn=input_arn,
                    output_stream_arn=output_arn,
                    spec={key: params[key] for key in sp.SPEC_MEMBERS if key in params},
                )
            )
            tags.put(conn, arn, new_tags)
    except IntegrityError:
        raise ResourceInUseException(NAME_IN_USE) from None  # lost a race with an identical create
    return {"StreamProcessorArn": arn}


def _existing(call: Call, name: str):  # type: ignore[no-untyped-def]
    with call.store.read() as conn:
        row = sp.find(conn, call.account_id, call.region, name)
    if row is None:
        raise ResourceNotFoundException(f"Stream processor {name} not found.")
    return row


def describe_stream_processor(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return sp.describe(_existing(call, params["Name"]))


def list_stream_processors(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    # The model sets no maximum: pages are capped at the default (a bigger MaxResults is not an error).
    limit = min(params.get("MaxResults", MAX_PAGE), MAX_PAGE)
    after = None
    if "NextToken" in params:
        position = call.server.pager.decode(call.page_scope(), params["NextToken"])
        after = (float(position["t"]), str(position["n"]))
    with call.store.read() as conn:
        rows = sp.page(conn, call.account_id, call.region, after, limit + 1)
    result: dict[str, Any] = {
        "StreamProcessors": [{"Name": r.name, "Status": r.status} for r in rows[:limit]]
    }
    if len(rows) > limit:
        last = rows[limit - 1]
        result["NextToken"] = call.server.pager.encode(
            call.page_scope(), {"t": last.created_at, "n": last.name}
        )
    return result


def delete_stream_processor(call: Call, params: dict[str, Any]) -> None:
    row = _existing(call, params["Name"])
    if row.status not in sp.DELETABLE:
        raise ResourceInUseException("Cannot delete stream processor.")
    with call.store.begin() as conn:
        # Whatever the row's version, as long as it is still deletable: a STOPPING processor that reaches
        # STOPPED meanwhile is still deleted, and a concurrent Start (STARTING) wins over this Delete.
        removed = conn.execute(
            delete(sp_table).where(sp_table.c.arn == row.arn, sp_table.c.status.in_(sp.DELETABLE))
        ).rowcount
        if removed != 1:
            raise ResourceInUseException("Cannot delete stream processor.")
        tags.remove_all(conn, row.arn)
        conn.execute(delete(live_views).where(live_views.c.processor_arn == row.arn))  # the console's frame
    call.server.executor.request_stop(stream_work_id(row))  # if STOPPING


# --- sessions: Start, Stop, Update -------------------------------------------------------------------------
NOT_STOPPABLE = "Stream Processor not available for stopping"


def start_stream_processor(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    row = _existing(call, params["Name"])
    face_search = "FaceSearch" in row.spec["Settings"]
    if face_search and ("StartSelector" in params or "StopSelector" in params):
        raise InvalidParameterException(
            "StartSelector and StopSelector are for connected home (label detection) stream processors only."
        )
    selector = params.get("StartSelector", {}).get("KVSStreamStartSelector", {})
    if "StartSelector" in params and len(selector.keys() & {"ProducerTimestamp", "FragmentNumber"}) != 1:
        raise InvalidParameterException(
            "StartSelector.KVSStreamStartSelector needs exactly one of ProducerTimestamp and FragmentNumber."
        )
    if row.status not in ("STOPPED", "FAILED"):
        raise ResourceInUseException(f"Stream processor {row.name} is {row.status} and cannot be started.")
    session_id = str(uuid.uuid4())
    session = {key: params[key] for key in ("StartSelector", "StopSelector") if key in params}
    with call.store.begin() as conn:
        started = transition(
            conn, sp_table, sp.STATES, sp_table.c.arn == row.arn, current=row.status, version=row.version,
            target="STARTING", updated_at=time.time(), attempt=row.attempt + 1, session_id=session_id,
            session=session, restarts=0, status_message=None,
        )  # fmt: skip
    if not started:
        raise ResourceInUseException(f"Stream processor {row.name} is {row.status} and cannot be started.")
    call.server.reconciler.wake()  # the stream supervisor starts the worker
    return {"SessionId": session_id}


def stop_stream_processor(call: Call, params: dict[str, Any]) -> None:
    row = _existing(call, params["Name"])
    # Retried compare-and-set: the worker's own writes (STARTING → RUNNING, a new attempt) never make a
    # Stop of a running processor fail.
    targets = {"STARTING": "STOPPING", "RUNNING": "STOPPING"}
    if attempts.move(call.store, sp_table, sp.STATES, row.arn, targets) is None:
        raise ResourceInUseException(NOT_STOPPABLE)
    with call.store.read() as conn:
        row = sp.find_by_arn(conn, call.account_id, call.region, row.arn) or row
    # The worker stops at once and records STOPPED; with no worker (between restarts), the reconciler does.
    if not call.server.executor.request_stop(stream_work_id(row)):
        call.server.reconciler.wake()


@blocking  # like Create: new labels are checked against the label model
def update_stream_processor(call: Call, params: dict[str, Any]) -> None:
    row = _existing(call, params["Name"])
    # InvalidParameterException for what AWS does not allow (checked before any change)
    settings = call.server.settings
    spec = sp.updated_spec(row.spec, params, settings.models_dir, settings.model_packages_dir)
    if row.status not in ("STOPPED", "FAILED"):
        raise ResourceInUseException(f"Stream processor {row.name} is {row.status} and cannot be updated.")
    with call.store.begin() as conn:
        where = sp_table.c.arn == row.arn
        now = time.time()
        # UPDATING while the change is written; the update is one transaction, so it ends STOPPED at once.
        if not transition(
            conn, sp_table, sp.STATES, where, current=row.status, version=row.version, target="UPDATING",
            updated_at=now, spec=spec,
        ) or not transition(
            conn, sp_table, sp.STATES, where, current="UPDATING", version=row.version + 1, target="STOPPED",
            updated_at=now, status_message=None,
        ):  # fmt: skip
            raise ResourceInUseException(f"Stream processor {row.name} is busy; try again.")


def _taggable(call: Call, arn: str) -> str:
    """Tagging accepts ARNs of this account's stream processors and face collections."""
    with call.store.read() as conn:
        row = sp.find_by_arn(conn, call.account_id, call.region, arn)
    found = row.arn if row is not None else face_operations.find_taggable(call, arn)
    if found is None:
        raise ResourceNotFoundException(f"Resource {arn} not found.")
    return found


def tag_resource(call: Call, params: dict[str, Any]) -> None:
    arn = _taggable(call, params["ResourceArn"])
    with call.store.begin() as conn:
        tag_limits.check(tags.count_after(conn, arn, params["Tags"]))
        tags.put(conn, arn, params["Tags"])


def untag_resource(call: Call, params: dict[str, Any]) -> None:
    arn = _taggable(call, params["ResourceArn"])
    with call.store.begin() as conn:
        tags.remove(conn, arn, params["TagKeys"])


def list_tags_for_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn = _taggable(call, params["ResourceArn"])
    with call.store.read() as conn:
        return {"Tags": tags.get(conn, arn)}


OPERATIONS: dict[str, Handler] = {
    "CreateStreamProcessor": create_stream_processor,
    "DescribeStreamProcessor": describe_stream_processor,
    "ListStreamProcessors": list_stream_processors,
    "DeleteStreamProcessor": delete_stream_processor,
    "StartStreamProcessor": start_stream_processor,
    "StopStreamProcessor": stop_stream_processor,
    "UpdateStreamProcessor": update_stream_processor,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTagsForResource": list_tags_for_resource,
    **face_operations.OPERATIONS,
}
