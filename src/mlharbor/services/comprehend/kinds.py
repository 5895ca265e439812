"""Comprehend's kinds of long work, as the supervisor runs them (declarations only: the workers, and what they
import, load in the worker processes).

* ``training``: recognizer training (worker: ``training.train_worker``);
* ``detection``: entities detection jobs (worker: ``detection.detect_worker``);
* endpoints' serving units are ``endpoints.EndpointKind`` (worker: ``serving.serve_worker``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete

from mlharbor.context import Server
from mlharbor.runtime.supervisor import View
from mlharbor.runtime.work import WorkId
from mlharbor.services import attempts, tags
from mlharbor.services.attempts import Fence
from mlharbor.services.comprehend import jobs
from mlharbor.services.comprehend import recognizers as er
from mlharbor.store.tables import entities_detection_jobs as jobs_table
from mlharbor.store.tables import entity_recognizers as er_table

# A training or a job fails at the third crash of its own worker (server restarts are not counted).
TRAINING_MAX_ATTEMPTS = 3
DETECTION_MAX_ATTEMPTS = 3


TRAINING = "training"
TRAINING_TARGET = "mlharbor.services.comprehend.training:train_worker"


def training_work_id(row: Row[Any]) -> WorkId:
    return attempts.work_id(TRAINING, row.arn, Fence.of(row))


def training(server: Server) -> attempts.AttemptWork:
    """Training, as the supervisor runs it: SUBMITTED waits for one of this server's training slots;
    TRAINING has a worker; a crash is retried from the start, and the third ends IN_ERROR."""
    store, settings = server.store, server.settings

    def payload(row: Row[Any], fence: Fence) -> dict[str, Any]:
        version = row.version_name or "-"
        # Per incarnation and attempt: a late worker of a deleted recognizer never overwrites the model of
        # one created again under the same name.
        artifact = (
            f"s3://{settings.models_bucket}/comprehend/{row.account_id}/{row.region}/entity-recognizer/"
            f"{row.name}/{version}/{fence.incarnation}/attempt-{fence.attempt}/model.tar.gz"
        )
        return attempts.payload(settings, row.arn, fence, artifact_uri=artifact)

    def exhausted(row: Row[Any], reason: str) -> None:
        er.fail(store, row.arn, f"Training was interrupted {row.attempt + 1} times (last: {reason}).")

    def delete_recognizer(row: Row[Any]) -> None:
        if row.artifact_uri:
            server.blobs.delete(row.artifact_uri)
        with store.begin() as conn:
            tags.remove_all(conn, row.arn)
            conn.execute(delete(er_table).where(er_table.c.arn == row.arn, er_table.c.status == "DELETING"))

    return attempts.AttemptWork(
        name=TRAINING, table=er_table, target=TRAINING_TARGET, resources={"num_cpus": 1.0},
        queued=frozenset({"SUBMITTED"}), running=frozenset({"TRAINING"}),
        stopping={
            "STOP_REQUESTED": lambda row: er.finish_stop(store, row.arn), "DELETING": delete_recognizer,
        },
        policy=attempts.RetryPolicy(TRAINING_MAX_ATTEMPTS), payload=payload, exhausted=exhausted,
        restarted="Training restarted after an interruption", order=lambda t: (t.c.submitted_at,),
        slots=lambda: settings.training_slots,
    )  # fmt: skip


DETECTION = "detection"
DETECTION_TARGET = "mlharbor.services.comprehend.detection:detect_worker"


def detection_work_id(row: Row[Any]) -> WorkId:
    return attempts.work_id(DETECTION, row.arn, Fence.of(row))


def detection(server: Server) -> attempts.AttemptWork:
    """Entities detection jobs, as the supervisor runs them: SUBMITTED waits for one of this server's job
    slots and for the account's quota (AWS runs at most 10 per account and region; the others wait);
    a stop is seen by the worker in the database (the executor's stop would cut short the output it still
    writes); a crash is retried from the start, and the third ends FAILED."""
    store, settings = server.store, server.settings

    def admit(row: Row[Any], view: View, rows: list[Row[Any]], admitted: set[str]) -> bool:
        owner = (row.account_id, row.region)
        active = sum(
            1
            for other in rows
            if (other.account_id, other.region) == owner
            and (
                other.status == "IN_PROGRESS"
                or view.alive(detection_work_id(other))
                or str(detection_work_id(other)) in admitted
            )
        )
        return active < jobs.MAX_ACTIVE_PER_ACCOUNT

    def exhausted(row: Row[Any], reason: str) -> None:
        jobs.fail(store, row.arn, f"The job was interrupted {row.attempt + 1} times (last: {reason}).")

    return attempts.AttemptWork(
        name=DETECTION, table=jobs_table, target=DETECTION_TARGET, resources={"num_cpus": 1.0},
        queued=frozenset({"SUBMITTED"}), running=frozenset({"IN_PROGRESS"}),
        stopping={"STOP_REQUESTED": lambda row: jobs.finish_stop(store, row.arn)}, signal_stop=False,
        policy=attempts.RetryPolicy(DETECTION_MAX_ATTEMPTS),
        payload=lambda row, fence: attempts.payload(settings, row.arn, fence),
        exhausted=exhausted, restarted="The job restarted after an interruption",
        order=lambda t: (t.c.submitted_at, t.c.arn), slots=lambda: settings.detection_job_slots, admit=admit,
    )  # fmt: skip
