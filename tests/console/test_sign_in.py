"""Signing in to the console, and what the overview shows; another account sees none of it."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.conftest import RunningServer, unique, wait_until
from tests.console.conftest import OTHER_ACCOUNT, screenshot, sign_in

pytestmark = pytest.mark.storage  # the overview's queries run on PostgreSQL too


def test_a_wrong_secret_is_refused_and_pages_need_a_session(
    browser: Any, console_server: RunningServer
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{console_server.url}/console/?page=2")
    assert "/console/login" in page.url  # sent to sign in first
    page.fill("input[name=access_key_id]", "test")
    page.fill("input[name=secret_access_key]", "not-the-secret")
    page.click("button[type=submit]")
    assert page.locator("[role=alert]").inner_text() == "The access key or secret is not right."
    assert page.context.cookies() == []
    screenshot(page, "sign-in-refused")
    context.close()
    # Data calls without a session get 401, and a forged cookie is no session.
    cookies = {"mlharbor_console": "WyJ0ZXN0IiwidXMtZWFzdC0xIiwiIl0.forged.sig"}
    answer = requests.post(
        f"{console_server.url}/console/api/call/rekognition/ListCollections",
        json={}, headers={"X-MLHarbor-Console": "1"}, cookies=cookies, timeout=10,
    )  # fmt: skip
    assert answer.status_code == 401


def _total(page: Any, kind: str) -> int:
    return int(page.locator("#resources tr", has_text=kind).locator("td.num").inner_text())


def test_overview_shows_the_accounts_resources_and_not_to_another_account(
    browser: Any, console_server: RunningServer, console: Any
) -> None:
    console.goto(f"{console_server.url}/console/")
    before = {kind: _total(console, kind) for kind in ("Stream processors", "Entity recognizers")}
    name, collection = unique("overview"), unique("overview")
    console_server.client("rekognition").create_collection(CollectionId=collection)
    video = console_server.client("kinesisvideo").create_stream(StreamName=name)["StreamARN"]
    console_server.client("kinesis").create_stream(StreamName=name, ShardCount=1)
    console_server.client("rekognition").create_stream_processor(
        Name=name, Input={"KinesisVideoStream": {"Arn": video}},
        Output={"KinesisDataStream": {"Arn": f"arn:aws:kinesis:us-east-1:000000000000:stream/{name}"}},
        Settings={"FaceSearch": {"CollectionId": collection}}, RoleArn="arn:aws:iam::000000000000:role/r",
    )  # fmt: skip
    # Data that does not exist: the recognizer ends IN_ERROR at once, and its message is a recent error.
    console_server.client("comprehend").create_entity_recognizer(
        RecognizerName=name, LanguageCode="en", DataAccessRoleArn="arn:aws:iam::000000000000:role/r",
        InputDataConfig={"EntityTypes": [{"Type": "PERSON"}], "Documents": {"S3Uri": "s3://nobucket/d.txt"},
                         "Annotations": {"S3Uri": "s3://nobucket/a.csv"}},
    )  # fmt: skip
    console.goto(f"{console_server.url}/console/")
    assert _total(console, "Stream processors") == before["Stream processors"] + 1
    assert "STOPPED" in console.locator("#resources tr", has_text="Stream processors").inner_text()
    assert _total(console, "Entity recognizers") == before["Entity recognizers"] + 1
    assert _total(console, "Face collections") >= 1
    assert console.locator("#health").inner_text() == "ok"

    def failure_shown() -> bool:
        console.reload()
        return console.locator("#failures tr", has_text=name).count() == 1

    wait_until(failure_shown, timeout=30, interval=0.5, what="the recognizer's failure on the overview")
    failure = console.locator("#failures tr", has_text=name).inner_text()
    assert "IN_ERROR" in failure and "nobucket" in failure  # the Message names the missing data
    screenshot(console, "overview")

    other = sign_in(browser, console_server, "other", "other-secret")
    assert OTHER_ACCOUNT in other.locator("header .who").inner_text()
    assert other.locator("#failures tr", has_text=name).count() == 0
    # The other account's operation calls are its own too.
    listed = other.evaluate("mlhCall('rekognition', 'ListStreamProcessors', {})")
    assert name not in [p["Name"] for p in listed["StreamProcessors"]]
    other.context.close()


def test_actions_without_the_console_header_are_refused(console: Any, console_server: RunningServer) -> None:
    cookies = {c["name"]: c["value"] for c in console.context.cookies()}
    answer = requests.post(
        f"{console_server.url}/console/api/call/rekognition/CreateCollection",
        json={"CollectionId": unique("csrf")}, cookies=cookies, timeout=10,
    )  # fmt: skip
    assert answer.status_code == 403


def test_signing_out_ends_the_session(browser: Any, console_server: RunningServer) -> None:
    page = sign_in(browser, console_server)
    page.click("text=Sign out")
    page.wait_for_url("**/console/login")
    page.goto(f"{console_server.url}/console/")
    assert "/console/login" in page.url
    page.context.close()


def test_a_bucket_named_console_is_still_s3s(console_server: RunningServer) -> None:
    """Signed requests under /console/ are S3's (path style): the console only takes unsigned ones."""
    s3 = console_server.client("s3")
    s3.create_bucket(Bucket="console")
    s3.put_object(Bucket="console", Key="login", Body=b"not a page")
    assert s3.get_object(Bucket="console", Key="login")["Body"].read() == b"not a page"
    assert requests.get(f"{console_server.url}/console/login", timeout=10).text.count("Sign in") >= 1


def test_oversized_bodies_and_odd_regions_are_refused(console: Any, console_server: RunningServer) -> None:
    url = console_server.url
    huge = b"access_key_id=test&secret_access_key=" + b"x" * 100_000
    assert requests.post(f"{url}/console/login", data=huge, timeout=10).status_code == 413
    form = {"access_key_id": "test", "secret_access_key": "test", "region": "ΕΥ-west-1"}
    assert (
        requests.post(f"{url}/console/login", data=form, timeout=10, allow_redirects=False).status_code == 401
    )
    cookies = {c["name"]: c["value"] for c in console.context.cookies()}
    headers = {"X-MLHarbor-Console": "1"}
    too_big = requests.post(
        f"{url}/console/api/call/rekognition/ListCollections", data=b"{" + b" " * (9 << 20) + b"}",
        headers=headers, cookies=cookies, timeout=30,
    )  # fmt: skip
    assert too_big.status_code == 413
    # S3's operations take rest-xml requests: not callable from the console.
    s3 = requests.post(
        f"{url}/console/api/call/s3/ListBuckets", json={}, headers=headers, cookies=cookies, timeout=10
    )
    assert s3.status_code == 400 and s3.json()["code"] == "UnknownOperationException"
    # Another site cannot sign the user out.
    cross = requests.post(
        f"{url}/console/logout", cookies=cookies, headers={"Sec-Fetch-Site": "cross-site"}, timeout=10,
        allow_redirects=False,
    )  # fmt: skip
    assert cross.status_code == 403
