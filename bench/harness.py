"""What every benchmark needs: start `mlharbor serve` on a free port, drain it, stop a process; and one
way to judge a number against its target (``verdict``, ``ratio``) that cannot turn a failed measurement
into a pass."""

from __future__ import annotations

import contextlib
import math
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


def start_server(
    workdir: Path, env: dict[str, str] | None = None, args: Sequence[str] = (), *, restart: bool = False
) -> Server:
    """``start_mlharbor``, as one object."""
    return Server(*start_mlharbor(workdir, env, args, restart=restart))


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
    workdir: Path, env: dict[str, str] | None = None, args: Sequence[str] = (), *, restart: bool = False
) -> tuple[str, subprocess.Popen[bytes], Path, Path]:
    """A server with its own data folder under ``workdir``; returns (url, process, data dir, log path).

    Benchmarks measure the work, not the per-account rate limit, so the limit is lifted. ``args``: more
    ``serve`` options (``--database-url``, ``--video-stream``). ``restart``: the data folder is already
    there (a server started again on the same data); the log is appended to.
    """
    data_dir = workdir / "mlharbor-data"
    data_dir.mkdir(exist_ok=restart)
    log_path = workdir / "mlharbor.log"
    config = workdir / "mlharbor-bench.toml"
    config.write_text("[throttle]\nrate = 1000000\nburst = 1000000\n")
    with open(log_path, "ab" if restart else "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlharbor", "serve", "--host", "127.0.0.1", "--port", "0"]
            + ["--data-dir", str(data_dir), "--config", str(config), *args],
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


# --- Targets ------------------------------------------------------------------------------------------------
# A benchmark that can print "met" must be able to print "NOT met": a number that was not measured, is not
# finite, or is zero or negative (no rate, latency or ratio of ours can honestly be) is a failed
# measurement, and a failed measurement or peer is NOT met, with the reason, never a pass.


def problem_with(value: object, what: str = "the value") -> str | None:
    """Why ``value`` cannot be judged against a target, or None when it can."""
    if value is None:
        return f"{what} was not measured"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{what} is not a number ({value!r})"
    if math.isnan(value):
        return f"{what} is NaN"
    if math.isinf(value):
        return f"{what} is infinite"
    if value <= 0:
        return f"{what} is {'zero' if value == 0 else 'negative'}"
    return None


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator``, or no value and the reason it could not be computed."""

    value: float | None
    problem: str | None = None

    def __format__(self, spec: str) -> str:
        return "n/a" if self.value is None else format(self.value, spec)


def ratio(
    numerator: float | None,
    denominator: float | None,
    *,
    numerator_name: str = "MLHarbor",
    denominator_name: str = "the peer",
    failed: str | None = None,
) -> Ratio:
    """A ratio to judge, guarded: no value when either side failed (``failed`` says the peer or the run
    failed in a way the numbers do not show), was not measured, or is zero, NaN or infinite."""
    why = failed or problem_with(denominator, denominator_name) or problem_with(numerator, numerator_name)
    if why is not None:
        return Ratio(None, why)
    assert numerator is not None and denominator is not None
    value = numerator / denominator
    return Ratio(value, problem_with(value, "the ratio"))


def verdict(
    value: float | Ratio | None, target: float, *, at_most: bool = False, problem: str | None = None
) -> str:
    """``met`` or ``NOT met`` against ``target`` (``value >= target``, or ``<=`` with ``at_most``);
    ``NOT met: <reason>`` when ``problem`` is given or the value cannot be judged (``problem_with``)."""
    if isinstance(value, Ratio):
        problem = problem or value.problem
        value = value.value
    problem = problem or problem_with(value)
    if problem is not None:
        return f"NOT met: {problem}"
    assert value is not None
    return "met" if (value <= target if at_most else value >= target) else "NOT met"


def fmt(value: float | Ratio | None, spec: str = ".2f", unit: str = "") -> str:
    """A number (and its ``unit``) for a report line; "n/a" when there is none."""
    if isinstance(value, Ratio):
        value = value.value
    return "n/a" if value is None else format(value, spec) + unit
