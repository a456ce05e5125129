"""Queue, credit and robustness mechanics of the HTTP server, against a real uvicorn server on loopback.

The generator is a fake here (instant grey images, controllable timing and failures): these tests are about the
queue, the accounting and the error contract. Real generation on the tiny kit is in test_server_api.py.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server_fixtures import FakeGenerator, running_server, seed_request, wait_for


@pytest.fixture(scope="module")
def fake():
    return FakeGenerator()


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake):
    db = tmp_path_factory.mktemp("queue") / "server.db"
    with running_server(db, fake, queue_size=4, retry_after=7, max_body_bytes=200_000) as (url, keys):
        yield url, keys


def post(url, token, path="/v1/insta-depth", **body):
    return httpx.post(url + path, json=seed_request(**body), headers={"x-api-key": token}, timeout=60)


def test_concurrent_requests_never_overdraw(server, fake):
    url, keys = server
    record, token = keys.create_key(3)
    fake.gate.clear()  # hold the worker so every request is in flight at once

    def one(_):
        return post(url, token).status_code

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        time.sleep(0.5)
        fake.gate.set()
        codes = sorted(f.result() for f in futures)
    # 3 credits for 12 simultaneous requests (the queue has room for 4): exactly 3 images, 9 refusals
    assert codes == [200] * 3 + [406] * 9
    after = keys.get(record.id)
    assert (after.balance, after.spent) == (0, 3)
    assert keys.held() == {}


def test_credits_run_out_with_406(server):
    url, keys = server
    record, token = keys.create_key(3)
    statuses = [post(url, token, num_inference_steps=11) for _ in range(2)]  # 2 credits each
    assert [r.status_code for r in statuses] == [200, 406]
    assert statuses[1].json()["status"] == 406 and "not enough credits" in statuses[1].json()["error"]
    assert statuses[1].headers["x-remaining-credits"] == "1"
    assert keys.get(record.id).spent == 2


def test_queue_full_answers_503_with_retry_after(server, fake):
    url, keys = server
    record, token = keys.create_key(100)
    fake.gate.clear()
    try:
        accepted = [post(url, token, path="/v2/insta-depth") for _ in range(4)]
        assert [r.status_code for r in accepted] == [202] * 4
        refused = post(url, token, path="/v2/insta-depth")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
        assert refused.headers["x-remaining-credits"] == "96"  # the refused request reserved nothing
    finally:
        fake.gate.set()
    for response in accepted:
        status_url = response.json()["status_url"]
        assert status_url.startswith(url + "/v2/requests/req_")  # absolute, from the request's host
        wait_for(
            lambda u=status_url: httpx.get(u, headers={"x-api-key": token}).json()["status"] == "COMPLETED",
            timeout=120,
        )
    assert keys.get(record.id).spent == 4


def test_failed_generation_is_not_charged(server):
    url, keys = server
    record, token = keys.create_key(5)
    bad = post(url, token, prompt="fail")
    assert bad.status_code == 400 and bad.json()["field"] == "face_image"
    crash = post(url, token, prompt="crash")
    assert crash.status_code == 500
    assert "secret" not in crash.text and "Traceback" not in crash.text
    assert crash.json()["request_id"] == crash.headers["x-request-id"]
    assert keys.get(record.id).balance == 5 and keys.get(record.id).spent == 0
    assert post(url, token).status_code == 200  # the worker survived both


def test_v2_failure_reports_error_and_refunds(server):
    url, keys = server
    record, token = keys.create_key(2)
    job = post(url, token, path="/v2/insta-depth", prompt="fail").json()
    state = wait_for(
        lambda: (
            (s := httpx.get(job["status_url"], headers={"x-api-key": token}).json())["status"] != "QUEUED"
            and s["status"] != "PROCESSING"
            and s
        ),
        timeout=120,
    )
    assert state["status"] == "FAILED" and state["field"] == "face_image" and state["error_status"] == 400
    assert "no face" in state["error"] and state["credits"] == 0
    assert keys.get(record.id).balance == 2
    result = httpx.get(job["response_url"], headers={"x-api-key": token}).json()
    assert result["status"] == "FAILED" and result["output"] is None
    other, other_token = keys.create_key(1)
    for resource in (job["status_url"], job["response_url"], job["webhooks_url"]):
        assert httpx.get(resource, headers={"x-api-key": other_token}).status_code == 404
    assert httpx.post(job["cancel_url"], headers={"x-api-key": other_token}).status_code == 404


def test_body_size_limit(server):
    url, keys = server
    _, token = keys.create_key(1)
    response = post(url, token, prompt="x" * 300_000)
    assert response.status_code == 413 and response.json()["status"] == 413


def test_load_run_200_requests_20_clients(server):
    url, keys = server
    record, token = keys.create_key(1000)
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=20)) as client:

        def one(i):
            for _attempt in range(200):
                r = client.post(
                    url + "/v1/insta-depth", json=seed_request(seed=i), headers={"x-api-key": token}
                )
                if r.status_code != 503:
                    return r.status_code, r.headers.get("x-seed")
                time.sleep(float(r.headers["retry-after"]) / 100)  # honour Retry-After, scaled for the test
            return 503, None

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(one, range(200)))
    assert all(code == 200 for code, _ in results), {code for code, _ in results}
    assert sorted(int(seed) for _, seed in results) == list(range(200))  # nothing lost, nothing mixed up
    assert keys.get(record.id).spent == 200 and keys.get(record.id).balance == 800


def test_restart_with_queued_jobs_loses_nothing(tmp_path):
    db = tmp_path / "restart.db"
    first = FakeGenerator()
    first.gate.clear()  # the first server "crashes" with one job running and three queued
    with running_server(db, first, shutdown_timeout=0.5) as (url, keys):
        record, token = keys.create_key(10)
        jobs = [post(url, token, path="/v2/insta-depth", seed=i).json()["request_id"] for i in range(4)]
        time.sleep(0.2)
        assert keys.get(record.id).balance == 6  # reserved, not spent
    first.gate.set()  # the abandoned worker finishes late
    time.sleep(0.2)
    second = FakeGenerator()
    with running_server(db, second) as (url, keys):
        states = {}
        for job_id in jobs:
            states[job_id] = wait_for(
                lambda j=job_id: (
                    (s := httpx.get(f"{url}/v2/requests/{j}", headers={"x-api-key": token}).json())["status"]
                    == "COMPLETED"
                    and s
                ),
                timeout=120,
            )
        assert [states[j]["status"] for j in jobs] == ["COMPLETED"] * 4
        assert [states[j]["seed"] for j in jobs] == [0, 1, 2, 3]
        # The abandoned job either finished late on the stopped worker (its lease was still valid, so its result
        # stands) or ran again here after the restart requeued it; either way it is charged exactly once.
        assert len(second.calls) in (3, 4) and len(first.calls) + len(second.calls) in (4, 5)
        after = keys.get(record.id)
        assert (after.balance, after.spent) == (6, 4) and keys.held() == {}
