"""Live views of stream processors: one hub per API process pushes each newly analysed frame to the browsers
watching, as server-sent events.

The worker (``services/rekognition/live_view.py``) writes a processor's latest frame (JPEG), its boxes and
stats into the processor's ``live_views`` row, but only while ``watched_until`` is in the future. Here:

* a stream (``events``) watches one or several processors: ``GET /console/processors/{name}/live``, or
  ``GET /console/live?name=a&name=b``, which a browser's pages share through a ``SharedWorker``
  (``static/live-worker.js``): over HTTP/1.1 a browser holds at most 6 connections to a host, so one
  stream per tab left a seventh tab unable to load at all;
* the first subscriber of a processor in this process creates or refreshes its row (``watched_until`` =
  now + ``WATCH_FOR_S``), and while any subscriber of this process remains, ``watched_until`` is pushed
  ahead every ``TOUCH_S`` (one UPDATE for every processor watched here; writes run in a thread, as the
  SQLite write lock may be busy);
* one poll task for the whole process reads ``seq`` of every watched processor (one indexed query) every
  ``POLL_S``; for the ones that changed it reads the row once (both reads in a thread: on PostgreSQL they
  are network round trips, and the rows carry JPEGs) and builds, on the loop, one event, which all of that
  processor's subscribers share: its meta and the JPEG inline as a data URL (measured against a URL of
  ``frame.jpg`` fetched by each page: inline halved the delay and cost the API process less, one event
  against an event and a request per page and frame); a failing read is logged (once per distinct error)
  and retried after a second, the task never ends on it;
* each subscriber keeps only the latest frame of each processor: a slow browser skips frames instead of
  queueing them. A frame that was already there when the stream began is sent as ``latest``, a new one as
  ``frame`` (only those measure the delay from analysed to shown);
* a stream ends when the client goes away (Starlette cancels it), when its session no longer holds (looked
  at with each keepalive and at least every ``RECHECK_S``: signed out by expiry or a changed secret, or
  its cookie now names another account or region), and every stream ends at once when the server begins
  to shut down (a ``shutdown_hooks`` entry), so uvicorn's graceful stop does not wait for them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from mlharbor.context import Server
from mlharbor.store.tables import live_views as table

if TYPE_CHECKING:
    from mlharbor.console.session import Who

log = logging.getLogger(__name__)

POLL_S = 0.04  # how often the hub looks for new frames
TOUCH_S = 2.0  # how often it pushes watched_until ahead
WATCH_FOR_S = 5.0  # how far ahead: a server that dies stops the worker's publishing within this
KEEPALIVE_S = 15.0  # an SSE comment when nothing else was sent (proxies, dead connections)
RECHECK_S = 15.0  # how often a stream looks again at its session
RETRY_S = 1.0  # the poll task's pause after a failed read
EXTRA = "console.live"  # the hub's key in ``Server.extras``

_SEQS = select(table.c.processor_arn, table.c.seq).where(
    table.c.processor_arn.in_(bindparam("arns", expanding=True))
)
_FRAMES = select(table.c.processor_arn, table.c.seq, table.c.analysed_at, table.c.meta, table.c.jpeg).where(
    table.c.processor_arn.in_(bindparam("arns", expanding=True))
)
_TOUCH = (
    update(table)
    .where(table.c.processor_arn.in_(bindparam("arns", expanding=True)))
    .values(watched_until=bindparam("until"))
)


@dataclass(frozen=True)
class Target:
    """A processor a stream watches: its ARN and name, and the account and region that own it."""

    arn: str
    name: str
    account_id: str
    region: str


@dataclass
class Frame:
    """A processor's latest frame, and its two events (built once, on first use)."""

    name: str
    seq: int
    analysed_at: float | None
    meta: dict[str, Any]
    jpeg: bytes
    events: dict[str, bytes] = field(default_factory=dict)

    def event(self, kind: str) -> bytes:
        built = self.events.get(kind)
        if built is None:
            body = {
                "name": self.name, "seq": self.seq, "analysed_at": self.analysed_at, "meta": self.meta,
                "image": "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii"),
            }  # fmt: skip
            built = (
                f"event: {kind}\ndata: ".encode() + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
            )
            self.events[kind] = built
        return built


class Subscriber:
    """One open stream: per processor, the newest frame not sent yet (older ones are dropped)."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.pending: dict[str, tuple[Frame, bool]] = {}  # arn -> (frame, sent as "latest")
        self.wake = asyncio.Event()
        self.closed = False

    def offer(self, arn: str, frame: Frame, replay: bool = False) -> None:
        self.pending[arn] = (frame, replay)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def next(self, timeout: float) -> bytes | None:
        """The events due (one per processor with a new frame), None after ``timeout`` or once closed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                await self.wake.wait()
        self.wake.clear()
        pending, self.pending = self.pending, {}
        if not pending or self.closed:
            return None
        return b"".join(frame.event("latest" if replay else "frame") for frame, replay in pending.values())


@dataclass
class Watched:
    target: Target
    subscribers: set[Subscriber] = field(default_factory=set)
    latest: Frame | None = None
    seq: int = 0  # of the row as the hub last read it (a cleared frame keeps its seq)
    ready: bool = False  # its row exists and is watched
    polled: bool = False  # the hub read its row once


class Hub:
    def __init__(self, server: Server) -> None:
        self.store = server.store
        self.watched: dict[str, Watched] = {}
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._touching: asyncio.Task[None] | None = None
        server.shutdown_hooks.append(self._shutdown)

    # --- subscribers ------------------------------------------------------------------------------------
    def subscribe(self, targets: list[Target]) -> Subscriber:
        """A new stream of these processors' frames; ``ready`` must be awaited next, and ``unsubscribe``
        called in every case."""
        self.loop = asyncio.get_running_loop()
        subscriber = Subscriber(targets)
        if self.closed:
            subscriber.close()
            return subscriber
        for target in targets:
            watched = self.watched.get(target.arn)
            if watched is None:
                watched = self.watched[target.arn] = Watched(target)
            watched.subscribers.add(subscriber)
            if watched.latest is not None:
                subscriber.offer(target.arn, watched.latest, replay=True)
        return subscriber

    async def ready(self, subscriber: Subscriber) -> None:
        """Make the subscriber's processors watched (their rows created or refreshed), the poll task run."""
        for target in subscriber.targets:
            watched = self.watched.get(target.arn)
            if watched is not None and not watched.ready:
                await asyncio.to_thread(self._watch, target)
                watched.ready = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="console live views")

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a stream. ``watched_until`` is left to run out: another server may watch it too."""
        for target in subscriber.targets:
            watched = self.watched.get(target.arn)
            if watched is None:
                continue
            watched.subscribers.discard(subscriber)
            if not watched.subscribers:
                del self.watched[target.arn]

    def latest_jpeg(self, arn: str) -> bytes | None:
        """The hub's copy of a processor's frame, when it is watched here."""
        watched = self.watched.get(arn)
        return watched.latest.jpeg if watched is not None and watched.latest is not None else None

    # --- the poll task ----------------------------------------------------------------------------------
    async def _run(self) -> None:
        touched, failed = time.monotonic(), None
        while self.watched and not self.closed:
            if time.monotonic() - touched >= TOUCH_S and (self._touching is None or self._touching.done()):
                touched = time.monotonic()
                self._touching = asyncio.create_task(asyncio.to_thread(self._touch, list(self.watched)))
            try:
                await self._poll()
                failed = None
            except Exception as exc:  # the database is briefly unavailable, or a bug: never end the task
                error = f"{type(exc).__name__}: {exc}"
                if error != failed:
                    log.warning("console live views: %s", error, exc_info=True)
                    failed = error
                await asyncio.sleep(RETRY_S)
            await asyncio.sleep(POLL_S)

    async def _poll(self) -> None:
        known = {arn: w.seq for arn, w in self.watched.items() if w.ready}
        if not known:
            return
        changed, rows = await asyncio.to_thread(self._read, known)
        for arn in known:
            if arn in self.watched and arn not in changed:
                self.watched[arn].polled = True
        for row in rows:
            watched = self.watched.get(row.processor_arn)
            if watched is None:
                continue
            # A frame already there at the first look is an old one: "latest", not a new "frame".
            watched.seq, replay, watched.polled = row.seq, not watched.polled, True
            if row.jpeg is None:  # the session that wrote it ended and cleared it
                continue
            watched.latest = Frame(watched.target.name, row.seq, row.analysed_at, row.meta or {}, row.jpeg)
            for subscriber in watched.subscribers:
                subscriber.offer(row.processor_arn, watched.latest, replay)

    def _read(self, known: dict[str, int]) -> tuple[set[str], Sequence[Any]]:
        """In a thread: the processors whose ``seq`` differs from the one known, and their rows."""
        with self.store.read() as conn:
            seqs = conn.execute(_SEQS, {"arns": list(known)}).all()
            changed = {arn for arn, seq in seqs if seq > 0 and seq != known.get(arn)}
            rows = conn.execute(_FRAMES, {"arns": sorted(changed)}).all() if changed else []
        return changed, rows

    # --- the rows (in threads: a write may wait for SQLite's lock) --------------------------------------
    def _watch(self, target: Target) -> None:
        until = time.time() + WATCH_FOR_S
        touch = update(table).where(table.c.processor_arn == target.arn).values(watched_until=until)
        try:
            with self.store.begin() as conn:
                if conn.execute(touch).rowcount:
                    return
            with self.store.begin() as conn:
                conn.execute(
                    insert(table).values(
                        processor_arn=target.arn, account_id=target.account_id, region=target.region,
                        watched_until=until, seq=0,
                    )
                )  # fmt: skip
        except IntegrityError:  # another server created it first
            with self.store.begin() as conn:
                conn.execute(touch)
        except SQLAlchemyError as exc:
            log.warning("console live view of %s: %s", target.arn, exc)

    def _touch(self, arns: list[str]) -> None:
        try:
            with self.store.begin() as conn:
                conn.execute(_TOUCH, {"arns": arns, "until": time.time() + WATCH_FOR_S})
        except SQLAlchemyError as exc:
            log.warning("console live views: %s", exc)

    # --- shutdown ---------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """From the server's shutdown (another thread): end every stream now."""
        loop = self.loop
        if loop is None:
            self.closed = True
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        self.closed = True
        for watched in self.watched.values():
            for subscriber in watched.subscribers:
                subscriber.close()


def hub_of(server: Server) -> Hub:
    hub = server.extras.get(EXTRA)
    if hub is None:
        hub = server.extras[EXTRA] = Hub(server)
    return hub


async def events(
    hub: Hub, targets: list[Target], still_signed_in: Callable[[], Who | None] | None = None
) -> AsyncIterator[bytes]:
    """The event stream of a page (or of a browser's pages): frames as they come, a comment when idle; ends
    when the client leaves (Starlette cancels it), the server shuts down, or ``still_signed_in`` (looked at
    with each keepalive and at least every ``RECHECK_S``) no longer names the targets' account and region."""
    scope = {(target.account_id, target.region) for target in targets}
    subscriber = hub.subscribe(targets)
    try:
        await hub.ready(subscriber)
        yield b"retry: 1000\n\n"
        checked = time.monotonic()
        while not subscriber.closed:
            event = await subscriber.next(KEEPALIVE_S)
            if subscriber.closed:
                break
            if still_signed_in is not None and (event is None or time.monotonic() - checked >= RECHECK_S):
                checked = time.monotonic()
                who = still_signed_in()
                if who is None or {(who.account_id, who.region)} != scope:
                    break
            yield event if event is not None else b": keepalive\n\n"
    finally:
        hub.unsubscribe(subscriber)
