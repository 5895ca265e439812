"""Admission control: a token bucket per (account, operation), a cap on requests in flight, and the
separate budget of request bodies still being received."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mlharbor.config import ThrottleSettings
from mlharbor.errors import AccountThrottled, ServerOverloaded


@dataclass(slots=True)
class _Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Throttle:
    """Rates come from settings; 'Service.Operation' overrides beat 'Operation' overrides."""

    def __init__(self, settings: ThrottleSettings) -> None:
        self._settings = settings
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}
        self._lock = threading.Lock()
        self._in_flight = 0

    def _rate(self, service: str, operation: str) -> float:
        ops = self._settings.operations
        return ops.get(f"{service}.{operation}", ops.get(operation, self._settings.rate))

    def admit(self, account: str, service: str, operation: str) -> None:
        """Take one token or raise AccountThrottled. Changes nothing else."""
        key = (account, service, operation)
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                rate = self._rate(service, operation)
                burst = max(1.0, min(self._settings.burst, rate * self._settings.burst / self._settings.rate))
                bucket = self._buckets[key] = _Bucket(rate, burst, burst, now)
            if not bucket.take(now):
                raise AccountThrottled(f"Rate exceeded for {operation}")

    # In-flight accounting is done on the event loop thread only, so no lock is needed there.
    def check(self) -> None:
        """Shed load at once, before reading a body the server has no room to work on."""
        if self._in_flight >= self._settings.max_in_flight:
            raise ServerOverloaded("Too many requests in flight")

    def enter(self) -> None:
        """Count a request the server works on (its body has arrived) until ``leave``."""
        self.check()
        self._in_flight += 1

    def leave(self) -> None:
        self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight


@dataclass(eq=False, slots=True)
class Upload:
    """One request body being received, by the task that awaits it."""

    task: asyncio.Task[Any]
    started: float
    deadline: float
    idle_deadline: float
    received: int = field(default=0)
    cut: bool = field(default=False)

    def rate(self, now: float) -> float:
        """Bytes per second so far."""
        return self.received / max(now - self.started, 1e-3)


class Receiving:
    """Request bodies still arriving, kept apart from the in-flight cap: a client that sends its body
    slowly costs the server little more than a socket, so it must not take a slot that work needs.

    Each body has a deadline (``timeout`` after its headers, plus a second per ``min_rate`` bytes received)
    and may pause at most ``idle`` between pieces. At most ``limit`` bodies are received at once; one more
    cuts off the slowest so far (fewest bytes per second since its headers), so slow uploads, however many,
    can delay nobody: a normal body arrives within milliseconds, and a large one arriving at network speed
    is never the slowest while tricklers are around.

    A body that is cut has its task cancelled while it awaits the next piece (``Upload.cut`` tells that
    cancellation apart from any other). A timer per body (``asyncio.timeout``) cost ~8 us a request with
    uvloop; joining and leaving this ordered set costs ~1 us, and one sweep every quarter of the shortest
    timeout (at most every second) finds the late ones. Used on the event loop thread only.
    """

    def __init__(self, limit: int, timeout: float, idle: float, min_rate: float) -> None:
        self._limit = limit
        self._timeout = timeout
        self._idle = idle
        self._min_rate = min_rate
        self._tick = min(1.0, max(0.05, min(timeout, idle) / 4))
        self._uploads: dict[Upload, None] = {}  # an ordered set (the sweep visits the oldest first)
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None  # a closed loop's timer never fires

    def start(self) -> Upload:
        """Call from the task that will await the body's pieces; ``finish`` when it stops awaiting."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if len(self._uploads) >= self._limit:
            self._cut(min(self._uploads, key=lambda u: u.rate(now)))
        task = asyncio.current_task()
        assert task is not None
        upload = Upload(task, now, now + self._timeout, now + self._idle)
        self._uploads[upload] = None
        if self._sweep_handle is None or self._sweep_loop is not loop:
            self._sweep_loop = loop
            self._sweep_handle = loop.call_later(self._tick, self._sweep)
        return upload

    def progress(self, upload: Upload, received: int) -> None:
        now = upload.task.get_loop().time()
        upload.received = received
        upload.idle_deadline = now + self._idle
        upload.deadline = upload.started + self._timeout + received / self._min_rate

    def finish(self, upload: Upload) -> None:
        self._uploads.pop(upload, None)

    @property
    def count(self) -> int:
        return len(self._uploads)

    def _cut(self, upload: Upload) -> None:
        # The task is suspended in its receive (only that await lies between start and finish), so the
        # cancellation lands there, even when the next piece has already woken it.
        self._uploads.pop(upload, None)
        upload.cut = True
        upload.task.cancel("request body timed out")

    def _sweep(self) -> None:
        self._sweep_handle = None
        if not self._uploads:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for upload in [u for u in self._uploads if now >= min(u.deadline, u.idle_deadline)]:
            self._cut(upload)
        if self._uploads:
            self._sweep_handle = loop.call_later(self._tick, self._sweep)
