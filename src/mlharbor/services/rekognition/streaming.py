"""Stream processor sessions: the worker that analyses a video stream, and the reconcile pass.

Desired state lives in the database: StartStreamProcessor moves the row to STARTING with a new attempt
and submits a worker; StopStreamProcessor moves it to STOPPING and asks the worker to stop. The worker
opens the video source, checks the collection and the output, moves STARTING → RUNNING, then analyses
frames at the analysis rate until it is asked to stop; it sends what it still holds and only then moves
STOPPING → STOPPED, so nothing is written after STOPPED. Problems it can name (unknown video stream,
missing collection or output stream, unreadable video) end the session FAILED with AWS's StatusMessage.

The reconcile pass restarts a worker that died (crash, kill) with backoff, and FAILED after
``MAX_RESTARTS`` in one session; after a server restart it brings every STARTING/RUNNING processor back
(a new attempt each time: a superseded worker can no longer write), it finishes STOPPING rows that have
no worker, and it stops every stream worker that no row wants (a stop that was lost, a deleted processor),
so at most one worker acts for a processor: the one its (incarnation, attempt) fence names.

The sessions themselves: ``face_search.py`` and ``connected_home.py``; what they share: ``sessions.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Row, select

from mlharbor.context import Server
from mlharbor.runtime import WorkContext
from mlharbor.runtime.process_name import name_process
from mlharbor.services import attempts
from mlharbor.services.attempts import Fence, work_id
from mlharbor.services.rekognition import endpoints
from mlharbor.services.rekognition import sessions as ss
from mlharbor.services.rekognition.connected_home import ConnectedHomeSession
from mlharbor.services.rekognition.face_search import FaceSearchSession
from mlharbor.store.db import Store
from mlharbor.store.tables import stream_processors as table

log = logging.getLogger(__name__)

TARGET = "mlharbor.services.rekognition.streaming:stream_worker"
MARK = "#stream-"  # in every stream worker's work id, and in no other kind's
MAX_RESTARTS = 3  # worker deaths in one session before the processor is FAILED
RESTART_BACKOFF_S = (1.0, 4.0)  # before the first and the second restart


def stream_work_id(row: Row[Any]) -> str:
    """The work id of the row's session and attempt (a processor deleted and created again, or started
    again, never reuses the work id of a worker that may still be exiting)."""
    return _work_id(row, Fence.of(row))


def _work_id(row: Row[Any], fence: Fence) -> str:
    return work_id(f"{row.arn}{MARK}{row.session_id}", fence)


# --- The worker -----------------------------------------------------------------------------------------
PROCESS_PREFIX = "mlharbor-sp "  # a stream worker's process name: this, then its processor's name (cut)


def stream_worker(ctx: WorkContext, payload: dict[str, Any]) -> dict[str, Any]:
    name_process(PROCESS_PREFIX + payload["arn"].rsplit("/", 1)[-1])
    return attempts.run_worker(ctx, payload, _session)


def _session(ctx: WorkContext, store: Store, payload: dict[str, Any]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    # The searches' matrix products are small; OpenBLAS's extra threads would only spin between frames
    # (measured: a 5 frames/s processor used 0.70 cores with them, 0.20 without).
    threadpool_limits(1)
    arn, fence = payload["arn"], Fence.from_payload(payload)
    with store.read() as conn:
        row = conn.execute(select(table).where(table.c.arn == arn)).first()
    if not fence.holds(row) or row.status not in ss.ACTIVE:
        return {"stopped": False, "skipped": True}
    kind = FaceSearchSession if "FaceSearch" in row.spec["Settings"] else ConnectedHomeSession
    try:
        session = kind(ctx, store, row, payload)
    except ss.Unusable as exc:
        ss.fail(store, arn, fence, str(exc))
        return {"stopped": False}
    except ss.StoppedWhileStarting:
        ss.finish_stop(store, arn, fence)  # nothing was written: STOPPED at once
        return {"stopped": True}
    try:
        return session.run(ctx)
    except ss.Unusable as exc:  # e.g. the S3 destination refuses the results
        ss.fail(store, arn, fence, str(exc))
        return {"stopped": False}
    finally:
        session.close()


# --- The reconcile pass ---------------------------------------------------------------------------------
class StreamSupervisor:
    """Starts sessions, keeps every STARTING/RUNNING processor's worker alive, and finishes stops nobody
    else can. It is the only submitter of stream workers (StartStreamProcessor commits STARTING and
    wakes it), so a pass can never start a second worker for a session it has not seen yet."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.started_at = time.time()
        self._died_at: dict[str, float] = {}  # work id → when its death was first noticed

    def payload(self, row: Row[Any], fence: Fence) -> dict[str, Any]:
        settings = self.server.settings
        return attempts.payload(
            settings,
            row.arn,
            fence,
            **endpoints.payload(self.server, row.account_id),
            fps=settings.stream_analysis_fps,
            start_grace=settings.stream_start_grace_seconds,
        )

    def reconcile(self) -> None:
        store, executor = self.server.store, self.server.executor
        stable_s = self.server.settings.stream_stable_run_seconds
        with store.read() as conn:
            rows = conn.execute(
                select(table).where(table.c.status.in_(["STARTING", "RUNNING", "STOPPING"]))
            ).all()
        running = set(executor.running())
        wanted = {stream_work_id(row) for row in rows}
        for wid in running:
            if MARK in wid and wid not in wanted:
                # No row wants it: its stop was lost, or its processor was deleted (and perhaps created
                # again). Its fence already keeps it from writing; this makes it exit.
                executor.request_stop(wid)
        for row in rows:
            wid = stream_work_id(row)
            if wid in running:
                if row.status == "STOPPING":
                    executor.request_stop(wid)  # the stop may have come through another server
                continue
            status = executor.status(wid)
            if row.status == "STOPPING":
                ss.finish_stop(store, row.arn, Fence.of(row))
            elif status is None and row.updated_at >= self.started_at:
                self._submit(row, Fence.of(row))  # started by this server: first worker
            elif status is None:  # RUNNING when the server went down: a new attempt
                self._restart(row, "the server restarted", count=False)
            else:
                ended = status.ended_at or time.time()
                # Deaths count in a row: one after a long healthy run starts the count again.
                earlier = 0 if ended - (status.started_at or ended) >= stable_s else row.restarts
                if self._due(wid, ended, earlier):
                    self._restart(row, status.error or status.state, count=True, earlier=earlier)

    def _due(self, wid: str, ended_at: float, earlier: int) -> bool:
        died = self._died_at.setdefault(wid, ended_at)
        return time.time() >= died + RESTART_BACKOFF_S[min(earlier, len(RESTART_BACKOFF_S) - 1)]

    def _restart(self, row: Row[Any], reason: str, *, count: bool, earlier: int = 0) -> None:
        """A new attempt for the session; ``earlier``: the deaths just before this one (when counted)."""
        store = self.server.store
        self._died_at.pop(stream_work_id(row), None)
        if count and earlier + 1 >= MAX_RESTARTS:
            message = f"The stream processor stopped unexpectedly {MAX_RESTARTS} times (last: {reason})."
            ss.fail(store, row.arn, Fence.of(row), message)
            return
        log.warning("stream processor %s: worker gone (%s); restarting", row.arn, reason)
        values = {"restarts": earlier + 1} if count else {}
        if attempts.next_attempt(store, table, row, **values):
            self._submit(row, Fence(row.incarnation, row.attempt + 1))

    def _submit(self, row: Row[Any], fence: Fence) -> None:
        self.server.executor.submit(_work_id(row, fence), TARGET, self.payload(row, fence))
