"""Recognizer endpoints and DetectEntities: one small function per AWS operation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from mlharbor import arns
from mlharbor.api.services import Handler
from mlharbor.context import Call
from mlharbor.errors import (
    InvalidRequestException,
    ResourceInUseException,
    ResourceLimitExceededException,
    ResourceNotFoundException,
    ResourceUnavailableException,
    TextSizeLimitExceededException,
    TooManyRequestsException,
    TooManyTagsException,
    UnsupportedLanguageException,
)
from mlharbor.services import attempts, tags
from mlharbor.services.comprehend import endpoints as ep
from mlharbor.services.comprehend import recognizers as er
from mlharbor.services.comprehend.serving_client import Throttled, WorkerGone, WorkerPool
from mlharbor.store.tables import comprehend_endpoints as ep_table

TAG_LIMIT = 50
# AWS quotas (per account and region): active endpoints, inference units in all, units per endpoint.
MAX_ENDPOINTS = 10
MAX_UNITS = 100
MAX_UNITS_PER_ENDPOINT = 10
# Custom recognizers take at most 10 KB of UTF-8 text per real-time request
# (docs/COMPATIBILITY.md, decision 19).
MAX_TEXT_BYTES = 10_000
# How long DetectEntities waits for an IN_SERVICE endpoint's workers to come up (after a restart), and
# for a worker's answer (a 10 KB text takes tens of milliseconds; only a hung worker takes this long).
WORKER_WAIT_SECONDS = 20.0
ANSWER_TIMEOUT_SECONDS = 60.0
BUILT_IN_MESSAGE = (
    "MLHarbor has no built-in entity model (AWS's pretrained model cannot be shipped offline), so "
    "DetectEntities without EndpointArn is not available. Train a custom entity recognizer, create an "
    "endpoint for it, and pass its EndpointArn."
)


def _fingerprint(params: dict[str, Any]) -> str:
    body = {k: v for k, v in params.items() if k != "ClientRequestToken"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _endpoint(call: Call, arn: str):  # type: ignore[no-untyped-def]
    with call.store.read() as conn:
        row = ep.find_by_arn(conn, call.account_id, call.region, arn)
    if row is None:
        raise ResourceNotFoundException(f"Could not find specified resource: {arn}")
    return row


def _trained_model(call: Call, model_arn: str) -> None:
    """The model an endpoint may serve: this account's recognizer, trained."""
    parsed = arns.parse(model_arn)
    if parsed is None or parsed.resource_type != "entity-recognizer":
        # Document classifiers (the model's other ARN kind) do not exist in MLHarbor.
        raise ResourceNotFoundException(f"Could not find specified resource: {model_arn}")
    er.require_trained(call, model_arn, "be served by an endpoint")


def _no_flywheels(params: dict[str, Any]) -> None:
    if "FlywheelArn" in params:
        raise InvalidRequestException("Flywheels are not supported by MLHarbor; pass a recognizer ModelArn.")


def create_endpoint(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    _no_flywheels(params)
    model_arn = params.get("ModelArn")
    if model_arn is None:
        raise InvalidRequestException("ModelArn is required.")
    units = params["DesiredInferenceUnits"]
    if units > MAX_UNITS_PER_ENDPOINT:
        raise ResourceLimitExceededException(
            f"An endpoint can have at most {MAX_UNITS_PER_ENDPOINT} inference units."
        )
    new_tags = {t["Key"]: t.get("Value", "") for t in params.get("Tags", [])}
    if len(new_tags) > TAG_LIMIT:
        raise TooManyTagsException(f"A resource can have at most {TAG_LIMIT} tags.")
    name = params["EndpointName"]
    arn = arns.entity_recognizer_endpoint(call.region, call.account_id, name)
    token, fingerprint = params.get("ClientRequestToken"), _fingerprint(params)
    if token is not None:
        with call.store.read() as conn:
            earlier = ep.find_by_token(conn, call.account_id, call.region, token)
        if earlier is not None:
            if earlier.request_hash != fingerprint:
                raise InvalidRequestException(
                    "The ClientRequestToken was already used with different request parameters."
                )
            return {"EndpointArn": earlier.arn, "ModelArn": earlier.desired_model_arn}
    _trained_model(call, model_arn)
    now = round(time.time(), 3)
    try:
        with call.store.begin() as conn:
            count, used = ep.usage(conn, call.account_id, call.region)
            if count >= MAX_ENDPOINTS:
                raise ResourceLimitExceededException(
                    f"An account can have at most {MAX_ENDPOINTS} endpoints per region."
                )
            if used + units > MAX_UNITS:
                raise ResourceLimitExceededException(
                    f"An account can have at most {MAX_UNITS} inference units per region ({used} in use)."
                )
            conn.execute(
                insert(ep_table).values(
                    arn=arn, account_id=call.account_id, region=call.region, name=name,
                    status=ep.STATES.initial, version=0, created_at=now, updated_at=now,
                    model_arn=None, current_units=0, data_access_role_arn=None,
                    desired_model_arn=model_arn, desired_units=units,
                    desired_data_access_role_arn=params.get("DataAccessRoleArn"), generation=0,
                    client_token=token, request_hash=fingerprint, incarnation=attempts.new_incarnation(),
                )
            )  # fmt: skip
            tags.put(conn, arn, new_tags)
    except IntegrityError:
        raise ResourceInUseException(f"The endpoint name {name} is already in use.") from None
    call.server.reconciler.wake()
    return {"EndpointArn": arn, "ModelArn": model_arn}


def describe_endpoint(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {"EndpointProperties": ep.describe(_endpoint(call, params["EndpointArn"]))}


def list_endpoints(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return ep.LISTING.respond(call, params, "EndpointPropertiesList", ep.describe)


def update_endpoint(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    _no_flywheels(params)
    row = _endpoint(call, params["EndpointArn"])
    changes = {
        "desired_model_arn": params.get("DesiredModelArn", row.desired_model_arn),
        "desired_units": params.get("DesiredInferenceUnits", row.desired_units),
        "desired_data_access_role_arn": params.get(
            "DesiredDataAccessRoleArn", row.desired_data_access_role_arn
        ),
    }
    if not {"DesiredModelArn", "DesiredInferenceUnits", "DesiredDataAccessRoleArn"} & params.keys():
        raise InvalidRequestException(
            "Specify at least one of DesiredModelArn, DesiredInferenceUnits or DesiredDataAccessRoleArn."
        )
    if row.status not in ep.UPDATABLE:
        raise ResourceInUseException(f"The endpoint is {row.status}; it can be updated when IN_SERVICE.")
    if changes["desired_units"] > MAX_UNITS_PER_ENDPOINT:
        raise ResourceLimitExceededException(
            f"An endpoint can have at most {MAX_UNITS_PER_ENDPOINT} inference units."
        )
    if "DesiredModelArn" in params:
        _trained_model(call, params["DesiredModelArn"])
    with call.store.read() as conn:
        _, used = ep.usage(conn, call.account_id, call.region)
    if used - row.desired_units + changes["desired_units"] > MAX_UNITS:
        raise ResourceLimitExceededException(
            f"An account can have at most {MAX_UNITS} inference units per region ({used} in use)."
        )
    if not ep.move(call.server, row, "UPDATING", message=None, **changes):
        current = _endpoint(call, row.arn).status
        raise ResourceInUseException(f"The endpoint is {current}; it can be updated when IN_SERVICE.")
    call.server.reconciler.wake()
    return {"DesiredModelArn": changes["desired_model_arn"]}


def delete_endpoint(call: Call, params: dict[str, Any]) -> None:
    row = _endpoint(call, params["EndpointArn"])
    if row.status == "DELETING":
        return
    if row.status not in ep.DELETABLE or not ep.move(call.server, row, "DELETING"):
        current = _endpoint(call, row.arn).status
        if current == "DELETING":
            return
        raise ResourceInUseException(f"The endpoint is {current}; wait until it is IN_SERVICE to delete it.")
    call.server.reconciler.wake()


# --- DetectEntities -------------------------------------------------------------------------------
def _shared(call: Call) -> tuple[WorkerPool, ep.Addresses]:
    extras = call.server.extras
    if "comprehend.workers" not in extras:
        extras["comprehend.workers"] = WorkerPool()
        extras["comprehend.addresses"] = ep.Addresses(call.server)
    return extras["comprehend.workers"], extras["comprehend.addresses"]


def _check_detect_input(params: dict[str, Any]) -> str:
    if "EndpointArn" not in params:
        if "LanguageCode" in params:
            raise UnsupportedLanguageException(BUILT_IN_MESSAGE)
        raise InvalidRequestException("Specify EndpointArn (or LanguageCode for built-in entity types).")
    if "Bytes" in params or "DocumentReaderConfig" in params:
        if "Text" in params:
            raise InvalidRequestException("Specify either Text or Bytes, not both.")
        raise InvalidRequestException(
            "Bytes (semi-structured documents: PDF, Word, images) would need Amazon Textract, which "
            "MLHarbor does not include; send the document's text as Text."
        )
    text = params.get("Text")
    if text is None:
        raise InvalidRequestException("Text is required.")
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise TextSizeLimitExceededException(
            f"Text is {size} bytes of UTF-8; a custom entity recognizer endpoint accepts at most "
            f"{MAX_TEXT_BYTES} bytes per request."
        )
    return text


async def detect_entities(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    text = _check_detect_input(params)
    arn = params["EndpointArn"]
    row = _endpoint(call, arn)
    if ep.serving_generation(row) is None:  # also an update of a FAILED endpoint: nothing serves yet
        raise ResourceUnavailableException(f"The endpoint is {row.status}; it can be used when IN_SERVICE.")
    pool, addresses = _shared(call)
    # The serving worker holds the request to the endpoint's inference units (capacity.py).
    entities = await _infer(call, row, pool, addresses, text)
    return {
        "Entities": [
            {"Score": score, "Type": label, "Text": text[begin:end], "BeginOffset": begin, "EndOffset": end}
            for begin, end, label, score in entities
        ]
    }


async def _infer(
    call: Call, row: Any, pool: WorkerPool, addresses: ep.Addresses, text: str
) -> list[list[Any]]:
    deadline = time.monotonic() + WORKER_WAIT_SECONDS
    while True:
        ready = addresses.ready(row)
        if ready:
            connection = pool.connection(ready)
            try:
                [entities] = await asyncio.wait_for(connection.infer([text]), ANSWER_TIMEOUT_SECONDS)
                return entities
            except Throttled as exc:
                raise TooManyRequestsException(str(exc)) from None
            except WorkerGone:
                addresses.forget(row)  # that worker went away (restart, update); read them afresh
            except TimeoutError:
                raise ResourceUnavailableException(
                    "The endpoint's model server did not answer in time."
                ) from None
        if time.monotonic() >= deadline:
            raise ResourceUnavailableException(
                "The endpoint's model servers are starting; retry the request shortly."
            )
        await asyncio.sleep(0.05)
        row = _endpoint(call, row.arn)  # the serving generation may have changed meanwhile
        if ep.serving_generation(row) is None:
            raise ResourceUnavailableException(
                f"The endpoint is {row.status}; it can be used when IN_SERVICE."
            )


OPERATIONS: dict[str, Handler] = {
    "CreateEndpoint": create_endpoint,
    "DescribeEndpoint": describe_endpoint,
    "ListEndpoints": list_endpoints,
    "UpdateEndpoint": update_endpoint,
    "DeleteEndpoint": delete_endpoint,
    "DetectEntities": detect_entities,
}
