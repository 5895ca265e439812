"""Comprehend operations: one small function per AWS operation."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from mlharbor import arns
from mlharbor.api.services import Handler
from mlharbor.context import Call
from mlharbor.errors import (
    InvalidRequestException,
    ResourceInUseException,
    ResourceNotFoundException,
    TooManyTagKeysException,
    TooManyTagsException,
    UnsupportedLanguageException,
)
from mlharbor.services import attempts, tags
from mlharbor.services.comprehend import endpoint_operations, endpoints, job_operations, jobs
from mlharbor.services.comprehend import recognizers as er
from mlharbor.services.comprehend.kinds import training_work_id
from mlharbor.services.comprehend.recognizers import move
from mlharbor.store.tables import entity_recognizers as er_table

TAG_LIMIT = 50
MAX_ENTITY_TYPES = 25
# Recognizer training is documented for these languages only (the model's enum lists more).
TRAINING_LANGUAGES = ("en", "es", "fr", "de", "it", "pt")


def describe_entity_recognizer(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return {"EntityRecognizerProperties": er.describe(_recognizer(call, params["EntityRecognizerArn"]))}


def list_entity_recognizers(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return er.LISTING.respond(call, params, "EntityRecognizerPropertiesList", er.describe)


def list_entity_recognizer_summaries(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return er.SUMMARIES.respond(call, params, "EntityRecognizerSummariesList", er.summarize)


def _input_config(config: dict[str, Any]) -> dict[str, Any]:
    """AWS's cross-field rules for InputDataConfig, and its defaults filled in as Describe shows them."""
    config = {**config}
    data_format = config.setdefault("DataFormat", "COMPREHEND_CSV")
    if data_format == "COMPREHEND_CSV":
        if "Documents" not in config:
            raise InvalidRequestException("Documents is required when DataFormat is COMPREHEND_CSV.")
        if ("Annotations" in config) == ("EntityList" in config):
            raise InvalidRequestException("Specify exactly one of Annotations or EntityList.")
        if "AugmentedManifests" in config:
            raise InvalidRequestException(
                "AugmentedManifests can be used only when DataFormat is AUGMENTED_MANIFEST."
            )
        config["Documents"] = {"InputFormat": "ONE_DOC_PER_LINE", **config["Documents"]}
        test_docs = "TestS3Uri" in config["Documents"]
        test_annotations = "TestS3Uri" in config.get("Annotations", {})
        if test_docs != test_annotations and "EntityList" not in config:
            raise InvalidRequestException(
                "Documents.TestS3Uri and Annotations.TestS3Uri must be given together."
            )
        if "EntityList" in config and test_docs:
            raise InvalidRequestException(
                "A test set can be given only with Annotations, not with an EntityList."
            )
    else:
        if not config.get("AugmentedManifests"):
            raise InvalidRequestException(
                "AugmentedManifests is required when DataFormat is AUGMENTED_MANIFEST."
            )
        for member in ("Documents", "Annotations", "EntityList"):
            if member in config:
                raise InvalidRequestException(
                    f"{member} can't be used when DataFormat is AUGMENTED_MANIFEST."
                )
    types = [t["Type"] for t in config["EntityTypes"]]
    if not 1 <= len(types) <= MAX_ENTITY_TYPES:
        raise InvalidRequestException(f"A recognizer needs between 1 and {MAX_ENTITY_TYPES} entity types.")
    if len(set(types)) != len(types):
        raise InvalidRequestException("EntityTypes contains duplicate types.")
    for name in types:
        if " " in name:
            raise InvalidRequestException(f"Entity type '{name}' must not contain spaces.")
    return config


def _fingerprint(params: dict[str, Any]) -> str:
    body = {k: v for k, v in params.items() if k != "ClientRequestToken"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def create_entity_recognizer(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    if params["LanguageCode"] not in TRAINING_LANGUAGES:
        raise UnsupportedLanguageException(
            f"Custom entity recognizers support only {', '.join(TRAINING_LANGUAGES)}, "
            f"not {params['LanguageCode']}."
        )
    config = _input_config(params["InputDataConfig"])
    new_tags = {t["Key"]: t.get("Value", "") for t in params.get("Tags", [])}
    if len(new_tags) > TAG_LIMIT:
        raise TooManyTagsException(f"A resource can have at most {TAG_LIMIT} tags.")
    name, version = params["RecognizerName"], params.get("VersionName")
    arn = arns.entity_recognizer(call.region, call.account_id, name, version)
    token = params.get("ClientRequestToken")
    fingerprint = _fingerprint(params)
    spec = {key: params[key] for key in er.SPEC_MEMBERS if key in params}
    spec["InputDataConfig"] = config
    now = round(time.time(), 3)  # what clients see on the wire, so time filters match exactly
    try:
        with call.store.begin() as conn:
            if token is not None:
                earlier = conn.execute(
                    select(er_table.c.arn, er_table.c.request_hash).where(
                        er.owned_by_columns(call.account_id, call.region), er_table.c.client_token == token
                    )
                ).first()
                if earlier is not None:
                    if earlier.request_hash != fingerprint:
                        raise InvalidRequestException(
                            "The ClientRequestToken was already used with different request parameters."
                        )
                    return {"EntityRecognizerArn": earlier.arn}  # a retry of the same request
            conn.execute(
                insert(er_table).values(
                    arn=arn, account_id=call.account_id, region=call.region, name=name,
                    version_name=version or "", status=er.STATES.initial, version=0, submitted_at=now,
                    updated_at=now, spec=spec, details={}, client_token=token, request_hash=fingerprint,
                    attempt=0, incarnation=attempts.new_incarnation(),
                )
            )  # fmt: skip
            tags.put(conn, arn, new_tags)
    except IntegrityError:
        raise ResourceInUseException(
            f"The recognizer name {name}"
            + (f" with version {version}" if version else "")
            + " is already in use."
        ) from None
    call.server.reconciler.wake()
    return {"EntityRecognizerArn": arn}


def _recognizer(call: Call, arn: str):  # type: ignore[no-untyped-def]
    with call.store.read() as conn:
        row = er.find_by_arn(conn, call.account_id, call.region, arn)
    if row is None:
        raise ResourceNotFoundException(f"Could not find specified resource: {arn}")
    return row


def stop_training_entity_recognizer(call: Call, params: dict[str, Any]) -> None:
    row = _recognizer(call, params["EntityRecognizerArn"])
    if row.status in ("STOP_REQUESTED", "STOPPED"):
        return  # clients retry; a repeated stop changes nothing
    moved = move(call.store, row.arn, {"SUBMITTED": "STOP_REQUESTED", "TRAINING": "STOP_REQUESTED"})
    if moved is None:
        current = _recognizer(call, row.arn).status
        if current in ("STOP_REQUESTED", "STOPPED"):
            return
        raise InvalidRequestException(
            f"The recognizer is {current}; only a recognizer in training can be stopped."
        )
    # The worker also notices through the database; telling it directly saves it a poll.
    call.server.executor.request_stop(str(training_work_id(row)))
    call.server.reconciler.wake()


def delete_entity_recognizer(call: Call, params: dict[str, Any]) -> None:
    row = _recognizer(call, params["EntityRecognizerArn"])
    if row.status == "DELETING":
        return
    with call.store.read() as conn:
        if endpoints.using_model(conn, row.arn):
            raise ResourceInUseException("An endpoint uses this recognizer; delete the endpoint first.")
        if jobs.active_for_recognizer(conn, row.arn):
            raise ResourceInUseException("An entities detection job is using this recognizer.")
    deletable = {state: "DELETING" for state in er.DELETABLE}
    if move(call.store, row.arn, deletable) is None:
        current = _recognizer(call, row.arn).status
        if current == "DELETING":
            return
        raise ResourceInUseException(f"The recognizer is {current}; stop its training before deleting it.")
    call.server.reconciler.wake()


def _taggable(call: Call, arn: str) -> str:
    """Tagging accepts this account's recognizers, endpoints and entities detection jobs."""
    parsed = arns.parse(arn)
    kind = parsed.resource_type if parsed else ""
    with call.store.read() as conn:
        if kind == "entity-recognizer-endpoint":
            row = endpoints.find_by_arn(conn, call.account_id, call.region, arn)
        elif kind == "entities-detection-job":
            row = jobs.find_by_arn(conn, call.account_id, call.region, arn)
        else:
            row = er.find_by_arn(conn, call.account_id, call.region, arn)
    if row is None:
        raise ResourceNotFoundException(f"Could not find specified resource: {arn}")
    return arn


def tag_resource(call: Call, params: dict[str, Any]) -> None:
    arn = _taggable(call, params["ResourceArn"])
    new = {t["Key"]: t.get("Value", "") for t in params["Tags"]}
    with call.store.begin() as conn:
        if tags.count_after(conn, arn, new) > TAG_LIMIT:
            raise TooManyTagsException(f"A resource can have at most {TAG_LIMIT} tags.")
        tags.put(conn, arn, new)


def untag_resource(call: Call, params: dict[str, Any]) -> None:
    if len(params["TagKeys"]) > TAG_LIMIT:
        raise TooManyTagKeysException(f"At most {TAG_LIMIT} tag keys can be removed at once.")
    arn = _taggable(call, params["ResourceArn"])
    with call.store.begin() as conn:
        tags.remove(conn, arn, params["TagKeys"])


def list_tags_for_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn = _taggable(call, params["ResourceArn"])
    with call.store.read() as conn:
        current = tags.get(conn, arn)
    return {"ResourceArn": arn, "Tags": [{"Key": k, "Value": v} for k, v in current.items()]}


OPERATIONS: dict[str, Handler] = {
    "CreateEntityRecognizer": create_entity_recognizer,
    "StopTrainingEntityRecognizer": stop_training_entity_recognizer,
    "DeleteEntityRecognizer": delete_entity_recognizer,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTagsForResource": list_tags_for_resource,
    "DescribeEntityRecognizer": describe_entity_recognizer,
    "ListEntityRecognizers": list_entity_recognizers,
    "ListEntityRecognizerSummaries": list_entity_recognizer_summaries,
    **endpoint_operations.OPERATIONS,
    **job_operations.OPERATIONS,
}
