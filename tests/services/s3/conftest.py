"""Fixtures for the S3 API tests: boto3 clients on the shared server, and fresh buckets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import RunningServer, unique


@pytest.fixture
def s3(server: RunningServer) -> Any:
    return server.client("s3")


@pytest.fixture
def new_bucket(s3: Any) -> Iterator[Callable[[], str]]:
    """Make buckets with unique names; what a test leaves in them is removed afterwards."""
    made: list[str] = []

    def make() -> str:
        name = unique("bkt").lower().replace("_", "-")
        s3.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
                for item in page.get("Contents", []):
                    s3.delete_object(Bucket=name, Key=item["Key"])
            s3.delete_bucket(Bucket=name)
        except s3.exceptions.ClientError:
            pass


@pytest.fixture
def bucket(new_bucket: Callable[[], str]) -> str:
    return new_bucket()
