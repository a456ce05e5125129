"""The webhook outbox table (`webhook_deliveries`): one message per job, queued in the transaction that ends it.

`enqueue` runs inside the job repository's transaction (its `conn`), so a job never ends without its webhook row.
The dispatcher (server/webhooks.py, through server/outbox.py) claims due rows with a lease and records attempts.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from idforge.server.db.database import Database
from idforge.server.db.schema import webhook_deliveries
from idforge.server.states import DeliveryStatus


class OutboxRepository:
    """The `webhook_deliveries` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def enqueue(
        self, job_id: str, key_id: str, url: str, body: str, *, conn: Connection | None = None
    ) -> str:
        """Queue the one message of job `job_id` (due now); returns its id (msg_..., the same on every retry)."""
        now = time.time()
        message_id = "msg_" + uuid.uuid4().hex
        with self.db.transaction(conn) as c:
            c.execute(
                sa.insert(webhook_deliveries).values(
                    id=message_id,
                    job_id=job_id,
                    key_id=key_id,
                    url=url,
                    body=body,
                    status=DeliveryStatus.PENDING,
                    attempts=0,
                    created=now,
                    next_attempt=now,
                )
            )
        return message_id

    def claim_due(
        self, now: float, lease: float, limit: int = 16, *, conn: Connection | None = None
    ) -> list[dict[str, Any]]:
        """Pending messages due now; their next attempt moves `lease` seconds ahead, so no other sender takes them
        meanwhile and a sender that dies mid-send only delays the retry (same message id)."""
        with self.db.transaction(conn) as c:
            due = (
                c.execute(
                    sa.select(webhook_deliveries.c.id)
                    .where(
                        webhook_deliveries.c.status == DeliveryStatus.PENDING,
                        webhook_deliveries.c.next_attempt <= now,
                    )
                    .order_by(webhook_deliveries.c.next_attempt)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            if not due:
                return []
            rows = c.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id.in_(due))
                .values(next_attempt=now + lease, claimed=now)
                .returning(*webhook_deliveries.c)
            ).all()
        return sorted((dict(r._mapping) for r in rows), key=lambda r: r["created"])

    def record_success(self, message_id: str, http_status: int, *, conn: Connection | None = None) -> None:
        now = time.time()
        with self.db.transaction(conn) as c:
            c.execute(
                sa.update(webhook_deliveries)
                .where(webhook_deliveries.c.id == message_id)
                .values(
                    status=DeliveryStatus.DELIVERED,
                    attempts=webhook_deliveries.c.attempts + 1,
                    last_attempt=now,
                    last_status=http_status,
                    last_error=None,
                    delivered=now,
                    claimed=None,
                )
            )

    def record_failure(
        self,
        message_id: str,
        http_status: int | None,
        error: str,
        retry_at: float | None,
        *,
        conn: Connection | None = None,
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
        values |= {"next_attempt": retry_at} if retry_at is not None else {"status": DeliveryStatus.FAILED}
        with self.db.transaction(conn) as c:
            c.execute(
                sa.update(webhook_deliveries).where(webhook_deliveries.c.id == message_id).values(**values)
            )

    def reclaim(self, *, conn: Connection | None = None) -> int:
        """At start-up: messages claimed by a sender that died mid-send are due again now (same id)."""
        with self.db.transaction(conn) as c:
            return c.execute(
                sa.update(webhook_deliveries)
                .where(
                    webhook_deliveries.c.status == DeliveryStatus.PENDING,
                    webhook_deliveries.c.claimed.is_not(None),
                )
                .values(next_attempt=time.time(), claimed=None)
            ).rowcount

    def next_due(self, *, conn: Connection | None = None) -> float | None:
        with self.db.read(conn) as c:
            value = c.execute(
                sa.select(sa.func.min(webhook_deliveries.c.next_attempt)).where(
                    webhook_deliveries.c.status == DeliveryStatus.PENDING
                )
            ).scalar()
        return None if value is None else float(value)

    def deliveries(self, job_id: str, *, conn: Connection | None = None) -> list[dict[str, Any]]:
        with self.db.read(conn) as c:
            rows = c.execute(
                sa.select(webhook_deliveries)
                .where(webhook_deliveries.c.job_id == job_id)
                .order_by(webhook_deliveries.c.created)
            )
            return [dict(r._mapping) for r in rows]
