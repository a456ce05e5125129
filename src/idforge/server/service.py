"""The HTTP side of the durable queue: submit (credits held and job queued in one transaction), wait for a job's
end (/v1 requests wait as before), cancel, and read progress, from any process that can reach the database.

Waiting is event-driven with a polling fallback: a job's end is announced on the store's hub (in-process on
SQLite, LISTEN/NOTIFY on PostgreSQL) and wakes its waiter at once; if a hint is lost the waiter looks anyway every
`poll_s`. Nothing here holds the models, so any number of ingress processes can sit in front of the replicas.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from idforge.server.db import QueueAtCapacity, Store, wakeup
from idforge.server.db.schema import TERMINAL
from idforge.server.jobs import JobSpec, QueueFull, _encode_payload


@dataclass
class Submitted:
    job_id: str
    position: int
    balance: int


class JobService:
    def __init__(
        self, store: Store, *, capacity: int = 32, retry_after: int = 5, poll_s: float = 1.0
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.retry_after = retry_after
        self.poll_s = poll_s
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._unsubscribe = store.hub.subscribe(wakeup.ENDED, self._on_ended)

    def close(self) -> None:
        self._unsubscribe()

    def submit(
        self, spec: JobSpec, key_id: str, cost: int, *, sync: bool, webhook_url: str | None = None
    ) -> Submitted:
        """Hold the credits and queue the job; QueueFull or NotEnoughCredits with nothing kept."""
        job_id = "req_" + uuid.uuid4().hex
        try:
            position, balance = self.store.submit_job(
                job_id,
                spec.method,
                _encode_payload(spec),
                key_id,
                cost,
                sync=sync,
                capacity=self.capacity,
                webhook_url=webhook_url,
            )
        except QueueAtCapacity:
            raise QueueFull(self.retry_after) from None
        return Submitted(job_id, position, balance)

    def _on_ended(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, job_id: str) -> dict[str, Any]:
        """The job's row once it has ended (succeeded, failed or canceled)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append((loop, event))
        try:
            while True:
                row = await asyncio.to_thread(self.store.job, job_id)
                if row is None or row["status"] in TERMINAL:
                    return row
                try:
                    await asyncio.wait_for(event.wait(), self.poll_s)
                except TimeoutError:
                    pass
                event.clear()
        finally:
            with self._lock:
                waiters = self._waiters.get(job_id, [])
                if (loop, event) in waiters:
                    waiters.remove((loop, event))
                if not waiters:
                    self._waiters.pop(job_id, None)

    def stats(self) -> dict[str, Any]:
        counts = self.store.counts()
        return {
            "queued": counts.get("queued", 0),
            "running": counts.get("running", 0),
            "capacity": self.capacity,
            "completed": counts.get("succeeded", 0),
            "failed": counts.get("failed", 0),
            "canceled": counts.get("canceled", 0),
        }
