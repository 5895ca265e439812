"""Shared fixtures: a real `mlharbor serve` process, boto3 clients, signed raw requests.

Set MLHARBOR_TEST_DATABASE=postgresql to run the whole suite against a fresh PostgreSQL database
(.ci/run does both). Every server fixture gets its own database and data folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from mlharbor.services.kinesisvideo.puller import PROCESS_NAME as PULLER_PROCESS_NAME

REGION = "us-east-1"
PG_ADMIN_URL = os.environ.get("MLHARBOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _fresh_database(tmp: Path) -> tuple[str, Any]:
    """A database URL for one server, and a cleanup function."""
    if os.environ.get("MLHARBOR_TEST_DATABASE") != "postgresql":
        return f"sqlite:///{tmp / 'mlharbor.db'}", lambda: None
    return postgres_database()


def postgres_database() -> tuple[str, Any]:
    """A fresh PostgreSQL database's URL, and a function that drops it."""
    import psycopg

    name = f"mlharbor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}", drop


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[str]
    data_dir: Path
    database_url: str
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    # Other servers on the same database and data: clients go to each in turn (create on one, describe on
    # another), so the tests run through every server of a deployment.
    peers: list[RunningServer] = field(default_factory=list)
    _turn: int = 0

    def client(
        self,
        service: str,
        access_key: str = "test",
        secret: str = "test",
        *,
        pinned: bool = False,
        **config: Any,
    ):  # type: ignore[no-untyped-def]
        """A boto3 client of the next server in turn (``pinned``: of this one)."""
        urls = [self.url, *(peer.url for peer in self.peers)]
        self._turn += 1
        return boto3.client(
            service,
            endpoint_url=self.url if pinned else urls[self._turn % len(urls)],
            region_name=config.pop("region_name", REGION),
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            config=Config(retries=config.pop("retries", {"max_attempts": 1, "mode": "standard"}), **config),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    tmp: Path,
    database_url: str,
    *extra: str,
    env: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> RunningServer:
    """A server logging to ``tmp``/server.log, with its data in ``data_dir`` (default ``tmp``/data)."""
    log_path = tmp / "server.log"
    data_dir = data_dir or tmp / "data"
    cmd = [
        sys.executable, "-m", "mlharbor", "serve", "--port", "0",
        "--data-dir", str(data_dir), "--database-url", database_url, *extra,
    ]  # fmt: skip
    log = log_path.open("w")
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **(env or {})}
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # the server prints exactly one line when ready
    if not line.startswith("MLHarbor listening on "):
        process.kill()
        raise AssertionError(f"server did not start: {line!r}\n{log_path.read_text()}")
    url = line.strip().rsplit(" ", 1)[-1]
    return RunningServer(url, process, data_dir, database_url, log_path, list(extra))


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the whole session (tests use unique names, so they do not collide). On PostgreSQL, two
    servers on one database and one data folder, which the clients use in turn."""
    tmp = tmp_path_factory.mktemp("server")
    url, drop = _fresh_database(tmp)
    running = start_server(tmp, url)
    if os.environ.get("MLHARBOR_TEST_DATABASE") == "postgresql":
        (tmp / "peer").mkdir()
        running.peers.append(start_server(tmp / "peer", url, data_dir=running.data_dir))
    yield running
    for peer in running.peers:
        stop_server(peer)
    stop_server(running)
    drop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Start a dedicated server with extra CLI arguments (for settings a test needs to change)."""
    started: list[tuple[RunningServer, Any]] = []

    def make(*extra: str, env: dict[str, str] | None = None) -> RunningServer:
        tmp = tmp_path / f"s{len(started)}"
        tmp.mkdir()
        url, drop = _fresh_database(tmp)
        running = start_server(tmp, url, *extra, env=env)
        started.append((running, drop))
        return running

    yield make
    for running, drop in started:
        stop_server(running)
        drop()


@pytest.fixture
def rekognition(server: RunningServer):  # type: ignore[no-untyped-def]
    return server.client("rekognition")


@pytest.fixture
def comprehend(server: RunningServer):  # type: ignore[no-untyped-def]
    return server.client("comprehend")


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def signed_post(
    url: str,
    *,
    service: str,
    target: str | None = None,
    body: bytes | str | dict[str, Any] = b"{}",
    access_key: str = "test",
    secret: str = "test",
    region: str = REGION,
    path: str = "/",
    headers: dict[str, str] | None = None,
    scope_service: str | None = None,
    sign: bool = True,
) -> requests.Response:
    """A raw awsJson 1.1 request signed with botocore's SigV4 signer (for what boto3 won't send)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    all_headers = {"Content-Type": "application/x-amz-json-1.1", **(headers or {})}
    if target is not None:
        prefix = {"rekognition": "RekognitionService", "comprehend": "Comprehend_20171127",
                  "kinesis": "Kinesis_20131202"}[service]  # fmt: skip
        all_headers["X-Amz-Target"] = f"{prefix}.{target}"
    request = AWSRequest(method="POST", url=url.rstrip("/") + path, data=body, headers=all_headers)
    if sign:
        SigV4Auth(Credentials(access_key, secret), scope_service or service, region).add_auth(request)
    prepared = request.prepare()
    return requests.post(prepared.url, data=body, headers=dict(prepared.headers), timeout=30)


def model(service: str):  # type: ignore[no-untyped-def]
    return botocore.session.get_session().get_service_model(service)


def worker_pids(server_pid: int, *, pullers: bool = False) -> list[int]:
    """The server's spawned worker processes (children whose command line is multiprocessing's spawn), but
    its built-in Kinesis Video producers (the ``--video-stream`` pullers, which name their process
    ``mlharbor-pull`` as they start); with ``pullers``, only those."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            name = text[text.index("(") + 1 : text.rindex(")")]
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server_pid and b"spawn_main" in cmdline and (name == PULLER_PROCESS_NAME) == pullers:
            pids.append(int(stat.parent.name))
    return pids


# --- moto_server: the Kinesis / S3 / SNS endpoint MLHarbor calls out to ------------------------------------
_STARTUP_DEADLINE_S = 30.0


def _free_port() -> int:
    # Another process may take the port between close() and moto's bind; acceptable for tests.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto server process on 127.0.0.1 (one per test session)."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    # Logs go to a file, not a pipe: werkzeug logs every request and a full pipe would stall moto.
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    # Never let a proxy from the environment intercept the loopback connection.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + _STARTUP_DEADLINE_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with opener.open(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    log_text = log_path.read_text()
                    pytest.fail(f"moto_server not answering after {_STARTUP_DEADLINE_S}s:\n{log_text}")
                time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def aws_env(moto_endpoint: str, tmp: Path) -> dict[str, str]:
    """Environment for a process (an MLHarbor server) whose outbound AWS calls must go to moto, with no
    trace of the developer's own AWS setup."""
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))
    return {
        "AWS_ENDPOINT_URL_KINESIS": moto_endpoint,
        "AWS_ENDPOINT_URL_SNS": moto_endpoint,
        "AWS_ENDPOINT_URL_S3": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }
