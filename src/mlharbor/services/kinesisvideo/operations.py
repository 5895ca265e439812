"""Kinesis Video Streams control plane: one small function per AWS operation.

Streams are records in the database. Creating one is immediate here, so a stream is ``ACTIVE`` as soon
as CreateStream returns (AWS passes through ``CREATING`` for a few seconds; producers wait for ``ACTIVE``
either way). Every change gives the stream a new ``Version``; a change that names an older
``CurrentVersion`` is refused with VersionMismatchException, decided in the same UPDATE that makes it.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError

from mlharbor import arns
from mlharbor.api.services import Handler
from mlharbor.context import Call
from mlharbor.errors import (
    AccountStreamLimitExceededException,
    BadPaginationToken,
    InvalidArgumentException,
    ResourceInUseException,
    ResourceNotFoundException,
    TagsPerResourceExceededLimitException,
    VersionMismatchException,
)
from mlharbor.services import attempts, tags
from mlharbor.services.kinesisvideo import fragments, streams
from mlharbor.store.tables import video_streams as table

TAG_LIMIT = 50
NAME_IN_USE = "The stream {} already exists."


def _check_tags(count: int) -> None:
    if count > TAG_LIMIT:
        raise TagsPerResourceExceededLimitException(f"A stream can have at most {TAG_LIMIT} tags.")


def create_stream(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    name = params["StreamName"]
    retention = params.get("DataRetentionInHours", 0)
    if retention > streams.MAX_RETENTION_HOURS:
        raise InvalidArgumentException(f"DataRetentionInHours must be at most {streams.MAX_RETENTION_HOURS}.")
    new_tags = params.get("Tags", {})
    _check_tags(len(new_tags))
    now = time.time()
    arn = arns.video_stream(call.region, call.account_id, name, int(now * 1000))
    try:
        with call.store.begin() as conn:
            if streams.count(conn, call.account_id, call.region) >= streams.STREAM_LIMIT:
                raise AccountStreamLimitExceededException(
                    f"The account has reached its limit of {streams.STREAM_LIMIT} streams."
                )
            conn.execute(
                insert(table).values(
                    arn=arn, account_id=call.account_id, region=call.region, name=name, status="ACTIVE",
                    version=0, stream_version=streams.new_version(), incarnation=attempts.new_incarnation(),
                    created_at=round(now, 3), device_name=params.get("DeviceName"),
                    media_type=params.get("MediaType"), kms_key_id=params.get("KmsKeyId"),
                    retention_hours=retention,
                )
            )  # fmt: skip
            tags.put(conn, arn, new_tags)
    except IntegrityError:
        raise ResourceInUseException(NAME_IN_USE.format(name)) from None
    return {"StreamARN": arn}


def describe_stream(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        return {"StreamInfo": streams.describe(streams.find(conn, call.account_id, call.region, params))}


def list_streams(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    limit = params.get("MaxResults", 10_000)
    condition = params.get("StreamNameCondition", {})
    prefix = condition.get("ComparisonValue")
    if "ComparisonOperator" in condition and prefix is None:
        raise InvalidArgumentException("StreamNameCondition needs a ComparisonValue.")
    after = None
    if params.get("NextToken"):
        after = str(call.server.pager.decode(call.page_scope(), _unwrap(params["NextToken"]))["n"])
    with call.store.read() as conn:
        rows = streams.page(conn, call.account_id, call.region, prefix, after, limit + 1)
    result: dict[str, Any] = {"StreamInfoList": [streams.describe(r) for r in rows[:limit]]}
    if len(rows) > limit:
        token = call.server.pager.encode(call.page_scope(), {"n": rows[limit - 1].name})
        result["NextToken"] = base64.b64encode(token.encode()).decode("ascii")
    return result


def _unwrap(token: str) -> str:
    """Kinesis Video's tokens are base64 (``[a-zA-Z0-9+/=]*``): the signed token travels wrapped in it."""
    try:
        return base64.b64decode(token, validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise BadPaginationToken("The pagination token is not valid.") from None


def _change(call: Call, params: dict[str, Any], **values: Any) -> None:
    """Apply ``values`` (callables get the row) if ``CurrentVersion`` is still the stream's Version."""
    with call.store.begin() as conn:
        row = streams.find(conn, call.account_id, call.region, params)
        if params["CurrentVersion"] != row.stream_version:
            raise VersionMismatchException(
                f"The stream version {params['CurrentVersion']} does not match the current version."
            )
        changes = {k: (v(row) if callable(v) else v) for k, v in values.items()}
        changed = conn.execute(
            update(table)
            .where(table.c.arn == row.arn, table.c.stream_version == row.stream_version)
            .values(stream_version=streams.new_version(), version=table.c.version + 1, **changes)
        ).rowcount
    if changed != 1:  # another change committed in between: this one named an older version
        raise VersionMismatchException("The stream was changed by another request; describe it again.")


def update_stream(call: Call, params: dict[str, Any]) -> None:
    values = {"device_name": params["DeviceName"]} if "DeviceName" in params else {}
    if "MediaType" in params:
        values["media_type"] = params["MediaType"]
    _change(call, params, **values)


def update_data_retention(call: Call, params: dict[str, Any]) -> None:
    delta = params["DataRetentionChangeInHours"]
    increase = params["Operation"] == "INCREASE_DATA_RETENTION"

    def retention(row: Any) -> int:
        hours = row.retention_hours + (delta if increase else -delta)
        if not 0 <= hours <= streams.MAX_RETENTION_HOURS:
            raise InvalidArgumentException(
                f"The data retention would be {hours} hours; it must be between 0 and "
                f"{streams.MAX_RETENTION_HOURS}."
            )
        return hours

    _change(call, params, retention_hours=retention)
    with call.store.begin() as conn:
        # Decreasing deletes older data at once, as AWS does; increasing keeps the archive longer.
        row = streams.find(conn, call.account_id, call.region, params)
        fragments.retain(conn, row.arn, row.retention_hours)


def delete_stream(call: Call, params: dict[str, Any]) -> None:
    with call.store.begin() as conn:
        row = streams.find(conn, call.account_id, call.region, {"StreamARN": params["StreamARN"]})
        current = params.get("CurrentVersion")
        if current is not None and current != row.stream_version:
            raise VersionMismatchException(f"The stream version {current} does not match the current one.")
        where = [table.c.arn == row.arn]
        if current is not None:
            where.append(table.c.stream_version == current)
        if conn.execute(delete(table).where(*where)).rowcount != 1:
            raise VersionMismatchException("The stream was changed by another request; describe it again.")
        tags.remove_all(conn, row.arn)
        fragments.retain(conn, row.arn, None)  # the retention pass deletes them; readers see none now


def get_data_endpoint(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    with call.store.read() as conn:
        streams.find(conn, call.account_id, call.region, params)
    # Every API of the data plane is served here, on the URL the client already reaches.
    return {"DataEndpoint": call.endpoint}


# --- Tags: by stream (map) and by resource ARN (list of Key/Value) -----------------------------------------
def _tagged(call: Call, params: dict[str, Any]) -> str:
    with call.store.read() as conn:
        return str(streams.find(conn, call.account_id, call.region, params).arn)


def _tag(call: Call, arn: str, new: dict[str, str]) -> None:
    with call.store.begin() as conn:
        _check_tags(tags.count_after(conn, arn, new))
        tags.put(conn, arn, new)


def _untag(call: Call, arn: str, keys: list[str]) -> None:
    with call.store.begin() as conn:
        tags.remove(conn, arn, keys)


def _listed(call: Call, arn: str) -> dict[str, Any]:
    with call.store.read() as conn:
        return {"Tags": tags.get(conn, arn)}  # at most 50: one page


def tag_stream(call: Call, params: dict[str, Any]) -> None:
    _tag(call, _tagged(call, params), params["Tags"])


def untag_stream(call: Call, params: dict[str, Any]) -> None:
    _untag(call, _tagged(call, params), params["TagKeyList"])


def list_tags_for_stream(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _listed(call, _tagged(call, params))


def _resource(call: Call, params: dict[str, Any]) -> str:
    try:
        return _tagged(call, {"StreamARN": params["ResourceARN"]})
    except ResourceNotFoundException:
        raise ResourceNotFoundException(f"The resource {params['ResourceARN']} is not found.") from None


def tag_resource(call: Call, params: dict[str, Any]) -> None:
    _tag(call, _resource(call, params), {t["Key"]: t["Value"] for t in params["Tags"]})


def untag_resource(call: Call, params: dict[str, Any]) -> None:
    _untag(call, _resource(call, params), params["TagKeyList"])


def list_tags_for_resource(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    return _listed(call, _resource(call, params))


OPERATIONS: dict[str, Handler] = {
    "CreateStream": create_stream,
    "DescribeStream": describe_stream,
    "ListStreams": list_streams,
    "UpdateStream": update_stream,
    "UpdateDataRetention": update_data_retention,
    "DeleteStream": delete_stream,
    "GetDataEndpoint": get_data_endpoint,
    "TagStream": tag_stream,
    "UntagStream": untag_stream,
    "ListTagsForStream": list_tags_for_stream,
    "TagResource": tag_resource,
    "UntagResource": untag_resource,
    "ListTagsForResource": list_tags_for_resource,
}
