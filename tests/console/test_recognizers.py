"""The entity recognizer, endpoint and detection job pages: a training curve drawn while training, the
evaluation once trained, Stop training, entities highlighted in pasted text, an endpoint's throughput, a job's
progress and output; another account sees none of it."""

from __future__ import annotations

import gzip
import io
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from mlharbor.console.charts import line_chart
from tests.conftest import RunningServer, unique, wait_until
from tests.console.conftest import screenshot, sign_in
from tests.services.comprehend.conftest import ROLE
from tests.services.comprehend.corpus import UNSEEN_ENTITIES, UNSEEN_TEXT, put_object, upload

TRAINED = {"TRAINED", "TRAINED_WITH_WARNING"}
TEXT, EXPECTED = UNSEEN_TEXT, UNSEEN_ENTITIES
CURVE_POINT = "#live svg.chart circle.point"
JOB_LINES = 8000  # a few seconds of work: its progress shows while it runs
UNITS = 4  # AWS's rate per unit (100 characters/s) would throttle a test that sends a few texts at once


RUNNING_WITH_PROGRESS = r"""() => document.getElementById('status')?.textContent.trim() === 'IN_PROGRESS'
    && /^Processed [1-9][0-9]* document\(s\)$/.test(document.getElementById('progress').textContent.trim())"""


def describe(client: Any, arn: str) -> dict[str, Any]:
    return client.describe_entity_recognizer(EntityRecognizerArn=arn)["EntityRecognizerProperties"]


def create_recognizer(server: RunningServer, docs: int, seed: int = 1) -> tuple[str, str]:
    """A recognizer created through the API on generated data; (name, ARN)."""
    config = upload(server.data_dir, "training", unique("console-corpus"), docs=docs, seed=seed)
    name = unique("rec")
    arn = server.client("comprehend").create_entity_recognizer(
        RecognizerName=name, LanguageCode="en", DataAccessRoleArn=ROLE, InputDataConfig=config
    )["EntityRecognizerArn"]
    return name, arn


@pytest.fixture(scope="module")
def training(console_server: RunningServer) -> tuple[str, str]:
    """A small recognizer, created as the module starts: trained in about ten seconds."""
    return create_recognizer(console_server, docs=200)


@pytest.fixture(scope="module")
def trained(console_server: RunningServer, training: tuple[str, str]) -> tuple[str, str]:
    client = console_server.client("comprehend")
    name, arn = training

    def done() -> bool:
        status = describe(client, arn)["Status"]
        assert status not in {"IN_ERROR", "STOPPED"}, describe(client, arn)
        return status in TRAINED

    wait_until(done, timeout=240, interval=0.2, what=f"{name} to be trained")
    return training


@pytest.fixture(scope="module")
def endpoint(console_server: RunningServer, trained: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """An IN_SERVICE endpoint on the trained recognizer: (name, ARN)."""
    client = console_server.client("comprehend")
    name = unique("ep")
    arn = client.create_endpoint(EndpointName=name, ModelArn=trained[1], DesiredInferenceUnits=UNITS)[
        "EndpointArn"
    ]
    wait_until(
        lambda: client.describe_endpoint(EndpointArn=arn)["EndpointProperties"]["Status"] == "IN_SERVICE",
        timeout=90, interval=0.1, what=f"{name} to be IN_SERVICE",
    )  # fmt: skip
    yield name, arn
    client.delete_endpoint(EndpointArn=arn)


@pytest.fixture(scope="module")
def job(console_server: RunningServer, trained: tuple[str, str]) -> str:
    """A small entities detection job on the trained recognizer (started, not awaited): its id. Its output
    goes to a bucket the account created (the console serves a job's output only from such a bucket)."""
    prefix, output_bucket = unique("console-job"), unique("console-job-output")
    console_server.client("s3").create_bucket(Bucket=output_bucket)
    lines = [TEXT, "Nothing to see here."]
    lines += [f"Document {i} about Zürich and Nadia Okafor." for i in range(JOB_LINES - len(lines))]
    uri = put_object(console_server.data_dir, "job-input", f"{prefix}/docs.txt", "\n".join(lines).encode())
    return console_server.client("comprehend").start_entities_detection_job(
        JobName="console-job", EntityRecognizerArn=trained[1], LanguageCode="en", DataAccessRoleArn=ROLE,
        InputDataConfig={"S3Uri": uri}, OutputDataConfig={"S3Uri": f"s3://{output_bucket}/{prefix}/"},
    )["JobId"]  # fmt: skip


def detect(page: Any, text: str) -> str:
    """Paste ``text`` into Try it and run it; the status line it ends with (an error fails the test)."""
    page.fill("#try-text", text)
    page.click("#try-run")  # the status says "Detecting…" until the answer came
    page.wait_for_function("() => document.getElementById('try-status').textContent !== 'Detecting…'")
    status = page.locator("#try-status")
    assert status.get_attribute("class") != "error", status.inner_text()
    return status.inner_text()


def shown_text(page: Any) -> str:
    """The text Try it shows, without the highlights' labels."""
    return page.evaluate(
        """() => [...document.getElementById('try-output').childNodes].map(
            (n) => n.nodeType === Node.TEXT_NODE ? n.textContent : n.querySelector('.entity-text').textContent
        ).join('')"""
    )


def page_of(server: RunningServer, name: str) -> str:
    return f"{server.url}/console/recognizers/{name}"


# --- Training ---------------------------------------------------------------------------------------
def test_a_training_curve_appears_while_training(
    console: Any, console_server: RunningServer, training: tuple[str, str]
) -> None:
    name, arn = training
    console.goto(page_of(console_server, name))
    # The page refreshes itself: no reload here. The curve must show up while the status still says TRAINING.
    console.wait_for_function(
        """([selector]) => document.querySelector(selector)
            && document.getElementById('status').textContent.trim() === 'TRAINING'""",
        arg=[CURVE_POINT], timeout=120_000, polling=100,
    )  # fmt: skip
    assert console.locator("#message").inner_text().startswith("Training: epoch ")
    assert console.locator("#stop-training").is_visible()
    assert console.locator("#live svg.chart g.best").count() == 1
    screenshot(console, "recognizer-training")
    assert "curve" not in describe(console_server.client("comprehend"), arn)  # the API output is AWS's


def test_the_evaluation_per_type_appears_once_trained(
    console: Any, console_server: RunningServer, trained: tuple[str, str]
) -> None:
    name, arn = trained
    console.goto(page_of(console_server, name))
    metrics = console.locator("#metrics")
    metrics.wait_for()
    rows = {
        row.locator("td").first.inner_text(): [c.inner_text() for c in row.locator("td").all()[1:]]
        for row in metrics.locator("tbody tr").all()
    }
    assert set(rows) == {"PERSON", "PRODUCT", "CITY"}
    expected = describe(console_server.client("comprehend"), arn)["RecognizerMetadata"]
    for entry in expected["EntityTypes"]:
        mentions, precision, recall, f1 = rows[entry["Type"]]
        assert int(mentions) == entry["NumberOfTrainMentions"]
        assert float(f1) == pytest.approx(entry["EvaluationMetrics"]["F1Score"], abs=0.05)
        assert 0 <= float(precision) <= 100 and 0 <= float(recall) <= 100
    overall = metrics.locator("tfoot th").all()
    assert float(overall[-1].inner_text()) == pytest.approx(
        expected["EvaluationMetrics"]["F1Score"], abs=0.05
    )
    # The curve stays, its best epoch marked; a finished recognizer has no Stop button.
    assert console.locator(CURVE_POINT).count() >= 1
    assert "best: epoch" in (console.locator("#live svg.chart g.best").text_content() or "")
    assert console.locator("#stop-training").count() == 0
    screenshot(console, "recognizer-trained")

    console.goto(f"{console_server.url}/console/recognizers")
    row = console.locator("#recognizers tr", has_text=name)
    assert "PERSON, PRODUCT, CITY" in row.inner_text() and "en" in row.inner_text()
    assert row.locator(".state").inner_text() in TRAINED
    screenshot(console, "recognizers")


def test_stop_training_from_the_page(console: Any, console_server: RunningServer) -> None:
    client = console_server.client("comprehend")
    name, arn = create_recognizer(console_server, docs=1200, seed=3)
    console.goto(page_of(console_server, name))
    console.wait_for_function(  # the page follows the status by itself
        "() => document.getElementById('status')?.textContent.trim() === 'TRAINING'",
        timeout=60_000,
        polling=100,
    )
    console.locator("#stop-training").click()
    final = {"STOPPED", *TRAINED}  # a stop that arrives as training ends loses to completion, as AWS says
    wait_until(lambda: describe(client, arn)["Status"] in final, timeout=60, interval=0.1, what="the stop")
    status = describe(client, arn)["Status"]
    console.goto(page_of(console_server, name))
    assert console.locator("#status").inner_text() == status
    assert console.locator("#stop-training").count() == 0
    screenshot(console, "recognizer-stopped")


# --- Try it -----------------------------------------------------------------------------------------
def test_pasted_text_shows_the_entities_highlighted(
    console: Any, console_server: RunningServer, trained: tuple[str, str], endpoint: tuple[str, str]
) -> None:
    endpoint_name, endpoint_arn = endpoint
    console.goto(page_of(console_server, trained[0]))
    assert console.locator("#try-endpoint").input_value() == endpoint_arn  # the one serving this recognizer
    assert detect(console, TEXT).endswith("found.")
    marks = console.evaluate(
        """() => [...document.querySelectorAll('#try-output mark.entity')].map((m) => [
            m.querySelector('.entity-text').textContent, m.dataset.type, m.querySelector('sup').textContent,
        ])"""
    )
    answer = console_server.client("comprehend").detect_entities(Text=TEXT, EndpointArn=endpoint_arn)
    assert [(text, kind) for text, kind, _ in marks] == [(e["Text"], e["Type"]) for e in answer["Entities"]]
    assert len({(text, kind) for text, kind, _ in marks} & EXPECTED) >= 3, marks
    assert all(label.startswith(kind) for _, kind, label in marks)
    assert shown_text(console) == TEXT  # around the highlights, exactly what was pasted, emoji included
    assert console.locator("#try-entities tbody tr").count() == len(marks)
    screenshot(console, "recognizer-try-it")

    # Markup in pasted text stays text.
    markup = "<img src=x onerror=alert(1)> Zoë Müller lives in Zürich."
    detect(console, markup)
    assert shown_text(console) == markup
    assert console.locator("#try-output img").count() == 0

    # The endpoint's page: state, units, and the documents its workers served (heartbeats, every 5 s).
    console.goto(f"{console_server.url}/console/endpoints/{endpoint_name}")
    assert console.locator("#status").inner_text() == "IN_SERVICE"
    assert console.locator("#units").inner_text() == str(UNITS)
    console.wait_for_function(
        "() => parseInt(document.getElementById('served').textContent) >= 2", timeout=30_000, polling=200
    )
    ready, workers = console.locator("#workers").inner_text().split(" ready")[0].split(" / ")
    assert ready == workers and int(workers) >= 1
    assert trained[0] in console.locator("#model").inner_text()
    screenshot(console, "endpoint")
    console.goto(f"{console_server.url}/console/endpoints")
    row = console.locator("#endpoints tr", has_text=endpoint_name)
    assert "IN_SERVICE" in row.inner_text() and f"{UNITS} / {UNITS}" in row.inner_text()


# --- Detection jobs ---------------------------------------------------------------------------------
def test_a_jobs_progress_and_its_output(console: Any, console_server: RunningServer, job: str) -> None:
    console.goto(f"{console_server.url}/console/jobs/{job}")
    assert console.locator("#status").inner_text() in {"SUBMITTED", "IN_PROGRESS"}
    # The page follows the job by itself: "Processed N document(s)" while it runs, then the outcome.
    console.wait_for_function(RUNNING_WITH_PROGRESS, timeout=120_000, polling=100)
    screenshot(console, "job-in-progress")
    console.wait_for_function(
        "() => document.getElementById('status')?.textContent.trim() === 'COMPLETED'",
        timeout=120_000,
        polling=200,
    )
    assert console.locator("#progress").inner_text() == f"{JOB_LINES} document(s) processed"
    screenshot(console, "job")
    link = console.locator("#output-link")
    answer = console.request.get(f"{console_server.url}{link.get_attribute('href')}")
    assert answer.status == 200 and answer.headers["content-type"] == "application/gzip"
    body = answer.body()
    assert body[:2] == b"\x1f\x8b"
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        assert tar.getnames() == ["output"]
    assert len(gzip.decompress(body)) > 0

    console.goto(f"{console_server.url}/console/endpoints#jobs")
    row = console.locator("#job-list tr", has_text=job)
    assert "COMPLETED" in row.inner_text() and "console-job" in row.inner_text()
    screenshot(console, "endpoints")
    row.locator("a").first.click()
    console.wait_for_url(f"**/console/jobs/{job}")


# --- Another account --------------------------------------------------------------------------------
def test_another_account_gets_404(
    browser: Any, console_server: RunningServer, trained: tuple[str, str], endpoint: tuple[str, str], job: str
) -> None:
    other = sign_in(browser, console_server, "other", "other-secret")
    base = console_server.url
    for path in (
        f"/console/recognizers/{trained[0]}", f"/console/recognizers/{trained[0]}?version=",
        f"/console/endpoints/{endpoint[0]}", f"/console/jobs/{job}", f"/console/jobs/{job}/output",
    ):  # fmt: skip
        assert other.goto(base + path).status == 404, path
    assert other.locator("body").inner_text()  # a page that says what is missing
    for path in ("/console/recognizers", "/console/endpoints"):
        other.goto(base + path)
        text = other.locator("main").inner_text()
        assert trained[0] not in text and endpoint[0] not in text and job not in text
    other.context.close()


def test_pages_need_a_session(browser: Any, console_server: RunningServer, job: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{console_server.url}/console/jobs/{job}/output")
    assert "/console/login" in page.url
    context.close()


# --- The chart itself -------------------------------------------------------------------------------
def test_line_chart_is_svg_with_the_best_epoch_marked() -> None:
    started = time.perf_counter()
    svg = str(line_chart([(1, 0.2), (2, 0.55), (3, 0.8), (4, 0.75)], best=3, title="a <b> & c"))
    assert time.perf_counter() - started < 0.05
    root = ET.fromstring(svg)  # well-formed XML, text escaped
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert root.get("class") == "chart"
    assert root.find("s:title", ns).text == "a <b> & c"  # type: ignore[union-attr]
    assert len(root.findall("s:circle[@class='point']", ns)) == 4
    best = root.find("s:g[@class='best']", ns)
    assert best is not None and "epoch 3, 80.0%" in (best.find("s:text", ns).text or "")  # type: ignore[union-attr]
    # The best dot sits on the third point; higher F1 is higher up.
    points = root.findall("s:circle[@class='point']", ns)
    assert best.find("s:circle", ns).get("cx") == points[2].get("cx")  # type: ignore[union-attr]
    assert float(points[2].get("cy")) < float(points[0].get("cy"))  # type: ignore[arg-type]
    labels = [t.text for t in root.findall("s:text", ns)]
    assert "0%" in labels and "100%" in labels and "Epoch" in labels

    one = ET.fromstring(str(line_chart([(1, 0.0)], best=1)))
    assert len(one.findall("s:circle[@class='point']", ns)) == 1
    empty = ET.fromstring(str(line_chart([])))
    assert empty.findall("s:circle", ns) == [] and empty.find("s:g[@class='best']", ns) is None
    many = ET.fromstring(str(line_chart([(e, e / 60) for e in range(1, 61)], best=60)))
    ticks = [t.text for t in many.findall("s:text[@text-anchor='middle']", ns) if (t.text or "").isdigit()]
    assert 5 <= len(ticks) <= 13 and "60" in ticks


# --- The curve's record -----------------------------------------------------------------------------
def test_a_retried_training_attempt_starts_a_fresh_curve(tmp_path: Any) -> None:
    from sqlalchemy import insert, select

    from mlharbor.console.recognizers import curve_chart
    from mlharbor.services.comprehend import training
    from mlharbor.store.db import Store
    from mlharbor.store.tables import entity_recognizers as table

    store = Store(f"sqlite:///{tmp_path / 'curve.db'}")
    store.migrate()
    arn = "arn:aws:comprehend:us-east-1:000000000000:entity-recognizer/retried"
    earlier = training.curve_of([[1, 0.3], [2, 0.5]], 2, attempt=0)
    now = time.time()
    spec = {
        "LanguageCode": "en",
        "InputDataConfig": {
            "EntityTypes": [{"Type": "PERSON"}],
            "Documents": {"S3Uri": "s3://missing/docs.txt"},
            "Annotations": {"S3Uri": "s3://missing/annotations.csv"},
        },
    }
    with store.begin() as conn:
        conn.execute(
            insert(table).values(
                arn=arn, account_id="000000000000", region="us-east-1", name="retried", version_name="",
                incarnation="i1", status="TRAINING", message="Training restarted after an interruption",
                version=3, submitted_at=now, updated_at=now, spec=spec, details={}, attempt=1, crashes=1,
                curve=earlier,
            )
        )  # fmt: skip
        row = conn.execute(select(table).where(table.c.arn == arn)).one()
    assert curve_chart(row) is None  # the page never shows an earlier attempt's curve
    assert curve_chart(SimpleNamespace(curve=earlier, attempt=0)) is not None

    class Context:
        def stop_requested(self) -> bool:
            return False

        def heartbeat(self, progress: Any = None) -> None:
            pass

    payload = {
        "arn": arn, "incarnation": "i1", "attempt": 1, "object_store": "local", "data_dir": str(tmp_path),
        "artifact_uri": "s3://models/retried.tar.gz",
    }  # fmt: skip
    training._train(Context(), store, payload)  # type: ignore[arg-type]  # (the data is missing: it fails)
    with store.read() as conn:
        row = conn.execute(select(table).where(table.c.arn == arn)).one()
    assert row.curve is None and row.status == "IN_ERROR"
    store.dispose()


# --- A job's output: only from a bucket of the job's account, object store failures a 503 ---------------
def test_a_jobs_output_is_served_only_from_a_bucket_the_account_owns(tmp_path: Any) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import ClientError, EndpointConnectionError
    from sqlalchemy import insert

    from mlharbor.blobs import BlobNotFound
    from mlharbor.console.endpoints import job_output
    from mlharbor.console.session import Who
    from mlharbor.store.db import Store
    from mlharbor.store.tables import entities_detection_jobs, s3_buckets

    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.migrate()
    mine, theirs, now = "000000000000", "111111111111", time.time()
    outputs = {  # job id -> its OutputDataConfig bucket
        "owned": "my-output", "unknown": "nobody-made-this", "theirs": "their-output",
        "models": "mlharbor-models", "failing": "my-output", "denied": "my-output", "gone": "my-output",
    }  # fmt: skip
    with store.begin() as conn:
        for name, owner in (("my-output", mine), ("their-output", theirs), ("mlharbor-models", mine)):
            conn.execute(
                insert(s3_buckets).values(name=name, account_id=owner, region="us-east-1", created_at=now)
            )
        for job_id, bucket in outputs.items():
            conn.execute(
                insert(entities_detection_jobs).values(
                    job_id=job_id, arn=f"arn:aws:comprehend:us-east-1:{mine}:entities-detection-job/{job_id}",
                    account_id=mine, region="us-east-1", incarnation="i1", status="COMPLETED",
                    submitted_at=now, updated_at=now, recognizer_arn=f"{job_id}-recognizer",
                    spec={"OutputDataConfig": {"S3Uri": f"s3://{bucket}/out/"}}, details={},
                )
            )  # fmt: skip

    class Blobs:
        def open_read(self, uri: Any) -> Any:
            key = str(uri)
            if "-failing/" in key:
                raise EndpointConnectionError(endpoint_url="http://s3.invalid")
            if "-denied/" in key:
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")
            if "-gone/" in key:
                raise BlobNotFound(key)
            return io.BytesIO(b"\x1f\x8b archive of " + key.encode())

    settings = SimpleNamespace(
        models_bucket="mlharbor-models", video_bucket="mlharbor-video", uploads_bucket="mlharbor-uploads"
    )
    server = SimpleNamespace(store=store, blobs=Blobs(), settings=settings)
    app = SimpleNamespace(state=SimpleNamespace(console=SimpleNamespace(server=server)))
    who = Who("test", mine, "us-east-1")

    async def get(job_id: str) -> tuple[int, bytes]:
        response = await job_output(SimpleNamespace(app=app, path_params={"job_id": job_id}), who)  # type: ignore[arg-type]
        if response.status_code != 200:
            return response.status_code, bytes(response.body)
        return 200, b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]

    def answer(job_id: str) -> tuple[int, bytes]:
        with ThreadPoolExecutor(1) as thread:  # its own event loop: Playwright's runs in this thread
            return thread.submit(asyncio.run, get(job_id)).result()

    status, body = answer("owned")
    assert status == 200 and body.endswith(b"s3://my-output/out/000000000000-NER-owned/output/output.tar.gz")
    for job_id in ("unknown", "theirs", "models"):  # no bucket record, another account's, MLHarbor's own
        status, body = answer(job_id)
        assert status == 404 and b"not readable here" in body, job_id
    assert answer("failing")[0] == 503  # S3 unreachable: a short 503, not a 500
    assert answer("denied")[0] == 503
    assert answer("gone")[0] == 404
    assert answer("no-such-job")[0] == 404
    store.dispose()
