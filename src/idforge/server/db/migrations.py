"""Versioned schema upgrades: a numbered list, applied in order, recorded in `schema_migrations`.

A database without that table is either empty or a file written by idforge 0.1 (its tables exist): migration 1
creates the 0.1 tables only where they are missing, so both start from the same version-1 state. Every migration
runs in one transaction (DDL is transactional on PostgreSQL and SQLite); on PostgreSQL an advisory lock makes
replicas that start at once apply each migration exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateColumn

from idforge.server.db import schema
from idforge.server.db.connect import DatabaseError

MIGRATION_LOCK = 0x1DF0_0001  # pg advisory lock id for schema upgrades


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _baseline(conn: Connection) -> None:
    """The tables of idforge 0.1, exactly as its sqlite3 code created them (created only when missing)."""
    old = sa.MetaData()
    sa.Table("api_keys", old, *schema.api_keys_v1())
    sa.Table("credit_reservations", old, *schema.credit_reservations_v1())
    sa.Table("jobs", old, *schema.jobs_v1(), sqlite_autoincrement=True)
    old.create_all(conn, checkfirst=True)


def _add_columns(conn: Connection, table: sa.Table, columns: list[sa.Column]) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for column in columns:
        if column.name in present:
            continue
        ddl = CreateColumn(table.c[column.name]).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")


def _ledger_leases_webhooks(conn: Connection) -> None:
    """Ledger, leases/attempts/cancel/progress/expiry on jobs, per-key webhook secret, webhook outbox."""
    _add_columns(conn, schema.api_keys, schema.api_keys_v2())
    _add_columns(conn, schema.jobs, schema.jobs_v2())
    for table in (schema.credit_ledger, schema.webhook_deliveries):
        table.create(conn, checkfirst=True)
    existing = {i["name"] for i in sa.inspect(conn).get_indexes("jobs")}
    existing |= {i["name"] for i in sa.inspect(conn).get_indexes("webhook_deliveries")}
    for table in (schema.jobs, schema.webhook_deliveries):
        for index in table.indexes:
            if index.name not in existing and not index.unique:
                index.create(conn)
    for old_status, new_status in schema.OLD_STATUSES.items():
        conn.execute(
            sa.update(schema.jobs).where(schema.jobs.c.status == old_status).values(status=new_status)
        )
    # Opening entries, so that for every key: balance == sum(ledger.delta) and spent == sum(ledger.spent_delta).
    now = time.time()
    held = {
        row.ref: row
        for row in conn.execute(sa.select(schema.credit_reservations)).all()  # open holds of 0.1
    }
    for key in conn.execute(
        sa.select(schema.api_keys.c.id, schema.api_keys.c.balance, schema.api_keys.c.spent)
    ):
        mine = [r for r in held.values() if r.key_id == key.id]
        opening = key.balance + sum(r.amount for r in mine)
        entries = [
            {
                "key_id": key.id,
                "kind": "opening",
                "delta": opening,
                "spent_delta": key.spent,
                "idempotency_key": f"opening:{key.id}",
                "job_id": None,
                "created": now,
            },
        ]
        entries += [
            {
                "key_id": key.id,
                "kind": "reserve",
                "delta": -r.amount,
                "spent_delta": 0,
                "idempotency_key": f"reserve:{r.ref}",
                "job_id": r.ref,
                "created": r.created,
            }
            for r in mine
        ]
        conn.execute(sa.insert(schema.credit_ledger), entries)


def _replicas(conn: Connection) -> None:
    """Workers report themselves (device, state, counters, latency histograms) for /health and /metrics."""
    schema.replicas.create(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "idforge 0.1 tables (api_keys, credit_reservations, jobs)", _baseline),
    Migration(
        2,
        "credit ledger, job leases and attempts, cancel, progress, expiry, webhooks",
        _ledger_leases_webhooks,
    ),
    Migration(3, "replicas: worker heartbeats for health and metrics", _replicas),
)
LATEST = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_migrations"):
        return 0
    return int(conn.execute(sa.select(sa.func.max(schema.schema_migrations.c.version))).scalar() or 0)


def upgrade(engine: Engine) -> list[int]:
    """Apply every missing migration; returns the versions applied now (empty when up to date)."""
    applied: list[int] = []
    with engine.connect() as conn:
        found = current_version(conn)
    if found > LATEST:
        raise DatabaseError(
            f"the database is at schema version {found}, newer than this idforge knows ({LATEST}): upgrade idforge"
        )
    for migration in MIGRATIONS:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            schema.schema_migrations.create(conn, checkfirst=True)
            if current_version(conn) >= migration.version:
                continue
            migration.apply(conn)
            conn.execute(
                sa.insert(schema.schema_migrations),
                {"version": migration.version, "name": migration.name, "applied": time.time()},
            )
            applied.append(migration.version)
    return applied
