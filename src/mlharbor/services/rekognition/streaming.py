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

from sqlalchemy import select

from mlharbor.runtime import WorkContext
from mlharbor.runtime.process_name import name_process
from mlharbor.services import attempts
from mlharbor.services.attempts import Fence
from mlharbor.services.rekognition import sessions as ss
from mlharbor.services.rekognition.connected_home import ConnectedHomeSession
from mlharbor.services.rekognition.face_search import FaceSearchSession
from mlharbor.store.db import Store
from mlharbor.store.tables import stream_processors as table

log = logging.getLogger(__name__)


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
