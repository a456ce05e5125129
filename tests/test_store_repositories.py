"""The store's repositories share one transaction (on both backends), and the state names have one definition.

Ending a job writes three repositories' tables (the job row, the credit ledger and holds, the webhook outbox) in
one transaction: when the webhook insert fails, the charge or release and the job's new state are rolled back
with it. `Store.transaction()` gives the same to callers, and its wake-up hints go out only at commit.
"""

from __future__ import annotations

import ast
import json
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from idforge.server.db import JobFailure, NewJob, Store, wakeup
from idforge.server.db.jobs_repo import JobsRepository
from idforge.server.db.outbox_repo import OutboxRepository
from idforge.server.schemas import AcceptedResponse, CancelResponse, JobStatusResponse, WebhookDeliveryInfo
from idforge.server.states import ACTIVE, TERMINAL, CancelAction, DeliveryStatus, JobStatus

SERVER = Path(__file__).resolve().parent.parent / "src" / "idforge" / "server"
HOOK = "https://example.com/hook"


@pytest.fixture
def store(db_url):
    s = Store.open(db_url)
    yield s
    s.close()


class BrokenOutbox(OutboxRepository):
    """An outbox whose insert fails, after the job row and the credits were already written in the transaction."""

    def enqueue(self, *args, **kwargs) -> str:
        raise RuntimeError("the outbox is broken")


def running_job(store: Store, job_id: str, cost: int = 2) -> str:
    """A key with 5 credits and one job of `cost` with a webhook, claimed by replica "w"; returns the key id."""
    record, _ = store.create_key(5)
    store.submit_job(NewJob(job_id, "insta-depth", "{}", record.id, cost, sync=False, webhook_url=HOOK))
    assert store.jobs_repo.claim("w", lease_s=30).id == job_id
    return record.id


def listen(store: Store, channel: str) -> tuple[list[str], threading.Event]:
    heard: list[str] = []
    event = threading.Event()
    store.hub.subscribe(channel, lambda payload: (heard.append(payload), event.set()))
    return heard, event


def assert_untouched(store: Store, key_id: str, job_id: str) -> None:
    """The job is still running under its lease, its 2 credits still held: nothing charged, released or queued."""
    row = store.job(job_id)
    assert (row["status"], row["lease_owner"], row["result"], row["finished"]) == (
        "PROCESSING",
        "w",
        None,
        None,
    )
    assert row["payload"] == "{}"
    assert store.held() == {job_id: (key_id, 2)}
    record = store.get(key_id)
    assert (record.balance, record.spent) == (3, 0)
    assert [e["kind"] for e in store.ledger_entries(key_id)] == ["grant", "reserve"]
    assert store.outbox_repo.deliveries(job_id) == []
    assert store.audit() == []


def test_a_failing_webhook_insert_rolls_back_the_charge_and_the_job(store):
    key_id = running_job(store, "req_a")
    heard, ended = listen(store, wakeup.ENDED)
    broken = JobsRepository(store.db, store.keys_repo, BrokenOutbox(store.db))
    with pytest.raises(RuntimeError, match="outbox is broken"):
        broken.complete("req_a", "w", '{"ok": 1}')
    assert_untouched(store, key_id, "req_a")
    # the same job ends normally through the store: charged once, one webhook, one wake-up hint
    assert store.jobs_repo.complete("req_a", "w", '{"ok": 1}') == JobStatus.COMPLETED
    assert ended.wait(5)
    time.sleep(0.2)  # a hint of the rolled-back attempt would have come first
    assert heard == ["req_a"]
    record = store.get(key_id)
    assert (record.balance, record.spent) == (3, 2) and store.held() == {}
    (delivery,) = store.outbox_repo.deliveries("req_a")
    assert (
        delivery["status"] == DeliveryStatus.PENDING and json.loads(delivery["body"])["status"] == "COMPLETED"
    )
    assert store.audit() == []


def test_a_constraint_violated_in_the_outbox_rolls_back_the_release(store):
    """No injection: a webhook row for the job already exists (job_id is unique), so the real INSERT fails."""
    key_id = running_job(store, "req_b")
    store.outbox_repo.enqueue("req_b", key_id, HOOK, "{}")
    with pytest.raises(sa.exc.IntegrityError):
        store.jobs_repo.fail("req_b", "w", JobFailure(500, "boom"))
    row = store.job("req_b")
    assert (row["status"], row["lease_owner"], row["error"]) == ("PROCESSING", "w", None)
    assert store.held() == {"req_b": (key_id, 2)} and store.get(key_id).balance == 3
    assert [e["kind"] for e in store.ledger_entries(key_id)] == ["grant", "reserve"]
    assert len(store.outbox_repo.deliveries("req_b")) == 1 and store.audit() == []


def test_store_transaction_spans_repositories_and_rolls_back_as_one(store):
    record, _ = store.create_key(5)
    heard, queued = listen(store, wakeup.QUEUED)
    with pytest.raises(LookupError, match="abandoned"):
        with store.transaction() as conn:
            store.keys_repo.topup(record.id, 10, conn=conn)
            store.jobs_repo.submit(NewJob("req_c", "insta-depth", "{}", record.id, 12, sync=False), conn=conn)
            assert store.keys_repo.balance(record.id, conn=conn) == 3  # seen inside the transaction
            raise LookupError("abandoned")  # anything that leaves the block rolls it all back
    assert store.get(record.id).balance == 5 and store.job("req_c") is None and store.held() == {}
    assert [e["kind"] for e in store.ledger_entries(record.id)] == ["grant"]

    with store.transaction() as conn:
        store.keys_repo.topup(record.id, 10, conn=conn)
        store.jobs_repo.submit(NewJob("req_c", "insta-depth", "{}", record.id, 12, sync=False), conn=conn)
        assert heard == []  # hints wait for the commit
    assert queued.wait(5) and heard == ["req_c"]
    assert store.get(record.id).balance == 3 and store.job("req_c")["status"] == JobStatus.QUEUED
    assert store.audit() == []


def test_the_schemas_list_exactly_the_enum_values():
    def resolve(model, name: str) -> dict:
        schema = model.model_json_schema(ref_template="#/$defs/{model}")
        prop = schema["properties"][name]
        return schema["$defs"][prop["$ref"].rpartition("/")[2]] if "$ref" in prop else prop

    assert resolve(JobStatusResponse, "status")["enum"] == [s.value for s in JobStatus]
    assert resolve(CancelResponse, "status")["enum"] == [s.value for s in JobStatus]
    assert resolve(CancelResponse, "action")["enum"] == [a.value for a in CancelAction]
    assert resolve(WebhookDeliveryInfo, "status")["enum"] == [s.value for s in DeliveryStatus]
    assert resolve(AcceptedResponse, "status")["const"] == JobStatus.QUEUED
    assert ACTIVE | TERMINAL == set(JobStatus) and not ACTIVE & TERMINAL


def test_the_enums_are_the_strings_of_the_rows_and_bodies():
    assert JobStatus.COMPLETED == "COMPLETED" and {"COMPLETED": 1}[JobStatus.COMPLETED] == 1
    assert json.dumps({"status": JobStatus.CANCELED}) == '{"status": "CANCELED"}'
    assert f"{CancelAction.ALREADY_FINISHED}" == str(CancelAction.ALREADY_FINISHED) == "already_finished"


def test_job_statuses_are_spelled_only_in_states_py():
    """No other server module writes a job status (or the cancel answer already_finished) as a string literal."""
    names = {s.value for s in JobStatus} | {CancelAction.ALREADY_FINISHED.value}
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        if path.name == "states.py" and path.parent == SERVER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(SERVER)}:{node.lineno}: {node.value!r}")
    assert found == []
