"""Clients of the shared server for the Kinesis Data Streams tests, and a stream per test."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import unique


@pytest.fixture
def kinesis(server):  # type: ignore[no-untyped-def]
    return server.client("kinesis")


@pytest.fixture
def new_stream(kinesis) -> Callable[..., str]:  # type: ignore[no-untyped-def]
    """Create a stream (PROVISIONED with ``shards`` shards, or ON_DEMAND) and return its name."""

    def make(shards: int | None = 1, **extra: object) -> str:
        name = unique("ks")
        if shards is None:
            kinesis.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"}, **extra)
        else:
            kinesis.create_stream(StreamName=name, ShardCount=shards, **extra)
        return name

    return make
