"""The tables, as SQLAlchemy Core objects, built from the columns each migration introduced.

Version 1 is the schema of idforge 0.1 (api_keys, credit_reservations, jobs, written by the old sqlite3 code);
version 2 adds the credit ledger, job leases and attempts, cancel, progress, result expiry and webhook deliveries.
The columns of each version are listed once (`*_v1`, `*_v2`): the migration that adds them and the final tables
use the same objects, so the two cannot drift.
"""

from __future__ import annotations

import sqlalchemy as sa

from idforge.server.states import JobStatus

metadata = sa.MetaData()

# Job states are stored as the v2 contract names them (server/states.py); 0.1 files said
# queued/running/succeeded/failed, which migration 2 rewrites.
OLD_STATUSES = {
    "queued": JobStatus.QUEUED,
    "running": JobStatus.PROCESSING,
    "succeeded": JobStatus.COMPLETED,
    "failed": JobStatus.FAILED,
}


def api_keys_v1() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("hash", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("balance", sa.Integer, sa.CheckConstraint("balance >= 0"), nullable=False),
        sa.Column("spent", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("revoked", sa.Double),
    ]


def api_keys_v2() -> list[sa.Column]:
    return [sa.Column("webhook_secret", sa.Text)]


def credit_reservations_v1() -> list[sa.Column]:
    return [
        sa.Column("ref", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("amount", sa.Integer, sa.CheckConstraint("amount >= 0"), nullable=False),
        sa.Column("created", sa.Double, nullable=False),
    ]


def jobs_v1() -> list[sa.Column]:
    return [
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("sync", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("cost", sa.Integer, nullable=False),
        sa.Column("payload", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("error_status", sa.Integer),
        sa.Column("error_field", sa.Text),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column("started", sa.Double),
        sa.Column("finished", sa.Double),
    ]


def jobs_v2() -> list[sa.Column]:
    return [
        sa.Column("cancel_requested", sa.Integer, nullable=False, server_default="0"),
        sa.Column("webhook_url", sa.Text),
        sa.Column("base_url", sa.Text),  # scheme://host of the submission, for the absolute URLs of the job
        sa.Column("step", sa.Integer),
        sa.Column("total_steps", sa.Integer),
        sa.Column("metrics", sa.Text),  # JSON timings
        sa.Column(
            "expired", sa.Integer, nullable=False, server_default="0"
        ),  # result removed; the id stays known
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("replica", sa.Text),  # the replica that ran (or runs) the job's latest attempt
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires", sa.Double),
    ]


def credit_ledger_v2() -> list[sa.Column]:
    return [
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.Text, nullable=False, index=True),
        sa.Column("kind", sa.Text, nullable=False),  # grant | topup | reserve | charge | release | opening
        sa.Column("delta", sa.Integer, nullable=False),  # change of the available balance
        sa.Column("spent_delta", sa.Integer, nullable=False, server_default="0"),
        sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
        sa.Column("job_id", sa.Text),
        sa.Column("created", sa.Double, nullable=False),
    ]


def webhook_deliveries_v2() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Text, primary_key=True),  # the webhook-id header: the same on every retry
        sa.Column("job_id", sa.Text, nullable=False, unique=True),  # one message per job (its final status)
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column(
            "body", sa.Text, nullable=False
        ),  # frozen when the job ends: every retry sends the same bytes
        sa.Column("status", sa.Text, nullable=False),  # states.DeliveryStatus
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created", sa.Double, nullable=False),
        sa.Column(
            "next_attempt", sa.Double, nullable=False
        ),  # moved ahead while claimed (the sender's lease)
        sa.Column("last_attempt", sa.Double),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered", sa.Double),
        sa.Column("claimed", sa.Double),
    ]


def replicas_v3() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, nullable=False),  # loading | ready | running | stopped | failed
        sa.Column("detail", sa.Text),  # what is loading, or why it failed
        sa.Column("current_job", sa.Text),
        sa.Column("jobs_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("jobs_failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("histograms", sa.Text),  # JSON: the replica's job and step latency bucket counts
        sa.Column("started", sa.Double, nullable=False),
        sa.Column("heartbeat", sa.Double, nullable=False),
    ]


def migrations_v0() -> list[sa.Column]:
    return [
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("applied", sa.Double, nullable=False),
    ]


api_keys = sa.Table("api_keys", metadata, *api_keys_v1(), *api_keys_v2())
credit_reservations = sa.Table("credit_reservations", metadata, *credit_reservations_v1())
jobs = sa.Table("jobs", metadata, *jobs_v1(), *jobs_v2(), sqlite_autoincrement=True)
sa.Index("jobs_claim", jobs.c.status, jobs.c.seq)
sa.Index("jobs_lease", jobs.c.status, jobs.c.lease_expires)
credit_ledger = sa.Table("credit_ledger", metadata, *credit_ledger_v2(), sqlite_autoincrement=True)
webhook_deliveries = sa.Table("webhook_deliveries", metadata, *webhook_deliveries_v2())
sa.Index("webhooks_due", webhook_deliveries.c.status, webhook_deliveries.c.next_attempt)
replicas = sa.Table("replicas", metadata, *replicas_v3())
schema_migrations = sa.Table("schema_migrations", metadata, *migrations_v0())
