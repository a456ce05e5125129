"""Webhooks against a real receiver on 127.0.0.1 that verifies every signature with the `standardwebhooks` package.

A job with a `webhook_url` POSTs its final status body when it ends; a failed first delivery is retried with the
same webhook-id (exactly one delivery id per job); a slow, dead, redirecting or failing receiver never blocks the
worker or the API and never loses the job's result; deliveries survive a restart and are listed per job. The server
tests run on SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from idforge.server.webhooks import WebhookPolicy
from server_fixtures import FakeGenerator, WebhookReceiver, running_server, seed_request, wait_for

FAST = WebhookPolicy(allow_hosts=("127.0.0.1",), timeout=1.0, first_retry=0.2, max_interval=0.5, retry_for=30)


@pytest.fixture(scope="module")
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.close()


@pytest.fixture(autouse=True)
def _receiver_reset(receiver):
    yield
    receiver.fail_first, receiver.delay, receiver.redirect_to = 0, 0.0, None


@pytest.fixture(scope="module")
def fake():
    return FakeGenerator()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory, fake):
    """The webhook server on each backend: the outbox, its leases and retries on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        db = tmp_path_factory.mktemp("hooks") / "server.db"
    else:
        db = request.getfixturevalue("postgres").create_database()
    with running_server(db, fake, webhooks=FAST) as (url, keys):
        yield url, keys


def submit(url, token, hook_url, **body):
    response = httpx.post(
        url + "/v2/insta-depth",
        json=seed_request(webhook_url=hook_url, **body),
        headers={"x-api-key": token},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()


def deliveries(job, token):
    return httpx.get(job["webhooks_url"], headers={"x-api-key": token}).json()["deliveries"]


def verified(receiver, job, secret):
    """Every attempt for the job, each checked with standardwebhooks (raises on a bad signature)."""
    return [Webhook(secret).verify(body, headers) for headers, body in receiver.for_job(job["request_id"])]


def test_signed_delivery_retried_after_a_500_with_one_id(server, receiver):
    url, keys = server
    record, token = keys.create_key(10)
    secret = keys.webhook_secret(record.id)
    assert secret.startswith("whsec_")
    receiver.fail_first = 1
    job = submit(url, token, receiver.url, seed=5)
    wait_for(lambda: len(receiver.for_job(job["request_id"])) >= 2)
    bodies = verified(receiver, job, secret)
    ids = {headers["webhook-id"] for headers, _ in receiver.for_job(job["request_id"])}
    assert len(ids) == 1 and next(iter(ids)).startswith("msg_")
    assert bodies[0] == bodies[1] and bodies[0]["status"] == "COMPLETED"
    assert bodies[0]["request_id"] == job["request_id"] and bodies[0]["response_url"] == job["response_url"]
    listed = wait_for(lambda: (d := deliveries(job, token)) and d[0]["status"] == "delivered" and d)
    assert len(listed) == 1 and listed[0]["attempts"] == 2 and listed[0]["last_status"] == 200
    assert listed[0]["id"] in ids
    time.sleep(0.6)
    assert len(receiver.for_job(job["request_id"])) == 2  # delivered: no more attempts
    with pytest.raises(Exception, match="signature"):  # a wrong secret does not verify
        Webhook(keys.webhook_secret(keys.create_key(1)[0].id)).verify(
            *receiver.for_job(job["request_id"])[0][::-1]
        )


def test_failed_and_canceled_jobs_send_their_final_status(server, receiver, fake):
    url, keys = server
    record, token = keys.create_key(10)
    secret = keys.webhook_secret(record.id)
    failed = submit(url, token, receiver.url, prompt="fail")
    wait_for(lambda: receiver.for_job(failed["request_id"]))
    body = verified(receiver, failed, secret)[0]
    assert body["status"] == "FAILED" and body["field"] == "face_image" and "no face" in body["error"]

    fake.gate.clear()
    try:
        holder = submit(url, token, None)
        queued = submit(url, token, receiver.url)
        canceled = httpx.post(queued["cancel_url"], headers={"x-api-key": token}).json()
        assert canceled["action"] in ("removed", "stopped")
    finally:
        fake.gate.set()
    wait_for(lambda: receiver.for_job(queued["request_id"]))
    body = verified(receiver, queued, secret)[0]
    assert body["status"] == "CANCELED" and body["credits"] == 0
    assert deliveries(holder, token) == []  # no webhook_url, no deliveries


def test_slow_dead_and_redirecting_receivers_never_block_or_lose_results(server, receiver):
    url, keys = server
    record, token = keys.create_key(20)
    receiver.delay = 3.0  # longer than the 1 s attempt timeout
    slow = submit(url, token, receiver.url, prompt="slow-hook")
    others = [submit(url, token, None, seed=i) for i in range(3)]
    for job in others:
        wait_for(
            lambda job=job: (
                httpx.get(job["status_url"], headers={"x-api-key": token}).json()["status"] == "COMPLETED"
            )
        )
    assert httpx.get(url + "/health").json()["status"] == "ready"
    wait_for(
        lambda: (
            (d := deliveries(slow, token))
            and d[0]["attempts"] >= 1
            and "Timeout" in (d[0]["last_error"] or "")
        )
    )
    result = httpx.get(slow["response_url"], headers={"x-api-key": token}).json()
    assert result["status"] == "COMPLETED" and result["output"]["image"]  # the result is intact

    receiver.delay = 0.0
    receiver.redirect_to = "http://169.254.169.254/latest/meta-data/"
    redirected = submit(url, token, receiver.url)
    listed = wait_for(lambda: (d := deliveries(redirected, token)) and d[0]["last_error"] and d)
    assert "refused" in listed[0]["last_error"] and "non-public" in listed[0]["last_error"]

    receiver.redirect_to = None
    dead = submit(url, token, "http://127.0.0.1:9/nobody-listens")
    listed = wait_for(lambda: (d := deliveries(dead, token)) and d[0]["attempts"] >= 2 and d)
    assert listed[0]["status"] == "pending" and listed[0]["last_status"] is None
    assert httpx.get(dead["response_url"], headers={"x-api-key": token}).json()["status"] == "COMPLETED"


def test_jobs_and_api_go_on_while_a_webhook_attempt_hangs(tmp_path):
    hook = WebhookReceiver()
    hook.delay = 8.0
    patient = WebhookPolicy(allow_hosts=("127.0.0.1",), timeout=6.0)
    try:
        with running_server(tmp_path / "hang.db", FakeGenerator(), webhooks=patient) as (url, keys):
            _, token = keys.create_key(10)
            slow = submit(url, token, hook.url)
            wait_for(lambda: hook.for_job(slow["request_id"]))  # its first attempt now hangs for 6 s
            others = [submit(url, token, None, seed=i) for i in range(3)]
            for job in others:
                wait_for(
                    lambda job=job: (
                        httpx.get(job["status_url"], headers={"x-api-key": token}).json()["status"]
                        == "COMPLETED"
                    )
                )
            assert deliveries(slow, token)[0]["attempts"] == 0  # all of that happened during the attempt
            assert httpx.get(url + "/health/ready").status_code == 200
    finally:
        hook.close()


def test_retries_stop_after_the_retry_window(tmp_path):
    short = WebhookPolicy(
        allow_hosts=("127.0.0.1",), timeout=0.5, first_retry=0.1, max_interval=0.2, retry_for=2.0
    )
    with running_server(tmp_path / "short.db", FakeGenerator(), webhooks=short) as (url, keys):
        _, token = keys.create_key(5)
        job = submit(url, token, "http://127.0.0.1:9/down")
        listed = wait_for(
            lambda: (d := deliveries(job, token)) and d[0]["status"] == "failed" and d, timeout=60
        )
        assert listed[0]["attempts"] >= 3 and listed[0]["next_attempt"] is None


def test_pending_delivery_survives_a_restart(db_url):
    hook = WebhookReceiver()
    try:
        db = db_url
        policy = WebhookPolicy(allow_hosts=("127.0.0.1",), timeout=0.5, first_retry=0.2, max_interval=0.3)
        with running_server(db, FakeGenerator(), webhooks=policy) as (url, keys):
            record, token = keys.create_key(5)
            secret = keys.webhook_secret(record.id)
            job = submit(url, token, hook.url)
            hook.fail_first = 1000  # the receiver is "down" (answers 500) for the first server's life
            wait_for(lambda: (d := deliveries(job, token)) and d[0]["attempts"] >= 2)
            first_id = deliveries(job, token)[0]["id"]
        hook.fail_first = 0
        with running_server(db, FakeGenerator(), webhooks=policy) as (url, keys):
            moved = {"webhooks_url": f"{url}/v2/requests/{job['request_id']}/webhooks"}  # a new port
            listed = wait_for(lambda: (d := deliveries(moved, token)) and d[0]["status"] == "delivered" and d)
            assert listed[0]["id"] == first_id
            bodies = [Webhook(secret).verify(b, h) for h, b in hook.for_job(job["request_id"])]
            assert {h["webhook-id"] for h, _ in hook.for_job(job["request_id"])} == {first_id}
            assert bodies[-1]["status"] == "COMPLETED"
    finally:
        hook.close()


def test_backoff_schedule_doubles_from_first_retry_up_to_max_interval_within_the_window():
    """The documented defaults: 5 s, then doubling, at most 600 s apart, given up an hour after the job ended."""
    policy = WebhookPolicy()
    assert (policy.first_retry, policy.max_interval, policy.retry_for) == (5.0, 600.0, 3600.0)
    delays = [policy.retry_at(n, created=0.0, now=0.0) for n in range(1, 10)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]
    # the window counts from the job's end, not from the attempt: a retry that would land after it is none
    assert policy.retry_at(3, created=0.0, now=3600.0 - 20.0) == 3600.0
    assert policy.retry_at(3, created=0.0, now=3600.0 - 19.0) is None
    assert policy.retry_at(1, created=100.0, now=3700.0) is None


def test_live_retries_follow_the_backoff_schedule(tmp_path):
    """A receiver failing 4 times: attempts 2..5 come no earlier than 0.4, 0.8, 1.6, 1.6 s after the one before."""
    hook = WebhookReceiver()
    hook.fail_first = 4
    policy = WebhookPolicy(
        allow_hosts=("127.0.0.1",), timeout=5.0, first_retry=0.4, max_interval=1.6, retry_for=120
    )
    try:
        with running_server(tmp_path / "backoff.db", FakeGenerator(), webhooks=policy) as (url, keys):
            _, token = keys.create_key(5)
            job = submit(url, token, hook.url)
            listed = wait_for(
                lambda: (d := deliveries(job, token)) and d[0]["status"] == "delivered" and d, timeout=120
            )
            assert listed[0]["attempts"] == 5 and listed[0]["last_status"] == 200
            times = hook.times_for(job["request_id"])
            assert len(times) == 5 and len({h["webhook-id"] for h, _ in hook.for_job(job["request_id"])}) == 1
            gaps = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
            for gap, scheduled in zip(gaps, [0.4, 0.8, 1.6, 1.6], strict=True):
                assert gap >= scheduled - 0.05, (gaps, "a retry came before its backoff")
                assert gap < scheduled + 30, (gaps, "a retry came far later than scheduled")
    finally:
        hook.close()


def test_receiver_that_comes_back_after_being_down_gets_the_webhook_once(db_url):
    """Nothing listens on the webhook's port (connection refused) for a few attempts; then a receiver starts
    there: the next retry delivers, once, with the same webhook-id and a valid signature."""
    from idforge.server.runner import free_port

    port = free_port()
    policy = WebhookPolicy(allow_hosts=("127.0.0.1",), timeout=2.0, first_retry=0.2, max_interval=0.5)
    with running_server(db_url, FakeGenerator(), webhooks=policy) as (url, keys):
        record, token = keys.create_key(5)
        secret = keys.webhook_secret(record.id)
        job = submit(url, token, f"http://127.0.0.1:{port}/hook")
        down = wait_for(lambda: (d := deliveries(job, token)) and d[0]["attempts"] >= 3 and d, timeout=120)
        assert down[0]["status"] == "pending" and down[0]["last_status"] is None
        assert "Connect" in down[0]["last_error"], down[0]
        hook = WebhookReceiver(port=port)
        try:
            listed = wait_for(
                lambda: (d := deliveries(job, token)) and d[0]["status"] == "delivered" and d, timeout=120
            )
            assert listed[0]["id"] == down[0]["id"] and listed[0]["last_status"] == 200
            attempts = hook.for_job(job["request_id"])
            assert len(attempts) == 1 and attempts[0][0]["webhook-id"] == down[0]["id"]
            body = Webhook(secret).verify(attempts[0][1], attempts[0][0])
            assert body["status"] == "COMPLETED" and body["request_id"] == job["request_id"]
            time.sleep(1.0)  # longer than max_interval: a delivered message is never sent again
            assert len(hook.for_job(job["request_id"])) == 1
        finally:
            hook.close()


def test_keys_cli_shows_the_webhook_secret(tmp_path, capsys):
    from idforge.cli import main

    db = str(tmp_path / "cli.db")
    assert main(["keys", "create", "--credits", "3", "--db", db, "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["webhook_secret"].startswith("whsec_") and created["key"].startswith("idf_")
    assert main(["keys", "webhook-secret", created["id"], "--db", db]) == 0
    assert capsys.readouterr().out.strip() == created["webhook_secret"]
    assert main(["keys", "create", "--credits", "1", "--db", db]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().startswith("idf_") and "\n" not in captured.out.strip()  # $(...) gets the key
    assert "whsec_" in captured.err
