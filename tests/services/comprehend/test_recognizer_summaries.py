"""ListEntityRecognizerSummaries: one summary per recognizer name, paged by name."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import unique

pytestmark = pytest.mark.storage
ROLE = "arn:aws:iam::000000000000:role/comprehend"
# A region no other test uses: the lists below hold only this module's recognizers.
ALONE = "ca-central-1"
# Never read: the recognizers end IN_ERROR, which is all a list needs.
CONFIG = {"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": "s3://nowhere/d.txt"},
          "Annotations": {"S3Uri": "s3://nowhere/a.csv"}}  # fmt: skip


@pytest.fixture
def client(server):  # type: ignore[no-untyped-def]
    return server.client("comprehend", region_name=ALONE)


def create(client: Any, name: str, **extra: Any) -> str:
    return client.create_entity_recognizer(
        RecognizerName=name, LanguageCode="en", DataAccessRoleArn=ROLE, InputDataConfig=CONFIG, **extra
    )["EntityRecognizerArn"]


def all_pages(client: Any, page: int, between: Any = None) -> list[dict[str, Any]]:
    """Every summary, ``page`` at a time; ``between()`` runs after the first page."""
    response = client.list_entity_recognizer_summaries(MaxResults=page)
    summaries = list(response["EntityRecognizerSummariesList"])
    if between is not None:
        between()
    while "NextToken" in response:
        response = client.list_entity_recognizer_summaries(MaxResults=page, NextToken=response["NextToken"])
        summaries += response["EntityRecognizerSummariesList"]
    return summaries


def test_a_token_keeps_its_place_while_recognizers_are_created(client):
    prefix = unique("sum")
    for suffix in ("b1", "b2", "b3", "b4"):
        create(client, f"{prefix}-{suffix}")

    def create_around_the_first_page() -> None:
        create(client, f"{prefix}-a1")  # sorts before the page already read: not shown, nothing shifts
        create(client, f"{prefix}-c1")  # sorts after it: shown

    names = [s["RecognizerName"] for s in all_pages(client, 2, create_around_the_first_page)]
    mine = [name.removeprefix(f"{prefix}-") for name in names if name.startswith(prefix)]
    assert mine == ["b1", "b2", "b3", "b4", "c1"]  # no name twice, none skipped


def test_versions_collapse_into_one_summary_per_name(client):
    prefix = unique("ver")
    create(client, f"{prefix}-one")
    create(client, f"{prefix}-two", VersionName="v1")
    latest = create(client, f"{prefix}-two", VersionName="v2")
    described = client.describe_entity_recognizer(EntityRecognizerArn=latest)["EntityRecognizerProperties"]

    summaries = {s["RecognizerName"]: s for s in all_pages(client, 1)}
    one, two = summaries[f"{prefix}-one"], summaries[f"{prefix}-two"]
    assert (one["NumberOfVersions"], one.get("LatestVersionName")) == (1, None)
    assert (two["NumberOfVersions"], two["LatestVersionName"]) == (2, "v2")
    assert two["LatestVersionCreatedAt"] == described["SubmitTime"]
    assert two["LatestVersionStatus"] in {"SUBMITTED", "TRAINING", "IN_ERROR"}


def test_a_token_of_another_list_is_refused(client):
    create(client, unique("tok"))
    create(client, unique("tok"))
    token = client.list_entity_recognizers(MaxResults=1)["NextToken"]
    with pytest.raises(client.exceptions.InvalidRequestException):
        client.list_entity_recognizer_summaries(NextToken=token)
