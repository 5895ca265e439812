"""Stream processor sessions: the worker that analyses a video stream, and the reconcile pass.

Desired state lives in the database: StartStreamProcessor moves the row to STARTING with a new attempt
and submits a worker; StopStreamProcessor moves it to STOPPING and asks the worker to stop. The worker
opens the video source, checks the collection and the output, moves STARTING → RUNNING, then analyses
frames at the analysis rate until it is asked to stop; it sends what it still holds and only then moves
STOPPING → STOPPED, so nothing is written after STOPPED. Problems it can name (unknown video stream,
missing collection or output stream, unreadable video) end the session FAILED with AWS's StatusMessage.

The supervisor (``work`` declares the kind) restarts a worker that died (crash, kill) with backoff, and
FAILED after ``MAX_RESTARTS`` in one session; when the server that ran a session is gone it brings the
processor back on another (a new attempt each time: a superseded worker can no longer write), it finishes
STOPPING rows that have no worker, and it stops every stream worker that no row wants (a stop that was
lost, a deleted processor), so at most one worker acts for a processor: the one its (incarnation, attempt)
fence names.

The sessions themselves: ``face_search.py`` and ``connected_home.py``; what they share: ``sessions.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Row, select

from mlharbor.context import Server
from mlharbor.runtime import WorkContext
from mlharbor.runtime.process_name import name_process
from mlharbor.services import attempts
from mlharbor.services.attempts import Fence
from mlharbor.services.rekognition import endpoints, label_model
from mlharbor.services.rekognition import sessions as ss
from mlharbor.services.rekognition.connected_home import ConnectedHomeSession
from mlharbor.services.rekognition.face_search import FaceSearchSession
from mlharbor.store.db import Store
from mlharbor.store.tables import stream_processors as table

log = logging.getLogger(__name__)

TARGET = "mlharbor.services.rekognition.streaming:stream_worker"
KIND = "stream"
MAX_RESTARTS = 3  # worker deaths in one session before the processor is FAILED
RESTART_BACKOFF_S = (1.0, 4.0)  # before the first and the second restart


def stream_work_id(row: Row[Any]) -> str:
    """The work id of the row's session and attempt (a processor deleted and created again, or started
    again, never reuses the work id of a worker that may still be exiting)."""
    return str(attempts.work_id(KIND, row.arn, Fence.of(row), row.session_id))


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


# --- The declared kind (the supervisor runs it in the server) --------------------------------------------
def work(server: Server) -> attempts.AttemptWork:
    """Stream sessions, as the supervisor runs them: STARTING and RUNNING have a worker (StartStreamProcessor
    gives the row a new attempt and session, so a restarted processor never reuses a work id); STOPPING asks
    the worker to stop, and is finished as STOPPED when none runs. A worker that died is restarted after
    1 s, then 4 s; the third death in a row (a worker that ran ``stream_stable_run_seconds`` first is a
    first death again) makes the processor FAILED."""
    store, settings = server.store, server.settings

    def payload(row: Row[Any], fence: Fence) -> dict[str, Any]:
        model = None
        if "ConnectedHome" in row.spec["Settings"]:  # the worker may run elsewhere: the model goes with it
            model = label_model.publish(server.blobs, settings.data_dir / "models", settings.models_bucket)
        return attempts.payload(
            settings, row.arn, fence, **endpoints.payload(server, row.account_id),
            fps=settings.stream_analysis_fps, start_grace=settings.stream_start_grace_seconds,
            label_model=model,
        )  # fmt: skip

    def exhausted(row: Row[Any], reason: str) -> None:
        message = f"The stream processor stopped unexpectedly {MAX_RESTARTS} times (last: {reason})."
        ss.fail(store, row.arn, Fence.of(row), message)

    return attempts.AttemptWork(
        # A face search session takes ~0.3 core, a connected home one ~0.9: half a CPU each places them well.
        name=KIND, table=table, target=TARGET, resources={"num_cpus": 0.5},
        queued=frozenset(), running=frozenset({"STARTING", "RUNNING"}),
        stopping={"STOPPING": lambda row: ss.finish_stop(store, row.arn, Fence.of(row))},
        policy=attempts.RetryPolicy(
            MAX_RESTARTS, RESTART_BACKOFF_S, stable_run=lambda: settings.stream_stable_run_seconds,
            counter="restarts",
        ),
        payload=payload, exhausted=exhausted, session=lambda row: row.session_id,
    )  # fmt: skip
