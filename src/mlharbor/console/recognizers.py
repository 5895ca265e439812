"""Entity recognizers: the list (a page of 50 at a time), and one recognizer: its status and training
Message live, the training curve (dev F1 per epoch, drawn here as SVG), the evaluation per entity type once
trained, Stop training, and "Try it": DetectEntities on pasted text through an IN_SERVICE endpoint.

Recognizers are unique by (name, version name); ``/console/recognizers/{name}?version=V`` names one version
(``?version=`` the one created without VersionName), and without ``version`` the name's latest one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from sqlalchemy import bindparam, func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mlharbor.console.charts import line_chart
from mlharbor.console.session import Who
from mlharbor.console.web import Paging, console_of, page, render
from mlharbor.store.tables import comprehend_endpoints as endpoints
from mlharbor.store.tables import entity_recognizers as table

LIVE = frozenset({"SUBMITTED", "TRAINING", "STOP_REQUESTED"})  # the page refreshes itself in these
STOPPABLE = frozenset({"SUBMITTED", "TRAINING"})
ANSWERING = ("IN_SERVICE", "UPDATING")  # endpoints that answer DetectEntities (an update keeps serving)
REFRESH_SECONDS = 1
# Once finished nothing changes but a delete; a slow look keeps the page honest without costing anything.
IDLE_REFRESH_SECONDS = 30

# Statements built once with bind parameters; each reads only the columns its page shows.
_MINE = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_LIST = (
    select(table.c.name, table.c.version_name, table.c.status, table.c.spec, table.c.submitted_at)
    .where(_MINE)
    .order_by(table.c.submitted_at.desc(), table.c.arn.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
_COUNT = select(func.count()).select_from(table).where(_MINE)
_DETAIL_COLUMNS = (
    table.c.arn, table.c.name, table.c.version_name, table.c.status, table.c.message, table.c.submitted_at,
    table.c.updated_at, table.c.spec, table.c.details, table.c.curve, table.c.attempt,
)  # fmt: skip
_VERSION = select(*_DETAIL_COLUMNS).where(
    _MINE, table.c.name == bindparam("name"), table.c.version_name == bindparam("version")
)
_LATEST = (
    select(*_DETAIL_COLUMNS)
    .where(_MINE, table.c.name == bindparam("name"))
    .order_by(table.c.submitted_at.desc())
    .limit(1)
)
_VERSIONS = (
    select(table.c.version_name, table.c.status, table.c.submitted_at)
    .where(_MINE, table.c.name == bindparam("name"))
    .order_by(table.c.submitted_at)
)
_ENDPOINTS = (
    select(endpoints.c.name, endpoints.c.arn, endpoints.c.model_arn, endpoints.c.status)
    .where(
        endpoints.c.account_id == bindparam("account_id"),
        endpoints.c.region == bindparam("region"),
        endpoints.c.status.in_(ANSWERING),
    )
    .order_by(endpoints.c.name)
)


def path_of(name: str, version_name: str | None) -> str:
    """The console page of one recognizer version."""
    return f"/console/recognizers/{quote(name, safe='')}?version={quote(version_name or '', safe='')}"


def path_of_arn(arn: str | None) -> str:
    """The page of the recognizer an ARN names (``…:entity-recognizer/NAME[/version/VERSION]``)."""
    if not arn or ":entity-recognizer/" not in arn:
        return ""
    name, _, version = arn.split(":entity-recognizer/", 1)[1].partition("/version/")
    return path_of(name, version)


def label_of_arn(arn: str | None) -> str:
    """A recognizer ARN as people say it: NAME or NAME (VERSION)."""
    if not arn or ":entity-recognizer/" not in arn:
        return arn or ""
    name, _, version = arn.split(":entity-recognizer/", 1)[1].partition("/version/")
    return f"{name} ({version})" if version else name


def _types(spec: dict[str, Any]) -> list[str]:
    return [entry.get("Type", "") for entry in spec.get("InputDataConfig", {}).get("EntityTypes", [])]


async def recognizer_list(request: Request, who: Who) -> Response:
    paging = Paging.of(request)
    mine = {"account_id": who.account_id, "region": who.region}
    with console_of(request).server.store.read() as conn:
        rows = conn.execute(_LIST, {**mine, "limit": paging.limit, "offset": paging.offset}).all()
        total = conn.execute(_COUNT, mine).scalar_one()
    rows, more = paging.split(rows)
    recognizers = [
        {
            "name": row.name, "version": row.version_name, "status": row.status,
            "language": row.spec.get("LanguageCode", ""), "types": _types(row.spec),
            "submitted": row.submitted_at, "link": path_of(row.name, row.version_name),
        }
        for row in rows
    ]  # fmt: skip
    return render(
        request, who, "recognizers.html", section="recognizers",
        recognizers=recognizers, total=total, paging=paging, more=more,
    )  # fmt: skip


def curve_chart(row: Any) -> Any:
    """The training curve of the row's current attempt as SVG, or None before its first epoch."""
    curve = row.curve
    if not isinstance(curve, dict) or curve.get("attempt", row.attempt) != row.attempt:
        return None  # an earlier attempt's curve: a retry trains from the start
    points = [(float(epoch), float(f1)) for epoch, f1 in curve.get("epochs", [])]
    if not points:
        return None
    return line_chart(points, best=curve.get("best_epoch"), x_label="Epoch", y_label="Dev F1")


def _evaluation(details: dict[str, Any]) -> dict[str, Any] | None:
    metadata = details.get("RecognizerMetadata")
    if not metadata:
        return None
    return {
        "overall": metadata.get("EvaluationMetrics") or {},
        "types": metadata.get("EntityTypes") or [],
        "trained": metadata.get("NumberOfTrainedDocuments"),
        "tested": metadata.get("NumberOfTestDocuments"),
    }


async def recognizer_page(request: Request, who: Who) -> Response:
    name = request.path_params["name"]
    version = request.query_params.get("version")
    mine = {"account_id": who.account_id, "region": who.region}
    with console_of(request).server.store.read() as conn:
        if version is None:
            row = conn.execute(_LATEST, {**mine, "name": name}).first()
        else:
            row = conn.execute(_VERSION, {**mine, "name": name, "version": version}).first()
        if row is None:
            response = render(
                request, who, "recognizer.html", section="recognizers", row=None, name=name, version=version
            )
            response.status_code = 404
            return response
        versions = conn.execute(_VERSIONS, {**mine, "name": name}).all()
        answering = conn.execute(_ENDPOINTS, mine).all()
    # Endpoints serving this recognizer first (chosen by default), then every other one that answers.
    serving = [e for e in answering if e.model_arn == row.arn]
    choices = [
        {"name": e.name, "arn": e.arn, "status": e.status, "mine": e.model_arn == row.arn,
         "model": label_of_arn(e.model_arn)}
        for e in serving + [e for e in answering if e.model_arn != row.arn]
    ]  # fmt: skip
    details = row.details or {}
    return render(
        request, who, "recognizer.html", section="recognizers",
        row=row, spec=row.spec, details=details, types=_types(row.spec),
        live=row.status in LIVE, refresh=REFRESH_SECONDS if row.status in LIVE else IDLE_REFRESH_SECONDS,
        stoppable=row.status in STOPPABLE, chart=curve_chart(row), evaluation=_evaluation(details),
        versions=[{**v._asdict(), "link": path_of(name, v.version_name)} for v in versions],
        endpoints=choices, serving=serving,
    )  # fmt: skip


ROUTES: list[BaseRoute] = [
    Route("/console/recognizers", page(recognizer_list)),
    Route("/console/recognizers/{name}", page(recognizer_page)),
]
