"""`Store`: keys, credits, the durable job queue, the webhook outbox and the replicas, on SQLite or PostgreSQL.

A thin facade over four repositories that share one engine and can share one transaction (db/database.py):
`KeysRepository` (keys, credit ledger, holds), `JobsRepository` (the queue, leases, the end of a job, reaping),
`OutboxRepository` (webhook messages) and `ReplicasRepository` (workers' heartbeats). The same SQLAlchemy Core
statements serve both backends. Ending a job settles its credits and queues its webhook in ONE transaction (the
jobs repository passes its connection to the other two); `Store.transaction()` gives callers the same: every
repository method takes `conn=` to run inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from idforge.server.db import wakeup
from idforge.server.db.connect import Target, create_engine, default_target, parse_target
from idforge.server.db.database import Database
from idforge.server.db.jobs_repo import JobsRepository, NewJob
from idforge.server.db.keys_repo import KeysRepository
from idforge.server.db.migrations import upgrade
from idforge.server.db.outbox_repo import OutboxRepository
from idforge.server.db.replicas_repo import ReplicasRepository
from idforge.server.store import KeyRecord


class Store:
    """Open with `Store.open(path_or_url)`; thread-safe (a connection pool); `close()` when done.

    The repositories are `keys_repo`, `jobs_repo`, `outbox_repo` and `replicas_repo`. The methods below are what
    the HTTP side and the CLI ask of them, each in its own transaction; the worker's side of the queue (claim,
    renew, complete, fail, reap, heartbeat) and the webhook dispatcher's (the outbox) are the repositories' own
    methods, called there (`store.jobs_repo.claim(...)`), so no signature is declared twice."""

    def __init__(
        self, target: Target, webhook_body: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    ) -> None:
        self.target = target
        self.backend = target.backend
        self.engine = create_engine(target)
        upgrade(self.engine)
        if self.backend == "postgresql":
            conninfo = target.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.hub: wakeup.Hub = wakeup.PostgresHub(conninfo)
        else:
            self.hub = wakeup.local_hub(str(Path(target.url.database or "").resolve()))
        self.db = Database(self.engine, self.hub)
        self.reader = self.db.reader
        self.keys_repo = KeysRepository(self.db)
        self.outbox_repo = OutboxRepository(self.db)
        self.replicas_repo = ReplicasRepository(self.db)
        self.jobs_repo = JobsRepository(self.db, self.keys_repo, self.outbox_repo, webhook_body)

    @classmethod
    def open(cls, value: str | Path | None = None, **options: Any) -> Store:
        """A path (SQLite) or postgresql:// URL; None means $IDFORGE_DB or ~/.idforge/idforge.db."""
        return cls(parse_target(value if value not in (None, "") else default_target()), **options)

    def close(self) -> None:
        if isinstance(self.hub, wakeup.PostgresHub):
            self.hub.close()
        self.engine.dispose()

    @property
    def webhook_body(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Builds a job's webhook body from its final row (the server sets the v2 status body)."""
        return self.jobs_repo.webhook_body

    @webhook_body.setter
    def webhook_body(self, build: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.jobs_repo.webhook_body = build

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One writing transaction for several repository calls (pass it as their `conn=`): all of them commit
        when the block ends, or none (an exception rolls everything back and drops the wake-up hints)."""
        with self.db.transaction() as conn:
            yield conn

    # -- keys ------------------------------------------------------------------------------------------------------
    def create_key(self, credits: int, name: str = "") -> tuple[KeyRecord, str]:
        """A new key with `credits`; returns the record and the token (shown once, stored only hashed)."""
        return self.keys_repo.create_key(credits, name)

    def authenticate(self, token: str) -> KeyRecord | None:
        """The active key for this token, or None (unknown or revoked)."""
        return self.keys_repo.authenticate(token)

    def get(self, ref: str) -> KeyRecord:
        """A key by its id (k_...) or its token."""
        return self.keys_repo.get(ref)

    def list_keys(self) -> list[KeyRecord]:
        return self.keys_repo.list_keys()

    def topup(self, ref: str, credits: int, idempotency_key: str | None = None) -> KeyRecord:
        """Add credits; with an idempotency key, a repeated top-up adds them once."""
        return self.keys_repo.topup(ref, credits, idempotency_key)

    def revoke(self, ref: str) -> KeyRecord:
        return self.keys_repo.revoke(ref)

    def webhook_secret(self, ref: str) -> str:
        """The key's signing secret (whsec_...), created for keys made before webhooks existed."""
        return self.keys_repo.webhook_secret(ref)

    # -- credits ---------------------------------------------------------------------------------------------------
    def balance(self, key_id: str) -> int:
        return self.keys_repo.balance(key_id)

    def reserve(self, key_id: str, amount: int, ref: str) -> int:
        """Hold `amount` for `ref` (idempotent); returns the balance after, or raises NotEnoughCredits."""
        return self.keys_repo.reserve(key_id, amount, ref)

    def commit(self, ref: str) -> bool:
        """Charge the hold of `ref`: True when this call charged it (once, whatever is retried)."""
        return self.keys_repo.settle(ref, charge=True)

    def release(self, ref: str) -> bool:
        """Give the hold of `ref` back: True when this call released it."""
        return self.keys_repo.settle(ref, charge=False)

    def held(self) -> dict[str, tuple[str, int]]:
        """Open holds: ref -> (key id, amount)."""
        return self.keys_repo.held()

    def ledger_entries(self, key_id: str) -> list[dict[str, Any]]:
        return self.keys_repo.ledger_entries(key_id)

    def audit(self) -> list[str]:
        """Every disagreement between balances, the ledger, holds and job states (empty: all accounted for)."""
        return self.keys_repo.audit()

    def credits_charged(self) -> int:
        return self.keys_repo.credits_charged()

    # -- jobs: submission and reading ------------------------------------------------------------------------------
    def submit_job(self, job: NewJob, *, capacity: int | None = None) -> tuple[int, int]:
        """Hold the credits and queue the job in one transaction; returns (queue position, balance after).

        Raises QueueAtCapacity or NotEnoughCredits with nothing kept."""
        return self.jobs_repo.submit(job, capacity=capacity)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.jobs_repo.job(job_id)

    def position(self, job_id: str) -> int | None:
        """1 for the next job to run; None when the job is not queued."""
        return self.jobs_repo.position(job_id)

    def counts(self) -> dict[str, int]:
        return self.jobs_repo.counts()

    def active_count(self) -> int:
        return self.jobs_repo.active_count()

    def take_result(self, job_id: str) -> str | None:
        """A /v1 waiter's result, removed as it is read (nobody else can ask for it)."""
        return self.jobs_repo.take_result(job_id)

    # -- jobs: cancel, recovery and expiry (the HTTP side; workers use `jobs_repo` directly) ----------------------
    def cancel(
        self, job_id: str, key_id: str | None = None, reason: str = "canceled by the client"
    ) -> str | None:
        """Cancel for a client: "removed" (was queued; credits back), "stopping" (running: its worker stops at
        the next step), "finished" (already ended), None (no such job for this key)."""
        return self.jobs_repo.cancel(job_id, key_id, reason)

    def discard_undelivered(self, job_id: str, reason: str) -> bool:
        """A /v1 job COMPLETED but its client left before taking the image: CANCELED, its hold released."""
        return self.jobs_repo.discard_undelivered(job_id, reason)

    def recover_embedded(self) -> tuple[int, int]:
        """Single-process start: running jobs are queued again at once, /v1 jobs are failed and refunded.
        Returns (requeued, failed)."""
        return self.jobs_repo.recover_embedded()

    def expire(self, finished_before: float) -> int:
        """Drop results and inputs of jobs that ended before `finished_before`; the row stays (expired=1)."""
        return self.jobs_repo.expire(finished_before)

    # -- replicas ----------------------------------------------------------------------------------------------
    def replicas(self, seen_within_s: float = 3600.0) -> list[dict[str, Any]]:
        """Workers heard from recently, oldest first."""
        return self.replicas_repo.recent(seen_within_s)
