"""The durable job queue (`jobs`): submission, claims and leases, the end of a job, cancel, reaping, expiry.

Every state change of a job commits in ONE transaction with its money (through the keys repository: held at
submission, charged on success, released on failure or cancel) and its webhook message (through the outbox
repository), so a worker that dies at any point leaves either the old state or the new one, never a job charged
twice or a result without its charge. Workers claim with `FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite's single
writer makes the same UPDATE atomic), hold a lease they renew, and `reap` puts back jobs whose lease ran out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from idforge.server.db import wakeup
from idforge.server.db.database import Database
from idforge.server.db.keys_repo import KeysRepository
from idforge.server.db.outbox_repo import OutboxRepository
from idforge.server.db.schema import credit_reservations, jobs
from idforge.server.states import ACTIVE, CANCEL_FINISHED, TERMINAL, CancelAction, JobStatus

REAPER_LOCK = 0x1DF0_0002  # pg advisory lock id: one reaper at a time across the cluster


class QueueAtCapacity(Exception):
    """Submission refused: `active` jobs are queued or running, the capacity is reached."""

    def __init__(self, active: int) -> None:
        self.active = active
        super().__init__(f"{active} jobs queued or running")


@dataclass(frozen=True)
class NewJob:
    """A job to queue, as the submitting layers hand it down in one piece: the key `key_id` pays `cost` credits,
    `sync` marks a /v1 job (its waiter takes the result), a `webhook_url` gets its end (URLs under `base_url`)."""

    id: str
    method: str
    payload: str  # the JSON of the job's spec
    key_id: str
    cost: int
    sync: bool
    webhook_url: str | None = None
    base_url: str | None = None


@dataclass(frozen=True)
class Claimed:
    """A job a worker now holds the lease of."""

    id: str
    method: str
    key_id: str
    sync: bool
    cost: int
    attempts: int
    created: float
    payload: str


@dataclass(frozen=True)
class Lease:
    owned: bool  # False: the lease was lost (reaped, or the job ended elsewhere): drop the work
    cancel: bool  # cancel was requested: stop at the next step


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class JobFailure:
    """How a job failed: the HTTP status the client hears, a one-line message, the request field at fault."""

    status: int
    message: str
    field: str | None = None


def default_webhook_body(row: dict[str, Any]) -> dict[str, Any]:
    """The final status of a job, when the server does not give a richer body (the HTTP contract does)."""
    body = {"request_id": row["id"], "status": row["status"], "method": row["method"]}
    if row["status"] != JobStatus.COMPLETED:
        body |= {"error": row["error"], "field": row["error_field"]}
    return body


# What putting a job back in the queue writes (the reaper, and an embedded restart): no lease, no progress.
_REQUEUE_VALUES: dict[str, Any] = {
    "status": JobStatus.QUEUED,
    "lease_owner": None,
    "lease_expires": None,
    "started": None,
    "step": None,
    "total_steps": None,
}


def _claim_values(replica: str, now: float, lease_s: float) -> dict[str, Any]:
    """What claiming a job writes (one job or several): the lease, the replica, one more attempt, fresh progress."""
    return {
        "status": JobStatus.PROCESSING,
        "started": now,
        "replica": replica,
        "lease_owner": replica,
        "lease_expires": now + lease_s,
        "attempts": jobs.c.attempts + 1,
        "step": 0,
        "total_steps": None,
    }


_CLAIMED_COLUMNS = (
    jobs.c.id,
    jobs.c.method,
    jobs.c.key_id,
    jobs.c.sync,
    jobs.c.cost,
    jobs.c.attempts,
    jobs.c.created,
    jobs.c.payload,
)


def _claimed(row: Any) -> Claimed:
    return Claimed(
        row.id,
        row.method,
        row.key_id,
        bool(row.sync),
        int(row.cost),
        int(row.attempts),
        float(row.created),
        row.payload or "",
    )


class JobsRepository:
    """The `jobs` table; credits go through `credits`, webhook messages through `outbox`, in the same
    transaction."""

    def __init__(
        self,
        db: Database,
        credits: KeysRepository,
        outbox: OutboxRepository,
        webhook_body: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.db = db
        self.credits = credits
        self.outbox = outbox
        self.webhook_body = webhook_body or default_webhook_body

    # -- submission and reading ------------------------------------------------------------------------------------
    def submit(
        self, job: NewJob, *, capacity: int | None = None, conn: Connection | None = None
    ) -> tuple[int, int]:
        """Hold the credits and queue the job in one transaction; returns (queue position, balance after).

        Raises QueueAtCapacity (with `capacity` jobs queued or running) or NotEnoughCredits with nothing kept."""
        with self.db.transaction(conn) as c:
            if capacity is not None:
                active = c.execute(
                    sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status.in_(ACTIVE))
                ).scalar_one()
                if active >= capacity:
                    raise QueueAtCapacity(int(active))
            after = self.credits.reserve(job.key_id, job.cost, job.id, conn=c)
            c.execute(
                sa.insert(jobs).values(
                    id=job.id,
                    method=job.method,
                    key_id=job.key_id,
                    sync=int(job.sync),
                    status=JobStatus.QUEUED,
                    cost=job.cost,
                    payload=job.payload,
                    created=time.time(),
                    webhook_url=job.webhook_url,
                    base_url=job.base_url,
                )
            )
            position = self._position(c, job.id)
            self.db.notify(c, wakeup.QUEUED, job.id)
        return position or 1, after

    def job(self, job_id: str, *, conn: Connection | None = None) -> dict[str, Any] | None:
        with self.db.read(conn) as c:
            row = c.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return dict(row._mapping) if row is not None else None

    @staticmethod
    def _position(conn: Connection, job_id: str) -> int | None:
        mine = (
            sa.select(jobs.c.seq)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED)
            .scalar_subquery()
        )
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.status == JobStatus.QUEUED, jobs.c.seq <= mine)
        ).scalar()
        return int(count) if count else None

    def position(self, job_id: str, *, conn: Connection | None = None) -> int | None:
        """1 for the next job to run; None when the job is not queued."""
        with self.db.read(conn) as c:
            return self._position(c, job_id)

    def counts(self, *, conn: Connection | None = None) -> dict[str, int]:
        with self.db.read(conn) as c:
            rows = c.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        return {status: int(n) for status, n in rows}

    def active_count(self, *, conn: Connection | None = None) -> int:
        with self.db.read(conn) as c:
            return int(
                c.execute(
                    sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status.in_(ACTIVE))
                ).scalar_one()
            )

    def take_result(self, job_id: str, *, conn: Connection | None = None) -> str | None:
        """A /v1 waiter's result, removed as it is read (nobody else can ask for it)."""
        with self.db.transaction(conn) as c:
            result = c.execute(sa.select(jobs.c.result).where(jobs.c.id == job_id)).scalar()
            c.execute(sa.update(jobs).where(jobs.c.id == job_id).values(result=None))
        return result

    # -- workers ---------------------------------------------------------------------------------------------------
    def claim(self, replica: str, lease_s: float, *, conn: Connection | None = None) -> Claimed | None:
        """Take the oldest queued job and its lease; None when the queue is empty."""
        now = time.time()
        oldest = (
            sa.select(jobs.c.id)
            .where(jobs.c.status == JobStatus.QUEUED)
            .order_by(jobs.c.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self.db.transaction(conn) as c:
            row = c.execute(
                sa.update(jobs)
                .where(jobs.c.id == oldest, jobs.c.status == JobStatus.QUEUED)
                .values(**_claim_values(replica, now, lease_s))
                .returning(*_CLAIMED_COLUMNS)
            ).first()
        return _claimed(row) if row is not None else None

    def claim_many(
        self,
        replica: str,
        lease_s: float,
        limit: int,
        batch_key: Callable[[str, str], Any],
        window: int = 32,
        *,
        conn: Connection | None = None,
    ) -> list[Claimed]:
        """Take the oldest queued job and up to `limit - 1` younger ones that can share its denoising pass.

        `batch_key(method, payload)` says which jobs can run together (None: this one runs alone). Only the
        oldest `window` queued jobs are looked at, so the head of the queue is always served first; jobs skipped
        for a different key stay queued in their order. Rows are locked with SKIP LOCKED on PostgreSQL (another
        worker looking at the same window takes other jobs), and the UPDATE re-checks QUEUED on both backends,
        so no job is claimed twice."""
        if limit <= 1:
            one = self.claim(replica, lease_s, conn=conn)
            return [one] if one is not None else []
        now = time.time()
        with self.db.transaction(conn) as c:
            rows = c.execute(
                sa.select(jobs.c.id, jobs.c.method, jobs.c.payload)
                .where(jobs.c.status == JobStatus.QUEUED)
                .order_by(jobs.c.seq)
                .limit(window)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            head_key = batch_key(rows[0].method, rows[0].payload or "")
            chosen = [rows[0].id]
            if head_key is not None:
                for row in rows[1:]:
                    if len(chosen) >= limit:
                        break
                    if row.method == rows[0].method and batch_key(row.method, row.payload or "") == head_key:
                        chosen.append(row.id)
            claimed = c.execute(
                sa.update(jobs)
                .where(jobs.c.id.in_(chosen), jobs.c.status == JobStatus.QUEUED)
                .values(**_claim_values(replica, now, lease_s))
                .returning(*_CLAIMED_COLUMNS)
            ).all()
        order = {job_id: index for index, job_id in enumerate(chosen)}
        return sorted((_claimed(row) for row in claimed), key=lambda job: order[job.id])

    def renew(
        self,
        job_id: str,
        replica: str,
        lease_s: float,
        step: int | None = None,
        total: int | None = None,
        *,
        conn: Connection | None = None,
    ) -> Lease:
        """Extend the lease (and record step progress); says whether it is still ours and if cancel was asked."""
        values: dict[str, Any] = {"lease_expires": time.time() + lease_s}
        if step is not None:
            values |= {"step": step, "total_steps": total}
        with self.db.transaction(conn) as c:
            row = c.execute(
                sa.update(jobs)
                .where(
                    jobs.c.id == job_id, jobs.c.lease_owner == replica, jobs.c.status == JobStatus.PROCESSING
                )
                .values(**values)
                .returning(jobs.c.cancel_requested)
            ).first()
        return Lease(owned=row is not None, cancel=bool(row is not None and row[0]))

    # -- the end of a job ------------------------------------------------------------------------------------------
    def _end(
        self,
        conn: Connection,
        job_id: str,
        replica: str | None,
        status: JobStatus,
        values: dict[str, Any],
        *,
        charge: bool = True,
        unless_canceled: bool = False,
    ) -> bool:
        """Move a running job (held by `replica`, or any holder when None) to a final state, settling its credits:
        charged when it COMPLETED and `charge` (a /v1 job is charged by its waiter, on delivery), else released."""
        condition = [jobs.c.id == job_id, jobs.c.status == JobStatus.PROCESSING]
        if replica is not None:
            condition.append(jobs.c.lease_owner == replica)
        if unless_canceled:
            condition.append(jobs.c.cancel_requested == 0)
        changed = conn.execute(
            sa.update(jobs)
            .where(*condition)
            .values(
                status=status,
                finished=time.time(),
                payload=None,
                lease_owner=None,
                lease_expires=None,
                **values,
            )
        ).rowcount
        if not changed:
            return False
        if status != JobStatus.COMPLETED:
            self.credits.settle(job_id, charge=False, conn=conn)
        elif charge:
            self.credits.settle(job_id, charge=True, conn=conn)
        self._ended(conn, job_id)
        return True

    def _end_queued(self, conn: Connection, job_id: str, status: JobStatus, values: dict[str, Any]) -> bool:
        changed = conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED)
            .values(status=status, finished=time.time(), payload=None, **values)
        ).rowcount
        if not changed:
            return False
        self.credits.settle(job_id, charge=False, conn=conn)
        self._ended(conn, job_id)
        return True

    def _ended(self, conn: Connection, job_id: str) -> None:
        """The job reached its final state in this transaction: queue its webhook and wake its waiter."""
        row = dict(conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()._mapping)
        if row["webhook_url"]:
            body = json.dumps(self.webhook_body(row), separators=(",", ":"), default=str)
            self.outbox.enqueue(job_id, row["key_id"], row["webhook_url"], body, conn=conn)
        self.db.notify(conn, wakeup.ENDED, job_id)

    def complete(
        self,
        job_id: str,
        replica: str,
        result: str,
        *,
        charge: bool = True,
        metrics: dict[str, float] | None = None,
        conn: Connection | None = None,
    ) -> JobStatus | None:
        """Store the result (and charge, unless the waiter charges on delivery), atomically. Returns the final
        status: COMPLETED, or CANCELED when a cancel arrived after the last step (released, not charged); None
        when the lease was lost (someone else owns the job now: nothing changed)."""
        values = {"result": result, "metrics": json.dumps(metrics) if metrics else None}
        with self.db.transaction(conn) as c:
            if self._end(
                c, job_id, replica, JobStatus.COMPLETED, values, charge=charge, unless_canceled=True
            ):
                return JobStatus.COMPLETED
            canceled = {"error": "canceled while running (after the last step)", "error_status": 499}
            if self._end(c, job_id, replica, JobStatus.CANCELED, canceled):
                return JobStatus.CANCELED
            return None

    def fail(
        self, job_id: str, replica: str | None, failure: JobFailure, *, conn: Connection | None = None
    ) -> bool:
        """The job failed: record why and release its credits, atomically."""
        values = {"error": failure.message, "error_status": failure.status, "error_field": failure.field}
        with self.db.transaction(conn) as c:
            if self._end(c, job_id, replica, JobStatus.FAILED, values):
                return True
            return self._end_queued(c, job_id, JobStatus.FAILED, values)

    def canceled(
        self,
        job_id: str,
        replica: str,
        message: str = "canceled while running",
        *,
        conn: Connection | None = None,
    ) -> bool:
        """The worker stopped the job at a step because cancel was asked: record it and release the credits."""
        with self.db.transaction(conn) as c:
            return self._end(c, job_id, replica, JobStatus.CANCELED, {"error": message, "error_status": 499})

    def cancel(
        self,
        job_id: str,
        key_id: str | None = None,
        reason: str = "canceled by the client",
        *,
        conn: Connection | None = None,
    ) -> str | None:
        """Cancel for a client: REMOVED (was queued; credits back), STOPPING (running: its worker stops at the next
        step), CANCEL_FINISHED ("finished": already ended), None (no such job for this key)."""
        with self.db.transaction(conn) as c:
            query = sa.select(jobs.c.status).where(jobs.c.id == job_id)
            if key_id is not None:
                query = query.where(jobs.c.key_id == key_id)
            status = c.execute(query.with_for_update()).scalar()
            if status is None:
                return None
            if status == JobStatus.QUEUED:
                self._end_queued(c, job_id, JobStatus.CANCELED, {"error": reason, "error_status": 499})
                return CancelAction.REMOVED
            if status == JobStatus.PROCESSING:
                c.execute(sa.update(jobs).where(jobs.c.id == job_id).values(cancel_requested=1))
                self.db.notify(c, wakeup.CANCEL, job_id)
                return CancelAction.STOPPING
            return CANCEL_FINISHED

    def discard_undelivered(self, job_id: str, reason: str, *, conn: Connection | None = None) -> bool:
        """A /v1 job COMPLETED but its client left before taking the image: CANCELED, its hold released."""
        with self.db.transaction(conn) as c:
            changed = c.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.COMPLETED, jobs.c.sync == 1)
                .values(status=JobStatus.CANCELED, result=None, error=reason, error_status=499)
            ).rowcount
            if changed:
                self.credits.settle(job_id, charge=False, conn=c)
            return bool(changed)

    # -- housekeeping ----------------------------------------------------------------------------------------------
    def reap(self, max_attempts: int = 3, *, conn: Connection | None = None) -> ReapReport:
        """Jobs whose lease ran out (their worker died): queued again, or failed and refunded after
        `max_attempts` attempts. One reaper at a time (an advisory lock on PostgreSQL, the writer lock on SQLite)."""
        report = ReapReport()
        now = time.time()
        with self.db.transaction(conn) as c:
            if (
                self.db.postgres
                and not c.execute(
                    sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": REAPER_LOCK}
                ).scalar()
            ):
                return report
            expired = c.execute(
                sa.select(jobs.c.id, jobs.c.attempts, jobs.c.cancel_requested)
                .where(jobs.c.status == JobStatus.PROCESSING, jobs.c.lease_expires < now)
                .with_for_update(skip_locked=True)
            ).all()
            for row in expired:
                if row.cancel_requested:
                    self._end(c, row.id, None, JobStatus.CANCELED, {"error": "canceled", "error_status": 499})
                    report.canceled.append(row.id)
                elif row.attempts >= max_attempts:
                    message = f"the job's worker stopped {row.attempts} times before finishing it; giving up"
                    self._end(c, row.id, None, JobStatus.FAILED, {"error": message, "error_status": 500})
                    report.failed.append(row.id)
                else:
                    c.execute(sa.update(jobs).where(jobs.c.id == row.id).values(**_REQUEUE_VALUES))
                    self.db.notify(c, wakeup.QUEUED, row.id)
                    report.requeued.append(row.id)
        return report

    def recover_embedded(self, *, conn: Connection | None = None) -> tuple[int, int]:
        """Single-process start: no other worker can hold a lease, so running jobs are queued again at once, and
        /v1 jobs (their client went with the old process) are failed and refunded. Returns (requeued, failed)."""
        failure = JobFailure(503, "the server restarted before this request ran")
        requeued = failed = 0
        with self.db.transaction(conn) as c:
            rows = c.execute(
                sa.select(jobs.c.id, jobs.c.sync, jobs.c.status).where(jobs.c.status.in_(ACTIVE))
            ).all()
            for row in rows:
                values = {"error": failure.message, "error_status": failure.status}
                if row.sync:
                    ended = self._end(c, row.id, None, JobStatus.FAILED, values) or self._end_queued(
                        c, row.id, JobStatus.FAILED, values
                    )
                    failed += int(ended)
                elif row.status == JobStatus.PROCESSING:
                    c.execute(sa.update(jobs).where(jobs.c.id == row.id).values(**_REQUEUE_VALUES))
                    requeued += 1
            # holds whose job already ended: a 0.1 crash between two transactions, or a /v1 image nobody took
            stray = c.execute(
                sa.select(credit_reservations.c.ref, jobs.c.status, jobs.c.sync)
                .join(jobs, jobs.c.id == credit_reservations.c.ref, isouter=True)
                .where(sa.or_(jobs.c.status.in_(TERMINAL), jobs.c.status.is_(None)))
            ).all()
            for ref, status, sync in stray:
                self.credits.settle(ref, charge=status == JobStatus.COMPLETED and not sync, conn=c)
        return requeued, failed

    def expire(self, finished_before: float, *, conn: Connection | None = None) -> int:
        """Drop results and inputs of jobs that ended before `finished_before`; the row stays (expired=1), so an
        expired id gets a clear answer instead of "unknown"."""
        with self.db.transaction(conn) as c:
            return c.execute(
                sa.update(jobs)
                .where(jobs.c.expired == 0, jobs.c.finished < finished_before, jobs.c.status.in_(TERMINAL))
                .values(result=None, payload=None, expired=1)
            ).rowcount

    def release_undelivered(self, finished_before: float, *, conn: Connection | None = None) -> list[str]:
        """/v1 jobs that COMPLETED before `finished_before` but whose waiter never took the image (it died): their
        hold goes back. Their waiter would have charged them on delivery."""
        released = []
        with self.db.transaction(conn) as c:
            rows = (
                c.execute(
                    sa.select(credit_reservations.c.ref)
                    .join(jobs, jobs.c.id == credit_reservations.c.ref)
                    .where(
                        jobs.c.status == JobStatus.COMPLETED,
                        jobs.c.sync == 1,
                        jobs.c.finished < finished_before,
                    )
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for ref in rows:
                if self.credits.settle(ref, charge=False, conn=c):
                    released.append(ref)
        return released
