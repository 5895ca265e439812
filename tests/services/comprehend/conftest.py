"""A trained recognizer for the inference tests (endpoints, detection jobs): trained once per server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import RunningServer, unique, wait_until
from tests.services.comprehend.corpus import TYPES, upload

ROLE = "arn:aws:iam::000000000000:role/comprehend"


def train_recognizer(server: RunningServer, docs: int = 150, types: tuple[str, ...] = TYPES) -> str:
    """Train a small real recognizer through the API and wait until it is TRAINED; return its ARN."""
    client = server.client("comprehend")
    config = upload(server.data_dir, "training", unique("corpus"), docs=docs, types=types)
    arn = client.create_entity_recognizer(
        RecognizerName=unique("rec"), LanguageCode="en", DataAccessRoleArn=ROLE, InputDataConfig=config
    )["EntityRecognizerArn"]

    def trained() -> dict[str, Any] | None:
        props = client.describe_entity_recognizer(EntityRecognizerArn=arn)["EntityRecognizerProperties"]
        if props["Status"] in {"IN_ERROR", "STOPPED"}:
            raise AssertionError(f"training failed: {props.get('Message')}")
        return props if props["Status"] in {"TRAINED", "TRAINED_WITH_WARNING"} else None

    wait_until(trained, timeout=240, interval=0.2, what=f"{arn} to be trained")
    return arn


@pytest.fixture(scope="session")
def recognizer(server: RunningServer) -> str:
    """A TRAINED recognizer (PERSON, PRODUCT, CITY) on the session server."""
    return train_recognizer(server)
