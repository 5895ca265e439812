"""What every benchmark needs: start `mlharbor serve` on a free port, drain it, stop a process."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 60.0
READY_PREFIX = b"MLHarbor listening on "


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path


def start_server(workdir: Path, env: dict[str, str] | None = None) -> Server:
    """``start_mlharbor``, as one object."""
    return Server(*start_mlharbor(workdir, env))


def comprehend_client(server: Server) -> Any:
    return aws_client(server, "comprehend")


def aws_client(server: Server, service: str) -> Any:
    """A boto3 client for the server (test/test, no retries: a benchmark sees every error)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=120),
    )


def start_mlharbor(
    workdir: Path, env: dict[str, str] | None = None
) -> tuple[str, subprocess.Popen[bytes], Path, Path]:
    """A server with its own data folder under ``workdir``; returns (url, process, data dir, log path).

    Benchmarks measure the work, not the per-account rate limit, so the limit is lifted.
    """
    data_dir = workdir / "mlharbor-data"
    data_dir.mkdir()
    log_path = workdir / "mlharbor.log"
    config = workdir / "mlharbor-bench.toml"
    config.write_text("[throttle]\nrate = 1000000\nburst = 1000000\n")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlharbor", "serve", "--host", "127.0.0.1", "--port", "0"]
            + ["--data-dir", str(data_dir), "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=workdir,
            env={**os.environ, **(env or {})},
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            stop_process(proc)
            raise RuntimeError(f"MLHarbor did not start; its log:\n{log_path.read_text(errors='replace')}")
        ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
        if not ready:
            continue
        line = proc.stdout.readline()
        if line.startswith(READY_PREFIX):
            url = line[len(READY_PREFIX) :].decode().strip()
            break
    # Keep reading its stdout so the server can never block on a full pipe.
    threading.Thread(target=drain, args=(proc.stdout,), daemon=True).start()
    return url, proc, data_dir, log_path


def drain(stream: Any) -> None:
    with contextlib.suppress(Exception):
        while stream.read(65536):
            pass


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def print_table(header: Sequence[str], rows: list[Sequence[str]], right: set[int]) -> None:
    """A plain-text table; columns whose index is in ``right`` are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(header))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
