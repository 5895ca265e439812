"""Rekognition's kind of long work, stream processor sessions, as the supervisor runs it (a declaration only:
the worker, ``streaming.stream_worker``, and what it imports load in the worker processes)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from mlharbor.context import Server
from mlharbor.services import attempts
from mlharbor.services.attempts import Fence
from mlharbor.services.rekognition import endpoints, label_model
from mlharbor.services.rekognition import sessions as ss
from mlharbor.store.tables import stream_processors as table

KIND = "stream"
TARGET = "mlharbor.services.rekognition.streaming:stream_worker"
MAX_RESTARTS = 3  # worker deaths in one session before the processor is FAILED
RESTART_BACKOFF_S = (1.0, 4.0)  # before the first and the second restart


def stream_work_id(row: Row[Any]) -> str:
    """The work id of the row's session and attempt (a processor deleted and created again, or started
    again, never reuses the work id of a worker that may still be exiting)."""
    return str(attempts.work_id(KIND, row.arn, Fence.of(row), row.session_id))


def stream_sessions(server: Server) -> attempts.AttemptWork:
    """Stream sessions, as the supervisor runs them: STARTING and RUNNING have a worker (StartStreamProcessor
    gives the row a new attempt and session, so a restarted processor never reuses a work id); STOPPING asks
    the worker to stop, and is finished as STOPPED when none runs. A worker that died is restarted after
    1 s, then 4 s; the third death in a row (a worker that ran ``stream_stable_run_seconds`` first is a
    first death again) makes the processor FAILED."""
    store, settings = server.store, server.settings

    def payload(row: Row[Any], fence: Fence) -> dict[str, Any]:
        # The built-in detectors' packages are installed with MLHarbor (``mlharbor models fetch``): in the
        # configured folder, else in the worker's own environment (None: a Ray node's venv may live at
        # another path). Conversions are cached in the data folder.
        configured = "model_packages_dir" in settings.model_fields_set
        engines: dict[str, Any] = {
            "model_packages_dir": str(settings.model_packages_dir.resolve()) if configured else None,
            "model_cache_dir": str(settings.model_cache_dir.resolve()),
            "face_detector": settings.face_detector,
            "face_descriptor": settings.face_descriptor,
            "person_detector": settings.person_detector,
        }
        if "ConnectedHome" in row.spec["Settings"]:  # the worker may run elsewhere: the model goes with it
            engines["label_model"] = label_model.publish(
                server.blobs, settings.data_dir / "models", settings.models_bucket
            )
        return attempts.payload(
            settings, row.arn, fence, **endpoints.payload(server, row.account_id),
            fps=settings.stream_analysis_fps, start_grace=settings.stream_start_grace_seconds, **engines,
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
        # It reads video from and writes records to the server in its payload: one that outlived its server
        # goes on only when that is every server's address (``worker_endpoint_url``).
        adoptable=lambda: settings.worker_endpoint_url is not None,
    )  # fmt: skip
