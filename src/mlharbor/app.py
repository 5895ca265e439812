"""Assembles the ASGI app: the gateway on POST, /health and /metrics on GET."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlharbor import __version__
from mlharbor.api.auth import Authenticator
from mlharbor.api.metrics import Metrics
from mlharbor.api.pagination import Pager
from mlharbor.api.protocol import Gateway, Receive, Scope, Send
from mlharbor.api.s3auth import S3Authenticator
from mlharbor.api.s3gateway import S3Gateway
from mlharbor.api.services import build_services
from mlharbor.api.throttle import Receiving, Throttle
from mlharbor.blobs.store import BlobStore, open_blob_store
from mlharbor.config import Settings
from mlharbor.console.app import build_console
from mlharbor.context import Server
from mlharbor.runtime.backends import open_executor
from mlharbor.runtime.leases import LeaderPass, Leases, new_owner_id
from mlharbor.runtime.reconciler import Reconciler
from mlharbor.runtime.supervisor import Supervisor
from mlharbor.services import attempts
from mlharbor.services.comprehend import kinds as comprehend_kinds
from mlharbor.services.comprehend.endpoints import EndpointKind
from mlharbor.services.kinesis.retention import RetentionPass as KinesisRetention
from mlharbor.services.kinesisvideo.pullers import PullKind
from mlharbor.services.kinesisvideo.retention import RetentionPass
from mlharbor.services.rekognition import kinds as rekognition_kinds
from mlharbor.services.rekognition.collections import Indexes
from mlharbor.services.s3.operations import XML_ROOTS as S3_XML_ROOTS
from mlharbor.services.s3.sweep import TempSweep
from mlharbor.services.sns.delivery import Deliverer as SnsDeliverer
from mlharbor.store.db import Store


def build_server(settings: Settings) -> Server:
    """Open (and migrate) the store and the object store. Runs before the port is bound."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.resolved_database_url)
    store.migrate()
    pager = Pager(store.server_secret("pagination"))
    blobs = open_blob_store(settings.object_store, settings.data_dir)
    _ensure_buckets(blobs, settings)
    reconciler = Reconciler()
    # Worker processes are spawned only when work is submitted; building the executor is cheap.
    # A finished worker wakes the reconciler, which records or repairs the outcome.
    executor = open_executor(
        settings.runtime,
        lambda _work, _status: reconciler.wake(),
        stop_grace=settings.worker_stop_grace_seconds,
    )
    server = Server(
        settings=settings, store=store, pager=pager, blobs=blobs, executor=executor, reconciler=reconciler
    )
    faces = Indexes(settings.data_dir / "face-vectors", settings.face_snapshot_min_faces)
    server.extras["rekognition.collections"] = faces
    server.close_hooks.append(faces.save_all)
    # All long work, declared once per kind and run by one supervisor; leases in the database say which
    # server runs what. SQLite means one server (it holds a file lock), so a predecessor's leases are taken
    # over at once; on PostgreSQL a lease is taken over once its holder stopped renewing it.
    leases = Leases(store, new_owner_id(), settings.lease_seconds, exclusive=store.dialect == "sqlite")
    # The built-in Kinesis Video producer: --video-stream NAME=URL is pulled into the stream NAME.
    pullers = PullKind(server)
    supervisor = Supervisor(
        leases,
        executor,
        [
            attempts.AttemptKind(store, rekognition_kinds.stream_sessions(server)),
            attempts.AttemptKind(store, comprehend_kinds.training(server)),
            EndpointKind(server),
            attempts.AttemptKind(store, comprehend_kinds.detection(server)),
            pullers,
        ],
    )
    server.supervisor = supervisor
    reconciler.register("long work", supervisor.run_once)
    server.shutdown_hooks.append(lambda: pullers.stop(supervisor))
    # Retention deletes what expired: one server of a deployment at a time is enough.
    reconciler.register(
        "video fragment retention", LeaderPass(leases, "video-retention", RetentionPass(server).reconcile)
    )
    reconciler.register(
        "kinesis record retention",
        LeaderPass(leases, "kinesis-retention", KinesisRetention(server).reconcile),
    )
    # SNS HTTP/S deliveries: Publish hands its own to the deliverer at once; this pass sends retries and what
    # other (or stopped) servers left.
    sns = SnsDeliverer(server)
    server.extras["sns.deliverer"] = sns
    reconciler.register("sns deliveries", sns.reconcile)
    server.close_hooks.append(sns.close)
    reconciler.register("object store temp files", TempSweep(server).reconcile)
    return server


def _ensure_buckets(blobs: BlobStore, settings: Settings) -> None:
    """MLHarbor's own buckets exist before anything is stored in them. On S3 a name may be taken by another
    account: then the server still starts, and says which setting to change."""
    own = {
        "video_bucket": settings.video_bucket,
        "models_bucket": settings.models_bucket,
        "uploads_bucket": settings.uploads_bucket,
    }
    for setting, bucket in own.items():
        try:
            blobs.ensure_bucket(bucket)
        except Exception as exc:  # noqa: BLE001 - any failure: the work that needs the bucket reports it
            logging.getLogger("mlharbor").warning(
                "cannot create or reach bucket %s (%s): set %s to a bucket MLHarbor may use",
                bucket, exc, setting,
            )  # fmt: skip


def create_app(settings: Settings, server: Server | None = None) -> Application:
    server = server or build_server(settings)
    metrics = Metrics()
    services = build_services()
    throttle = Throttle(settings.throttle)
    credentials = settings.load_credentials()
    gateway = Gateway(
        server,
        services,
        Authenticator(credentials, settings.clock_skew_seconds),
        throttle,
        Receiving(
            settings.throttle.max_receiving,
            settings.request_body_timeout_seconds,
            settings.request_body_idle_seconds,
            settings.request_body_min_rate,
        ),
        metrics,
        S3Gateway(server, services["s3"], S3Authenticator(credentials), throttle, metrics, S3_XML_ROOTS),
    )

    async def health(_: Request) -> Response:
        database_ok = server.store.ping()
        return JSONResponse(
            {"status": "ok" if database_ok else "degraded", "version": __version__, "database": database_ok},
            status_code=200 if database_ok else 503,
        )

    async def metrics_endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics_endpoint, methods=["GET"])]
    admin = Starlette(routes=routes)
    console = build_console(server, services, credentials, throttle) if settings.console else None
    return Application(gateway, admin, server, metrics, console)


class Application:
    """Every HTTP request except GET /health, GET /metrics and the console's goes to the gateway, which
    answers in the AWS dialect (an unknown path or method is an AWS error, not an HTML 404)."""

    ADMIN_PATHS = frozenset({"/health", "/metrics"})

    def __init__(
        self, gateway: Gateway, admin: Starlette, server: Server, metrics: Metrics, console: Starlette | None
    ) -> None:
        self.gateway = gateway
        self.admin = admin
        self.console = console
        self.state = SimpleNamespace(server=server, metrics=metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "GET" and scope["path"] in self.ADMIN_PATHS:
            await self.admin(scope, receive, send)
        elif self.console is not None and _is_console(scope):
            await self.console(scope, receive, send)
        else:
            await self.gateway(scope, receive, send)


def _is_console(scope: Scope) -> bool:
    """/console and below, unless the request is signed: a signed request there is S3's (a bucket named
    "console", path style), and AWS's own clients always sign (docs/COMPATIBILITY.md)."""
    path = scope["path"]
    if path != "/console" and not path.startswith("/console/"):
        return False
    for name, _ in scope["headers"]:
        if name == b"authorization":
            return False
    query = scope.get("query_string", b"")
    return not (b"X-Amz-Credential=" in query or b"AWSAccessKeyId=" in query or b"X-Amz-Signature=" in query)
