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
from mlharbor.runtime.supervisor import BaseKind, Mode, Outcome, View, Want
from mlharbor.runtime.work import WorkId
from mlharbor.services import tags
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
KIND = "endpoint"
ADDRESS_CACHE_SECONDS = 1.0  # how long DetectEntities trusts the serving addresses it read


def workers_for(settings: Any, units: int) -> int:
    return max(1, min(units, settings.endpoint_max_workers))


def worker_id(row: Row[Any], generation: int, unit: int) -> WorkId:
    """A serving unit's work id: an endpoint deleted and created again under the same name (its
    generations start again) never adopts a worker of the old one that is still exiting."""
    return WorkId(KIND, row.arn, f"{row.incarnation}/gen-{generation}/unit-{unit}")


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


def _ready(progress: dict[str, Any] | None) -> str | None:
    if progress and progress.get("ready") and progress.get("address"):
        return str(progress["address"])
    return None


class Addresses:
    """Where the serving workers of each endpoint listen, read from their leases (any server may run them)
    and kept for ``ADDRESS_CACHE_SECONDS``, so DetectEntities does not read them for every request."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._cache: dict[tuple[str, str, int], tuple[float, list[str]]] = {}

    def ready(self, row: Row[Any]) -> list[str]:
        serving_now = serving_generation(row)
        if serving_now is None:
            return []
        generation, units = serving_now
        key = (row.arn, row.incarnation, generation)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        ids = [str(worker_id(row, generation, u)) for u in range(workers_for(self.server.settings, units))]
        with self.server.store.read() as conn:
            progress = self.server.leases.progress(conn, ids)
        found = [a for a in (_ready(progress.get(w)) for w in ids) if a]
        if found:
            self._cache[key] = (now + ADDRESS_CACHE_SECONDS, found)
        return found

    def forget(self, row: Row[Any]) -> None:
        """A worker went away: read the addresses afresh next time."""
        for key in [k for k in self._cache if k[0] == row.arn]:
            del self._cache[key]


# --- The declared kind (the supervisor runs it in the server) --------------------------------------------
class EndpointKind(BaseKind):
    """Serving units: the serving generation's units should run (restarted when one ends); a deployment's
    units are started next to them, the endpoint moves to IN_SERVICE on them once every one reported ready
    (in its lease, so whichever server runs it), and fails if one ends first. Units nobody wants (an old
    generation, a deleted endpoint) are stopped by the supervisor; a DELETING endpoint is removed once none
    of its units is left anywhere."""

    name = KIND
    target = "mlharbor.services.comprehend.serving:serve_worker"
    resources = {"num_cpus": 1.0}

    def __init__(self, server: Server) -> None:
        self.server = server

    def _payload(self, artifact_uri: str, units: int) -> Any:
        settings = self.server.settings
        return lambda: {
            "artifact_uri": artifact_uri,
            "object_store": settings.object_store,
            "data_dir": str(settings.data_dir.resolve()),
            "log_format": settings.log_format,
            "limits": settings.inference_unit_limits,
            "units": units,
            "workers": workers_for(settings, units),
        }

    def wanted(self, conn: Connection, view: View) -> list[Want]:
        wants: list[Want] = []
        leased = {WorkId.parse(w).key for w in view.leases if WorkId.parse(w) is not None}  # type: ignore[union-attr]
        for row in conn.execute(select(table)).all():
            if row.status == "DELETING":
                if row.arn not in leased:
                    self._delete(row)
                continue
            serving_now = serving_generation(row)
            if serving_now is not None:
                wants += self._units(row, *serving_now, row.artifact_uri, deploying=False)
            target = target_generation(row)
            if target is not None:
                wants += self._deploy(conn, row, *target, view)
        return wants

    def _units(
        self, row: Row[Any], generation: int, units: int, artifact: str, *, deploying: bool
    ) -> list[Want]:
        payload = self._payload(artifact, units)
        count = workers_for(self.server.settings, units)
        return [
            Want(worker_id(row, generation, unit), Mode.RUN, payload, (row, deploying))
            for unit in range(count)
        ]

    def _deploy(self, conn: Connection, row: Row[Any], generation: int, units: int, view: View) -> list[Want]:
        artifact = conn.execute(
            select(entity_recognizers.c.artifact_uri).where(entity_recognizers.c.arn == row.desired_model_arn)
        ).scalar()
        if not artifact:
            self._failed(row, "the model's artifact is missing")
            return []
        wants = self._units(row, generation, units, artifact, deploying=True)
        if all(view.alive(w.work_id) and _ready(view.progress(w.work_id)) for w in wants):
            move(
                self.server, row, "IN_SERVICE", generation=generation, model_arn=row.desired_model_arn,
                current_units=row.desired_units, data_access_role_arn=row.desired_data_access_role_arn,
                artifact_uri=artifact, message=None,
            )  # fmt: skip
        return wants

    def ended(self, want: Want, status: WorkStatus | None, now: float) -> Outcome:
        row, deploying = want.context
        reason = (
            "its worker was lost"
            if status is None
            else (status.error or f"a serving worker ended ({status.state})")
        )
        if deploying:
            self._failed(row, reason)  # its other units are no longer wanted: the supervisor stops them
            return Outcome.RELEASE
        log.warning("endpoint worker %s ended (%s); restarting it", want.work_id, reason)
        return Outcome.RESTART

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

    def _delete(self, row: Row[Any]) -> None:
        with self.server.store.begin() as conn:
            tags.remove_all(conn, row.arn)
            conn.execute(delete(table).where(table.c.arn == row.arn, table.c.status == "DELETING"))
