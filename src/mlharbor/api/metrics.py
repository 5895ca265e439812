"""Prometheus metrics, one registry per app so several apps can live in one process (tests)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlharbor_requests",
            "API requests by service, operation and HTTP status",
            ["service", "operation", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlharbor_request_seconds",
            "API request latency",
            ["service", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "mlharbor_requests_in_flight", "API requests in flight", registry=self.registry
        )
        self.receiving = Gauge(
            "mlharbor_requests_receiving", "API request bodies being received", registry=self.registry
        )

        # Label lookups cost more than the increments: keep the children (operations are a closed set).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, service: str, operation: str, status: int, seconds: float) -> None:
        key = (service, operation, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(service, operation, str(status)),
                self.latency.labels(service, operation),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
