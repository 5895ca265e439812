"""The console's tests run in a real headless Chromium (Debian's package, /usr/bin/chromium, installed by
`make install-test`), driven by Playwright, against a real server with two accounts' credentials.

Screenshots of the pages go to ``$MLHARBOR_TEST_ARTIFACTS/console`` (default ``test-artifacts/console``)
and are checked to be non-blank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from tests.conftest import RunningServer, _fresh_database, start_server, stop_server

CHROMIUM = os.environ.get("MLHARBOR_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MLHARBOR_TEST_ARTIFACTS", "test-artifacts")) / "console"
# Chromium as this machine runs it: root (no sandbox), no GPU, and nothing that phones home (the network is
# closed; background connections would be refused by the dozen).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip
OTHER_ACCOUNT = "111111111111"
CREDENTIALS = """
[test]
secret_access_key = "test"
account_id = "000000000000"

[other]
secret_access_key = "other-secret"
account_id = "111111111111"
"""


@pytest.fixture(scope="session")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for every console test (unique resource names keep them apart), with two accounts."""
    tmp = tmp_path_factory.mktemp("console")
    credentials = tmp / "credentials.toml"
    credentials.write_text(CREDENTIALS)
    url, drop = _fresh_database(tmp)
    running = start_server(tmp, url, "--credentials", str(credentials))
    yield running
    stop_server(running)
    drop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def sign_in(browser: Any, server: RunningServer, access_key: str = "test", secret: str = "test") -> Any:
    """A new browser context signed in to ``server``'s console; returns its page (on the overview)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"{server.url}/console/")
    page.fill("input[name=access_key_id]", access_key)
    page.fill("input[name=secret_access_key]", secret)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/console/")
    return page


@pytest.fixture
def console(browser: Any, console_server: RunningServer) -> Iterator[Any]:
    """A page signed in to the console server as account 000000000000."""
    page = sign_in(browser, console_server)
    yield page
    page.context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artifact and check that it shows something."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as image:
        grey = image.convert("L")
        spread = ImageStat.Stat(grey).stddev[0]
        colours = len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])
    assert spread > 8 and colours > 16, f"{path} looks blank (stddev {spread:.1f}, {colours} colours)"
    return path
