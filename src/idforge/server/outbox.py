"""The webhook outbox: one row per job with a `webhook_url`, written in the same transaction that ends the job.

Because the row is committed together with the job's final state, a crash can never end a job without its
webhook, and the row id (`msg_...`, the Standard Webhooks `webhook-id`) is the same on every retry: a job has
exactly one delivery id. The dispatcher (webhooks.py) claims due rows with a lease (`next_attempt` moved into the
future), so a crash mid-send only delays the retry. All SQL of webhooks lives here.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

from idforge.server.store import ConnectionPool

PENDING = "pending"
DELIVERED = "delivered"
GAVE_UP = "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_attempt REAL NOT NULL,
    last_attempt REAL,
    last_status INTEGER,
    last_error TEXT,
    delivered REAL,
    claimed REAL
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries(status, next_attempt);
"""


@dataclass(frozen=True)
class WebhookMessage:
    """One webhook message: its id, where it goes, the frozen JSON body, and its delivery state."""

    id: str
    job_id: str
    key_id: str
    url: str
    body: str
    status: str
    attempts: int
    created: float
    next_attempt: float
    last_attempt: float | None
    last_status: int | None
    last_error: str | None
    delivered: float | None
    claimed: float | None

    def public(self) -> dict[str, Any]:
        """What GET /v2/requests/{id}/webhooks shows (the body is the job's status, already visible)."""
        return {
            "id": self.id,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "created": self.created,
            "next_attempt": self.next_attempt if self.status == PENDING else None,
            "last_attempt": self.last_attempt,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "delivered": self.delivered,
        }


def _message(row: sqlite3.Row) -> WebhookMessage:
    return WebhookMessage(**{name: row[name] for name in row.keys()})


class WebhookOutbox:
    """The `webhook_deliveries` table (in the jobs database, so it can share the job's transaction)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.pool.get().executescript(_SCHEMA)

    def add(self, conn: sqlite3.Connection, job_id: str, key_id: str, url: str, body: dict[str, Any]) -> str:
        """Queue the message for `job_id` inside the caller's transaction; a second call for the job is a no-op."""
        message_id = "msg_" + uuid.uuid4().hex
        now = time.time()
        conn.execute(
            "INSERT OR IGNORE INTO webhook_deliveries (id, job_id, key_id, url, body, status, created, "
            "next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (message_id, job_id, key_id, url, json.dumps(body, separators=(",", ":")), PENDING, now, now),
        )
        return message_id

    def claim_due(self, now: float, lease: float, limit: int = 16) -> list[WebhookMessage]:
        """Pending messages due now; their next attempt moves `lease` seconds ahead (a crash just delays it)."""
        with self.pool.transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM webhook_deliveries WHERE status = ? AND next_attempt <= ? "
                "ORDER BY next_attempt LIMIT ?",
                (PENDING, now, limit),
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE webhook_deliveries SET next_attempt = ?, claimed = ? WHERE id = ?",
                    (now + lease, now, row["id"]),
                )
        return [_message(row) for row in rows]

    def reclaim(self) -> int:
        """At start-up: messages claimed by a process that died mid-send are due again now (same id)."""
        with self.pool.transaction() as conn:
            cursor = conn.execute(
                "UPDATE webhook_deliveries SET next_attempt = ?, claimed = NULL "
                "WHERE status = ? AND claimed IS NOT NULL",
                (time.time(), PENDING),
            )
            return cursor.rowcount

    def next_due(self) -> float | None:
        row = (
            self.pool.get()
            .execute("SELECT MIN(next_attempt) AS t FROM webhook_deliveries WHERE status = ?", (PENDING,))
            .fetchone()
        )
        return None if row is None or row["t"] is None else float(row["t"])

    def record_success(self, message_id: str, http_status: int) -> None:
        now = time.time()
        with self.pool.transaction() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, last_attempt = ?, "
                "last_status = ?, last_error = NULL, delivered = ?, claimed = NULL WHERE id = ?",
                (DELIVERED, now, http_status, now, message_id),
            )

    def record_failure(
        self, message_id: str, http_status: int | None, error: str, retry_at: float | None
    ) -> None:
        """A failed attempt: retry at `retry_at`, or give up when it is None."""
        now = time.time()
        with self.pool.transaction() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, last_attempt = ?, "
                "last_status = ?, last_error = ?, next_attempt = ?, claimed = NULL WHERE id = ?",
                (
                    PENDING if retry_at is not None else GAVE_UP,
                    now,
                    http_status,
                    error[:500],
                    retry_at if retry_at is not None else now,
                    message_id,
                ),
            )

    def for_job(self, job_id: str) -> list[WebhookMessage]:
        rows = (
            self.pool.get()
            .execute("SELECT * FROM webhook_deliveries WHERE job_id = ? ORDER BY created", (job_id,))
            .fetchall()
        )
        return [_message(row) for row in rows]

    def get(self, message_id: str) -> WebhookMessage | None:
        row = (
            self.pool.get().execute("SELECT * FROM webhook_deliveries WHERE id = ?", (message_id,)).fetchone()
        )
        return _message(row) if row is not None else None

    def counts(self) -> dict[str, int]:
        rows = (
            self.pool.get()
            .execute("SELECT status, COUNT(*) AS n FROM webhook_deliveries GROUP BY status")
            .fetchall()
        )
        return {row["status"]: int(row["n"]) for row in rows}
