"""The server's database: one `Store` (keys, credit ledger, durable job queue, webhook outbox) on SQLite or
PostgreSQL through SQLAlchemy Core, with versioned migrations and wake-up hints."""

from idforge.server.db.connect import DatabaseError, default_target, parse_target
from idforge.server.db.store import Claimed, JobFailure, Lease, QueueAtCapacity, ReapReport, Store

__all__ = [
    "Claimed",
    "DatabaseError",
    "JobFailure",
    "Lease",
    "QueueAtCapacity",
    "ReapReport",
    "Store",
    "default_target",
    "parse_target",
]
