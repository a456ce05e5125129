"""The webhook outbox: one row per job with a `webhook_url`, written in the same transaction that ends the job.

Because the row is committed together with the job's final state (server/db/jobs_repo.py), a crash can never end
a job without its webhook, and the row id (`msg_...`, the Standard Webhooks `webhook-id`) is the same on every
retry: a job has exactly one delivery id. The dispatcher (webhooks.py) claims due rows with a lease (`next_attempt` moved
into the future, `SKIP LOCKED` on PostgreSQL), so a crash mid-send only delays the retry and two dispatchers (two
ingress replicas) never post the same message at once. This module gives the dispatcher typed messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from idforge.server.db.outbox_repo import OutboxRepository
from idforge.server.states import DeliveryStatus


@dataclass(frozen=True)
class WebhookMessage:
    """One webhook message: its id, where it goes, the frozen JSON body, and its delivery state."""

    id: str
    job_id: str
    key_id: str
    url: str
    body: str
    status: str  # a DeliveryStatus value
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
            "next_attempt": self.next_attempt if self.status == DeliveryStatus.PENDING else None,
            "last_attempt": self.last_attempt,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "delivered": self.delivered,
        }


class WebhookOutbox:
    """The outbox of one store (`webhook_deliveries`, in the jobs database so it shares the job's transaction):
    the dispatcher's view of the outbox repository, its rows as typed messages."""

    def __init__(self, repository: OutboxRepository) -> None:
        self.repository = repository

    def claim_due(self, now: float, lease: float, limit: int = 16) -> list[WebhookMessage]:
        return [WebhookMessage(**row) for row in self.repository.claim_due(now, lease, limit)]

    def reclaim(self) -> int:
        return self.repository.reclaim()

    def next_due(self) -> float | None:
        return self.repository.next_due()

    def record_success(self, message_id: str, http_status: int) -> None:
        self.repository.record_success(message_id, http_status)

    def record_failure(
        self, message_id: str, http_status: int | None, error: str, retry_at: float | None
    ) -> None:
        self.repository.record_failure(message_id, http_status, error, retry_at)

    def for_job(self, job_id: str) -> list[WebhookMessage]:
        return [WebhookMessage(**row) for row in self.repository.deliveries(job_id)]
