"""Admission control: a token bucket per (account, operation) and a cap on requests in flight."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

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
    def enter(self) -> None:
        if self._in_flight >= self._settings.max_in_flight:
            raise ServerOverloaded("Too many requests in flight")
        self._in_flight += 1

    def leave(self) -> None:
        self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight
