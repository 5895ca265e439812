"""Recognizer endpoints: the state table, queries, and the reconcile pass that keeps servers running.

An endpoint is served by ``min(units, endpoint_max_workers)`` worker processes (serving.py), all of
one *generation*. Every deployment gets a new generation: Create deploys generation G; Update deploys
G' next to the serving G (blue/green) and switches when all of G' report ready, so the endpoint
answers throughout an update, then the old workers are stopped. Worker ids name the endpoint's
incarnation and their generation, ``<endpoint-arn>#<incarnation>#gen-<G>#unit-<k>``, so the reconcile
pass can tell the generations apart, also after a restart: the database says which generation serves,
and the pass starts whatever is missing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, func, or_, select

from mlharbor.context import Server
from mlharbor.runtime.executor import WorkStatus
from mlharbor.services import tags
from mlharbor.services.comprehend import serving
from mlharbor.services.comprehend.listing import Listing
from mlharbor.store.tables import comprehend_endpoints as table
from mlharbor.store.tables import entity_recognizers
from mlharbor.store.transitions import machine, transition

log = logging.getLogger(__name__)

STATES = machine(
    "endpoint",
    initial="CREATING",
    table={
        "CREATING": ("IN_SERVICE", "FAILED", "DELETING"),
        "IN_SERVICE": ("UPDATING", "DELETING"),
        # A failed update goes back to IN_SERVICE on the old model (with a Message), or to FAILED when
        # nothing was being served (an update of a FAILED endpoint); see _failed.
        "UPDATING": ("IN_SERVICE", "FAILED", "DELETING"),
        "FAILED": ("UPDATING", "DELETING"),
        "DELETING": (),
    },
)
# States that count against the account's endpoint quota (everything until it is gone).
SERVING = frozenset({"IN_SERVICE", "UPDATING"})  # an old generation keeps answering during an update
UPDATABLE = frozenset({"IN_SERVICE", "FAILED"})
DELETABLE = frozenset({"IN_SERVICE", "FAILED"})
MARK = ":entity-recognizer-endpoint/"


# --- Queries --------------------------------------------------------------------------------------
_OWNER = (table.c.account_id == bindparam("account_id")) & (table.c.region == bindparam("region"))
_BY_ARN = select(table).where(_OWNER, table.c.arn == bindparam("arn"))
_BY_TOKEN = select(table).where(_OWNER, table.c.client_token == bindparam("token"))
_USAGE = select(func.count(), func.coalesce(func.sum(table.c.desired_units), 0)).where(_OWNER)
_USING_MODEL = select(table.c.arn).where(
    or_(table.c.model_arn == bindparam("model"), table.c.desired_model_arn == bindparam("model"))
)
LISTING = Listing(
    table,
    table.c.created_at,
    {
        "ModelArn": table.c.desired_model_arn == bindparam("ModelArn"),
        "Status": table.c.status == bindparam("Status"),
        "CreationTimeBefore": table.c.created_at < bindparam("CreationTimeBefore"),
        "CreationTimeAfter": table.c.created_at > bindparam("CreationTimeAfter"),
    },
)


def find_by_arn(conn: Connection, account_id: str, region: str, arn: str) -> Row[Any] | None:
    return conn.execute(_BY_ARN, {"account_id": account_id, "region": region, "arn": arn}).first()


def find_by_token(conn: Connection, account_id: str, region: str, token: str) -> Row[Any] | None:
    return conn.execute(_BY_TOKEN, {"account_id": account_id, "region": region, "token": token}).first()


def usage(conn: Connection, account_id: str, region: str) -> tuple[int, int]:
    """(endpoints, inference units) this account has in this region."""
    count, units = conn.execute(_USAGE, {"account_id": account_id, "region": region}).one()
    return int(count), int(units)


def using_model(conn: Connection, model_arn: str) -> bool:
    return conn.execute(_USING_MODEL, {"model": model_arn}).first() is not None


def describe(row: Row[Any]) -> dict[str, Any]:
    return {
        "EndpointArn": row.arn,
        "Status": row.status,
        "Message": row.message,
        # While CREATING nothing is served yet: AWS shows the requested model.
        "ModelArn": row.model_arn or row.desired_model_arn,
        "DesiredModelArn": row.desired_model_arn,
        "DesiredInferenceUnits": row.desired_units,
        "CurrentInferenceUnits": row.current_units,
        "CreationTime": row.created_at,
        "LastModifiedTime": row.updated_at,
        "DataAccessRoleArn": row.data_access_role_arn,
        "DesiredDataAccessRoleArn": row.desired_data_access_role_arn,
    }


def move(server: Server, row: Row[Any], target: str, **values: Any) -> bool:
    """One compare-and-set from the state ``row`` was read in."""
    with server.store.begin() as conn:
        return transition(
            conn, table, STATES, table.c.arn == row.arn, current=row.status, version=row.version,
            target=target, updated_at=round(time.time(), 3), **values,
        )  # fmt: skip


# --- Generations and workers ----------------------------------------------------------------------
def workers_for(settings: Any, units: int) -> int:
    return max(1, min(units, settings.endpoint_max_workers))


def worker_id(row: Row[Any], generation: int, unit: int) -> str:
    """A serving unit's work id: an endpoint deleted and created again under the same name (its
    generations start again) never adopts a worker of the old one that is still exiting."""
    return f"{row.arn}#{row.incarnation}#gen-{generation}#unit-{unit}"


def serving_generation(row: Row[Any]) -> tuple[int, int] | None:
    """(generation, units) that answers requests now, if any (an update of a FAILED endpoint has none)."""
    if row.status in SERVING and row.artifact_uri and row.current_units:
        return row.generation, row.current_units
    return None


def target_generation(row: Row[Any]) -> tuple[int, int] | None:
    """(generation, units) being deployed, if any. A deployment's generation is the row version it
    started at: unique for every Create or Update (also after a failed one), and stable across restarts."""
    if row.status in ("CREATING", "UPDATING"):
        return row.version, row.desired_units
    return None


def ready_addresses(server: Server, row: Row[Any]) -> list[str]:
    """Addresses of the serving generation's workers that said they are ready."""
    serving_now = serving_generation(row)
    if serving_now is None:
        return []
    generation, units = serving_now
    addresses = []
    for unit in range(workers_for(server.settings, units)):
        status = server.executor.status(worker_id(row, generation, unit))
        if status is not None and status.state == "running" and status.progress:
            address = status.progress.get("address")
            if address and status.progress.get("ready"):
                addresses.append(address)
    return addresses


def _artifact(server: Server, model_arn: str) -> str | None:
    with server.store.read() as conn:
        return conn.execute(
            select(entity_recognizers.c.artifact_uri).where(entity_recognizers.c.arn == model_arn)
        ).scalar()


# --- The reconcile pass ---------------------------------------------------------------------------
class EndpointSupervisor:
    def __init__(self, server: Server) -> None:
        self.server = server

    def _payload(self, artifact_uri: str) -> dict[str, Any]:
        settings = self.server.settings
        return {
            "artifact_uri": artifact_uri,
            "object_store": settings.object_store,
            "data_dir": str(settings.data_dir.resolve()),
            "log_format": settings.log_format,
        }

    def reconcile(self) -> None:
        executor = self.server.executor
        with self.server.store.read() as conn:
            rows = conn.execute(select(table)).all()
        running = [w for w in executor.running() if MARK in w]
        wanted: set[str] = set()
        for row in rows:
            if row.status == "DELETING":
                self._delete(row, running)
                continue
            serving_now = serving_generation(row)
            if serving_now is not None:
                wanted |= self._ensure(row, *serving_now, row.artifact_uri)
            target = target_generation(row)
            if target is not None:
                wanted |= self._deploy(row, *target)
        for work_id in running:
            if work_id not in wanted:
                executor.request_stop(work_id)  # an old generation, or a deleted endpoint's worker

    def _ensure(self, row: Row[Any], generation: int, units: int, artifact: str) -> set[str]:
        """Start the generation's workers that are not running; return their ids."""
        ids = {worker_id(row, generation, unit) for unit in range(workers_for(self.server.settings, units))}
        executor = self.server.executor
        for work_id in sorted(ids):
            status = executor.status(work_id)
            if status is None or status.finished:
                if status is not None:
                    log.warning("endpoint worker %s ended (%s); restarting it", work_id, status.error)
                executor.submit(work_id, serving.TARGET, self._payload(artifact))
        return ids

    def _deploy(self, row: Row[Any], generation: int, units: int) -> set[str]:
        executor = self.server.executor
        artifact = _artifact(self.server, row.desired_model_arn)
        ids = [worker_id(row, generation, unit) for unit in range(workers_for(self.server.settings, units))]
        failure = None if artifact else "the model's artifact is missing"
        statuses: list[WorkStatus | None] = [executor.status(w) for w in ids]
        for status in statuses:
            if status is not None and status.finished and failure is None:
                failure = status.error or f"a serving worker ended ({status.state})"
        if failure is not None:
            for work_id in ids:
                executor.request_stop(work_id)
            self._failed(row, failure)
            return set()
        assert artifact is not None
        for work_id, status in zip(ids, statuses, strict=True):
            if status is None:
                executor.submit(work_id, serving.TARGET, self._payload(artifact))
        if all(s is not None and s.state == "running" and (s.progress or {}).get("ready") for s in statuses):
            move(
                self.server, row, "IN_SERVICE", generation=generation, model_arn=row.desired_model_arn,
                current_units=row.desired_units, data_access_role_arn=row.desired_data_access_role_arn,
                artifact_uri=artifact, message=None,
            )  # fmt: skip
        return set(ids)

    def _failed(self, row: Row[Any], reason: str) -> None:
        log.warning("deploying endpoint %s failed: %s", row.arn, reason)
        if row.status == "CREATING" or serving_generation(row) is None:
            move(self.server, row, "FAILED", message=f"The endpoint could not start: {reason}")
            return
        # A failed update leaves the old model serving; the desired values go back to the current ones.
        move(
            self.server, row, "IN_SERVICE", message=f"The last update failed: {reason}",
            desired_model_arn=row.model_arn, desired_units=row.current_units,
            desired_data_access_role_arn=row.data_access_role_arn,
        )  # fmt: skip

    def _delete(self, row: Row[Any], running: list[str]) -> None:
        mine = [w for w in running if w.startswith(f"{row.arn}#")]
        for work_id in mine:
            self.server.executor.request_stop(work_id)
        if mine:
            return  # removed on a later pass, once its workers are gone
        with self.server.store.begin() as conn:
            tags.remove_all(conn, row.arn)
            conn.execute(delete(table).where(table.c.arn == row.arn, table.c.status == "DELETING"))
