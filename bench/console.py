#!/usr/bin/env python3
"""The web console under load: first paint of every page with 1,000 resources, the live view's delay, and
what ten consoles watching live views cost the API.

One run against a freshly started ``mlharbor serve`` (SQLite, its own data folder), driven by headless
Debian Chromium through Playwright (the console tests' browser), on this machine:

* Seeding: ``--resources`` (1,000) stream processors through the API (CreateStreamProcessor, each on a
  Kinesis Video stream of its own and naming a Kinesis output of its own, as AWS requires; the outputs
  are checked when a processor starts, and these never start), and as many entity
  recognizers: one trained for real on a small generated corpus (its training curve and per-type table are
  real), the others copies of its row written into the database (training 1,000 recognizers would take
  hours; the pages read rows, not models).
* First paint: each page opened ``--paints`` times in a fresh tab of one signed-in browser context (the
  cookie set, the static files cached as a user's would be after the first page); the paint time is the
  browser's own ``first-contentful-paint`` (Paint Timing API, from navigation start). Pages: overview,
  the processor and recognizer lists (first and last page), a processor's page, a recognizer's page, the
  video stream, collection and endpoint lists. Target: p95 ≤ 300 ms on every page.
* Live delay: a face search processor on a looping camera video (the built-in producer,
  ``--video-stream``) with the face indexed; ``--consoles`` browser consoles open its live view. Each tab
  records, for every frame it shows, the time it was shown (the image decoded, before the next paint) minus
  the time the worker analysed it (``analysed_at``, same machine clock). Target: p99 ≤ 300 ms.
* API throughput: ``bench/api_throughput.py``'s load generator (``--clients`` keep-alive connections,
  DescribeStreamProcessor of a missing name, the cheapest call that reaches the store) while the processor
  runs, in alternating windows of ``--seconds``: no console open; ``--consoles`` raw server-sent-event
  readers of the live view in a process of their own (what a console's browser reads, without decoding
  or drawing: the server's own cost); ``--consoles`` browser consoles (each its own browser context, as
  ten users' browsers; the tabs of one browser share one stream) on the live view, with the CPU the
  browsers use meanwhile. Ratio = requests/s with ÷ without (medians of ``--rounds``). Target ≥ 0.9. In
  use the browsers run on their users' computers; here they share the server's two cores, which the last
  window shows.

A measurement that fails prints NOT met with its reason, never a pass.

Usage::

    .venv/bin/python bench/console.py                  # ~4 min
    .venv/bin/python bench/console.py --quick          # smoke run: 100 resources, short windows
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import math
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.console.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the console tests' browser)
from tests.engines.video_files import portrait_frames  # noqa: E402

import api_throughput  # noqa: E402
import harness  # noqa: E402
from stream import write_camera_video  # noqa: E402

ACCOUNT, REGION = "000000000000", "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/bench"
PAINT_TARGET_MS = 300.0
DELAY_TARGET_MS = 300.0
RATIO_TARGET = 0.9
CAMERA = "bench-camera"
# The throughput windows: the API alone, then with the live view watched by ten...
VARIANTS = {
    "alone": "the API alone",
    "readers": "ten raw live-view readers (the server's own cost)",
    "browsers": "ten browser consoles on this machine",
}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


# --- Seeding ---------------------------------------------------------------------------------------------
def seed_processors(server: harness.Server, count: int) -> list[str]:
    """``count`` face search processors through the API, each on its own video stream and output."""
    rek = harness.aws_client(server, "rekognition")
    kvs = harness.aws_client(server, "kinesisvideo")
    rek.create_collection(CollectionId="bench")
    names = []
    for i in range(count):
        name = f"door-{i:04d}"
        video_arn = kvs.create_stream(StreamName=f"cam-{i:04d}", DataRetentionInHours=1)["StreamARN"]
        output = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/out-{i:04d}"
        rek.create_stream_processor(
            Name=name, Input={"KinesisVideoStream": {"Arn": video_arn}},
            Output={"KinesisDataStream": {"Arn": output}},
            Settings={"FaceSearch": {"CollectionId": "bench", "FaceMatchThreshold": 80.0}}, RoleArn=ROLE,
        )  # fmt: skip
        names.append(name)
    return names


def train_one_recognizer(server: harness.Server) -> str:
    """A recognizer trained for real on a small generated corpus (bench/train_recognizer.py's)."""
    import train_recognizer

    comprehend = harness.aws_client(server, "comprehend")
    corpus = train_recognizer.generated_corpus(300, 40)
    config = train_recognizer.upload(server.data_dir, "console", corpus.types, corpus.train, corpus.test)
    arn = train_recognizer.create(comprehend, "products-0000", config)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = comprehend.describe_entity_recognizer(EntityRecognizerArn=arn)["EntityRecognizerProperties"]
        if status["Status"] in ("TRAINED", "TRAINED_WITH_WARNING", "IN_ERROR", "STOPPED"):
            if not status["Status"].startswith("TRAINED"):
                raise RuntimeError(f"the seed recognizer ended {status['Status']}: {status.get('Message')}")
            return arn
        time.sleep(0.5)
    raise RuntimeError("the seed recognizer did not finish training in 300 s")


def clone_recognizers(database: Path, arn: str, count: int) -> None:
    """``count - 1`` copies of the trained recognizer's row under other names (same model, curve, metrics)."""
    with sqlite3.connect(database, timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM entity_recognizers WHERE arn = ?", (arn,)).fetchone())
        columns = list(row)
        rows = []
        for i in range(1, count):
            name = f"products-{i:04d}"
            copy = dict(row, arn=arn.replace("products-0000", name), name=name, incarnation=uuid.uuid4().hex,
                        submitted_at=row["submitted_at"] + i)  # fmt: skip
            rows.append([copy[c] for c in columns])
        marks = ", ".join("?" for _ in columns)
        conn.executemany(f"INSERT INTO entity_recognizers ({', '.join(columns)}) VALUES ({marks})", rows)


# --- First paint -------------------------------------------------------------------------------------------
def sign_in(browser: Any, url: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{url}/console/login")
    page.fill("input[name=access_key_id]", "test")
    page.fill("input[name=secret_access_key]", "test")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/console/")
    page.close()
    return context


def first_paints(context: Any, url: str, pages: dict[str, str], repeats: int) -> dict[str, list[float]]:
    """Per page, the browser's first-contentful-paint of each of ``repeats`` fresh loads (ms)."""
    paints: dict[str, list[float]] = {label: [] for label in pages}
    for _ in range(repeats):
        for label, path in pages.items():  # interleaved: drift in the machine's load hits every page alike
            tab = context.new_page()
            response = tab.goto(url + path, wait_until="load")
            if response is None or response.status != 200:
                raise RuntimeError(f"{path} answered {response.status if response else 'nothing'}")
            paint = tab.evaluate(
                """() => new Promise((resolve) => {
                    const find = () => performance.getEntriesByName('first-contentful-paint')[0];
                    const seen = find();
                    if (seen) return resolve(seen.startTime);
                    new PerformanceObserver(() => { const e = find(); if (e) resolve(e.startTime); })
                        .observe({type: 'paint', buffered: true});
                    setTimeout(() => resolve(null), 5000);
                })"""
            )
            tab.close()
            if paint is None:
                raise RuntimeError(f"{path}: the browser reported no first-contentful-paint")
            paints[label].append(float(paint))
    return paints


# --- Live view ---------------------------------------------------------------------------------------------
def start_live_processor(server: harness.Server, hopper: bytes) -> str:
    rek = harness.aws_client(server, "rekognition")
    kinesis = harness.aws_client(server, "kinesis")
    rek.create_collection(CollectionId="live")
    rek.index_faces(CollectionId="live", Image={"Bytes": hopper}, ExternalImageId="grace")
    kinesis.create_stream(StreamName="live-out", ShardCount=1)
    name = "live-door"
    rek.create_stream_processor(
        Name=name,
        Input={"KinesisVideoStream": {"Arn": f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/{CAMERA}/1"}},
        Output={"KinesisDataStream": {"Arn": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/live-out"}},
        Settings={"FaceSearch": {"CollectionId": "live", "FaceMatchThreshold": 80.0}}, RoleArn=ROLE,
    )  # fmt: skip
    rek.start_stream_processor(Name=name)
    deadline = time.monotonic() + 60
    while rek.describe_stream_processor(Name=name)["Status"] != "RUNNING":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} is not RUNNING: {rek.describe_stream_processor(Name=name)}")
        time.sleep(0.1)
    return name


def open_consoles(browser: Any, cookies: list[Any], url: str, name: str, count: int) -> list[Any]:
    """``count`` consoles on the processor's live view, each its own browser context (a user's browser: its
    own connection, as the tabs of one browser share one stream)."""
    tabs = []
    for _ in range(count):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_cookies(cookies)
        tab = context.new_page()
        tab.goto(f"{url}/console/processors/{name}")
        tabs.append(tab)
    for tab in tabs:  # every console shows frames before anything is measured
        tab.wait_for_function("() => (window.mlhLiveDelays || []).length > 0", timeout=60_000)
    return tabs


def close_consoles(tabs: list[Any]) -> None:
    for tab in tabs:
        tab.context.close()


def live_delays(tabs: list[Any]) -> list[float]:
    delays: list[float] = []
    for tab in tabs:
        delays += tab.evaluate("() => (window.mlhLiveDelays || []).splice(0)")
    return delays


class SseReaders:
    """``count`` raw server-sent-event readers of the live view (what the tabs' EventSource reads, without
    decoding or drawing), in a process of their own: the server's own cost of ``count`` consoles."""

    def __init__(self, url: str, cookie: str, path: str, count: int) -> None:
        self.stop, self.events = multiprocessing.Event(), multiprocessing.Value("l", 0)
        self.process = multiprocessing.Process(
            target=_read_events, args=(url, cookie, path, count, self.stop, self.events), daemon=True
        )
        self.process.start()

    def close(self) -> int:
        self.stop.set()
        self.process.join(timeout=10)
        return int(self.events.value)


def _read_events(url: str, cookie: str, path: str, count: int, stop: Any, events: Any) -> None:
    async def read() -> None:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            f"Cookie: {cookie}\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            while line := await reader.readline():
                if line.startswith(b"data:"):
                    with events.get_lock():
                        events.value += 1
        finally:
            writer.close()

    async def main() -> None:
        readers = [asyncio.ensure_future(read()) for _ in range(count)]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    asyncio.run(main())


def throughput(target: api_throughput.Target, clients: int, seconds: float) -> float:
    call = api_throughput.CALLS[0]  # DescribeStreamProcessor of a missing name
    # Playwright's sync API runs an event loop in this thread: the load generator gets a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        phase = api_throughput._run_phase(target, call, clients, 1.0, seconds)
        result = pool.submit(asyncio.run, phase).result()
    if result.stats.errors:
        raise RuntimeError(f"load generator errors: {dict(result.stats.errors)}")
    return result.rps


def browser_cpu_seconds() -> float:
    """CPU seconds used so far by this process's Chromium processes (the browser, its renderers, GPU and
    network processes): what the consoles cost the machine they share with the server here."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text.rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            if "chrom" in text.split("(", 1)[1].rsplit(")", 1)[0]:
                used[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    total = 0.0
    for pid, seconds in used.items():
        ancestor = parents.get(pid)
        while ancestor and ancestor != os.getpid():
            ancestor = parents.get(ancestor)
        total += seconds if ancestor == os.getpid() else 0.0
    return total


# --- Report ------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--paints", type=int, default=20, help="loads of each page")
    parser.add_argument("--consoles", type=int, default=10)
    parser.add_argument("--delay-seconds", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="each throughput window")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput windows per variant")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.resources, args.paints, args.delay_seconds, args.seconds, args.rounds = 100, 5, 5.0, 3.0, 1
    from playwright.sync_api import sync_playwright

    print(f"load before the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    problems: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        video = write_camera_video(tmp / "door.mp4", portrait_frames(90), 15)
        server = harness.start_server(
            tmp, env={"MLHARBOR_STREAM_PROCESSOR_LIMIT": str(args.resources + 10)},
            args=["--video-stream", f"{CAMERA}={video}"],
        )  # fmt: skip
        try:
            started = time.monotonic()
            processors = seed_processors(server, args.resources)
            recognizer = train_one_recognizer(server)
            clone_recognizers(server.data_dir / "mlharbor.db", recognizer, args.resources)
            print(f"seeded {len(processors)} processors and {args.resources} recognizers in "
                  f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
            last = (args.resources + 49) // 50
            pages = {
                "overview": "/console/",
                "processors p.1": "/console/processors",
                f"processors p.{last}": f"/console/processors?page={last}",
                "processor": f"/console/processors/{processors[len(processors) // 2]}",
                "recognizers p.1": "/console/recognizers",
                f"recognizers p.{last}": f"/console/recognizers?page={last}",
                "recognizer": "/console/recognizers/products-0000",
                "video streams p.1": "/console/videos",
                "collections": "/console/collections",
                "endpoints & jobs": "/console/endpoints",
            }
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = sign_in(browser, server.url)
                paints = first_paints(context, server.url, pages, args.paints)

                hopper = (ROOT / "tests" / "data" / "grace_hopper.jpg").read_bytes()
                live = start_live_processor(server, hopper)
                target = api_throughput.Target("mlharbor", server.url, server.proc, server.log_path)
                cookie = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies())
                cookies = context.cookies()
                windows: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
                browser_cpu: list[float] = []  # cores the ten browsers used during their windows
                for _ in range(args.rounds):
                    windows["alone"].append(throughput(target, args.clients, args.seconds))
                    feed = f"/console/processors/{live}/live"
                    readers = SseReaders(server.url, cookie, feed, args.consoles)
                    try:
                        windows["readers"].append(throughput(target, args.clients, args.seconds))
                    finally:
                        if readers.close() == 0:
                            problems["readers"] = "the raw live-view readers received no event"
                    tabs = open_consoles(browser, cookies, server.url, live, args.consoles)
                    try:
                        live_delays(tabs)  # frames shown while the consoles opened do not count
                        used, started = browser_cpu_seconds(), time.monotonic()
                        windows["browsers"].append(throughput(target, args.clients, args.seconds))
                        browser_cpu.append((browser_cpu_seconds() - used) / (time.monotonic() - started))
                        if not live_delays(tabs):
                            problems["browsers"] = "the consoles showed no frame during the window"
                    finally:
                        close_consoles(tabs)
                # The delay, consoles open and no API load.
                tabs = open_consoles(browser, cookies, server.url, live, args.consoles)
                live_delays(tabs)
                time.sleep(args.delay_seconds)  # frames accumulate in the consoles meanwhile
                delays = live_delays(tabs)
                close_consoles(tabs)
                browser.close()
        finally:
            harness.stop_process(server.proc)

    rows = []
    for label, values in paints.items():
        p95 = percentile(values, 0.95)
        rows.append([label, harness.fmt(statistics.median(values), ".0f"), harness.fmt(p95, ".0f"),
                     harness.fmt(max(values), ".0f"),
                     harness.verdict(p95, PAINT_TARGET_MS, at_most=True)])  # fmt: skip
    print(f"\nFirst contentful paint, ms ({args.paints} loads of each page, {args.resources} processors "
          f"and {args.resources} recognizers):")  # fmt: skip
    harness.print_table(["page", "p50", "p95", "max", "p95 ≤ 300 ms"], rows, right={1, 2, 3})

    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    worst = max(delays) if delays else None
    judged = harness.verdict(p99, DELAY_TARGET_MS, at_most=True, problem=None if delays else "no frame shown")
    print(f"\nLive view delay (frame analysed → shown in the browser), {len(delays)} frames shown in "
          f"{args.consoles} tabs over {args.delay_seconds:.0f} s: p50 {harness.fmt(p50, '.0f', ' ms')}, "
          f"p99 {harness.fmt(p99, '.0f', ' ms')}, max {harness.fmt(worst, '.0f', ' ms')}: "
          f"{judged}")  # fmt: skip

    base = statistics.median(windows["alone"]) if windows["alone"] else None
    for variant, label in VARIANTS.items():
        if variant == "alone":
            continue
        values = windows[variant]
        value = statistics.median(values) if values else None
        failed = problems.get("readers" if variant == "readers" else "browsers")
        share = harness.ratio(value, base, numerator_name=f"with {label}", denominator_name="the API alone",
                              failed=failed)  # fmt: skip
        print(f"API throughput with {label}: {harness.fmt(value, '.0f')} req/s vs "
              f"{harness.fmt(base, '.0f')} alone (medians of {args.rounds}): ratio {harness.fmt(share)}: "
              f"{harness.verdict(share, RATIO_TARGET)}")  # fmt: skip
    if browser_cpu:
        print(f"  the ten browsers themselves used {statistics.median(browser_cpu):.2f} of the machine's "
              f"{os.cpu_count()} cores meanwhile (median of {len(browser_cpu)} windows)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
