"""The HTTP side of the durable queue: submit (credits held and job queued in one transaction), wait for a job's
end (/v1 requests wait as before), cancel, progress and readiness, from any process that reaches the database.

Waiting is event-driven with a polling fallback: a job's end is announced on the store's hub (in-process on
SQLite, LISTEN/NOTIFY on PostgreSQL) and wakes its waiter at once; if a hint is lost the waiter looks anyway every
`poll_s`. In the single-process server (`embedded`), the service also owns the one `Worker` (and recovers the
queue at start); behind Ray Serve it owns none and the model replicas' workers, seen through their heartbeats in
the `replicas` table, do the work.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

from idforge.server.db import NewJob, QueueAtCapacity, Store, wakeup
from idforge.server.jobs import (
    CancelOutcome,
    Delivery,
    JobCanceled,
    JobError,
    JobSpec,
    QueueFull,
    ServerStopping,
    Submitted,
    _encode_payload,
)
from idforge.server.states import TERMINAL, CancelAction, JobStatus
from idforge.server.worker import Worker

REPLICA_SEEN_S = 30.0  # a replica not heard from for this long is not counted as serving


class JobService:
    def __init__(
        self,
        store: Store,
        *,
        capacity: int = 32,
        retry_after: int = 5,
        poll_s: float = 1.0,
        worker: Worker | None = None,
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.retry_after = retry_after
        self.poll_s = poll_s
        self.worker = worker  # the embedded worker of the single-process server (None behind Ray)
        self._stopping = False
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._unsubscribe = store.hub.subscribe(wakeup.ENDED, self._on_ended)

    # -- life cycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        if self.worker is not None:
            self.store.recover_embedded()  # single process: nobody else can be running these jobs
            self.worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; the worker's running job gets `timeout` to finish, else it stays for the next start."""
        self._stopping = True
        if self.worker is not None:
            self.worker.stop(timeout)
        self._unsubscribe()
        for loop, event in [w for waiters in list(self._waiters.values()) for w in waiters]:
            loop.call_soon_threadsafe(event.set)

    @property
    def alive(self) -> bool:
        if self.worker is not None:
            return self.worker.alive
        return any(r["state"] != "stopped" for r in self.replicas())

    def replicas(self) -> list[dict[str, Any]]:
        """Model replicas heard from recently (device, state, jobs done, current job)."""
        now = time.time()
        shown = []
        for row in self.store.replicas(seen_within_s=REPLICA_SEEN_S):
            shown.append(
                {
                    "replica": row["id"],
                    "device": row["device"],
                    "host": row["host"],
                    "pid": row["pid"],
                    "state": row["state"],
                    "detail": row["detail"],
                    "current_job": row["current_job"],
                    "jobs_done": row["jobs_done"],
                    "jobs_failed": row["jobs_failed"],
                    "last_seen_s": round(now - row["heartbeat"], 2),
                }
            )
        return [r for r in shown if r["state"] != "stopped"]

    @property
    def readiness(self) -> dict[str, Any]:
        """loading (with what), or ready once a worker has loaded its models."""
        if self.worker is not None:
            w = self.worker
            state = "ready" if w.state in ("ready", "running") else "loading"
            return {
                "state": state,
                "loading": w.detail if state == "loading" else None,
                "unavailable": w.unavailable,
                "warm_up_s": w.warm_up_s,
            }
        replicas = self.replicas()
        ready = [r for r in replicas if r["state"] in ("ready", "running")]
        loading = [f"{r['replica']}: {r['detail'] or r['state']}" for r in replicas if r not in ready]
        return {
            "state": "ready" if ready else "loading",
            "loading": None if ready else ("; ".join(loading) or "waiting for model replicas"),
            "unavailable": {},
            "warm_up_s": None,
        }

    # -- submission --------------------------------------------------------------------------------------------------
    def submit(
        self,
        spec: JobSpec,
        key_id: str,
        cost: int,
        *,
        sync: bool,
        webhook_url: str | None = None,
        base_url: str | None = None,
    ) -> Submitted:
        """Hold the credits and queue the job; QueueFull or NotEnoughCredits with nothing kept."""
        if self._stopping:
            raise ServerStopping()
        job_id = "req_" + uuid.uuid4().hex
        try:
            job = NewJob(
                job_id, spec.method, _encode_payload(spec), key_id, cost, sync, webhook_url, base_url
            )
            position, balance = self.store.submit_job(job, capacity=self.capacity)
        except QueueAtCapacity:
            raise QueueFull(self.retry_after) from None
        return Submitted(job_id, position, balance)

    # -- waiting -----------------------------------------------------------------------------------------------------
    def _on_ended(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def wait(self, job_id: str) -> dict[str, Any] | None:
        """The job's row once it has ended (COMPLETED, FAILED or CANCELED); ServerStopping when stopping."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(job_id, []).append((loop, event))
        try:
            while True:
                row = await asyncio.to_thread(self.store.job, job_id)
                if row is None or row["status"] in TERMINAL:
                    return row
                if self._stopping:
                    raise ServerStopping()
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

    async def outcome(self, job_id: str) -> Delivery:
        """A /v1 job's delivery (its result is taken from the database), or its JobError / JobCanceled."""
        row = await self.wait(job_id)
        if row is None:
            raise JobError(500, "the job disappeared")
        if row["status"] == JobStatus.COMPLETED:
            result = await asyncio.to_thread(self.store.take_result, job_id)
            if result is None:
                raise JobError(500, "the job's result was already taken")
            return Delivery.from_json(result)
        if row["status"] == JobStatus.CANCELED:
            raise JobCanceled(row["error"] or "canceled")
        raise JobError(int(row["error_status"] or 500), row["error"] or "failed", row["error_field"])

    # -- cancel and delivery -----------------------------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str = "canceled by the client", wait: float = 0.0) -> CancelOutcome:
        """Remove a queued job or stop a running one at its next step; its credits are released either way.
        With `wait`, wait that long for a running job to stop, so the answer can say it has."""
        action = self.store.cancel(job_id, reason=reason)
        if action == CancelAction.REMOVED:
            return CancelOutcome(CancelAction.REMOVED, JobStatus.CANCELED)
        if action == CancelAction.STOPPING:
            deadline = time.monotonic() + wait
            while True:
                row = self.store.job(job_id)
                if row is None:  # finished and expired meanwhile
                    return CancelOutcome(CancelAction.ALREADY_FINISHED, JobStatus.CANCELED)
                if row["status"] in TERMINAL:
                    stopped = row["status"] == JobStatus.CANCELED
                    return CancelOutcome(
                        CancelAction.STOPPED if stopped else CancelAction.ALREADY_FINISHED, row["status"]
                    )
                if time.monotonic() >= deadline:
                    return CancelOutcome(CancelAction.STOPPING, row["status"])
                time.sleep(0.02)
        # the store said states.CANCEL_FINISHED (it had ended) or None (no such job)
        row = self.store.job(job_id)
        return CancelOutcome(CancelAction.ALREADY_FINISHED, row["status"] if row else JobStatus.CANCELED)

    def delivered(self, job_id: str) -> None:
        """A /v1 client received its image: the held credits are now spent."""
        self.store.commit(job_id)

    def undelivered(self, job_id: str) -> None:
        """A /v1 client left before its image was ready: stop the job (or discard its image); charge nothing."""
        reason = "the client closed the connection before the image was delivered"
        outcome = self.cancel(job_id, reason)
        if outcome.action == CancelAction.ALREADY_FINISHED:
            self.store.discard_undelivered(job_id, reason)

    def position(self, job_id: str) -> int | None:
        return self.store.position(job_id)

    def stats(self) -> dict[str, Any]:
        counts = self.store.counts()
        return {
            "queued": counts.get(JobStatus.QUEUED, 0),
            "running": counts.get(JobStatus.PROCESSING, 0),
            "capacity": self.capacity,
            "completed": counts.get(JobStatus.COMPLETED, 0),
            "failed": counts.get(JobStatus.FAILED, 0),
            "canceled": counts.get(JobStatus.CANCELED, 0),
            "worker_alive": self.alive,
        }
