"""The server's database: one `Store` (a facade over the keys, jobs, outbox and replicas repositories, which can
share one transaction) on SQLite or PostgreSQL through SQLAlchemy Core, with versioned migrations and wake-up hints."""

from idforge.server.db.connect import DatabaseError, default_target, parse_target
from idforge.server.db.jobs_repo import Claimed, JobFailure, Lease, NewJob, QueueAtCapacity, ReapReport
from idforge.server.db.store import Store

__all__ = [
    "Claimed",
    "DatabaseError",
    "JobFailure",
    "Lease",
    "NewJob",
    "QueueAtCapacity",
    "ReapReport",
    "Store",
    "default_target",
    "parse_target",
]
