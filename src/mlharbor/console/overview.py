"""Overview: the server (health, version, database, object store, runtime), how many resources of each kind
the account has in each state, and the recent failures with their messages."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func, literal, literal_column, select, union_all
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mlharbor import __version__
from mlharbor.console.session import Who
from mlharbor.console.web import console_of, page, render
from mlharbor.store import tables as t

# (kind shown, table, state column or None when the kind has no state, console page)
KINDS: tuple[tuple[str, Table, str | None, str], ...] = (
    ("Stream processors", t.stream_processors, "status", "/console/processors"),
    ("Entity recognizers", t.entity_recognizers, "status", "/console/recognizers"),
    ("Endpoints", t.comprehend_endpoints, "status", "/console/endpoints"),
    ("Entities detection jobs", t.entities_detection_jobs, "status", "/console/endpoints#jobs"),
    ("Face collections", t.face_collections, None, "/console/collections"),
    ("Video streams", t.video_streams, "status", "/console/videos"),
    ("Kinesis data streams", t.kinesis_streams, "status", ""),
    ("SNS topics", t.sns_topics, None, ""),
    ("S3 buckets", t.s3_buckets, None, ""),
)

# (kind, table, name column, failed states, message column, time column)
FAILURES = (
    ("Stream processor", t.stream_processors, "name", ("FAILED",), "status_message", "updated_at",
     "/console/processors/"),
    ("Entity recognizer", t.entity_recognizers, "name", ("IN_ERROR",), "message", "updated_at",
     "/console/recognizers/"),
    ("Endpoint", t.comprehend_endpoints, "name", ("FAILED",), "message", "updated_at", "/console/endpoints/"),
    ("Detection job", t.entities_detection_jobs, "job_id", ("FAILED",), "message", "updated_at",
     "/console/jobs/"),
)  # fmt: skip
RECENT_FAILURES = 20


def counts(conn: Any, who: Who) -> list[dict[str, Any]]:
    kinds = []
    for label, table, state, link in KINDS:
        mine = (table.c.account_id == who.account_id) & (table.c.region == who.region)
        if state is None:
            total = conn.execute(select(func.count()).select_from(table).where(mine)).scalar_one()
            states: dict[str, int] = {}
        else:
            column = table.c[state]
            rows = conn.execute(select(column, func.count()).where(mine).group_by(column)).all()
            states = {row[0]: row[1] for row in rows}
            total = sum(states.values())
        kinds.append({"label": label, "total": total, "states": dict(sorted(states.items())), "link": link})
    return kinds


def failures(conn: Any, who: Who) -> list[dict[str, Any]]:
    parts = []
    for kind, table, name, states, message, at, _ in FAILURES:
        parts.append(
            select(
                literal(kind).label("kind"), table.c[name].label("name"), table.c.status.label("status"),
                table.c[message].label("message"), table.c[at].label("at"),
            ).where(
                table.c.account_id == who.account_id, table.c.region == who.region, table.c.status.in_(states)
            )
        )  # fmt: skip
    query = union_all(*parts).order_by(literal_column("at").desc()).limit(RECENT_FAILURES)
    links = {kind: link for kind, *_, link in FAILURES}
    return [{**row._asdict(), "link": links[row.kind] + str(row.name)} for row in conn.execute(query)]


async def overview(request: Request, who: Who) -> Response:
    server = console_of(request).server
    settings = server.settings
    with server.store.read() as conn:
        kinds, failed = counts(conn, who), failures(conn, who)
    healthy = await run_in_threadpool(server.store.ping)  # a database that hangs must not hang the loop
    return render(
        request, who, "overview.html", section="overview",
        health="ok" if healthy else "degraded", version=__version__,
        database=server.store.dialect, object_store=settings.object_store, runtime=settings.runtime,
        kinds=kinds, failures=failed,
    )  # fmt: skip


ROUTES: list[BaseRoute] = [Route("/console/", page(overview))]
