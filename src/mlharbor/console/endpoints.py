"""Recognizer endpoints and entities detection jobs: the lists (paged separately: ``?page=`` for endpoints,
``?jobs_page=`` for jobs), an endpoint's state, inference units and throughput (what its serving workers
report in their heartbeats), a job's progress, its configuration, and its output archive, streamed from the
object store to the account that owns the job, when that account also owns the output's bucket."""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import bindparam, func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from mlharbor.blobs.store import BlobNotFound, InvalidS3Uri, S3Uri
from mlharbor.console.recognizers import label_of_arn, path_of_arn
from mlharbor.console.session import Who
from mlharbor.console.web import Paging, console_of, page, readable_buckets, render
from mlharbor.services.comprehend import endpoints as ep
from mlharbor.services.comprehend import jobs
from mlharbor.store.tables import comprehend_endpoints as table
from mlharbor.store.tables import entities_detection_jobs as jobs_table

log = logging.getLogger(__name__)

# States whose page refreshes every second (they change by themselves soon).
ENDPOINT_MOVING = frozenset({"CREATING", "UPDATING", "DELETING"})
JOB_RUNNING = frozenset(jobs.ACTIVE)
THROUGHPUT_REFRESH_SECONDS = 5  # serving workers heartbeat every 5 s
IDLE_REFRESH_SECONDS = 30
OUTPUT_CHUNK = 1 << 20

_MINE = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_JOBS_MINE = (jobs_table.c.account_id == bindparam("account_id")) & (
    jobs_table.c.region == bindparam("region")
)
_ENDPOINTS = (
    select(
        table.c.name, table.c.status, table.c.message, table.c.model_arn, table.c.desired_model_arn,
        table.c.desired_units, table.c.current_units, table.c.updated_at,
    )
    .where(_MINE)
    .order_by(table.c.created_at.desc(), table.c.arn)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)  # fmt: skip
# One endpoint: what its page shows, and what finds its serving workers (ep.serving_generation, worker_id).
_ENDPOINT = select(
    table.c.arn, table.c.name, table.c.status, table.c.message, table.c.model_arn, table.c.desired_model_arn,
    table.c.desired_units, table.c.current_units, table.c.data_access_role_arn, table.c.created_at,
    table.c.updated_at, table.c.incarnation, table.c.version, table.c.generation, table.c.artifact_uri,
).where(_MINE, table.c.name == bindparam("name"))  # fmt: skip
_JOBS = (
    select(
        jobs_table.c.job_id, jobs_table.c.name, jobs_table.c.status, jobs_table.c.message,
        jobs_table.c.recognizer_arn, jobs_table.c.submitted_at, jobs_table.c.end_time,
    )
    .where(_JOBS_MINE)
    .order_by(jobs_table.c.submitted_at.desc(), jobs_table.c.job_id)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)  # fmt: skip
_JOBS_COUNT = select(func.count()).select_from(jobs_table).where(_JOBS_MINE)
_JOB = select(
    jobs_table.c.job_id, jobs_table.c.arn, jobs_table.c.account_id, jobs_table.c.name, jobs_table.c.status,
    jobs_table.c.message, jobs_table.c.recognizer_arn, jobs_table.c.submitted_at, jobs_table.c.end_time,
    jobs_table.c.spec, jobs_table.c.details,
).where(_JOBS_MINE, jobs_table.c.job_id == bindparam("job_id"))  # fmt: skip


def _paging(request: Request, parameter: str) -> Paging:
    try:
        number = int(request.query_params.get(parameter, "1"))
    except ValueError:
        number = 1
    return Paging(max(1, min(number, 100_000)))


def _model(arn: str | None) -> dict[str, str]:
    return {"arn": arn or "", "label": label_of_arn(arn), "link": path_of_arn(arn)}


async def endpoint_list(request: Request, who: Who) -> Response:
    paging, jobs_paging = _paging(request, "page"), _paging(request, "jobs_page")
    mine = {"account_id": who.account_id, "region": who.region}
    with console_of(request).server.store.read() as conn:
        endpoint_rows = conn.execute(
            _ENDPOINTS, {**mine, "limit": paging.limit, "offset": paging.offset}
        ).all()
        job_rows = conn.execute(
            _JOBS, {**mine, "limit": jobs_paging.limit, "offset": jobs_paging.offset}
        ).all()
        job_total = conn.execute(_JOBS_COUNT, mine).scalar_one()
    endpoint_rows, more = paging.split(endpoint_rows)
    job_rows, more_jobs = jobs_paging.split(job_rows)
    endpoints = [
        {**row._asdict(), "model": _model(row.model_arn or row.desired_model_arn)} for row in endpoint_rows
    ]
    job_list = [{**row._asdict(), "recognizer": _model(row.recognizer_arn)} for row in job_rows]
    return render(
        request, who, "endpoints.html", section="endpoints",
        endpoints=endpoints, paging=paging, more=more,
        jobs=job_list, jobs_paging=jobs_paging, more_jobs=more_jobs, job_total=job_total,
    )  # fmt: skip


def throughput(request: Request, row: Any) -> dict[str, Any]:
    """What the serving workers of the generation that answers now report: how many are ready, documents
    served since they started, and documents per second over their last heartbeat period."""
    server = console_of(request).server
    serving = ep.serving_generation(row)
    deploying = ep.target_generation(row)
    found: dict[str, Any] = {"workers": 0, "ready": 0, "served": 0, "rate": 0.0, "deploying": None}
    groups = []
    if serving is not None:
        groups.append(("serving", serving))
    if deploying is not None:
        groups.append(("deploying", deploying))
    ids = {
        label: [
            str(ep.worker_id(row, generation, unit)) for unit in range(ep.workers_for(server.settings, units))
        ]
        for label, (generation, units) in groups
    }
    if not ids:
        return found
    with server.store.read() as conn:
        progress = server.leases.progress(conn, [w for group in ids.values() for w in group])
    for label, group in ids.items():
        reports = [progress.get(w) or {} for w in group]
        ready = sum(1 for r in reports if r.get("ready"))
        if label == "serving":
            found.update(
                workers=len(group), ready=ready,
                served=sum(int(r.get("served") or 0) for r in reports),
                rate=round(sum(float(r.get("rate") or 0.0) for r in reports), 1),
            )  # fmt: skip
        else:
            found["deploying"] = {"workers": len(group), "ready": ready}
    return found


async def endpoint_page(request: Request, who: Who) -> Response:
    name = request.path_params["name"]
    with console_of(request).server.store.read() as conn:
        row = conn.execute(
            _ENDPOINT, {"account_id": who.account_id, "region": who.region, "name": name}
        ).first()
    if row is None:
        response = render(request, who, "endpoint.html", section="endpoints", row=None, name=name)
        response.status_code = 404
        return response
    if row.status in ENDPOINT_MOVING:
        refresh = 1
    elif row.status in ep.SERVING:
        refresh = THROUGHPUT_REFRESH_SECONDS
    else:
        refresh = IDLE_REFRESH_SECONDS
    return render(
        request, who, "endpoint.html", section="endpoints", row=row, refresh=refresh,
        model=_model(row.model_arn or row.desired_model_arn), desired=_model(row.desired_model_arn),
        throughput=throughput(request, row), answering=ep.serving_generation(row) is not None,
    )  # fmt: skip


def _output_uri(job: Any) -> str:
    return jobs.output_uri(job.spec["OutputDataConfig"]["S3Uri"], job.account_id, job.job_id)


def _find_job(request: Request, who: Who) -> tuple[Any, S3Uri | None]:
    """The job of the signed-in account, or None; and its output archive's location when the console may
    read it: in a bucket the job's account owns (``s3_buckets``), never one of MLHarbor's own."""
    server = console_of(request).server
    with server.store.read() as conn:
        job = conn.execute(
            _JOB,
            {"account_id": who.account_id, "region": who.region, "job_id": request.path_params["job_id"]},
        ).first()
        if job is None:
            return None, None
        try:
            uri = S3Uri.parse(_output_uri(job))
        except InvalidS3Uri:
            return job, None
        readable = readable_buckets(conn, server, who, {uri.bucket})
    return job, (uri if readable else None)


def _has_output(job: Any) -> bool:
    """Whether the job wrote its archive: it completed, or was stopped after it had started."""
    return job.status == "COMPLETED" or (
        job.status == "STOPPED" and "DocumentsProcessed" in (job.details or {})
    )


async def job_page(request: Request, who: Who) -> Response:
    job, readable = _find_job(request, who)
    if job is None:
        response = render(
            request, who, "job.html", section="endpoints", job=None, job_id=request.path_params["job_id"]
        )
        response.status_code = 404
        return response
    spec = job.spec
    return render(
        request, who, "job.html", section="endpoints", job=job, spec=spec, details=job.details or {},
        running=job.status in JOB_RUNNING, refresh=1 if job.status in JOB_RUNNING else IDLE_REFRESH_SECONDS,
        stoppable=job.status in ("SUBMITTED", "IN_PROGRESS"), recognizer=_model(job.recognizer_arn),
        output_uri=_output_uri(job), has_output=_has_output(job), output_readable=readable is not None,
        config={key: spec[key] for key in jobs.SPEC_MEMBERS if key in spec and key != "LanguageCode"},
    )  # fmt: skip


async def job_output(request: Request, who: Who) -> Response:
    """The job's output.tar.gz, streamed from the object store (only to the account that owns the job, and
    only from a bucket that account owns)."""
    job, uri = _find_job(request, who)
    if job is None or not _has_output(job):
        return PlainTextResponse("No such job output in this account and region.", status_code=404)
    if uri is None:
        return PlainTextResponse(
            "The job's output is not in a bucket of this account: it is not readable here.", status_code=404
        )
    blobs = console_of(request).server.blobs
    try:
        stream = await run_in_threadpool(blobs.open_read, uri)
    except (BlobNotFound, InvalidS3Uri):
        return PlainTextResponse("The job's output is not in the object store.", status_code=404)
    except (BotoCoreError, ClientError) as exc:  # object_store = "s3": its errors other than not found
        log.warning("console: reading %s from the object store failed: %r", uri, exc)
        return PlainTextResponse("The object store cannot be read right now.", status_code=503)

    def chunks() -> Any:
        with stream:
            while chunk := stream.read(OUTPUT_CHUNK):
                yield chunk

    return StreamingResponse(
        chunks(),  # a plain iterator: Starlette reads it in its thread pool
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{job.job_id}-output.tar.gz"'},
    )


ROUTES: list[BaseRoute] = [
    Route("/console/endpoints", page(endpoint_list)),
    Route("/console/endpoints/{name}", page(endpoint_page)),
    Route("/console/jobs/{job_id}", page(job_page)),
    Route("/console/jobs/{job_id}/output", page(job_output)),
]
