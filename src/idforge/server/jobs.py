"""Jobs: the SQLite job table, a bounded queue and the ONE worker thread that owns the models.

Every generation, synchronous (/v1) or not (/v2), is a job row. The HTTP side only submits and waits on a future;
the worker thread runs jobs one at a time through the injected `Generator` (which holds the Engine, so models are
loaded once and never touched by two threads). Credits are reserved at submission and settled by the worker:
committed when the result is stored, released when the job failed. On start-up, queued and running /v2 jobs are
queued again (nothing is lost); /v1 jobs whose client is gone are failed and refunded; stray reservations are
settled from their job's final state.
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
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from idforge.server.store import ConnectionPool, KeyStore

log = logging.getLogger("idforge.server.jobs")

ProgressCallback = Callable[[int, int], None]


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


class Generator(Protocol):
    """Runs one job; called only from the worker thread."""

    def generate(self, spec: JobSpec, progress: ProgressCallback) -> JobOutput: ...


class JobError(Exception):
    """A job failed in a way the client should hear about: HTTP status, one-line message, the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field = field
        super().__init__(message)


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the queue is full; retry after {retry_after} s")


class ServerStopping(Exception):
    pass


@dataclass
class Delivery:
    """A finished job, encoded: JPEG bytes of each image, extras as JPEG, seeds, warnings, timings."""

    images: list[bytes]
    seeds: list[int]
    extras: dict[str, bytes]
    warnings: list[str]
    timings: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(
            {
                "images": [base64.b64encode(b).decode("ascii") for b in self.images],
                "seeds": self.seeds,
                "extras": {k: base64.b64encode(v).decode("ascii") for k, v in self.extras.items()},
                "warnings": self.warnings,
                "timings": self.timings,
            }
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

ACTIVE = ("queued", "running")


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
    """The jobs table (in the same SQLite file as the keys by default)."""

    def __init__(self, path: str | Path) -> None:
        self.pool = ConnectionPool(path)
        self.pool.get().executescript(_SCHEMA)

    def insert(self, job_id: str, spec: JobSpec, key_id: str, cost: int, sync: bool) -> None:
        with self.pool.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, method, key_id, sync, status, cost, payload, created) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, spec.method, key_id, int(sync), cost, _encode_payload(spec), time.time()),
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.pool.get().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def spec(self, job_id: str) -> JobSpec:
        row = self.pool.get().execute("SELECT method, payload FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _decode_payload(row["method"], row["payload"])

    def mark_running(self, job_id: str) -> None:
        with self.pool.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'running', started = ? WHERE id = ?", (time.time(), job_id)
            )

    def finish(self, job_id: str, delivery: Delivery | None, keep_result: bool) -> None:
        """Succeeded: store the result (for /v2) and drop the payload (the input images are no longer needed)."""
        with self.pool.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'succeeded', result = ?, payload = NULL, finished = ? WHERE id = ?",
                (delivery.to_json() if keep_result and delivery else None, time.time(), job_id),
            )

    def fail(self, job_id: str, error: JobError) -> None:
        with self.pool.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'failed', error = ?, error_status = ?, error_field = ?, payload = NULL, "
                "finished = ? WHERE id = ?",
                (error.message, error.status, error.field, time.time(), job_id),
            )

    def active(self) -> list[dict[str, Any]]:
        rows = (
            self.pool.get()
            .execute("SELECT id, sync, status FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq")
            .fetchall()
        )
        return [dict(row) for row in rows]

    def requeue(self, job_id: str) -> None:
        with self.pool.transaction() as conn:
            conn.execute("UPDATE jobs SET status = 'queued', started = NULL WHERE id = ?", (job_id,))

    def counts(self) -> dict[str, int]:
        rows = self.pool.get().execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {row["status"]: int(row["n"]) for row in rows}

    def close(self) -> None:
        self.pool.close()


@dataclass
class Submitted:
    job_id: str
    position: int
    future: Future | None
    balance: int


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
    """The bounded queue and its single worker thread."""

    def __init__(
        self,
        jobs: JobStore,
        keys: KeyStore,
        generator: Generator,
        *,
        capacity: int = 32,
        retry_after: int = 5,
    ) -> None:
        self.jobs = jobs
        self.keys = keys
        self.generator = generator
        self.capacity = capacity
        self.retry_after = retry_after
        self._pending: deque[str] = deque()
        self._futures: dict[str, Future] = {}
        self._progress: dict[str, tuple[int, int]] = {}
        self._running: str | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._abandon = False
        self.completed = 0
        self.failed = 0

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
            if job is None or job["status"] == "failed":
                self.keys.release(ref)
            elif job["status"] == "succeeded":
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

    # -- submission ------------------------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, key_id: str, cost: int, *, sync: bool) -> Submitted:
        """Reserve credits, store the job and queue it; QueueFull or NotEnoughCredits before anything is kept."""
        job_id = "req_" + uuid.uuid4().hex
        with self._cond:
            if self._stopping:
                raise ServerStopping()
            if len(self._pending) + (self._running is not None) >= self.capacity:
                raise QueueFull(self.retry_after)
            balance = self.keys.reserve(key_id, cost, job_id)
            try:
                self.jobs.insert(job_id, spec, key_id, cost, sync)
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

    def cancel_waiter(self, job_id: str) -> None:
        """A /v1 client went away before its job started: drop the job and refund it."""
        with self._cond:
            if job_id in self._pending:
                self._pending.remove(job_id)
                self._futures.pop(job_id, None)
                self.jobs.fail(job_id, JobError(499, "the client closed the connection before the job ran"))
                self.keys.release(job_id)

    def position(self, job_id: str) -> int | None:
        with self._cond:
            try:
                return self._pending.index(job_id) + 1
            except ValueError:
                return None

    def progress(self, job_id: str) -> tuple[int, int] | None:
        return self._progress.get(job_id)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "queued": len(self._pending),
                "running": int(self._running is not None),
                "capacity": self.capacity,
                "completed": self.completed,
                "failed": self.failed,
                "worker_alive": self.alive,
            }

    # -- the worker ------------------------------------------------------------------------------------------------
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
        while True:
            job_id = self._next()
            if job_id is None:
                return
            try:
                self._run_one(job_id)
            except Exception:  # the worker never dies: a bug in one job fails that job only
                log.error(
                    "worker error", extra={"fields": {"job_id": job_id, "trace": traceback.format_exc()}}
                )
            finally:
                with self._cond:
                    self._running = None
                    self._progress.pop(job_id, None)

    def _run_one(self, job_id: str) -> None:
        started = time.perf_counter()
        self.jobs.mark_running(job_id)
        row = self.jobs.get(job_id)
        queued_s = time.time() - row["created"]
        self._progress[job_id] = (0, 0)

        def progress(step: int, total: int) -> None:
            self._progress[job_id] = (int(step), int(total))

        delivery: Delivery | None = None
        error: JobError | None = None
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
            )
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
        if error is None:
            self.jobs.finish(job_id, delivery, keep_result=not row["sync"])
            self.keys.commit(job_id)  # charged only once the image exists and is stored
            self.completed += 1
            if future is not None:
                future.set_result(delivery)
        else:
            self.jobs.fail(job_id, error)
            self.keys.release(job_id)
            self.failed += 1
            if future is not None:
                future.set_exception(error)
