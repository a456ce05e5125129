"""Jobs: the SQLite job table, a bounded queue and the ONE worker thread that owns the models.

Every generation, synchronous (/v1) or not (/v2), is a job row with a status of the v2 contract (QUEUED,
PROCESSING, COMPLETED, FAILED, CANCELED). The HTTP side only submits and waits on a future; the worker thread
first warms the generator up (models load before the server reports ready; jobs submitted meanwhile queue), then
runs jobs one at a time through the injected `Generator` (which holds the Engine, so models are loaded once and
never touched by two threads).

Credits are reserved at submission. A /v2 job's are committed by the worker when its result is stored; a /v1
job's by the HTTP handler once it hands the image to a client that is still connected (a client that left is not
charged). Failed and canceled jobs release theirs. Cancel is a flag in the job row, checked by the progress
callback at every step, so a running job stops at its next step. On start-up, queued and running /v2 jobs are
queued again (nothing is lost); /v1 jobs whose client is gone are failed and refunded; stray reservations are
settled from their job's final state. Ending a job and queueing its webhook are one transaction.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from idforge.server.contract import (
    ACTIVE,
    CANCELED,
    COMPLETED,
    FAILED,
    PROCESSING,
    QUEUED,
    TERMINAL,
    status_body,
)
from idforge.server.outbox import WebhookOutbox
from idforge.server.store import ConnectionPool, KeyStore

log = logging.getLogger("idforge.server.jobs")

ProgressCallback = Callable[[int, int], None]
WarmUpReport = Callable[[str], None]


@dataclass
class JobSpec:
    """What a generator needs: the method, its JSON parameters, and the input images as raw bytes."""

    method: str
    params: dict[str, Any]
    images: dict[str, bytes | list[bytes] | None]


@dataclass
class JobOutput:
    """What a generator returns."""

    images: list[Image.Image]
    seeds: list[int]
    extras: dict[str, Image.Image] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


class Generator(Protocol):
    """Runs one job; called only from the worker thread. May also have `warm_up(report, methods) -> dict`,
    called once on the worker thread before the first job (returns methods that cannot run, with the reason)."""

    def generate(self, spec: JobSpec, progress: ProgressCallback) -> JobOutput: ...


class JobError(Exception):
    """A job failed in a way the client should hear about: HTTP status, one-line message, the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field = field
        super().__init__(message)


class JobCanceled(Exception):
    """Raised from the progress callback when the job's cancel flag is set: the generation stops at this step."""


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the queue is full; retry after {retry_after} s")


class ServerStopping(Exception):
    pass


@dataclass
class Delivery:
    """A finished job, encoded: JPEG bytes of each image, extras as JPEG, seeds, warnings, timings, recipe."""

    images: list[bytes]
    seeds: list[int]
    extras: dict[str, bytes]
    warnings: list[str]
    timings: dict[str, float]
    recipe: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "images": [base64.b64encode(b).decode("ascii") for b in self.images],
                "seeds": self.seeds,
                "extras": {k: base64.b64encode(v).decode("ascii") for k, v in self.extras.items()},
                "warnings": self.warnings,
                "timings": self.timings,
                "recipe": self.recipe,
            },
            default=str,
        )

    @classmethod
    def from_json(cls, text: str) -> Delivery:
        data = json.loads(text)
        return cls(
            images=[base64.b64decode(b) for b in data["images"]],
            seeds=list(data["seeds"]),
            extras={k: base64.b64decode(v) for k, v in data.get("extras", {}).items()},
            warnings=list(data.get("warnings", [])),
            timings=dict(data.get("timings", {})),
            recipe=dict(data.get("recipe", {})),
        )


def encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    method TEXT NOT NULL,
    key_id TEXT NOT NULL,
    sync INTEGER NOT NULL,
    status TEXT NOT NULL,
    cost INTEGER NOT NULL,
    payload TEXT,
    result TEXT,
    error TEXT,
    error_status INTEGER,
    error_field TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""

# Columns added after the first release (added to older databases on open).
_ADDED_COLUMNS = {
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "webhook_url": "TEXT",
    "base_url": "TEXT",
    "step": "INTEGER",
    "total_steps": "INTEGER",
    "metrics": "TEXT",
    "expired": "INTEGER NOT NULL DEFAULT 0",
}
_OLD_STATUSES = {"queued": QUEUED, "running": PROCESSING, "succeeded": COMPLETED, "failed": FAILED}


def _encode_payload(spec: JobSpec) -> str:
    def enc(value):
        if value is None:
            return None
        if isinstance(value, list):
            return [base64.b64encode(v).decode("ascii") for v in value]
        return base64.b64encode(value).decode("ascii")

    return json.dumps({"params": spec.params, "images": {k: enc(v) for k, v in spec.images.items()}})


def _decode_payload(method: str, text: str) -> JobSpec:
    data = json.loads(text)

    def dec(value):
        if value is None:
            return None
        if isinstance(value, list):
            return [base64.b64decode(v) for v in value]
        return base64.b64decode(value)

    return JobSpec(method, data["params"], {k: dec(v) for k, v in data["images"].items()})


class JobStore:
    """The jobs table and the webhook outbox (in the same SQLite file as the keys by default).

    Every transition to a final state (`finish`, `fail`, `cancel`) queues the job's webhook in the same
    transaction when the job has a `webhook_url`."""

    def __init__(self, path: str | Path) -> None:
        self.pool = ConnectionPool(path)
        conn = self.pool.get()
        conn.executescript(_SCHEMA)
        present = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)").fetchall()}
        for name, declaration in _ADDED_COLUMNS.items():
            if name not in present:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
        for old, new in _OLD_STATUSES.items():
            conn.execute("UPDATE jobs SET status = ? WHERE status = ?", (new, old))
        self.outbox = WebhookOutbox(self.pool)

    # -- reading ---------------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.pool.get().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def spec(self, job_id: str) -> JobSpec:
        row = self.pool.get().execute("SELECT method, payload FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _decode_payload(row["method"], row["payload"])

    def position(self, job_id: str) -> int | None:
        """1 for the next job to run; None when the job is not queued."""
        row = (
            self.pool.get()
            .execute(
                "SELECT COUNT(*) AS n FROM jobs WHERE status = ? AND seq <= "
                "(SELECT seq FROM jobs WHERE id = ? AND status = ?)",
                (QUEUED, job_id, QUEUED),
            )
            .fetchone()
        )
        return int(row["n"]) or None

    def active(self) -> list[dict[str, Any]]:
        rows = (
            self.pool.get()
            .execute("SELECT id, sync, status FROM jobs WHERE status IN (?, ?) ORDER BY seq", ACTIVE)
            .fetchall()
        )
        return [dict(row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self.pool.get().execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {row["status"]: int(row["n"]) for row in rows}

    # -- transitions -----------------------------------------------------------------------------------------------
    def insert(
        self,
        job_id: str,
        spec: JobSpec,
        key_id: str,
        cost: int,
        sync: bool,
        *,
        webhook_url: str | None = None,
        base_url: str | None = None,
    ) -> None:
        with self.pool.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, method, key_id, sync, status, cost, payload, created, webhook_url, base_url) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    spec.method,
                    key_id,
                    int(sync),
                    QUEUED,
                    cost,
                    _encode_payload(spec),
                    time.time(),
                    webhook_url,
                    base_url,
                ),
            )

    def claim(self, job_id: str) -> bool:
        """QUEUED -> PROCESSING; False when the job is no longer queued (canceled meanwhile)."""
        with self.pool.transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET status = ?, started = ?, step = 0, total_steps = 0 "
                "WHERE id = ? AND status = ? AND cancel_requested = 0",
                (PROCESSING, time.time(), job_id, QUEUED),
            )
            return cursor.rowcount == 1

    def report_progress(self, job_id: str, step: int, total: int) -> bool:
        """Store the step; True when a cancel was requested (the worker then stops the job)."""
        with self.pool.transaction() as conn:
            row = conn.execute(
                "UPDATE jobs SET step = ?, total_steps = ? WHERE id = ? RETURNING cancel_requested",
                (step, total, job_id),
            ).fetchone()
        return bool(row and row["cancel_requested"])

    def finish(self, job_id: str, delivery: Delivery, keep_result: bool) -> bool:
        """Completed: store the result (for /v2) and drop the payload. Returns False (and cancels the job
        instead) when a cancel was requested before the result could be stored."""
        with self.pool.transaction() as conn:
            row = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and row["cancel_requested"]:
                self._end(conn, job_id, CANCELED, "canceled while running (after the last step)")
                return False
            conn.execute(
                "UPDATE jobs SET status = ?, result = ?, payload = NULL, finished = ?, metrics = ? WHERE id = ?",
                (
                    COMPLETED,
                    delivery.to_json() if keep_result else None,
                    time.time(),
                    json.dumps(delivery.timings),
                    job_id,
                ),
            )
            self._queue_webhook(conn, job_id)
        return True

    def fail(self, job_id: str, error: JobError) -> None:
        with self.pool.transaction() as conn:
            self._end(conn, job_id, FAILED, error.message, error.status, error.field)

    def cancel(self, job_id: str, reason: str, *, only_if: tuple[str, ...] = ACTIVE) -> bool:
        """Mark the job CANCELED when its status is one of `only_if`; True when it was."""
        with self.pool.transaction() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] not in only_if:
                return False
            self._end(conn, job_id, CANCELED, reason)
            return True

    def request_cancel(self, job_id: str) -> bool:
        """Set the cancel flag of a PROCESSING job (its progress callback stops it); True when set."""
        with self.pool.transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?", (job_id, PROCESSING)
            )
            return cursor.rowcount == 1

    def requeue(self, job_id: str) -> None:
        with self.pool.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, started = NULL, step = NULL, total_steps = NULL WHERE id = ?",
                (QUEUED, job_id),
            )

    def expire(self, finished_before: float) -> int:
        """Drop results and inputs of jobs that ended before `finished_before`; the row stays as a tombstone so an
        expired id can be told apart from an unknown one."""
        with self.pool.transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET result = NULL, payload = NULL, expired = 1 "
                "WHERE expired = 0 AND finished IS NOT NULL AND finished < ? AND status IN (?, ?, ?)",
                (finished_before, *TERMINAL),
            )
            return cursor.rowcount

    def _end(
        self,
        conn,
        job_id: str,
        status: str,
        message: str,
        error_status: int | None = None,
        error_field: str | None = None,
    ) -> None:
        conn.execute(
            "UPDATE jobs SET status = ?, error = ?, error_status = ?, error_field = ?, payload = NULL, "
            "finished = ? WHERE id = ?",
            (status, message, error_status, error_field, time.time(), job_id),
        )
        self._queue_webhook(conn, job_id)

    def _queue_webhook(self, conn, job_id: str) -> None:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is not None and row["webhook_url"]:
            row = dict(row)
            self.outbox.add(conn, job_id, row["key_id"], row["webhook_url"], status_body(row))

    def close(self) -> None:
        self.pool.close()


@dataclass
class Submitted:
    job_id: str
    position: int
    future: Future | None
    balance: int


@dataclass(frozen=True)
class CancelOutcome:
    """What POST /v2/requests/{id}/cancel did: removed (was queued), stopped or stopping (was running), or
    already_finished; `status` is the job's status after it."""

    action: str
    status: str


def _map_exception(exc: BaseException) -> JobError:
    from idforge.errors import (
        IdforgeError,
        InputImageError,
        ModelFormatError,
        ModelNotFoundError,
        NoFaceError,
        ParameterError,
    )

    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, InputImageError | NoFaceError | ParameterError):
        return JobError(400, str(exc), getattr(exc, "name", None))
    if isinstance(exc, ModelNotFoundError | ModelFormatError):
        return JobError(500, "the server's models are not set up for this method")
    if isinstance(exc, IdforgeError):
        return JobError(400, str(exc))
    return JobError(500, "internal error while generating")


class JobQueue:
    """The bounded queue and its single worker thread (which warms the generator up before the first job)."""

    def __init__(
        self,
        jobs: JobStore,
        keys: KeyStore,
        generator: Generator,
        *,
        capacity: int = 32,
        retry_after: int = 5,
        warm_up: Sequence[str] = ("insta-depth", "instantid", "faceid"),
    ) -> None:
        self.jobs = jobs
        self.keys = keys
        self.generator = generator
        self.capacity = capacity
        self.retry_after = retry_after
        self.warm_up = tuple(warm_up)
        self._pending: deque[str] = deque()
        self._futures: dict[str, Future] = {}
        self._running: str | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._abandon = False
        self.completed = 0
        self.failed = 0
        self.canceled = 0
        self.readiness: dict[str, Any] = {"state": "loading", "loading": "starting", "unavailable": {}}

    # -- life cycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="idforge-worker", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """Requeue /v2 jobs left queued or running; fail and refund /v1 ones; settle stray reservations."""
        requeued = 0
        for row in self.jobs.active():
            if row["sync"]:
                self.jobs.fail(row["id"], JobError(503, "the server restarted before this request ran"))
                self.keys.release(row["id"])
            else:
                self.jobs.requeue(row["id"])
                self._pending.append(row["id"])
                requeued += 1
        for ref in self.keys.held():
            job = self.jobs.get(ref)
            if job is None or job["status"] in (FAILED, CANCELED):
                self.keys.release(ref)
            elif job["status"] == COMPLETED:
                if job["sync"]:
                    self.keys.release(ref)  # a /v1 image nobody received is not charged
                else:
                    self.keys.commit(ref)
        if requeued:
            log.info("requeued jobs after restart", extra={"fields": {"requeued": requeued}})

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; wait up to `timeout` for the running one. A job still running is abandoned: its
        result is discarded and it stays queued for the next start. Waiting /v1 clients get 503."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._abandon = self._thread.is_alive()
        with self._cond:
            for job_id in list(self._pending):
                future = self._futures.pop(job_id, None)
                if future is not None:  # a /v1 client is waiting: nobody will collect this later
                    self.jobs.fail(job_id, JobError(503, "the server is shutting down"))
                    self.keys.release(job_id)
                    future.set_exception(ServerStopping())
                    self._pending.remove(job_id)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        return self.readiness["state"] == "ready"

    # -- submission and cancel -------------------------------------------------------------------------------------
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
        """Reserve credits, store the job and queue it; QueueFull or NotEnoughCredits before anything is kept."""
        job_id = "req_" + uuid.uuid4().hex
        with self._cond:
            if self._stopping:
                raise ServerStopping()
            if len(self._pending) + (self._running is not None) >= self.capacity:
                raise QueueFull(self.retry_after)
            balance = self.keys.reserve(key_id, cost, job_id)
            try:
                self.jobs.insert(job_id, spec, key_id, cost, sync, webhook_url=webhook_url, base_url=base_url)
            except BaseException:
                self.keys.release(job_id)
                raise
            future: Future | None = Future() if sync else None
            if future is not None:
                self._futures[job_id] = future
            self._pending.append(job_id)
            position = len(self._pending)
            self._cond.notify_all()
        return Submitted(job_id, position, future, balance)

    def cancel(self, job_id: str, reason: str = "canceled by the client", wait: float = 0.0) -> CancelOutcome:
        """Remove a queued job or stop a running one at its next step; its credits are released either way.
        With `wait`, wait that long for a running job to stop, so the answer can say it has."""
        with (
            self._cond
        ):  # QUEUED -> CANCELED in the store first: a worker that just popped it cannot claim it
            if self.jobs.cancel(job_id, reason, only_if=(QUEUED,)):
                if job_id in self._pending:
                    self._pending.remove(job_id)
                self.keys.release(job_id)
                self.canceled += 1
                future = self._futures.pop(job_id, None)
                if future is not None:
                    future.set_exception(JobCanceled(reason))
                return CancelOutcome("removed", CANCELED)
        if self.jobs.request_cancel(job_id):
            deadline = time.monotonic() + wait
            while True:
                row = self.jobs.get(job_id)
                if row["status"] in TERMINAL:
                    action = "stopped" if row["status"] == CANCELED else "already_finished"
                    return CancelOutcome(action, row["status"])
                if time.monotonic() >= deadline:
                    return CancelOutcome("stopping", row["status"])
                time.sleep(0.02)
        row = self.jobs.get(job_id)
        return CancelOutcome("already_finished", row["status"] if row else CANCELED)

    def delivered(self, job_id: str) -> None:
        """A /v1 client received its image: the reserved credits are now spent."""
        self.keys.commit(job_id)

    def undelivered(self, job_id: str) -> None:
        """A /v1 client left before its image was ready: stop the job (or discard its image); charge nothing."""
        outcome = self.cancel(job_id, "the client closed the connection before the image was delivered")
        if outcome.action == "already_finished":
            self.jobs.cancel(
                job_id,
                "the client closed the connection before the image was delivered",
                only_if=(COMPLETED,),
            )
            self.keys.release(job_id)

    def position(self, job_id: str) -> int | None:
        return self.jobs.position(job_id)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "queued": len(self._pending),
                "running": int(self._running is not None),
                "capacity": self.capacity,
                "completed": self.completed,
                "failed": self.failed,
                "canceled": self.canceled,
                "worker_alive": self.alive,
            }

    # -- the worker ------------------------------------------------------------------------------------------------
    def _warm_up(self) -> None:
        """Load the generator's models before taking jobs (jobs submitted meanwhile wait in the queue)."""
        warm = getattr(self.generator, "warm_up", None)
        started = time.perf_counter()
        if self.warm_up and warm is not None:

            def report(what: str) -> None:
                self.readiness["loading"] = what
                log.info("loading", extra={"fields": {"loading": what}})

            try:
                self.readiness["unavailable"] = dict(warm(report, self.warm_up) or {})
            except Exception:  # a warm-up bug must not keep the server from serving what it can
                log.error("warm-up failed", extra={"fields": {"trace": traceback.format_exc()}})
        self.readiness.update(state="ready", loading=None, warm_up_s=round(time.perf_counter() - started, 3))
        log.info("ready", extra={"fields": dict(self.readiness)})

    def _next(self) -> str | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait(1.0)
            if self._stopping:
                return None
            job_id = self._pending.popleft()
            self._running = job_id
            return job_id

    def _run(self) -> None:
        self._warm_up()
        while True:
            job_id = self._next()
            if job_id is None:
                return
            try:
                if self.jobs.claim(job_id):
                    self._run_one(job_id)
            except Exception:  # the worker never dies: a bug in one job fails that job only
                log.error(
                    "worker error", extra={"fields": {"job_id": job_id, "trace": traceback.format_exc()}}
                )
            finally:
                with self._cond:
                    self._running = None

    def _run_one(self, job_id: str) -> None:
        started = time.perf_counter()
        row = self.jobs.get(job_id)
        queued_s = (row["started"] or time.time()) - row["created"]

        def progress(step: int, total: int) -> None:
            if self.jobs.report_progress(job_id, int(step), int(total)):
                raise JobCanceled(f"canceled while running, at step {step} of {total}")

        delivery: Delivery | None = None
        error: JobError | None = None
        canceled: JobCanceled | None = None
        try:
            spec = self.jobs.spec(job_id)
            output = self.generator.generate(spec, progress)
            timings = {"queue_s": round(queued_s, 4), "inference_s": round(time.perf_counter() - started, 4)}
            delivery = Delivery(
                images=[encode_jpeg(image) for image in output.images],
                seeds=[int(s) for s in output.seeds],
                extras={name: encode_jpeg(image) for name, image in output.extras.items()},
                warnings=list(output.warnings),
                timings=timings | {k: round(float(v), 4) for k, v in output.timings.items()},
                recipe=dict(output.recipe),
            )
        except JobCanceled as exc:
            canceled = exc
        except BaseException as exc:  # noqa: BLE001 - every failure must settle the job and its credits
            error = _map_exception(exc)
            if error.status >= 500:
                log.error(
                    "job failed",
                    extra={"fields": {"job_id": job_id, "error": repr(exc), "trace": traceback.format_exc()}},
                )
        if self._abandon and not row["sync"]:
            return  # stop() gave up on this job: it stays queued in the database for the next start
        future = self._futures.pop(job_id, None)
        if canceled is None and error is None:
            if self.jobs.finish(job_id, delivery, keep_result=not row["sync"]):
                if not row["sync"]:
                    self.keys.commit(job_id)  # charged only once the image exists and is stored
                self.completed += 1
                if future is not None:
                    future.set_result(delivery)
                return
            canceled = JobCanceled("canceled while running (after the last step)")
        if canceled is not None:
            self.jobs.cancel(job_id, str(canceled))
            self.keys.release(job_id)
            self.canceled += 1
            if future is not None:
                future.set_exception(canceled)
            return
        self.jobs.fail(job_id, error)
        self.keys.release(job_id)
        self.failed += 1
        if future is not None:
            future.set_exception(error)
