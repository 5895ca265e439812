"""Clients of the shared server for the Kinesis Video tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def kvs(server):  # type: ignore[no-untyped-def]
    return server.client("kinesisvideo")


@pytest.fixture
def media(server):  # type: ignore[no-untyped-def]
    # GetMedia answers stream for a while: a longer read timeout than the API default.
    return server.client("kinesis-video-media", read_timeout=20)
