"""`idforge serve --ray` for real: a local Ray cluster, two CPU model replicas on the tiny kit, PostgreSQL as the
shared store, HTTP from several clients. The README's claim in one test: 100 requests from 10 clients over 2
replicas with a replica killed mid-load lose nothing, charge nothing twice, leave every balance exact and deliver
every job's webhook once. Cancel stops a running job on a replica and releases its credits; a full queue answers
503 with Retry-After and reserves nothing; restarting the whole service with jobs queued loses none. A webhook for
a job a model replica finished carries exactly the job's status body."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from idforge.server.app import ServerConfig
from idforge.server.db import Store
from idforge.server.webhooks import WebhookPolicy
from server_fixtures import WebhookReceiver, seed_request, wait_for

APP = "idforge"
pytestmark = pytest.mark.timeout(600)  # the first test also pays for the cluster, the deploy and the warm-up
QUEUE = 40  # queued + running jobs the service takes before it answers 503
TERMINAL = ("COMPLETED", "FAILED", "CANCELED")


def deploy(config: ServerConfig) -> None:
    from ray import serve

    from idforge.server.ray_serve import RayOptions, build_application

    options = RayOptions(replicas=2, model_cpus=0.5, ingress_cpus=0.25, health_check_period_s=1.0)
    serve.run(build_application(config, options), name=APP, route_prefix="/")


def healthy(url: str, replicas: int = 2) -> dict:
    def ready():
        try:
            body = httpx.get(url + "/health", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return None
        serving = [r for r in body.get("replicas", []) if r["state"] in ("ready", "running")]
        return body if body.get("ready") and len(serving) >= replicas else None

    return wait_for(ready, timeout=120, interval=0.5)


@pytest.fixture(scope="module")
def service(ray_serve_url, postgres, tiny_kit):
    db = postgres.create_database()
    store = Store.open(db)
    hooks = WebhookPolicy(
        allow_hosts=("127.0.0.1",), timeout=2.0, first_retry=0.2, max_interval=0.5, retry_for=120
    )
    config = ServerConfig(
        db_path=db,
        models_dirs=[str(tiny_kit)],
        queue_size=QUEUE,
        lease_s=2.0,
        result_ttl=600,
        webhooks=hooks,
        cancel_wait_s=300,  # a cancel answers once the replica has stopped, however loaded the machine
    )
    deploy(config)
    healthy(ray_serve_url)
    yield ray_serve_url, store, config
    from ray import serve

    serve.delete(APP)
    store.close()


def v2(url: str, token: str, **body) -> dict:
    response = httpx.post(
        url + "/v2/insta-depth", json=seed_request(**body), headers={"x-api-key": token}, timeout=60
    )
    assert response.status_code == 202, response.text
    return response.json()


def status(job: dict, token: str) -> dict:
    return httpx.get(job["status_url"], headers={"x-api-key": token}, timeout=30).json()


@pytest.mark.timeout(900)
def test_100_requests_10_clients_2_replicas_one_killed_mid_load(service):
    """Nothing lost, nothing charged twice, every balance exact, every job's webhook delivered once."""
    import ray

    url, store, _ = service
    record, token = store.create_key(1000)
    secret = store.webhook_secret(record.id)
    headers = {"x-api-key": token}
    receiver = WebhookReceiver()
    submitted: list[str] = []
    finished: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> tuple[dict, dict]:
        with httpx.Client(timeout=120, headers=headers) as client:
            body = seed_request(seed=i, webhook_url=receiver.url)
            accepted = client.post(url + "/v2/insta-depth", json=body)
            assert accepted.status_code == 202, accepted.text
            job = accepted.json()
            with lock:
                submitted.append(job["request_id"])
            final = wait_for(
                lambda: (s := client.get(job["status_url"]).json())["status"] in TERMINAL and s,
                timeout=600,
                interval=0.1,
            )
            with lock:
                finished.append(job["request_id"])
            return job, final

    def running_job() -> tuple[str, str] | None:
        with lock:
            candidates = [j for j in submitted if j not in finished]
        for job_id in candidates:
            row = store.job(job_id)
            if row["status"] == "PROCESSING" and row["replica"]:
                return job_id, row["replica"]
        return None

    try:
        with ThreadPoolExecutor(10) as pool:  # 10 clients, each one request at a time, 100 in all
            futures = [pool.submit(one, i) for i in range(100)]
            wait_for(lambda: len(finished) >= 20, timeout=600, interval=0.1)  # mid-load
            victim_job, victim = wait_for(running_job, timeout=120, interval=0.01)
            ray.kill(ray.get_actor("SERVE_REPLICA::" + victim, namespace="serve"), no_restart=True)
            results = [future.result() for future in futures]
        assert [final["status"] for _, final in results] == ["COMPLETED"] * 100, [
            final for _, final in results if final["status"] != "COMPLETED"
        ][:3]
        seeds = sorted(httpx.get(j["response_url"], headers=headers).json()["seed"] for j, _ in results)
        assert seeds == list(range(100))  # nothing lost, nothing mixed up
        rows = {j["request_id"]: store.job(j["request_id"]) for j, _ in results}
        killed = rows[victim_job]
        assert killed["attempts"] == 2 and killed["replica"] != victim, killed  # finished by another replica
        assert len({row["replica"] for row in rows.values()}) >= 2  # both model replicas served
        after = store.get(record.id)
        assert (after.balance, after.spent) == (900, 100) and store.audit() == []  # 1 credit each, once
        assert store.held() == {}

        # every job's webhook: one delivery id, delivered once (the receiver answers 200), signed, COMPLETED
        wait_for(lambda: all(receiver.for_job(j) for j in rows), timeout=300, interval=0.2)
        time.sleep(1.5)  # longer than the retry interval: a second delivery would have come by now
        for job_id in rows:
            attempts = receiver.for_job(job_id)
            assert len(attempts) == 1, (job_id, len(attempts))
            (hook_headers, raw), *_ = attempts
            body = Webhook(secret).verify(raw, hook_headers)
            assert body["status"] == "COMPLETED" and body["request_id"] == job_id
        assert len({h["webhook-id"] for j in rows for h, _ in receiver.for_job(j)}) == 100
    finally:
        receiver.close()
    health = healthy(url)  # Serve replaced the dead replica
    assert health["store"] == "postgresql"
    metrics = httpx.get(url + "/metrics").text
    assert 'idforge_jobs{state="COMPLETED"}' in metrics and "idforge_step_seconds_bucket" in metrics
    assert "idforge_credits_charged_total 100.0" in metrics


def test_a_webhook_for_a_job_a_replica_finished_is_its_status_body(service):
    """The body is made where the job ends (in the model replica's own Store, in the job's final transaction) and
    sent by the ingress: it must be what a poller of the status sees, not a poorer default."""
    url, store, _ = service
    record, token = store.create_key(10)
    secret = store.webhook_secret(record.id)
    receiver = WebhookReceiver()
    try:
        job = v2(url, token, seed=11, webhook_url=receiver.url)
        attempts = wait_for(lambda: receiver.for_job(job["request_id"]), timeout=180, interval=0.2)
        (headers, raw), *_ = attempts
        sent = Webhook(secret).verify(raw, headers)  # signed by the key's secret
        polled = status(job, token)
    finally:
        receiver.close()
    row = store.job(job["request_id"])
    assert row["status"] == "COMPLETED" and "ModelReplica" in row["replica"]  # ended on a Ray model replica
    assert sent == polled
    assert raw == json.dumps(polled, separators=(",", ":")).encode()  # the very same JSON, key order too
    assert {"metrics", "attempts", "replica", "credits", "finished_at", "status_url"} <= set(sent)


def test_cancel_on_ray_stops_the_running_job_on_its_replica_and_releases_credits(service):
    url, store, _ = service
    record, token = store.create_key(20)
    job = v2(url, token, num_inference_steps=100, seed=9)
    row = wait_for(
        lambda: (r := store.job(job["request_id"]))["status"] == "PROCESSING" and (r["step"] or 0) >= 1 and r,
        timeout=180,
        interval=0.02,
    )
    assert "ModelReplica" in row["replica"] and store.get(record.id).balance == 10  # 10 credits reserved
    answer = httpx.post(job["cancel_url"], headers={"x-api-key": token}, timeout=330).json()
    assert answer["action"] == "stopped" and answer["status"] == "CANCELED" and answer["credits_released"]
    final = status(job, token)
    assert final["status"] == "CANCELED" and "of 100" in final["error"], final
    after = store.get(record.id)
    assert (after.balance, after.spent) == (20, 0) and store.audit() == []
    again = httpx.post(job["cancel_url"], headers={"x-api-key": token}, timeout=60).json()
    assert again["action"] == "already_finished" and again["credits_released"] is False
    nxt = v2(url, token, seed=10)  # the replica goes on working
    done = wait_for(lambda: (s := status(nxt, token))["status"] in TERMINAL and s, timeout=180)
    assert done["status"] == "COMPLETED" and store.get(record.id).spent == 1


def test_overload_on_ray_answers_503_with_retry_after_and_reserves_nothing(service):
    url, store, config = service
    record, token = store.create_key(10_000)
    headers = {"x-api-key": token}
    accepted, refused = [], None
    with httpx.Client(timeout=60, headers=headers) as client:
        for i in range(QUEUE + 5):
            response = client.post(
                url + "/v2/insta-depth", json=seed_request(num_inference_steps=100, seed=i)
            )
            if response.status_code == 503:
                refused = response
                break
            assert response.status_code == 202, response.text
            accepted.append(response.json())
        assert refused is not None, f"{len(accepted)} jobs taken, never a 503"
        assert QUEUE - 2 <= len(accepted) <= QUEUE  # (at most the two running jobs left from earlier tests)
        assert refused.headers["retry-after"] == str(config.retry_after)
        assert refused.json()["status"] == 503
        assert refused.headers["x-remaining-credits"] == str(10_000 - 10 * len(accepted))  # nothing reserved
        # newest first: the queued ones go at once (removed); the oldest were running and stop, or (a replica
        # quicker than the cancels) had finished; their next queued job may have started meanwhile
        newest_first = accepted[::-1]
        actions = [client.post(job["cancel_url"], timeout=330).json()["action"] for job in newest_first]
    assert set(actions) <= {"removed", "stopped", "already_finished"}, actions
    assert actions[: len(actions) - 4] == ["removed"] * (len(actions) - 4), actions  # 2 replicas, 2 jobs each
    expected = {"removed": "CANCELED", "stopped": "CANCELED", "already_finished": "COMPLETED"}
    for job, action in zip(newest_first, actions, strict=True):
        assert status(job, token)["status"] == expected[action], (job["request_id"], action)
    finished = actions.count("already_finished")
    after = store.get(record.id)  # exactly the finished ones charged (10 credits each), once
    assert (after.balance, after.spent) == (10_000 - 10 * finished, 10 * finished) and store.audit() == []
    assert store.held() == {}


def test_restart_of_the_whole_service_with_jobs_queued(service):
    from ray import serve

    url, store, config = service
    record, token = store.create_key(100)
    # 40 steps each: long enough that most are still queued or running when the app goes, on a quiet machine too
    jobs = [v2(url, token, num_inference_steps=40, seed=100 + i) for i in range(6)]
    serve.delete(APP)  # everything goes: replicas mid-job, the queue stays in PostgreSQL
    assert store.counts().get("QUEUED", 0) + store.counts().get("PROCESSING", 0) >= 2
    from idforge.server.ray_serve import app_builder

    # back up through the Serve config file's entry point (deploy/ray-serve.yaml's import_path)
    args = {
        "db": config.db_path,
        "models": config.models_dirs,
        "replicas": 2,
        "model_cpus": 0.5,
        "lease_s": 2,
    }
    serve.run(app_builder(args), name=APP, route_prefix="/")
    healthy(url)
    for job in jobs:
        final = wait_for(
            lambda j=job: (s := status(j, token))["status"] in ("COMPLETED", "FAILED") and s, timeout=180
        )
        assert final["status"] == "COMPLETED", final
    seeds = sorted(httpx.get(j["response_url"], headers={"x-api-key": token}).json()["seed"] for j in jobs)
    assert seeds == [100 + i for i in range(6)]
    after = store.get(record.id)
    assert (after.spent, after.balance) == (24, 76) and store.audit() == []  # 6 x 4 credits, each once


def test_the_documented_serve_config_is_valid():
    """deploy/ray-serve.yaml passes Ray Serve's own schema, and its import path is our builder."""
    import importlib
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    text = (Path(__file__).parents[1] / "deploy" / "ray-serve.yaml").read_text()
    config = ServeDeploySchema.model_validate(yaml.safe_load(text))
    (application,) = config.applications
    module, _, name = application.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    assert application.args["db"].startswith("postgresql://") and application.args["replicas"] >= 1
    assert {getattr(d, "name", None) or d["name"] for d in application.deployments} == {
        "ModelReplica",
        "Ingress",
    }
