"""The database-driven worker on both backends: shared queue, replica death, cancel at a step, lost leases, and a
PostgreSQL server that restarts under a running worker."""

from __future__ import annotations

import json
import threading
import time

import pytest
from PIL import Image

from idforge.server.db import NewJob, Store
from idforge.server.jobs import Delivery, JobError, JobOutput, JobSpec, _encode_payload
from idforge.server.worker import Worker, WorkerConfig


class StepGenerator:
    """Runs `num_inference_steps` steps of `step_s` each, reporting progress; prompt "fail" is a bad input."""

    def __init__(self, step_s: float = 0.0) -> None:
        self.step_s = step_s
        self.steps_run: dict[str, int] = {}
        self.gate = threading.Event()
        self.gate.set()

    def generate(self, spec: JobSpec, progress) -> JobOutput:
        self.gate.wait(60)
        total = spec.params["num_inference_steps"]
        name = spec.params["prompt"]
        for step in range(1, total + 1):
            time.sleep(self.step_s)
            self.steps_run[name] = step
            progress(step, total)
        if name == "fail":
            raise JobError(400, "face_image: no face found", "face_image")
        return JobOutput(images=[Image.new("RGB", (8, 8), (step, 0, 0))], seeds=[spec.params["seed"]])


def queue_job(
    store: Store, key_id: str, job_id: str, prompt: str = "p", steps: int = 4, seed: int = 0
) -> None:
    spec = JobSpec("insta-depth", {"prompt": prompt, "num_inference_steps": steps, "seed": seed}, {})
    store.submit_job(NewJob(job_id, spec.method, _encode_payload(spec), key_id, 1, sync=False))


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def config(name: str, **overrides) -> WorkerConfig:
    return WorkerConfig(replica=name, **({"lease_s": 3.0, "poll_s": 0.5, "heartbeat_s": 0.2} | overrides))


@pytest.fixture
def store(db_url):
    s = Store.open(db_url)
    yield s
    s.close()


def test_two_workers_share_the_queue_and_charge_exactly(db_url, store):
    record, _ = store.create_key(100)
    generator = StepGenerator(step_s=0.005)
    workers = [Worker(Store.open(db_url), generator, config(f"w{i}")).start() for i in range(2)]
    try:
        for i in range(30):
            queue_job(store, record.id, f"req_{i:02d}", seed=i)
        wait_for(lambda: store.counts().get("COMPLETED") == 30, what="30 jobs")
        seeds = [Delivery.from_json(store.job(f"req_{i:02d}")["result"]).seeds for i in range(30)]
        assert seeds == [[i] for i in range(30)]
        served = {store.job(f"req_{i:02d}")["replica"] for i in range(30)}
        assert served == {"w0", "w1"}
        # a worker counts a job just after its commit: wait for the counters, not only the rows
        wait_for(lambda: sum(w.jobs_done for w in workers) == 30, what="the workers' counters")
        assert store.get(record.id).spent == 30 and store.get(record.id).balance == 70 and store.audit() == []
        health = wait_for(
            lambda: [r for r in store.replicas() if r["jobs_done"] > 0 and r["state"] == "ready"]
        )
        assert {r["id"] for r in health} <= {"w0", "w1"}
        histograms = json.loads(health[0]["histograms"])
        assert histograms["job_seconds|succeeded"]["+Inf"] >= 1 and histograms["step_seconds|"]["+Inf"] >= 4
    finally:
        for w in workers:
            w.stop()
            w.store.close()


def test_a_dead_workers_job_is_finished_by_another_charged_once(db_url, store):
    record, _ = store.create_key(5)
    queue_job(store, record.id, "req_dead", seed=9)
    assert store.jobs_repo.claim("crashed-replica", lease_s=0.3).id == "req_dead"  # ... and then it died
    survivor = Worker(Store.open(db_url), StepGenerator(), config("survivor", reap_every_s=0.1)).start()
    try:
        row = wait_for(lambda: (r := store.job("req_dead"))["status"] == "COMPLETED" and r, what="reaped job")
        assert (row["replica"], row["attempts"]) == ("survivor", 2)
        assert store.get(record.id).spent == 1 and store.audit() == []
    finally:
        survivor.stop()
        survivor.store.close()


def test_cancel_stops_a_running_job_at_the_next_step(db_url, store):
    record, _ = store.create_key(5)
    generator = StepGenerator(step_s=0.05)
    worker = Worker(Store.open(db_url), generator, config("w")).start()
    try:
        queue_job(store, record.id, "req_long", prompt="long", steps=100)
        wait_for(lambda: generator.steps_run.get("long", 0) >= 3, what="the job to run")
        assert store.cancel("req_long", record.id) == "stopping"
        row = wait_for(lambda: (r := store.job("req_long"))["status"] == "CANCELED" and r, what="cancel")
        assert generator.steps_run["long"] < 20  # stopped within a few steps, not at the end
        assert row["step"] >= 1 and row["total_steps"] == 100  # progress was written while it ran
        assert store.get(record.id).balance == 5 and store.get(record.id).spent == 0 and store.audit() == []
        queue_job(store, record.id, "req_bad", prompt="fail")
        row = wait_for(lambda: (r := store.job("req_bad"))["status"] == "FAILED" and r, what="failure")
        assert (row["error_status"], row["error_field"]) == (400, "face_image")
        assert store.get(record.id).balance == 5
        wait_for(lambda: worker.jobs_failed == 1, what="the failure counted")  # counted after its commit
    finally:
        worker.stop()
        worker.store.close()


def test_a_stalled_worker_loses_its_lease_and_its_late_result_is_refused(db_url, store):
    record, _ = store.create_key(5)
    stalled = StepGenerator()
    stalled.gate.clear()
    slow = Worker(Store.open(db_url), stalled, config("stalled", lease_s=0.3, reap_every_s=60)).start()
    try:
        queue_job(store, record.id, "req_s", prompt="s")
        wait_for(lambda: store.job("req_s")["status"] == "PROCESSING", what="claim")
        slow._stop.set()  # the worker "freezes": its lease keeper stops renewing, the lease runs out
        time.sleep(0.5)
        assert store.jobs_repo.reap().requeued == ["req_s"]
        assert store.jobs_repo.claim("other", 30).id == "req_s"
        stalled.gate.set()  # the frozen worker wakes up and finishes: refused, not charged
        wait_for(lambda: not slow.alive, what="the stalled worker to end")
        assert store.job("req_s")["status"] == "PROCESSING" and store.job("req_s")["lease_owner"] == "other"
        assert store.jobs_repo.complete("req_s", "other", "{}") and store.get(record.id).spent == 1
        assert store.audit() == []
    finally:
        slow.stop()
        slow.store.close()


def test_postgres_restart_under_a_running_worker(postgres):
    """The server stops and starts again while a worker waits: no job lost, none charged twice."""
    url = postgres.create_database()
    store = Store.open(url)
    record, _ = store.create_key(10)
    worker = Worker(Store.open(url), StepGenerator(step_s=0.01), config("w", poll_s=0.2)).start()
    try:
        queue_job(store, record.id, "req_before")
        wait_for(lambda: store.job("req_before")["status"] == "COMPLETED", what="first job")
        postgres.stop()
        time.sleep(1.0)  # the worker's claims fail meanwhile; it backs off
        postgres.start_again()
        queue_job(store, record.id, "req_after")
        wait_for(
            lambda: store.job("req_after")["status"] == "COMPLETED", timeout=90, what="job after restart"
        )
        assert store.get(record.id).spent == 2 and store.audit() == []
    finally:
        worker.stop()
        worker.store.close()
        store.close()


def test_single_process_server_and_keys_cli_on_postgres(postgres, capsys):
    """`idforge keys` and the one-process server work on PostgreSQL exactly as on SQLite."""
    import httpx

    from idforge.cli import main
    from server_fixtures import FakeGenerator, running_server, seed_request

    url = postgres.create_database()
    assert main(["keys", "create", "--credits", "5", "--name", "pg", "--db", url]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["keys", "list", "--db", url]) == 0 and " 5 " in capsys.readouterr().out
    with running_server(url, FakeGenerator()) as (base, keys):
        assert keys.authenticate(token).name == "pg"
        response = httpx.post(
            base + "/v1/insta-depth", json=seed_request(), headers={"x-api-key": token}, timeout=30
        )
        assert response.status_code == 200 and response.headers["x-remaining-credits"] == "4"
        job = httpx.post(base + "/v2/insta-depth", json=seed_request(), headers={"x-api-key": token}).json()
        final = wait_for(
            lambda: (
                (s := httpx.get(job["status_url"], headers={"x-api-key": token}).json())["status"]
                == "COMPLETED"
                and s
            )
        )
        assert final["attempts"] == 1 and final["replica"].startswith("embedded-")
        assert httpx.get(base + "/health").json()["store"] == "postgresql"
    assert main(["keys", "topup", token, "3", "--db", url]) == 0
    assert "6 credits" in capsys.readouterr().out


def test_wrong_or_unreachable_db_is_one_line_from_the_cli(capsys):
    from idforge.cli import main
    from idforge.server.runner import free_port

    assert main(["keys", "list", "--db", f"postgresql://idforge@127.0.0.1:{free_port()}/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("idforge: error: --db postgresql://idforge@127.0.0.1:") and "cannot connect" in err
    assert "\n" not in err
    assert main(["serve", "--db", "mysql://u@h/db"]) == 2
    assert "unknown scheme 'mysql'" in capsys.readouterr().err


def test_the_api_answers_503_while_postgres_is_down_and_recovers(postgres):
    import httpx

    from server_fixtures import FakeGenerator, running_server, seed_request

    url = postgres.create_database()
    with running_server(url, FakeGenerator()) as (base, keys):
        record, token = keys.create_key(5)
        headers = {"x-api-key": token}
        postgres.stop()
        try:
            down = httpx.post(base + "/v2/insta-depth", json=seed_request(), headers=headers, timeout=30)
            assert down.status_code == 503 and down.headers["retry-after"] == "5"
            assert "database is unavailable" in down.json()["error"]
        finally:
            postgres.start_again()
        job = wait_for(
            lambda: (
                (r := httpx.post(base + "/v2/insta-depth", json=seed_request(), headers=headers)).status_code
                == 202
                and r.json()
            ),
            timeout=30,
        )
        wait_for(
            lambda: httpx.get(job["status_url"], headers=headers).json()["status"] == "COMPLETED", timeout=30
        )
        assert keys.get(record.id).spent == 1 and keys.audit() == []  # the refused request cost nothing
