"""Stream processors: the list (status, StatusMessage, input, type), and a processor's page: its facts, Start
and Stop (the API's own operations), the worker's records/s, latency and CPU (its heartbeat), the live view
(``live.py``: the latest analysed frame with its boxes, pushed as server-sent events) and, for connected
home, the frames and crops the session stored in S3, served from the object store: only from a bucket of the
signed-in account, never one of MLHarbor's own (CreateStreamProcessor does not check who owns the
destination)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from sqlalchemy import bindparam, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from mlharbor import arns
from mlharbor.blobs.store import BlobNotFound, InvalidS3Uri
from mlharbor.console import live
from mlharbor.console.session import COOKIE, Who
from mlharbor.console.web import (
    REFRESH_HEADER,
    Paging,
    console_of,
    data,
    error,
    page,
    readable_buckets,
    render,
)
from mlharbor.services.rekognition import kinds
from mlharbor.services.rekognition import stream_processors as sp
from mlharbor.store import tables as t

log = logging.getLogger(__name__)
table = t.stream_processors
ACTIVE = frozenset({"STARTING", "RUNNING"})
MAX_S3_OBJECTS = 100  # of the current session, on the page
MAX_LIVE_NAMES = 50  # processors in one live stream
SHOWN_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "json": "application/json"}

_OWNER = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
# Name order uses the (account, region, name) unique index: a page costs its 50 rows, not the account's.
_LIST = (
    select(
        table.c.name, table.c.status, table.c.status_message, table.c.input_stream_arn, table.c.spec,
        table.c.created_at,
    )
    .where(_OWNER)
    .order_by(table.c.name)
    .offset(bindparam("offset"))
    .limit(bindparam("limit"))
)  # fmt: skip
_NAMED = select(table.c.arn, table.c.name).where(_OWNER, table.c.name.in_(bindparam("names", expanding=True)))
_PROGRESS = select(t.work_leases.c.progress).where(t.work_leases.c.work_id == bindparam("work_id"))
_FRAME = select(t.live_views.c.seq, t.live_views.c.jpeg).where(
    t.live_views.c.processor_arn == bindparam("arn"),
    t.live_views.c.account_id == bindparam("account_id"),
    t.live_views.c.region == bindparam("region"),
)


def _kind(spec: dict[str, Any]) -> str:
    return "face search" if "FaceSearch" in spec.get("Settings", {}) else "connected home"


def _stream_name(arn: str | None) -> str:
    named = arns.named_stream(arn) if arn else None
    return named[2] if named else (arn or "")


def _link(section: str, name: str | None) -> str:
    """The console's page of a resource, its name quoted; no link without a name."""
    return f"/console/{section}/{quote(name, safe='')}" if name else ""


async def processors(request: Request, who: Who) -> Response:
    paging = Paging.of(request)
    with console_of(request).server.store.read() as conn:
        rows = conn.execute(
            _LIST, {"account_id": who.account_id, "region": who.region, "offset": paging.offset,
                    "limit": paging.limit},
        ).all()  # fmt: skip
    rows, more = paging.split(rows)
    items = [
        {
            "name": row.name, "status": row.status, "message": row.status_message or "",
            "input": _stream_name(row.input_stream_arn), "kind": _kind(row.spec), "created": row.created_at,
        }
        for row in rows
    ]  # fmt: skip
    return render(
        request, who, "processors.html", section="processors", items=items, paging=paging, more=more
    )


def _find(request: Request, who: Who) -> Any:
    with console_of(request).server.store.read() as conn:
        return sp.find(conn, who.account_id, who.region, request.path_params["name"])


def _s3_root(row: Any) -> tuple[str, str] | None:
    """(bucket, key prefix) under which a connected home processor's sessions write, or None."""
    destination = row.spec.get("Output", {}).get("S3Destination")
    if destination is None:
        return None
    parts = (destination.get("KeyPrefix", "").strip("/"), row.name)
    return destination["Bucket"], "/".join(p for p in parts if p) + "/"


def _readable(conn: Any, server: Any, who: Who, bucket: str) -> bool:
    """Whether the console may read ``bucket`` for the signed-in account: a bucket of that account, never
    one of MLHarbor's own (a processor may name any bucket as its destination)."""
    return bool(readable_buckets(conn, server, who, {bucket}))


def _facts(row: Any) -> list[tuple[str, str, str]]:
    """(label, text, link) of what a processor is made of."""
    spec = row.spec
    named = arns.named_stream(row.input_stream_arn) if row.input_stream_arn else None
    facts = [
        ("ARN", row.arn, ""),
        ("Type", _kind(spec), ""),
        ("Input", _stream_name(row.input_stream_arn), _link("videos", named[2] if named else None)),
    ]
    output = spec.get("Output", {})
    if "KinesisDataStream" in output:
        facts.append(
            ("Output", f"Kinesis data stream {_stream_name(output['KinesisDataStream']['Arn'])}", "")
        )
    if "S3Destination" in output:
        s3 = output["S3Destination"]
        facts.append(("Output", f"s3://{s3['Bucket']}/{s3.get('KeyPrefix', '')}", ""))
    settings = spec.get("Settings", {})
    if "FaceSearch" in settings:
        face = settings["FaceSearch"]
        collection = face.get("CollectionId", "")
        facts.append(("Collection", collection, _link("collections", collection)))
        facts.append(("Face match threshold", f"{face.get('FaceMatchThreshold', 80.0):g}", ""))
    if "ConnectedHome" in settings:
        home = settings["ConnectedHome"]
        facts.append(("Labels", ", ".join(home.get("Labels", [])), ""))
        facts.append(("Minimum confidence", f"{home.get('MinConfidence', 50.0):g}", ""))
    if "NotificationChannel" in spec:
        facts.append(("Notifications", spec["NotificationChannel"].get("SNSTopicArn", ""), ""))
    if spec.get("KmsKeyId"):
        facts.append(("KMS key", spec["KmsKeyId"], ""))
    if spec.get("RegionsOfInterest"):
        facts.append(("Regions of interest", str(len(spec["RegionsOfInterest"])), ""))
    if "DataSharingPreference" in spec:
        opt_in = spec["DataSharingPreference"].get("OptIn", False)
        facts.append(("Data sharing", "opted in" if opt_in else "opted out", ""))
    facts.append(("Role", spec.get("RoleArn", ""), ""))
    if row.session_id:
        facts.append(("Session", row.session_id, ""))
    return facts


async def processor(request: Request, who: Who) -> Response:
    server = console_of(request).server
    name = request.path_params["name"]
    root, readable = None, False
    with server.store.read() as conn:
        row = sp.find(conn, who.account_id, who.region, name)
        progress = None
        if row is not None and row.status in ACTIVE:
            progress = conn.execute(_PROGRESS, {"work_id": kinds.stream_work_id(row)}).scalar()
        if row is not None:
            root = _s3_root(row)
            readable = root is not None and _readable(conn, server, who, root[0])
    if row is None:
        response = render(request, who, "processor.html", section="processors", missing=name)
        response.status_code = 404
        return response
    s3_objects: list[dict[str, Any]] = []
    # A block refreshing itself names itself (console.js): the S3 listing is only made for the page and its
    # own block, not every time the status block refreshes.
    part = request.headers.get(REFRESH_HEADER)
    if root is not None and readable and row.session_id and part in (None, "s3-frames"):
        s3_objects = await run_in_threadpool(_session_objects, server, root, row.session_id)
    return render(
        request, who, "processor.html", section="processors", p=row, kind=_kind(row.spec),
        facts=_facts(row), worker=_worker(progress or {}), active=row.status in ACTIVE, s3_root=root,
        s3_readable=readable, s3_objects=s3_objects,
    )  # fmt: skip


def _worker(progress: dict[str, Any]) -> list[tuple[str, str]]:
    """The worker's last heartbeat, as the page shows it."""

    def shown(key: str, form: str) -> str:
        value = progress.get(key)
        return form.format(value) if isinstance(value, int | float) else "–"

    return [
        ("Records/s", shown("records_per_s", "{:g}")),
        ("Latency", shown("latency_ms", "{:.0f} ms")),
        ("Worker CPU", shown("cpu", "{:.0%}")),
        ("Frames analysed", shown("frames", "{}")),
    ]


def _session_objects(server: Any, root: tuple[str, str], session_id: str) -> list[dict[str, Any]]:
    bucket, prefix = root
    try:
        listed = server.blobs.list_page(bucket, prefix=f"{prefix}{session_id}/", limit=MAX_S3_OBJECTS)
    except Exception as exc:  # an S3 back end that cannot be reached: the page shows the rest
        log.warning("listing s3://%s/%s%s/: %s", bucket, prefix, session_id, exc)
        return []
    return [
        {
            "key": key, "name": key[len(prefix) + len(session_id) + 1 :],
            "size": meta.size if meta is not None else None, "image": key.endswith(".jpg"),
        }
        for key, meta in listed
        if meta is not None
    ]  # fmt: skip


def _other_scope(request: Request, who: Who) -> Response | None:
    """409 when the stream asks for an account and region (``?account=…&region=…``: the page's, or the shared
    worker's) other than the session's: the browser signed in again elsewhere since, and a processor of the
    same name there is not what that page shows."""
    account, region = request.query_params.get("account"), request.query_params.get("region")
    if (account or region) and (account, region) != (who.account_id, who.region):
        return error("SessionChanged", "Signed in to another account or region: reload the page.", 409)
    return None


async def live_events(request: Request, who: Who) -> Response:
    """GET /console/processors/{name}/live: the processor's frames as server-sent events."""
    refused = _other_scope(request, who)
    if refused is not None:
        return refused
    row = _find(request, who)
    if row is None:
        name = request.path_params["name"]
        return error("ResourceNotFoundException", f"Stream processor {name} not found.", 404)
    return _stream(request, [live.Target(row.arn, row.name, who.account_id, who.region)])


async def live_many(request: Request, who: Who) -> Response:
    """GET /console/live?name=a&name=b: the frames of several processors in one stream (a browser's pages
    share it: ``static/live-worker.js``). Names of no processor of the account are left out."""
    refused = _other_scope(request, who)
    if refused is not None:
        return refused
    names = list(dict.fromkeys(request.query_params.getlist("name")))[:MAX_LIVE_NAMES]
    with console_of(request).server.store.read() as conn:
        rows = conn.execute(
            _NAMED, {"account_id": who.account_id, "region": who.region, "names": names}
        ).all()  # fmt: skip
    if not rows:
        return error("ResourceNotFoundException", "No such stream processor.", 404)
    return _stream(request, [live.Target(row.arn, row.name, who.account_id, who.region) for row in rows])


def _stream(request: Request, targets: list[live.Target]) -> Response:
    console = console_of(request)
    hub = live.hub_of(console.server)
    cookie = request.cookies.get(COOKIE)

    def still_signed_in() -> Who | None:  # the stream ends with the session that opened it
        return console.sessions.who(cookie)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    stream = live.events(hub, targets, still_signed_in)
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


def _stored_frame(server: Any, arn: str, who: Who) -> bytes | None:
    """In a thread: the processor's frame as its row holds it (a blob: on PostgreSQL, a round trip)."""
    with server.store.read() as conn:
        stored = conn.execute(
            _FRAME, {"arn": arn, "account_id": who.account_id, "region": who.region}
        ).first()
    return stored.jpeg if stored is not None else None


async def frame(request: Request, who: Who) -> Response:
    """GET /console/processors/{name}/frame.jpg: the latest analysed frame (the hub's copy while the
    processor is watched here, else the stored one)."""
    row = _find(request, who)
    if row is None:
        return error("ResourceNotFoundException", "Stream processor not found.", 404)
    server = console_of(request).server
    jpeg = live.hub_of(server).latest_jpeg(row.arn)
    if jpeg is None:
        jpeg = await run_in_threadpool(_stored_frame, server, row.arn, who)
    if jpeg is None:
        return error("ResourceNotFoundException", "No frame was analysed while the live view was open.", 404)
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def s3_object(request: Request, who: Who) -> Response:
    """GET /console/processors/{name}/s3/{key}: an object a connected home session stored (only under the
    processor's own S3 destination, and only from a bucket of the account), read from the object store."""
    server = console_of(request).server
    key = request.path_params["key"]
    with server.store.read() as conn:
        row = sp.find(conn, who.account_id, who.region, request.path_params["name"])
        root = _s3_root(row) if row is not None else None
        if root is not None and not _readable(conn, server, who, root[0]):
            root = None
    if root is None or not key.startswith(root[1]) or "/../" in f"/{key}/":
        return error("ResourceNotFoundException", "Not found.", 404)
    try:
        body = await run_in_threadpool(server.blobs.get, f"s3://{root[0]}/{key}")
    except (BlobNotFound, InvalidS3Uri):
        return error("ResourceNotFoundException", "Not found.", 404)
    # What the session writes is shown (JPEG frames and crops, results.json); anything else put there through
    # the S3 API is only downloaded, never rendered as a page of the console.
    media_type = SHOWN_TYPES.get(key.rsplit(".", 1)[-1].lower())
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if media_type is None:
        media_type, headers["Content-Disposition"] = "application/octet-stream", "attachment"
    return Response(body, media_type=media_type, headers=headers)


ROUTES: list[BaseRoute] = [
    Route("/console/processors", page(processors)),
    Route("/console/live", data(live_many)),
    Route("/console/processors/{name}", page(processor)),
    Route("/console/processors/{name}/live", data(live_events)),
    Route("/console/processors/{name}/frame.jpg", data(frame)),
    Route("/console/processors/{name}/s3/{key:path}", data(s3_object)),
]
