"""The built-in Kinesis Video producers as the supervisor runs them: one puller per configured
``--video-stream NAME=URL`` (the worker is ``puller.pull_worker``; this declaration is all the server
imports), and the Kinesis Video stream each one feeds."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlharbor.runtime import WorkStatus
from mlharbor.runtime.supervisor import BaseKind, Mode, Outcome, View, Want, Where
from mlharbor.runtime.work import WorkId

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from mlharbor.context import Server

log = logging.getLogger("mlharbor.kinesisvideo.puller")

TARGET = "mlharbor.services.kinesisvideo.puller:pull_worker"
STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,256}")
DEFAULT_ROTATE_SECONDS = 30 * 60.0  # a PutMedia request is renewed this often
STABLE_RUN_S = 60.0  # a worker that ran this long before ending starts the restart backoff again


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait after the n-th failure in a row: ``first``, doubling, at most ``cap``."""

    first: float
    cap: float

    def delay(self, failures: int) -> float:
        return min(self.cap, self.first * 2.0 ** max(0, failures - 1))


RESTART_BACKOFF = Backoff(1.0, 30.0)


KIND = "video-pull"


def pull_work_id(account_id: str, region: str, name: str) -> WorkId:
    return WorkId(KIND, f"{account_id}:{region}:{name}", "puller")


# --- The declared kind ----------------------------------------------------------------------------------
@dataclass
class _Slot:
    """What the kind remembers of one configured stream's puller."""

    deaths: int = 0  # in a row
    noticed: float | None = None  # (supervisor clock) when the last end was noticed; None while one runs
    reported: str | None = None  # the last problem logged, so a lasting one is logged once


class PullKind(BaseKind):
    """One puller per configured video stream, on whichever server holds its lease (every server of a
    deployment may name the same streams), and the Kinesis Video stream it feeds."""

    name = KIND
    target = TARGET
    resources = {"num_cpus": 0.25}  # remuxing: a few percent of a core (transcoding: more, but rare)

    def __init__(self, server: Server) -> None:
        self.server = server
        self._closed = False
        self._slots: dict[str, _Slot] = {}

    @property
    def account_id(self) -> str:
        return str(self.server.settings.video_stream_account)

    @property
    def region(self) -> str:
        return str(self.server.settings.video_stream_region)

    def adoptable(self) -> bool:
        """It puts media into the server in its payload: see ``kinds.stream_sessions``."""
        return self.server.settings.worker_endpoint_url is not None

    def wanted(self, conn: Connection, view: View) -> list[Want]:
        if self._closed:
            return []  # shutting down: the supervisor stops this server's pullers
        wants = []
        for name, url in sorted(self.server.settings.video_streams.items()):
            slot = self._slots.setdefault(name, _Slot())
            work_id = pull_work_id(self.account_id, self.region, name)
            if view.where(work_id) is Where.ELSEWHERE:
                wants.append(Want(work_id, context=name))  # another server pulls it: leave it alone
                continue
            payload = self._prepare(name, url, slot)  # also creates the stream again if it was deleted
            if payload is not None or view.alive(work_id):
                wants.append(Want(work_id, Mode.RUN, (lambda p=payload: dict(p or {})), name))
        return wants

    def ended(self, want: Want, status: WorkStatus | None, now: float) -> Outcome:
        """Restarted after 1, 2, 4 ... 30 s for deaths in a row; one after a healthy run is a first one."""
        slot = self._slots[want.context]
        if slot.noticed is None:
            ran = 0.0
            if status is not None and status.started_at is not None and status.ended_at is not None:
                ran = status.ended_at - status.started_at
            slot.deaths = 1 if ran >= STABLE_RUN_S else slot.deaths + 1
            slot.noticed = now
            reason = "unknown" if status is None else (status.error or status.state)
            log.warning(
                "video stream %s: puller ended (%s); restarting in %.0f s",
                want.context, reason, RESTART_BACKOFF.delay(slot.deaths),
            )  # fmt: skip
        if now < slot.noticed + RESTART_BACKOFF.delay(slot.deaths):
            return Outcome.WAIT
        slot.noticed = None
        return Outcome.RESTART

    def stop(self, supervisor: Any, timeout: float = 5.0) -> None:
        """Stop this server's pullers and start no more (server shutdown). Waits up to ``timeout`` seconds
        for them to end, which they do within a fraction of a second, having ended their requests cleanly."""
        self._closed = True
        try:
            for work_id in supervisor.local(KIND):
                supervisor.executor.request_stop(work_id)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and supervisor.local(KIND):
                time.sleep(0.02)
        except Exception:  # a shutdown hook must not raise: the executor's shutdown stops them anyway
            log.exception("stopping the video stream pullers failed")

    def _prepare(self, name: str, url: str, slot: _Slot) -> dict[str, Any] | None:
        """The worker's payload, once the Kinesis Video stream exists; None (logged once) if it cannot."""
        if self.server.url is None:
            return None  # not serving yet (passes start once the socket is bound)
        try:
            if not STREAM_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a Kinesis Video stream name ([a-zA-Z0-9_.-], 1 to 256 characters)"
                )
            endpoint = self.server.own_endpoint(self.account_id)
            self._ensure_stream(name)
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
            if problem != slot.reported:
                slot.reported = problem
                log.error("video stream %s cannot be pulled into Kinesis Video: %s", name, problem)
            return None
        slot.reported = None
        settings = self.server.settings
        return {
            "stream_name": name,
            "url": url,
            "region": self.region,
            "endpoint": endpoint["endpoint"],
            "access_key": endpoint["access_key"],
            "secret_key": endpoint["secret_key"],
            "log_format": settings.log_format,
            "rotate_seconds": min(DEFAULT_ROTATE_SECONDS, 0.75 * settings.video_max_connection_seconds),
        }

    def _ensure_stream(self, name: str) -> None:
        """Create the stream (as CreateStream does, through the operations code) unless it exists."""
        from mlharbor.context import Call
        from mlharbor.errors import ResourceInUseException, ResourceNotFoundException
        from mlharbor.services.kinesisvideo import operations, streams

        with self.server.store.read() as conn:
            try:
                streams.find(conn, self.account_id, self.region, {"StreamName": name})
                return
            except ResourceNotFoundException:
                pass
        call = Call(
            server=self.server,
            service="kinesisvideo",
            operation="CreateStream",
            account_id=self.account_id,
            region=self.region,
            request_id=str(uuid.uuid4()),
        )
        retention = self.server.settings.video_stream_retention_hours
        try:
            operations.create_stream(
                call, {"StreamName": name, "MediaType": "video/h264", "DataRetentionInHours": retention}
            )
        except ResourceInUseException:
            return  # created meanwhile
        log.info(
            "created Kinesis Video stream %s (account %s, %s, %d h retention) for --video-stream %s",
            name,
            self.account_id,
            self.region,
            retention,
            name,
        )
