"""A worker that takes its jobs from the database: claim, hold the lease, run, settle. Many may share one store.

One worker owns one `Generator` (one Engine on one device) and runs one job at a time on its own thread, never on
an event loop; with `max_batch` > 1 it may claim several queued jobs that can share one denoising pass
(server/batching.py) and run them through the generator's `generate_batch`, each still settled on its own.
While a job runs, a lease keeper thread renews the lease (so the reaper knows the worker is alive) and writes step
progress; the step callback stops the job at the next step when cancel is asked, or when the
lease was lost (the job was given to someone else: our result would be refused anyway). The final state, the
charge and the webhook row commit together (`JobsRepository.complete`), so a worker killed at any instant costs at
most a repeated run, never a double charge. A database that goes away is waited out with backoff.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Histogram

from idforge.server.batching import payload_batch_key
from idforge.server.db import Claimed, JobFailure, Store, wakeup
from idforge.server.jobs import (
    BatchGenerator,
    Delivery,
    Generator,
    JobCanceled,
    JobOutput,
    JobSpec,
    ProgressCallback,
    _decode_payload,
    _map_exception,
    encode_jpeg,
)
from idforge.server.states import JobStatus

log = logging.getLogger("idforge.server.worker")

JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LeaseLost(Exception):
    """Raised from the step callback: the job is no longer ours (reaped after a stall); drop the work."""


class _PassStopped(Exception):
    """Raised from the step callback of a shared pass: some of its jobs were canceled or lost at this step."""


@dataclass
class WorkerConfig:
    replica: str
    device: str = "cpu"
    lease_s: float = 30.0  # a dead worker's job is requeued this long after its last renewal
    poll_s: float = 1.0  # fallback when a wake-up hint is lost
    progress_every_s: float = 0.2
    keep_result_s: float = 3600.0  # results are kept this long after the job ends (the hosted API: one hour)
    sync_keep_s: float = 600.0  # a /v1 image nobody took after this long is released (its waiter died)
    heartbeat_s: float = 2.0
    max_attempts: int = 3  # reaper: runs of one job before it is failed and refunded
    reap_every_s: float = 2.0
    max_batch: int = 1  # jobs that may share one denoising pass (server/batching.py); 1: one job at a time


def _is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.DBAPIError | sa.exc.TimeoutError)


class _LeaseKeeper:
    """Renews one job's lease every lease_s/3 and brings back its cancel flag; writes progress when asked."""

    def __init__(self, store: Store, job_id: str, config: WorkerConfig, stopping: threading.Event) -> None:
        self.store = store
        self.stopping = stopping  # the worker was stopped: let the lease run out so the job can go elsewhere
        self.job_id = job_id
        self.config = config
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.step: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"idforge-lease-{job_id[-6:]}", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def renew(self) -> None:
        step, total = self.step if self.step is not None else (None, None)
        try:
            lease = self.store.jobs_repo.renew(
                self.job_id, self.config.replica, self.config.lease_s, step, total
            )
        except Exception as exc:  # noqa: BLE001 - the database is away: keep running, try again next time
            if not _is_database_error(exc):
                raise
            log.warning(
                "lease renewal failed", extra={"fields": {"job_id": self.job_id, "error": str(exc)[:200]}}
            )
            return
        if not lease.owned:
            self.lost.set()
        if lease.cancel:
            self.cancel.set()

    def _run(self) -> None:
        while not self._stop.wait(self.config.lease_s / 3) and not self.stopping.is_set():
            self.renew()


class Worker:
    """Claims and runs jobs from `store` with `generator` until stopped. `snapshot()` is what /health shows."""

    def __init__(
        self,
        store: Store,
        generator: Generator,
        config: WorkerConfig,
        *,
        warm_up: bool | Sequence[str] = True,
    ) -> None:
        self.store = store
        self.generator = generator
        self.config = config
        # Load the models before the first claim (the replica reports "loading"): True for the generator's own
        # choice of methods, or the methods to warm up; False or () for none.
        self.warm_up = warm_up
        self.unavailable: dict[str, str] = {}  # methods whose models are missing, with the reason
        self.warm_up_s: float | None = None
        self.state = "starting"
        self.detail: str | None = None
        self.current: str | None = None
        self.jobs_done = 0
        self.jobs_failed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._leases: dict[str, _LeaseKeeper] = {}  # the running jobs' (several when they share a pass)
        self._thread: threading.Thread | None = None
        self._beat: threading.Thread | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self.registry = CollectorRegistry()
        self.job_seconds = Histogram(
            "job_seconds", "submission to end", ["outcome"], buckets=JOB_BUCKETS, registry=self.registry
        )
        self.step_seconds = Histogram(
            "step_seconds", "one denoising step", buckets=STEP_BUCKETS, registry=self.registry
        )

    # -- life cycle ------------------------------------------------------------------------------------------------
    def start(self) -> Worker:
        self._stop.clear()
        self._unsubscribe = [
            self.store.hub.subscribe(wakeup.QUEUED, lambda _payload: self._wake.set()),
            self.store.hub.subscribe(wakeup.CANCEL, self._on_cancel),
        ]
        self._thread = threading.Thread(
            target=self._main, name=f"idforge-worker-{self.config.replica}", daemon=True
        )
        self._thread.start()
        self._beat = threading.Thread(target=self._heartbeats, name="idforge-heartbeat", daemon=True)
        self._beat.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop claiming; wait up to `timeout` for the running job. True when the worker thread has ended (a
        job still running is left to its lease: the reaper or the next start queues it again)."""
        self._stop.set()
        self._wake.set()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._thread is not None:
            self._thread.join(timeout)
        ended = self._thread is None or not self._thread.is_alive()
        if ended:
            self.state = "stopped"
            self._report()
        return ended

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self) -> dict:
        return {
            "replica": self.config.replica,
            "device": self.config.device,
            "state": self.state,
            "detail": self.detail,
            "current_job": self.current,
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "unavailable": self.unavailable,
            "warm_up_s": self.warm_up_s,
        }

    def _on_cancel(self, job_id: str) -> None:
        lease = self._leases.get(job_id)
        if lease is not None:
            lease.cancel.set()

    # -- reporting -------------------------------------------------------------------------------------------------
    def _histograms(self) -> str:
        buckets: dict[str, dict] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    key = family.name + "|" + sample.labels.get("outcome", "")
                    buckets.setdefault(key, {})[sample.labels["le"]] = sample.value
                elif sample.name.endswith("_sum"):
                    key = family.name + "|" + sample.labels.get("outcome", "")
                    buckets.setdefault(key, {})["sum"] = sample.value
        return json.dumps(buckets)

    def _report(self) -> None:
        try:
            self.store.replicas_repo.heartbeat(
                self.config.replica,
                device=self.config.device,
                host=socket.gethostname(),
                pid=os.getpid(),
                state=self.state,
                detail=self.detail,
                current_job=self.current,
                jobs_done=self.jobs_done,
                jobs_failed=self.jobs_failed,
                histograms=self._histograms(),
            )
        except Exception as exc:  # noqa: BLE001 - reporting must never stop the work
            log.warning("heartbeat failed", extra={"fields": {"error": str(exc)[:200]}})

    def _heartbeats(self) -> None:
        last_reap = 0.0
        while not self._stop.is_set():
            self._report()
            if time.monotonic() - last_reap >= self.config.reap_every_s:
                last_reap = time.monotonic()
                try:  # every worker offers to reap; the store lets one at a time do it
                    report = self.store.jobs_repo.reap(self.config.max_attempts)
                    self.store.expire(time.time() - self.config.keep_result_s)
                    self.store.jobs_repo.release_undelivered(time.time() - self.config.sync_keep_s)
                    if report.requeued or report.failed:
                        log.warning("reaped expired leases", extra={"fields": report.__dict__})
                except Exception as exc:  # noqa: BLE001
                    log.warning("reaper failed", extra={"fields": {"error": str(exc)[:200]}})
            self._stop.wait(self.config.heartbeat_s)

    # -- the loop ----------------------------------------------------------------------------------------------------
    def _main(self) -> None:
        warm = getattr(self.generator, "warm_up", None)
        started = time.perf_counter()
        if self.warm_up and warm is not None:
            self.state, self.detail = "loading", "starting"
            self._report()

            def report(what: str) -> None:
                self.detail = what
                log.info("loading", extra={"fields": {"loading": what, "replica": self.config.replica}})

            try:
                unavailable = warm(report) if self.warm_up is True else warm(report, self.warm_up)
                self.unavailable = dict(unavailable or {})
            except Exception:  # noqa: BLE001 - a warm-up bug must not keep the replica from serving what it can
                log.error("warm-up failed", extra={"fields": {"trace": traceback.format_exc()}})
        self.warm_up_s = round(time.perf_counter() - started, 3)
        self.state, self.detail = "ready", None
        self._report()
        backoff = 0.5
        while not self._stop.is_set():
            try:
                claimed = self._claim()
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001
                if not _is_database_error(exc):
                    raise
                log.warning(
                    "claim failed; the database is unavailable", extra={"fields": {"error": str(exc)[:200]}}
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if not claimed:
                self._wake.wait(self.config.poll_s)
                self._wake.clear()
                continue
            if len(claimed) == 1:
                self.run(claimed[0])
            else:
                self.run_batch(claimed)

    def _claim(self) -> list[Claimed]:
        """The next job, or (max_batch > 1 and a generator with a batched path) the next jobs sharing a pass."""
        if self.config.max_batch > 1 and isinstance(self.generator, BatchGenerator):
            return self.store.jobs_repo.claim_many(
                self.config.replica, self.config.lease_s, self.config.max_batch, payload_batch_key
            )
        job = self.store.jobs_repo.claim(self.config.replica, self.config.lease_s)
        return [job] if job is not None else []

    def run(self, job: Claimed) -> str:
        """Run one claimed job to its end; returns the outcome (succeeded, failed, canceled, lost)."""
        started = time.time()
        self.state, self.current = "running", job.id
        self._report()
        outcome = "failed"
        with _LeaseKeeper(self.store, job.id, self.config, self._stop) as lease:
            self._leases = {job.id: lease}
            try:
                outcome = self._execute(job, lease, started)
            except Exception:  # noqa: BLE001 - the worker never dies of one job
                log.error(
                    "worker error", extra={"fields": {"job_id": job.id, "trace": traceback.format_exc()}}
                )
            finally:
                self._leases = {}
        self._count(job, outcome)
        self.state, self.current = "ready", None
        self._report()
        return outcome

    def _count(self, job: Claimed, outcome: str) -> None:
        if outcome == "succeeded":
            self.jobs_done += 1
        elif outcome == "failed":
            self.jobs_failed += 1
        if outcome != "lost":
            self.job_seconds.labels(outcome).observe(time.time() - job.created)

    def run_batch(self, claimed: list[Claimed]) -> dict[str, str]:
        """Run jobs that share a denoising pass; each is settled on its own (result, charge, webhook). A job
        canceled (or whose lease was lost) mid-pass stops the pass at that step: it is settled alone and the
        others run again in a new pass. Returns each job's outcome."""
        started = time.time()
        outcomes: dict[str, str] = {}
        self.state, self.current = "running", ",".join(job.id for job in claimed)
        self._report()
        with ExitStack() as stack:
            leases = {
                job.id: stack.enter_context(_LeaseKeeper(self.store, job.id, self.config, self._stop))
                for job in claimed
            }
            self._leases = leases
            try:
                pending: list[tuple[Claimed, JobSpec]] = []
                for job in claimed:  # a payload that does not decode fails its job alone
                    try:
                        pending.append((job, _decode_payload(job.method, job.payload)))
                    except Exception as exc:  # noqa: BLE001
                        outcomes[job.id] = self._finish(job, exc, started)
                while pending:
                    pending = self._batch_pass(pending, leases, started, outcomes)
            except Exception:  # noqa: BLE001 - the worker never dies of one batch
                log.error("worker error", extra={"fields": {"trace": traceback.format_exc()}})
            finally:
                self._leases = {}
        for job in claimed:
            self._count(job, outcomes.get(job.id, "failed"))
        self.state, self.current = "ready", None
        self._report()
        return outcomes

    def _batch_pass(
        self,
        pending: list[tuple[Claimed, JobSpec]],
        leases: dict[str, _LeaseKeeper],
        started: float,
        outcomes: dict[str, str],
    ) -> list[tuple[Claimed, JobSpec]]:
        """One pass over `pending`; returns the jobs to run again (when a cancel or a lost lease stopped it)."""
        stopped: dict[str, BaseException] = {}
        progress = self._progress([leases[job.id] for job, _ in pending], stopped)
        generator = self.generator
        assert isinstance(generator, BatchGenerator)  # _claim takes several jobs only for a batched generator
        try:
            results = generator.generate_batch([spec for _, spec in pending], progress)
        except _PassStopped:
            for job, _ in pending:
                if job.id in stopped:
                    outcomes[job.id] = self._finish(job, stopped[job.id], started)
            return [(job, spec) for job, spec in pending if job.id not in stopped]
        except Exception as exc:  # noqa: BLE001 - the pass itself failed (models missing, a bug): every job fails
            results = [exc] * len(pending)
        for (job, _), result in zip(pending, results, strict=True):
            outcomes[job.id] = self._finish(job, result, started, batch=len(pending))
        return []

    def _progress(self, leases: list[_LeaseKeeper], stopped: dict[str, BaseException]) -> ProgressCallback:
        """The step callback of a run: step times, progress and lease renewal for each job; stops the run at
        this step when a job's cancel was asked or its lease was lost (`stopped` says which, and why)."""
        last_write = [0.0]
        last_step = [time.perf_counter()]

        def progress(step: int, total: int) -> None:
            now = time.perf_counter()
            if step > 0:
                self.step_seconds.observe(now - last_step[0])
            last_step[0] = now
            write = now - last_write[0] >= self.config.progress_every_s or step >= total
            if write:
                last_write[0] = now
            for lease in leases:
                lease.step = (int(step), int(total))
                if write:
                    lease.renew()
                if lease.lost.is_set():
                    stopped[lease.job_id] = LeaseLost(lease.job_id)
                elif lease.cancel.is_set():
                    stopped[lease.job_id] = JobCanceled(f"canceled while running, at step {step} of {total}")
            if stopped:
                if len(leases) == 1:
                    raise next(iter(stopped.values()))
                raise _PassStopped()

        return progress

    def _execute(self, job: Claimed, lease: _LeaseKeeper, started: float) -> str:
        try:
            spec = _decode_payload(job.method, job.payload)
            output = self.generator.generate(spec, self._progress([lease], {}))
        except BaseException as exc:  # noqa: BLE001 - every failure must settle the job and its credits
            return self._finish(job, exc, started)
        return self._finish(job, output, started)

    def _finish(self, job: Claimed, output: JobOutput | BaseException, started: float, batch: int = 1) -> str:
        """Settle one job from its output or its exception; returns the outcome."""
        try:
            if isinstance(output, BaseException):
                raise output
            timings = {
                "queue_s": round(started - job.created, 4),
                "inference_s": round(time.time() - started, 4),
            }
            if batch > 1:
                timings["batch_jobs"] = batch
            delivery = Delivery(
                images=[encode_jpeg(image) for image in output.images],
                seeds=[int(s) for s in output.seeds],
                extras={name: encode_jpeg(image) for name, image in output.extras.items()},
                warnings=list(output.warnings),
                timings=timings | {k: round(float(v), 4) for k, v in output.timings.items()},
                recipe=dict(output.recipe),
            )
        except LeaseLost:
            log.warning("lease lost; dropping the job's work", extra={"fields": {"job_id": job.id}})
            return "lost"
        except JobCanceled as exc:
            message = str(exc)
            ended = self._settle(lambda: self.store.jobs_repo.canceled(job.id, self.config.replica, message))
            return "canceled" if ended else "lost"
        except BaseException as exc:  # noqa: BLE001 - every failure must settle the job and its credits
            error = _map_exception(exc)
            if error.status >= 500:
                log.error(
                    "job failed",
                    extra={"fields": {"job_id": job.id, "error": repr(exc), "trace": traceback.format_exc()}},
                )
            failure = JobFailure(error.status, error.message, error.field)
            return (
                "failed"
                if self._settle(lambda: self.store.jobs_repo.fail(job.id, self.config.replica, failure))
                else "lost"
            )
        result = delivery.to_json()
        status = self._settle(
            lambda: self.store.jobs_repo.complete(
                job.id, self.config.replica, result, charge=not job.sync, metrics=delivery.timings
            )
        )
        return {JobStatus.COMPLETED: "succeeded", JobStatus.CANCELED: "canceled", None: "lost"}[status]

    def _settle(self, call: Callable[[], Any]) -> Any:
        """Commit a final state, retrying while the database is away (until our lease would have run out)."""
        deadline = time.monotonic() + 2 * self.config.lease_s
        delay = 0.2
        while True:
            try:
                return call()
            except Exception as exc:  # noqa: BLE001
                if not _is_database_error(exc) or time.monotonic() > deadline:
                    raise
                log.warning("settling failed; retrying", extra={"fields": {"error": str(exc)[:200]}})
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
