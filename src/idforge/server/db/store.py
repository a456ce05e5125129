"""`Store`: keys, credits, the durable job queue and the webhook outbox behind one interface, on SQLite or PostgreSQL.

The same SQLAlchemy Core statements serve both backends. Every state change of a job commits in ONE transaction
with its money (charge on success, release on failure or cancel) and its webhook delivery row, so a worker that
dies at any point leaves either the old state or the new one, never a job charged twice or a result without its
charge. Workers claim with `FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite's single writer makes the same UPDATE
atomic), hold a lease they renew, and `reap` puts back jobs whose lease ran out.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from idforge.errors import ParameterError
from idforge.server.db import ledger, wakeup
from idforge.server.db.connect import READ, Target, create_engine, default_target, parse_target
from idforge.server.db.migrations import upgrade
from idforge.server.db.schema import (
    CANCELED,
    COMPLETED,
    FAILED,
    PROCESSING,
    QUEUED,
    TERMINAL,
    api_keys,
    credit_ledger,
    credit_reservations,
    jobs,
    replicas,
    webhook_deliveries,
)
from idforge.server.store import TOKEN_PREFIX, KeyRecord, UnknownKey, hash_token, new_webhook_secret

REAPER_LOCK = 0x1DF0_0002  # pg advisory lock id: one reaper at a time across the cluster


class QueueAtCapacity(Exception):
    """Submission refused: `active` jobs are queued or running, the capacity is reached."""

    def __init__(self, active: int) -> None:
        self.active = active
        super().__init__(f"{active} jobs queued or running")


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
    if row["status"] != COMPLETED:
        body |= {"error": row["error"], "field": row["error_field"]}
    return body


class _Tx:
    """One writing transaction; `notify` queues a wake-up hint that goes out when it commits."""

    def __init__(self, conn: Connection, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres
        self.notes: list[tuple[str, str]] = []

    def execute(self, statement, parameters=None):
        return self.conn.execute(statement, parameters)

    def notify(self, channel: str, payload: str) -> None:
        if self.postgres:  # NOTIFY fires at commit, in every listening process (this one too)
            self.conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})
        else:
            self.notes.append((channel, payload))


# What putting a job back in the queue writes (the reaper, and an embedded restart): no lease, no progress.
_REQUEUE_VALUES: dict[str, Any] = {
    "status": QUEUED,
    "lease_owner": None,
    "lease_expires": None,
    "started": None,
    "step": None,
    "total_steps": None,
}


def _claim_values(replica: str, now: float, lease_s: float) -> dict[str, Any]:
    """What claiming a job writes (one job or several): the lease, the replica, one more attempt, fresh progress."""
    return {
        "status": PROCESSING,
        "started": now,
        "replica": replica,
        "lease_owner": replica,
        "lease_expires": now + lease_s,
        "attempts": jobs.c.attempts + 1,
        "step": 0,
        "total_steps": None,
    }


def _record(row: Any) -> KeyRecord:
    return KeyRecord(row.id, row.name, int(row.balance), int(row.spent), float(row.created), row.revoked)


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


class Store:
    """Open with `Store.open(path_or_url)`; thread-safe (a connection pool); `close()` when done."""

    def __init__(
        self, target: Target, webhook_body: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    ) -> None:
        self.target = target
        self.webhook_body = webhook_body or default_webhook_body
        self.backend = target.backend
        self.engine = create_engine(target)
        self.reader = self.engine.execution_options(**READ)
        upgrade(self.engine)
        if self.backend == "postgresql":
            conninfo = target.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.hub: wakeup.Hub = wakeup.PostgresHub(conninfo)
        else:
            self.hub = wakeup.local_hub(str(Path(target.url.database or "").resolve()))

    @classmethod
    def open(cls, value: str | Path | None = None, **options: Any) -> Store:
        """A path (SQLite) or postgresql:// URL; None means $IDFORGE_DB or ~/.idforge/idforge.db."""
        return cls(parse_target(value if value not in (None, "") else default_target()), **options)

    def close(self) -> None:
        if isinstance(self.hub, wakeup.PostgresHub):
            self.hub.close()
        self.engine.dispose()

    # -- plumbing ----------------------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        with self.engine.begin() as conn:
            tx = _Tx(conn, self.backend == "postgresql")
            yield tx
        for channel, payload in tx.notes:
            self.hub.deliver(channel, payload)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.reader.connect() as conn:
            yield conn

    # -- keys ------------------------------------------------------------------------------------------------------
    def create_key(self, credits: int, name: str = "") -> tuple[KeyRecord, str]:
        """A new key with `credits`; returns the record and the token (shown once, stored only hashed)."""
        if not isinstance(credits, int) or isinstance(credits, bool) or credits < 0:
            raise ParameterError("credits", f"{credits!r} must be a whole number >= 0")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key_id = "k_" + secrets.token_hex(6)
        with self._tx() as tx:
            tx.execute(
                sa.insert(api_keys).values(
                    id=key_id,
                    hash=hash_token(token),
                    name=name,
                    balance=0,
                    spent=0,
                    created=time.time(),
                    webhook_secret=new_webhook_secret(),
                )
            )
            ledger.credit(tx.conn, key_id, credits, "grant", f"grant:{key_id}")
        return self.get(key_id), token

    def authenticate(self, token: str) -> KeyRecord | None:
        """The active key for this token, or None (unknown or revoked)."""
        if not token:
            return None
        with self._read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.hash == hash_token(token))).first()
        if row is None or row.revoked is not None:
            return None
        return _record(row)

    def _find(self, conn: Connection, ref: str) -> Any:
        row = conn.execute(
            sa.select(api_keys).where(sa.or_(api_keys.c.id == ref, api_keys.c.hash == hash_token(ref)))
        ).first()
        if row is None:
            raise UnknownKey(ref if ref.startswith("k_") or len(ref) < 16 else ref[:8] + "...")
        return row

    def get(self, ref: str) -> KeyRecord:
        """A key by its id (k_...) or its token."""
        with self._read() as conn:
            return _record(self._find(conn, ref))

    def list_keys(self) -> list[KeyRecord]:
        with self._read() as conn:
            return [_record(r) for r in conn.execute(sa.select(api_keys).order_by(api_keys.c.created))]

    def topup(self, ref: str, credits: int, idempotency_key: str | None = None) -> KeyRecord:
        """Add credits; with an idempotency key, a repeated top-up adds them once."""
        if not isinstance(credits, int) or isinstance(credits, bool) or credits < 1:
            raise ParameterError("credits", f"{credits!r} must be a whole number >= 1")
        with self._tx() as tx:
            key_id = self._find(tx.conn, ref).id
            ledger.credit(tx.conn, key_id, credits, "topup", f"topup:{idempotency_key or uuid.uuid4().hex}")
        return self.get(key_id)

    def revoke(self, ref: str) -> KeyRecord:
        with self._tx() as tx:
            key_id = self._find(tx.conn, ref).id
            tx.execute(
                sa.update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(revoked=sa.func.coalesce(api_keys.c.revoked, time.time()))
            )
        return self.get(key_id)

    def webhook_secret(self, ref: str) -> str:
        """The key's signing secret (whsec_...), created for keys made before webhooks existed."""
        with self._tx() as tx:
            row = self._find(tx.conn, ref)
            if row.webhook_secret:
                return str(row.webhook_secret)
            secret = new_webhook_secret()
            tx.execute(sa.update(api_keys).where(api_keys.c.id == row.id).values(webhook_secret=secret))
            return secret

    # -- credits ---------------------------------------------------------------------------------------------------
    def balance(self, key_id: str) -> int:
        with self._read() as conn:
            return int(ledger.balance(conn, key_id) or 0)

    def reserve(self, key_id: str, amount: int, ref: str) -> int:
        """Hold `amount` for `ref` (idempotent); returns the balance after, or raises NotEnoughCredits."""
        with self._tx() as tx:
            return ledger.reserve(tx.conn, key_id, amount, ref)

    def commit(self, ref: str) -> bool:
        """Charge the hold of `ref`: True when this call charged it (once, whatever is retried)."""
        with self._tx() as tx:
            return ledger.settle(tx.conn, ref, charge=True)

    def release(self, ref: str) -> bool:
        """Give the hold of `ref` back: True when this call released it."""
        with self._tx() as tx:
            return ledger.settle(tx.conn, ref, charge=False)

    def held(self) -> dict[str, tuple[str, int]]:
        """Open holds: ref -> (key id, amount)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(credit_reservations)).all()
        return {r.ref: (r.key_id, int(r.amount)) for r in rows}

    def ledger_entries(self, key_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(credit_ledger).where(credit_ledger.c.key_id == key_id).order_by(credit_ledger.c.seq)
            )
            return [dict(r._mapping) for r in rows]

    def audit(self) -> list[str]:
        """Every disagreement between balances, the ledger, holds and job states (empty: all accounted for)."""
        problems: list[str] = []
        with self._read() as conn:
            sums = {
                r.key_id: (int(r.delta), int(r.spent))
                for r in conn.execute(
                    sa.select(
                        credit_ledger.c.key_id,
                        sa.func.sum(credit_ledger.c.delta).label("delta"),
                        sa.func.sum(credit_ledger.c.spent_delta).label("spent"),
                    ).group_by(credit_ledger.c.key_id)
                )
            }
            for key in conn.execute(sa.select(api_keys)):
                if sums.get(key.id, (0, 0)) != (key.balance, key.spent):
                    problems.append(
                        f"{key.id}: balance/spent {key.balance}/{key.spent} != ledger {sums.get(key.id)}"
                    )
            stray = conn.execute(
                sa.select(credit_reservations.c.ref, jobs.c.status)
                .join(jobs, jobs.c.id == credit_reservations.c.ref)
                .where(jobs.c.status.in_(TERMINAL))
            ).all()
            problems += [f"{r.ref}: {r.status} but its credits are still held" for r in stray]
            charges = conn.execute(
                sa.select(credit_ledger.c.job_id, sa.func.count())
                .where(credit_ledger.c.kind == "charge")
                .group_by(credit_ledger.c.job_id)
                .having(sa.func.count() > 1)
            ).all()
            problems += [f"{r[0]}: charged {r[1]} times" for r in charges]
        return problems

    # -- jobs: submission and reading -----------------------------------------------------------------------------
    def submit_job(
        self,
        job_id: str,
        method: str,
        payload: str,
        key_id: str,
        cost: int,
        *,
        sync: bool,
        capacity: int | None = None,
        webhook_url: str | None = None,
        base_url: str | None = None,
    ) -> tuple[int, int]:
        """Hold the credits and queue the job in one transaction; returns (queue position, balance after).

        Raises QueueAtCapacity or NotEnoughCredits with nothing kept."""
        with self._tx() as tx:
            if capacity is not None:
                active = tx.execute(
                    sa.select(sa.func.count())
                    .select_from(jobs)
                    .where(jobs.c.status.in_((QUEUED, PROCESSING)))
                ).scalar()
                if active >= capacity:
                    raise QueueAtCapacity(int(active))
            after = ledger.reserve(tx.conn, key_id, cost, job_id)
            tx.execute(
                sa.insert(jobs).values(
                    id=job_id,
                    method=method,
                    key_id=key_id,
                    sync=int(sync),
                    status=QUEUED,
                    cost=cost,
                    payload=payload,
                    created=time.time(),
                    webhook_url=webhook_url,
                    base_url=base_url,
                )
            )
            position = self._position(tx.conn, job_id)
            tx.notify(wakeup.QUEUED, job_id)
        return position or 1, after

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return dict(row._mapping) if row is not None else None

    @staticmethod
    def _position(conn: Connection, job_id: str) -> int | None:
        mine = sa.select(jobs.c.seq).where(jobs.c.id == job_id, jobs.c.status == QUEUED).scalar_subquery()
        count = conn.execute(
            sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == QUEUED, jobs.c.seq <= mine)
        ).scalar()
        return int(count) if count else None

    def position(self, job_id: str) -> int | None:
        """1 for the next job to run; None when the job is not queued."""
        with self._read() as conn:
            return self._position(conn, job_id)

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)).all()
        return {status: int(n) for status, n in rows}

    def active_count(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(jobs)
                    .where(jobs.c.status.in_((QUEUED, PROCESSING)))
                ).scalar()
            )

    def take_result(self, job_id: str) -> str | None:
        """A /v1 waiter's result, removed as it is read (nobody else can ask for it)."""
        with self._tx() as tx:
            result = tx.execute(sa.select(jobs.c.result).where(jobs.c.id == job_id)).scalar()
            tx.execute(sa.update(jobs).where(jobs.c.id == job_id).values(result=None))
        return result

    # -- jobs: workers ---------------------------------------------------------------------------------------------
    def claim(self, replica: str, lease_s: float) -> Claimed | None:
        """Take the oldest queued job and its lease; None when the queue is empty."""
        now = time.time()
        oldest = (
            sa.select(jobs.c.id)
            .where(jobs.c.status == QUEUED)
            .order_by(jobs.c.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self._tx() as tx:
            row = tx.execute(
                sa.update(jobs)
                .where(jobs.c.id == oldest, jobs.c.status == QUEUED)
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
    ) -> list[Claimed]:
        """Take the oldest queued job and up to `limit - 1` younger ones that can share its denoising pass.

        `batch_key(method, payload)` says which jobs can run together (None: this one runs alone). Only the
        oldest `window` queued jobs are looked at, so the head of the queue is always served first; jobs skipped
        for a different key stay queued in their order. Rows are locked with SKIP LOCKED on PostgreSQL (another
        worker looking at the same window takes other jobs), and the UPDATE re-checks QUEUED on both backends,
        so no job is claimed twice."""
        if limit <= 1:
            one = self.claim(replica, lease_s)
            return [one] if one is not None else []
        now = time.time()
        with self._tx() as tx:
            rows = tx.execute(
                sa.select(jobs.c.id, jobs.c.method, jobs.c.payload)
                .where(jobs.c.status == QUEUED)
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
            claimed = tx.execute(
                sa.update(jobs)
                .where(jobs.c.id.in_(chosen), jobs.c.status == QUEUED)
                .values(**_claim_values(replica, now, lease_s))
                .returning(*_CLAIMED_COLUMNS)
            ).all()
        order = {job_id: index for index, job_id in enumerate(chosen)}
        return sorted((_claimed(row) for row in claimed), key=lambda job: order[job.id])

    def renew(
        self, job_id: str, replica: str, lease_s: float, step: int | None = None, total: int | None = None
    ) -> Lease:
        """Extend the lease (and record step progress); says whether it is still ours and if cancel was asked."""
        values: dict[str, Any] = {"lease_expires": time.time() + lease_s}
        if step is not None:
            values |= {"step": step, "total_steps": total}
        with self._tx() as tx:
            row = tx.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.lease_owner == replica, jobs.c.status == PROCESSING)
                .values(**values)
                .returning(jobs.c.cancel_requested)
            ).first()
        return Lease(owned=row is not None, cancel=bool(row is not None and row[0]))

    def _end(
        self,
        tx: _Tx,
        job_id: str,
        replica: str | None,
        status: str,
        values: dict[str, Any],
        *,
        charge: bool = True,
        unless_canceled: bool = False,
    ) -> bool:
        """Move a running job (held by `replica`, or any holder when None) to a final state, settling its credits:
        charged when it COMPLETED and `charge` (a /v1 job is charged by its waiter, on delivery), else released."""
        condition = [jobs.c.id == job_id, jobs.c.status == PROCESSING]
        if replica is not None:
            condition.append(jobs.c.lease_owner == replica)
        if unless_canceled:
            condition.append(jobs.c.cancel_requested == 0)
        changed = tx.execute(
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
        if status != COMPLETED:
            ledger.settle(tx.conn, job_id, charge=False)
        elif charge:
            ledger.settle(tx.conn, job_id, charge=True)
        self._ended(tx, job_id)
        return True

    def _ended(self, tx: _Tx, job_id: str) -> None:
        """The job reached its final state in this transaction: queue its webhook and wake its waiter."""
        row = dict(tx.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()._mapping)
        if row["webhook_url"]:
            now = time.time()
            body = json.dumps(self.webhook_body(row), separators=(",", ":"), default=str)
            tx.execute(
                sa.insert(webhook_deliveries).values(
                    id="msg_" + uuid.uuid4().hex,
                    job_id=job_id,
                    key_id=row["key_id"],
                    url=row["webhook_url"],
                    body=body,
                    status="pending",
                    attempts=0,
                    created=now,
                    next_attempt=now,
                )
            )
        tx.notify(wakeup.ENDED, job_id)

    def complete(
        self,
        job_id: str,
        replica: str,
        result: str,
        *,
        charge: bool = True,
        metrics: dict[str, float] | None = None,
    ) -> str | None:
        """Store the result (and charge, unless the waiter charges on delivery), atomically. Returns the final
        status: COMPLETED, or CANCELED when a cancel arrived after the last step (released, not charged); None
        when the lease was lost (someone else owns the job now: nothing changed)."""
        values = {"result": result, "metrics": json.dumps(metrics) if metrics else None}
        with self._tx() as tx:
            if self._end(tx, job_id, replica, COMPLETED, values, charge=charge, unless_canceled=True):
                return COMPLETED
            canceled = {"error": "canceled while running (after the last step)", "error_status": 499}
            if self._end(tx, job_id, replica, CANCELED, canceled):
                return CANCELED
            return None

    def fail(self, job_id: str, replica: str | None, failure: JobFailure) -> bool:
        """The job failed: record why and release its credits, atomically."""
        values = {"error": failure.message, "error_status": failure.status, "error_field": failure.field}
        with self._tx() as tx:
            if self._end(tx, job_id, replica, FAILED, values):
                return True
            return self._end_queued(tx, job_id, FAILED, values)

    def canceled(self, job_id: str, replica: str, message: str = "canceled while running") -> bool:
        """The worker stopped the job at a step because cancel was asked: record it and release the credits."""
        with self._tx() as tx:
            return self._end(tx, job_id, replica, CANCELED, {"error": message, "error_status": 499})

    def _end_queued(self, tx: _Tx, job_id: str, status: str, values: dict[str, Any]) -> bool:
        changed = tx.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == QUEUED)
            .values(status=status, finished=time.time(), payload=None, **values)
        ).rowcount
        if not changed:
            return False
        ledger.settle(tx.conn, job_id, charge=False)
        self._ended(tx, job_id)
        return True

    def cancel(
        self, job_id: str, key_id: str | None = None, reason: str = "canceled by the client"
    ) -> str | None:
        """Cancel for a client: "removed" (was queued; credits back), "stopping" (running: its worker stops at
        the next step), "finished" (already ended), None (no such job for this key)."""
        with self._tx() as tx:
            query = sa.select(jobs.c.status).where(jobs.c.id == job_id)
            if key_id is not None:
                query = query.where(jobs.c.key_id == key_id)
            status = tx.execute(query.with_for_update()).scalar()
            if status is None:
                return None
            if status == QUEUED:
                self._end_queued(tx, job_id, CANCELED, {"error": reason, "error_status": 499})
                return "removed"
            if status == PROCESSING:
                tx.execute(sa.update(jobs).where(jobs.c.id == job_id).values(cancel_requested=1))
                tx.notify(wakeup.CANCEL, job_id)
                return "stopping"
            return "finished"

    def discard_undelivered(self, job_id: str, reason: str) -> bool:
        """A /v1 job COMPLETED but its client left before taking the image: CANCELED, its hold released."""
        with self._tx() as tx:
            changed = tx.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == COMPLETED, jobs.c.sync == 1)
                .values(status=CANCELED, result=None, error=reason, error_status=499)
            ).rowcount
            if changed:
                ledger.settle(tx.conn, job_id, charge=False)
            return bool(changed)

    def reap(self, max_attempts: int = 3) -> ReapReport:
        """Jobs whose lease ran out (their worker died): queued again, or failed and refunded after
        `max_attempts` attempts. One reaper at a time (an advisory lock on PostgreSQL, the writer lock on SQLite)."""
        report = ReapReport()
        now = time.time()
        with self._tx() as tx:
            if (
                tx.postgres
                and not tx.execute(
                    sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": REAPER_LOCK}
                ).scalar()
            ):
                return report
            expired = tx.execute(
                sa.select(jobs.c.id, jobs.c.attempts, jobs.c.cancel_requested)
                .where(jobs.c.status == PROCESSING, jobs.c.lease_expires < now)
                .with_for_update(skip_locked=True)
            ).all()
            for row in expired:
                if row.cancel_requested:
                    self._end(tx, row.id, None, CANCELED, {"error": "canceled", "error_status": 499})
                    report.canceled.append(row.id)
                elif row.attempts >= max_attempts:
                    message = f"the job's worker stopped {row.attempts} times before finishing it; giving up"
                    self._end(tx, row.id, None, FAILED, {"error": message, "error_status": 500})
                    report.failed.append(row.id)
                else:
                    tx.execute(sa.update(jobs).where(jobs.c.id == row.id).values(**_REQUEUE_VALUES))
                    tx.notify(wakeup.QUEUED, row.id)
                    report.requeued.append(row.id)
        return report

    def recover_embedded(self) -> tuple[int, int]:
        """Single-process start: no other worker can hold a lease, so running jobs are queued again at once, and
        /v1 jobs (their client went with the old process) are failed and refunded. Returns (requeued, failed)."""
        failure = JobFailure(503, "the server restarted before this request ran")
        requeued = failed = 0
        with self._tx() as tx:
            rows = tx.execute(
                sa.select(jobs.c.id, jobs.c.sync, jobs.c.status).where(
                    jobs.c.status.in_((QUEUED, PROCESSING))
                )
            ).all()
            for row in rows:
                values = {"error": failure.message, "error_status": failure.status}
                if row.sync:
                    ended = self._end(tx, row.id, None, FAILED, values) or self._end_queued(
                        tx, row.id, FAILED, values
                    )
                    failed += int(ended)
                elif row.status == PROCESSING:
                    tx.execute(sa.update(jobs).where(jobs.c.id == row.id).values(**_REQUEUE_VALUES))
                    requeued += 1
            # holds whose job already ended: a 0.1 crash between two transactions, or a /v1 image nobody took
            stray = tx.execute(
                sa.select(credit_reservations.c.ref, jobs.c.status, jobs.c.sync)
                .join(jobs, jobs.c.id == credit_reservations.c.ref, isouter=True)
                .where(sa.or_(jobs.c.status.in_(TERMINAL), jobs.c.status.is_(None)))
            ).all()
            for ref, status, sync in stray:
                ledger.settle(tx.conn, ref, charge=status == COMPLETED and not sync)
        return requeued, failed

    def expire(self, finished_before: float) -> int:
        """Drop results and inputs of jobs that ended before `finished_before`; the row stays (expired=1), so an
        expired id gets a clear answer instead of "unknown"."""
        with self._tx() as tx:
            return tx.execute(
                sa.update(jobs)
                .where(jobs.c.expired == 0, jobs.c.finished < finished_before, jobs.c.status.in_(TERMINAL))
                .values(result=None, payload=None, expired=1)
            ).rowcount

    def release_undelivered(self, finished_before: float) -> list[str]:
        """/v1 jobs that COMPLETED before `finished_before` but whose waiter never took the image (it died): their
        hold goes back. Their waiter would have charged them on delivery."""
        released = []
        with self._tx() as tx:
            rows = (
                tx.execute(
                    sa.select(credit_reservations.c.ref)
                    .join(jobs, jobs.c.id == credit_reservations.c.ref)
                    .where(jobs.c.status == COMPLETED, jobs.c.sync == 1, jobs.c.finished < finished_before)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            for ref in rows:
                if ledger.settle(tx.conn, ref, charge=False):
                    released.append(ref)
        return released

    # -- webhook outbox --------------------------------------------------------------------------------------------
    def claim_due(self, now: float, lease: float, limit: int = 16) -> list[dict[str, Any]]:
        """Pending messages due now; their next attempt moves `lease` seconds ahead, so no other sender takes them
        meanwhile and a sender that dies mid-send only delays the retry (same message id)."""
        with self._tx() as tx:
            due = (
                tx.execute(
                    sa.select(webhook_deliveries.c.id)
                    .where(webhook_deliveries.c.status == "pending", webhook_deliveries.c.next_attempt <= now)
                    .order_by(webhook_deliveries.c.next_attempt)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            if not due:
                return []
            rows = tx.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id.in_(due))
                .values(next_attempt=now + lease, claimed=now)
                .returning(*webhook_deliveries.c)
            ).all()
        return sorted((dict(r._mapping) for r in rows), key=lambda r: r["created"])

    def record_success(self, message_id: str, http_status: int) -> None:
        now = time.time()
        with self._tx() as tx:
            tx.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id == message_id)
                .values(
                    status="delivered",
                    attempts=webhook_deliveries.c.attempts + 1,
                    last_attempt=now,
                    last_status=http_status,
                    last_error=None,
                    delivered=now,
                    claimed=None,
                )
            )

    def record_failure(
        self, message_id: str, http_status: int | None, error: str, retry_at: float | None
    ) -> None:
        """A failed attempt: retry at `retry_at`, or give up when it is None."""
        now = time.time()
        values: dict[str, Any] = {
            "attempts": webhook_deliveries.c.attempts + 1,
            "last_attempt": now,
            "last_status": http_status,
            "last_error": error[:500],
            "claimed": None,
        }
        values |= {"next_attempt": retry_at} if retry_at is not None else {"status": "failed"}
        with self._tx() as tx:
            tx.execute(
                sa.update(webhook_deliveries).where(webhook_deliveries.c.id == message_id).values(**values)
            )

    def reclaim(self) -> int:
        """At start-up: messages claimed by a sender that died mid-send are due again now (same id)."""
        with self._tx() as tx:
            return tx.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.status == "pending", webhook_deliveries.c.claimed.is_not(None))
                .values(next_attempt=time.time(), claimed=None)
            ).rowcount

    def next_due(self) -> float | None:
        with self._read() as conn:
            value = conn.execute(
                sa.select(sa.func.min(webhook_deliveries.c.next_attempt)).where(
                    webhook_deliveries.c.status == "pending"
                )
            ).scalar()
        return None if value is None else float(value)

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(webhook_deliveries)
                .where(webhook_deliveries.c.job_id == job_id)
                .order_by(webhook_deliveries.c.created)
            )
            return [dict(r._mapping) for r in rows]

    # -- replicas ----------------------------------------------------------------------------------------------
    def heartbeat(self, replica: str, **values: Any) -> None:
        """Insert or update this worker's row (device, state, current job, counters, histograms)."""
        now = time.time()
        with self._tx() as tx:
            updated = tx.execute(
                sa.update(replicas).where(replicas.c.id == replica).values(heartbeat=now, **values)
            ).rowcount
            if not updated:
                tx.execute(sa.insert(replicas).values(id=replica, started=now, heartbeat=now, **values))

    def replicas(self, seen_within_s: float = 3600.0) -> list[dict[str, Any]]:
        """Workers heard from recently, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(replicas)
                .where(replicas.c.heartbeat >= time.time() - seen_within_s)
                .order_by(replicas.c.started)
            )
            return [dict(r._mapping) for r in rows]

    def credits_charged(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(credit_ledger.c.spent_delta), 0)).where(
                        credit_ledger.c.kind == "charge"
                    )
                ).scalar()
            )
