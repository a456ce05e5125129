"""What the repositories share: one engine, its read-only twin, the wake-up hub, and transactions they can join.

`transaction()` yields a SQLAlchemy `Connection` inside `BEGIN ... COMMIT` (`BEGIN IMMEDIATE` on SQLite). Every
repository method takes an optional `conn`: without one it opens (and commits) its own transaction; with one it
runs inside the caller's, so e.g. ending a job, settling its credits and queuing its webhook commit together or
not at all. `notify` queues a wake-up hint that goes out only when the transaction commits (PostgreSQL's NOTIFY
does that itself; on SQLite the hints wait in the connection's `info` until the commit, and a rollback drops them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from idforge.server.db import wakeup
from idforge.server.db.connect import READ

_HINTS = "idforge_hints"  # Connection.info key: the hints of the open transaction (SQLite)


class Database:
    """The engine (writers), `reader` (read-only transactions) and `hub` of one store."""

    def __init__(self, engine: Engine, hub: wakeup.Hub) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**READ)
        self.hub = hub
        self.postgres = engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self, conn: Connection | None = None) -> Iterator[Connection]:
        """A writing transaction, committed when the block ends (rolled back on an exception); with `conn`, the
        caller's transaction, which this block joins (the caller commits)."""
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as conn:
            hints: list[tuple[str, str]] = []
            conn.info[_HINTS] = hints
            try:
                yield conn
            finally:
                conn.info.pop(_HINTS, None)
        for channel, payload in hints:
            self.hub.deliver(channel, payload)

    @contextmanager
    def read(self, conn: Connection | None = None) -> Iterator[Connection]:
        """A read-only transaction (deferred BEGIN on SQLite: it never waits for the writer), or the caller's."""
        if conn is not None:
            yield conn
            return
        with self.reader.connect() as conn:
            yield conn

    def notify(self, conn: Connection, channel: str, payload: str) -> None:
        """A wake-up hint, sent when the transaction of `conn` (one of `transaction()`) commits."""
        if self.postgres:  # NOTIFY fires at commit, in every listening process (this one too)
            conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})
            return
        hints = conn.info.get(_HINTS)
        if hints is None:
            raise RuntimeError("notify() needs a connection from Database.transaction()")
        hints.append((channel, payload))
