"""`idforge serve --ray` for real: a local Ray cluster, two CPU model replicas on the tiny kit, PostgreSQL as the
shared store, HTTP from several clients. Killing a replica mid-job, and restarting the whole service with jobs
queued, lose no job and charge none twice (every credit is checked against the ledger). A webhook for a job a
model replica finished carries exactly the job's status body."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from idforge.server.app import ServerConfig
from idforge.server.db import Store
from idforge.server.webhooks import WebhookPolicy
from server_fixtures import WebhookReceiver, seed_request, wait_for

APP = "idforge"


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
        db_path=db, models_dirs=[str(tiny_kit)], queue_size=500, lease_s=2.0, result_ttl=600, webhooks=hooks
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


def test_many_clients_both_replicas_exact_balances(service):
    url, store, _ = service
    record, token = store.create_key(1000)

    def one(i: int) -> tuple[int, str | None, str | None]:
        with httpx.Client(timeout=300) as client:
            r = client.post(url + "/v1/insta-depth", json=seed_request(seed=i), headers={"x-api-key": token})
            return r.status_code, r.headers.get("x-seed"), r.headers.get("x-job-id")

    with ThreadPoolExecutor(10) as pool:  # 10 clients, 100 requests
        results = list(pool.map(one, range(100)))
    assert [code for code, _, _ in results] == [200] * 100
    assert sorted(int(seed) for _, seed, _ in results) == list(range(100))  # nothing lost, nothing mixed up
    replicas = {store.job(job_id)["replica"] for _, _, job_id in results}
    assert len(replicas) == 2  # both model replicas served
    after = store.get(record.id)
    assert (after.balance, after.spent) == (900, 100) and store.audit() == []
    health = httpx.get(url + "/health").json()
    assert health["store"] == "postgresql" and {r["replica"] for r in health["replicas"]} >= replicas
    assert sum(r["jobs_done"] for r in health["replicas"]) >= 100
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


def test_a_replica_killed_mid_job_its_job_completes_elsewhere_charged_once(service):
    import ray

    url, store, _ = service
    record, token = store.create_key(50)
    job = v2(url, token, num_inference_steps=40, seed=5)  # long enough to be caught running
    row = wait_for(
        lambda: (r := store.job(job["request_id"]))["status"] == "PROCESSING" and (r["step"] or 0) >= 2 and r,
        timeout=120,
    )
    victim = row["replica"]
    ray.kill(ray.get_actor("SERVE_REPLICA::" + victim, namespace="serve"), no_restart=True)
    final = wait_for(
        lambda: (s := status(job, token))["status"] in ("COMPLETED", "FAILED") and s, timeout=180
    )
    assert final["status"] == "COMPLETED", final
    assert final["attempts"] == 2 and final["replica"] != victim  # finished by another replica
    result = httpx.get(job["response_url"], headers={"x-api-key": token}).json()
    assert result["seed"] == 5 and result["output"]["image"]
    after = store.get(record.id)
    assert (after.spent, after.balance) == (4, 46) and store.audit() == []  # 40 steps = 4 credits, once
    healthy(url)  # Serve replaced the dead replica


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
