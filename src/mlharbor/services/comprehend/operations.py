"""Comprehend operations: one small function per AWS operation."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from mlharbor.api.services import Handler
from mlharbor.context import Call
from mlharbor.errors import InvalidFilterException, ResourceNotFoundException
from mlharbor.services.comprehend import recognizers as er

DEFAULT_PAGE = 100


def _page_position(call: Call, params: dict[str, Any]) -> tuple[float, str] | None:
    if "NextToken" not in params:
        return None
    position = call.server.pager.decode(call.page_scope(), params["NextToken"])
    return float(position["t"]), str(position["a"])


def describe_entity_recognizer(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    arn = params["EntityRecognizerArn"]
    with call.store.read() as conn:
        row = er.find_by_arn(conn, call.account_id, call.region, arn)
    if row is None:
        raise ResourceNotFoundException(f"Could not find specified resource: {arn}")
    return {"EntityRecognizerProperties": er.describe(row)}


def list_entity_recognizers(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    filters = params.get("Filter", {})
    if len(filters) > 1:
        raise InvalidFilterException("Only one filter member can be specified at a time.")
    limit = params.get("MaxResults", DEFAULT_PAGE)
    with call.store.read() as conn:
        rows = er.page(conn, call.account_id, call.region, filters, _page_position(call, params), limit + 1)
    result: dict[str, Any] = {"EntityRecognizerPropertiesList": [er.describe(r) for r in rows[:limit]]}
    if len(rows) > limit:
        last = rows[limit - 1]
        result["NextToken"] = call.server.pager.encode(
            call.page_scope(), {"t": last.submitted_at, "a": last.arn}
        )
    return result


def list_entity_recognizer_summaries(call: Call, params: dict[str, Any]) -> dict[str, Any]:
    limit = params.get("MaxResults", DEFAULT_PAGE)
    start = 0
    if "NextToken" in params:
        start = int(call.server.pager.decode(call.page_scope(), params["NextToken"])["i"])
    with call.store.read() as conn:
        rows = er.all_rows(conn, call.account_id, call.region)
    summaries = []
    for name, group in groupby(rows, key=lambda r: r.name):
        versions = list(group)
        latest = versions[-1]
        summaries.append(
            {
                "RecognizerName": name,
                "NumberOfVersions": len(versions),
                "LatestVersionCreatedAt": latest.submitted_at,
                "LatestVersionName": latest.version_name or None,
                "LatestVersionStatus": latest.status,
            }
        )
    result: dict[str, Any] = {"EntityRecognizerSummariesList": summaries[start : start + limit]}
    if start + limit < len(summaries):
        result["NextToken"] = call.server.pager.encode(call.page_scope(), {"i": start + limit})
    return result


OPERATIONS: dict[str, Handler] = {
    "DescribeEntityRecognizer": describe_entity_recognizer,
    "ListEntityRecognizers": list_entity_recognizers,
    "ListEntityRecognizerSummaries": list_entity_recognizer_summaries,
}
