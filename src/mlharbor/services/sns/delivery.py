"""Durable HTTP/S delivery: the outbox rows Publish (and Subscribe, Unsubscribe) write, and their sender.

The operation that acknowledges a message writes its ``sns_messages`` row and one ``sns_deliveries`` row per
subscription in its own transaction, already claimed by this server, and hands them to ``Deliverer.dispatch``
after the commit: a pool thread sends at once (no poll between Publish and the subscriber). A failed attempt
is retried per the effective delivery policy: immediate retries in the same thread, later ones by making the
row due again, which the reconcile pass (every second, on every server) claims. Claiming moves ``due_at`` to
the end of a lease and sets ``claim``; every later write names the claim, so a server that lost its lease
(it stalled, or died and came back) changes nothing. A server that dies leaves its claimed rows to be claimed
again when their lease ends: each delivery is sent at least once, like AWS's.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import urllib3
from sqlalchemy import Connection, and_, delete, exists, insert, select, update

from mlharbor.context import Server
from mlharbor.services.sns import messages, policy, subscriptions
from mlharbor.services.sns.signing import Signer
from mlharbor.store.tables import sns_deliveries as deliveries
from mlharbor.store.tables import sns_messages
from mlharbor.store.tables import sns_subscriptions as subs

log = logging.getLogger("mlharbor.sns")

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"
USER_AGENT = "Amazon Simple Notification Service Agent"
TIMEOUT = 15.0  # an endpoint has 15 s to answer
# A claim lasts long enough for a queued job to start (REFRESH_AFTER) and take its whole timeout; a job that
# waited longer first renews its claim, or learns it was taken over.
LEASE = 30.0
REFRESH_AFTER = 5.0
WORKERS = 16
BACKLOG = 4 * WORKERS  # claimed jobs one server holds at most (the reconcile pass claims no more)
PURGE_EVERY = 60.0
MAX_ANSWER = 64 * 1024  # what is read of an endpoint's answer before the connection is dropped


@dataclass(frozen=True, slots=True)
class Job:
    """One delivery as a sender needs it."""

    delivery_id: int
    claim: str
    claimed_at: float
    attempts: int
    kind: str
    message_id: str
    topic_arn: str
    subscription_arn: str
    endpoint: str
    raw: bool
    policy: dict[str, Any]
    message: str
    subject: str | None
    attributes: dict[str, Any] | None
    token: str | None
    timestamp: str
    signature_version: str
    base_url: str


def delivery_policy(topic_policy: str | None, subscription_policy: str | None) -> dict[str, Any]:
    """The part of the effective policy a delivery keeps: retries and the Content-Type."""
    effective = policy.subscription_effective(topic_policy, subscription_policy)
    return {
        "retry": effective["healthyRetryPolicy"],
        "contentType": effective["requestPolicy"].get("headerContentType", policy.DEFAULT_CONTENT_TYPE),
    }


def enqueue(
    conn: Connection,
    *,
    account_id: str,
    region: str,
    kind: str,
    topic_arn: str,
    topic_policy: str | None,
    signature_version: str,
    base_url: str,
    targets: Iterable[Any],
    message: str,
    subject: str | None = None,
    structure: str | None = None,
    attributes: dict[str, Any] | None = None,
    token: str | None = None,
) -> tuple[str, list[Job]]:
    """Write a message and its deliveries (one per subscription row in ``targets``) in the caller's
    transaction, claimed by the caller, who dispatches the jobs after the commit. Returns the MessageId."""
    now = time.time()
    message_id = str(uuid.uuid4())
    stamp = messages.timestamp(now)
    claim = str(uuid.uuid4())
    rows = [
        {
            "message_id": message_id,
            "subscription_arn": target.arn,
            "endpoint": target.endpoint,
            "raw": kind == NOTIFICATION and target.attributes.get("RawMessageDelivery") == "true",
            "policy": delivery_policy(topic_policy, target.attributes.get("DeliveryPolicy") or None),
            "attempts": 0,
            "due_at": now + LEASE,
            "claim": claim,
            "created_at": now,
        }
        for target in targets
    ]
    if not rows:
        return message_id, []
    conn.execute(
        insert(sns_messages).values(
            message_id=message_id, account_id=account_id, region=region, topic_arn=topic_arn, kind=kind,
            message=message, subject=subject, structure=structure, attributes=attributes, token=token,
            timestamp=stamp, signature_version=signature_version, base_url=base_url, created_at=now,
        )
    )  # fmt: skip
    conn.execute(insert(deliveries), rows)
    ids = dict(
        conn.execute(
            select(deliveries.c.subscription_arn, deliveries.c.id).where(deliveries.c.claim == claim)
        )
        .tuples()
        .all()
    )
    return message_id, [
        Job(
            delivery_id=ids[row["subscription_arn"]],
            claim=claim,
            claimed_at=now,
            attempts=0,
            kind=kind,
            message_id=message_id,
            topic_arn=topic_arn,
            subscription_arn=row["subscription_arn"],
            endpoint=row["endpoint"],
            raw=row["raw"],
            policy=row["policy"],
            message=messages.for_protocol(message, structure, _protocol(row["endpoint"])),
            subject=subject,
            attributes=attributes,
            token=token,
            timestamp=stamp,
            signature_version=signature_version,
            base_url=base_url,
        )  # fmt: skip
        for row in rows
    ]


def _protocol(endpoint: str) -> str:
    return endpoint.split(":", 1)[0].lower()


class Deliverer:
    """Sends this server's claimed deliveries from a thread pool; one per server process."""

    def __init__(self, server: Server, workers: int = WORKERS) -> None:
        self.store = server.store
        self.signer = Signer(server.store)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sns-delivery")
        self._http = urllib3.PoolManager(num_pools=64, maxsize=workers, retries=False)
        self._lock = threading.Lock()
        self._queued: dict[tuple[int, str], Job] = {}  # dispatched, not started
        self._running = 0
        self._closed = False
        self._purged_at = 0.0

    # --- Scheduling --------------------------------------------------------------------------------------
    def dispatch(self, jobs: Iterable[Job]) -> None:
        with self._lock:
            if self._closed:
                return  # the rows stay claimed until their lease ends; the next server sends them
            for job in jobs:
                self._queued[(job.delivery_id, job.claim)] = job
                self._pool.submit(self._run, job)

    def reconcile(self) -> None:
        """Claim due deliveries (retries, and what a stopped server left) and send them."""
        now = time.time()
        if now - self._purged_at > PURGE_EVERY:
            self._purged_at = now
            with self.store.begin() as conn:
                subscriptions.purge_expired(conn, now)
        with self._lock:
            room = BACKLOG - len(self._queued) - self._running
        if room <= 0 or self._closed:
            return
        self.dispatch(self._claim(now, room))

    def _claim(self, now: float, limit: int) -> list[Job]:
        with self.store.read() as conn:
            # Most passes find nothing due: a read, so an idle server never takes the write lock.
            if (
                conn.execute(select(deliveries.c.id).where(deliveries.c.due_at <= now).limit(1)).first()
                is None
            ):
                return []
        claim = str(uuid.uuid4())
        due = (
            select(deliveries.c.id)
            .where(deliveries.c.due_at <= now)
            .order_by(deliveries.c.due_at)
            .limit(limit)
            .scalar_subquery()
        )
        with self.store.begin() as conn:
            # The second due_at test matters on PostgreSQL: a row another server claimed meanwhile is re-read
            # after its lock is released, and no longer due.
            claimed = conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(due), deliveries.c.due_at <= now)
                .values(claim=claim, due_at=now + LEASE)
            ).rowcount
            if not claimed:
                return []
            rows = conn.execute(
                select(
                    deliveries.c.id,
                    deliveries.c.subscription_arn,
                    deliveries.c.endpoint,
                    deliveries.c.raw,
                    deliveries.c.policy,
                    deliveries.c.attempts,
                    sns_messages.c.message_id,
                    sns_messages.c.kind,
                    sns_messages.c.topic_arn,
                    sns_messages.c.message,
                    sns_messages.c.subject,
                    sns_messages.c.structure,
                    sns_messages.c.attributes,
                    sns_messages.c.token,
                    sns_messages.c.timestamp,
                    sns_messages.c.signature_version,
                    sns_messages.c.base_url,
                    subs.c.status,
                )  # fmt: skip
                .select_from(
                    deliveries.outerjoin(
                        sns_messages, sns_messages.c.message_id == deliveries.c.message_id
                    ).outerjoin(subs, subs.c.arn == deliveries.c.subscription_arn)
                )
                .where(deliveries.c.claim == claim)
            ).all()
        jobs = []
        for row in rows:
            wanted = row.kind == UNSUBSCRIBE_CONFIRMATION or (
                row.status == subscriptions.CONFIRMED
                if row.kind == NOTIFICATION
                else row.status in (subscriptions.PENDING, subscriptions.CONFIRMED)
            )
            job = Job(
                delivery_id=row.id, claim=claim, claimed_at=now, attempts=row.attempts, kind=row.kind or "",
                message_id=row.message_id or "", topic_arn=row.topic_arn or "",
                subscription_arn=row.subscription_arn, endpoint=row.endpoint, raw=row.raw, policy=row.policy,
                message=messages.for_protocol(row.message, row.structure, _protocol(row.endpoint))
                if row.message is not None else "",
                subject=row.subject, attributes=row.attributes, token=row.token,
                timestamp=row.timestamp or "",
                signature_version=row.signature_version or "1", base_url=row.base_url or "",
            )  # fmt: skip
            if row.message_id is None or not wanted:
                # Unsubscribed (or its topic deleted) since: AWS delivers nothing more to it.
                self._finish(job, "dropped: the subscription is gone")
            else:
                jobs.append(job)
        return jobs

    # --- Sending -----------------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        with self._lock:
            self._queued.pop((job.delivery_id, job.claim), None)
            self._running += 1
        try:
            self._attempts(job)
        except Exception:  # a store failure: the row is claimed again once its lease ends
            log.exception("SNS delivery %s of message %s failed", job.delivery_id, job.message_id)
        finally:
            with self._lock:
                self._running -= 1

    def _attempts(self, job: Job) -> None:
        if time.time() - job.claimed_at > REFRESH_AFTER and not self._renew(job):
            return  # its lease ran out while it waited, and another sender has it
        retry = job.policy["retry"]
        while not self._closed:
            outcome, final = self._send(job)
            if outcome is None:
                self._finish(job, None)
                return
            job = replace(job, attempts=job.attempts + 1)
            if final or job.attempts > retry["numRetries"]:
                self._finish(job, outcome)
                return
            wait = policy.delay(retry, job.attempts)
            if wait > 0:
                self._reschedule(job, wait, outcome)
                return
        self._reschedule(job, 0.0, "server stopping")

    def _send(self, job: Job) -> tuple[str | None, bool]:
        """One attempt: (None, _) delivered; (what went wrong, whether retrying is pointless) otherwise."""
        headers = {
            "x-amz-sns-message-type": job.kind,
            "x-amz-sns-message-id": job.message_id,
            "x-amz-sns-topic-arn": job.topic_arn,
            "Content-Type": job.policy.get("contentType", policy.DEFAULT_CONTENT_TYPE),
            "User-Agent": USER_AGENT,
        }
        if job.kind != SUBSCRIPTION_CONFIRMATION:
            headers["x-amz-sns-subscription-arn"] = job.subscription_arn
        if job.raw:
            headers["x-amz-sns-rawdelivery"] = "true"
            body = job.message.encode("utf-8")
        else:
            body = messages.encode(self._signed(job))
        try:
            response = self._http.request(
                "POST", job.endpoint, body=body, headers=headers, redirect=False, preload_content=False,
                timeout=urllib3.Timeout(total=TIMEOUT),
            )  # fmt: skip
        except urllib3.exceptions.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}", False
        try:
            response.read(MAX_ANSWER)
            if response.read(1):
                response.close()  # an endless answer: drop the connection rather than read it all
        except urllib3.exceptions.HTTPError:
            response.close()
        finally:
            response.release_conn()
        if 200 <= response.status < 300:
            return None, False
        # AWS retries server errors and timeouts; it treats a 4xx answer as the endpoint's final word.
        return f"HTTP {response.status}", response.status < 500

    def _signed(self, job: Job) -> dict[str, Any]:
        doc = messages.document(
            kind=job.kind, message_id=job.message_id, topic_arn=job.topic_arn,
            subscription_arn=job.subscription_arn, message=job.message, subject=job.subject,
            attributes=job.attributes, token=job.token, timestamp=job.timestamp,
            signature_version=job.signature_version, base_url=job.base_url,
            certificate_path=self.signer.certificate_path,
        )  # fmt: skip
        doc["Signature"] = self.signer.sign(doc, job.signature_version)
        return doc

    # --- Recording ---------------------------------------------------------------------------------------
    def _mine(self, job: Job) -> Any:
        return and_(deliveries.c.id == job.delivery_id, deliveries.c.claim == job.claim)

    def _renew(self, job: Job) -> bool:
        with self.store.begin() as conn:
            return bool(
                conn.execute(
                    update(deliveries).where(self._mine(job)).values(due_at=time.time() + LEASE)
                ).rowcount
            )

    def _reschedule(self, job: Job, wait: float, error: str) -> None:
        with self.store.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(self._mine(job))
                .values(attempts=job.attempts, due_at=time.time() + wait, claim=None, last_error=error[:2000])
            )

    def _finish(self, job: Job, error: str | None) -> None:
        if error is not None:
            log.warning(
                "SNS gave up delivering %s %s to %s after %d attempts: %s",
                job.kind, job.message_id, job.subscription_arn, job.attempts, error,
            )  # fmt: skip
        with self.store.begin() as conn:
            if conn.execute(delete(deliveries).where(self._mine(job))).rowcount:
                others = exists().where(deliveries.c.message_id == job.message_id)
                conn.execute(delete(sns_messages).where(sns_messages.c.message_id == job.message_id, ~others))

    def close(self) -> None:
        """Stop sending; hand back the claims of jobs that never started, so the next server sends them
        without waiting for their lease."""
        with self._lock:
            self._closed = True
            waiting = list(self._queued.values())
            self._queued.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            with self.store.begin() as conn:
                for job in waiting:
                    conn.execute(update(deliveries).where(self._mine(job)).values(claim=None, due_at=0.0))
        except Exception:  # noqa: BLE001 - shutting down: the leases expire anyway
            log.exception("could not hand back SNS deliveries")
        self._http.clear()
