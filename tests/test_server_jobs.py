"""The v2 job life cycle against a real uvicorn server on loopback (fake generator: these are mechanics).

Statuses and absolute URLs, queue position and step progress, the result shape, cancel of queued and running
jobs (credits released), a /v1 client that disconnects (not charged), result expiry (410 with a clear message),
ownership (other keys get 404), --public-url and --trust-proxy.
"""

from __future__ import annotations

import base64
import io
import socket
import time

import httpx
import pytest
from PIL import Image

from server_fixtures import FakeGenerator, face_b64, running_server, seed_request, wait_for


@pytest.fixture(scope="module")
def fake():
    return FakeGenerator()


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake):
    db = tmp_path_factory.mktemp("jobs") / "server.db"
    # cancel_wait_s: a cancel answers "stopped" once the worker has stopped, however loaded the machine is
    with running_server(db, fake, queue_size=8, result_ttl=60, cancel_wait_s=120) as (url, keys):
        yield url, keys


@pytest.fixture(autouse=True)
def _fake_released(fake):
    yield
    fake.gate.set()
    fake.step_delay = 0.0


def submit(url, token, **body):
    response = httpx.post(
        url + "/v2/insta-depth", json=seed_request(**body), headers={"x-api-key": token}, timeout=30
    )
    assert response.status_code == 202, response.text
    return response.json()


def get(resource, token):
    return httpx.get(resource, headers={"x-api-key": token}, timeout=30)


def status(job, token):
    return get(job["status_url"], token).json()


def test_submit_answer_has_absolute_urls_and_result_has_output_metrics_seed_recipe(server):
    url, keys = server
    record, token = keys.create_key(10)
    job = submit(url, token, seed=77, prompt="shape")
    assert job["status"] == "QUEUED" and job["request_id"].startswith("req_")
    root = f"{url}/v2/requests/{job['request_id']}"
    assert (job["status_url"], job["response_url"], job["poll_url"]) == (
        root + "/status",
        root,
        root + "/status",
    )
    assert job["cancel_url"] == root + "/cancel" and job["credits_reserved"] == 1

    final = wait_for(lambda: (s := status(job, token))["status"] == "COMPLETED" and s)
    assert final["credits"] == 1 and set(final["metrics"]) >= {"queue_s", "inference_s"}
    result = get(job["response_url"], token).json()
    assert result["status"] == "COMPLETED" and result["seed"] == 77 and result["seeds"] == [77]
    image = Image.open(io.BytesIO(base64.b64decode(result["output"]["image"])))
    assert image.format == "JPEG" and image.size == (64, 64)
    assert result["recipe"] == {"method": "insta-depth", "prompt": "shape", "seed": 77, "steps": 4}
    assert result["metrics"]["inference_s"] >= 0 and result["credits_charged"] == 1
    assert keys.get(record.id).spent == 1
    assert get(f"{url}/v2/requests/req_nope/status", token).status_code == 404


def test_queue_position_then_step_progress(server, fake):
    url, keys = server
    _, token = keys.create_key(10)
    fake.gate.clear()
    first = submit(url, token, prompt="p1", num_inference_steps=20)
    wait_for(lambda: status(first, token)["status"] == "PROCESSING")
    second, third = submit(url, token, prompt="p2"), submit(url, token, prompt="p3")
    assert (status(second, token)["position"], status(third, token)["position"]) == (1, 2)
    held = status(first, token)
    assert held["step"] == 0 and held["total_steps"] == 0
    fake.step_delay = 0.03
    fake.gate.set()
    seen = set()

    def finished():
        state = status(first, token)
        if state["status"] == "PROCESSING":
            seen.add((state["step"], state["total_steps"]))
        return state["status"] == "COMPLETED"

    wait_for(finished, interval=0.01)
    steps = sorted(step for step, total in seen if total == 20)
    assert steps and 0 < steps[-1] <= 20, seen  # steps were reported while it ran
    wait_for(lambda: status(third, token)["status"] == "COMPLETED")


def test_cancel_queued_job_removes_it_and_releases_credits(server, fake):
    url, keys = server
    record, token = keys.create_key(10)
    fake.gate.clear()
    running = submit(url, token, prompt="holder")
    queued = submit(url, token, prompt="never-runs", num_inference_steps=20)
    assert keys.get(record.id).balance == 10 - 1 - 2
    answer = httpx.post(queued["cancel_url"], headers={"x-api-key": token}).json()
    assert answer == {
        "request_id": queued["request_id"],
        "action": "removed",
        "status": "CANCELED",
        "credits_released": True,
    }
    assert keys.get(record.id).balance == 10 - 1
    assert status(queued, token)["status"] == "CANCELED" and status(queued, token)["credits"] == 0
    assert get(queued["response_url"], token).json()["output"] is None
    fake.gate.set()
    wait_for(lambda: status(running, token)["status"] == "COMPLETED")
    time.sleep(0.2)
    assert "never-runs" not in fake.started
    again = httpx.post(queued["cancel_url"], headers={"x-api-key": token}).json()
    assert again["action"] == "already_finished" and again["credits_released"] is False
    done = httpx.post(running["cancel_url"], headers={"x-api-key": token}).json()
    assert done["action"] == "already_finished" and done["status"] == "COMPLETED"
    after = keys.get(record.id)
    assert (after.balance, after.spent) == (9, 1) and keys.held() == {}
    assert (
        httpx.post(f"{url}/v2/requests/req_unknown/cancel", headers={"x-api-key": token}).status_code == 404
    )


def test_cancel_running_job_stops_at_next_step(server, fake):
    url, keys = server
    record, token = keys.create_key(10)
    fake.step_delay = 0.5  # 100 steps: 50 s if nobody stops it (the cancel is read at the next step)
    job = submit(url, token, prompt="long-run", num_inference_steps=100)
    wait_for(lambda: (s := status(job, token))["status"] == "PROCESSING" and s["step"] >= 2)
    assert keys.get(record.id).balance == 0  # 100 steps cost 10 credits, reserved
    answer = httpx.post(job["cancel_url"], headers={"x-api-key": token}).json()
    assert answer["action"] == "stopped" and answer["status"] == "CANCELED" and answer["credits_released"]
    final = status(job, token)
    assert final["status"] == "CANCELED" and "step" in final["error"]
    assert "long-run" in fake.started and "long-run" not in fake.calls  # started, never finished
    assert keys.get(record.id).balance == 10 and keys.held() == {}


def _raw_v1_request(url: str, token: str, body: bytes) -> socket.socket:
    """Send a /v1 request on a raw socket and return it unread (the test then closes it: a client leaving)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST /v1/insta-depth HTTP/1.1\r\nHost: {host}:{port}\r\nx-api-key: {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


@pytest.mark.parametrize("where", ["queued", "running"])
def test_v1_client_that_disconnects_cancels_its_job_and_is_not_charged(server, fake, where):
    import json

    url, keys = server
    record, token = keys.create_key(10)
    prompt = f"left-while-{where}"
    if where == "queued":
        fake.gate.clear()
        holder = submit(url, token, prompt="holder")  # runs (held) while the /v1 job waits behind it
        wait_for(lambda: status(holder, token)["status"] == "PROCESSING")
    else:
        fake.step_delay = 0.5  # 60 steps: 30 s, far longer than noticing the client left
    spent_by_holder = 1 if where == "queued" else 0
    body = json.dumps(seed_request(prompt=prompt, num_inference_steps=60)).encode()
    sock = _raw_v1_request(url, token, body)
    wait_for(lambda: keys.get(record.id).balance == 4 - spent_by_holder)  # 6 credits reserved: the job is in
    if where == "running":
        wait_for(lambda: prompt in fake.started)
    sock.close()
    wait_for(lambda: keys.get(record.id).balance == 10 - spent_by_holder)
    fake.gate.set()
    time.sleep(0.5)
    assert prompt not in fake.calls  # never finished
    assert (prompt in fake.started) == (where == "running")
    assert keys.get(record.id).spent == spent_by_holder and keys.held() == {}
    ok = httpx.post(url + "/v1/insta-depth", json=seed_request(), headers={"x-api-key": token}, timeout=30)
    assert ok.status_code == 200 and keys.get(record.id).spent == spent_by_holder + 1  # one that stays pays


def test_jobs_are_private_to_their_key(server):
    url, keys = server
    _, owner = keys.create_key(5)
    _, other = keys.create_key(5)
    job = submit(url, owner)
    for resource in (job["status_url"], job["response_url"], job["webhooks_url"]):
        response = get(resource, other)
        assert response.status_code == 404 and job["request_id"] in response.json()["error"]
    assert httpx.post(job["cancel_url"], headers={"x-api-key": other}).status_code == 404
    assert get(job["status_url"], "idf_wrong").status_code == 401
    wait_for(lambda: status(job, owner)["status"] == "COMPLETED")


def test_v1_job_ids_are_not_v2_resources(server):
    url, keys = server
    _, token = keys.create_key(5)
    response = httpx.post(url + "/v1/insta-depth", json=seed_request(), headers={"x-api-key": token})
    assert get(f"{url}/v2/requests/{response.headers['x-job-id']}", token).status_code == 404


def test_results_expire_with_a_clear_message(tmp_path):
    from idforge.server.db import Store

    db = tmp_path / "ttl.db"
    # 5 s: long enough for the first read on a loaded machine, short enough to wait out (on the status, not a sleep)
    with running_server(db, FakeGenerator(), result_ttl=5.0) as (url, keys):
        _, token = keys.create_key(5)
        job = submit(url, token)
        wait_for(lambda: status(job, token)["status"] == "COMPLETED")
        fresh = get(job["response_url"], token)
        assert fresh.status_code == 200 and fresh.json()["output"]["image"], fresh.text
        wait_for(lambda: get(job["status_url"], token).status_code == 410, timeout=60, interval=0.2)
        for resource in (job["status_url"], job["response_url"]):
            expired = get(resource, token)
            assert expired.status_code == 410, expired.text
            assert "expired" in expired.json()["error"] and "kept for 5 s" in expired.json()["error"]
        store = Store.open(db)
        try:  # the janitor removes the result from the database too (the row stays, so 410 and not 404)
            row = wait_for(lambda: (r := store.job(job["request_id"]))["expired"] and r, timeout=5)
            assert row["result"] is None and row["payload"] is None
        finally:
            store.close()


def test_public_url_and_proxy_headers(tmp_path, server):
    url, keys = server
    _, token = keys.create_key(5)
    forwarded = {"x-forwarded-proto": "https", "x-forwarded-host": "api.example.com", "x-api-key": token}
    untrusted = httpx.post(url + "/v2/insta-depth", json=seed_request(), headers=forwarded).json()
    assert untrusted["status_url"].startswith(url + "/")  # not trusted by default
    hostile = httpx.post(
        url + "/v2/insta-depth", json=seed_request(), headers={"x-api-key": token, "host": "evil/<x>"}
    ).json()
    assert hostile["status_url"].startswith("http://127.0.0.1:")

    with running_server(tmp_path / "proxy.db", FakeGenerator(), trust_proxy=True) as (purl, pkeys):
        _, ptoken = pkeys.create_key(5)
        behind = httpx.post(
            purl + "/v2/insta-depth", json=seed_request(), headers=forwarded | {"x-api-key": ptoken}
        ).json()
        assert behind["status_url"] == f"https://api.example.com/v2/requests/{behind['request_id']}/status"
    with running_server(tmp_path / "public.db", FakeGenerator(), public_url="https://gen.example.org/") as (
        curl,
        ckeys,
    ):
        _, ctoken = ckeys.create_key(5)
        fixed = httpx.post(
            curl + "/v2/insta-depth", json=seed_request(), headers={"x-api-key": ctoken}
        ).json()
        assert fixed["response_url"] == f"https://gen.example.org/v2/requests/{fixed['request_id']}"


@pytest.mark.parametrize(
    ("path", "webhook_url", "problem"),
    [
        ("/v1/insta-depth", "https://example.com/hook", "only /v2"),
        ("/v2/insta-depth", "ftp://example.com/hook", "scheme"),
        ("/v2/insta-depth", "http://169.254.169.254/latest", "non-public"),
        ("/v2/insta-depth", "http://127.0.0.1:9/hook", "non-public"),
        ("/v2/insta-depth", "https://user:pw@example.com/", "credentials"),
        ("/v2/insta-depth", "http://" + "a" * 2100 + ".com/", "webhook_url"),
        ("/v2/insta-depth", 42, "webhook_url"),
    ],
)
def test_bad_webhook_urls_are_400_naming_the_field(server, path, webhook_url, problem):
    url, keys = server
    record, token = keys.create_key(5)
    response = httpx.post(
        url + path, json=seed_request(webhook_url=webhook_url), headers={"x-api-key": token}, timeout=30
    )
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "webhook_url" and problem in response.json()["error"]
    assert keys.get(record.id).balance == 5


@pytest.mark.parametrize(
    ("method", "change", "field", "words"),
    [
        ("faceid", {"batch": True, "best_of": 2}, "best_of", "best-of-N cannot be combined with batch mode"),
        ("faceid", {"batch": True}, None, ""),
        ("instantid", {"best_of": 2}, None, ""),  # the batch rule is FaceID's alone
        ("faceid", {"start_at": 0.6, "end_at": 0.2}, "end_at", "end_at: 0.2 is before start_at 0.6"),
        ("pulid", {"start_at": 0.6, "end_at": 0.2}, "end_at", "end_at: 0.2 is before start_at 0.6"),
        ("instantid", {"start_at": 0.6, "end_at": 0.2}, "end_at", "end_at: 0.2 is before start_at 0.6"),
        ("instantid", {"start_at": 0.6, "end_at": 0.6}, None, ""),
        (
            "insta-depth",
            {"pose_image": face_b64(), "depth_start_at": 0.7, "depth_end_at": 0.3},
            "depth_end_at",
            "depth_end_at: 0.3 is before depth_start_at 0.7",
        ),
        ("insta-depth", {"pose_image": face_b64(), "depth_start_at": 0.3, "depth_end_at": 0.7}, None, ""),
    ],
)
def test_method_rules_are_400_naming_the_field_before_anything_is_queued(
    server, fake, method, change, field, words
):
    """Rules across fields (a method's own, or the schedule window) refuse the body before it is queued or charged;
    a body that keeps them is queued (field None)."""
    url, keys = server
    record, token = keys.create_key(20)
    prompt = f"rules {method} {sorted(change.items())}"
    body = {"prompt": prompt, "face_image": face_b64(), "num_inference_steps": 4, "width": 64, "height": 64}
    for path in (f"/v1/{method}", f"/v2/{method}"):
        response = httpx.post(url + path, json=body | change, headers={"x-api-key": token}, timeout=60)
        if field is None:
            assert response.status_code in (200, 202), response.text
            continue
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field and words in response.json()["error"]
    if field is not None:
        assert keys.get(record.id).balance == 20 and prompt not in fake.started


def instantid_body(**overrides):
    body = {
        "prompt": "a photo",
        "face_image": face_b64(),
        "num_inference_steps": 4,
        "width": 64,
        "height": 64,
    }
    return {k: v for k, v in (body | overrides).items() if v is not None}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"samples": 5}, "samples"),
        ({"samples": 0}, "samples"),
        ({"num_inference_steps": None, "steps": 3}, "steps"),
        ({"num_inference_steps": None, "steps": 101}, "steps"),
        ({"guidance": 26}, "guidance"),
        ({"identity_strength": 1.01}, "identity_strength"),
        ({"adapter_strength": -0.1}, "adapter_strength"),
        ({"num_images": 5}, "num_images"),
        ({"style": "baroque"}, "style"),
        ({"style": 3}, "style"),
        ({"webhook_url": "not a url"}, "webhook_url"),
    ],
)
def test_new_fields_are_validated_with_a_400_naming_them(server, change, field):
    url, keys = server
    record, token = keys.create_key(5)
    for path in ("/v1/instantid", "/v2/instantid"):
        response = httpx.post(url + path, json=instantid_body(**change), headers={"x-api-key": token})
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field and field in response.json()["error"]
    assert keys.get(record.id).balance == 5


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        ({"steps": 4}, {"num_inference_steps": 4}),
        ({"samples": 1}, {"num_images": 1}),
        ({"guidance": 5}, {"guidance_scale": 5}),
        ({"identity_strength": 0.5}, {"cn_strength": 0.5}),
        ({"adapter_strength": 0.5}, {"ip_weight": 0.5}),
    ],
)
def test_one_parameter_under_both_names_is_a_400_naming_both(server, theirs, ours):
    url, keys = server
    _, token = keys.create_key(5)
    body = instantid_body(num_inference_steps=None) | theirs | ours
    response = httpx.post(url + "/v1/instantid", json=body, headers={"x-api-key": token})
    assert response.status_code == 400
    (their_name,), (our_name,) = theirs, ours
    error = response.json()["error"]
    assert response.json()["field"] == their_name and their_name in error and our_name in error


def test_segmind_body_gets_segmind_defaults(server):
    url, keys = server
    record, token = keys.create_key(10)
    body = {"prompt": "a photo", "face_image": face_b64(), "samples": 1, "width": 64, "height": 64}
    response = httpx.post(url + "/v1/instantid", json=body, headers={"x-api-key": token})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"  # base64 false
    assert response.headers["x-credits-charged"] == "1"  # Segmind's default: 10 steps
    ours = httpx.post(url + "/v1/instantid", json=body | {"samples": None}, headers={"x-api-key": token})
    assert ours.status_code == 200 and ours.headers["content-type"] == "application/json"  # our defaults
    assert ours.headers["x-credits-charged"] == "3"  # 30 steps
