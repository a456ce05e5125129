"""The store on both backends (SQLite file and a real PostgreSQL server): keys, the credit ledger, the durable job
queue with leases and reaping, cancel, wake-up hints, webhook outbox, migrations of a 0.1 file, bad --db values."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from idforge.server.db import DatabaseError, JobFailure, NewJob, QueueAtCapacity, Store, parse_target, wakeup
from idforge.server.db.migrations import LATEST
from idforge.server.store import NotEnoughCredits, UnknownKey, hash_token

DATA = Path(__file__).parent / "data"


@pytest.fixture
def store(db_url):
    s = Store.open(db_url)
    yield s
    s.close()


def submit(
    store: Store,
    key_id: str,
    job_id: str,
    cost: int = 1,
    capacity: int | None = None,
    webhook_url: str | None = None,
) -> tuple[int, int]:
    job = NewJob(job_id, "insta-depth", '{"params": {}, "images": {}}', key_id, cost, False, webhook_url)
    return store.submit_job(job, capacity=capacity)


# -- keys and credits -----------------------------------------------------------------------------------------------


def test_keys_hashed_topup_idempotent_revoke(store):
    record, token = store.create_key(5, "alice")
    assert store.authenticate(token).id == record.id and store.authenticate(token + "x") is None
    assert store.get(token).id == record.id
    assert store.topup(record.id, 3, idempotency_key="invoice-1").balance == 8
    assert store.topup(record.id, 3, idempotency_key="invoice-1").balance == 8  # the retry adds nothing
    assert store.topup(token, 1).balance == 9
    assert store.webhook_secret(record.id).startswith("whsec_")
    assert store.webhook_secret(record.id) == store.webhook_secret(token)
    store.revoke(record.id)
    assert store.authenticate(token) is None and not store.get(record.id).active
    with pytest.raises(UnknownKey):
        store.topup("k_missing", 1)
    with store.engine.connect() as conn:  # only the hash is stored
        hashes = [row[0] for row in conn.exec_driver_sql("SELECT hash FROM api_keys")]
    assert hashes == [hash_token(token)]
    assert store.audit() == []


def test_charges_are_idempotent(store):
    record, _ = store.create_key(10)
    assert store.reserve(record.id, 4, "job-a") == 6
    assert store.reserve(record.id, 4, "job-a") == 6  # a retried reserve holds nothing more
    assert store.commit("job-a") is True
    assert store.commit("job-a") is False and store.release("job-a") is False  # settled once, for good
    assert store.reserve(record.id, 4, "job-a") == 6  # even after settling, the same job cannot hold again
    store.reserve(record.id, 3, "job-b")
    assert store.release("job-b") is True and store.release("job-b") is False
    after = store.get(record.id)
    assert (after.balance, after.spent) == (6, 4)
    kinds = [(e["kind"], e["delta"], e["spent_delta"]) for e in store.ledger_entries(record.id)]
    assert kinds == [
        ("grant", 10, 0),
        ("reserve", -4, 0),
        ("charge", 0, 4),
        ("reserve", -3, 0),
        ("release", 3, 0),
    ]
    assert store.held() == {} and store.audit() == []


def test_50_racing_debits_never_overdraw(db_url):
    """50 threads over 5 connections' worth of stores debit 3 each from 100: exactly 33 succeed, balance 1."""
    stores = [Store.open(db_url) for _ in range(5)]
    record, _ = stores[0].create_key(100)
    barrier = threading.Barrier(50)

    def debit(i: int) -> bool:
        barrier.wait()
        try:
            stores[i % 5].reserve(record.id, 3, f"job-{i}")
            return True
        except NotEnoughCredits:
            return False

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(debit, range(50)))
    assert sum(results) == 33
    assert stores[0].balance(record.id) == 1
    assert len(stores[0].held()) == 33 and stores[0].audit() == []
    for s in stores:
        s.close()


# -- the durable queue ----------------------------------------------------------------------------------------------


def test_concurrent_claims_never_give_a_job_twice(db_url):
    owner = Store.open(db_url)
    record, _ = owner.create_key(1000)
    job_ids = [f"req_{i:03d}" for i in range(120)]
    for job_id in job_ids:
        submit(owner, record.id, job_id)
    workers = [Store.open(db_url) for _ in range(6)]
    taken: dict[str, list[str]] = {f"w{i}": [] for i in range(6)}

    def drain(i: int) -> None:
        while (job := workers[i].jobs_repo.claim(f"w{i}", lease_s=60)) is not None:
            taken[f"w{i}"].append(job.id)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(drain, range(6)))
    everything = [j for ids in taken.values() for j in ids]
    assert sorted(everything) == job_ids  # each job exactly once
    assert sum(1 for ids in taken.values() if ids) >= 2  # the work was really shared
    assert [j for j in taken["w0"]] == sorted(taken["w0"])  # each worker takes them oldest first
    assert owner.counts() == {"PROCESSING": 120}
    for s in [owner, *workers]:
        s.close()


def test_claim_complete_charges_once_and_only_the_lease_holder(store):
    record, _ = store.create_key(5)
    assert submit(store, record.id, "req_1", cost=2) == (1, 3)
    submit(store, record.id, "req_2", cost=1)
    assert store.position("req_2") == 2
    job = store.jobs_repo.claim("replica-a", lease_s=30)
    assert (job.id, job.attempts, job.cost) == ("req_1", 1, 2)
    assert store.position("req_2") == 1
    lease = store.jobs_repo.renew("req_1", "replica-a", 30, step=3, total=4)
    assert lease.owned and not lease.cancel
    assert (store.job("req_1")["step"], store.job("req_1")["total_steps"]) == (3, 4)
    assert store.jobs_repo.renew("req_1", "replica-b", 30).owned is False
    assert store.jobs_repo.complete("req_1", "replica-b", '{"r": 1}') is None  # not the holder
    assert store.jobs_repo.complete("req_1", "replica-a", '{"r": 1}') == "COMPLETED"
    assert store.jobs_repo.complete("req_1", "replica-a", '{"r": 1}') is None  # a retry changes nothing
    row = store.job("req_1")
    assert (row["status"], row["replica"], row["attempts"], row["payload"]) == (
        "COMPLETED",
        "replica-a",
        1,
        None,
    )
    assert store.get(record.id).spent == 2 and store.get(record.id).balance == 2
    assert (
        store.jobs_repo.fail("req_2", None, JobFailure(400, "face_image: no face", "face_image")) is True
    )  # queued
    assert store.job("req_2")["error_field"] == "face_image"
    assert store.get(record.id).balance == 3 and store.audit() == []


def test_expired_leases_are_requeued_then_failed_and_refunded(store):
    record, _ = store.create_key(5)
    submit(store, record.id, "req_x", cost=2)
    for attempt in (1, 2):
        job = store.jobs_repo.claim(f"dead-{attempt}", lease_s=0.05)
        assert job.id == "req_x" and job.attempts == attempt
        time.sleep(0.1)  # the worker "died": nobody renews
        assert store.jobs_repo.reap(max_attempts=3).requeued == ["req_x"]
        assert (
            store.jobs_repo.renew("req_x", f"dead-{attempt}", 30).owned is False
        )  # a zombie learns it lost the job
        assert store.jobs_repo.complete("req_x", f"dead-{attempt}", "{}") is None  # ... and cannot charge
    assert store.jobs_repo.reap(max_attempts=3).requeued == []  # nothing expired
    job = store.jobs_repo.claim("dead-3", lease_s=0.05)
    assert job.attempts == 3
    time.sleep(0.1)
    report = store.jobs_repo.reap(max_attempts=3)
    assert report.failed == ["req_x"] and report.requeued == []
    row = store.job("req_x")
    assert row["status"] == "FAILED" and "stopped 3 times" in row["error"] and row["error_status"] == 500
    assert store.get(record.id).balance == 5 and store.get(record.id).spent == 0 and store.audit() == []


def test_reaped_job_finishes_elsewhere_charged_once(store):
    record, _ = store.create_key(5)
    submit(store, record.id, "req_y", cost=1)
    store.jobs_repo.claim("slow", lease_s=0.05)
    time.sleep(0.1)
    store.jobs_repo.reap()
    assert store.jobs_repo.claim("fast", lease_s=30).attempts == 2
    assert store.jobs_repo.complete("fast", "fast", "{}") is None  # wrong id: nothing
    assert store.jobs_repo.complete("req_y", "fast", '{"ok": 1}') == "COMPLETED"
    assert (
        store.jobs_repo.complete("req_y", "slow", '{"late": 1}') is None
    )  # the first worker woke up too late
    assert store.job("req_y")["result"] == '{"ok": 1}' and store.job("req_y")["replica"] == "fast"
    assert store.get(record.id).spent == 1 and store.audit() == []


def test_cancel_queued_running_and_finished(store):
    record, _ = store.create_key(10)
    submit(store, record.id, "req_q", cost=2)
    submit(store, record.id, "req_r", cost=3)
    other, _ = store.create_key(1)
    assert store.cancel("req_q", other.id) is None  # another key cannot see it
    assert store.cancel("req_q", record.id) == "removed"
    assert store.job("req_q")["status"] == "CANCELED" and store.get(record.id).balance == 7
    assert store.jobs_repo.claim("w", 30).id == "req_r"
    assert store.cancel("req_r", record.id) == "stopping"
    assert store.jobs_repo.renew("req_r", "w", 30).cancel is True
    assert store.jobs_repo.canceled("req_r", "w") is True
    assert store.cancel("req_r", record.id) == "finished" and store.cancel("nope", record.id) is None
    assert store.get(record.id).balance == 10 and store.audit() == []


def test_capacity_refuses_before_holding_credits(store):
    record, _ = store.create_key(10)
    for i in range(3):
        submit(store, record.id, f"req_{i}", capacity=3)
    with pytest.raises(QueueAtCapacity):
        submit(store, record.id, "req_3", capacity=3)
    with pytest.raises(NotEnoughCredits):
        submit(store, record.id, "req_4", cost=50)
    assert store.get(record.id).balance == 7 and store.job("req_3") is None and store.job("req_4") is None


def test_wakeup_hints_reach_another_store(db_url):
    """A job queued through one store wakes a subscriber of another (LISTEN/NOTIFY on PostgreSQL)."""
    listener, sender = Store.open(db_url), Store.open(db_url)
    heard: dict[str, list[str]] = {wakeup.QUEUED: [], wakeup.ENDED: [], wakeup.CANCEL: []}
    events = {channel: threading.Event() for channel in heard}
    for channel in heard:
        listener.hub.subscribe(
            channel, lambda payload, c=channel: (heard[c].append(payload), events[c].set())
        )
    record, _ = sender.create_key(5)
    submit(sender, record.id, "req_w")
    assert events[wakeup.QUEUED].wait(5) and heard[wakeup.QUEUED] == ["req_w"]
    sender.jobs_repo.claim("w", 30)
    sender.cancel("req_w")
    assert events[wakeup.CANCEL].wait(5) and heard[wakeup.CANCEL] == ["req_w"]
    sender.jobs_repo.canceled("req_w", "w")
    assert events[wakeup.ENDED].wait(5) and heard[wakeup.ENDED] == ["req_w"]
    listener.close()
    sender.close()


def test_webhook_outbox_rows_commit_with_the_job(store):
    record, _ = store.create_key(5)
    submit(store, record.id, "req_h", webhook_url="https://example.com/hook")
    assert store.outbox_repo.deliveries("req_h") == []  # nothing until the job ends
    store.jobs_repo.claim("w", 30)
    store.jobs_repo.complete("req_h", "w", "{}")
    (delivery,) = store.outbox_repo.deliveries("req_h")
    assert delivery["status"] == "pending" and delivery["id"].startswith("msg_")
    assert json.loads(delivery["body"])["status"] == "COMPLETED"  # frozen with the job's final state
    now = time.time()
    (claimed,) = store.outbox_repo.claim_due(now, lease=60)
    assert store.outbox_repo.claim_due(now, lease=60) == []  # leased to the first sender
    store.outbox_repo.record_failure(claimed["id"], 500, "HTTP 500", retry_at=time.time())
    (again,) = store.outbox_repo.claim_due(time.time(), lease=60)
    assert again["id"] == claimed["id"] and again["attempts"] == 1 and again["body"] == delivery["body"]
    store.outbox_repo.record_success(again["id"], 200)
    (done,) = store.outbox_repo.deliveries("req_h")
    assert (done["status"], done["attempts"], done["last_status"]) == ("delivered", 2, 200)
    assert store.outbox_repo.next_due() is None
    submit(store, record.id, "req_h2", webhook_url="https://example.com/hook")
    store.cancel("req_h2", record.id)
    (message,) = store.outbox_repo.claim_due(time.time(), lease=60)  # a sender "dies" holding it
    assert (
        store.outbox_repo.reclaim() == 1
        and store.outbox_repo.claim_due(time.time(), lease=60)[0]["id"] == message["id"]
    )
    store.outbox_repo.record_failure(message["id"], None, "connection refused", retry_at=None)
    assert store.outbox_repo.deliveries("req_h2")[0]["status"] == "failed"


def test_results_expire_but_the_id_stays_known(store):
    record, _ = store.create_key(5)
    submit(store, record.id, "req_e")
    store.jobs_repo.claim("w", 30)
    store.jobs_repo.complete("req_e", "w", '{"image": "..."}')
    ended = store.job("req_e")["finished"]
    assert store.expire(ended - 1) == 0 and store.job("req_e")["result"] == '{"image": "..."}'
    assert store.expire(ended + 1) == 1
    row = store.job("req_e")
    assert row["status"] == "COMPLETED" and row["result"] is None and row["expired"] == 1


def test_v1_jobs_are_charged_by_their_waiter_on_delivery(store):
    """A /v1 job's image is charged when its client takes it; one nobody took goes back to the key."""
    record, _ = store.create_key(5)
    for job_id in ("req_taken", "req_orphan"):
        store.submit_job(NewJob(job_id, "insta-depth", "{}", record.id, 1, sync=True))
        store.jobs_repo.claim("w", 30)
        assert store.jobs_repo.complete(job_id, "w", '{"img": 1}', charge=False)
    assert store.take_result("req_taken") == '{"img": 1}' and store.commit("req_taken")
    assert store.take_result("req_taken") is None  # taken once
    assert store.jobs_repo.release_undelivered(time.time() + 1) == ["req_orphan"]
    after = store.get(record.id)
    assert (after.balance, after.spent) == (4, 1) and store.audit() == []


# -- migrations -----------------------------------------------------------------------------------------------------


def test_a_01_sqlite_file_is_upgraded_and_keeps_working(tmp_path):
    """tests/data/idforge-0.1.db was written by the 0.1 sqlite3 code (tests/data/make_v01_db.py)."""
    path = tmp_path / "old.db"
    shutil.copy(DATA / "idforge-0.1.db", path)
    store = Store.open(str(path))
    versions = (
        sqlite3.connect(path).execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    )
    assert [v for (v,) in versions] == list(range(1, LATEST + 1))
    alice = store.authenticate("idf_alice_token_0123456789abcdef0123456789abcdef")
    assert alice is not None and (alice.name, alice.balance, alice.spent) == ("alice", 10, 1)
    assert store.authenticate("idf_bob_token_0123456789abcdef0123456789abcdef00") is None  # still revoked
    assert store.held() == {"req_queued": (alice.id, 2)}
    assert store.audit() == []  # opening ledger entries account for the 0.1 balances and holds
    assert store.job("req_done")["status"] == "COMPLETED" and store.job("req_done")["result"]
    job = store.jobs_repo.claim("new-worker", 30)  # the 0.1 queued job runs under the new code
    assert job.id == "req_queued" and '"old queued job"' in job.payload
    assert store.jobs_repo.complete("req_queued", "new-worker", "{}")
    assert store.get(alice.id).spent == 3 and store.get(alice.id).balance == 10
    record, token = store.create_key(4, "carol")  # and new keys work beside the old ones
    assert store.authenticate(token).balance == 4 and store.audit() == []
    store.close()
    again = Store.open(str(path))  # opening an up-to-date file applies nothing
    assert again.get(alice.id).spent == 3
    again.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    Store.open(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    conn.commit()
    with pytest.raises(DatabaseError, match="schema version 99"):
        Store.open(str(path))


# -- bad --db values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty value"),
        ("mysql://root@localhost/db", "unknown scheme 'mysql'"),
        ("postgresql+asyncpg://u@h/db", "not supported"),
        ("postgresql:///db", "needs a host"),
        ("postgresql://u@h:notaport/db", "not a database URL"),
    ],
)
def test_bad_db_values_are_one_line_errors(value, message):
    with pytest.raises(DatabaseError, match=message) as info:
        Store.open(value) if value else parse_target(value)
    assert "\n" not in str(info.value)


def test_unreachable_postgres_is_one_line_error_without_password(postgres):
    from idforge.server.runner import free_port

    url = f"postgresql://idforge:s3cret@127.0.0.1:{free_port()}/postgres"
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="cannot connect") as info:
        Store.open(url)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - started < 10
    with pytest.raises(DatabaseError, match="cannot connect"):
        Store.open(postgres.url("no_such_database"))
